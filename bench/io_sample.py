#!/usr/bin/python3
"""The I/O benchmark's recorder (docs/BENCHMARKS.md, part 1).

Runs for --duration seconds beside one arm of bench/io-effect.sh and
writes JSON lines to --out:

  {"kind": "tput", "t": .., "guest": .., "seq": .., "mbps": .., "memtotal_kib": .., ...}
      one per KB-TPUT line a guest prints on its console (the reader
      reports every 2 s); t is host seconds since --t0 when the line was
      seen (polled every 0.25 s);
  {"kind": "tps", "t": .., "guest": .., "t_guest": .., "tps": .., "memtotal_kib": .., ...}
      the same for a database guest's KB-TPS lines (bench/db-effect.sh:
      pgbench's transactions per second over its last progress interval);
  {"kind": "host", "t": .., "balloon_kib": {guest: ..}, "guest_kib": {guest: {..}},
   "ksm": {...}, "mem_available_kib": .., "qemu_rss_kib": {guest: ..},
   "qemu_thp_kib": {guest: ..}, "ksmd_cpu_s": ..,
   "loadavg": ..}
      every --period seconds: the balloons and the guests' own figures
      (one `virsh domstats --balloon`: balloon.current, and unused, usable,
      available and disk_caches as the guest's balloon driver reports them),
      the KSM counters, the host's MemAvailable, each QEMU's RSS and how
      much of it transparent huge pages back (AnonHugePages) and ksmd's
      CPU time so far.

Usage: io_sample.py --out F --t0 EPOCH --duration S --uri URI --console NAME=PATH...
"""

import argparse
import json
import os
import re
import subprocess
import time

KSM = "/sys/kernel/mm/ksm"
KSM_FIELDS = ("run", "pages_shared", "pages_sharing", "pages_unshared", "full_scans",
              "general_profit", "ksm_zero_pages", "pages_scanned", "pages_to_scan",
              "sleep_millisecs")
TPUT_RE = re.compile(r"^KB-TPUT (.*)$")
# the database guest's (bench/dbguest/guest-run.sh): one per pgbench
# progress line
TPS_RE = re.compile(r"^KB-TPS (.*)$")


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


GUEST_FIELDS = ("unused", "usable", "available", "disk_caches")


def balloons(uri, check=False, guest=None):
    """Every active domain's balloon.current (KiB) by name, from one
    `virsh domstats --balloon`; with check, a failing virsh raises. With a
    dict as guest, fills it with each domain's own figures (KiB) by name."""
    r = subprocess.run(["virsh", "-c", uri, "domstats", "--balloon", "--list-active"],
                       check=check, capture_output=True, text=True)
    cur, name = {}, None
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("Domain:"):
            name = line.split("'")[1]
        elif line.startswith("balloon.") and "=" in line:
            k, v = line[len("balloon."):].split("=", 1)
            if k == "current":
                cur[name] = int(v)
            elif guest is not None and k in GUEST_FIELDS:
                guest.setdefault(name, {})[k] = int(v)
    return cur


def qemu_rss(name):
    pid = read_int(f"/run/libvirt/qemu/{name}.pid")
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def qemu_thp(name):
    """The QEMU process's anonymous memory backed by transparent huge
    pages (KiB, AnonHugePages of its smaps_rollup), or None."""
    pid = read_int(f"/run/libvirt/qemu/{name}.pid")
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def ksmd_cpu():
    r = subprocess.run(["pgrep", "-x", "ksmd"], capture_output=True, text=True)
    pids = r.stdout.split()
    if not pids:
        return None
    with open(f"/proc/{pids[0]}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_tput(rest):
    kv = dict(x.split("=", 1) for x in rest.split() if "=" in x)
    return {
        "seq": int(kv["seq"]),
        "t_guest": float(kv["t"]),
        "mbps": float(kv["mbps"]),
        "blocks": int(kv["blocks"]),
        "memtotal_kib": int(kv["memtotal"]),
        "memfree_kib": int(kv["memfree"]),
        "buffers_kib": int(kv.get("buffers", 0)),
        "cached_kib": int(kv["cached"]),
    }


def parse_tps(rest):
    kv = dict(x.split("=", 1) for x in rest.split() if "=" in x)
    return {
        "t_guest": float(kv["t"]),
        "tps": float(kv["tps"]),
        "memtotal_kib": int(kv["memtotal"]),
        "memfree_kib": int(kv["memfree"]),
        "cached_kib": int(kv["cached"]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--t0", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--period", type=float, default=2.0)
    ap.add_argument("--uri", default="qemu:///system")
    ap.add_argument("--console", action="append", default=[], help="NAME=PATH")
    args = ap.parse_args()
    consoles = dict(c.split("=", 1) for c in args.console)
    offsets = {n: 0 for n in consoles}
    partial = {n: b"" for n in consoles}
    end = time.time() + args.duration
    next_host = time.time()
    with open(args.out, "a") as out:
        while time.time() < end:
            now = time.time()
            for name, path in consoles.items():
                try:
                    with open(path, "rb") as f:
                        f.seek(offsets[name])
                        data = f.read()
                except OSError:
                    continue
                offsets[name] += len(data)
                data = partial[name] + data
                lines = data.split(b"\n")
                partial[name] = lines.pop()
                for raw in lines:
                    text = raw.decode(errors="replace").strip("\r")
                    m = TPUT_RE.match(text)
                    if m:
                        rec = {"kind": "tput", "t": now - args.t0, "guest": name}
                        rec.update(parse_tput(m.group(1)))
                        out.write(json.dumps(rec) + "\n")
                    m = TPS_RE.match(text)
                    if m:
                        rec = {"kind": "tps", "t": now - args.t0, "guest": name}
                        rec.update(parse_tps(m.group(1)))
                        out.write(json.dumps(rec) + "\n")
            if now >= next_host:
                next_host += args.period
                mi = meminfo()
                guest = {}
                rec = {
                    "kind": "host",
                    "t": now - args.t0,
                    "balloon_kib": balloons(args.uri, guest=guest),
                    "guest_kib": guest,
                    "ksm": {k: read_int(f"{KSM}/{k}") for k in KSM_FIELDS},
                    "mem_available_kib": mi.get("MemAvailable"),
                    "mem_total_kib": mi.get("MemTotal"),
                    "qemu_rss_kib": {n: qemu_rss(n) for n in consoles},
                    "qemu_thp_kib": {n: qemu_thp(n) for n in consoles},
                    "ksmd_cpu_s": ksmd_cpu(),
                    "loadavg": os.getloadavg()[0],
                }
                out.write(json.dumps(rec) + "\n")
            out.flush()
            time.sleep(0.25)


if __name__ == "__main__":
    main()
