#!/usr/bin/env bash
# Issue 21's benchmark (docs/BENCHMARKS.md, part 5): who should set KSM's
# scan rate on a host where ksm-balloon lends the savings. Side by side in
# one run, arms interleaved within each repeat, each run from fresh guests
# with KSM's merges cleared:
#
#   fast      KSM at a fixed fast setting: run 1, pages_to_scan 1000, sleep 20 ms
#   default   KSM at the kernel's default: run 1, pages_to_scan 100, sleep 20 ms
#   ksmtuned  Debian's ksmtuned as it ships: `ksmctl start` (its ksm.service),
#             then /usr/sbin/ksmtuned with /etc/ksmtuned.conf as installed
#   advisor   the kernel's advisor alone: run 1, advisor_mode scan-time,
#             its other knobs at the kernel's defaults
#   manage    ksm-balloon --ksm manage, from KSM as a fresh host has it
#             (run 0, pages_to_scan 100, sleep 20 ms)
#
# Every arm lends with ksm-balloon (`--split equal run --json` every 10 s;
# `--ksm manage` in the manage arm, observe in the others). The guests are
# the I/O benchmark's (bench/lib.sh: 256 MiB ceiling, booted at their 160
# MiB floor, each holding the same 32 MiB of "application" bytes, a 128 MiB
# data disk throttled to 20 MiB/s), idle at first. Three phases, from the
# moment every guest has booted and its balloon is at its boot size:
#
#   merge   --merge seconds (default 180): the guests idle; KSM finds their
#           shared bytes
#   quiet   --quiet seconds (default 120): nothing changes, nothing new to merge
#   churn   --churn seconds (default 120): every guest re-reads its data
#           disk at random through its page cache (memory that changes all
#           the time, none of it shared)
#
# bench/io_sample.py records every 2 s the KSM counters and knobs, ksmd's
# CPU time, the balloons and the guests' figures, and every guest's
# throughput; bench/ksm_governor_report.py prints per arm: the time to 90 %
# of the steady savings, the steady savings (the quiet phase's mean),
# ksmd's CPU % per phase and over the run, the MiB lent (mean balloon above
# the floor), the guests' MB/s in the churn phase, each as the mean over
# the repeats with its range, and the issue's goals, met or not.
#
#   bench/ksm-governor.sh [--repeats R] [--arms fast,default,ksmtuned,advisor,manage]
#       [--merge S] [--quiet S] [--churn S] [--out DIR]
#
# Needs Debian's ksmtuned for its arm (`apt-get install ksmtuned`; its
# units are not started here: no systemd). Holds the real-stack lock for
# each run; leaves KSM as found (advisor_mode too) and destroys its guests,
# also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=/usr/bin/python3

repeats=3 arms=fast,default,ksmtuned,advisor,manage merge=180 quiet=120 churn=120
out=$REPO/bench/results/ksm-governor guests=3
while [ $# -gt 0 ]; do
    case $1 in
        --repeats) repeats=$2; shift ;;
        --arms) arms=$2; shift ;;
        --merge) merge=$2; shift ;;
        --quiet) quiet=$2; shift ;;
        --churn) churn=$2; shift ;;
        --out) out=$2; shift ;;
        *) echo "usage: bench/ksm-governor.sh [--repeats R] [--arms fast,default,ksmtuned,advisor,manage] [--merge S] [--quiet S] [--churn S] [--out DIR]" >&2
           exit 2 ;;
    esac
    shift
done
out=$(realpath -m "$out")

# shellcheck source=tests/lib/libvirtd.sh
. tests/lib/libvirtd.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

IFS=, read -r -a arm_list <<<"$arms"
for arm in "${arm_list[@]}"; do
    case $arm in
        fast | default | advisor | manage) ;;
        ksmtuned)
            if [ ! -x /usr/sbin/ksmtuned ] || [ ! -x /usr/sbin/ksmctl ]; then
                kb_die "arm ksmtuned: Debian's ksmtuned is not installed (apt-get install ksmtuned)"
            fi ;;
        *) kb_die "unknown arm $arm (fast, default, ksmtuned, advisor, manage)" ;;
    esac
done
[ -e "$KB_KSM_DIR/advisor_mode" ] || kb_die "this kernel has no KSM advisor ($KB_KSM_DIR/advisor_mode, Linux 6.8+)"

started=$(date +%s)
kbb_pick_bin 0
kbb_build_guest
for ((i = 0; i < guests; i++)); do kbb_disk "data-$i" "$KBB_DATA_MIB" >/dev/null; done
kbb_disk app "$KBB_APP_MIB" >/dev/null
mapfile -t names < <(kbb_names "$guests")

# the advisor's mode as found, given back with the other knobs
advisor_mode() { sed -n 's/.*\[\(.*\)\].*/\1/p' "$KB_KSM_DIR/advisor_mode"; }
ADVISOR_FOUND=$(advisor_mode)
TUNED_PID=''
stop_ksmtuned() {
    [ -n "$TUNED_PID" ] || return 0
    pkill -P "$TUNED_PID" 2>/dev/null || true
    kill "$TUNED_PID" 2>/dev/null || true
    TUNED_PID=''
}
# back to the advisor as found before the knobs are restored (while it is
# on, pages_to_scan cannot be written)
release() {
    stop_ksmtuned
    echo "$ADVISOR_FOUND" >"$KB_KSM_DIR/advisor_mode" || true
    kbb_release_stack
}
kbb_trap_cleanup release

rm -rf "$out"
mkdir -p "$out"
cat >"$out/settings.json" <<JSON
{"command": "bench/ksm-governor.sh --repeats $repeats --arms $arms --merge $merge --quiet $quiet --churn $churn --out ${out#"$REPO"/}",
 "guests": $guests, "repeats": $repeats, "arms": "$arms", "merge_s": $merge, "quiet_s": $quiet, "churn_s": $churn,
 "floor_mib": $KBB_FLOOR_MIB, "ceiling_mib": $KBB_CEIL_MIB, "app_mib": $KBB_APP_MIB, "data_mib": $KBB_DATA_MIB,
 "pass_period_s": ${KBB_PASS_PERIOD:-10}, "host": "$(hostname)", "kernel": "$(uname -r)", "cpus": $(nproc),
 "mem_total_kib": $(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo),
 "libvirt": "$(virsh --version)", "qemu": "$(qemu-system-x86_64 --version | head -n1)",
 "ksmtuned": "$(dpkg-query -W -f '${Version}' ksmtuned 2>/dev/null || echo none)",
 "started": "$(date -u +%FT%TZ)", "commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"}
JSON

# set_arm ARM: KSM as the arm starts it (after the merges are cleared).
set_arm() {
    case $1 in
        fast) kb_ksm_set 1 1000 20 ;;
        default | advisor) kb_ksm_set 1 100 20 ;;
        ksmtuned | manage) kb_ksm_set 0 100 20 ;;
    esac
    case $1 in
        advisor) echo scan-time >"$KB_KSM_DIR/advisor_mode" ;;
        ksmtuned)
            # as its units start it: ksm.service, then ksmtuned.service
            # (Type=forking: the script forks its loop and exits)
            /usr/sbin/ksmctl start
            /usr/sbin/ksmtuned {KB_LOCK_FD}>&-
            TUNED_PID=$(cat /var/run/ksmtune.pid)
            ;;
    esac
}

run_arm() {
    local arm=$1 rep=$2 dir t0 t_ready end consoles=() g i ksm_mode=observe
    dir=$out/$arm-$rep
    mkdir -p "$dir"
    [ "$arm" != manage ] || ksm_mode=manage
    kbb_take_stack
    local run_start
    run_start=$(date +%s)
    kb_log "arm $arm, repeat $rep: $guests idle guests at $KBB_FLOOR_MIB MiB"
    echo none >"$KB_KSM_DIR/advisor_mode"
    kbb_ksm_clear
    set_arm "$arm"
    for g in "${names[@]}"; do consoles+=(--console "$g=$(kbb_console "$g")"); done
    t0=$(date +%s.%N)
    for ((i = 0; i < guests; i++)); do kbb_boot "$i" "$KBB_FLOOR_MIB" --cmd --idle; done
    "$PY" bench/io_sample.py --out "$dir/samples.jsonl" --t0 "$t0" --duration 100000 \
        --uri "$KB_URI" "${consoles[@]}" &
    KBB_BG_PIDS+=($!)
    kbb_wait_ready 300 "${names[@]}" || kb_die "arm $arm: the guests did not boot"
    kbb_wait_boot_size 120 "${names[@]}" || kb_die "arm $arm: the balloons did not reach their boot sizes"
    t_ready=$(date +%s.%N)
    kbb_pass_loop "$dir" --split equal --ksm "$ksm_mode"
    # the phases are fixed windows
    kbb_run_until "$("$PY" -c "print($t_ready + $merge + $quiet)")" "arm $arm" "${names[@]}"
    for g in "${names[@]}"; do kbb_cmd "$g" read >/dev/null || kb_die "arm $arm: $g did not start reading"; done
    end=$("$PY" -c "print($t_ready + $merge + $quiet + $churn)")
    kbb_run_until "$end" "arm $arm" "${names[@]}"
    kbb_stop_bg
    stop_ksmtuned
    for g in "${names[@]}"; do cp "$(kbb_console "$g")" "$dir/$g.console"; done
    cat >"$dir/arm.json" <<JSON
{"arm": "$arm", "repeat": $rep, "t0_epoch": $t0, "t_ready": $("$PY" -c "print($t_ready - $t0)"),
 "merge_s": $merge, "quiet_s": $quiet, "churn_s": $churn, "floor_mib": $KBB_FLOOR_MIB,
 "guests": [$(printf '"%s",' "${names[@]}" | sed 's/,$//')], "run_s": $(($(date +%s) - run_start))}
JSON
    release
}

for ((rep = 1; rep <= repeats; rep++)); do
    for arm in "${arm_list[@]}"; do
        run_arm "$arm" "$rep"
    done
done
elapsed=$(($(date +%s) - started))
"$PY" - "$out/settings.json" "$elapsed" <<'PY'
import json, sys
p = sys.argv[1]
s = json.load(open(p))
s["elapsed_s"] = int(sys.argv[2])
json.dump(s, open(p, "w"), indent=1)
PY
"$PY" bench/ksm_governor_report.py "$out" --markdown "$out/table.md"
echo "ksm-governor: done in ${elapsed}s; results in $out"
