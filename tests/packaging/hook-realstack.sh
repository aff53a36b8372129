#!/usr/bin/env bash
# The hook the RPM installed, run by a real libvirtd: a minimal real QEMU
# domain (type='qemu', no disk, no kernel: it sits in the firmware) is
# started with `virsh create` and destroyed; libvirt runs the installed
# ksm-balloon-hook (through a test wrapper that points it at a test settings
# file: libvirtd gives hooks a bare environment), which must drop its
# records into the spool beside the state and touch nothing else. A real
# pass under the service's restrictions as far as they can be rebuilt
# without systemd (tests/packaging/sandbox-pass.sh) then folds them: the VM
# is recorded with floor 48 MiB and ceiling 64 MiB and resized through the
# real libvirtd. After the destroy, the next pass forgets it. systemd is not
# PID 1 here; tests/systemd/suite.sh runs the same hook through the RPM's
# own link under a real systemd.
#
# The settings (a test CONFIG file, as /etc/sysconfig/ksm-balloon would hold
# them) put the state in a temporary directory and --root on a copy of
# tests/fixtures/root, whose KSM counters show KSM merging: the host's real
# KSM is neither touched nor relied on.
#
# Usage: tests/packaging/hook-realstack.sh ROOT WORKDIR
#   ROOT: the scratch root the RPM was installed into (rpm -i --root).
# Holds the real-stack lock for its whole run; removes its hook and its VM
# on exit, whatever happens.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(realpath "$1")
work=$(realpath "$2")/hook
# shellcheck source=tests/lib/libvirtd.sh
source "$here/../lib/libvirtd.sh"
# shellcheck source=tests/lib/guest.sh
source "$here/../lib/guest.sh"

bin=$root/usr/bin/ksm-balloon
installed_hook=$root/usr/libexec/ksm-balloon/ksm-balloon-hook
name=kb-pkg-hook-$$
name2=kb-pkg-nohook-$$
fakeroot=$work/root
state_rel=/var/lib/ksm-balloon/state.json
state=$fakeroot$state_rel
spool=$(dirname "$state")/spool
config=$work/ksm-balloon.conf

[ -x "$bin" ] || kb_die "no installed binary at $bin"
[ -x "$installed_hook" ] || kb_die "no installed hook at $installed_hook"

kb_realstack_lock
rm -rf "$work"
mkdir -p "$work"
cp -r "$here/../fixtures/root" "$fakeroot"
mkdir -p "$(dirname "$state")"
chmod 0700 "$(dirname "$state")"

cleanup() {
    local rc=$?
    kg_destroy "$name" || true
    kg_destroy "$name2" || true
    rm -f "$KB_HOOK_PATH"
    if [ "$rc" -ne 0 ]; then
        kb_log "hook test failed; libvirtd log tail:"
        tail -n 30 /var/log/libvirt/libvirtd.log 2>/dev/null || true
        tail -n 20 "/var/log/libvirt/qemu/$name.log" 2>/dev/null || true
        [ -f "$state" ] && { kb_log "state file:"; cat "$state"; }
    fi
    exit "$rc"
}
trap cleanup EXIT

# The test's settings file: the state in the work dir, not the host's.
cat >"$config" <<EOF
# ksm-balloon settings for tests/packaging/hook-realstack.sh
KSM_BALLOON_ROOT=$fakeroot
KSM_BALLOON_STATE=$state_rel
KSM_BALLOON_LOG=debug
EOF

# The installed hook program with the test settings; libvirtd (re)started
# so it sees it.
kb_install_hook "$installed_hook" "$config"
kb_libvirtd_start

# records: how many records the spool holds.
records() { find "$spool" -maxdepth 1 -type f -name '*.json' 2>/dev/null | wc -l; }
records_are() { [ "$(records)" -eq "$1" ]; }

# vm_record UUID: the VM's record in the state as "name floor ceiling", or
# nothing (exit 1) when the state does not have it.
vm_record() {
    python3 - "$state" "$1" <<'PY'
import json, sys
try:
    st = json.load(open(sys.argv[1]))
except FileNotFoundError:
    sys.exit(1)
r = st["vms"].get(sys.argv[2])
if r is None:
    sys.exit(1)
print(r["name"], r["floor_kib"], r["ceiling_kib"], r["source"])
PY
}

# A VM with no OS: it idles in the firmware, which is all the hook and a
# pass need.
kg_domain_xml "$name" --memory 64 --current 48 >"$work/domain.xml"
kg_domain_xml "$name2" --memory 64 --current 48 >"$work/domain2.xml"

t0=$(date +%s%N)
kg_create "$work/domain.xml" "with the hook in place"
t1=$(date +%s%N)
uuid=$(virsh -c "$KB_URI" domuuid "$name" | tr -d '[:space:]')
kb_log "started $name ($uuid): virsh create took $(( (t1 - t0) / 1000000 )) ms with the hook"

# prepare, start, started: one record each; the hook never writes the state.
kb_wait_until 15 "the hook's 3 records of $name's start in $spool" records_are 3 ||
    kb_die "libvirt's start of $name left $(records) record(s) in $spool, expected 3"
[ ! -e "$state" ] || kb_die "the hook wrote the state file $state"
kb_log "spool after start: $(find "$spool" -type f -printf '%f %m\n' | tr '\n' ' ')"

# A real pass under the service's restrictions, while the VM runs: it folds
# the records and empties the spool. Without a guest OS the balloon never
# inflates from its 64 MiB ceiling to its 48 MiB boot size; the pass plans
# from the boot size (where QEMU's target is: issue 18) and lends the fake
# root's savings, so its target is its 64 MiB ceiling and it must make one
# resize call. (With nothing to share it would now ask nothing.)
cp "$config" "$work/sandbox.conf"
bash "$here/sandbox-pass.sh" "$bin" "$root/usr/lib/systemd/system/ksm-balloon.service" \
    "$work/sandbox.conf" "$state" "$uuid" "$work/sandbox"
rec=$(vm_record "$uuid") || kb_die "the pass did not record $name from the hook's records"
kb_log "state after the pass: $rec"
[ "$rec" = "$name 49152 65536 hook" ] ||
    kb_die "record is '$rec', expected '$name 49152 65536 hook' (floor 48 MiB, ceiling 64 MiB, by the hook)"
stat -c '%a' "$state" | grep -qx 600 || kb_die "state file mode is $(stat -c %a "$state"), expected 600"
records_are 0 || kb_die "the pass left $(records) record(s) in $spool"
python3 - "$state" "$uuid" <<'PY' || kb_die "the sandboxed pass did not resize the VM to its ceiling"
import json, sys
s = json.load(open(sys.argv[1]))
lp, vm = s["last_pass"], s["vms"][sys.argv[2]]
print(f"sandboxed pass: resized {lp['resized']}, failed {lp['failed']}, VM target {vm['last_target_kib']} KiB",
      file=sys.stderr)
assert lp["resized"] == 1 and lp["failed"] == 0 and vm["last_target_kib"] == 65536
PY

t2=$(date +%s%N)
virsh -c "$KB_URI" destroy "$name" >/dev/null || kb_die "virsh destroy failed with the hook in place"
t3=$(date +%s%N)
kb_log "destroyed $name: virsh destroy took $(( (t3 - t2) / 1000000 )) ms with the hook"
# stopped, release: two more records; the next pass forgets the VM.
kb_wait_until 15 "the hook's 2 records of $name's stop" records_are 2 ||
    kb_die "libvirt's stop of $name left $(records) record(s) in $spool, expected 2"
KSM_BALLOON_ROOT=$fakeroot KSM_BALLOON_STATE=$state_rel KSM_BALLOON_SHARE=0 "$bin" --connect "$KB_URI" run ||
    kb_die "the installed binary's pass after the stop failed"
! vm_record "$uuid" >/dev/null || kb_die "the pass after $name's stop kept its record: $(vm_record "$uuid")"
records_are 0 || kb_die "the pass left $(records) record(s) in $spool"
kb_log "after destroy and a pass: no record of $name, spool empty"

# The hook removed while libvirtd runs, as an uninstall leaves it: VMs
# still start and stop, and nothing is recorded any more.
rm -f "$KB_HOOK_PATH"
before=$(sha256sum "$state")
t0=$(date +%s%N)
kg_create "$work/domain2.xml" "with the hook script removed (libvirtd not restarted)"
t1=$(date +%s%N)
virsh -c "$KB_URI" destroy "$name2" >/dev/null ||
    kb_die "with the hook script removed (libvirtd not restarted), virsh destroy failed"
t2=$(date +%s%N)
[ "$(sha256sum "$state")" = "$before" ] || kb_die "the state changed with the hook removed"
records_are 0 || kb_die "with the hook removed, $(records) record(s) appeared in $spool"
kb_log "hook removed, libvirtd not restarted: a VM still starts and stops, nothing recorded"
kb_log "for comparison, without the hook: virsh create $(( (t1 - t0) / 1000000 )) ms, virsh destroy $(( (t2 - t1) / 1000000 )) ms"
kb_log "hook on a real libvirtd: recorded at start, forgotten at stop"
