#!/usr/bin/python3
"""The cost of one ksm-balloon pass (docs/BENCHMARKS.md, part 2).

For each N it measures one `ksm-balloon run` process (wall time, CPU time
user+sys, peak RSS, all from wait4) in three situations, and the obvious
alternative (bench/alt-virsh-loop.sh: per VM one `virsh dommemstat` and one
`virsh setmem`) for the same N:

  first   no state file, every VM at its floor, savings = N x 16 MiB:
          every VM is adopted and grown by 16 MiB (N writes);
  steady  the state the first pass left, every VM at the size the first
          pass set, the same savings: nothing to do (0 writes);
  grown   as steady, but the savings rose by 8 MiB per VM: every target
          moves past the 4 MiB deadband (N writes).

libvirt calls are counted twice, independently: from ksm-balloon's own
report (`run --json`, its `calls`), and
from libvirt's client-side debug log (LIBVIRT_LOG_FILTERS=1:libvirt, one
line per public API entry point such as virConnectGetAllDomainStats or
virDomainSetMemoryFlags; with a remote URI also the RPC messages sent to
libvirtd). Timed runs are separate runs with logging off.

Drivers:
  --driver test   libvirt's test driver, `test:///<dir>/node.xml` written by
                  the generator the Rust tests use (--node-xml-bin: the
                  testdriver-node example, tests/common/node.rs). The test
                  driver keeps its state per connection only,
                  so every process starts from the node XML: the steady and
                  grown situations are set up by writing the node XML's
                  <currentMemory> equal to what the first pass set (read
                  from the state file it left). It runs inside the client
                  process, so its CPU time is the whole cost.
  --driver qemu   running guests on a real libvirtd (--domains); the
                  situations are set up with `virsh setmem` and a wait for
                  the balloon to get there. libvirtd's own CPU time during
                  the run is measured too (from /proc/<pid>/stat).
In both, KSM counters and meminfo come from a fake --root (a copy of
tests/fixtures/root with general_profit set), so the savings are exactly
what the situation needs.

--check turns the claims into assertions (exit 1 when one fails): one bulk
read whatever N; N writes in `first`, 0 in `steady`, N in `grown` (the
savings rose by 8 MiB per VM: every target moves past the deadband); the
tool's own counts equal libvirt's log; the alternative makes 2 calls per VM.
(A balloon moved by anyone but ksm-balloon is left alone since the
manual-change detector: no situation moves balloons behind its back.) The
passes run with `--hold-window 0`, so a rise of the savings is lent at once,
and `--split equal`, so it moves every target alike.

Usage: bench/pass_cost.py --driver test --n 1,10,100,1000 --repeat 5 \\
           --json bench/results/pass-cost-test.json
"""

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import io_sample  # bench/io_sample.py: the balloon reader both share

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURE_ROOT = os.path.join(REPO, "tests", "fixtures", "root")
ALT = os.path.join(HERE, "alt-virsh-loop.sh")

FLOOR_MIB = 160
CEIL_MIB = 256
BONUS_MIB = 16
GROW_MIB = 8  # grown: each target this far above (outside the 4 MiB deadband)

CALL_KINDS = ("bulk_stats", "per_domain_info", "xml", "set_memory")
API_RE = re.compile(r": debug : (vir[A-Za-z]+):\d+ : ")
RPC_RE = re.compile(r"RPC_CLIENT_MSG_TX_QUEUE:.* proc=(\d+) type=0 ")

# Entry points that stay in the client (reference counts, cached names,
# driver registration): not calls into the hypervisor driver.
LOCAL_API = {
    "virDomainRef",
    "virDomainFree",
    "virDomainGetName",
    "virDomainGetUUID",
    "virDomainGetUUIDString",
    "virDomainGetID",
    "virConnectRef",
    "virRegisterConnectDriver",
    "virRegisterStateDriver",
    "virGlobalInit",
    "virConnectOpenInternal",
    "virConnectRegisterCloseCallback",
    "virConnectUnregisterCloseCallback",
    "virConnectSetKeepAlive",
    "virConnectIsAlive",
    "virDomainStatsRecordListFree",
}
OPEN_API = {"virConnectOpen", "virConnectOpenAuth", "virConnectOpenReadOnly"}


def log(msg):
    print(f"[pass_cost {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_measured(cmd, env, stdin=None):
    """Runs cmd; returns wall/user/sys/peak RSS from wait4 (children included),
    and what it printed."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdin=stdin or subprocess.DEVNULL,
                             stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "maxrss_kib": ru.ru_maxrss,
        "stderr": text,
        "stdout": stdout,
    }


def count_libvirt_log(path):
    """Public API entry points (and RPC calls sent) in a libvirt client log."""
    api = collections.Counter()
    rpc = 0
    with open(path, errors="replace") as f:
        for line in f:
            m = API_RE.search(line)
            if m:
                api[m.group(1)] += 1
            if RPC_RE.search(line):
                rpc += 1
    # public API entry points that reach the driver: not the local ones, not
    # the RPC layer's own functions (logged too when the rpc filter is on)
    driver = {k: v for k, v in api.items()
              if k not in LOCAL_API and not k.startswith(("virNet", "virKeepAlive"))}
    return {
        "bulk_stats": api["virConnectGetAllDomainStats"],
        "per_domain_info": api["virDomainGetInfo"],
        "xml": api["virDomainGetXMLDesc"],
        "set_memory": api["virDomainSetMemoryFlags"],
        "memory_stats": api["virDomainMemoryStats"],
        "lookup": api["virDomainLookupByName"],
        "list": api["virConnectListAllDomains"],
        "connections": sum(api[k] for k in OPEN_API),
        "driver_calls": sum(driver.values()),
        "rpc_calls": rpc,
        "all": dict(sorted(driver.items())),
    }


def libvirt_log_env(env, path, remote):
    e = dict(env)
    filters = "1:libvirt 1:rpc 4:*" if remote else "1:libvirt 4:*"
    e["LIBVIRT_LOG_FILTERS"] = filters
    e["LIBVIRT_LOG_OUTPUTS"] = f"1:file:{path}"
    e.pop("LIBVIRT_DEBUG", None)
    return e


def quiet_env():
    e = dict(os.environ)
    for k in list(e):
        if k.startswith("LIBVIRT_LOG") or k == "LIBVIRT_DEBUG" or k.startswith("KSM_BALLOON_"):
            del e[k]
    e["KSM_BALLOON_LOG"] = "warn"
    return e


def node_xml(generator, names_uuids, current_kib):
    """The test-driver node XML, from the generator the Rust tests use
    (tests/common/node.rs, through its testdriver-node example)."""
    doms = [{"name": name, "uuid": uuid, "memory_kib": CEIL_MIB * 1024, "current_kib": cur}
            for (name, uuid), cur in zip(names_uuids, current_kib)]
    return subprocess.run([generator], input=json.dumps(doms), capture_output=True, text=True,
                          check=True).stdout


def make_profit(root, profit_bytes):
    with open(os.path.join(root, "sys/kernel/mm/ksm/general_profit"), "w") as f:
        f.write(f"{profit_bytes}\n")


def make_root(path, profit_bytes):
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(FIXTURE_ROOT, path)
    make_profit(path, profit_bytes)


class TestDriver:
    """N generated domains behind libvirt's test driver."""

    remote = False

    def __init__(self, n, work, generator):
        self.n = n
        self.work = work
        self.generator = generator
        self.node = os.path.join(work, "node.xml")
        self.uri = f"test://{self.node}"
        self.vms = [(f"vm-{i:04}", f"{i:08x}-0000-4000-8000-000000000000") for i in range(n)]

    def set_sizes(self, kib):
        with open(self.node, "w") as f:
            f.write(node_xml(self.generator, self.vms, kib))

    def targets_from_state(self, state_path):
        with open(state_path) as f:
            st = json.load(f)
        return [st["vms"][uuid]["last_target_kib"] for _, uuid in self.vms]

    def daemon_cpu(self):
        return None


class Qemu:
    """Running guests on a real libvirtd."""

    remote = True

    def __init__(self, uri, names):
        self.uri = uri
        self.n = len(names)
        self.vms = [(nm, None) for nm in names]

    def balloon_current(self):
        return io_sample.balloons(self.uri, check=True)

    def set_sizes(self, kib, deadline_s=60):
        for (name, _), k in zip(self.vms, kib):
            subprocess.run(["virsh", "-c", self.uri, "setmem", name, f"{k}K", "--live"],
                           check=True, capture_output=True)
        want = {name: k for (name, _), k in zip(self.vms, kib)}
        end = time.monotonic() + deadline_s
        while True:
            cur = self.balloon_current()
            if all(cur.get(nm) == k for nm, k in want.items()):
                return
            if time.monotonic() > end:
                raise SystemExit(f"balloons did not reach {want} in {deadline_s}s: {cur}")
            time.sleep(0.2)

    def targets_from_state(self, state_path):
        with open(state_path) as f:
            st = json.load(f)
        by_name = {r["name"]: r["last_target_kib"] for r in st["vms"].values()}
        return [by_name[nm] for nm, _ in self.vms]

    def daemon_cpu(self):
        """libvirtd's CPU time so far, all threads, from schedstat (ns)."""
        pid = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True).stdout.split()
        if len(pid) != 1:
            return None
        total = 0
        for task in os.listdir(f"/proc/{pid[0]}/task"):
            try:
                with open(f"/proc/{pid[0]}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError):
                pass  # a thread that ended meanwhile
        return total / 1e9


def summarise(samples, key):
    v = [s[key] for s in samples]
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def timed(target, cmd, env, repeat, prepare):
    """One logged run for the counts is done by the caller; here `repeat` quiet runs."""
    samples = []
    for _ in range(repeat):
        prepare()
        d0 = target.daemon_cpu()
        r = run_measured(cmd, env)
        d1 = target.daemon_cpu()
        r.pop("stderr")
        r.pop("stdout")
        if d0 is not None and d1 is not None:
            r["daemon_cpu_s"] = d1 - d0
        samples.append(r)
    out = {k: summarise(samples, k) for k in ("wall_s", "cpu_s", "maxrss_kib")}
    if all("daemon_cpu_s" in s for s in samples):
        out["daemon_cpu_s"] = summarise(samples, "daemon_cpu_s")
    out["samples"] = samples
    return out


def bench_n(target, args, work):
    n = target.n
    root = os.path.join(work, "root")
    state_rel = "/state/state.json"
    state = os.path.join(root, "state/state.json")
    snapshot = os.path.join(work, "state-after-first.json")
    make_root(root, n * BONUS_MIB << 20)
    os.makedirs(os.path.dirname(state), exist_ok=True)
    # The equal split: `grown` moves every target by GROW_MIB, which the
    # demand split (the default) does only while the guests weigh alike,
    # and the real stack's bench guests read their disks. What a pass costs
    # does not depend on the split.
    base = [args.bin, "--root", root, "--state", state_rel, "--connect", target.uri,
            "--hold-window", "0", "--split", "equal", "run", "--json"]
    floor = [FLOOR_MIB * 1024] * n
    results = []

    def fresh():
        for p in (state, state + ".lock"):
            if os.path.exists(p):
                os.remove(p)
        target.set_sizes(floor)

    def from_snapshot(sizes):
        shutil.copy(snapshot, state)
        target.set_sizes(sizes)

    def record(scenario, counts_self, counts_log, timing, expect):
        row = {"driver": args.driver, "n": n, "tool": "ksm-balloon", "scenario": scenario,
               "calls_self": counts_self, "calls_libvirt_log": counts_log, "expect": expect}
        row.update(timing)
        results.append(row)
        log(f"N={n} ksm-balloon {scenario}: wall {timing['wall_s']['median']*1000:.1f} ms, "
            f"cpu {timing['cpu_s']['median']*1000:.1f} ms, rss {timing['maxrss_kib']['median']} KiB, "
            f"self {counts_self}, libvirt log: bulk {counts_log['bulk_stats']} info "
            f"{counts_log['per_domain_info']} xml {counts_log['xml']} set {counts_log['set_memory']} "
            f"rpc {counts_log['rpc_calls']}")

    def counted(prepare):
        prepare()
        logf = os.path.join(work, "libvirt-client.log")
        if os.path.exists(logf):
            os.remove(logf)
        env = libvirt_log_env(quiet_env(), logf, target.remote)
        r = run_measured(base, env)
        try:
            calls = json.loads(r["stdout"])["calls"]
        except (ValueError, KeyError) as e:
            raise SystemExit(f"no pass report on stdout ({e}):\n" + r["stdout"][-2000:])
        own = {k: int(calls[k]) for k in CALL_KINDS}
        return own, count_libvirt_log(logf)

    qenv = quiet_env()
    info = n if args.driver == "test" else 0

    # first
    own, lg = counted(fresh)
    shutil.copy(state, snapshot)
    targets = target.targets_from_state(snapshot)
    record("first", own, lg, timed(target, base, qenv, args.repeat, fresh),
           {"bulk_stats": 1, "per_domain_info": info, "xml": n, "set_memory": n})
    # steady
    prep = lambda: from_snapshot(targets)  # noqa: E731
    own, lg = counted(prep)
    record("steady", own, lg, timed(target, base, qenv, args.repeat, prep),
           {"bulk_stats": 1, "per_domain_info": info, "xml": 0, "set_memory": 0})
    # grown: the savings rose by GROW_MIB per VM, every target moves
    grown = [t + GROW_MIB * 1024 for t in targets]

    def prep_grown():
        from_snapshot(targets)
        make_profit(root, n * (BONUS_MIB + GROW_MIB) << 20)

    own, lg = counted(prep_grown)
    record("grown", own, lg, timed(target, base, qenv, args.repeat, prep_grown),
           {"bulk_stats": 1, "per_domain_info": info, "xml": 0, "set_memory": n})
    make_profit(root, n * BONUS_MIB << 20)
    results[-1]["targets_after_kib"] = grown[:1]

    # what merely connecting costs (the test driver parses the whole node
    # XML at every connection): one `virsh version`
    cmd = ["virsh", "-c", target.uri, "version"]
    logf = os.path.join(work, "libvirt-client-connect.log")
    run_measured(cmd, libvirt_log_env(qenv, logf, target.remote))
    timing = timed(target, cmd, qenv, args.repeat, lambda: None)
    row = {"driver": args.driver, "n": n, "tool": "virsh-connect-only", "scenario": "connect",
           "calls_self": None, "calls_libvirt_log": count_libvirt_log(logf),
           "expect": {"connections": 1, "set_memory": 0}}
    row.update(timing)
    results.append(row)
    log(f"N={n} connect only: wall {timing['wall_s']['median']*1000:.1f} ms")

    # the alternative, one tick
    for mode in args.alt_modes:
        if mode == "process" and n > args.alt_process_max_n:
            log(f"N={n}: per-process virsh tick not run (above --alt-process-max-n)")
            continue
        cmd = ["bash", ALT, target.uri, root, str(FLOOR_MIB), str(CEIL_MIB), mode]
        prep = lambda: target.set_sizes(floor)  # noqa: E731
        prep()
        logf = os.path.join(work, "libvirt-client-alt.log")
        if os.path.exists(logf):
            os.remove(logf)
        run_measured(cmd, libvirt_log_env(qenv, logf, target.remote))
        lg = count_libvirt_log(logf)
        timing = timed(target, cmd, qenv, args.alt_repeat, prep)
        row = {"driver": args.driver, "n": n, "tool": f"virsh-{mode}", "scenario": "tick",
               "calls_self": None, "calls_libvirt_log": lg,
               "expect": {"memory_stats": n, "set_memory": n,
                          "connections": 2 * n + 1 if mode == "process" else 2}}
        row.update(timing)
        results.append(row)
        log(f"N={n} virsh-{mode} tick: wall {timing['wall_s']['median']*1000:.1f} ms, "
            f"cpu {timing['cpu_s']['median']*1000:.1f} ms, calls: memstats {lg['memory_stats']} "
            f"set {lg['set_memory']} connections {lg['connections']} driver {lg['driver_calls']} "
            f"rpc {lg['rpc_calls']}")
    return results


def check(results):
    bad = []
    for r in results:
        lg = r["calls_libvirt_log"]
        what = f"{r['driver']} N={r['n']} {r['tool']} {r['scenario']}"
        for k, v in r["expect"].items():
            if lg[k] != v:
                bad.append(f"{what}: libvirt log counts {k}={lg[k]}, expected {v}")
            if r["calls_self"] is not None and k in r["calls_self"] and r["calls_self"][k] != v:
                bad.append(f"{what}: ksm-balloon counts {k}={r['calls_self'][k]}, expected {v}")
        if r["calls_self"] is not None:
            for k, v in r["calls_self"].items():
                if lg[k] != v:
                    bad.append(f"{what}: ksm-balloon says {k}={v}, libvirt's log says {lg[k]}")
    return bad


def ms(x):
    return f"{x * 1000:.1f}" if x < 10 else f"{x * 1000:.0f}"


def table(results):
    lines = [
        "| driver | N | what | wall ms median (min-max) | CPU ms user+sys | peak RSS MiB "
        "| bulk reads | per-VM reads | name lookups | XML reads | writes | connections "
        "| all driver calls | RPCs |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lg = r["calls_libvirt_log"]
        what = r["tool"] if r["tool"] != "ksm-balloon" else f"ksm-balloon {r['scenario']}"
        cpu = ms(r["cpu_s"]["median"])
        if "daemon_cpu_s" in r:
            cpu += f" (+libvirtd {ms(r['daemon_cpu_s']['median'])})"
        per_vm = lg["per_domain_info"] + lg["memory_stats"]
        lines.append(
            f"| {r['driver']} | {r['n']} | {what} | {ms(r['wall_s']['median'])} "
            f"({ms(r['wall_s']['min'])}-{ms(r['wall_s']['max'])}) | {cpu} | "
            f"{r['maxrss_kib']['median'] / 1024:.1f} | {lg['bulk_stats']} | {per_vm} | {lg['lookup']} | {lg['xml']} | "
            f"{lg['set_memory']} | {lg['connections']} | {lg['driver_calls']} | "
            f"{lg['rpc_calls'] if r['driver'] != 'test' else '-'} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--driver", choices=("test", "qemu"), required=True)
    ap.add_argument("--n", default="1,10,100,1000", help="test driver: domain counts")
    ap.add_argument("--domains", default="", help="qemu driver: the running guests, comma-separated")
    ap.add_argument("--uri", default="qemu:///system", help="qemu driver: the libvirt URI")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per situation")
    ap.add_argument("--alt-repeat", type=int, default=3, help="timed ticks of the alternative")
    ap.add_argument("--alt-process-max-n", type=int, default=1000,
                    help="skip the one-process-per-call alternative above this N")
    ap.add_argument("--alt-modes", default="process,session")
    ap.add_argument("--bin", default=os.path.join(REPO, "target/release/ksm-balloon"))
    ap.add_argument("--node-xml-bin", default=os.path.join(REPO, "target/debug/examples/testdriver-node"),
                    help="test driver: the node XML generator (cargo build --example testdriver-node)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--check", action="store_true", help="fail unless every count is as claimed")
    args = ap.parse_args()
    args.alt_modes = [m for m in args.alt_modes.split(",") if m]
    if not os.access(args.bin, os.X_OK):
        raise SystemExit(f"{args.bin} is not built (cargo build --release)")
    if args.driver == "test" and not os.access(args.node_xml_bin, os.X_OK):
        raise SystemExit(f"{args.node_xml_bin} is not built (cargo build --example testdriver-node)")

    results = []
    with tempfile.TemporaryDirectory(prefix="kb-pass-cost-") as work:
        if args.driver == "test":
            for n in [int(x) for x in args.n.split(",")]:
                wd = os.path.join(work, f"n{n}")
                os.makedirs(wd)
                results += bench_n(TestDriver(n, wd, args.node_xml_bin), args, wd)
        else:
            names = [d for d in args.domains.split(",") if d]
            if not names:
                raise SystemExit("--driver qemu needs --domains")
            results += bench_n(Qemu(args.uri, names), args, work)

    md = table(results)
    print(md)
    meta = {
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "host": os.uname().nodename,
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                           if ln.startswith("model name")), "?"),
        "libvirt": subprocess.run(["virsh", "--version"], capture_output=True, text=True).stdout.strip(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip() or "unknown",
        "bin": args.bin,
        "loadavg_1min_at_end": os.getloadavg()[0],
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    if args.check:
        bad = check(results)
        for b in bad:
            print("CHECK FAILED: " + b, file=sys.stderr)
        if bad:
            sys.exit(1)
        print(f"checked: every count as claimed ({len(results)} rows)", file=sys.stderr)


if __name__ == "__main__":
    main()
