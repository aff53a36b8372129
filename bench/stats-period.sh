#!/usr/bin/env bash
# What a guest's memory statistics period costs, and whether a report can
# be had on demand (issue 23; docs/BENCHMARKS.md). One real QEMU guest
# (software-emulated, idle) under a real libvirtd:
#   - its QEMU process's CPU time (utime + stime, /proc/PID/stat) over a
#     fixed window with the statistics period at 0 (none), 1, 5 and 10 s,
#     the periods interleaved, REPEATS times;
#   - how soon a new report comes (libvirt's balloon.last-update) after
#     the period is set from 0 to 10 s, against after it is set from 10 to
#     9 s: QEMU's balloon_stats_set_poll_interval polls at once in the
#     first case and only moves its timer in the second.
# Prints its figures; asserts nothing about their size.
#
# Usage (as root): bench/stats-period.sh [--window SECONDS] [--repeats N] [path/to/ksm-balloon]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/lib/libvirtd.sh
. "$here/../tests/lib/libvirtd.sh"
# shellcheck source=tests/realstack/lib.sh
. "$here/../tests/realstack/lib.sh"

WINDOW=20
REPEATS=2
while [ $# -gt 0 ]; do
    case $1 in
        --window) WINDOW=$2; shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        -*) kb_die "unknown option $1" ;;
        *) break ;;
    esac
done
BIN=${1:-$RS_REPO/target/debug/ksm-balloon}
G=${RS_PREFIX}p1

rs_setup "$BIN"
rs_boot p1 256 160 virtio --stats 0
rs_wait_ready 120 p1 || kb_die "the guest did not boot"
kb_wait_until 30 "p1 at its boot size" rs_actual_is p1 $((160 * RS_MIB)) || kb_die "p1 did not inflate"
pid=$(cat "/run/libvirt/qemu/$G.pid") || kb_die "no pid file for $G"
hz=$(getconf CLK_TCK)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
period() { rs_virsh dommemstat "$G" --period "$1" --live >/dev/null; }
last_update() {
    rs_virsh domstats --balloon "$G" 2>/dev/null |
        awk -F= '$1 ~ /balloon.last-update$/ { print $2; f = 1 } END { if (!f) print 0 }'
}
newer_than() { [ "$(last_update)" -gt "$1" ]; }

declare -A CPU
for ((rep = 1; rep <= REPEATS; rep++)); do
    for p in 0 1 5 10; do
        period "$p" || kb_die "cannot set the period to $p"
        c0=$(cpu_ticks)
        t0=$(date +%s%N)
        # pacing, not a wait for a state: the measuring window
        sleep "$WINDOW"
        c1=$(cpu_ticks)
        t1=$(date +%s%N)
        pct=$(python3 -c "print(f'{($c1 - $c0) / $hz / (($t1 - $t0) / 1e9) * 100:.2f}')")
        CPU[$p]+="$pct "
        echo "repeat $rep, period $p s: QEMU CPU ${pct}% of one core over ${WINDOW}s"
    done
done

# A report on demand? From 0 to 10 s, then from 10 to 9 s.
demand() { # FROM TO: seconds until a report newer than the switch
    local from=$1 to=$2 t lu
    period "$from"
    if [ "$from" != 0 ]; then
        lu=$(last_update)
        kb_wait_until 30 "a report at period $from" newer_than "$lu" || return 1
    fi
    lu=$(last_update)
    t=$(date +%s%N)
    period "$to"
    if kb_wait_until 20 "a report after the switch $from -> $to" newer_than "$lu"; then
        python3 -c "print(f'{($(date +%s%N) - $t) / 1e9:.1f}')"
    else
        echo "none within 20 s"
    fi
}
ON_DEMAND=()
for ((rep = 1; rep <= REPEATS; rep++)); do
    a=$(demand 0 10)
    b=$(demand 10 9)
    ON_DEMAND+=("0->10: $a s, 10->9: $b s")
    echo "repeat $rep: a new report $a s after the period went 0 -> 10 s, $b s after 10 -> 9 s"
done
rs_teardown
trap - EXIT

echo
echo "=== stats-period summary (QEMU CPU % of one core, idle guest, ${WINDOW}s windows)"
for p in 0 1 5 10; do echo "period $p s: ${CPU[$p]}"; done
printf 'report after a switch: %s\n' "${ON_DEMAND[@]}"
