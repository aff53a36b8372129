#!/usr/bin/env bash
# Issue 14's real-stack scenario, measured: three real QEMU guests under a
# real libvirtd and the host's real KSM, two holding the same 32 MiB of data
# (copied from the shared disk) and one holding 32 MiB of its own random
# bytes, plus a host process outside libvirt (tests/realstack/ksm-merger.c)
# merging 8 MiB of one repeated page. After KSM's full scans it prints each
# guest's ksm_stat and its attributed part of the savings by every metric
# (examples/attribution.rs, i.e. src/procksm.rs + src/attribution.rs), next
# to the exact part worked out page by page from /proc/<pid>/pagemap and
# /proc/kpagecount (each KSM page mapped k times saves (k - 1)/k per mapping),
# and checks:
#   - the parts of all processes add up to the host's savings (within 3 %);
#   - the unique guest's part is under 60 % of each sharing guest's, and the
#     sharing guests' exceed it by about what their shared data saves;
#   - each guest's part is within 15 % of its exact part;
#   - the host process's savings land outside the VMs' parts.
#
# Usage (as root): tests/realstack/attribution.sh
# Takes the real-stack lock; always tears down (guests, merger, KSM knobs).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/libvirtd.sh
. "$here/../lib/libvirtd.sh"
# shellcheck source=lib.sh
. "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || kb_die "the attribution scenario must run as root"
command -v cc >/dev/null || kb_die "cc is missing: run tests/deps.sh"
(cd "$RS_REPO" && cargo build -q --locked --bin ksm-balloon --example attribution) || kb_die "cargo build failed"
BIN=$RS_REPO/target/debug/ksm-balloon
ATTR=$RS_REPO/target/debug/examples/attribution
MERGER_DIR=$(mktemp -d)
cc -O2 -Wall -o "$MERGER_DIR/ksm-merger" "$here/ksm-merger.c" || kb_die "cannot build ksm-merger"

MERGER_PID=''
rs_setup "$BIN"
finish() {
    local rc=$?
    [ -n "$MERGER_PID" ] && kill "$MERGER_PID" 2>/dev/null
    rm -rf "$MERGER_DIR"
    [ "$rc" -ne 0 ] && rs_diagnostics
    rs_teardown
    exit "$rc"
}
trap finish EXIT

GUESTS=(a1 a2 u3)
for g in "${GUESTS[@]}"; do rs_boot "$g" 256 256; done
rs_wait_ready 180 "${GUESTS[@]}" || exit 1
rs_cmd a1 fill 32 | grep -q '^filled 32' || kb_die "a1: fill failed"
rs_cmd a2 fill 32 | grep -q '^filled 32' || kb_die "a2: fill failed"
rs_cmd u3 random 32 | grep -q '^random 32' || kb_die "u3: random fill failed"

"$MERGER_DIR/ksm-merger" 8 same:5 >"$MERGER_DIR/out" 2>&1 {KB_LOCK_FD}>&- &
MERGER_PID=$!
kb_wait_until 30 "ksm-merger to fill its memory" grep -q '^KB-MERGER-READY' "$MERGER_DIR/out" ||
    kb_die "ksm-merger: $(cat "$MERGER_DIR/out")"

kb_ksm_set 1 1000 20
# Settled: KSM made at least 3 full scans, and the last 2 changed
# pages_shared and pages_sharing by under 0.5 % (guests never sit fully still).
settled() {
    local scans shared sharing
    scans=$(rs_ksm full_scans)
    shared=$(rs_ksm pages_shared)
    sharing=$(rs_ksm pages_sharing)
    if [ "$scans" -ne "${S_SCAN:-0}" ]; then
        S_PREV="${S_NOW:-0 0}"
        S_NOW="$shared $sharing"
        S_SCAN=$scans
    fi
    [ "$scans" -ge 3 ] || return 1
    python3 -c '
import sys
a, b = [list(map(int, s.split())) for s in sys.argv[1:3]]
sys.exit(0 if all(abs(x - y) <= max(x, y) * 0.005 for x, y in zip(a, b)) else 1)' "$S_PREV" "$S_NOW"
}
kb_wait_until 600 "KSM to settle (3 full scans, counters steady)" settled || exit 1

pids=()
for g in "${GUESTS[@]}"; do pids+=("$(cat "/run/libvirt/qemu/$RS_PREFIX$g.pid")"); done
echo "QEMU command line of $RS_PREFIX${GUESTS[0]} (pid ${pids[0]}):"
tr '\0' ' ' <"/proc/${pids[0]}/cmdline" | cut -c1-400
echo

for m in profit sharing shared; do
    "$ATTR" --metric "$m" "${GUESTS[@]/#/$RS_PREFIX}" >"$MERGER_DIR/attr-$m.json" || kb_die "attribution ($m) failed"
done

python3 - "$MERGER_DIR" "$MERGER_PID" "${GUESTS[*]}" "${pids[*]}" <<'PY'
import json, os, struct, sys
work, merger, guests, pids = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), list(map(int, sys.argv[4].split()))
page = os.sysconf("SC_PAGE_SIZE")
res = {m: json.load(open(f"{work}/attr-{m}.json")) for m in ("profit", "sharing", "shared")}
host = res["sharing"]["host"]

KPF_KSM = 1 << 21
flags_fd = os.open("/proc/kpageflags", os.O_RDONLY)
count_fd = os.open("/proc/kpagecount", os.O_RDONLY)

def exact_saved_pages(pid):
    """Sum over the process's mappings of KSM pages of (k - 1)/k, k = the
    page's map count: its exact share of pages_sharing."""
    saved, ksm_maps = 0.0, 0
    pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    for line in open(f"/proc/{pid}/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if hi > 1 << 47:
            continue
        n = (hi - lo) // page
        data = os.pread(pm, n * 8, lo // page * 8)
        for (e,) in struct.iter_unpack("<Q", data):
            if not e >> 63 & 1:
                continue
            pfn = e & ((1 << 55) - 1)
            if not pfn:
                continue
            (f,) = struct.unpack("<Q", os.pread(flags_fd, 8, pfn * 8))
            if f & KPF_KSM:
                (k,) = struct.unpack("<Q", os.pread(count_fd, 8, pfn * 8))
                if k:
                    saved += (k - 1) / k
                    ksm_maps += 1
    os.close(pm)
    return saved, ksm_maps

rows = []
for g, pid in zip(guests, pids):
    vm = next(v for v in res["sharing"]["vms"] if v["name"].endswith(g))
    parts = {m: next(v for v in res[m]["vms"] if v["name"].endswith(g))["attributed_kib"] for m in res}
    ex, maps = exact_saved_pages(pid)
    rows.append((g, pid, vm["ksm_stat"], parts, ex * page / 1024, maps))
mex, mmaps = exact_saved_pages(merger)

mib = lambda k: f"{k / 1024:8.1f}"
print(f"host: pages_shared {host['pages_shared']}, pages_sharing {host['pages_sharing']}, "
      f"ksm_zero_pages {host['zero_pages']}, general_profit {host['general_profit']} B "
      f"({host['general_profit'] / 1048576:.1f} MiB)")
print(f"{'guest':<6} {'pid':>7} {'merging':>8} {'rmap':>7} {'proc_profit MiB':>15} "
      f"{'profit MiB':>10} {'sharing MiB':>11} {'shared MiB':>10} {'exact sharing MiB':>17}")
for g, pid, st, parts, ex, maps in rows:
    print(f"{g:<6} {pid:>7} {st['merging_pages']:>8} {st['rmap_items']:>7} "
          f"{st['process_profit'] / 1048576:>15.1f} {mib(parts['profit']):>10} {mib(parts['sharing']):>11} "
          f"{mib(parts['shared']):>10} {mib(ex):>17}")
for m in ("profit", "sharing", "shared"):
    a = res[m]["attribution"]
    print(f"{m:>8}: host {mib(a['host_kib'])} MiB = VMs {mib(a['vms_kib'])} + not VMs {mib(a['non_vm_kib'])} "
          f"(other processes measured {mib(a['others_kib'])}, {res[m]['other_processes']} processes)")
print(f"host process ksm-merger (pid {merger}): exact share of pages_sharing {mib(mex * page / 1024)} MiB "
      f"over {mmaps} KSM mappings")

a = res["sharing"]["attribution"]
parts = {g: p for g, _, _, p, _, _ in rows}
checks = []
for m in ("profit", "sharing", "shared"):
    at = res[m]["attribution"]
    total = at["vms_kib"] + at["others_kib"]
    checks.append((f"{m}: VMs + other processes = host within 3 % ({total} vs {at['host_kib']} KiB)",
                   abs(total - at["host_kib"]) <= 0.03 * abs(at["host_kib"])))
for m in ("profit", "sharing"):
    u, s1, s2 = (parts[g][m] for g in ("u3", "a1", "a2"))
    checks.append((f"{m}: unique guest's part under 60 % of each sharing guest's ({u} vs {s1}, {s2} KiB)",
                   u < 0.6 * s1 and u < 0.6 * s2))
    checks.append((f"{m}: the sharing guests' parts exceed the unique one's by 10-24 MiB "
                   f"(their shared data saves 16 MiB each: {(s1 - u) / 1024:.1f}, {(s2 - u) / 1024:.1f})",
                   all(10240 <= s - u <= 24576 for s in (s1, s2))))
for g, _, _, p, ex, _ in rows:
    checks.append((f"{g}: sharing part within 15 % of its exact part ({p['sharing'] / 1024:.1f} vs {ex / 1024:.1f} MiB)",
                   abs(p["sharing"] - ex) <= 0.15 * ex))
checks.append((f"the host process's savings stay out of the VMs' parts: not-VMs part {a['non_vm_kib']} KiB "
               f"= other processes' {a['others_kib']} KiB (within 1 %) and > 0",
               a["others_kib"] > 0 and abs(a["non_vm_kib"] - a["others_kib"]) <= 0.01 * a["others_kib"] + 4))
print(f"ksm-merger: attributed {a['others_kib'] / 1024:.1f} MiB by sharing, exact {mex * page / 1048576:.1f} MiB: "
      f"the average-ratio formula gives a process whose pages have many mappers less than its exact part")
bad = 0
for what, ok in checks:
    bad += not ok
    print(f"  {'ok' if ok else 'FAIL'}: {what}")
print(f"{len(checks) - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
PY
