#!/usr/bin/env bash
# Regression test for a deadlock of the real-stack lock (tests/lib/libvirtd.sh):
# daemons started by a suite holding the lock inherited its file descriptor,
# so libvirtd held the machine-wide lock for as long as it ran and every
# later real-stack suite waited an hour for it in vain (seen on the shared
# machine: the lock held by an idle libvirtd whose starter had exited).
# Starts a stand-in daemon (sleep) the way kb_libvirtd_start starts
# libvirtd, under a private lock file, and checks that the lock is free once
# the starting shell has gone while the daemon still runs.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill "$(cat "$work/daemon.pid" 2>/dev/null)" 2>/dev/null; rm -rf "$work"' EXIT
export KB_REALSTACK_LOCK=$work/realstack.lock
# the suite: take the lock, start a daemon, exit
bash -c "
    source '$here/../lib/libvirtd.sh'
    kb_realstack_lock
    # like 'libvirtd -d': the daemon forks into the background, its starter returns
    kb_spawn_daemon sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & echo \$! > $work/daemon.pid'
"
pid=$(cat "$work/daemon.pid")
kill -0 "$pid" || { echo "FAIL: the stand-in daemon is not running"; exit 1; }
held=no
for fd in /proc/"$pid"/fd/*; do
    if [ "$fd" -ef "$KB_REALSTACK_LOCK" ]; then held=yes; fi
done
if [ "$held" = yes ]; then
    echo "FAIL: the daemon holds the real-stack lock's file descriptor"
    exit 1
fi
if ! flock -n "$KB_REALSTACK_LOCK" true; then
    echo "FAIL: the real-stack lock is still held after its suite exited"
    exit 1
fi
echo "lock-leak: ok: a daemon started under the real-stack lock does not keep it"
