#!/usr/bin/env bash
# Part 3 of docs/BENCHMARKS.md, the database rig (issue 20): what
# ksm-balloon's splits give guests that run a real database, PostgreSQL 15
# answering `pgbench -S` (bench/dbguest/), in transactions per second.
#
#   bench/db-effect.sh --repeats 3 --out bench/results/db-demand
#   options: --repeats R (default 3) --arms b,c,e,oe (default; oc, ge too)
#            --busy N (guests running pgbench, default 2; the rest idle)
#            --warmup S (default 60) --measure S (default 120)
#            --read-iops N (each disk's reads a second, default 100)
#            --out DIR (default bench/results/db-demand)
#
# On the real stack (libvirtd, software-emulated QEMU, the host's KSM) it
# boots 3 persistent guests (ceiling KBB_CEIL_MIB, one vCPU, a virtio
# balloon with 2 s statistics), each from its own qcow2 overlay of the one
# root image (every guest holds the same database: what KSM can merge in
# their page caches), the overlay opened with cache='none' and its reads
# limited to --read-iops by <iotune> read_iops_sec (a miss costs what a
# disk read costs a native database; unthrottled, this host's disk makes a
# miss cheap beside a transaction's emulated CPU: BENCHMARKS.md part 3).
# The first --busy guests run pgbench -S with one client; the others
# start PostgreSQL, warm its cache and idle (kb.clients=0). The arms, as
# bench/io-effect.sh's:
#   b   KSM on, no ksm-balloon (booted at the floor, KBB_FLOOR_MIB)
#   c   KSM on and `ksm-balloon --split equal run` every 10 s
#   e   KSM on and `ksm-balloon --split demand run` every 10 s
#   oc  static oracle of c: KSM on, no ksm-balloon, each guest booted at the
#       median of the targets c's passes gave it in the measured window of
#       the same repeat (so c runs before oc); oe the same for e
#   ge  grown to oe's sizes: booted at the floor like e, warmed there,
#       grown by the balloon once (virsh setmem --live) to the sizes oe
#       boots with before t = 0, and left there with no ksm-balloon (the
#       oracle-gap experiment: the same memory, booted with or given back;
#       after e)
# Runs are interleaved (each repeat runs every arm in the order given),
# each on fresh guests and overlays with KSM's merged pages cleared.
# bench/io_sample.py records each guest's KB-TPS lines (pgbench's progress
# every 5 s) and, every 2 s, the balloons, the guests' own memory figures,
# KSM's counters and each QEMU's RSS; bench/db_report.py prints the table.
#
# Holds the real-stack lock for each run; leaves KSM as found and destroys
# its guests (also on failure, after printing the consoles and libvirtd's
# log tail).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=/usr/bin/python3

repeats=3 arms=b,c,e,oe busy=2 warmup=60 measure=120 read_iops=100 out=bench/results/db-demand
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || { echo "db-effect.sh: $1 needs a value" >&2; exit 2; }
    case $1 in
        --repeats) repeats=$2 ;;
        --arms) arms=$2 ;;
        --busy) busy=$2 ;;
        --warmup) warmup=$2 ;;
        --measure) measure=$2 ;;
        --read-iops) read_iops=$2 ;;
        --out) out=$2 ;;
        *) echo "usage: bench/db-effect.sh [--repeats R] [--arms b,c,e,oc,oe,ge] [--busy N] [--warmup S] [--measure S] [--read-iops N] [--out DIR]" >&2
           exit 2 ;;
    esac
    shift 2
done
for v in "$repeats" "$busy" "$warmup" "$measure" "$read_iops"; do
    [[ $v =~ ^[0-9]+$ ]] || { echo "db-effect.sh: not a whole number: $v" >&2; exit 2; }
done
started=$(date +%s)
guests=3
# ksm-balloon takes only an absolute --state
out=$(realpath -m "$out")
KSM_PAGES_TO_SCAN=${KBB_KSM_PAGES_TO_SCAN:-1000}
KSM_SLEEP_MS=${KBB_KSM_SLEEP_MS:-20}

# shellcheck source=bench/dbguest/build.sh
. bench/dbguest/build.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh
# the database guests' own names, so the synthetic benchmark's clean-up
# and this one's never touch each other's guests
KBB_PREFIX=kbdb-
KBB_RUN=/run/ksm-balloon-db
kbb_pick_bin 0
kbb_trap_cleanup kbb_release_stack
kdb_build
mapfile -t names < <(kbb_names "$guests")

rm -rf "$out"
mkdir -p "$out"
cat >"$out/settings.json" <<JSON
{"command": "bench/db-effect.sh --repeats $repeats --arms $arms --busy $busy --warmup $warmup --measure $measure --read-iops $read_iops --out ${out#"$REPO"/}",
 "guests": $guests, "busy": $busy, "repeats": $repeats, "arms": "$arms", "warmup_s": $warmup, "measure_s": $measure,
 "floor_mib": $KBB_FLOOR_MIB, "ceiling_mib": $KBB_CEIL_MIB, "read_iops": $read_iops,
 "pass_period_s": ${KBB_PASS_PERIOD:-10}, "pgbench_scale": $KDB_SCALE,
 "ksm_pages_to_scan": $KSM_PAGES_TO_SCAN, "ksm_sleep_millisecs": $KSM_SLEEP_MS,
 $(kbb_host_json "$KDB_KERNEL" "$REPO")}
JSON

run_arm() {
    local arm=$1 rep=$2 dir t0 t_ready end i g split='' clients consoles=() boot=() readers=()
    dir=$out/$arm-$rep
    mkdir -p "$dir"
    case $arm in
        b | c | e | ge) for g in "${names[@]}"; do boot+=("$KBB_FLOOR_MIB"); done ;;
        oc | oe)
            mapfile -t boot < <("$PY" bench/io_report.py --oracle-of "$out/${arm#o}-$rep") ||
                kb_die "arm $arm: no run of arm ${arm#o} (repeat $rep) to take its sizes from: list ${arm#o} before $arm"
            [ "${#boot[@]}" = "$guests" ] || kb_die "arm $arm: ${#boot[@]} sizes for $guests guests"
            ;;
        *) kb_die "unknown arm $arm (b, c, e, oc, oe, ge)" ;;
    esac
    local grown=()
    if [ "$arm" = ge ]; then
        mapfile -t grown < <("$PY" bench/io_report.py --oracle-of "$out/e-$rep") ||
            kb_die "arm ge: no run of arm e (repeat $rep) to take its sizes from: list e before ge"
        [ "${#grown[@]}" = "$guests" ] || kb_die "arm ge: ${#grown[@]} sizes for $guests guests"
    fi
    case $arm in
        c) split=equal ;;
        e) split=demand ;;
    esac
    for ((i = 0; i < busy && i < guests; i++)); do readers+=("${names[$i]}"); done
    [ "$KBB_LOCKED" = 1 ] || kbb_take_stack
    local run_start
    run_start=$(date +%s)
    kb_log "db rig, arm $arm, repeat $rep: $guests guests ($busy running pgbench), booted at ${boot[*]} MiB"
    kbb_ksm_clear
    kb_ksm_set 1 "$KSM_PAGES_TO_SCAN" "$KSM_SLEEP_MS"
    mkdir -p "$KBB_RUN"
    for ((i = 0; i < guests; i++)); do
        g=${names[$i]}
        rm -f "$KBB_RUN/$g.qcow2"
        qemu-img create -q -f qcow2 -F raw -b "$KDB_IMAGE" "$KBB_RUN/$g.qcow2"
        consoles+=(--console "$g=$(kbb_console "$g")")
    done
    t0=$(date +%s.%N)
    for ((i = 0; i < guests; i++)); do
        g=${names[$i]}
        clients=0
        [ "$i" -ge "$busy" ] || clients=1
        kg_boot "$KBB_RUN" "$g" --persistent --memory "$KBB_CEIL_MIB" --current "${boot[$i]}" \
            --kernel "$KDB_KERNEL" --initrd "$KDB_INITRD" --cmdline "kb.interval=5 kb.clients=$clients" \
            --disk "$KBB_RUN/$g.qcow2,format=qcow2,cache=none,serial=$KDB_SERIAL,read_iops_sec=$read_iops"
    done
    "$PY" bench/io_sample.py --out "$dir/samples.jsonl" --t0 "$t0" --duration 100000 \
        --uri "$KB_URI" "${consoles[@]}" &
    KBB_BG_PIDS+=($!)
    # ready: every guest warmed its cache (KB-GUEST-READY), and every busy
    # one printed its first pgbench figure
    kbb_wait_ready 900 "${names[@]}" || kb_die "arm $arm: the guests did not start"
    for g in "${readers[@]}"; do
        kg_wait_console 300 "$(kbb_console "$g")" '^KB-TPS ' "guest $g" || kb_die "arm $arm: $g ran no pgbench"
    done
    kbb_wait_boot_size 120 "${names[@]}" || kb_die "arm $arm: the balloons did not reach their boot sizes"
    if [ "${#grown[@]}" -gt 0 ]; then
        # ge: warmed at the floor, then grown by the balloon, once, to the
        # oracle's sizes and left alone: the memory e's passes give, given
        # back at t = 0 instead of booted with
        local sizes=()
        for ((i = 0; i < guests; i++)); do sizes+=("${names[$i]}=${grown[$i]}"); done
        kbb_set_sizes wait "${sizes[@]}" || kb_die "arm ge: the guests did not grow to ${grown[*]} MiB"
    fi
    t_ready=$(date +%s.%N)
    # the arm runs for a fixed time: the warm-up and measuring windows
    end=$("$PY" -c "print($t_ready + $warmup + $measure)")
    kbb_run_window "$dir" "$split" "$end" "arm $arm" "${names[@]}"
    cat >"$dir/arm.json" <<JSON
{"arm": "$arm", "rig": "db", "repeat": $rep, "t0_epoch": $t0, "t_ready": $("$PY" -c "print($t_ready - $t0)"),
 "warmup_s": $warmup, "measure_s": $measure, "split": "${split:-none}",
 "boot_mib_per_guest": [$(printf '%s,' "${boot[@]}" | sed 's/,$//')],
 "grown_mib_per_guest": [$(printf '%s,' "${grown[@]}" | sed 's/,$//')],
 "guests": [$(printf '"%s",' "${names[@]}" | sed 's/,$//')],
 "readers": [$(printf '"%s",' "${readers[@]}" | sed 's/,$//')],
 "run_s": $(( $(date +%s) - run_start ))}
JSON
    kbb_destroy_all
    rm -f "$KBB_RUN"/*.qcow2
    kbb_release_stack
}

IFS=, read -r -a arm_list <<<"$arms"
for ((rep = 1; rep <= repeats; rep++)); do
    for arm in "${arm_list[@]}"; do
        run_arm "$arm" "$rep"
    done
done

elapsed=$(( $(date +%s) - started ))
"$PY" - "$out/settings.json" "$elapsed" <<'PY'
import json, sys
p, el = sys.argv[1], int(sys.argv[2])
s = json.load(open(p))
s["elapsed_s"] = el
json.dump(s, open(p, "w"), indent=1)
PY
"$PY" bench/db_report.py "$out" --markdown "$out/table.md" --check
echo "db-effect: done in ${elapsed}s; results in $out"
