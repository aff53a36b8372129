#!/usr/bin/env bash
# Reliability scenario on the REAL stack: libvirtd unreachable, libvirtd
# SIGKILLed while a pass waits on it to connect, and libvirtd SIGKILLed
# while a pass is inside a call (its QEMU stopped so the daemon cannot
# answer). Each time the pass must exit 1 with a clear message, leave the
# state file byte-identical, and the next pass after libvirtd is started
# again must succeed with the invariants holding (the VM recorded once, its
# live balloon within [floor, ceiling]). What a pass did is read from its
# report (`run --json`), never from its log; only the error messages of the
# failed passes are matched as text.
#
# The guest is a minimal QEMU domain (no kernel, no disk: SeaBIOS finds
# nothing to boot and idles) with a virtio balloon. Holds the machine-wide
# real-stack lock; destroys its domain and leaves libvirtd running on exit.
#
# KB_PRIVATE_LIBVIRTD=1 runs it against a libvirtd of its own instead of the
# shared one: in private mount and PID namespaces, with tmpfs over /run and
# libvirt's state, config-of-domains, hook, log and cache directories, so
# nothing it starts or kills is seen outside (and all of it ends with the
# script). The machine-wide real-stack lock is still taken first (no
# benchmark should share the CPU with it) unless KB_NO_MACHINE_LOCK=1.
# tests/suites/50-reliability.sh runs it this way.
# Usage: [KB_PRIVATE_LIBVIRTD=1] tests/reliability/libvirtd-faults.sh   (as root)
set -uo pipefail
if [ -n "${KB_PRIVATE_LIBVIRTD:-}" ] && [ -z "${KB_IN_PRIVATE:-}" ]; then
    if [ -z "${KB_NO_MACHINE_LOCK:-}" ]; then
        # shellcheck source=tests/lib/libvirtd.sh
        source "$(dirname "$0")/../lib/libvirtd.sh"
        kb_realstack_lock
    fi
    KB_IN_PRIVATE=1 unshare --mount --pid --fork --mount-proc --propagation private \
        bash "$0" "$@"
    exit
fi
if [ -n "${KB_IN_PRIVATE:-}" ]; then
    for d in /run /etc/libvirt/qemu /etc/libvirt/hooks /etc/libvirt/storage \
        /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
        if ! { mkdir -p "$d" && mount -t tmpfs -o mode=0755 kb-private-libvirt "$d"; }; then
            echo "cannot mount a tmpfs over $d" >&2
            exit 1
        fi
    done
fi
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/lib/libvirtd.sh
source "$here/../lib/libvirtd.sh"
# shellcheck source=tests/reliability/lib.sh
source "$here/lib.sh"
# shellcheck source=tests/lib/guest.sh
source "$here/../lib/guest.sh"

kb_realstack_lock
kb_libvirtd_start

work=$(mktemp -d /var/tmp/kb-reliability.XXXXXX)
name=kb-reliability-$$
uuid=$(cat /proc/sys/kernel/random/uuid)
qemu_pid=
pass_pid=
libvirtd_pid() { cat /run/libvirtd.pid 2>/dev/null; }
cleanup() {
    [ -n "$pass_pid" ] && kill -9 "$pass_pid" 2>/dev/null
    [ -n "$qemu_pid" ] && kill -CONT "$qemu_pid" 2>/dev/null
    kb_libvirtd_alive || kb_libvirtd_start
    kg_destroy "$name"
    rm -rf "$work"
}
trap cleanup EXIT
on_failure() {
    kb_log "libvirtd log tail:"
    tail -20 /var/log/libvirt/libvirtd.log 2>/dev/null >&2
    tail -5 "/var/log/libvirt/qemu/$name.log" 2>/dev/null >&2
}

# KSM and meminfo from the fixture's fake root, with 64 MiB of savings: the
# guest (no balloon driver: it stays at its 256 MiB maximum, on its way to
# its 192 MiB boot size as far as the pass can tell) is lent them, so the
# first pass makes a resize call on the real daemon (a grow from its boot
# size to its 256 MiB ceiling) whatever the host's KSM is doing (the host's
# KSM is never touched). (With no savings the pass now asks nothing: QEMU
# already holds the boot size as the balloon's target, issue 18's chaos
# soak.) The state lives under the fake root too.
cp -r "$KB_REPO/tests/fixtures/root" "$work/root"
echo $((64 * 1024 * 1024)) >"$work/root/sys/kernel/mm/ksm/general_profit"
export KSM_BALLOON_ROOT=$work/root
export KSM_BALLOON_CONNECT=$KB_URI
export KSM_BALLOON_LOG=debug
state=$work/root/var/lib/ksm-balloon/state.json

others=$(virsh -c "$KB_URI" list --name | grep -v '^$' || true)
[ -z "$others" ] || kb_log "note: other domains are running and will be managed too: $others"

kg_domain_xml "$name" --uuid "$uuid" --memory 256 --current 192 >"$work/dom.xml"
virsh -c "$KB_URI" create "$work/dom.xml" >/dev/null || { on_failure; kb_die "cannot start $name"; }
kg_wait_running 30 "$name" || { on_failure; kb_die "$name did not run"; }
qemu_pid=$(cat "/run/libvirt/qemu/$name.pid")
# what libvirt's hook would have told us at prepare: a record in the spool,
# folded by the first pass
KSM_BALLOON_HOOK_LOG=stderr "$KB_BIN" hook "$name" prepare begin - <"$work/dom.xml" 2>"$work/hook.log" ||
    kb_die "the hook exited $?"
present="$name=$uuid=196608=262144"

# recovered PASS: the pass's report shows it read the guest from libvirtd
# (a bulk statistics call) and gave it a target within its bounds, with no
# failed call. (The first pass also resized it, to where the driverless
# balloon already is; later ones have nothing to do.)
recovered() {
    kb_rel_report "$work/$1.json" "$1: $name read from libvirtd, target within [192, 256] MiB" \
        "calls['bulk_stats'] >= 1 and vm('$name')['managed'] and vm('$name')['error'] is None and r['failed'] == 0 and 196608 <= vm('$name')['target_kib'] <= 262144"
}

kb_rel_pass 0 '' "$work/pass-0"
kb_rel_report "$work/pass-0.json" "pass-0: the hook's record folded, $name managed" \
    "r['hook_records'] == 1 and vm('$name')['managed'] and not vm('$name')['adopted']"
recovered pass-0
kb_rel_report "$work/pass-0.json" "pass-0: $name lent the savings above its 192 MiB boot size by a resize call" \
    "vm('$name')['action'] == 'grow' and vm('$name')['target_kib'] > 196608 and r['resized'] >= 1 and calls['set_memory'] >= 1"
kb_rel_check "$state" "$KB_URI" "$present" "" "$work/pass-0.json"
injected=0

# wait_exit PID SECS: waits for PID to exit; prints its exit code.
wait_exit() {
    kb_wait_until "$2" "pass $1 to exit" sh -c "! kill -0 $1" || return 1
    wait "$1"
}

# --- A: libvirtd not running
sha=$(sha256sum "$state" | cut -d' ' -f1)
pid=$(libvirtd_pid)
kill "$pid"
kb_wait_until 30 "libvirtd to exit" sh -c "! kill -0 $pid" || kb_die "libvirtd did not stop"
kb_rel_pass 1 "cannot connect to libvirt at $KB_URI" "$work/a"
kb_rel_same "$state" "$sha" "A (libvirtd unreachable)"; injected=$((injected + 1))
kb_libvirtd_start
kb_rel_pass 0 '' "$work/a-next"
recovered a-next
kb_rel_check "$state" "$KB_URI" "$present" "" "$work/a.json:$work/a-next.json"

# --- B: libvirtd stopped (SIGSTOP) while a pass connects, then SIGKILLed
sha=$(sha256sum "$state" | cut -d' ' -f1)
pid=$(libvirtd_pid)
kill -STOP "$pid"
"$KB_BIN" run --json >"$work/b.json" 2>"$work/b.log" &
pass_pid=$!
kb_wait_until 30 "the pass to reach libvirtd's socket" sh -c "ss -xp | grep -q 'pid=$pass_pid,'" ||
    { kill -CONT "$pid"; kb_die "the pass never connected"; }
kill -0 "$pass_pid" || kb_die "the pass did not wait for the stopped libvirtd"
kill -9 "$pid"
wait_exit "$pass_pid" 30; rc=$?
pass_pid=
[ "$rc" -eq 1 ] || { cat "$work/b.log"; kb_die "B: the pass exited $rc, expected 1"; }
grep -Eq "cannot connect to libvirt at $KB_URI|lost the connection to libvirt at $KB_URI" "$work/b.log" ||
    { cat "$work/b.log"; kb_die "B: no clear message"; }
kb_log "ok: B: exit 1: $(grep ERROR "$work/b.log" | head -1)"
kb_rel_same "$state" "$sha" "B (libvirtd killed while the pass connected)"; injected=$((injected + 1))
kb_wait_until 30 "the killed libvirtd to be gone" sh -c "! kill -0 $pid" || kb_die "libvirtd still there"
kb_libvirtd_start
kb_rel_pass 0 '' "$work/b-next"
recovered b-next
kb_rel_check "$state" "$KB_URI" "$present" "" "$work/b.json:$work/b-next.json"

# --- C: the pass inside a call (the guest's QEMU stopped, so libvirtd
# waits on its monitor), libvirtd SIGKILLed
sha=$(sha256sum "$state" | cut -d' ' -f1)
mark=$(kb_monitor_log_mark)
kill -STOP "$qemu_pid"
"$KB_BIN" run --json >"$work/c.json" 2>"$work/c.log" &
pass_pid=$!
kb_wait_until 30 "the pass to reach libvirtd's socket" sh -c "ss -xp | grep -q 'pid=$pass_pid,'" ||
    { cat "$work/c.log"; kb_die "C: the pass never connected"; }
# libvirtd answers, so the pass connects and goes on to its bulk statistics
# call (or, if that was answered from libvirt's cache, a resize): either way
# blocked on the stopped QEMU. A pass still connecting when libvirtd dies
# would say "cannot connect", which fails the message check below: so the
# kill waits for the state "inside the call", libvirtd having sent a
# command to the stopped QEMU's monitor (its monitor log) since the pass
# started, and the pass still running.
monitor_waited_on() { [ "$(kb_monitor_sent_since "$mark")" -gt 0 ]; }
kb_wait_until 30 "libvirtd to send the pass's call to the stopped QEMU" monitor_waited_on ||
    { cat "$work/c.log"; kb_die "C: libvirtd sent the stopped QEMU nothing"; }
kill -0 "$pass_pid" 2>/dev/null || { cat "$work/c.log"; kb_die "C: the pass did not block on the stopped QEMU"; }
pid=$(libvirtd_pid)
kill -9 "$pid"
wait_exit "$pass_pid" 30; rc=$?
pass_pid=
[ "$rc" -eq 1 ] || { cat "$work/c.log"; kb_die "C: the pass exited $rc, expected 1"; }
grep -q "lost the connection to libvirt at $KB_URI" "$work/c.log" ||
    { cat "$work/c.log"; kb_die "C: no clear message"; }
# A pass cut short in a resize says so (and saves what it did); one cut in
# the bulk statistics call has nothing to save.
where=bulk-statistics
grep -q "pass cut short" "$work/c.log" && where=resize
kb_log "ok: C: killed in the $where call: exit 1: $(grep ERROR "$work/c.log" | head -1)"
kb_rel_same "$state" "$sha" "C (libvirtd killed mid-call)"; injected=$((injected + 1))
kill -CONT "$qemu_pid"
kb_wait_until 30 "the killed libvirtd to be gone" sh -c "! kill -0 $pid" || kb_die "libvirtd still there"
kb_libvirtd_start
kg_wait_running 30 "$name" ||
    { on_failure; kb_die "$name lost after the libvirtd restart"; }
kb_rel_pass 0 '' "$work/c-next"
recovered c-next
kb_rel_check "$state" "$KB_URI" "$present" "" "$work/c.json:$work/c-next.json"

echo "libvirtd-faults: $injected faults injected on the real libvirtd (unreachable; killed while a pass connected; killed while a pass was in its $where call): exit 1 with a clear message each time, state byte-identical, next pass recovered, nothing lost"
