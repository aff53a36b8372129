#!/usr/bin/env bash
# The mixed rig's oracle gap as an experiment (issue 20; docs/BENCHMARKS.md
# part 3): the demand split's reader, grown by the balloon to its ceiling
# with its whole disk cached, read more slowly than the same guest booted
# at its ceiling (the static oracle) with the same cache. One candidate
# cause is the host's memory behind the guest: QEMU madvises guest RAM for
# transparent huge pages, so memory a guest booted with is backed by 2 MiB
# pages, while memory the balloon took (QEMU discards it in 4 KiB pieces)
# and gave back faults in again 4 KiB at a time. Under software emulation
# every guest memory access goes through the host's TLB, so the grown
# cache would cost more TLB misses to read than the booted one.
#
# The experiment: the mixed rig's arms e and oe (bench/io-effect.sh) with
# the host's THP set to each of --modes (default madvise,never: this
# machine's setting, then none at all), the modes' order reversed on every
# other repeat; io_sample.py records each QEMU's AnonHugePages. If the
# cause is the host's huge pages, the gap closes with THP off (both arms on
# 4 KiB pages) and, with THP on, the grown reader has fewer huge pages than
# the booted one.
#
#   bench/thp-oracle.sh --repeats 2 --out bench/results/thp-oracle
#   options: --repeats R (default 2) --modes madvise,never --warmup S (60)
#            --measure S (120) --out DIR
#
# Leaves the host's THP setting as found (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
THP=/sys/kernel/mm/transparent_hugepage/enabled

repeats=2 modes=madvise,never warmup=60 measure=120 out=bench/results/thp-oracle
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || { echo "thp-oracle.sh: $1 needs a value" >&2; exit 2; }
    case $1 in
        --repeats) repeats=$2 ;;
        --modes) modes=$2 ;;
        --warmup) warmup=$2 ;;
        --measure) measure=$2 ;;
        --out) out=$2 ;;
        *) echo "usage: bench/thp-oracle.sh [--repeats R] [--modes madvise,never] [--warmup S] [--measure S] [--out DIR]" >&2
           exit 2 ;;
    esac
    shift 2
done
found=$(sed 's/.*\[\(.*\)\].*/\1/' "$THP")
restore() { echo "$found" >"$THP"; }
trap restore EXIT
IFS=, read -r -a mode_list <<<"$modes"
rm -rf "$out"
mkdir -p "$out"
for ((rep = 1; rep <= repeats; rep++)); do
    order=("${mode_list[@]}")
    if [ $((rep % 2)) = 0 ]; then
        order=()
        for ((i = ${#mode_list[@]} - 1; i >= 0; i--)); do order+=("${mode_list[$i]}"); done
    fi
    for mode in "${order[@]}"; do
        echo "$mode" >"$THP"
        echo "[$(date -u +%T)] repeat $rep, THP $mode"
        bash bench/io-effect.sh --guests 3 --repeats 1 --rig mixed --arms e,oe --warmup "$warmup" \
            --measure "$measure" --out "$out/$mode-$rep" >"$out/$mode-$rep.log" 2>&1
    done
done
restore
"$PY" - "$out" <<'PY' | tee "$out/table.md"
import glob, json, os, statistics, sys
sys.path.insert(0, "bench")
from io_report import load_run, summarise_demand, MIB
out = sys.argv[1]
rows = {}
print("| THP | repeat | arm | aggregate MB/s | MB/s with the whole disk cached | reader's balloon MiB | reader's cache MiB "
      "| reader's AnonHugePages MiB | e / oe (aggregate) | e / oe (whole disk cached) |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for d in sorted(glob.glob(os.path.join(out, "*-[0-9]*"))):
    if not os.path.isdir(d):
        continue
    mode, rep = os.path.basename(d).rsplit("-", 1)
    settings = json.load(open(os.path.join(d, "settings.json")))
    res = {}
    for arm in ("e", "oe"):
        r = load_run(os.path.join(d, f"{arm}-1"))
        r["floor_kib"] = settings["floor_mib"] * MIB
        s = summarise_demand(r)
        lo, hi = r["warmup_s"], r["warmup_s"] + r["measure_s"]
        g = r["readers"][0]
        win_h = [h for h in r["host"] if lo <= h["t"] <= hi]
        thp = [h["qemu_thp_kib"][g] for h in win_h if h.get("qemu_thp_kib", {}).get(g) is not None]
        win_t = [t for t in r["tput"] if t["guest"] == g and lo <= t["t"] <= hi]
        cache = [t["buffers_kib"] for t in win_t]
        # the samples whose reader had its whole disk in its cache: the
        # two arms compared with the same cache, the grown one's ramp left out
        full = [t["mbps"] for t in win_t if t["buffers_kib"] >= 0.99 * settings["data_mib"] * MIB]
        res[arm] = (s["total_mbps"], statistics.fmean(full) if full else float("nan"))
        ratio = (f"{res['e'][0] / res['oe'][0]:.2f} | {res['e'][1] / res['oe'][1]:.2f}" if arm == "oe" else " | ")
        print(f"| {mode} | {rep} | {arm} | {s['total_mbps']:.1f} | {res[arm][1]:.1f} | "
              f"{s['per_guest_balloon_mib'][g]:.0f} | {statistics.fmean(cache) / MIB:.0f} | "
              f"{statistics.fmean(thp) / MIB if thp else float('nan'):.0f} | {ratio} |")
PY
