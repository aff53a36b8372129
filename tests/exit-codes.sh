#!/usr/bin/env bash
# Exit codes, as an operator's script sees them: 0 done, 1 runtime failure,
# 2 bad usage; and every error names the thing at fault.
# Usage: tests/exit-codes.sh path/to/ksm-balloon
set -uo pipefail
BIN=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
# kb_wait_until: a wait for a state, with a deadline
# shellcheck source=tests/lib/libvirtd.sh
. "$here/lib/libvirtd.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$here/fixtures/root" "$work/root"
fails=0

# expect CODE PATTERN -- ARGS...: runs BIN ARGS with stdin from /dev/null,
# checks the exit code and that stderr+stdout matches PATTERN (grep -E).
expect() {
    local code=$1 pattern=$2
    shift 3
    local out rc
    out=$("$BIN" "$@" </dev/null 2>&1)
    rc=$?
    if [ "$rc" -ne "$code" ]; then
        echo "FAIL: ksm-balloon $* exited $rc, expected $code; output:"; echo "$out" | sed 's/^/    /'
        fails=$((fails + 1))
    elif ! grep -Eq -- "$pattern" <<<"$out"; then
        echo "FAIL: ksm-balloon $* output lacks /$pattern/:"; echo "$out" | sed 's/^/    /'
        fails=$((fails + 1))
    else
        echo "ok: exit $code: ksm-balloon $*"
    fi
}

export KSM_BALLOON_ROOT="$work/root"
unset KSM_BALLOON_CONNECT
DRV="test://$here/fixtures/node.xml"

# bad usage: 2
expect 2 'Usage' -- 
expect 2 "unrecognized subcommand 'frobnicate'" -- frobnicate
expect 2 "invalid value '1.5' for '--share" -- --share 1.5 run
expect 2 "invalid value 'lots' for '--reserve" -- --reserve lots run
expect 2 "invalid value 'fast' for '--metric" -- --metric fast run
expect 2 "invalid value 'random' for '--split" -- --split random run
expect 2 "invalid value '8X' for '--deadband" -- --deadband 8X run
expect 2 "invalid value '0' for '--max-grow" -- --max-grow 0 run
expect 2 "invalid value '-3' for '--lock-timeout" -- --lock-timeout=-3 run
expect 2 "invalid value 'relative/state.json' for '--state'" -- --state relative/state.json run
expect 2 "invalid value '$work/nowhere' for '--root'" -- --root "$work/nowhere" run
expect 2 "required arguments were not provided" -- hook
# The hook takes --root and --state (before or right after `hook`) and
# honours them (issue 22); any other setting given for it is refused.
expect 0 "Usage: ksm-balloon hook" -- hook --help
expect 2 "'--share' is not a flag the hook takes" -- hook --share 1 vm1 prepare begin -
expect 2 "takes no setting on the command line but --root and --state" -- --share 1 hook vm1 prepare begin -
expect 2 "invalid value '$work/nowhere' for '--root'" -- --root "$work/nowhere" hook vm1 prepare begin -
expect 2 "invalid value 'state.json' for '--state'" -- hook --state state.json vm1 prepare begin -
# With a domain, `hook` is the hook as libvirt runs it (answered before the
# settings are parsed): it never fails, and says what was wrong.
expect 0 "libvirt passes <domain> <operation>" -- hook vm1
# (`run --json` alone is a valid pass now: it would run against the host's
# libvirtd, so the usage error is an extra argument.)
expect 2 "unexpected argument 'extra'" -- run --json extra
expect 2 "unexpected argument 'extra'" -- ksm-restore extra
# and what is not an error: 0
expect 0 'Usage' -- --help
expect 0 '^ksm-balloon [0-9]' -- --version
expect 0 'VM +FLOOR' -- --connect "$DRV" status
expect 0 '"savings_kib"' -- --connect "$DRV" status --json
expect 0 'ACTION' -- --connect "$DRV" plan
expect 0 '' -- --connect "$DRV" run
# the hook never fails a VM start, whatever its input
expect 0 '' -- hook vm1 prepare begin -
expect 0 '' -- hook vm1 frobnicate begin -
mkdir -p "$work/hookroot"
expect 0 '' -- --root "$work/hookroot" hook vm1 prepare begin -
if [ -z "$(ls "$work/hookroot/var/lib/ksm-balloon/spool" 2>/dev/null)" ]; then
    echo "FAIL: ksm-balloon --root $work/hookroot hook ... spooled nothing under that root"
    fails=$((fails + 1))
else
    echo "ok: the hook's --root is honoured"
fi
# ksm-restore (what uninstalling runs): never connects to libvirt (an
# unreachable URI is no failure), says when there is nothing to restore,
# and gives back the knobs a manage pass took over, under --root and
# --state.
nolibvirt="qemu+unix:///system?socket=$work/no-such-socket"
expect 0 'nothing to restore' -- --connect "$nolibvirt" ksm-restore
cp -r "$work/root" "$work/governed"
ksmdir=$work/governed/sys/kernel/mm/ksm
gov=(--root "$work/governed" --state /srv/kb/state.json)
echo 0 >"$ksmdir/run"
expect 0 '' -- "${gov[@]}" --connect "$DRV" --ksm manage run
if [ "$(cat "$ksmdir/run")" = 1 ] && [ -f "$work/governed/srv/kb/state.json" ]; then
    echo "ok: manage took KSM over under --root and --state"
else
    echo "FAIL: manage under --root $work/governed left run $(cat "$ksmdir/run"), state: $(ls "$work/governed/srv/kb" 2>&1)"
    fails=$((fails + 1))
fi
expect 0 "restored to the operator's \(run 0, pages_to_scan 1000" -- "${gov[@]}" --connect "$nolibvirt" ksm-restore
if [ "$(cat "$ksmdir/run")" = 0 ]; then
    echo "ok: ksm-restore gave run 0 back"
else
    echo "FAIL: ksm-restore left run $(cat "$ksmdir/run"), the operator had 0"
    fails=$((fails + 1))
fi
expect 0 'nothing to restore' -- "${gov[@]}" ksm-restore

# runtime failures: 1
expect 1 "cannot connect to libvirt at qemu\+unix:///system\?socket=$work/no-such-socket" -- \
    --connect "qemu+unix:///system?socket=$work/no-such-socket" run
expect 1 "cannot connect to libvirt" -- --connect "qemu+unix:///system?socket=$work/no-such-socket" status
mkdir -p "$work/nokms/proc" && cp "$work/root/proc/meminfo" "$work/nokms/proc/"
expect 1 "KSM is not available: $work/nokms/sys/kernel/mm/ksm does not exist" -- \
    --root "$work/nokms" --connect "$DRV" run
cp -r "$work/root" "$work/badcounter"
echo "lots" >"$work/badcounter/sys/kernel/mm/ksm/pages_sharing"
expect 1 "KSM counter $work/badcounter/sys/kernel/mm/ksm/pages_sharing holds \"lots" -- \
    --root "$work/badcounter" --connect "$DRV" run
cp -r "$work/root" "$work/oldkernel"
rm "$work/oldkernel/sys/kernel/mm/ksm/general_profit"
expect 1 "metric 'profit' needs $work/oldkernel/sys/kernel/mm/ksm/general_profit" -- \
    --root "$work/oldkernel" --connect "$DRV" --metric profit run
# ksm-restore with a knob it cannot read: named, exit 1
expect 0 '' -- "${gov[@]}" --connect "$DRV" --ksm manage run
rm "$ksmdir/pages_to_scan"
expect 1 "cannot give KSM's knobs back: cannot read $ksmdir/pages_to_scan" -- "${gov[@]}" ksm-restore
cp -r "$work/root" "$work/nomem"
printf 'MemTotal: 100 kB\n' >"$work/nomem/proc/meminfo"
expect 1 "$work/nomem/proc/meminfo: no MemAvailable line" -- --root "$work/nomem" --connect "$DRV" run
# a held lock: exit 1 naming the lock file and its holder
mkdir -p "$work/root/var/lib/ksm-balloon"
lockf="$work/root/var/lib/ksm-balloon/state.json.lock"
touch "$lockf"
# The holder keeps the lock until it is killed (not for a few seconds that
# a loaded machine may spend before the pass runs); the pass runs once the
# holder has written its pid, i.e. holds the lock.
flock "$lockf" sh -c "echo \$\$ > '$lockf'; exec sleep 600" &
holder=$!
if kb_wait_until 30 "the lock holder to write its pid into $lockf" test -s "$lockf"; then
    expect 1 "timed out after .* waiting for the lock $lockf \(held by pid [0-9]+\)" -- \
        --connect "$DRV" --lock-timeout 0.3 run
else
    echo "FAIL: the lock holder never held $lockf"
    fails=$((fails + 1))
fi
kill "$(cat "$lockf")" "$holder" 2>/dev/null; wait "$holder" 2>/dev/null

if [ "$fails" -gt 0 ]; then
    echo "$fails exit-code check(s) failed"
    exit 1
fi
echo "all exit-code checks passed"
