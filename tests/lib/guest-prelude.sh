# shellcheck shell=sh
# The start every test guest's /init shares: the initramfs tests/lib/guest.sh
# builds holds it as /lib/guest-prelude.sh, and each /init sources it first.
# It puts busybox's applets on PATH, mounts /proc, /sys and /dev, and loads
# the drivers /modules/order lists, in that order (virtio PCI, the balloon,
# the disks); a driver that does not load is reported on the console as
# "KB-INSMOD-FAILED <module>". It also defines disk_by_serial.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
    insmod "/modules/$m.ko" || echo "KB-INSMOD-FAILED $m"
done </modules/order

# disk_by_serial SERIAL: prints /dev/vdX, the virtio disk whose serial number
# is SERIAL; fails when there is none (yet: the block devices appear
# asynchronously after insmod).
disk_by_serial() {
    for s in /sys/block/vd*/serial; do
        [ -e "$s" ] && [ "$(cat "$s")" = "$1" ] && { b=${s%/serial}; echo "/dev/${b##*/}"; return 0; }
    done
    return 1
}
