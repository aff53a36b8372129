#!/bin/bash
# The PostgreSQL bench guest: a guest whose workload is a real database
# from Debian's archive, PostgreSQL 15 answering `pgbench -S` (select-only),
# so a benchmark can measure transactions per second per guest with its
# page cache small or large. Builds, once, cached under $KG_CACHE
# (tests/lib/guest.sh; each piece rebuilt only when what goes into it
# changes):
#  - a minimal Debian 12 root (mmdebstrap --variant=minbase, from the Debian
#    archives this machine's apt uses: tests/systemd/lib.sh's
#    sd_apt_sources) with postgresql-15, which ships pgbench in Debian 12;
#  - in a copy of that root, the Debian cluster (15/main) with a pgbench
#    database of scale KDB_SCALE (default 8: pgbench_accounts and its
#    primary key take 119.6 MiB, more than a 160 MiB guest caches (its
#    Cached, shared buffers included, settles at about 72 MB) and less
#    than a 256 MiB one (about 167 MB); at scale 10, 149.5 MiB, a 256 MiB
#    guest still read a page from its disk for about one transaction in
#    four: docs/BENCHMARKS.md, part 3), made by running PostgreSQL in the
#    root (chroot, as its postgres user, in private PID,
#    IPC, network and mount namespaces) and stopping it cleanly; a small
#    shared_buffers (16MB), so the guest's page cache does the caching;
#    bench/dbguest/guest-run.sh as the root's /sbin/kb-db-init (the guest's
#    PID 1: no systemd);
#  - an ext4 image of that root, made without mounting (mke2fs -d): every
#    guest reads it through its own qcow2 overlay, so all guests hold the
#    same data (what KSM can merge in their page caches);
#  - the initramfs: tests/lib/guest.sh's kg_build_image with
#    bench/dbguest/init.sh as /init and ext4's modules added to the virtio
#    ones; it mounts the disk whose serial is "kbdbroot" and switch_roots.
#
# Usage: bench/dbguest/build.sh
#   prints the kernel, the initramfs, the root image and the data set's
#   size. Environment: KDB_SCALE (pgbench scale), KG_CACHE.
# Or source it (bench/dbguest/boot-test.sh does) and call kdb_build: it sets
# KDB_KERNEL, KDB_INITRD, KDB_IMAGE (the raw ext4 image, never written: a
# guest boots from a qcow2 overlay of it) and KDB_INFO (a file of
# "name value" lines: the data set's sizes in bytes, the scale). Every
# function is prefixed kdb_. Needs root, mmdebstrap, mke2fs, unshare.
set -euo pipefail

KDB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/libvirtd.sh
. "$KDB_HERE/../../tests/lib/libvirtd.sh"
# shellcheck source=tests/lib/guest.sh
. "$KDB_HERE/../../tests/lib/guest.sh"
# shellcheck source=tests/systemd/lib.sh
. "$KDB_HERE/../../tests/systemd/lib.sh"

KDB_SCALE=${KDB_SCALE:-8}
# postgresql-15 holds the server and pgbench (postgresql-client-15, a
# dependency, holds psql); mount is not Essential in Debian 12.
KDB_PACKAGES=(postgresql-15 mount)
# The guest's disk serial (bench/dbguest/init.sh looks for it).
KDB_SERIAL=kbdbroot
# The drivers of the initramfs: the virtio ones, then ext4's dependencies
# (crc32c_generic: ext4 asks the crypto API for crc32c, and nothing in the
# initramfs could load it on demand).
KDB_MODULES=("${KG_MODULES[@]}" crc16 mbcache jbd2 crc32c_generic ext4)
# PostgreSQL's settings for the benchmark (conf.d of the cluster): a small
# shared_buffers so the OS page cache holds the data; no TCP (the build
# runs it on this host); nothing that works in the background.
KDB_PG_CONF="# bench/dbguest/build.sh
listen_addresses = ''
ssl = off
shared_buffers = 16MB
max_connections = 10
dynamic_shared_memory_type = sysv
huge_pages = off
autovacuum = off
jit = off"

# kdb_root: sets KDB_ROOT (and KDB_ROOT_KEY) to the cached Debian root
# (sd_debian_root: built with mmdebstrap when none has the same key).
kdb_root() {
    # No documentation, manual pages or translations: the guest reads none.
    sd_debian_root "$KG_CACHE/dbguest-root" "" minbase "$(IFS=,; echo "${KDB_PACKAGES[*]}")" \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*'
    KDB_ROOT=$SD_DEBIAN_ROOT
    KDB_ROOT_KEY=$SD_DEBIAN_ROOT_KEY
}

# kdb_pg_init ROOT SCALE INFO: in ROOT, starts the cluster 15/main (made
# by the postgresql-15 package when it was installed) as its postgres
# user, makes the pgbench database at SCALE (with the pg_prewarm extension
# the guest warms its cache with), freezes and analyses it,
# writes the data set's sizes to INFO and stops the server cleanly (a
# checkpoint: the guest starts without recovery). In private namespaces: a
# server left behind dies with them, and the host's own PostgreSQL, if it
# has one, is never in the way.
kdb_pg_init() {
    local r=$1 scale=$2 info=$3
    cat >"$r/tmp/kb-pg-init.sh" <<'SH'
set -eu
bin=/usr/lib/postgresql/15/bin
[ -d /var/lib/postgresql/15/main ] || pg_createcluster 15 main >&2
install -d -o postgres -g postgres -m 2775 /run/postgresql
pg() { runuser -u postgres -- "$@"; }
pg "$bin/pg_ctl" -D /var/lib/postgresql/15/main \
    -o "-c config_file=/etc/postgresql/15/main/postgresql.conf" \
    -l /var/log/postgresql/kb-build.log -w -t 600 start >&2
pg createdb pgbench
pg "$bin/pgbench" -i -q -s "$1" pgbench >&2
pg psql -XAtq -d pgbench -c 'CREATE EXTENSION pg_prewarm' -c 'VACUUM (FREEZE, ANALYZE)' \
    -c CHECKPOINT >&2
echo "scale $1"
pg psql -XAt -F ' ' -d pgbench <<'SQL'
select 'accounts_bytes', pg_relation_size('pgbench_accounts')
union all select 'accounts_pkey_bytes', pg_relation_size('pgbench_accounts_pkey')
union all select 'database_bytes', pg_database_size('pgbench');
SQL
pg "$bin/pg_ctl" -D /var/lib/postgresql/15/main -m fast -w -t 600 stop >&2
rm -rf /run/postgresql
SH
    nice -n 19 unshare --pid --fork --kill-child --ipc --net --mount --mount-proc="$r/proc" \
        chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
        /bin/sh /tmp/kb-pg-init.sh "$scale" >"$info" || return 1
    rm -f "$r/tmp/kb-pg-init.sh"
}

# kdb_image: sets KDB_IMAGE and KDB_INFO: the root's ext4 image with the
# pgbench database (kdb_pg_init) and bench/dbguest/guest-run.sh as
# /sbin/kb-db-init, built when none has the same key: the root's, the
# scale, the PostgreSQL settings, guest-run.sh and this recipe.
kdb_image() {
    local key dir tmp r mib
    kdb_root
    key=$( {
        echo "$KDB_ROOT_KEY $KDB_SCALE"
        echo "$KDB_PG_CONF"
        sha256sum <"$KDB_HERE/guest-run.sh"
        declare -f kdb_image kdb_pg_init
    } | sha256sum | cut -c1-16)
    dir=$KG_CACHE/dbguest-img-$key
    KDB_IMAGE=$dir/root.img
    KDB_INFO=$dir/info
    sd_cache_ready "$dir" && return 0
    kb_log "building the db guest's disk (pgbench scale $KDB_SCALE) into $dir"
    tmp=$dir.tmp.$$
    rm -rf "$tmp"
    mkdir -p "$tmp"
    r=$tmp/root
    cp -a "$KDB_ROOT" "$r"
    rm -f "$r/.complete"
    install -m 0755 "$KDB_HERE/guest-run.sh" "$r/sbin/kb-db-init"
    printf '%s\n' "$KDB_PG_CONF" >"$r/etc/postgresql/15/main/conf.d/kb-bench.conf"
    kdb_pg_init "$r" "$KDB_SCALE" "$tmp/info" ||
        { rm -rf "$tmp"; kb_die "building the pgbench database failed"; }
    # Room for what PostgreSQL writes in a guest (statistics, WAL of hint
    # bits): a quarter more than the files, and 64 MiB.
    mib=$(du -sm "$r" | cut -f1)
    mib=$((mib + mib / 4 + 64))
    truncate -s "${mib}M" "$tmp/root.img"
    # Inode tables and journal written now: the guest's kernel would
    # otherwise zero them in the background (ext4lazyinit) while it is
    # measured.
    nice -n 19 mke2fs -q -F -t ext4 -L "$KDB_SERIAL" -E lazy_itable_init=0,lazy_journal_init=0 \
        -d "$r" "$tmp/root.img" || { rm -rf "$tmp"; kb_die "mke2fs failed"; }
    echo "image_bytes $(stat -c %s "$tmp/root.img")" >>"$tmp/info"
    rm -rf "$r"
    touch "$tmp/.complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    kb_log "db guest disk ready: $KDB_IMAGE ($mib MiB)"
}

# kdb_initrd: sets KDB_KERNEL and KDB_INITRD (kg_build_image with
# bench/dbguest/init.sh and KDB_MODULES).
kdb_initrd() {
    local KG_MODULES=("${KDB_MODULES[@]}")
    kg_build_image "$KDB_HERE/init.sh" || return 1
    KDB_KERNEL=$KG_KERNEL
    KDB_INITRD=$KG_INITRD
}

# kdb_build: the whole guest (kdb_image, kdb_initrd).
kdb_build() {
    [ "$(id -u)" = 0 ] || kb_die "building the db guest needs root (mmdebstrap, chroot)"
    kdb_image
    kdb_initrd
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    kdb_build
    echo "kernel $KDB_KERNEL"
    echo "initrd $KDB_INITRD"
    echo "image $KDB_IMAGE"
    cat "$KDB_INFO"
fi
