#!/usr/bin/env bash
# The RPM's %post, %preun and %postun scriptlets, taken out of the built RPM
# (`rpm -qp --scripts`) and run by /bin/sh with the install/upgrade/remove
# argument rpm gives them, a systemctl stand-in that records its arguments,
# and /run/systemd/system present (a tmpfs over /run in a private mount
# namespace), as on a host where systemd runs. They must enable the timer
# and the path unit and start the timer (which starts the path unit) on
# first install only, leave them alone on upgrade, stop and disable them on
# removal, and restart them after an upgrade; on removal only, once the
# units are stopped, give KSM's knobs back (`ksm-balloon ksm-restore`, a
# stand-in here too), and a failure of that never fails the removal.
# tests/systemd/suite.sh runs them on a real systemd.
#
# This RPM was built with Debian's rpm, so the scriptlets hold the spec's
# fallback systemd macros; an RPM built on Fedora holds Fedora's own, which
# this does not test.
#
# Usage: tests/packaging/scriptlets.sh RPM WORKDIR
set -euo pipefail
rpmfile=$1
work=$2/scriptlets
rm -rf "$work"
mkdir -p "$work/bin"

# Split `rpm --scripts` output into one file per scriptlet.
rpm -qp --scripts "$rpmfile" >"$work/scripts.txt"
python3 - "$work/scripts.txt" "$work" <<'PY'
import re, sys
text, out = open(sys.argv[1]).read(), sys.argv[2]
parts = re.split(r"^(\w+) scriptlet \(using ([^)]+)\):\n", text, flags=re.M)
found = set()
for i in range(1, len(parts), 3):
    name, interp, body = parts[i], parts[i + 1], parts[i + 2]
    assert interp == "/bin/sh", f"{name} uses {interp}"
    open(f"{out}/{name}.sh", "w").write(body)
    found.add(name)
want = {"postinstall", "preuninstall", "postuninstall"}
assert found == want, f"scriptlets {sorted(found)}, expected {sorted(want)}"
PY

# systemctl stand-in: records each call; `is-enabled`/`is-active` answer
# from $SYSTEMCTL_ENABLED (yes/no).
cat >"$work/bin/systemctl" <<'EOF'
#!/bin/sh
echo "systemctl $*" >>"$SYSTEMCTL_LOG"
case " $* " in
    *" is-enabled "* | *" is-active "*) [ "$SYSTEMCTL_ENABLED" = yes ] ;;
    *) exit 0 ;;
esac
EOF
chmod +x "$work/bin/systemctl"
# ksm-balloon stand-in, in the same log (with the state file it was given
# in its environment, if any); exits $KSM_RESTORE_RC (0 unless set).
cat >"$work/bin/ksm-balloon" <<'EOF'
#!/bin/sh
echo "ksm-balloon $*${KSM_BALLOON_STATE:+ (state $KSM_BALLOON_STATE)}" >>"$SYSTEMCTL_LOG"
exit "${KSM_RESTORE_RC:-0}"
EOF
chmod +x "$work/bin/ksm-balloon"
# %preun calls the installed program by its path, with the settings file's
# variables: pointed at the stand-in and at a settings file of the test's.
grep -q '^ *(set -a; .*/etc/sysconfig/ksm-balloon; exec /usr/bin/ksm-balloon ksm-restore) ||' "$work/preuninstall.sh" ||
    { echo "FAIL: %preun does not run /usr/bin/ksm-balloon ksm-restore with /etc/sysconfig/ksm-balloon:"; sed 's/^/    /' "$work/preuninstall.sh"; exit 1; }
sed -i -e "s|/usr/bin/ksm-balloon ksm-restore|$work/bin/ksm-balloon ksm-restore|" \
    -e "s|/etc/sysconfig/ksm-balloon|$work/sysconfig|g" "$work/preuninstall.sh"
rm -f "$work/sysconfig"

fails=0
# run SCRIPTLET ARG ENABLED EXPECTED...: runs the scriptlet with $1=ARG and
# compares the systemctl calls it made with EXPECTED (one per argument).
run() {
    local script=$1 arg=$2 enabled=$3 got want
    shift 3
    : >"$work/calls"
    # shellcheck disable=SC2016 # expanded by the inner sh, from its arguments
    unshare --mount --propagation private -- sh -c '
        mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system &&
        exec env PATH="$1:/usr/bin:/bin" SYSTEMCTL_LOG="$2" SYSTEMCTL_ENABLED="$3" sh "$4" "$5"
    ' sh "$work/bin" "$work/calls" "$enabled" "$work/$script.sh" "$arg" 2>"$work/stderr" ||
        { echo "FAIL: $script $arg exited non-zero"; sed 's/^/    /' "$work/stderr"; fails=$((fails + 1)); return; }
    got=$(cat "$work/calls")
    want=$(printf '%s\n' "$@")
    if [ "$got" = "$want" ]; then
        echo "ok: %$script \$1=$arg (enabled=$enabled): ${*:-no systemctl call}"
    else
        echo "FAIL: %$script \$1=$arg (enabled=$enabled) called:"
        sed 's/^/    /' <<<"${got:-(nothing)}"
        echo "  expected:"
        sed 's/^/    /' <<<"${want:-(nothing)}"
        fails=$((fails + 1))
    fi
}

# First install: preset (enables the timer and the path unit through
# 50-ksm-balloon.preset), then start the timer since it is enabled.
run postinstall 1 yes \
    "systemctl --no-reload preset ksm-balloon.timer ksm-balloon.path" \
    "systemctl -q is-enabled ksm-balloon.timer" \
    "systemctl start ksm-balloon.timer"
# First install where a local preset disabled it: not started.
run postinstall 1 no \
    "systemctl --no-reload preset ksm-balloon.timer ksm-balloon.path" \
    "systemctl -q is-enabled ksm-balloon.timer"
# Upgrade: nothing (the admin's enable/disable stands).
run postinstall 2 yes
# Removal: stop and disable the timer, the path unit and the service,
# then give KSM's knobs back.
run preuninstall 0 yes "systemctl --no-reload disable --now ksm-balloon.timer ksm-balloon.path ksm-balloon.service" \
    "ksm-balloon ksm-restore"
# A failed ksm-restore: said on stderr, and the removal goes on (exit 0).
KSM_RESTORE_RC=1 run preuninstall 0 yes "systemctl --no-reload disable --now ksm-balloon.timer ksm-balloon.path ksm-balloon.service" \
    "ksm-balloon ksm-restore"
if grep -q "KSM's knobs not given back (ksm-restore exited 1" "$work/stderr"; then
    echo "ok: %preun \$1=0 with ksm-restore failing: the failure printed, the removal goes on"
else
    echo "FAIL: %preun \$1=0 with ksm-restore failing did not print the failure:"
    sed 's/^/    /' "$work/stderr"
    fails=$((fails + 1))
fi
# A state file moved in the settings file (KSM_BALLOON_STATE, as the
# service's EnvironmentFile gives it to every pass): ksm-restore is given it.
printf '%s\n' '# a test settings file' 'KSM_BALLOON_STATE=/srv/kb/state.json' >"$work/sysconfig"
run preuninstall 0 yes "systemctl --no-reload disable --now ksm-balloon.timer ksm-balloon.path ksm-balloon.service" \
    "ksm-balloon ksm-restore (state /srv/kb/state.json)"
rm -f "$work/sysconfig"
# Upgrade: the old package's %preun leaves them alone.
run preuninstall 1 yes
# After an upgrade: reload units, restart the timer and the path unit if they run.
run postuninstall 1 yes "systemctl daemon-reload" "systemctl try-restart ksm-balloon.timer ksm-balloon.path"
# After removal: nothing left to restart.
run postuninstall 0 yes

[ "$fails" -eq 0 ] || { echo "$fails scriptlet check(s) failed"; exit 1; }
echo "all scriptlet checks passed"
