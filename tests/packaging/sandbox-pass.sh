#!/usr/bin/env bash
# Evidence for ksm-balloon.service's hardening without systemd as PID 1 (CI
# has none, so the unit itself cannot run here). One real pass against the
# real libvirtd, with a managed VM running, under the restrictions the unit
# sets, rebuilt with util-linux tools and libseccomp:
#   ProtectSystem=strict + ProtectKernelTunables  every mount read-only except
#                          the state directory, /proc and /dev (mount namespace)
#   ProtectHome=yes        /root, /home, /run/user: empty and inaccessible
#   PrivateTmp=yes         a private /tmp
#   PrivateNetwork=yes     a network namespace with no network (unshare -n)
#   CapabilityBoundingSet= + NoNewPrivileges=yes   setpriv drops every capability
#   SystemCallFilter= (+ SystemCallErrorNumber=), MemoryDenyWriteExecute=,
#   RestrictAddressFamilies=   seccomp filters built from the installed unit
#                          file by tests/packaging/unit_sandbox.py
# The pass must succeed, reach libvirtd (its report, `run --json` on stdout,
# counts a bulk-stats call) and save its state. It runs under strace, whose
# record shows what it did: the syscalls the filters refused (and it
# survived), every file written (all in the state directory), every device
# opened (within PrivateDevices' set).
# Not rebuilt: ProtectProc, PrivateDevices' own /dev, PrivateIPC,
# ProtectClock, ProtectKernelModules/Logs, RestrictNamespaces/Realtime/SUIDSGID,
# LockPersonality, SystemCallArchitectures.
#
# Usage: sandbox-pass.sh BIN UNIT CONFIG STATE UUID WORKDIR
#   UNIT: the installed ksm-balloon.service. STATE and WORKDIR must not be
#   under /tmp (PrivateTmp hides /tmp, as it would from the service), and
#   nothing the sandbox runs is read from the checkout, which may lie under
#   /tmp: unit_sandbox.py is copied into WORKDIR first. Called by
#   hook-realstack.sh under the real-stack lock.
set -euo pipefail
bin=$1 unit=$2 config=$3 state=$4 uuid=$5 work=$6
here=$(cd "$(dirname "$0")" && pwd)
statedir=$(dirname "$state")
uri=${KB_URI:-qemu:///system}
for d in "$statedir" "$(realpath -m "$work")"; do
    case "$d" in /tmp | /tmp/*) echo "sandbox-pass: $d is under /tmp" >&2; exit 1 ;; esac
done
rm -rf "$work"
mkdir -p "$work/trace"
cp "$here/unit_sandbox.py" "$work/unit_sandbox.py"

log() { printf '[%s] sandbox-pass: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# The last pass before this one (0: none yet; the hook writes only its spool).
before=$(python3 -c "
import json, os, sys
s = json.load(open(sys.argv[1])) if os.path.exists(sys.argv[1]) else {}
print((s.get('last_pass') or {}).get('at', 0))" "$state")
t_start=$(date +%s)

# The sandbox, built as root inside private mount and network namespaces;
# the pass itself runs with no capabilities and no_new_privs, under strace.
cat >"$work/sandbox.sh" <<'SANDBOX'
set -euo pipefail
bin=$1 config=$2 statedir=$3 tracedir=$4 uri=$5 unit=$6 sandbox_py=$7
# Writable exceptions first: binding a directory onto itself makes it a
# mount of its own that the read-only remounts below do not touch.
mount --bind "$statedir" "$statedir"
mount --bind "$tracedir" "$tracedir"
# Every other mount read-only. /proc and /dev stay as they are (systemd
# keeps them writable under ProtectSystem=strict); mounts under /mnt are
# not part of the OS and are left alone.
while read -r mp; do
    mp=$(printf '%b' "$mp")
    case "$mp" in
        /proc | /proc/* | /dev | /dev/* | /mnt/*) continue ;;
        "$statedir" | "$tracedir") continue ;;
    esac
    mount -o remount,bind,ro "$mp" || { echo "cannot make $mp read-only" >&2; exit 1; }
done < <(awk '{print $5}' /proc/self/mountinfo | sort -u)
for d in /root /home /run/user; do
    [ -d "$d" ] && mount -t tmpfs -o mode=0000,size=4k tmpfs "$d"
done
mount -t tmpfs -o mode=1777,size=16m tmpfs /tmp
# The test's settings, as EnvironmentFile= would pass them.
set -a
# shellcheck disable=SC1090
. "$config"
set +a
cd /
# The sandbox holds: as the pass will run, / and /run are read-only, /root is
# closed, the state directory is writable, no capability is left and no
# network interface is up.
setpriv --no-new-privs --bounding-set -all --inh-caps -all --ambient-caps -all -- sh -c '
    if touch /.ksm-balloon-sandbox-probe 2>/dev/null; then echo "/ is writable" >&2; exit 1; fi
    if touch /run/.ksm-balloon-sandbox-probe 2>/dev/null; then echo "/run is writable" >&2; exit 1; fi
    if ls /root >/dev/null 2>&1; then echo "/root is readable" >&2; exit 1; fi
    touch "$1/.probe" && rm "$1/.probe" || { echo "the state directory is not writable" >&2; exit 1; }
    grep -q "^CapEff:[[:space:]]*0*$" /proc/self/status || { echo "capabilities left" >&2; exit 1; }
    if ip -o link show up | grep -q .; then echo "a network interface is up" >&2; exit 1; fi
' sh "$statedir"
echo "sandbox checked: read-only /, closed /root, writable state dir, no capabilities, no network" >&2
exec setpriv --no-new-privs --bounding-set -all --inh-caps -all --ambient-caps -all -- \
    strace -f -y -qq -s 256 -o "$tracedir/strace.txt" \
    /usr/bin/python3 "$sandbox_py" exec "$unit" -- "$bin" --connect "$uri" run --json
SANDBOX

rc=0
unshare --mount --net --propagation private -- \
    bash "$work/sandbox.sh" "$bin" "$config" "$statedir" "$work/trace" "$uri" "$unit" "$work/unit_sandbox.py" \
    >"$work/stdout" 2>"$work/stderr" || rc=$?
log "pass in the sandbox exited $rc; its log:"
sed 's/^/    /' "$work/stderr" >&2
[ "$rc" -eq 0 ] || fail "the pass failed under the service's restrictions"
python3 - "$work/stdout" <<'PY' || fail "no libvirt bulk-stats call in the pass's report: it did not reach libvirtd"
import json, sys
calls = json.load(open(sys.argv[1]))["calls"]
print(f"libvirt calls in the sandboxed pass's report: {calls}", file=sys.stderr)
assert calls["bulk_stats"] >= 1, calls
PY
! grep -q 'ERROR' "$work/stderr" || fail "the pass logged an error"
python3 - "$state" "$uuid" "$before" "$t_start" <<'PY' || fail "the pass did not save its state"
import json, sys
s = json.load(open(sys.argv[1]))
at = (s.get("last_pass") or {}).get("at", 0)
assert at >= int(sys.argv[4]) and at != int(sys.argv[3]), f"last_pass.at {at}"
assert sys.argv[2] in s["vms"], "the running VM is no longer recorded"
print(f"state saved by the sandboxed pass: last_pass {s['last_pass']}", file=sys.stderr)
PY

# The strace record: what the pass did, and what the filters refused.
/usr/bin/python3 "$here/unit_sandbox.py" check-trace "$unit" "$work/trace/strace.txt" "$statedir" "$bin" >&2 ||
    fail "the pass went beyond the unit's restrictions"
log "the pass ran under the unit's restrictions and kept within them"
