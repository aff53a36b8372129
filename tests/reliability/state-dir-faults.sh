#!/usr/bin/env bash
# Reliability scenario: the state directory full, then read-only (a small
# tmpfs mounted over it, in a private mount namespace so nothing leaks).
# A pass that cannot write exits 1 with an error naming the file; a hook
# that cannot spool its record exits 0 and says why (on stderr here,
# KSM_BALLOON_HOOK_LOG=stderr; syslog in production). Either way the state
# stays byte-identical, no temp file is left and a record already in the
# spool stays there; once the directory is writable again the next pass
# folds that record and the invariants hold. What each pass did is read
# from its report (`run --json`), never from its log. Runs on the libvirt
# test driver.
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
export KSM_BALLOON_HOOK_LOG=stderr
state=$dir/state.json
faults=0

# What libvirt would hand the hook for three VMs the test driver does not
# list (so they stay recorded only as starting VMs, for two minutes).
declare -A xml uuid
n=3
for vm in 'extra vm' 'new vm' 'late vm'; do
    uuid[$vm]=$n$n$n$n$n$n$n$n-$n$n$n$n-4$n$n$n-8$n$n$n-$n$n$n$n$n$n$n$n$n$n$n$n
    xml[$vm]=$work/$n.xml
    kg_domain_xml "$vm" --type kvm --uuid "${uuid[$vm]}" --memory 512 --current 384 >"${xml[$vm]}"
    n=$((n + 1))
done
web="web1=11111111-1111-1111-1111-111111111111=163840=262144;web 2 \"quoted\"=22222222-2222-2222-2222-222222222222=163840=262144"
entry() { printf '%s=%s=393216=524288' "$1" "${uuid[$1]}"; }

# spooled NAME: how many of the hook's records for NAME wait in the spool.
spooled() {
    python3 - "$dir/spool" "$1" <<'PY'
import json, os, sys
d, name = sys.argv[1:3]
n = 0
for f in os.listdir(d) if os.path.isdir(d) else []:
    try:
        n += json.load(open(os.path.join(d, f))).get("domain") == name
    except (OSError, ValueError):
        pass
print(n)
PY
}
# expect_spooled NAME COUNT WHAT
expect_spooled() {
    local got
    got=$(spooled "$1")
    [ "$got" = "$2" ] || kb_die "$3: $got record(s) for \"$1\" in the spool, expected $2"
    kb_log "ok: $3: $2 record(s) for \"$1\" in the spool"
}
# hook_ok NAME LOG: the hook at NAME's prepare, which must spool its record
# and report no problem.
hook_ok() {
    local before
    before=$(spooled "$1")
    kb_rel_expect 0 '' "$2" -- "$KB_BIN" hook "$1" prepare begin - <"${xml[$1]}"
    if grep -v '^ksm-balloon-hook: spooled ' "$2" | grep -q .; then
        sed 's/^/    /' "$2" >&2
        kb_die "the hook for \"$1\" reported a problem"
    fi
    expect_spooled "$1" $((before + 1)) "hook \"$1\""
}
# no_temps WHAT: no temp file (a pass's state.json.tmp.*, a hook's
# .spool-*.tmp) is left in the state directory or the spool.
no_temps() {
    local left
    left=$(find "$dir" -name '*.tmp*')
    [ -z "$left" ] || kb_die "$1: a temp file was left behind: $left"
    kb_log "ok: $1: no temp file left"
}
# status_sees WHAT EXPR: `status --json` (nothing changed, no lock) exits 0
# and its report satisfies EXPR.
status_sees() {
    local rc
    "$KB_BIN" status --json >"$work/status.json" 2>"$work/status.log"
    rc=$?
    [ "$rc" -eq 0 ] || { sed 's/^/    /' "$work/status.log" >&2; kb_die "$1: status exited $rc"; }
    kb_rel_report "$work/status.json" "$1" "$2"
}

kb_rel_pass 0 '' "$work/pass-0"
kb_rel_report "$work/pass-0.json" "the first pass adopted web1 and resized it from its 160 MiB" \
    "vm('web1')['adopted'] and vm('web1')['current_kib'] == 160 * 1024 and vm('web1')['action'] in ('grow', 'shrink') and vm('web1')['error'] is None and calls['set_memory'] >= 1"
hook_ok 'extra vm' "$work/hook-extra"
kb_rel_pass 0 '' "$work/pass-1"
kb_rel_report "$work/pass-1.json" "the next pass folded the hook's record" "r['hook_records'] == 1"
expect_spooled 'extra vm' 0 "pass-1"
kb_rel_check "$state" "$KSM_BALLOON_CONNECT" "$web;$(entry 'extra vm')" "" "$work/pass-0.json:$work/pass-1.json"

# --- full, with a hook's record waiting in the spool
hook_ok 'new vm' "$work/hook-new"
sha=$(sha256sum "$state" | cut -d' ' -f1)
dd if=/dev/zero of="$dir/filler" bs=4k >/dev/null 2>&1
kb_log "state directory full: $(df -h --output=avail "$dir" | tail -1) left"
kb_rel_pass 1 "cannot write $state\.tmp\.[0-9]+: No space left on device" "$work/full-run"
kb_rel_same "$state" "$sha" "full: run"; faults=$((faults + 1))
expect_spooled 'new vm' 1 "full: run"
kb_rel_expect 0 "^ksm-balloon-hook: hook \"late vm\" prepare begin: cannot spool the record in $dir/spool: No space left on device" \
    "$work/full-hook.log" -- "$KB_BIN" hook 'late vm' prepare begin - <"${xml['late vm']}"
kb_rel_same "$state" "$sha" "full: hook"; faults=$((faults + 1))
expect_spooled 'late vm' 0 "full: hook"
status_sees "full: status sees the spooled record" "r['dry_run'] and r['hook_records'] == 1 and vm('web1')['managed']"
kb_rel_same "$state" "$sha" "full: status"
no_temps "full"
rm "$dir/filler"
kb_rel_pass 0 '' "$work/full-after"
kb_rel_report "$work/full-after.json" "full, after: the spooled record folded" "r['hook_records'] == 1 and r['state_problem'] is None"
expect_spooled 'new vm' 0 "full, after"
kb_rel_check "$state" "$KSM_BALLOON_CONNECT" "$web;$(entry 'extra vm');$(entry 'new vm')" "$(entry 'late vm')" \
    "$work/full-run.json:$work/full-after.json"

# --- full, with a bad state file to move aside first
printf 'not json' >"$state"
dd if=/dev/zero of="$dir/filler" bs=4k >/dev/null 2>&1
for i in 1 2 3; do
    kb_rel_pass 1 "No space left on device" "$work/fullbad-$i"
    if [ "$i" = 1 ]; then
        bad=$(compgen -G "$dir/state.json.bad-*") || kb_die "full, bad file: not moved aside: $(ls -A "$dir")"
        kb_log "ok: full, bad file: moved aside to $bad"
    fi
done
faults=$((faults + 3))
rm "$dir/filler"
kb_rel_pass 0 '' "$work/fullbad-after"
kb_rel_report "$work/fullbad-after.json" "full, bad file, after: the VMs adopted again" \
    "vm('web1')['adopted'] and vm('web 2 \"quoted\"')['adopted']"
[ "$(cat "$dir"/state.json.bad-*)" = "not json" ] || kb_die "the bad state was not kept"
kb_rel_check "$state" "$KSM_BALLOON_CONNECT" "$web" "" \
    "$work/fullbad-1.json:$work/fullbad-2.json:$work/fullbad-3.json:$work/fullbad-after.json" "state.json.bad-"
rm "$dir"/state.json.bad-*

# --- read-only, with a hook's record waiting in the spool
hook_ok 'extra vm' "$work/hook-extra-2"
sha=$(sha256sum "$state" | cut -d' ' -f1)
mount -o remount,ro "$dir" || kb_die "cannot remount read-only"
kb_rel_pass 1 "cannot open the lock file $state\.lock: Read-only file system" "$work/ro-run"
kb_rel_same "$state" "$sha" "read-only: run"; faults=$((faults + 1))
expect_spooled 'extra vm' 1 "read-only: run"
kb_rel_expect 0 "^ksm-balloon-hook: hook \"late vm\" prepare begin: cannot spool the record in $dir/spool: Read-only file system" \
    "$work/ro-hook.log" -- "$KB_BIN" hook 'late vm' prepare begin - <"${xml['late vm']}"
kb_rel_same "$state" "$sha" "read-only: hook"; faults=$((faults + 1))
expect_spooled 'late vm' 0 "read-only: hook"
status_sees "read-only: status sees the spooled record" "r['dry_run'] and r['hook_records'] == 1 and vm('web1')['managed']"
no_temps "read-only"
mount -o remount,rw "$dir"
kb_rel_pass 0 '' "$work/ro-after"
kb_rel_report "$work/ro-after.json" "read-only, after: the spooled record folded" "r['hook_records'] == 1"
expect_spooled 'extra vm' 0 "read-only, after"
kb_rel_check "$state" "$KSM_BALLOON_CONNECT" "$web;$(entry 'extra vm')" "$(entry 'late vm')" \
    "$work/ro-run.json:$work/ro-after.json"

echo "state-dir-faults: $faults faults injected (full: 2 + 3 with a bad file; read-only: 2), previous state byte-identical after each, spooled records kept and folded after recovery, nothing lost"
