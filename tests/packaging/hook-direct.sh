#!/usr/bin/env bash
# The installed hook script called the way libvirtd calls it (arguments,
# domain XML on stdin, a bare environment), without libvirt, in the cases a
# real host can throw at it. Every call must exit 0 and print nothing on
# stdout:
#   - a normal start and stop: the VM is recorded, then forgotten;
#   - a settings file with a shell syntax error: still recorded, with the
#     settings from the environment;
#   - the binary missing: stdin drained, nothing recorded;
#   - systemd running (imitated: /run/systemd/system on a private tmpfs /run
#     and a systemctl stand-in that records its calls): `systemctl start
#     --no-block ksm-balloon.service` on started/stopped while the timer is
#     active, and never otherwise.
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
mkdir -p "$work/bin" "$work/state"
bin=$root/usr/bin/ksm-balloon
hook_src=$root/etc/libvirt/hooks/qemu.d/ksm-balloon
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# hook_with BIN CONFIG: a copy of the installed hook pointing at BIN and CONFIG.
hook_with() {
    local out=$work/hook.$RANDOM
    sed -e "s|^BIN=.*|BIN=$1|" -e "s|^CONFIG=.*|CONFIG=$2|" "$hook_src" >"$out"
    chmod 0755 "$out"
    echo "$out"
}

# xml NAME UUID: the domain XML libvirt hands the hook on stdin.
xml() { kg_domain_xml "$1" --uuid "$2" --memory 256 --current 192; }
uuid=5a1e0000-0000-4000-8000-00000000beef

# call HOOK STATE ARGS...: runs HOOK as libvirtd does (env -i), with
# KSM_BALLOON_STATE=STATE in its environment; checks exit 0 and empty
# stdout; the call's stderr is left in $work/stderr.
call() {
    local hook=$1 state=$2 out rc=0
    shift 2
    out=$(xml "vm1" "$uuid" | env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        KSM_BALLOON_STATE="$state" "$hook" "$@" 2>"$work/stderr") || rc=$?
    if [ "$rc" -ne 0 ]; then
        bad "hook $* exited $rc"; sed 's/^/    /' "$work/stderr"; return 1
    fi
    if [ -n "$out" ]; then
        bad "hook $* printed on stdout: $out"; return 1
    fi
}
recorded() { python3 -c "import json,sys; sys.exit(0 if sys.argv[2] in json.load(open(sys.argv[1]))['vms'] else 1)" "$1" "$uuid" 2>/dev/null; }

# 1. Normal start and stop, with a settings file that sets the state path.
state=$work/state/normal.json
conf=$work/normal.conf
printf 'KSM_BALLOON_STATE=%s\n' "$state" >"$conf"
h=$(hook_with "$bin" "$conf")
call "$h" /nonexistent/ignored.json vm1 prepare begin - &&
    if recorded "$state"; then ok "prepare recorded vm1 (the settings file's state path won)"; else bad "prepare did not record vm1 in $state"; fi
call "$h" /nonexistent/ignored.json vm1 stopped end - &&
    if recorded "$state"; then bad "stopped left vm1 in $state"; else ok "stopped forgot vm1"; fi

# 2. A settings file that does not parse as shell: defaults plus environment.
state=$work/state/broken.json
conf=$work/broken.conf
printf 'KSM_BALLOON_SHARE=0.5\nif then fi (\n' >"$conf"
h=$(hook_with "$bin" "$conf")
call "$h" "$state" vm1 prepare begin - &&
    if recorded "$state"; then ok "a broken settings file: exit 0, vm1 still recorded"; else bad "a broken settings file stopped the record"; fi
if grep -q "does not parse" "$work/stderr"; then
    ok "the broken settings file was reported"
else
    bad "the broken settings file went unreported (stderr: $(cat "$work/stderr"))"
fi

# 3. The binary missing: exit 0, stdin drained (libvirt would otherwise get
# EPIPE writing the XML), nothing recorded.
state=$work/state/nobin.json
h=$(hook_with "$work/no-such-binary" "$work/no-such-config")
big=$(head -c 300000 /dev/zero | tr '\0' ' ')
rc=0
out=$({ xml vm1 "$uuid"; printf '%s' "$big"; } | env -i PATH=/usr/bin:/bin KSM_BALLOON_STATE="$state" \
    "$h" vm1 prepare begin - 2>"$work/stderr") || rc=$?
if [ "$rc" -eq 0 ] && [ -z "$out" ] && [ ! -e "$state" ] && grep -q "is missing" "$work/stderr"; then
    ok "binary missing: exit 0, nothing on stdout, nothing recorded, reported"
else
    bad "binary missing: rc=$rc stdout='$out' state exists=$([ -e "$state" ] && echo yes || echo no) stderr=$(cat "$work/stderr")"
fi

# 4. systemd present (imitated), with a systemctl stand-in.
cat >"$work/bin/systemctl" <<'EOF'
#!/bin/sh
echo "$*" >>"$SYSTEMCTL_LOG"
case " $* " in *" is-active "*) [ "$TIMER_ACTIVE" = yes ] ;; *) exit 0 ;; esac
EOF
chmod +x "$work/bin/systemctl"
state=$work/state/systemd.json
conf=$work/systemd.conf
printf 'KSM_BALLOON_STATE=%s\n' "$state" >"$conf"
h=$(hook_with "$bin" "$conf")
# with_systemd ACTIVE OP: runs the hook for OP with systemd imitated; prints
# the systemctl calls it made, one a line.
with_systemd() {
    : >"$work/calls"
    # shellcheck disable=SC2016 # expanded by the inner sh, from its arguments
    xml vm1 "$uuid" | unshare --mount --propagation private -- sh -c '
        mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system &&
        exec env -i PATH="$1:/usr/sbin:/usr/bin:/sbin:/bin" SYSTEMCTL_LOG="$2" TIMER_ACTIVE="$3" \
            "$4" vm1 "$5" begin - >"$6"
    ' sh "$work/bin" "$work/calls" "$1" "$h" "$2" "$work/stdout" 2>"$work/stderr" ||
        { bad "hook $2 with systemd exited non-zero"; return; }
    [ -s "$work/stdout" ] && bad "hook $2 with systemd printed on stdout"
    grep -v '^--quiet is-active ksm-balloon.timer$' "$work/calls" | grep -v '^$' || true
}
check_calls() {
    local active=$1 op=$2 want=$3 got
    got=$(with_systemd "$active" "$op")
    if [ "$got" = "$want" ]; then
        ok "systemd running, timer active=$active, $op: ${want:-no pass asked for}"
    else
        bad "systemd running, timer active=$active, $op: systemctl calls '${got}', expected '${want}'"
    fi
}
check_calls yes prepare ""
check_calls yes started "start --no-block ksm-balloon.service"
check_calls no started ""
check_calls yes stopped "start --no-block ksm-balloon.service"
check_calls no stopped ""
check_calls yes release ""

# Without systemd (this machine): no systemctl call at all, even if one is on PATH.
: >"$work/calls"
xml vm1 "$uuid" | env -i PATH="$work/bin:/usr/bin:/bin" SYSTEMCTL_LOG="$work/calls" TIMER_ACTIVE=yes \
    KSM_BALLOON_STATE="$state" "$h" vm1 started begin - >/dev/null 2>&1 ||
    bad "hook started without systemd exited non-zero"
if [ -d /run/systemd/system ]; then
    bad "this machine runs systemd: the no-systemd case cannot be shown here"
elif [ -s "$work/calls" ]; then
    bad "without systemd the hook still called systemctl: $(cat "$work/calls")"
else
    ok "without systemd: exit 0, no systemctl call"
fi

[ "$fails" -eq 0 ] || { echo "$fails direct hook check(s) failed"; exit 1; }
echo "all direct hook checks passed"
