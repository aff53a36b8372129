#!/usr/bin/env bash
# The hook the RPM installed, run by a real libvirtd: a minimal real QEMU
# domain (type='qemu', no disk, no kernel: it sits in the firmware) is
# started with `virsh create` and destroyed; libvirt runs the installed
# /etc/libvirt/hooks/qemu.d/ksm-balloon script, which must record the VM in
# the state with floor 48 MiB and ceiling 64 MiB, then forget it. systemd is
# not PID 1 here, so this also shows the hook works and exits 0 without it.
# While the VM runs, tests/packaging/sandbox-pass.sh runs a real pass under
# the service's restrictions as far as they can be rebuilt without systemd;
# it must resize the VM through the real libvirtd.
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
installed_hook=$root/etc/libvirt/hooks/qemu.d/ksm-balloon
name=kb-pkg-hook-$$
name2=kb-pkg-nohook-$$
fakeroot=$work/root
state_rel=/var/lib/ksm-balloon/state.json
state=$fakeroot$state_rel
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

if [ -d /run/systemd/system ]; then
    kb_log "note: /run/systemd/system exists; the hook will try systemctl"
else
    kb_log "systemd is not running here (/run/systemd/system absent): the hook must skip systemctl"
fi

# The installed hook, with its BIN= and CONFIG= lines pointed at the scratch
# root's binary and the test settings; libvirtd (re)started so it sees it.
kb_install_hook "$bin" "$config" "$installed_hook"
kb_libvirtd_start
diff <(grep -v -e '^BIN=' -e '^CONFIG=' "$installed_hook") \
    <(grep -v -e '^BIN=' -e '^CONFIG=' "$KB_HOOK_PATH") >/dev/null ||
    kb_die "the hook in place differs from the installed one beyond BIN= and CONFIG="

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

kb_wait_until 15 "the hook to record $name in $state" vm_record "$uuid" ||
    kb_die "libvirt's start of $name left no record in $state"
rec=$(vm_record "$uuid")
kb_log "state after start: $rec"
[ "$rec" = "$name 49152 65536 hook" ] ||
    kb_die "record is '$rec', expected '$name 49152 65536 hook' (floor 48 MiB, ceiling 64 MiB, by the hook)"
stat -c '%a' "$state" | grep -qx 600 || kb_die "state file mode is $(stat -c %a "$state"), expected 600"

# A real pass under the service's restrictions, while the VM runs. Without
# a guest OS the balloon never inflates, so the VM still holds its 64 MiB
# ceiling; with nothing to share (KSM_BALLOON_SHARE=0) its target is its
# 48 MiB floor, so the pass must make one resize call.
{ cat "$config"; echo "KSM_BALLOON_SHARE=0"; } >"$work/sandbox.conf"
bash "$here/sandbox-pass.sh" "$bin" "$root/usr/lib/systemd/system/ksm-balloon.service" \
    "$work/sandbox.conf" "$state" "$uuid" "$work/sandbox"
python3 - "$state" "$uuid" <<'PY' || kb_die "the sandboxed pass did not resize the VM to its floor"
import json, sys
s = json.load(open(sys.argv[1]))
lp, vm = s["last_pass"], s["vms"][sys.argv[2]]
print(f"sandboxed pass: resized {lp['resized']}, failed {lp['failed']}, VM target {vm['last_target_kib']} KiB",
      file=sys.stderr)
assert lp["resized"] == 1 and lp["failed"] == 0 and vm["last_target_kib"] == 49152
PY

t2=$(date +%s%N)
virsh -c "$KB_URI" destroy "$name" >/dev/null || kb_die "virsh destroy failed with the hook in place"
t3=$(date +%s%N)
kb_log "destroyed $name: virsh destroy took $(( (t3 - t2) / 1000000 )) ms with the hook"
vm_gone() { ! vm_record "$1" >/dev/null; }
kb_wait_until 15 "the hook to forget $name" vm_gone "$uuid" ||
    kb_die "libvirt's stop of $name left its record in $state: $(vm_record "$uuid")"
kb_log "state after destroy: no record of $name"

# The state the hook left is one the installed binary reads.
KSM_BALLOON_ROOT=$fakeroot KSM_BALLOON_STATE=$state_rel "$bin" --connect "$KB_URI" status --json >"$work/status.json" ||
    kb_die "the installed binary's status against the real libvirtd failed after the hook test"

# The hook script removed while libvirtd runs, as an uninstall leaves it:
# VMs still start and stop, and nothing is recorded any more.
rm -f "$KB_HOOK_PATH"
before=$(sha256sum "$state")
t0=$(date +%s%N)
kg_create "$work/domain2.xml" "with the hook script removed (libvirtd not restarted)"
t1=$(date +%s%N)
virsh -c "$KB_URI" destroy "$name2" >/dev/null ||
    kb_die "with the hook script removed (libvirtd not restarted), virsh destroy failed"
t2=$(date +%s%N)
[ "$(sha256sum "$state")" = "$before" ] || kb_die "the state changed with the hook script removed"
kb_log "hook script removed, libvirtd not restarted: a VM still starts and stops, nothing recorded"
kb_log "for comparison, without the hook: virsh create $(( (t1 - t0) / 1000000 )) ms, virsh destroy $(( (t2 - t1) / 1000000 )) ms"
kb_log "hook on a real libvirtd: recorded at start, forgotten at stop"
