#!/bin/bash
# Boots ONE PostgreSQL bench guest (bench/dbguest/build.sh) with plain QEMU,
# no libvirt, and prints the median of its pgbench -S transactions per
# second over a measuring window after a warm-up: what the guest does at a
# given memory size, before any rig with ksm-balloon runs it.
#
# The guest: software emulation (-accel tcg), one vCPU, MEM MiB, a virtio
# balloon device (never moved here), the cached root image through a fresh
# qcow2 overlay as a virtio disk with serial "kbdbroot", host caching off
# (cache=none: the host's page cache does not stand in for the guest's),
# its serial console to a file. -machine ...,mem-merge=off: its memory is
# never offered to the host's KSM (this machine's KSM belongs to others).
# QEMU is killed and the overlay removed on exit, whatever happens.
#
# Usage: bench/dbguest/boot-test.sh [--mem MIB] [--warmup S] [--window S]
#            [--interval S] [--read-iops N] [--read-mibs N] [--append TEXT]
#            [--console FILE]
#   --mem MIB       guest memory (default 256)
#   --warmup S      pgbench seconds not measured (default 60)
#   --window S      pgbench seconds measured after them (default 120)
#   --interval S    pgbench's progress interval, kb.interval (default 5)
#   --read-iops N   the disk's reads throttled to N a second (QEMU's
#                   throttling.iops-read, what libvirt's <iotune>
#                   read_iops_sec sets): the cost of a page-cache miss,
#                   which on this host's own disk is a fraction of a
#                   transaction's emulated CPU time; 0: none (default)
#   --read-mibs N   the disk's reads throttled to N MiB/s (QEMU's
#                   throttling.bps-read, as part 1's <iotune>); 0: none
#                   (default)
#   --append TEXT   more of the guest's kernel command line (its kb.*
#                   knobs: bench/dbguest/guest-run.sh)
#   --console FILE  keep the guest's console there (default: removed)
# Prints one line:
#   mem=<MiB> window=<s> samples=<n> median_tps=<n> mean_tps=<n> min=<n> max=<n> memtotal=<kB> cached=<kB> disk_read_mib=<n>
# (memtotal and cached: the guest's, at the window's last sample;
# disk_read_mib: what QEMU read from the disk during the window, the
# guest's page-cache misses).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/dbguest/build.sh
. "$HERE/build.sh"

mem=256 warmup=60 window=120 interval=5 read_iops=0 read_mibs=0 append='' keep_console=''
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || kb_die "$1 needs a value"
    case $1 in
        --mem) mem=$2 ;;
        --warmup) warmup=$2 ;;
        --window) window=$2 ;;
        --interval) interval=$2 ;;
        --read-iops) read_iops=$2 ;;
        --read-mibs) read_mibs=$2 ;;
        --append) append=$2 ;;
        --console) keep_console=$2 ;;
        *) kb_die "unknown option $1 (see the header of $0)" ;;
    esac
    shift 2
done
for v in "$mem" "$warmup" "$window" "$interval" "$read_iops" "$read_mibs"; do
    [[ $v =~ ^[0-9]+$ ]] || kb_die "not a whole number: $v"
done

kdb_build

work=$(mktemp -d /tmp/pg-rig-boot.XXXXXX)
console=$work/console
qpid=''
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$qpid" ]; then
        kill "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
    fi
    [ -z "$keep_console" ] || cp "$console" "$keep_console" 2>/dev/null || true
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT INT TERM

qemu-img create -q -f qcow2 -F raw -b "$KDB_IMAGE" "$work/overlay.qcow2"
throttle=''
[ "$read_iops" = 0 ] || throttle+=",throttling.iops-read=$read_iops"
[ "$read_mibs" = 0 ] || throttle+=",throttling.bps-read=$((read_mibs * 1048576))"
: >"$console"
nice -n 19 qemu-system-x86_64 -machine pc,mem-merge=off -accel tcg -m "$mem" -smp 1 \
    -nodefaults -no-user-config -display none -monitor none \
    -kernel "$KDB_KERNEL" -initrd "$KDB_INITRD" \
    -append "$KG_CMDLINE kb.interval=$interval${append:+ $append}" \
    -device virtio-balloon-pci \
    -drive "file=$work/overlay.qcow2,format=qcow2,if=none,id=root,cache=none,aio=threads$throttle" \
    -device "virtio-blk-pci,drive=root,serial=$KDB_SERIAL" \
    -serial "file:$console" &
qpid=$!
kb_log "QEMU $qpid: $mem MiB guest booting (console $console)"

# The guest is ready, failed, or its QEMU is gone.
settled() { kg_console_has "$console" "^KB-GUEST-READY|$KG_FAILED_RE" || ! kill -0 "$qpid" 2>/dev/null; }
kb_wait_until 600 "the guest to print KB-GUEST-READY" settled || kb_die "no KB-GUEST-READY"
kill -0 "$qpid" 2>/dev/null || kb_die "QEMU exited: $(tail -n 5 "$console")"
kg_console_has "$console" '^KB-GUEST-READY' ||
    kb_die "guest failed: $(grep -aE -- "$KG_FAILED_RE" "$console" | head -n 3)"
kb_log "$(grep -a '^KB-GUEST-READY' "$console")"

# kdb_last_t: pgbench's clock at the newest whole KB-TPS line (0 before one).
kdb_last_t() {
    kg_console_whole "$console" | tr -d '\r' |
        awk '/^KB-TPS / { sub(/^t=/, "", $2); t = $2 } END { print t + 0 }'
}
# kdb_reached S: pgbench's clock passed S seconds (or QEMU is gone).
kdb_reached() {
    kill -0 "$qpid" 2>/dev/null || return 0
    awk -v t="$(kdb_last_t)" -v end="$1" 'BEGIN { exit !(t >= end) }'
}
# kdb_read_bytes: what QEMU has read from the root image so far (its
# read_bytes: the disk is opened with O_DIRECT, so these are the guest's
# page-cache misses, plus the kernel and initramfs it loaded at start).
kdb_read_bytes() { awk '$1 == "read_bytes:" { print $2 }' "/proc/$qpid/io"; }
# Deadlines: each stretch, plus as long again for pgbench's start and slow
# samples.
kdb_wait_t() {
    kb_wait_until $((2 * $1 + 120)) "pgbench to run $1 s" kdb_reached "$1" ||
        kb_die "pgbench did not reach $1 s: $(tail -n 3 "$console")"
    kill -0 "$qpid" 2>/dev/null || kb_die "QEMU exited: $(tail -n 5 "$console")"
}
kdb_wait_t "$warmup"
read0=$(kdb_read_bytes)
kdb_wait_t $((warmup + window))
read1=$(kdb_read_bytes)

kg_console_whole "$console" | tr -d '\r' | awk -v from="$warmup" -v to=$((warmup + window)) -v mem="$mem" \
    -v rd=$((read1 - read0)) '
    /^KB-TPS / {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        if (f["t"] > from && f["t"] <= to) {
            tps[n++] = f["tps"] + 0; sum += f["tps"]; total = f["memtotal"]; cached = f["cached"]
        }
    }
    END {
        if (n == 0) { print "no KB-TPS sample in the window" > "/dev/stderr"; exit 1 }
        # insertion sort: a window holds a few dozen samples
        for (i = 1; i < n; i++) { v = tps[i]; for (j = i - 1; j >= 0 && tps[j] > v; j--) tps[j + 1] = tps[j]; tps[j + 1] = v }
        med = n % 2 ? tps[(n - 1) / 2] : (tps[n / 2 - 1] + tps[n / 2]) / 2
        printf "mem=%d window=%d samples=%d median_tps=%.1f mean_tps=%.1f min=%.1f max=%.1f memtotal=%d cached=%d disk_read_mib=%.1f\n",
            mem, to - from, n, med, sum / n, tps[0], tps[n - 1], total, cached, rd / 1048576
    }'
