#!/usr/bin/env bash
# Reliability scenario: the state directory full, then read-only (a small
# tmpfs mounted over it, in a private mount namespace so nothing leaks).
# Every pass and hook that cannot write must fail clearly (a pass exits 1,
# a hook logs and exits 0), leave the previous state byte-identical and no
# temp file behind; once the directory is writable again the next pass
# recovers and the invariants hold. Runs on the libvirt test driver.
# Usage: tests/reliability/state-dir-faults.sh   (as root)
set -uo pipefail
if [ -z "${KB_IN_UNSHARE:-}" ]; then
    exec env KB_IN_UNSHARE=1 unshare --mount --propagation private bash "$0" "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/lib/libvirtd.sh
source "$here/../lib/libvirtd.sh"
# shellcheck source=tests/reliability/lib.sh
source "$here/lib.sh"
# shellcheck source=tests/lib/guest.sh
source "$here/../lib/guest.sh"

work=$(mktemp -d)
dir=$work/root/var/lib/ksm-balloon
trap 'umount "$dir" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$KB_REPO/tests/fixtures/root" "$work/root"
mkdir -p "$dir"
mount -t tmpfs -o size=256k,mode=0700 kb-reliability-state "$dir" || kb_die "cannot mount a tmpfs"
export KSM_BALLOON_ROOT=$work/root
export KSM_BALLOON_CONNECT=test://$KB_REPO/tests/fixtures/node.xml
export KSM_BALLOON_LOG=debug
state=$dir/state.json
faults=0

# What libvirt would hand the hook for two VMs the test driver does not list.
extra_xml=$work/extra.xml
new_xml=$work/new.xml
kg_domain_xml 'extra vm' --type kvm --uuid 33333333-3333-4333-8333-333333333333 \
    --memory 512 --current 384 >"$extra_xml"
kg_domain_xml 'new vm' --type kvm --uuid 44444444-4444-4444-8444-444444444444 \
    --memory 512 --current 384 >"$new_xml"
present="web1=11111111-1111-1111-1111-111111111111=163840=262144;web 2 \"quoted\"=22222222-2222-2222-2222-222222222222=163840=262144;extra vm=33333333-3333-4333-8333-333333333333=393216=524288"

kb_rel_expect 0 'VM "web1": 160.0 MiB -> ' "$work/log-0" -- "$KB_BIN" run
kb_rel_expect 0 'recorded VM "extra vm"' "$work/log-1" -- "$KB_BIN" hook 'extra vm' prepare begin - <"$extra_xml"
sha=$(sha256sum "$state" | cut -d' ' -f1)

# --- full
dd if=/dev/zero of="$dir/filler" bs=4k >/dev/null 2>&1
kb_log "state directory full: $(df -h --output=avail "$dir" | tail -1) left"
kb_rel_expect 1 "cannot write $state\.tmp\.[0-9]+: No space left on device" "$work/log-full-run" -- "$KB_BIN" run
kb_rel_same "$state" "$sha" "full: run"; faults=$((faults + 1))
kb_rel_expect 0 "hook \"new vm\" prepare begin: cannot write $state\.tmp\.[0-9]+: No space left on device.*; state not changed" \
    "$work/log-full-hook" -- "$KB_BIN" hook 'new vm' prepare begin - <"$new_xml"
kb_rel_same "$state" "$sha" "full: hook"; faults=$((faults + 1))
kb_rel_expect 0 'State file problem|VM +FLOOR' "$work/log-full-status" -- "$KB_BIN" status
kb_rel_same "$state" "$sha" "full: status"
if compgen -G "$dir/*.tmp.*" >/dev/null; then kb_die "a temp file was left behind: $(ls "$dir")"; fi
rm "$dir/filler"
kb_rel_expect 0 'libvirt calls this pass' "$work/log-full-after" -- "$KB_BIN" run
kb_rel_check "$state" "$KSM_BALLOON_CONNECT" "$present" "" "$work/log-full-run:$work/log-full-after"

# --- full, with a bad state file to move aside first
sha_before=$(sha256sum "$state" | cut -d' ' -f1)
printf 'not json' >"$state"
dd if=/dev/zero of="$dir/filler" bs=4k >/dev/null 2>&1
for i in 1 2 3; do
    kb_rel_expect 1 "No space left on device" "$work/log-fullbad-$i" -- "$KB_BIN" run
done
faults=$((faults + 3))
grep -q 'moved aside' "$work/log-fullbad-1" || kb_die "the bad file was not moved aside"
rm "$dir/filler"
kb_rel_expect 0 'adopted VM "web1"' "$work/log-fullbad-after" -- "$KB_BIN" run
[ "$(cat "$dir"/state.json.bad-*)" = "not json" ] || kb_die "the bad state was not kept"
kb_rel_check "$state" "$KSM_BALLOON_CONNECT" \
    "web1=11111111-1111-1111-1111-111111111111=163840=262144;web 2 \"quoted\"=22222222-2222-2222-2222-222222222222=163840=262144" \
    "" "$work/log-fullbad-after" "state.json.bad-"
rm "$dir"/state.json.bad-*
"$KB_BIN" hook 'extra vm' prepare begin - <"$extra_xml" 2>/dev/null
: "$sha_before"

# --- read-only
sha=$(sha256sum "$state" | cut -d' ' -f1)
mount -o remount,ro "$dir" || kb_die "cannot remount read-only"
kb_rel_expect 1 "cannot open the lock file $state\.lock: Read-only file system" "$work/log-ro-run" -- "$KB_BIN" run
kb_rel_same "$state" "$sha" "read-only: run"; faults=$((faults + 1))
kb_rel_expect 0 "hook \"new vm\" prepare begin: cannot open the lock file $state\.lock: Read-only file system" \
    "$work/log-ro-hook" -- "$KB_BIN" hook 'new vm' prepare begin - <"$new_xml"
kb_rel_same "$state" "$sha" "read-only: hook"; faults=$((faults + 1))
kb_rel_expect 0 'VM +FLOOR' "$work/log-ro-status" -- "$KB_BIN" status
mount -o remount,rw "$dir"
kb_rel_expect 0 'libvirt calls this pass' "$work/log-ro-after" -- "$KB_BIN" run
kb_rel_check "$state" "$KSM_BALLOON_CONNECT" "$present" "" "$work/log-ro-run:$work/log-ro-after"

echo "state-dir-faults: $faults faults injected (full: 2 + 3 with a bad file; read-only: 2), previous state byte-identical after each, recovered each time, nothing lost"
