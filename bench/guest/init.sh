#!/bin/sh
# /init of the I/O benchmark's guest (busybox initramfs, Debian kernel),
# packed by tests/lib/guest.sh (kg_build_image, from bench/lib.sh) with
# /bin/busybox, the virtio modules and the static reader
# (bench/guest/reader.rs).
#
# What the guest does, all reported on ttyS0 (the console file):
#  - loads the virtio PCI, balloon and block drivers;
#  - finds its disks by serial number: "kbdata" (its own data disk, random
#    bytes, throttled by the host) and "kbapp" (the "application": the same
#    bytes in every guest, read-only, shared);
#  - copies kb.app_mib MiB (kernel command line) of kbapp into tmpfs, with
#    O_DIRECT so no page cache is involved: identical memory in every guest,
#    as the same OS and programs would be (what KSM finds to merge);
#  - prints "KB-GUEST-READY", then runs the reader on kbdata forever:
#    random 1 MiB reads through the page cache, one "KB-TPUT ..." line
#    every kb.interval seconds (see reader.rs), over the disk's first
#    kb.span_mib MiB only when that is set (its working set); with kb.read=0 it is an
#    idle guest: it holds its data disk open but reads nothing; with
#    kb.disks=0 it has no disk at all (booted from its initramfs, as an
#    appliance or a network-booted VM is): no data, no application copy,
#    and "read" is answered "KB-DONE <token> no-disk";
#  - when it has a second serial port (ttyS1, a unix socket on the host),
#    takes commands from it, one per line, each acknowledged on ttyS0 with
#    "KB-DONE <token> ...": "read <token>" starts (or resumes) the reader,
#    "idle <token>" stops it (SIGSTOP: the data stays in the page cache,
#    as a program that stopped reading leaves it).
# busybox, /proc, /sys, /dev, the virtio drivers and disk_by_serial
# (tests/lib/guest-prelude.sh)
# shellcheck source=tests/lib/guest-prelude.sh
. /lib/guest-prelude.sh
mkdir -p /app

app_mib=0 interval=2 seed=1 read_now=1 disks=1 span_mib=0
# the kernel command line is one line of words
# shellcheck disable=SC2013
for kv in $(cat /proc/cmdline); do
    case $kv in
        kb.app_mib=*) app_mib=${kv#*=} ;;
        kb.interval=*) interval=${kv#*=} ;;
        kb.seed=*) seed=${kv#*=} ;;
        kb.read=*) read_now=${kv#*=} ;;
        kb.disks=*) disks=${kv#*=} ;;
        kb.span_mib=*) span_mib=${kv#*=} ;;
    esac
done

# the block devices appear asynchronously after insmod
i=0
data=
[ "$disks" = 0 ] && app_mib=0 read_now=0
until [ "$disks" = 0 ] ||
    { data=$(disk_by_serial kbdata) && { [ "$app_mib" -eq 0 ] || app=$(disk_by_serial kbapp); }; }; do
    i=$((i + 1))
    [ $i -gt 100 ] && { echo "KB-GUEST-FAILED disks not found: $(ls /sys/block)"; exec sleep 100000; }
    sleep 0.1
done

if [ "$app_mib" -gt 0 ]; then
    mount -t tmpfs -o size=$((app_mib + 1))m tmpfs /app
    dd if="$app" of=/app/data bs=1M count="$app_mib" iflag=direct 2>/dev/null ||
        echo "KB-GUEST-FAILED app copy"
fi
echo "KB-GUEST-READY $(uname -r) data=${data:-none} app=${app:-none} app_mib=$app_mib"
# Linux drops a block device's page cache when its last opener closes it:
# hold it open here too, so the cache outlives a stopped reader.
[ -z "$data" ] || exec 3<"$data"
reader=
start_reader() {
    if [ -z "$data" ]; then
        return 1
    elif [ -z "$reader" ]; then
        /bin/reader "$data" "$interval" 1024 "$seed" "$span_mib" &
        reader=$!
    else
        kill -CONT "$reader"
    fi
}
[ "$read_now" = 1 ] && start_reader
if [ -c /dev/ttyS1 ] && stty -F /dev/ttyS1 raw -echo clocal 2>/dev/null; then
    while :; do
        while read -r cmd token; do
            case $cmd in
                read) if start_reader; then echo "KB-DONE $token reading"; else echo "KB-DONE $token no-disk"; fi ;;
                idle) { [ -z "$reader" ] || kill -STOP "$reader"; } && echo "KB-DONE $token idle" ;;
                '') ;;
                *) echo "KB-DONE $token unknown: $cmd" ;;
            esac
        done </dev/ttyS1
        sleep 1
    done
fi
# /init must never exit (the kernel panics)
while :; do sleep 3600; done
