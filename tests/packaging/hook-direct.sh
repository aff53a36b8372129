#!/usr/bin/env bash
# The installed hook called the way libvirtd calls it (through the link in
# libvirt's hook directory, arguments, domain XML on stdin, a bare
# environment), without libvirt, in the cases a host can throw at it. Every
# call must exit 0 and print nothing on stdout:
#   - the operations that matter each drop one record (0600) into the spool
#     (0700) beside the state, leaving no temporary file; the others
#     (unknown operations, missing arguments) drop nothing and still drain
#     stdin (libvirt would otherwise get EPIPE writing the XML);
#   - a settings file naming a state path that is not absolute: nothing
#     recorded, the problem reported;
#   - no settings file at all: the environment's settings are used.
# The Rust tests (tests/hook.rs) check what a pass makes of the records;
# tests/systemd/suite.sh runs the hook under a real libvirtd and systemd.
#
# Usage: tests/packaging/hook-direct.sh ROOT WORKDIR
#   ROOT: the scratch root the RPM was installed into.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/lib/libvirtd.sh
source "$here/../lib/libvirtd.sh"
# shellcheck source=tests/lib/guest.sh
source "$here/../lib/guest.sh"
root=$(realpath "$1")
work=$(realpath "$2")/hook-direct
rm -rf "$work"
mkdir -p "$work"
cd "$work" # where a relative state path would land
hook=$root/etc/libvirt/hooks/qemu.d/ksm-balloon
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# xml: the domain XML libvirt hands the hook on stdin.
xml() { kg_domain_xml vm1 --uuid 5a1e0000-0000-4000-8000-00000000beef --memory 256 --current 192; }

# call CONFIG ARGS...: runs the hook as libvirtd does (env -i, XML on stdin
# followed by 300 kB of padding), with KSM_BALLOON_CONFIG=CONFIG and its log
# on stderr ($work/stderr); checks exit 0, empty stdout, stdin drained.
call() {
    local config=$1 out rc=0
    shift
    out=$({ xml; head -c 300000 /dev/zero | tr '\0' ' '; } |
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin KSM_BALLOON_CONFIG="$config" KSM_BALLOON_HOOK_LOG=stderr \
            ${EXTRA_ENV:+"$EXTRA_ENV"} "$hook" "$@" 2>"$work/stderr"; echo "pipe:${PIPESTATUS[*]}") || rc=$?
    # "0 0": the writer was not cut off (SIGPIPE: 141) and the hook exited 0.
    if [ "$rc" -ne 0 ] || [ "${out##*pipe:}" != "0 0" ]; then
        bad "hook $* (with $config): pipe status '${out##*pipe:}' (writer, hook), '0 0' expected"
        sed 's/^/    /' "$work/stderr"
        return 1
    fi
    out=${out%pipe:*}
    [ -z "$out" ] || { bad "hook $* printed on stdout: $out"; return 1; }
}
spooled() { find "$1/spool" -maxdepth 1 -type f 2>/dev/null | sort; }

[ -L "$hook" ] || bad "$hook is not a link"

# 1. The operations that matter, with a settings file naming the state.
state=$work/s1/lib/state.json
printf 'KSM_BALLOON_STATE=%s\n' "$state" >"$work/s1.conf"
n=0
for op in prepare start started reconnect stopped release; do
    call "$work/s1.conf" vm1 "$op" begin - || continue
    n=$((n + 1))
    got=$(spooled "$(dirname "$state")" | wc -l)
    [ "$got" -eq "$n" ] || bad "after '$op': $got records in the spool, expected $n"
done
last=$(spooled "$(dirname "$state")" | tail -n 1)
if [ "$n" -eq 6 ] && python3 - "$last" <<'PY'; then
import json, sys
r = json.load(open(sys.argv[1]))
assert (r["domain"], r["operation"], r["sub_op"]) == ("vm1", "release", "begin"), r
assert "<name>vm1</name>" in r["xml"], r
PY
    ok "prepare, start, started, reconnect, stopped, release: one record each, the last one 'release' with the XML"
else
    bad "the records are not what the hook was given (last: $last)"
fi
modes=$(stat -c %a "$(dirname "$state")" "$(dirname "$state")/spool" "$last" | tr '\n' ' ')
if [ "$modes" = "700 700 600 " ]; then
    ok "state directory, spool and record modes 700, 700, 600"
else
    bad "modes of state directory, spool, record: $modes (700 700 600 expected)"
fi
left=$(find "$(dirname "$state")" -mindepth 1 -maxdepth 1 ! -name spool)
if [ -z "$left" ]; then ok "no temporary file left beside the spool"; else bad "left beside the spool: $left"; fi

# 2. Operations it ignores and missing arguments: nothing recorded.
before=$(spooled "$(dirname "$state")" | wc -l)
call "$work/s1.conf" vm1 frobnicate begin - && call "$work/s1.conf" vm1 && call "$work/s1.conf" &&
    if [ "$(spooled "$(dirname "$state")" | wc -l)" -eq "$before" ]; then
        ok "an unknown operation, one argument, none: exit 0, nothing recorded, stdin drained"
    else
        bad "an ignored call recorded something"
    fi

# 3. A settings file whose state path is not absolute.
printf 'KSM_BALLOON_STATE=relative/state.json\n' >"$work/bad.conf"
call "$work/bad.conf" vm1 prepare begin - &&
    if [ -e "$work/relative" ]; then
        bad "a relative state path was used: $(find "$work/relative")"
    elif grep -q 'KSM_BALLOON_STATE' "$work/stderr"; then
        ok "a relative KSM_BALLOON_STATE: exit 0, nothing recorded, reported: $(head -n 1 "$work/stderr")"
    else
        bad "a relative KSM_BALLOON_STATE went unreported (stderr: $(cat "$work/stderr"))"
    fi

# 4. No settings file: the environment's settings.
state=$work/s4/state.json
EXTRA_ENV=KSM_BALLOON_STATE=$state call "$work/no-such.conf" vm1 prepare begin - &&
    if [ "$(spooled "$(dirname "$state")" | wc -l)" -eq 1 ]; then
        ok "no settings file: recorded where the environment says"
    else
        bad "no settings file: nothing recorded in $(dirname "$state")/spool"
    fi

[ "$fails" -eq 0 ] || { echo "$fails direct hook check(s) failed"; exit 1; }
echo "all direct hook checks passed"
