#!/usr/bin/env bash
# ksm-balloon as an operator runs it, on a real systemd: a Debian 12 system
# booted with systemd as PID 1 (a systemd-nspawn container, tests/systemd/
# lib.sh), libvirtd started by systemd as Debian ships it, the RPM that
# `make rpm` built installed with `rpm -i --nodeps` (its scriptlets enable
# and start the timer and the path unit), software-emulated QEMU guests with
# headroom (floor 160 MiB, ceiling 256 MiB), the host's KSM on.
#
# Usage (as root): tests/systemd/suite.sh [RPM [DEB]]
#   Without RPM: the RPM of the repo's HEAD, cached by commit (40-packaging
#   stores the one it builds), else built now (tests/packaging/build-rpm.sh);
#   the same for DEB (tests/packaging/build-deb.sh).
#
# The scenarios (issue 10's, judged on what systemd's journal and
# `ksm-balloon status --json` say, never on ksm-balloon's log text):
#   1. the package installed: timer and path unit enabled and active, the
#      hook in place; libvirtd restarted so it runs the hook;
#   2. a pass in flight never delays a VM start: a pass started, then
#      `virsh create` at once, 6 times: every create within 3 s (or 1.5 s
#      more than the slowest of 2 starts with no pass in flight just
#      before, on a loaded machine), no lock timeout logged, every VM
#      recorded with its configured floor;
#   3. the timer: 6 intervals between passes once the 6 guests booted,
#      median 10 s (9.7-10.3), every pass succeeded; then every VM gets its
#      share (floor + equal split of the savings);
#   4. libvirtd restarted with the VMs running and a pass in flight: no
#      timeout, every VM keeps its floor;
#   5. the hook's cost: median `virsh create` time with the hook minus
#      without it (libvirtd restarted between), 10 starts each in alternating
#      blocks of 5 (KB_SD_COST_BLOCKS=4 for 20; KB_SD_COST_CONTROL=1: also
#      with the hook but the path unit stopped, a control); the hook
#      program alone (300 runs); printed, not asserted (goal: 5 ms or less);
#   6. a host boot storm: 8 guests started at once, first without the hook,
#      then with it while a pass runs: every create within 3 s of its time
#      without the hook, every guest recorded with its floor, no timeout;
#   7. the spool: a file a pass cannot use, and passes that fail (libvirt
#      unreachable) while the hook records a VM, do not make passes run back
#      to back; the spool is emptied and the path unit stays active;
#   8. `systemctl disable --now ksm-balloon.timer` turns every pass off (the
#      path unit too, while the hook keeps recording); `enable --now` brings
#      both back and a pass folds in what was recorded meanwhile;
#   9. every pass the suite saw succeeded (but those of 7 made to fail);
#      `rpm -e` stops and removes it all.
# Then, in the same container, the .deb as a Debian operator installs it
# (`apt install ./ksm-balloon_*.deb`, its dependencies already there):
#  10. a previous build (this .deb repacked by dpkg-deb as version
#      <version>~prev: the same files, a lower version) installed: the timer
#      and the path unit enabled and active, the hook in place, the service
#      reading /etc/default/ksm-balloon; that file edited;
#  11. upgraded to this build with a pass in flight: the edited settings
#      kept as they were (no .dpkg-dist), the pass not killed, every unit
#      back; a VM started with a pass in flight is recorded with its floor;
#      the timer's next interval within 9.7-10.3 s;
#  12. `apt remove`: every unit stopped and gone, the programs and the hook
#      gone; the state and the edited settings kept;
#  13. `apt purge`: the settings and the state gone, no unit left enabled.
#
# Everything it saw goes to stdout: the journal's ksm-balloon lines, the
# intervals, the timings. Holds the real-stack lock (the host's KSM is
# shared); teardown always runs: guests destroyed, the container powered
# off, KSM's knobs restored. KB_KEEP=1 keeps the work directory.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../lib/libvirtd.sh
. "$here/../lib/libvirtd.sh"
# shellcheck source=../lib/guest.sh
. "$here/../lib/guest.sh"
# shellcheck source=lib.sh
. "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || kb_die "the systemd suite must run as root"
for tool in mmdebstrap systemd-nspawn nsenter rpm python3 git; do
    command -v "$tool" >/dev/null || kb_die "$tool is missing: run tests/deps.sh"
done

started=$(date +%s)
WORK=$(mktemp -d /var/tmp/ksm-balloon-systemd.XXXXXX)
FLOOR=$((160 * 1024))
CEIL=$((256 * 1024))
URI=qemu:///system
HOOK=/etc/libvirt/hooks/qemu.d/ksm-balloon
HOOK_ASIDE=/root/ksm-balloon-hook.aside
# Inside the container: the guests' domain XML and serial consoles.
GDIR=/var/lib/kb-test
PASSED=()
FAILED=()
FIGURES=()

judge() { python3 "$here/judge.py" "$@"; }
now_us() { date +%s%6N; }
figure() {
    FIGURES+=("$*")
    echo "  figure: $*"
}
# check DESCRIPTION COMMAND...: prints ok/FAIL; returns the command's status.
check() {
    local what=$1
    shift
    if "$@"; then
        echo "  ok: $what"
    else
        echo "  FAIL: $what"
        CHECK_FAILED=1
        return 1
    fi
}
# scenario NAME FUNCTION: runs one scenario; it fails if any check failed.
# KB_SD_SCENARIOS="1 2 5" runs only those (for working on them: a scenario
# left out counts as failed, so such a run never passes).
scenario() {
    local name=$1 t0
    shift
    printf '\n=== %s (%s)\n' "$name" "$(date -u +%H:%M:%S)"
    if [ -n "${KB_SD_SCENARIOS:-}" ] && ! [[ " $KB_SD_SCENARIOS " == *" ${name%%.*} "* ]]; then
        echo "  not run (KB_SD_SCENARIOS=$KB_SD_SCENARIOS)"
        FAILED+=("$name (not run)")
        return
    fi
    t0=$(date +%s)
    CHECK_FAILED=0
    "$@" || CHECK_FAILED=1
    if [ "$CHECK_FAILED" = 0 ]; then
        PASSED+=("$name ($(($(date +%s) - t0)) s)")
    else
        FAILED+=("$name ($(($(date +%s) - t0)) s)")
    fi
}

vsh() { sd_run virsh -q -c "$URI" "$@"; }
not() { ! "$@"; }
# active_is UNIT STATE: systemctl is-active prints STATE for UNIT.
active_is() { [ "$(sd_run systemctl is-active "$1")" = "$2" ]; }
# watch_passes SECONDS MAX MARK: watches the passes started since MARK for
# SECONDS; fails as soon as there are more than MAX. A measuring window, not
# a wait for a state: "no more than MAX passes in SECONDS" can only be
# watched for, so its 1 s polling is pacing.
watch_passes() {
    local end=$(($(date +%s) + $1)) n
    while [ "$(date +%s)" -lt "$end" ]; do
        n=$(passes_since "$3")
        [ "$n" -le "$2" ] || { echo "  $n passes started, more than $2"; return 1; }
        sleep 1
    done
    echo "  $(passes_since "$3") passes started in ${1} s"
}
console() { echo "$SD_MERGED$GDIR/$1.console"; }

# guest_xml NAME: a transient domain with headroom (floor 160 MiB, ceiling
# 256 MiB), the real-stack guest's kernel and initramfs (bound into the
# container read-only at the same paths), its console in a file inside the
# container, a virtio balloon with statistics every 2 s.
guest_xml() {
    kg_domain_xml "$1" --unit KiB --memory "$CEIL" --current "$FLOOR" \
        --kernel "$KG_KERNEL" --initrd "$KG_INITRD" --console "$GDIR/$1.console" \
        >"$SD_MERGED$GDIR/$1.xml"
    rm -f "$(console "$1")"
}

# create_timed NAME [pass]: `virsh create` inside the container, timed
# there; with "pass", a pass is started (not waited for) right before.
# Prints "T0_US T1_US MS".
create_timed() {
    # shellcheck disable=SC2016 # expanded by the shell inside the container
    sd_run bash -c '
        [ "$2" = pass ] && systemctl start --no-block ksm-balloon.service
        t0=$(date +%s%N)
        virsh -q -c qemu:///system create "$1" >/dev/null || exit 1
        t1=$(date +%s%N)
        echo $((t0 / 1000)) $((t1 / 1000)) $(((t1 - t0) / 1000000))
    ' create "$GDIR/$1.xml" "${2:-}"
}

destroy() { vsh destroy "$1" >/dev/null 2>&1; }
running_guests() { vsh list --name 2>/dev/null | grep '^kbsd-' || true; }
no_guests() { [ -z "$(running_guests)" ]; }
destroy_all() {
    local g
    for g in $(running_guests); do destroy "$g"; done
    kb_wait_until 30 "every test guest to be gone" no_guests
}
guest_ready() { grep -q '^KB-GUEST-READY' "$(console "$1")" 2>/dev/null; }

# The pass is idle: the service is not running and the spool (if this
# version has one) is empty, so nothing is queued either.
pass_idle() {
    local s
    s=$(sd_run systemctl show -P ActiveState ksm-balloon.service)
    [ "$s" != activating ] && [ "$s" != deactivating ] &&
        [ -z "$(ls -A "$SD_MERGED/var/lib/ksm-balloon/spool" 2>/dev/null)" ]
}
wait_pass_idle() { kb_wait_until 60 "no ksm-balloon pass running or queued" pass_idle; }

libvirtd_alive() { sd_run timeout 10 virsh -c "$URI" version >/dev/null 2>&1; }
libvirtd_restart() {
    sd_run systemctl restart libvirtd.service || return 1
    kb_wait_until 60 "libvirtd to answer after its restart" libvirtd_alive
}
# libvirtd_restart_quiet: the restart that puts the hook in or out, for the
# cost and storm scenarios (operator's maintenance, not the scenario under
# test): the timer and path units stopped, no pass running, restart, units
# started again. A pass that connects while libvirtd goes down exits 1 by
# design (libvirtd unreachable), and scenario 9 counts every failed pass
# outside scenario 7's: a clean-clone run of this suite failed so, a pass
# started by the path unit for the last of scenario 5's stopped guests
# meeting hook_off's restart.
service_idle() {
    local s
    s=$(sd_run systemctl show -P ActiveState ksm-balloon.service)
    [ "$s" != activating ] && [ "$s" != deactivating ]
}
libvirtd_restart_quiet() {
    local rc=0
    # the spool drained first (the path unit folds it), then no new pass
    wait_pass_idle || return 1
    sd_run systemctl stop ksm-balloon.timer ksm-balloon.path || return 1
    kb_wait_until 60 "the last pass to end" service_idle || rc=1
    [ "$rc" = 1 ] || libvirtd_restart || rc=1
    sd_run systemctl start ksm-balloon.timer ksm-balloon.path || rc=1
    return $rc
}
hook_off() { sd_run mv "$HOOK" "$HOOK_ASIDE" && libvirtd_restart_quiet; }
hook_on() { sd_run mv "$HOOK_ASIDE" "$HOOK" && libvirtd_restart_quiet; }

status_json() { sd_run ksm-balloon status --json >"$1" 2>"$WORK/status.err"; }
journal_json() { sd_run journalctl -u ksm-balloon.service -o json --no-pager >"$WORK/journal.json"; }
passes_since() { journal_json && judge count "$1" <"$WORK/journal.json"; }
# passes_at_least N MARK
passes_at_least() { [ "$(passes_since "$2")" -ge "$1" ]; }
# timeouts_since MARK_US: journal lines since MARK that report a timeout.
timeouts_since() {
    sd_run journalctl -o short-unix --no-pager |
        awk -v m="$1" '{ split($1, t, "."); if (t[1] * 1000000 + substr(t[2] "000000", 1, 6) >= m) print }' |
        grep -i 'timed out' || true
}
no_timeouts_since() {
    local t
    mapfile -t t < <(timeouts_since "$1")
    [ "${#t[@]}" -eq 0 ] && return 0
    printf '    | %s\n' "${t[@]}"
    return 1
}
# floors_ok NAME...: status --json reports each NAME once with the
# configured floor and ceiling.
floors_ok() {
    status_json "$WORK/status.json" && judge floors "$WORK/status.json" "$FLOOR" "$CEIL" "$@" >"$WORK/floors.out"
}
show_floors() { cat "$WORK/floors.out"; }

# --- setup and teardown ---------------------------------------------------------

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    kb_log "teardown: test guests destroyed, container powered off, KSM restored"
    if [ -n "$SD_NSPAWN_PID" ] && ! kb_pid_gone "$SD_NSPAWN_PID"; then
        for g in $(running_guests); do destroy "$g"; done
    fi
    sd_poweroff
    kb_ksm_restore
    if [ "${KB_KEEP:-0}" = 1 ]; then
        kb_log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    return "$rc"
}

setup() {
    trap teardown EXIT
    trap 'exit 130' INT TERM
    # What touches neither libvirtd nor KSM comes before the lock.
    if [ -n "${1:-}" ]; then
        SD_RPM=$(realpath "$1")
    else
        sd_rpm "$repo" "$WORK/rpmbuild"
    fi
    if [ -n "${2:-}" ]; then
        SD_DEB=$(realpath "$2")
    else
        sd_deb "$repo" "$WORK/debbuild"
    fi
    # The bzImage, not the ELF: this suite times `virsh create` (the hook's
    # cost, starts with a pass in flight), and QEMU loads the 65 MB ELF
    # inside every create (median 1219 ms on it, 810 ms on the bzImage in
    # the runs that compared them), a noise that drowns a few ms of hook.
    KG_KERNEL_ELF=0
    kg_build_image "$repo/tests/realstack/guest-init.sh" || kb_die "cannot build the guest image"
    sd_build_root
    kb_realstack_lock
    kb_ksm_save
    # From no savings; then merging fast enough to see savings in seconds.
    kb_ksm_set 2
    kb_ksm_set 1 1000 20
    SD_BOOTED_AT=$(date +%s)
    sd_boot "$WORK/container" --bind-ro="$KG_KERNEL" --bind-ro="$(dirname "$KG_INITRD")"
    kb_log "in the container: $(sd_run systemctl --version | head -n 1); $(sd_run libvirtd --version)"
    mkdir -p "$SD_MERGED$GDIR"
}

# --- the scenarios ----------------------------------------------------------------

install_package() {
    cp "$SD_RPM" "$SD_MERGED/var/tmp/ksm-balloon.rpm"
    echo "  installing $(rpm -qp --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}' "$SD_RPM" 2>/dev/null) ($SD_RPM)"
    # Debian's rpm warns that it is not Debian's package manager.
    sd_run rpm -i --nodeps /var/tmp/ksm-balloon.rpm 2>&1 | grep -v -e 'use Alien' -e 'assuming you know' | sed 's/^/    | /'
    check "rpm -i installed ksm-balloon" sd_run rpm -q --quiet ksm-balloon
    local u
    for u in ksm-balloon.timer ksm-balloon.path; do
        check "$u enabled by the preset" sd_run systemctl -q is-enabled "$u"
        check "$u started by the RPM's %post" sd_run systemctl -q is-active "$u"
    done
    sd_run ls -l "$HOOK" | sed 's/^/    /'
    check "the hook in libvirt's directory is a link to the hook program" \
        [ "$(sd_run readlink -f "$HOOK")" = /usr/libexec/ksm-balloon/ksm-balloon-hook ]
    check "the hook program is executable" sd_run test -x "$HOOK"
    check "libvirtd runs (started by systemd)" sd_run systemctl -q is-active libvirtd.service
    libvirtd_restart
    check "libvirtd restarted so it runs the hook" libvirtd_alive
}

# Scenario 2: a pass in flight, then a VM start, 6 times. The limit is
# 3 s, or, on a machine so loaded that starts with no pass in flight take
# longer, 1.5 s more than the slowest of 2 such starts made just before (a
# start that waited for a pass, as a hook taking the pass's lock did, waits
# out a 5 s lock timeout or a 30 s libvirt deadline). CI under one busy
# core once saw 3467 ms with a pass that ran 486 ms.
INFLIGHT=(kbsd-f1 kbsd-f2 kbsd-f3 kbsd-f4 kbsd-f5 kbsd-f6)
START_LIMIT=3000 # scenario 11 uses scenario 2's limit
in_flight() {
    local g mark out t0 t1 ms times=() rc=0 base=() limit=3000
    for g in "${INFLIGHT[@]:0:2}"; do
        guest_xml "$g"
        wait_pass_idle
        out=$(create_timed "$g") || { echo "  FAIL: virsh create $g failed"; return 1; }
        read -r t0 t1 ms <<<"$out"
        base+=("$ms")
        destroy "$g"
    done
    kb_wait_until 30 "the baseline guests to be gone" no_guests
    local slow=$((base[0] > base[1] ? base[0] : base[1]))
    [ $((slow + 1500)) -le 3000 ] || limit=$((slow + 1500))
    figure "starts with no pass in flight (ms): ${base[*]}; the limit with one: $limit ms"
    START_LIMIT=$limit
    mark=$(now_us)
    for g in "${INFLIGHT[@]}"; do
        guest_xml "$g"
        wait_pass_idle
        out=$(create_timed "$g" pass) || { echo "  FAIL: virsh create $g failed"; rc=1; continue; }
        read -r t0 t1 ms <<<"$out"
        times+=("$ms")
        journal_json
        echo "  $g: virsh create took $ms ms; $(judge overlap "$mark" "$t0" "$t1" <"$WORK/journal.json")"
        judge overlap "$mark" "$t0" "$t1" <"$WORK/journal.json" >/dev/null ||
            { echo "  FAIL: no pass was in flight during $g's start: the scenario did not happen"; rc=1; }
        [ "$ms" -le "$limit" ] || { echo "  FAIL: $g's start took $ms ms (limit $limit)"; rc=1; }
    done
    figure "in-flight starts (ms): ${times[*]}"
    check "every start returned within $limit ms with a pass in flight" [ "$rc" = 0 ]
    check "no timeout logged" no_timeouts_since "$mark"
    kb_wait_until 60 "every VM recorded with its floor" floors_ok "${INFLIGHT[@]}"
    show_floors
    check "every VM recorded with floor 160 MiB and ceiling 256 MiB" floors_ok "${INFLIGHT[@]}"
}

# Scenario 3: the timer's intervals while the guests boot and settle.
share_ok() {
    status_json "$WORK/status.json" && judge share "$WORK/status.json" $((5 * 1024)) >"$WORK/share.out"
}
# The container has been up long enough for the timer's OnBootSec= (30 s)
# to have fired: that one pass comes on its own schedule, not 10 s after
# the last.
past_boot_pass() { [ "$(date +%s)" -ge $((SD_BOOTED_AT + 32)) ]; }
timer_and_share() {
    local mark g
    for g in "${INFLIGHT[@]}"; do
        kb_wait_until 240 "guest $g to boot" guest_ready "$g" || { check "guest $g booted" false; }
    done
    kb_wait_until 60 "the timer's first pass after boot (OnBootSec=30s)" past_boot_pass
    wait_pass_idle
    mark=$(now_us)
    # 6 intervals (60 s): the intervals of every run so far were 10.0-10.1 s
    # with AccuracySec=1ms, 10.98-11.01 s with the old AccuracySec=1s, so
    # the median of 6 tells the two apart as surely as the median of 12 did
    # (12 watched the timer for about 150 s of CI time).
    kb_wait_until 110 "7 passes started by the timer" passes_at_least 7 "$mark"
    journal_json
    judge runs "$mark" <"$WORK/journal.json"
    check "every pass succeeded" judge runs "$mark" <"$WORK/journal.json" >/dev/null
    check "median interval between passes within 9.7-10.3 s" judge intervals "$mark" 6 9.7 10.3 <"$WORK/journal.json"
    figure "timer intervals: $(judge intervals "$mark" 6 9.7 10.3 <"$WORK/journal.json" | tail -n 1 | sed 's/^ *//')"
    # The balloons follow the savings: every VM at floor + its part of them
    # by the packaged split (demand: idle guests weigh alike, a reader more).
    kb_wait_until 120 "every VM to hold its share" share_ok
    cat "$WORK/share.out"
    check "every VM got its share (floor + its part of the savings by the split)" share_ok
}

# Scenario 4: libvirtd restarted with the VMs running and a pass in flight.
restart_libvirtd() {
    local mark t
    wait_pass_idle
    mark=$(now_us)
    # shellcheck disable=SC2016 # expanded by the shell inside the container
    t=$(sd_run bash -c '
        systemctl start --no-block ksm-balloon.service
        t0=$(date +%s%N)
        systemctl restart libvirtd.service || exit 1
        echo $((($(date +%s%N) - t0) / 1000000))')
    check "libvirtd restarted" [ -n "$t" ]
    echo "  systemctl restart libvirtd took ${t:-?} ms with a pass started right before"
    figure "libvirtd restart with 6 VMs and a pass in flight: ${t:-?} ms"
    check "libvirtd answers after the restart" kb_wait_until 60 "libvirtd to answer" libvirtd_alive
    wait_pass_idle
    journal_json
    judge runs "$mark" <"$WORK/journal.json"
    check "every pass around the restart succeeded" judge runs "$mark" <"$WORK/journal.json" >/dev/null
    check "no timeout logged" no_timeouts_since "$mark"
    floors_ok "${INFLIGHT[@]}"
    show_floors
    check "every VM kept floor 160 MiB, ceiling 256 MiB" floors_ok "${INFLIGHT[@]}"
    destroy_all
}

# Scenario 5: the hook's cost. `virsh create` without and with the hook in
# alternating blocks (libvirtd restarted at each switch), so a change in the
# machine's load hits both alike. With KB_SD_COST_CONTROL=1 a third arm
# has the hook but the path unit stopped (no pass started while the VM
# starts): a control that shows how far the medians move for reasons other
# than the hook (about 3 more minutes). Then the hook program alone, as
# libvirtd runs it, next to /bin/true (what any fork and exec costs).
# 2 blocks in CI (10 starts each; about 30 s less than 4): a figure, not a
# check, and on a shared 2-core machine the load moves it more than the
# hook does (CI B, 20 starts each: -114 ms). KB_SD_COST_BLOCKS=4 or more
# for a figure to quote.
COST_BLOCKS=${KB_SD_COST_BLOCKS:-2}
COST_PER_BLOCK=5
COST_WITHOUT=()
COST_WITH=()
COST_NOPATH=()
cost_block() {
    local arm=$1 out ms
    for _ in $(seq "$COST_PER_BLOCK"); do
        wait_pass_idle
        out=$(create_timed kbsd-cost) || { echo "  virsh create failed ($arm)"; return 1; }
        ms=${out##* }
        case $arm in
            with) COST_WITH+=("$ms") ;;
            nopath) COST_NOPATH+=("$ms") ;;
            *) COST_WITHOUT+=("$ms") ;;
        esac
        destroy kbsd-cost
        kb_wait_until 30 "kbsd-cost to be gone" no_guests || return 1
    done
}
# hook_alone: 300 runs each of /bin/true, the hook recording (prepare) and
# the hook ignoring a call, with a real domain's XML on stdin and a scratch
# state; prints "true_us record_us ignore_us" (mean per run).
hook_alone() {
    # shellcheck disable=SC2016 # expanded by the shell inside the container
    sd_run bash -c '
        d=$(mktemp -d /var/tmp/hookcost.XXXXXX)
        printf "KSM_BALLOON_STATE=%s/state.json\n" "$d" >"$d/settings"
        export KSM_BALLOON_CONFIG=$d/settings
        for what in true prepare frobnicate; do
            t0=$(date +%s%N)
            for _ in $(seq 300); do
                if [ "$what" = true ]; then /bin/true x prepare begin - <"$1"
                else "$2" x "$what" begin - <"$1"; fi
            done
            printf "%s " $((($(date +%s%N) - t0) / 300000))
        done
        n=$(find "$d/spool" -type f | wc -l)
        rm -rf "$d"
        echo "$n"' cost "$GDIR/kbsd-cost.xml" "$HOOK"
}
hook_cost() {
    local b without with nopath d alone t_true t_rec t_ign n
    guest_xml kbsd-cost
    # The machine is shared (2 cores): its load moves these figures more
    # than the hook does.
    figure "load average before the cost runs: $(cut -d' ' -f1-3 /proc/loadavg)"
    for b in $(seq "$COST_BLOCKS"); do
        hook_off || { check "hook removed, libvirtd restarted" false; return; }
        cost_block without || { check "starts without the hook (block $b)" false; hook_on; return; }
        hook_on || { check "hook back, libvirtd restarted" false; return; }
        cost_block with || { check "starts with the hook (block $b)" false; return; }
        if [ "${KB_SD_COST_CONTROL:-0}" = 1 ]; then
            sd_run systemctl stop ksm-balloon.path
            cost_block nopath || { check "starts with the hook, path unit stopped (block $b)" false; return; }
            sd_run systemctl start ksm-balloon.path
        fi
    done
    without=$(judge median "${COST_WITHOUT[@]}")
    with=$(judge median "${COST_WITH[@]}")
    d=$(python3 -c "print(f'{$with - $without:+.0f}')")
    figure "virsh create without the hook (ms, $COST_BLOCKS blocks of $COST_PER_BLOCK): ${COST_WITHOUT[*]}; median $without"
    figure "virsh create with the hook (ms, $COST_BLOCKS blocks of $COST_PER_BLOCK): ${COST_WITH[*]}; median $with"
    figure "the hook's cost per VM start, median with - without: $d ms (goal: 5 ms or less; reported, not asserted)"
    if [ "${#COST_NOPATH[@]}" -gt 0 ]; then
        nopath=$(judge median "${COST_NOPATH[@]}")
        figure "virsh create with the hook, path unit stopped (ms): ${COST_NOPATH[*]}; median $nopath"
        figure "the same with the path unit stopped (no pass started during the VM's start): $(python3 -c "print(f'{$nopath - $without:+.0f}')") ms"
    fi
    figure "load average after the create runs: $(cut -d' ' -f1-3 /proc/loadavg)"
    alone=$(hook_alone)
    read -r t_true t_rec t_ign n <<<"$alone"
    check "the hook alone recorded its 300 prepare calls" [ "${n:-0}" = 300 ]
    figure "the hook program alone, mean of 300 runs: recording a call ${t_rec:-?} us, ignoring one ${t_ign:-?} us, /bin/true ${t_true:-?} us; a VM start runs it 3 times: $(python3 -c "print(f'{3 * ${t_rec:-0} / 1000:.1f}')") ms"
}

# Scenario 6: 8 guests at once, without the hook, then with it and a pass
# in flight.
STORM=(kbsd-s1 kbsd-s2 kbsd-s3 kbsd-s4 kbsd-s5 kbsd-s6 kbsd-s7 kbsd-s8)
storm_once() {
    local with_pass=$1 paths=() g
    for g in "${STORM[@]}"; do
        guest_xml "$g"
        paths+=("$GDIR/$g.xml")
    done
    # All 8 creates in one go inside the container, each timed there.
    # shellcheck disable=SC2016 # expanded by the shell inside the container
    sd_run bash -c '
        [ "$1" = pass ] && systemctl start --no-block ksm-balloon.service
        shift
        for x in "$@"; do
            ( t0=$(date +%s%N)
              virsh -q -c qemu:///system create "$x" >/dev/null 2>&1 || { echo "FAILED $x"; exit; }
              echo $((($(date +%s%N) - t0) / 1000000)) ) &
        done
        wait' storm "$with_pass" "${paths[@]}"
}
boot_storm() {
    local out without with mark
    hook_off || { check "hook removed, libvirtd restarted" false; return; }
    wait_pass_idle
    out=$(storm_once "")
    echo "  without the hook: $(echo "$out" | tr '\n' ' ')ms"
    check "8 creates without the hook" [ "$(echo "$out" | grep -c '^[0-9]')" = 8 ]
    without=$(echo "$out" | grep '^[0-9]' | paste -sd,)
    destroy_all
    hook_on || { check "hook back, libvirtd restarted" false; return; }
    wait_pass_idle
    mark=$(now_us)
    out=$(storm_once pass)
    echo "  with the hook and a pass in flight: $(echo "$out" | tr '\n' ' ')ms"
    check "8 creates with the hook" [ "$(echo "$out" | grep -c '^[0-9]')" = 8 ]
    with=$(echo "$out" | grep '^[0-9]' | paste -sd,)
    figure "boot storm, 8 guests at once, virsh create (ms): without the hook $without; with it $with"
    check "every create within 3 s of its time without the hook" judge storm "$without" "$with" 3000
    check "no timeout logged" no_timeouts_since "$mark"
    kb_wait_until 90 "every storm guest recorded with its floor" floors_ok "${STORM[@]}"
    show_floors
    check "every storm guest recorded with floor 160 MiB, ceiling 256 MiB" floors_ok "${STORM[@]}"
    wait_pass_idle
    journal_json
    check "every pass during the storm succeeded" judge runs "$mark" <"$WORK/journal.json"
    destroy_all
}

# Scenario 7: a file in the spool that no pass can use; passes that fail.
SPOOL=/var/lib/ksm-balloon/spool
spool_empty() { [ -z "$(find "$SD_MERGED$SPOOL" -mindepth 1 2>/dev/null)" ]; }
FAIL_FROM=0
FAIL_UNTIL=0
spool_junk() {
    local mark n
    wait_pass_idle
    mark=$(now_us)
    sd_run sh -c "printf 'not a record' >$SPOOL/junk && mkdir -p $SPOOL/a-directory"
    # 12 s: a timer pass, and whatever the path unit starts.
    check "junk in the spool: no passes back to back (at most 4 in 12 s)" watch_passes 12 4 "$mark"
    check "the junk was removed" spool_empty
    check "the path unit is still active" sd_run systemctl -q is-active ksm-balloon.path

    # libvirt unreachable for the pass (the hook does not use libvirt).
    wait_pass_idle
    FAIL_FROM=$(now_us)
    sd_run cp /etc/sysconfig/ksm-balloon /root/sysconfig.saved
    sd_run sh -c 'echo "KSM_BALLOON_CONNECT=qemu+unix:///system?socket=/run/no-such-libvirt-sock" >>/etc/sysconfig/ksm-balloon'
    guest_xml kbsd-fail
    create_timed kbsd-fail >/dev/null
    check "passes failing, a VM starts: no passes back to back (at most 4 in 12 s)" watch_passes 12 4 "$FAIL_FROM"
    journal_json
    n=$(judge failed "$FAIL_FROM" "$(now_us)" <"$WORK/journal.json")
    echo "  passes that failed meanwhile: $n"
    check "the passes did fail (libvirt unreachable)" [ "$n" -ge 1 ]
    check "the failing passes emptied the spool all the same" spool_empty
    check "the path unit is still active" sd_run systemctl -q is-active ksm-balloon.path
    sd_run cp /root/sysconfig.saved /etc/sysconfig/ksm-balloon
    wait_pass_idle
    FAIL_UNTIL=$(now_us)
    kb_wait_until 30 "a pass to record kbsd-fail" floors_ok kbsd-fail
    check "the VM started while passes failed is recorded with its floor" floors_ok kbsd-fail
    destroy_all
}

# Scenario 8: disable --now turns every pass off; enable --now brings them back.
disable_enable() {
    local mark u
    wait_pass_idle
    sd_run systemctl disable --now ksm-balloon.timer 2>&1 | sed 's/^/    | /'
    for u in ksm-balloon.timer ksm-balloon.path; do
        check "$u disabled" not sd_run systemctl -q is-enabled "$u"
        check "$u stopped" active_is "$u" inactive
    done
    mark=$(now_us)
    guest_xml kbsd-off
    create_timed kbsd-off >/dev/null
    check "a VM starts with every pass off" [ "$(vsh domstate kbsd-off)" = running ]
    check "no pass in the 12 s after the VM started" watch_passes 12 0 "$mark"
    echo "  spool while every pass is off: $(find "$SD_MERGED/var/lib/ksm-balloon/spool" -mindepth 1 2>/dev/null | wc -l) record(s)"
    sd_run systemctl enable --now ksm-balloon.timer 2>&1 | sed 's/^/    | /'
    for u in ksm-balloon.timer ksm-balloon.path; do
        check "$u enabled again" sd_run systemctl -q is-enabled "$u"
        check "$u active again" sd_run systemctl -q is-active "$u"
    done
    kb_wait_until 30 "a pass to record kbsd-off" floors_ok kbsd-off
    show_floors
    check "the VM started while every pass was off is recorded with its floor" floors_ok kbsd-off
    destroy_all
}

# Scenario 9: every pass of the whole run succeeded; then rpm -e.
all_passes_and_erase() {
    wait_pass_idle
    journal_json
    echo "  every ksm-balloon.service run since the container booted, but scenario 7's failing window:"
    judge runs 0 "$FAIL_FROM" <"$WORK/journal.json" | tail -n 1
    judge runs "$FAIL_UNTIL" <"$WORK/journal.json" | tail -n 1
    check "every pass of the whole run succeeded (but those made to fail)" \
        judge runs 0 "$FAIL_FROM" <"$WORK/journal.json" >/dev/null
    check "every pass after scenario 7 succeeded" judge runs "$FAIL_UNTIL" <"$WORK/journal.json" >/dev/null
    sd_run systemctl --failed --no-legend --plain | sed 's/^/    /'
    check "no unit failed" [ -z "$(sd_run systemctl --failed --no-legend --plain)" ]
    sd_run rpm -e ksm-balloon 2>&1 | sed 's/^/    | /'
    check "rpm -e removed the package" not sd_run rpm -q --quiet ksm-balloon
    local u
    for u in ksm-balloon.timer ksm-balloon.path ksm-balloon.service; do
        check "$u stopped by rpm -e" not active_is "$u" active
    done
    check "the hook is gone" not sd_run test -e "$HOOK"
}

print_journal() {
    printf '\n=== the journal: ksm-balloon, its units and its hook, every line\n'
    # Different fields are ANDed by journalctl; "+" makes them alternatives.
    sd_run journalctl --no-pager -o short-precise _SYSTEMD_UNIT=ksm-balloon.service + \
        UNIT=ksm-balloon.service + UNIT=ksm-balloon.path + UNIT=ksm-balloon.timer + \
        SYSLOG_IDENTIFIER=ksm-balloon-hook
}

# --- the .deb ------------------------------------------------------------------------

DEFAULTS=/etc/default/ksm-balloon
DEB_VERSION=
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
deb_version() { sd_run dpkg-query -W -f '${Version}' ksm-balloon 2>/dev/null; }
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
deb_status() { sd_run dpkg-query -W -f '${db:Status-Abbrev}' ksm-balloon 2>/dev/null | tr -d ' '; }
# apt_do ARGS...: apt as an operator types it, inside the container (no
# network: the dependencies are installed already, apt reads only the .deb).
apt_do() {
    sd_run env DEBIAN_FRONTEND=noninteractive apt "$@" 2>&1 |
        grep -v -e '^WARNING: apt does not have a stable CLI' -e '^$' | sed 's/^/    | /'
    return "${PIPESTATUS[0]}"
}
units_up() {
    local u
    for u in ksm-balloon.timer ksm-balloon.path; do
        check "$u enabled" sd_run systemctl -q is-enabled "$u"
        check "$u active" sd_run systemctl -q is-active "$u"
    done
}

# Scenario 10: a previous build installed by apt; its settings edited.
deb_install_previous() {
    local dir
    DEB_VERSION=$(dpkg-deb -f "$SD_DEB" Version)
    # The RPM's leftovers (rpm -e keeps the state): the .deb starts clean.
    sd_run rm -rf /var/lib/ksm-balloon /etc/sysconfig/ksm-balloon /etc/sysconfig/ksm-balloon.rpmsave
    dir=$WORK/deb-prev
    rm -rf "$dir"
    mkdir -p "$dir"
    dpkg-deb -R "$SD_DEB" "$dir/tree"
    sed -i "s/^Version: .*/Version: $DEB_VERSION~prev/" "$dir/tree/DEBIAN/control"
    dpkg-deb -b "$dir/tree" "$SD_MERGED/var/tmp/ksm-balloon_${DEB_VERSION}~prev_amd64.deb" >/dev/null ||
        { check "the previous build repacked" false; return; }
    cp "$SD_DEB" "$SD_MERGED/var/tmp/"
    echo "  apt install ./ksm-balloon_${DEB_VERSION}~prev_amd64.deb (this build repacked, version $DEB_VERSION~prev)"
    apt_do install -y "/var/tmp/ksm-balloon_${DEB_VERSION}~prev_amd64.deb"
    check "apt installed ksm-balloon $DEB_VERSION~prev" [ "$(deb_version)" = "$DEB_VERSION~prev" ]
    units_up
    check "the hook in libvirt's directory is a link to the hook program" \
        [ "$(sd_run readlink -f "$HOOK")" = /usr/libexec/ksm-balloon/ksm-balloon-hook ]
    sd_run systemctl show -P EnvironmentFiles ksm-balloon.service | sed 's/^/    EnvironmentFiles: /'
    check "the service reads $DEFAULTS" \
        sd_run sh -c "systemctl show -P EnvironmentFiles ksm-balloon.service | grep -q '^$DEFAULTS '"
    check "the state directory is 0700" [ "$(sd_run stat -c %a /var/lib/ksm-balloon)" = 700 ]
    # The operator's edit, the kind that must survive every upgrade.
    sd_run sh -c "echo KSM_BALLOON_DEADBAND=8M >>$DEFAULTS"
    sd_run cp "$DEFAULTS" /root/defaults.edited
    libvirtd_restart
    check "libvirtd restarted so it runs the hook" libvirtd_alive
}

# Scenario 11: the upgrade with a pass in flight; then a VM start with a
# pass in flight and the timer.
DEB_GUEST=kbsd-deb
deb_upgrade_and_run() {
    local mark out t0 t1 ms left
    wait_pass_idle
    mark=$(now_us)
    # A pass held in flight for the whole upgrade: the state lock taken for
    # 12 s (a pass waits up to 20 s for it), the pass started, then apt. Had
    # the package stopped or restarted the service, that pass would end
    # "canceled" or killed, not "done".
    sd_run sh -c 'flock /var/lib/ksm-balloon/state.json.lock sleep 12 >/dev/null 2>&1 &'
    sd_run systemctl start --no-block ksm-balloon.service
    kb_wait_until 5 "the pass to be waiting for the lock" active_is ksm-balloon.service activating ||
        { check "a pass in flight before the upgrade" false; return; }
    echo "  a pass in flight (waiting for the state lock); apt install ./$(basename "$SD_DEB")"
    apt_do install -y "/var/tmp/$(basename "$SD_DEB")"
    check "upgraded to $DEB_VERSION" [ "$(deb_version)" = "$DEB_VERSION" ]
    check "the pass still in flight after the upgrade" active_is ksm-balloon.service activating
    check "the edited $DEFAULTS kept as it was" sd_run cmp "$DEFAULTS" /root/defaults.edited
    left=$(sd_run sh -c "ls -d $DEFAULTS.* 2>/dev/null")
    check "no .dpkg-dist or .dpkg-old beside it" [ -z "$left" ]
    units_up
    wait_pass_idle
    journal_json
    judge runs "$mark" <"$WORK/journal.json" | tail -n 1
    check "the pass in flight during the upgrade, and every pass since, succeeded" \
        judge runs "$mark" <"$WORK/journal.json" >/dev/null
    check "a pass ran during the upgrade" passes_at_least 1 "$mark"
    guest_xml "$DEB_GUEST"
    wait_pass_idle
    mark=$(now_us)
    out=$(create_timed "$DEB_GUEST" pass) || { check "virsh create $DEB_GUEST" false; return; }
    read -r t0 t1 ms <<<"$out"
    journal_json
    echo "  $DEB_GUEST: virsh create took $ms ms; $(judge overlap "$mark" "$t0" "$t1" <"$WORK/journal.json")"
    figure ".deb: VM start with a pass in flight: $ms ms"
    check "a pass was in flight during the VM's start" judge overlap "$mark" "$t0" "$t1" <"$WORK/journal.json" >/dev/null
    check "the start returned within $START_LIMIT ms (scenario 2's limit)" [ "$ms" -le "$START_LIMIT" ]
    kb_wait_until 60 "the hook's record folded in" floors_ok "$DEB_GUEST"
    show_floors
    check "the VM recorded with floor 160 MiB and ceiling 256 MiB" floors_ok "$DEB_GUEST"
    wait_pass_idle
    mark=$(now_us)
    # The timer's cadence is scenario 3's (the same unit files, installed by
    # `make install`): here, that the upgraded timer still ticks at 10 s,
    # one interval (two were three: 20 s of CI time).
    kb_wait_until 30 "2 passes started by the timer" passes_at_least 2 "$mark"
    journal_json
    check "the interval between the timer's passes within 9.7-10.3 s" judge intervals "$mark" 1 9.7 10.3 <"$WORK/journal.json"
    figure ".deb timer interval: $(judge intervals "$mark" 1 9.7 10.3 <"$WORK/journal.json" | tail -n 1 | sed 's/^ *//')"
    destroy_all
}

# Scenario 12: apt remove keeps the state and the settings.
deb_remove() {
    local u
    wait_pass_idle
    apt_do remove -y ksm-balloon
    check "dpkg: removed, its configuration files kept (rc)" [ "$(deb_status)" = rc ]
    for u in ksm-balloon.timer ksm-balloon.path ksm-balloon.service; do
        check "$u not active" not active_is "$u" active
        check "$u's unit file gone" not sd_run test -e "/lib/systemd/system/$u"
    done
    check "systemd knows no ksm-balloon.timer any more" \
        [ -z "$(sd_run systemctl list-unit-files --no-legend ksm-balloon.timer)" ]
    check "the hook is gone" not sd_run test -e "$HOOK"
    check "the program is gone" not sd_run test -e /usr/bin/ksm-balloon
    check "the edited settings kept" sd_run cmp "$DEFAULTS" /root/defaults.edited
    check "the state kept" sd_run test -s /var/lib/ksm-balloon/state.json
}

# Scenario 13: apt purge removes the settings and the state.
deb_purge() {
    apt_do purge -y ksm-balloon
    check "dpkg: ksm-balloon purged" [ -z "$(deb_status)" ]
    check "$DEFAULTS gone" not sd_run test -e "$DEFAULTS"
    check "/var/lib/ksm-balloon gone" not sd_run test -e /var/lib/ksm-balloon
    check "no unit left enabled (no wants link)" \
        [ -z "$(sd_run find /etc/systemd/system -name 'ksm-balloon.*')" ]
}

setup "${1:-}" "${2:-}"
scenario "1. the package installed on a real systemd" install_package
scenario "2. a pass in flight never delays a VM start (6 starts)" in_flight
scenario "3. the timer every 10 s; every VM gets its share" timer_and_share
scenario "4. libvirtd restart with VMs running and a pass in flight" restart_libvirtd
scenario "5. the hook's cost per VM start" hook_cost
scenario "6. a host boot storm: 8 guests at once" boot_storm
scenario "7. junk in the spool; passes that fail" spool_junk
scenario "8. disable --now turns every pass off; enable --now brings them back" disable_enable
print_journal
scenario "9. every pass succeeded; rpm -e removes it all" all_passes_and_erase
scenario "10. the .deb: a previous build installed by apt" deb_install_previous
scenario "11. the .deb: upgraded with a pass in flight, settings kept; a VM start; the timer" deb_upgrade_and_run
scenario "12. the .deb: apt remove keeps the state and the settings" deb_remove
scenario "13. the .deb: apt purge removes them" deb_purge

printf '\n=== figures\n'
printf '%s\n' "${FIGURES[@]}"
printf '\n=== systemd suite summary\n'
for s in "${PASSED[@]}"; do echo "ok    $s"; done
for s in "${FAILED[@]}"; do echo "FAIL  $s"; done
printf 'systemd suite: %s s\n' "$(($(date +%s) - started))"
[ "${#FAILED[@]}" -eq 0 ]
