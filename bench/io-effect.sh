#!/usr/bin/env bash
# Part 1 of docs/BENCHMARKS.md, the paper's effect at small scale, in one
# command:
#
#   bench/io-effect.sh           the full version (committed results)
#   bench/io-effect.sh --short   the CI version: one short repeat of each arm
#   options: --guests N --repeats R --arms a,b,c,d --warmup S --measure S
#            --out DIR (default bench/results/io-effect)
#            --plots DIR (default docs/bench for the default --out, else the --out dir)
#
# On the real stack (libvirtd, software-emulated QEMU, the host's KSM) it
# boots N identical guests (bench/lib.sh: ceiling KBB_CEIL_MIB, each with
# its own KBB_DATA_MIB data disk of random bytes throttled to
# KBB_IOTUNE_MIBS MiB/s with cache='none', and the same KBB_APP_MIB of
# "application" bytes held in memory), each reading random 1 MiB blocks
# through its page cache (bench/guest/reader.rs), in four arms:
#   a  static floor: booted at KBB_FLOOR_MIB, KSM off
#   b  KSM on, no ksm-balloon (booted at the floor)
#   c  KSM on and `ksm-balloon run` every 10 s (booted at the floor)
#   d  static ceiling: booted at KBB_CEIL_MIB, KSM off
# Each arm boots fresh guests, with KSM's merged pages cleared before
# (run=2). bench/io_sample.py records every guest's throughput (every 2 s)
# and, every 2 s, the balloons, the KSM counters, MemAvailable and each
# QEMU's RSS. bench/io_report.py then prints the table and draws the plots.
#
# Holds the real-stack lock for the whole run; leaves KSM as found and
# destroys its guests (also on failure, after printing the consoles and
# libvirtd's log tail).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=/usr/bin/python3

short=0 guests=3 repeats='' arms=a,b,c,d warmup='' measure='' out='' plots_dir=''
while [ $# -gt 0 ]; do
    case $1 in
        --short) short=1 ;;
        --guests) guests=$2; shift ;;
        --repeats) repeats=$2; shift ;;
        --arms) arms=$2; shift ;;
        --warmup) warmup=$2; shift ;;
        --measure) measure=$2; shift ;;
        --out) out=$2; shift ;;
        --plots) plots_dir=$2; shift ;;
        *) echo "usage: bench/io-effect.sh [--short] [--guests N] [--repeats R] [--arms a,b,c,d] [--warmup S] [--measure S] [--out DIR] [--plots DIR]" >&2
           exit 2 ;;
    esac
    shift
done
if [ $short = 1 ]; then
    repeats=${repeats:-1} warmup=${warmup:-20} measure=${measure:-20}
    out=${out:-${KBB_OUT:-/tmp/ksm-balloon-bench-short}/io-effect}
else
    repeats=${repeats:-3} warmup=${warmup:-60} measure=${measure:-180}
    # the committed plots only come from the default (full) results
    [ -n "$out" ] || plots_dir=${plots_dir:-docs/bench}
    out=${out:-$REPO/bench/results/io-effect}
    plots_dir=${plots_dir:-$out}
fi
PASS_PERIOD=${KBB_PASS_PERIOD:-10}
KSM_PAGES_TO_SCAN=${KBB_KSM_PAGES_TO_SCAN:-1000}
KSM_SLEEP_MS=${KBB_KSM_SLEEP_MS:-20}

# shellcheck source=tests/lib/libvirtd.sh
. tests/lib/libvirtd.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

started=$(date +%s)
# arm c runs the release build; the short (CI) version the debug build
# run-all.sh already made
kbb_pick_bin $short

# The real-stack lock is taken for each arm's run and released between
# runs, so other suites on the machine are not shut out for the whole
# benchmark (nothing else touches libvirtd or KSM while a run holds it).
bg_pids=()
stop_bg() {
    local p
    for p in "${bg_pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    bg_pids=()
}
locked=0
take_stack() {
    kb_realstack_lock
    locked=1
    kb_ksm_save
    kb_libvirtd_start
    kbb_destroy_all
    local others
    others=$(kbb_virsh list --name | grep -v "^$KBB_PREFIX" | grep -c . || true)
    [ "$others" = 0 ] || kb_die "other guests are running on $KB_URI: they would share the CPUs and KSM"
}
release_stack() {
    kbb_destroy_all
    kb_ksm_restore
    KB_KSM_SAVED=()
    exec {KB_LOCK_FD}>&-
    unset KB_LOCK_FD
    locked=0
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_bg
    if [ $locked = 1 ]; then
        [ $rc = 0 ] || kbb_diagnostics
        release_stack
    fi
    exit $rc
}
trap cleanup EXIT INT TERM

kbb_build_guest
for ((i = 0; i < guests; i++)); do kbb_disk "data-$i" "$KBB_DATA_MIB" >/dev/null; done
[ "$KBB_APP_MIB" = 0 ] || kbb_disk app "$KBB_APP_MIB" >/dev/null
mapfile -t names < <(kbb_names "$guests")

rm -rf "$out"
mkdir -p "$out"
cat >"$out/settings.json" <<JSON
{"command": "$(env | grep -E '^KBB_(FLOOR|CEIL|DATA|APP|IOTUNE|INTERVAL|PASS_PERIOD|KSM)_' | sort | tr '\n' ' ')bench/io-effect.sh $(if [ $short = 1 ]; then echo --short; fi) --guests $guests --repeats $repeats --arms $arms --warmup $warmup --measure $measure",
 "guests": $guests, "repeats": $repeats, "arms": "$arms", "warmup_s": $warmup, "measure_s": $measure,
 "floor_mib": $KBB_FLOOR_MIB, "ceiling_mib": $KBB_CEIL_MIB, "data_mib": $KBB_DATA_MIB,
 "app_mib": $KBB_APP_MIB, "iotune_mibs": $KBB_IOTUNE_MIBS, "pass_period_s": $PASS_PERIOD,
 "ksm_pages_to_scan": $KSM_PAGES_TO_SCAN, "ksm_sleep_millisecs": $KSM_SLEEP_MS,
 "host": "$(hostname)", "kernel": "$(uname -r)", "cpus": $(nproc),
 "cpu_model": "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)",
 "mem_total_kib": $(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo),
 "libvirt": "$(virsh --version)", "qemu": "$(qemu-system-x86_64 --version | head -n1)",
 "guest_kernel": "$(basename "$KBB_KERNEL")", "started": "$(date -u +%FT%TZ)",
 "commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src bench 2>/dev/null || echo +changes)",
 "ksm_balloon": "$BIN"}
JSON

ksm_clear() {
    # unmerge everything and zero the counters, so no arm inherits merges
    kb_ksm_set 2
    kb_wait_until 120 "KSM to unmerge (pages_shared 0)" \
        bash -c "[ \"\$(cat $KB_KSM_DIR/pages_shared)\" = 0 ]" || kb_die "KSM did not unmerge"
}

run_arm() {
    local arm=$1 rep=$2 dir cur t0 t_ready end i g consoles=()
    dir=$out/$arm-$rep
    mkdir -p "$dir"
    take_stack
    local run_start
    run_start=$(date +%s)
    kb_log "arm $arm, repeat $rep: $guests guests"
    kb_wait_until 60 "old bench guests to go" bash -c "! virsh -q -c $KB_URI list --name | grep -q '^$KBB_PREFIX'"
    ksm_clear
    case $arm in
        a | d) kb_ksm_set 0 ;;
        b | c) kb_ksm_set 1 "$KSM_PAGES_TO_SCAN" "$KSM_SLEEP_MS" ;;
    esac
    cur=$KBB_FLOOR_MIB
    [ "$arm" = d ] && cur=$KBB_CEIL_MIB
    for g in "${names[@]}"; do consoles+=(--console "$g=$(kbb_console "$g")"); done
    t0=$(date +%s.%N)
    for ((i = 0; i < guests; i++)); do kbb_boot "$i" "$cur"; done
    "$PY" bench/io_sample.py --out "$dir/samples.jsonl" --t0 "$t0" --duration 100000 \
        --uri "$KB_URI" "${consoles[@]}" &
    bg_pids+=($!)
    kbb_wait_reading 300 "${names[@]}" || kb_die "arm $arm: the guests did not start reading"
    t_ready=$(date +%s.%N)
    if [ "$arm" = c ]; then
        (
            exec {KB_LOCK_FD}>&-
            while :; do
                echo "pass at $(date -u +%FT%TZ)"
                "$BIN" --connect "$KB_URI" --state "$dir/state.json" run || echo "pass failed: exit $?"
                sleep "$PASS_PERIOD"
            done
        ) >>"$dir/ksm-balloon.log" 2>&1 &
        bg_pids+=($!)
    fi
    end=$("$PY" -c "print($t_ready + $warmup + $measure)")
    # pacing, not a wait for a condition: the arm runs for a fixed time
    while "$PY" -c "import sys,time; sys.exit(time.time() >= $end)"; do
        for g in "${names[@]}"; do
            kbb_failed "$g" && kb_die "arm $arm: guest $g failed"
        done
        kbb_virsh domstate "${names[0]}" >/dev/null || kb_die "arm $arm: ${names[0]} is gone"
        sleep 5
    done
    stop_bg
    if [ "$arm" = c ]; then
        "$BIN" --connect "$KB_URI" --state "$dir/state.json" status --json >"$dir/status.json" || true
    fi
    for g in "${names[@]}"; do cp "$(kbb_console "$g")" "$dir/$g.console"; done
    cat >"$dir/arm.json" <<JSON
{"arm": "$arm", "repeat": $rep, "t_ready": $("$PY" -c "print($t_ready - $t0)"), "warmup_s": $warmup, "measure_s": $measure,
 "boot_mib": $cur, "guests": [$(printf '"%s",' "${names[@]}" | sed 's/,$//')],
 "run_s": $(( $(date +%s) - run_start ))}
JSON
    release_stack
}

IFS=, read -r -a arm_list <<<"$arms"
for ((rep = 1; rep <= repeats; rep++)); do
    for arm in "${arm_list[@]}"; do
        run_arm "$arm" "$rep"
    done
done

elapsed=$(( $(date +%s) - started ))
"$PY" - "$out/settings.json" "$elapsed" <<'PY'
import glob, json, os, sys
p, el = sys.argv[1], int(sys.argv[2])
s = json.load(open(p))
s["elapsed_s"] = el
runs = [json.load(open(a)) for a in glob.glob(os.path.join(os.path.dirname(p), "*/arm.json"))]
s["runs_s"] = sum(r["run_s"] for r in runs)
json.dump(s, open(p, "w"), indent=1)
PY
plots=()
[ -z "$plots_dir" ] || plots=(--plots "$plots_dir")
"$PY" bench/io_report.py "$out" "${plots[@]}" --markdown "$out/table.md" --check
echo "io-effect: done in ${elapsed}s; results in $out"
