#!/bin/sh
# /init of the PostgreSQL bench guest's initramfs (bench/dbguest/build.sh
# packs it with tests/lib/guest.sh's kg_build_image: busybox, the virtio
# drivers, ext4 and its dependencies). It only finds the guest's root: the
# virtio disk whose serial is "kbdbroot" (an ext4 image of a Debian root
# with PostgreSQL and a pgbench database), mounts it and switch_roots into
# /sbin/kb-db-init there (bench/dbguest/guest-run.sh), which runs the
# workload. A root that cannot be found or mounted is reported on ttyS0 as
# "KB-GUEST-FAILED ...".
# busybox, /proc, /sys, /dev, the drivers and disk_by_serial
# (tests/lib/guest-prelude.sh)
# shellcheck source=tests/lib/guest-prelude.sh
. /lib/guest-prelude.sh

fail() {
    echo "KB-GUEST-FAILED $*"
    # /init must never exit (the kernel panics)
    exec sleep 100000
}

# the block devices appear asynchronously after insmod
i=0
until root=$(disk_by_serial kbdbroot); do
    i=$((i + 1))
    [ $i -gt 100 ] && fail "root disk kbdbroot not found: $(ls /sys/block)"
    sleep 0.1
done
mkdir -p /newroot
mount -t ext4 -o noatime "$root" /newroot || fail "mount $root (ext4)"
[ -x /newroot/sbin/kb-db-init ] || fail "no /sbin/kb-db-init on $root"
# The new root keeps the kernel's file systems (switch_root leaves them
# behind, unreachable, otherwise).
for d in proc sys dev; do
    mount -o move "/$d" "/newroot/$d" || fail "move /$d"
done
exec switch_root /newroot /sbin/kb-db-init
