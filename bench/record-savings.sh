#!/usr/bin/env bash
# Records a real KSM savings trace for examples/replay (docs/BENCHMARKS.md,
# "Lend only what holds"): three real-stack test guests
# (tests/realstack/lib.sh, 256 MiB ceiling booted at 160 MiB) change the
# data they hold on a fixed schedule (the guest's "fill", "random" and
# "drop" commands: the same bytes in every guest, which KSM merges; bytes
# of their own, which it cannot; nothing), while every 10 s (a pass's
# period) the host's `general_profit` and MemAvailable are written as
# `t,savings_kib,available_kib`. ksm-balloon does NOT run, so MemAvailable
# is the host's baseline with nothing lent, as the replay wants it.
#
#   bench/record-savings.sh [--duration S] [--out FILE]
#     default 1080 s (18 min) into bench/results/savings-trace.csv
#
# The schedule is given in fractions of the duration, so a short recording
# (the CI's) goes through the same changes faster. Each change is written
# into the trace as a "# t=... guest command: reply" comment line.
# KSM runs as the I/O benchmark runs it (pages_to_scan 1000,
# sleep_millisecs 20), from no merges (run=2 first). Holds the real-stack
# lock; destroys its guests and leaves KSM as found, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=1080 out=bench/results/savings-trace.csv period=10
while [ $# -gt 0 ]; do
    case $1 in
        --duration) duration=$2; shift ;;
        --out) out=$2; shift ;;
        *) echo "usage: bench/record-savings.sh [--duration S] [--out FILE]" >&2; exit 2 ;;
    esac
    shift
done
case $duration in '' | *[!0-9]*) echo "record-savings: --duration $duration is not a number of seconds" >&2; exit 2 ;; esac

RS_RUN=/run/ksm-balloon-record
# shellcheck source=tests/lib/libvirtd.sh
. tests/lib/libvirtd.sh
# shellcheck source=tests/realstack/lib.sh
. tests/realstack/lib.sh

# The schedule: at this fraction (per mille) of the duration, this guest
# does this. Rises (the same data filled in more guests), falls (a guest's
# shared data replaced by its own, or dropped) and rewrites (the same
# guest refilling: its pages unmerge, then merge again).
SCHEDULE=(
    "60 a fill 32"
    "90 b fill 32"
    "120 c fill 32"
    "250 b fill 48"
    "330 a random 32"
    "420 c drop"
    "500 a fill 48"
    "520 c fill 48"
    "640 b drop"
    "700 b random 48"
    "780 a fill 16"
    "800 c fill 16"
    "860 b fill 16"
    "930 a drop"
)

sampler=''
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -z "$sampler" ] || { kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; }
    [ "$rc" = 0 ] || kg_diagnostics "$RS_RUN"
    rs_destroy_all
    kb_ksm_restore
    exit "$rc"
}

rs_build_guest || kb_die "cannot build the guest image"
kb_realstack_lock
trap cleanup EXIT
trap 'exit 130' INT TERM
kb_ksm_save
kb_libvirtd_start
rs_destroy_all
mkdir -p "$RS_RUN" "$(dirname "$out")"
kb_ksm_set 2
kb_wait_until 120 "KSM to unmerge" bash -c "[ \"\$(cat $KB_KSM_DIR/pages_shared)\" = 0 ]" ||
    kb_die "KSM did not unmerge"
kb_ksm_set 1 1000 20
[ -r "$KB_KSM_DIR/general_profit" ] || kb_die "this kernel has no general_profit (Linux 6.4 or later)"

for g in a b c; do rs_boot "$g" 256 160; done
rs_wait_ready 120 a b c || kb_die "the guests did not boot"

t0=$(date +%s)
{
    echo "# bench/record-savings.sh --duration $duration: 3 guests (256 MiB, booted at 160), KSM pages_to_scan 1000 sleep_millisecs 20, ksm-balloon not running; started $(date -u +%FT%TZ)"
    echo "t,savings_kib,available_kib"
} >"$out"
# one line every $period s, on the tick (the commands below take seconds)
(
    k=0
    while [ $((k * period)) -le "$duration" ]; do
        p=$(cat "$KB_KSM_DIR/general_profit")
        [ "$p" -gt 0 ] || p=0
        echo "$((k * period)),$((p / 1024)),$(awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo)" >>"$out"
        k=$((k + 1))
        now=$(date +%s.%N)
        sleep "$(python3 -c "print(max(0.0, $t0 + $k * $period - $now))")"
    done
) &
sampler=$!

for ev in "${SCHEDULE[@]}"; do
    read -r permille guest cmd arg <<<"$ev"
    at=$((t0 + duration * permille / 1000))
    now=$(date +%s)
    # pacing, not a wait for a condition: the schedule's times
    [ "$now" -ge "$at" ] || sleep $((at - now))
    reply=$(rs_cmd "$guest" "$cmd" ${arg:+"$arg"}) || kb_die "guest $guest: $cmd $arg failed"
    echo "# t=$(($(date +%s) - t0)) guest $guest $cmd${arg:+ $arg}: $reply" >>"$out"
    kb_log "t=$(($(date +%s) - t0)) s: guest $guest $cmd${arg:+ $arg}: $reply"
done
wait "$sampler"
sampler=''
kb_log "record-savings: $(grep -c '^[0-9]' "$out") samples over ${duration} s in $out"
