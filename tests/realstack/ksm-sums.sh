#!/usr/bin/env bash
# Checks, on this machine's real KSM, the identities the per-VM attribution
# (src/attribution.rs, docs/DESIGN.md "Whose savings") rests on: summed over
# every process, the per-process figures of /proc/<pid>/ksm_stat give the
# host-wide counters of /sys/kernel/mm/ksm:
#
#   sum ksm_merging_pages             = pages_shared + pages_sharing
#   sum ksm_zero_pages                = ksm_zero_pages
#   sum ksm_process_profit - shared*P = general_profit
#
# and so the attributed parts add up to the host's savings by every metric.
# No libvirt: five ksm-merger processes (tests/realstack/ksm-merger.c, built
# here) offer KSM 16 MiB that two of them share page for page, 16 MiB of
# random bytes, 4 MiB of one page repeated and 4 MiB of zeros (with
# use_zero_pages on), then the figures are read once KSM stops moving.
#
# Usage (as root): tests/realstack/ksm-sums.sh
# Takes the real-stack lock (it drives the host's KSM); restores KSM's knobs
# and ends its processes on exit.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/libvirtd.sh
. "$here/../lib/libvirtd.sh"

[ "$(id -u)" -eq 0 ] || kb_die "ksm-sums must run as root (it drives KSM)"
command -v cc >/dev/null || kb_die "cc is missing: run tests/deps.sh"

WORK=$(mktemp -d)
PIDS=()
ZERO_SAVED=''
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    [ -n "$ZERO_SAVED" ] && echo "$ZERO_SAVED" >"$KB_KSM_DIR/use_zero_pages"
    kb_ksm_restore
    rm -rf "$WORK"
}

cc -O2 -Wall -o "$WORK/ksm-merger" "$here/ksm-merger.c" || kb_die "cannot build ksm-merger"
kb_realstack_lock
trap cleanup EXIT
trap 'exit 130' INT TERM
kb_ksm_save
kb_ksm_set 2
ZERO_SAVED=$(cat "$KB_KSM_DIR/use_zero_pages")
echo 1 >"$KB_KSM_DIR/use_zero_pages"

# start NAME ARGS...: a merger in the background; waits for its ready line.
start() {
    local name=$1
    shift
    "$WORK/ksm-merger" "$@" >"$WORK/$name.out" 2>&1 {KB_LOCK_FD}>&- &
    PIDS+=($!)
    echo "$!" >"$WORK/$name.pid"
    kb_wait_until 30 "ksm-merger $name to fill its memory" grep -q '^KB-MERGER-READY' "$WORK/$name.out" ||
        kb_die "ksm-merger $name: $(cat "$WORK/$name.out")"
}
start pair-a 16 seq:11
start pair-b 16 seq:11 prctl
start unique 16 random
start repeat 4 same:7
start zeros 4 zero

kb_ksm_set 1 2000 10

# Settled: full_scans moved on by 2 since the counters last changed.
settled() {
    local now
    now="$(cat "$KB_KSM_DIR"/{pages_shared,pages_sharing,ksm_zero_pages} | tr '\n' ' ')"
    if [ "$now" != "${LAST:-}" ]; then
        LAST=$now
        LAST_SCAN=$(cat "$KB_KSM_DIR/full_scans")
        return 1
    fi
    [ "$(cat "$KB_KSM_DIR/full_scans")" -ge $((LAST_SCAN + 2)) ]
}
LAST='' LAST_SCAN=0
kb_wait_until 300 "KSM to settle (2 full scans without a change)" settled || kb_die "KSM did not settle"

python3 - "$KB_KSM_DIR" "$(getconf PAGESIZE)" "$WORK" <<'PY'
import os, sys
ksm, page, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host = {k: int(open(f"{ksm}/{k}").read()) for k in
        ("pages_shared", "pages_sharing", "ksm_zero_pages", "general_profit", "full_scans")}
names = {int(open(f"{work}/{f}").read()): f[:-4] for f in os.listdir(work) if f.endswith(".pid")}

def stat(pid):
    out = {}
    try:
        text = open(f"/proc/{pid}/ksm_stat").read()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.replace(":", " ").partition(" ")
        value = value.strip()
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out or None

procs = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        s = stat(int(d))
        if s and (s["ksm_merging_pages"] or s["ksm_zero_pages"] or s["ksm_rmap_items"]):
            procs[int(d)] = s

shared, sharing, zero = host["pages_shared"], host["pages_sharing"], host["ksm_zero_pages"]
merged = shared + sharing
sums = {k: sum(p[k] for p in procs.values()) for k in
        ("ksm_merging_pages", "ksm_zero_pages", "ksm_rmap_items", "ksm_process_profit")}
print(f"host: pages_shared {shared}, pages_sharing {sharing}, ksm_zero_pages {zero}, "
      f"general_profit {host['general_profit']}, full_scans {host['full_scans']}")
print(f"{'process':<12} {'pid':>7} {'merging':>8} {'zero':>6} {'rmap':>6} {'profit B':>10} "
      f"{'sharing part':>12} {'shared part':>11} {'profit part B':>13}")
parts = {"sharing": 0, "shared": 0, "profit": 0}
for pid, p in sorted(procs.items()):
    m = p["ksm_merging_pages"]
    ps = m * sharing / merged + p["ksm_zero_pages"] if merged else p["ksm_zero_pages"]
    pd = m * shared / merged if merged else 0
    pp = p["ksm_process_profit"] - m * page * shared / merged if merged else p["ksm_process_profit"]
    parts["sharing"] += ps
    parts["shared"] += pd
    parts["profit"] += pp
    print(f"{names.get(pid, '(other)'):<12} {pid:>7} {m:>8} {p['ksm_zero_pages']:>6} "
          f"{p['ksm_rmap_items']:>6} {p['ksm_process_profit']:>10} {ps:>12.1f} {pd:>11.1f} {pp:>13.0f}")
print(f"{'sum':<12} {'':>7} {sums['ksm_merging_pages']:>8} {sums['ksm_zero_pages']:>6} "
      f"{sums['ksm_rmap_items']:>6} {sums['ksm_process_profit']:>10} {parts['sharing']:>12.1f} "
      f"{parts['shared']:>11.1f} {parts['profit']:>13.0f}")
checks = [
    ("sum ksm_merging_pages = pages_shared + pages_sharing", sums["ksm_merging_pages"], merged),
    ("sum ksm_zero_pages = ksm_zero_pages", sums["ksm_zero_pages"], zero),
    ("sum ksm_process_profit - pages_shared*page = general_profit",
     sums["ksm_process_profit"] - shared * page, host["general_profit"]),
    ("sharing parts = pages_sharing + ksm_zero_pages", round(parts["sharing"]), sharing + zero),
    ("shared parts = pages_shared", round(parts["shared"]), shared),
    ("profit parts = general_profit", round(parts["profit"]), host["general_profit"]),
    ("the pair merged page for page (pages_shared >= 4096)", shared >= 4096, True),
    ("KSM placed zero pages (ksm_zero_pages >= 1024)", zero >= 1024, True),
]
bad = 0
for what, got, want in checks:
    ok = got == want
    bad += not ok
    print(f"  {'ok' if ok else 'FAIL'}: {what}: {got} vs {want}")
print(f"{len(checks) - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
PY
