#!/usr/bin/env bash
# Part 1 of docs/BENCHMARKS.md, the paper's effect at small scale, and the
# demand split against the equal one (issue 13), in one command:
#
#   bench/io-effect.sh           the full version of the paper's arms (committed results)
#   bench/io-effect.sh --rig mixed,identical --arms b,c,oc,e,oe --out bench/results/io-demand \
#       --plots docs/bench/demand    the demand benchmark (committed results)
#   bench/io-effect.sh --short   the CI version: one short repeat of each arm
#                                (5 s warm-up, 10 s measured)
#   options: --guests N --repeats R --arms a,b,c,d --warmup S --measure S
#            --rig identical|mixed|unequal[,...] (default identical)
#            --lock-span run|rig|repeat: hold the real-stack lock for each
#            run (default), for each rig of a repeat, or for each repeat
#            --out DIR (default bench/results/io-effect)
#            --sizes-from DIR: the oracle and grown arms take their sizes
#            from the runs of c and e in DIR (an earlier --out) instead
#            of this run's (so gs and ge can run without e again)
#            --plots DIR (default docs/bench for the default --out, else the --out dir)
#
# On the real stack (libvirtd, software-emulated QEMU, the host's KSM) it
# boots N guests (bench/lib.sh: ceiling KBB_CEIL_MIB, each with its own
# KBB_DATA_MIB data disk of random bytes throttled to KBB_IOTUNE_MIBS MiB/s
# with cache='none', and the same KBB_APP_MIB of "application" bytes held
# in memory). In the identical rig (the paper's) every guest reads random
# 1 MiB blocks through its page cache (bench/guest/reader.rs); in the mixed
# rig only the first does, the others idle (they boot, hold their
# application bytes and read nothing). In the unequal rig (issue 20's
# third) two guests read working sets of different sizes: guest 0 its
# whole disk, guest 1 its disk's first KBB_SPAN_MIB MiB; the others have no
# disk at all (booted from their initramfs, idle). The arms:
#   a   static floor: booted at KBB_FLOOR_MIB, KSM off
#   b   KSM on, no ksm-balloon (booted at the floor)
#   c   KSM on and `ksm-balloon --split equal run` every 10 s (the paper's split)
#   e   KSM on and `ksm-balloon --split demand run` every 10 s
#   d   static ceiling: booted at KBB_CEIL_MIB, KSM off
#   oc  static oracle of c: KSM on, no ksm-balloon, each guest booted at the
#       median of the targets c's passes gave it over the measured window
#       of the same rig and repeat (so c must run before oc)
#   oe  the same for e
#   gc  grown to oc's sizes: booted at the floor like c, grown by the
#       balloon once (virsh setmem --live) to the sizes oc boots with, and
#       left there with no ksm-balloon (the oracle-gap experiment: the same
#       memory, booted with or given back); ge the same for oe (after e)
#   gs  ge with ksm-balloon's passes beside it that change nothing
#       (`--split demand run --dry-run` every 10 s: every read and call a
#       pass makes, no resize): what the passes cost, apart from the
#       demand split's resizes (after e)
#   gr  ge grown late: at the floor, reading with its memory full, until
#       t = KBB_GROW_AT s (default the warm-up), then grown once to oe's
#       sizes, as e's pool comes out after its 60 s holding window, with
#       no passes (after e)
# Runs are interleaved: for each repeat, for each rig, each arm in the order
# given. Each run boots fresh guests, with KSM's merged pages cleared before
# (run=2). bench/io_sample.py records every guest's throughput (every 2 s)
# and, every 2 s, the balloons and the guests' own memory figures, the KSM
# counters, MemAvailable and each QEMU's RSS; arms c and e keep every
# pass's JSON report. bench/io_report.py then prints the tables and draws
# the plots.
#
# Holds the real-stack lock for each run; leaves KSM as found and destroys
# its guests (also on failure, after printing the consoles and libvirtd's
# log tail).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=/usr/bin/python3

short=0 guests=3 repeats='' arms=a,b,c,d rigs=identical warmup='' measure='' out='' plots_dir='' span=run sizes_from=''
out_arg=""
while [ $# -gt 0 ]; do
    case $1 in
        --short) short=1 ;;
        --guests) guests=$2; shift ;;
        --repeats) repeats=$2; shift ;;
        --arms) arms=$2; shift ;;
        --rig) rigs=$2; shift ;;
        --lock-span) span=$2; shift ;;
        --warmup) warmup=$2; shift ;;
        --measure) measure=$2; shift ;;
        --out) out=$2 out_arg=$2; shift ;;
        --plots) plots_dir=$2; shift ;;
        --sizes-from) sizes_from=$(realpath "$2"); shift ;;
        *) echo "usage: bench/io-effect.sh [--short] [--guests N] [--repeats R] [--arms a,b,c,d,e,oc,oe,gc,ge,gs,gr] [--rig identical,mixed,unequal] [--lock-span run|rig|repeat] [--warmup S] [--measure S] [--out DIR] [--plots DIR] [--sizes-from DIR]" >&2
           exit 2 ;;
    esac
    shift
done
if [ $short = 1 ]; then
    # The short version checks that every arm runs and behaves as it says;
    # its speeds are printed, never asserted, so its windows are as short
    # as the checks allow: ksm-balloon's first pass comes at t = 0 and its
    # second about 10 s later, and the 5-15 s window always holds that
    # second pass (an oracle arm takes its sizes from the passes in the
    # window) and 5 throughput samples of every guest (every 2 s).
    repeats=${repeats:-1} warmup=${warmup:-5} measure=${measure:-10}
    out=${out:-${KBB_OUT:-/tmp/ksm-balloon-bench-short}/io-effect}
else
    repeats=${repeats:-3} warmup=${warmup:-60} measure=${measure:-180}
    # the committed plots only come from the default (full) results
    [ -n "$out" ] || plots_dir=${plots_dir:-docs/bench}
    out=${out:-$REPO/bench/results/io-effect}
    plots_dir=${plots_dir:-$out}
fi
# ksm-balloon takes only an absolute --state
out=$(realpath -m "$out")
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
# runs (or, with --lock-span, between rigs or repeats: on a machine where
# other suites queue for it, fewer waits), so other suites on the machine
# are not shut out for the whole benchmark (nothing else touches libvirtd
# or KSM while a run holds it): kbb_take_stack, kbb_release_stack
# (bench/lib.sh).
kbb_trap_cleanup kbb_release_stack

kbb_build_guest
for ((i = 0; i < guests; i++)); do kbb_disk "data-$i" "$KBB_DATA_MIB" >/dev/null; done
[ "$KBB_APP_MIB" = 0 ] || kbb_disk app "$KBB_APP_MIB" >/dev/null
mapfile -t names < <(kbb_names "$guests")

rm -rf "$out"
mkdir -p "$out"
cat >"$out/settings.json" <<JSON
{"command": "$(env | grep -E '^KBB_(FLOOR|CEIL|DATA|APP|SPAN|IOTUNE|INTERVAL|PASS_PERIOD|KSM|GROW)_' | sort | tr '\n' ' ')bench/io-effect.sh $(if [ $short = 1 ]; then echo --short; fi) --guests $guests --repeats $repeats --arms $arms --rig $rigs --warmup $warmup --measure $measure$(if [ -n "$out_arg" ]; then echo " --out $out_arg"; fi)$(if [ -n "$sizes_from" ]; then echo " --sizes-from $sizes_from"; fi)",
 "guests": $guests, "repeats": $repeats, "arms": "$arms", "rigs": "$rigs", "warmup_s": $warmup, "measure_s": $measure,
 "floor_mib": $KBB_FLOOR_MIB, "ceiling_mib": $KBB_CEIL_MIB, "data_mib": $KBB_DATA_MIB,
 "app_mib": $KBB_APP_MIB, "span_mib": $KBB_SPAN_MIB, "iotune_mibs": $KBB_IOTUNE_MIBS, "pass_period_s": ${KBB_PASS_PERIOD:-10},
 "ksm_pages_to_scan": $KSM_PAGES_TO_SCAN, "ksm_sleep_millisecs": $KSM_SLEEP_MS,
 $(kbb_host_json "$KBB_KERNEL" "$REPO")}
JSON


# run_dir RIG ARM REP: where a run's files go (one rig: ARM-REP).
run_dir() {
    if [ "$rigs" = "$1" ]; then echo "$out/$2-$3"; else echo "$out/$1-$2-$3"; fi
}

# sizes_dir RIG ARM REP: the run of arm ARM (c or e) an oracle or grown arm
# takes its sizes from: this run's, or --sizes-from's (named either way).
sizes_dir() {
    if [ -z "$sizes_from" ]; then
        run_dir "$@"
    elif [ -d "$sizes_from/$1-$2-$3" ]; then
        echo "$sizes_from/$1-$2-$3"
    else
        echo "$sizes_from/$2-$3"
    fi
}

# guest_role RIG INDEX: reader (its whole disk), span (its first
# KBB_SPAN_MIB MiB) or idle (diskless in the unequal rig).
guest_role() {
    case $1:$2 in
        identical:* | *:0) echo reader ;;
        unequal:1) echo span ;;
        *) echo idle ;;
    esac
}

run_arm() {
    local rig=$1 arm=$2 rep=$3 dir t0 t_ready end i g consoles=() boot=() readers=() idle=() split=''
    dir=$(run_dir "$rig" "$arm" "$rep")
    mkdir -p "$dir"
    case $arm in
        a | b | c | e | gc | ge | gs | gr) for g in "${names[@]}"; do boot+=("$KBB_FLOOR_MIB"); done ;;
        d) for g in "${names[@]}"; do boot+=("$KBB_CEIL_MIB"); done ;;
        oc | oe)
            # the policy arm's steady targets, from its own run
            mapfile -t boot < <("$PY" bench/io_report.py --oracle-of "$(sizes_dir "$rig" "${arm#o}" "$rep")") ||
                kb_die "arm $arm: no run of arm ${arm#o} (rig $rig, repeat $rep) to take its sizes from: list ${arm#o} before $arm"
            [ "${#boot[@]}" = "$guests" ] || kb_die "arm $arm: ${#boot[@]} sizes for $guests guests"
            ;;
        *) kb_die "unknown arm $arm" ;;
    esac
    local grown=() of='' KBB_DRY_RUN=0
    case $arm in
        gc) of=c ;;
        ge | gs | gr) of=e ;;
    esac
    if [ -n "$of" ]; then
        mapfile -t grown < <("$PY" bench/io_report.py --oracle-of "$(sizes_dir "$rig" "$of" "$rep")") ||
            kb_die "arm $arm: no run of arm $of (rig $rig, repeat $rep) to take its sizes from: list $of before $arm"
        [ "${#grown[@]}" = "$guests" ] || kb_die "arm $arm: ${#grown[@]} sizes for $guests guests"
    fi
    local sizes=()
    for ((i = 0; i < ${#grown[@]}; i++)); do sizes+=("${names[$i]}=${grown[$i]}"); done
    case $arm in
        c) split=equal ;;
        e) split=demand ;;
        # passes that change nothing (kbb_pass_loop reads KBB_DRY_RUN)
        gs) split=demand KBB_DRY_RUN=1 ;;
    esac
    for ((i = 0; i < guests; i++)); do
        if [ "$(guest_role "$rig" "$i")" = idle ]; then idle+=("${names[$i]}"); else readers+=("${names[$i]}"); fi
    done
    [ "$KBB_LOCKED" = 1 ] || kbb_take_stack
    local run_start
    run_start=$(date +%s)
    kb_log "rig $rig, arm $arm, repeat $rep: $guests guests (${#readers[@]} reading), booted at ${boot[*]} MiB"
    kb_wait_until 60 "old bench guests to go" bash -c "! virsh -q -c $KB_URI list --name | grep -q '^$KBB_PREFIX'"
    kbb_ksm_clear
    case $arm in
        a | d) kb_ksm_set 0 ;;
        *) kb_ksm_set 1 "$KSM_PAGES_TO_SCAN" "$KSM_SLEEP_MS" ;;
    esac
    for g in "${names[@]}"; do consoles+=(--console "$g=$(kbb_console "$g")"); done
    t0=$(date +%s.%N)
    for ((i = 0; i < guests; i++)); do
        case $(guest_role "$rig" "$i") in
            reader) kbb_boot "$i" "${boot[$i]}" ;;
            span) kbb_boot "$i" "${boot[$i]}" --span "$KBB_SPAN_MIB" ;;
            idle) kbb_boot "$i" "${boot[$i]}" "$(if [ "$rig" = unequal ]; then echo --diskless; else echo --idle; fi)" ;;
        esac
    done
    "$PY" bench/io_sample.py --out "$dir/samples.jsonl" --t0 "$t0" --duration 100000 \
        --uri "$KB_URI" "${consoles[@]}" &
    KBB_BG_PIDS+=($!)
    kbb_wait_reading 300 "${readers[@]}" || kb_die "arm $arm: the guests did not start reading"
    [ "${#idle[@]}" = 0 ] || kbb_wait_ready 300 "${idle[@]}" || kb_die "arm $arm: the idle guests did not boot"
    # t = 0 (t_ready) is when every guest reads or idles AND every balloon is
    # at the size it booted at: until its driver has inflated it, QEMU
    # reports a balloon at the ceiling, and io_report.py's checks read the
    # first sample after t = 0 as the boot size (an oracle arm's idle guest
    # was caught at 255 MiB: CI run 2 of issue 25). Passes start after it.
    kbb_wait_boot_size 120 "${names[@]}" || kb_die "arm $arm: the balloons did not reach their boot sizes"
    if [ "${#grown[@]}" -gt 0 ] && [ "$arm" != gr ]; then
        # gc, ge, gs: grown by the balloon, once, to the oracle's sizes (what
        # the oracle boots with), then left alone: memory the guest booted
        # without, given back as ksm-balloon gives it, with no passes (gs:
        # passes that resize nothing)
        kbb_set_sizes wait "${sizes[@]}" || kb_die "arm $arm: the guests did not grow to ${grown[*]} MiB"
    fi
    t_ready=$(date +%s.%N)
    if [ "$arm" = gr ]; then
        # grown once, late, in the background (kbb_stop_bg ends it)
        (
            "$PY" -c "import time; time.sleep(max(0, $t_ready + ${KBB_GROW_AT:-$warmup} - time.time()))"
            kbb_set_sizes nowait "${sizes[@]}"
        ) &
        KBB_BG_PIDS+=($!)
    fi
    # the arm runs for a fixed time: the warm-up and measuring windows
    end=$("$PY" -c "print($t_ready + $warmup + $measure)")
    kbb_run_window "$dir" "$split" "$end" "arm $arm" "${names[@]}"
    cat >"$dir/arm.json" <<JSON
{"arm": "$arm", "rig": "$rig", "repeat": $rep, "t0_epoch": $t0, "t_ready": $("$PY" -c "print($t_ready - $t0)"),
 "warmup_s": $warmup, "measure_s": $measure, "split": "${split:-none}",
 "boot_mib": $(if [ "$arm" = d ]; then echo "$KBB_CEIL_MIB"; else echo "$KBB_FLOOR_MIB"; fi),
 "boot_mib_per_guest": [$(printf '%s,' "${boot[@]}" | sed 's/,$//')],
 "grown_mib_per_guest": [$(printf '%s,' "${grown[@]}" | sed 's/,$//')],
 "grown_at_s": $(if [ "$arm" = gr ]; then echo "${KBB_GROW_AT:-$warmup}"; else echo null; fi),
 "guests": [$(printf '"%s",' "${names[@]}" | sed 's/,$//')],
 "readers": [$(printf '"%s",' "${readers[@]}" | sed 's/,$//')],
 "run_s": $(( $(date +%s) - run_start ))}
JSON
    kbb_destroy_all
    [ "$span" != run ] || kbb_release_stack
}

IFS=, read -r -a arm_list <<<"$arms"
IFS=, read -r -a rig_list <<<"$rigs"
for rig in "${rig_list[@]}"; do
    case $rig in identical | mixed | unequal) ;; *) kb_die "unknown rig $rig (identical, mixed, unequal)" ;; esac
done
case $span in run | rig | repeat) ;; *) kb_die "unknown --lock-span $span (run, rig, repeat)" ;; esac
for ((rep = 1; rep <= repeats; rep++)); do
    for rig in "${rig_list[@]}"; do
        for arm in "${arm_list[@]}"; do
            run_arm "$rig" "$arm" "$rep"
        done
        [ "$span" != rig ] || kbb_release_stack
    done
    [ "$span" != repeat ] || [ "$KBB_LOCKED" = 0 ] || kbb_release_stack
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
