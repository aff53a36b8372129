#!/bin/bash
# PID 1 of the PostgreSQL bench guest, installed by bench/dbguest/build.sh
# as /sbin/kb-db-init in the guest's Debian root (the initramfs,
# bench/dbguest/init.sh, switch_roots into it with /proc, /sys and /dev
# mounted). Not systemd: this script is the whole init.
#
# What the guest does, all reported on ttyS0 (the console):
#  - starts PostgreSQL 15 (the cluster and its pgbench database were built
#    with the image; shared_buffers is small so the guest's page cache does
#    the caching);
#  - reads pgbench_accounts and its primary key once (pg_prewarm's 'read'
#    mode: through the page cache, not into shared_buffers), so the page
#    cache holds what fits of the data set from the start, as a database
#    that has run a while has it (filled by pgbench -S's random look-ups
#    alone, at about a hundred a second under software emulation, it
#    would take many minutes), and prints "KB-PREWARM seconds=<s>
#    cached=<kB>";
#  - prints "KB-GUEST-READY <kernel> scale=<pgbench scale> root=<device>
#    read_ahead_kb=<its read-ahead>";
#  - runs `pgbench -n -S -c <clients> -j 1 -P <interval>` (select-only:
#    random primary-key look-ups in pgbench_accounts) for as long as the
#    guest runs, and turns each of its progress lines into
#      KB-TPS t=<s> tps=<n> memtotal=<kB> memfree=<kB> cached=<kB>
#    where t is pgbench's own clock (seconds since it started), tps its
#    figure for the last interval, and the rest the guest's /proc/meminfo
#    at that moment;
#  - "KB-GUEST-FAILED <what>" when PostgreSQL does not start, and
#    "KB-PGBENCH-EXIT <status>" if pgbench ever ends (it is restarted).
# Kernel command-line knobs: kb.interval=S (default 5), kb.clients=N
# (default 1; 0: no pgbench, the guest prints KB-IDLE and idles), kb.prewarm=0 (no warming: the cache fills from pgbench's
# own reads), kb.readahead_kb=N (the root disk's read_ahead_kb; default:
# the kernel's).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
PGBIN=/usr/lib/postgresql/15/bin
PGDATA=/var/lib/postgresql/15/main
PGCONF=/etc/postgresql/15/main/postgresql.conf

interval=5 clients=1 prewarm=1 readahead_kb=''
for kv in $(</proc/cmdline); do
    case $kv in
        kb.interval=*) interval=${kv#*=} ;;
        kb.clients=*) clients=${kv#*=} ;;
        kb.prewarm=*) prewarm=${kv#*=} ;;
        kb.readahead_kb=*) readahead_kb=${kv#*=} ;;
    esac
done

fail() {
    echo "KB-GUEST-FAILED $*"
    # PID 1 must never exit (the kernel panics)
    while :; do sleep 3600; done
}

mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
install -d -o postgres -g postgres -m 2775 /run/postgresql
echo kb-db >/proc/sys/kernel/hostname

root=$(awk '$2 == "/" && $3 == "ext4" { print $1 }' /proc/mounts)
[ -z "$readahead_kb" ] || echo "$readahead_kb" >"/sys/block/${root##*/}/queue/read_ahead_kb"

log=/var/log/postgresql/kb-db.log
if ! runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -o "-c config_file=$PGCONF" \
    -l "$log" -w -t 600 start >/dev/null; then
    fail "postgres did not start: $(tail -n 3 "$log" | tr '\n' ' ')"
fi
scale=$(runuser -u postgres -- psql -XAtq -d pgbench -c 'select count(*) from pgbench_branches') ||
    fail "pgbench database not readable"
if [ "$prewarm" = 1 ]; then
    start=$EPOCHREALTIME
    runuser -u postgres -- psql -XAtq -d pgbench -o /dev/null \
        -c "select pg_prewarm('pgbench_accounts', 'read'), pg_prewarm('pgbench_accounts_pkey', 'read')" ||
        fail "pg_prewarm"
    echo "KB-PREWARM seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') cached=$(awk '$1 == "Cached:" { print $2 }' /proc/meminfo)"
fi
echo "KB-GUEST-READY $(uname -r) scale=$scale root=$root read_ahead_kb=$(<"/sys/block/${root##*/}/queue/read_ahead_kb")"

# meminfo: sets memtotal, memfree and cached (kB) from /proc/meminfo.
meminfo() {
    local k v _
    while read -r k v _; do
        case $k in
            MemTotal:) memtotal=$v ;;
            MemFree:) memfree=$v ;;
            Cached:) cached=$v ;;
        esac
    done </proc/meminfo
}

# kb.clients=0: an idle database guest (PostgreSQL up, its cache warm,
# nobody querying it), as bench/db-effect.sh's third guest
if [ "$clients" = 0 ]; then
    echo "KB-IDLE"
    while :; do sleep 3600; done
fi
while :; do
    # pgbench prints its progress on stderr:
    #   progress: 5.0 s, 123.4 tps, lat 8.101 ms stddev 2.345, 0 failed
    runuser -u postgres -- "$PGBIN/pgbench" -n -S -c "$clients" -j 1 -T 2000000000 \
        -P "$interval" pgbench 2>&1 >/dev/null |
        while read -r word t _ tps _; do
            [ "$word" = progress: ] || continue
            meminfo
            echo "KB-TPS t=$t tps=$tps memtotal=$memtotal memfree=$memfree cached=$cached"
        done
    echo "KB-PGBENCH-EXIT ${PIPESTATUS[0]}"
    # pacing: no restart loop spinning on a broken database
    sleep 5
done
