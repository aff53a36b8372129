#!/bin/sh
# /init of the real-stack test guest (busybox initramfs, Debian kernel).
# tests/lib/guest.sh (kg_build_image) packs it with /bin/busybox and the
# virtio modules into an initramfs; its hash is part of the cached image's
# key, so editing this file rebuilds the image.
#
# What the guest does:
#  - loads the virtio PCI, balloon and block drivers;
#  - prints "KB-GUEST-READY" on ttyS0 (the console file), then every 2 s a
#    line "MEMTOTAL <kB> MEMFREE <kB> FILL <MiB> MEMAVAILABLE <kB> OWN <MiB>"
#    from its own /proc/meminfo and its tmpfs: the tests read the guest's
#    view of its memory from there;
#  - reads commands, one per line, from ttyS1 (a unix socket on the host)
#    and acknowledges each on ttyS0 with "KB-DONE <token> ...":
#      fill <MiB> <token>  copy the first <MiB> MiB of the shared read-only
#                          disk /dev/vda into tmpfs (the same data in every
#                          guest, different in every page: what KSM merges
#                          across guests)
#      random <MiB> <token> the same, but <MiB> MiB of the guest's own random
#                          bytes: nothing KSM can merge
#      drop <token>        delete it
#      own <MiB> <token>   <MiB> MiB of the guest's own random bytes in a
#                          second file, beside the shared data (an
#                          application's memory); own 0 deletes it
#      read <MiB> <token>  reads the first <MiB> MiB of /dev/vda through
#                          the page cache (a guest reading its disk: its
#                          cache grows; nothing is kept)
#      ping <token>        answers "pong" (the guest still runs commands)
#    The tmpfs (so every fill) is capped at 48 MiB, or at <MiB> given as
#    kb_fill=<MiB> on the kernel command line: a guest whose tmpfs outgrows
#    its balloon panics, and at its 160 MiB floor this guest has about
#    110 MiB.
# busybox, /proc, /sys, /dev and the virtio drivers (tests/lib/guest-prelude.sh)
# shellcheck source=tests/lib/guest-prelude.sh
. /lib/guest-prelude.sh
cap=48
read -r cmdline </proc/cmdline
for word in $cmdline; do
    case $word in kb_fill=*) cap=${word#kb_fill=} ;; esac
done
mkdir -p /fill
mount -t tmpfs -o "size=${cap}m" tmpfs /fill
echo "KB-GUEST-READY $(uname -r)"

meminfo() {
    total=0 free=0 avail=0
    while read -r key value _; do
        case $key in
            MemTotal:) total=$value ;;
            MemFree:) free=$value ;;
            MemAvailable:) avail=$value ;;
        esac
    done </proc/meminfo
    # The commands loop removes and rewrites /fill's files while this one
    # reads them. A file gone between a test and its stat (or a fork
    # refused when memory is short) left $(( / 1048576)), a syntax error,
    # and a syntax error ends a shell: init exited with status 2 and the
    # guest panicked (CI L3, 30-realstack scenario 5's drop). A size that
    # cannot be read is 0.
    s=$(stat -c %s /fill/data 2>/dev/null) || s=0
    case $s in '' | *[!0-9]*) s=0 ;; esac
    fill=$((s / 1048576))
    s=$(stat -c %s /fill/own 2>/dev/null) || s=0
    case $s in '' | *[!0-9]*) s=0 ;; esac
    own=$((s / 1048576))
    echo "MEMTOTAL $total MEMFREE $free FILL $fill MEMAVAILABLE $avail OWN $own"
}

commands() {
    stty -F /dev/ttyS1 raw -echo clocal 2>/dev/null
    while :; do
        while read -r cmd arg token; do
            case $cmd in
                fill)
                    [ "$arg" -le "$cap" ] 2>/dev/null || {
                        echo "KB-DONE $token refused: fill $arg"
                        continue
                    }
                    rm -f /fill/data
                    if [ -b /dev/vda ] &&
                        dd if=/dev/vda of=/fill/data bs=1M count="$arg" iflag=direct 2>/dev/null; then
                        echo "KB-DONE $token filled $arg"
                    else
                        echo "KB-DONE $token failed: fill $arg"
                    fi
                    ;;
                random)
                    [ "$arg" -le "$cap" ] 2>/dev/null || {
                        echo "KB-DONE $token refused: random $arg"
                        continue
                    }
                    rm -f /fill/data
                    if dd if=/dev/urandom of=/fill/data bs=1M count="$arg" 2>/dev/null; then
                        echo "KB-DONE $token random $arg"
                    else
                        echo "KB-DONE $token failed: random $arg"
                    fi
                    ;;
                own)
                    rm -f /fill/own
                    if [ "$arg" = 0 ]; then
                        echo "KB-DONE $token own 0"
                    elif [ "$arg" -gt 0 ] 2>/dev/null &&
                        dd if=/dev/urandom of=/fill/own bs=1M count="$arg" 2>/dev/null; then
                        echo "KB-DONE $token own $arg"
                    else
                        echo "KB-DONE $token failed: own $arg"
                    fi
                    ;;
                drop)
                    rm -f /fill/data /fill/own
                    echo "KB-DONE $arg dropped"
                    ;;
                read)
                    if [ -b /dev/vda ] && [ "$arg" -ge 0 ] 2>/dev/null &&
                        dd if=/dev/vda of=/dev/null bs=1M count="$arg" 2>/dev/null; then
                        echo "KB-DONE $token read $arg"
                    else
                        echo "KB-DONE $token failed: read $arg"
                    fi
                    ;;
                ping) echo "KB-DONE $arg pong" ;;
                '') ;;
                *) echo "KB-DONE $token unknown: $cmd" ;;
            esac
            meminfo
        done </dev/ttyS1
        sleep 1
    done
}

[ -c /dev/ttyS1 ] && commands &

while :; do
    meminfo
    sleep 2
done
