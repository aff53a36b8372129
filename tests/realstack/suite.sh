#!/usr/bin/env bash
# The real-stack suite: ksm-balloon against a real libvirtd, real QEMU guests
# (software-emulated) with virtio balloons, and the host's real KSM.
#
# Usage (as root): tests/realstack/suite.sh [path/to/ksm-balloon]
#
# Scenarios 1-8 are issue 3's, scenario 9 is issue 6's "savings collapse".
# They share booted guests (booting is the slow part) and run in order.
# Every size is checked on what libvirt reports (virsh dommemstat's
# `actual`, its QEMU monitor log) and on what the guest itself prints (its
# MemTotal on its serial console), against targets this script works out
# from the KSM counters it reads itself. ksm-balloon's own output is checked
# only where a scenario is about it: exit codes and messages (8), the skip
# reasons it reports (6), its resize count next to libvirt's (7).
#
# Guests: g1, g2 (ceiling 256 MiB, floor 160 MiB) and g3 (ceiling 192 MiB,
# floor 160 MiB: its smaller headroom caps it in scenario 3); later g4 (no
# balloon device) and g5 (floor = ceiling = 160 MiB).
#
# It fails (never skips) when a part of the stack is missing. A failing
# scenario prints the guest consoles, the libvirtd log tail, the state file
# and ksm-balloon's status. Teardown always runs: guests destroyed, KSM's
# run/pages_to_scan/sleep_millisecs restored, the hook removed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/lib/libvirtd.sh
. "$here/../lib/libvirtd.sh"
# shellcheck source=tests/realstack/lib.sh
. "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || kb_die "the real-stack suite must run as root"
BIN=${1:-$RS_REPO/target/debug/ksm-balloon}

FLOOR=$((160 * RS_MIB))
CEIL=$((256 * RS_MIB))
CEIL3=$((192 * RS_MIB))
TOL=$RS_MIB # rounding to balloon pages and integer division
DEADBAND=$((4 * RS_MIB)) # ksm-balloon's default: a VM this close to its target is left
FIGURES=()
FAILED=()
PASSED=()

figure() {
    FIGURES+=("$*")
    echo "  figure: $*"
}
mib() { python3 -c "print(f'{$1/1024:.1f}')"; }

# check DESCRIPTION COMMAND...: prints ok/FAIL; returns the command's status.
check() {
    local what=$1
    shift
    if "$@"; then
        echo "  ok: $what"
    else
        echo "  FAIL: $what"
        return 1
    fi
}

# pass_run LABEL [ARGS...]: one `ksm-balloon run` as the timer would run it;
# sets PASS_RC, S_BEFORE and S_AFTER (savings read right before and after)
# and PRE_ACTUAL[guest] (each guest's balloon right before).
declare -A PRE_ACTUAL=()
pass_run() {
    local label=$1 d
    shift
    PRE_ACTUAL=()
    for d in $(kg_domains "$RS_PREFIX"); do
        PRE_ACTUAL[${d#"$RS_PREFIX"}]=$(rs_actual "${d#"$RS_PREFIX"}") || true
    done
    S_BEFORE=$(rs_savings_kib)
    rs_kb "$@" run >"$RS_RUN/pass-$label.out" 2>&1
    PASS_RC=$?
    S_AFTER=$(rs_savings_kib)
    echo "  ksm-balloon run ($label): exit $PASS_RC; savings read by the test $(mib "$S_BEFORE") MiB before, $(mib "$S_AFTER") MiB after; its log:"
    sed 's/^/    | /' "$RS_RUN/pass-$label.out"
}

# expect_bonuses GUEST=HEADROOM ...: after a pass, each guest's balloon must
# reach floor + its water-filled share of the savings, for savings anywhere
# between S_BEFORE and S_AFTER (the drift while the pass ran), and the guest
# must see the same change in its own MemTotal. A guest whose balloon was
# already within the deadband of that before the pass may also stay where
# it was (the tool holds a VM that close to its target). Sets BONUS_<guest>.
expect_bonuses() {
    local lo hi g names=() caps=() i=0 blo bhi
    lo=$((S_BEFORE < S_AFTER ? S_BEFORE : S_AFTER))
    hi=$((S_BEFORE < S_AFTER ? S_AFTER : S_BEFORE))
    for g in "$@"; do
        names+=("${g%%=*}")
        caps+=("${g#*=}")
    done
    read -r -a blo <<<"$(rs_expected_bonuses "$lo" "${caps[@]}")"
    read -r -a bhi <<<"$(rs_expected_bonuses "$hi" "${caps[@]}")"
    local ok=0
    for i in "${!names[@]}"; do
        g=${names[$i]}
        local want_lo=$((FLOOR + blo[i] - TOL)) want_hi=$((FLOOR + bhi[i] + TOL))
        [ "${blo[$i]}" -eq "${caps[$i]}" ] && want_hi=$((FLOOR + caps[i])) && want_lo=$want_hi
        local pre=${PRE_ACTUAL[$g]:-} held=''
        if [ -n "$pre" ] && [ "$pre" -ge $((want_lo - DEADBAND)) ] && [ "$pre" -le $((want_hi + DEADBAND)) ]; then
            held=$pre
        fi
        if ! kb_wait_until 30 "$g balloon to reach [$want_lo, $want_hi] KiB${held:+ or stay at $held}" \
            balloon_as_expected "$g" "$want_lo" "$want_hi" "$held"; then
            echo "  FAIL: $g: dommemstat actual $(rs_actual "$g") KiB, expected $want_lo..$want_hi KiB (floor + $(mib "${blo[$i]}")..$(mib "${bhi[$i]}") MiB)${held:+ or $held KiB (where it was, within the deadband)}"
            ok=1
            continue
        fi
        local actual
        actual=$(rs_actual "$g")
        printf -v "BONUS_$g" '%s' $((actual - FLOOR))
        local note=''
        if [ "$actual" = "$held" ] && ! rs_actual_within "$g" "$want_lo" "$want_hi"; then
            note=" (left where it was: within the deadband of that)"
        fi
        echo "  ok: $g: dommemstat actual $actual KiB ($(mib "$actual") MiB) = floor + $(mib $((actual - FLOOR))) MiB; expected floor + $(mib "${blo[$i]}")..$(mib "${bhi[$i]}") MiB of $(mib "$lo")..$(mib "$hi") MiB savings$note"
        expect_memtotal "$g" "$actual" || ok=1
    done
    return $ok
}

# balloon_as_expected GUEST LO HI [HELD]: the balloon is in [LO, HI], or at
# HELD when given.
balloon_as_expected() {
    rs_actual_within "$1" "$2" "$3" || { [ -n "${4:-}" ] && rs_actual_is "$1" "$4"; }
}

# expect_memtotal GUEST ACTUAL_KIB: the guest's own MemTotal moved from its
# floor value by what the balloon moved.
memtotal_matches() {
    local m
    m=$(rs_memtotal "$1") || return 1
    local want=$(($2 - FLOOR + ${MT_FLOOR[$1]}))
    [ $((m > want ? m - want : want - m)) -le 512 ]
}
expect_memtotal() {
    local g=$1 actual=$2
    if kb_wait_until 20 "$g to print a MemTotal matching its balloon" memtotal_matches "$g" "$actual"; then
        echo "  ok: $g: guest MemTotal $(rs_memtotal "$g") kB (at floor it was ${MT_FLOOR[$g]} kB; +$(($(rs_memtotal "$g") - MT_FLOOR[$g])) kB for a balloon +$((actual - FLOOR)) KiB)"
    else
        echo "  FAIL: $g: guest MemTotal $(rs_memtotal "$g") kB, expected ${MT_FLOOR[$g]} + $((actual - FLOOR)) kB"
        return 1
    fi
}

# state_holds GUEST...: the state file names exactly these guests.
state_holds() {
    local want
    want=$(printf "$RS_PREFIX%s\n" "$@" | sort)
    [ "$(rs_state_names 2>/dev/null)" = "$want" ]
}

now_at_least() { [ "$(date +%s)" -ge "$1" ]; }

scenario() {
    local name=$1
    shift
    printf '\n=== scenario %s (%s)\n' "$name" "$(date -u +%H:%M:%S)"
    local t0
    t0=$(date +%s)
    if "$@"; then
        PASSED+=("$name ($(($(date +%s) - t0))s)")
        echo "--- ok: scenario $name ($(($(date +%s) - t0))s)"
    else
        FAILED+=("$name")
        echo "--- FAIL: scenario $name"
        rs_diagnostics
    fi
}

# --- scenarios -------------------------------------------------------------------

declare -A MT_FLOOR=()

s1_boot_and_hook() {
    local g ok=0
    for g in g1 g2; do rs_boot "$g" 256 160; done
    rs_boot g3 192 160
    rs_wait_ready 90 g1 g2 g3 || return 1
    check "the hook recorded exactly the three guests" state_holds g1 g2 g3 || ok=1
    for g in g1 g2 g3; do
        local ceil=$CEIL
        [ "$g" = g3 ] && ceil=$CEIL3
        check "$g recorded by the hook (not adopted)" test "$(rs_state_vm "${RS_PREFIX}$g" source)" = hook || ok=1
        check "$g floor is its <currentMemory> at prepare, $FLOOR KiB (not the $ceil KiB libvirt shows at started)" \
            test "$(rs_state_vm "${RS_PREFIX}$g" floor_kib)" = "$FLOOR" || ok=1
        check "$g ceiling is its <memory>, $ceil KiB" test "$(rs_state_vm "${RS_PREFIX}$g" ceiling_kib)" = "$ceil" || ok=1
        check "$g has a balloon" test "$(rs_state_vm "${RS_PREFIX}$g" balloon)" = True || ok=1
        check "$g balloon at its floor: dommemstat actual $FLOOR" kb_wait_until 30 "$g at floor" rs_actual_is "$g" "$FLOOR" || ok=1
        # The guest's MemTotal at the floor: the reference for every later check.
        local line
        line=$(rs_console_lines "$g")
        kb_wait_until 10 "$g to print MEMTOTAL" rs_memtotal_after "$g" "$line" || ok=1
        MT_FLOOR[$g]=$(rs_memtotal_after "$g" "$line")
        figure "s1 $g floor $((FLOOR / 1024)) MiB: guest MemTotal ${MT_FLOOR[$g]} kB"
    done
    return $ok
}

s2_ksm_starts() {
    kb_ksm_set 1 1000 20
    rs_wait_savings_settle 120 $((30 * RS_MIB)) || return 1
    local mark
    mark=$(kb_monitor_log_mark)
    pass_run s2
    check "the pass exits 0" test "$PASS_RC" -eq 0 || return 1
    expect_bonuses g1=$((CEIL - FLOOR)) g2=$((CEIL - FLOOR)) g3=$((CEIL3 - FLOOR)) || return 1
    # Scenarios 6 and 7 count resizes in libvirt's monitor log: it must see these.
    check "libvirt's monitor log shows the pass's three balloon commands" \
        test "$(kb_monitor_balloon_calls "$mark")" -eq 3 || return 1
    # shellcheck disable=SC2154 # BONUS_* are set by expect_bonuses (printf -v)
    figure "s2 savings $(mib "$S_BEFORE")..$(mib "$S_AFTER") MiB over 3 VMs -> bonus g1 $(mib "$BONUS_g1"), g2 $(mib "$BONUS_g2"), g3 $(mib "$BONUS_g3") MiB; MemTotal g1 $(rs_memtotal g1) kB"
}

s3_shared_data() {
    local g s0
    s0=$(rs_savings_kib)
    for g in g1 g2 g3; do
        check "$g holds 40 MiB of the shared data" test "$(rs_cmd "$g" fill 40)" = "filled 40" || return 1
    done
    # 3 copies of 40 MiB of identical pages: KSM saves about 80 MiB more.
    rs_wait_savings_settle 120 $((s0 + 60 * RS_MIB)) || return 1
    pass_run s3
    check "the pass exits 0" test "$PASS_RC" -eq 0 || return 1
    expect_bonuses g1=$((CEIL - FLOOR)) g2=$((CEIL - FLOOR)) g3=$((CEIL3 - FLOOR)) || return 1
    check "g3 is capped at its ceiling $CEIL3 KiB" rs_actual_is g3 "$CEIL3" || return 1
    local lo=$((S_BEFORE < S_AFTER ? S_BEFORE : S_AFTER))
    check "what g3 could not take went to g1 and g2: each got more than an equal third ($(mib $((lo / 3))) MiB)" \
        test "$BONUS_g1" -gt $((lo / 3 + TOL)) -a "$BONUS_g2" -gt $((lo / 3 + TOL)) || return 1
    figure "s3 savings $(mib "$s0") -> $(mib "$S_BEFORE") MiB with 40 MiB shared data in each guest -> g1 $(mib $((FLOOR + BONUS_g1))), g2 $(mib $((FLOOR + BONUS_g2))), g3 $(mib "$CEIL3") MiB (ceiling); MemTotal g1 $(rs_memtotal g1) kB, g3 $(rs_memtotal g3) kB"
}

# kb_ksm_set 2 returns once the kernel has unmerged everything.
s4_unmerge() {
    local ok=0 g a0 a1
    a0=$(rs_meminfo_available)
    kb_ksm_set 2
    a1=$(rs_meminfo_available)
    check "KSM unmerged everything: pages_sharing $(rs_ksm pages_sharing), savings $(rs_savings_kib) KiB" \
        test "$(rs_ksm pages_sharing)" -eq 0 -a "$(rs_savings_kib)" -eq 0 || return 1
    pass_run s4
    check "the pass exits 0" test "$PASS_RC" -eq 0 || return 1
    for g in g1 g2 g3; do
        check "$g back at its floor: dommemstat actual $FLOOR" kb_wait_until 30 "$g at floor" rs_actual_is "$g" "$FLOOR" || ok=1
        expect_memtotal "$g" "$FLOOR" || ok=1
    done
    figure "s4 run=2: savings -> 0, host MemAvailable $(mib "$a0") -> $(mib "$a1") MiB on unmerge; every guest back to $((FLOOR / 1024)) MiB, MemTotal g1 $(rs_memtotal g1) kB"
    return $ok
}

s5_destroy_one() {
    local g
    kb_ksm_set 1
    for g in g1 g2 g3; do
        check "$g dropped its shared data" test "$(rs_cmd "$g" drop)" = dropped || return 1
    done
    rs_destroy g3 || { echo "  FAIL: virsh destroy g3"; return 1; }
    # No pass has run since: only the hook can have forgotten it.
    check "the hook forgot g3 (state holds g1 and g2 only)" \
        kb_wait_until 10 "g3 to leave the state" state_holds g1 g2 || return 1
    rs_wait_savings_settle 120 $((20 * RS_MIB)) || return 1
    pass_run s5
    check "the pass exits 0" test "$PASS_RC" -eq 0 || return 1
    expect_bonuses g1=$((CEIL - FLOOR)) g2=$((CEIL - FLOOR)) || return 1
    figure "s5 g3 destroyed; savings $(mib "$S_BEFORE") MiB over 2 VMs -> g1 $(mib $((FLOOR + BONUS_g1))), g2 $(mib $((FLOOR + BONUS_g2))) MiB"
}

s6_unmanageable() {
    local ok=0 a4 a5 mt4
    kb_ksm_set 1
    rs_boot g4 256 160 none
    rs_boot g5 160 160
    rs_wait_ready 90 g4 g5 || return 1
    check "g4 recorded without a balloon" test "$(rs_state_vm "${RS_PREFIX}g4" balloon)" = False || ok=1
    check "g5 recorded with floor = ceiling = $FLOOR" \
        test "$(rs_state_vm "${RS_PREFIX}g5" floor_kib) $(rs_state_vm "${RS_PREFIX}g5" ceiling_kib)" = "$FLOOR $FLOOR" || ok=1
    kb_wait_until 30 "g5 at its size" rs_actual_is g5 "$FLOOR" || ok=1
    a4=$(rs_used g4)
    a5=$(rs_actual g5)
    mt4=$(rs_memtotal g4)
    check "libvirt reports g4's memory ($a4 KiB) and g4 its MemTotal ($mt4 kB)" test -n "$a4" -a -n "$mt4" || return 1
    # Same kernel as the others: with all of its 256 MiB it sees what they
    # saw at the floor plus 96 MiB.
    check "g4 runs with all its memory: MemTotal $mt4 = ${MT_FLOOR[g1]} + 98304 kB" test "$mt4" -eq $((MT_FLOOR[g1] + 98304)) || ok=1
    rs_wait_savings_settle 120 $((20 * RS_MIB)) || return 1
    local mark
    mark=$(kb_monitor_log_mark)
    pass_run s6
    check "the pass exits 0" test "$PASS_RC" -eq 0 || return 1
    expect_bonuses g1=$((CEIL - FLOOR)) g2=$((CEIL - FLOOR)) || ok=1
    check "g4 (no balloon) left alone: libvirt's used memory $(rs_used g4) = $a4" test "$(rs_used g4)" = "$a4" || ok=1
    check "g5 (no headroom) left alone: actual $(rs_actual g5) = $a5" rs_actual_is g5 "$a5" || ok=1
    check "g4's own MemTotal unchanged ($mt4 kB)" test "$(rs_memtotal g4)" = "$mt4" || ok=1
    local calls
    calls=$(kb_monitor_balloon_calls "$mark")
    echo "  libvirt sent $calls balloon commands to QEMU during the pass (g1 and g2 at most)"
    check "no more than two balloon commands (g1, g2)" test "$calls" -le 2 || ok=1
    # Reported, not silently dropped.
    local report
    report=$(rs_kb status --json 2>/dev/null)
    check "status reports g4 as skipped: no-balloon" python3 -c '
import json, sys
vms = {v["name"]: v for v in json.loads(sys.argv[1])["vms"]}
v = vms[sys.argv[2]]
sys.exit(not (v["action"] == "skip" and v["reason"] == sys.argv[3]))' "$report" "${RS_PREFIX}g4" no-balloon || ok=1
    check "status reports g5 as skipped: no-headroom" python3 -c '
import json, sys
vms = {v["name"]: v for v in json.loads(sys.argv[1])["vms"]}
v = vms[sys.argv[2]]
sys.exit(not (v["action"] == "skip" and v["reason"] == sys.argv[3]))' "$report" "${RS_PREFIX}g5" no-headroom || ok=1
    rs_kb status 2>/dev/null | sed 's/^/    | /'
    figure "s6 g4 (no balloon) stays at $(mib "$a4") MiB (MemTotal $mt4 kB), g5 (floor = ceiling) at $(mib "$a5") MiB; savings $(mib "$S_BEFORE") MiB -> g1 $(mib $((FLOOR + BONUS_g1))), g2 $(mib $((FLOOR + BONUS_g2))) MiB"
    return $ok
}

# A pass every 5 s for a minute with steady savings: after the first pass,
# libvirt must send no balloon command at all. The default deadband (4 MiB)
# is used; the savings' drift is printed pass by pass (measured here: about
# 1 MiB a minute in all, well inside it).
s7_timer_loop() {
    local i next mark1 savings=() calls_tool=0 ok=0
    kb_ksm_set 1
    rs_wait_savings_settle 120 $((20 * RS_MIB)) || return 1
    pass_run s7-first
    check "the first pass exits 0" test "$PASS_RC" -eq 0 || return 1
    mark1=$(kb_monitor_log_mark)
    local a1 a2
    a1=$(rs_actual g1)
    a2=$(rs_actual g2)
    next=$(date +%s)
    for i in $(seq 1 12); do
        next=$((next + 5))
        kb_wait_until 10 "the next tick" now_at_least "$next" || return 1
        savings+=("$(rs_savings_kib)")
        KSM_BALLOON_LOG=debug rs_kb run >"$RS_RUN/pass-s7-$i.out" 2>&1 ||
            { echo "  FAIL: pass $i exited non-zero"; sed 's/^/    | /' "$RS_RUN/pass-s7-$i.out"; return 1; }
        local sm
        sm=$(sed -n 's/.*libvirt calls this pass:.*set_memory: \([0-9]*\).*/\1/p' "$RS_RUN/pass-s7-$i.out")
        calls_tool=$((calls_tool + ${sm:-0}))
        echo "  pass $i: savings $(mib "${savings[-1]}") MiB, resize calls (tool's count) ${sm:-?}, g1 $(rs_actual g1) g2 $(rs_actual g2)"
    done
    local calls min max
    calls=$(kb_monitor_balloon_calls "$mark1")
    min=$(printf '%s\n' "${savings[@]}" | sort -n | head -n1)
    max=$(printf '%s\n' "${savings[@]}" | sort -n | tail -n1)
    local steps
    steps=$(python3 -c 'import sys; s=[int(x) for x in sys.argv[1:]]; print(" ".join(f"{(b-a)/1024:+.1f}" for a,b in zip(s,s[1:])))' "${savings[@]}")
    echo "  savings per pass (MiB): $(for s in "${savings[@]}"; do printf '%s ' "$(mib "$s")"; done)"
    echo "  drift pass to pass (MiB): $steps"
    echo "  spread over the minute: $(mib $((max - min))) MiB, i.e. $(mib $(((max - min) / 2))) MiB per VM over 2 VMs"
    figure "s7 12 passes in 60 s after the first: savings $(mib "$min")..$(mib "$max") MiB (spread $(mib $((max - min))) MiB, $(mib $(((max - min) / 2))) MiB per VM); balloon commands libvirt sent: $calls; resize calls the tool counted: $calls_tool; deadband 4 MiB (default)"
    check "libvirt sent no balloon command after the first pass (monitor log)" test "$calls" -eq 0 || ok=1
    check "the tool made no resize call after the first pass" test "$calls_tool" -eq 0 || ok=1
    check "g1 and g2 unchanged" test "$(rs_actual g1) $(rs_actual g2)" = "$a1 $a2" || ok=1
    return $ok
}

# libvirtd is started again whatever happened, for the scenarios after.
s8_libvirtd_down() {
    local rc=0
    s8_inner || rc=1
    kb_libvirtd_start
    return $rc
}
s8_inner() {
    local sum0 g s0 ok=0
    kb_ksm_set 1
    sum0=$(sha256sum <"$RS_STATE")
    kb_libvirtd_stop
    check "libvirtd is down" bash -c '! virsh -c qemu:///system version >/dev/null 2>&1' || return 1
    pass_run s8-down
    check "the pass exits 1" test "$PASS_RC" -eq 1 || ok=1
    check "with a clear message naming libvirt and the URI" grep -q "cannot connect to libvirt at $KB_URI" "$RS_RUN/pass-s8-down.out" || ok=1
    check "the state file is untouched" test "$(sha256sum <"$RS_STATE")" = "$sum0" || ok=1
    # While libvirtd is down the guests run on and their savings jump.
    s0=$(rs_savings_kib)
    for g in g1 g2; do
        check "$g holds 40 MiB of shared data (told through QEMU, libvirtd is down)" test "$(rs_cmd "$g" fill 40)" = "filled 40" || return 1
    done
    rs_wait_savings_settle 120 $((s0 + 30 * RS_MIB)) || return 1
    pass_run s8-down-again
    check "a pass while libvirtd is still down exits 1 too" test "$PASS_RC" -eq 1 || ok=1
    check "the state file is still untouched" test "$(sha256sum <"$RS_STATE")" = "$sum0" || ok=1
    kb_libvirtd_start
    # The hook saw "reconnect" for every guest: floors must be kept.
    check "after libvirtd's restart the state still holds g1 and g2 with their floors" \
        test "$(rs_state_vm "${RS_PREFIX}g1" floor_kib) $(rs_state_vm "${RS_PREFIX}g2" floor_kib)" = "$FLOOR $FLOOR" || ok=1
    pass_run s8-back
    check "the next pass exits 0" test "$PASS_RC" -eq 0 || return 1
    expect_bonuses g1=$((CEIL - FLOOR)) g2=$((CEIL - FLOOR)) || return 1
    figure "s8 libvirtd down: 2 passes exit 1, state unchanged; savings $(mib "$s0") -> $(mib "$S_BEFORE") MiB meanwhile; libvirtd back: g1 $(mib $((FLOOR + BONUS_g1))), g2 $(mib $((FLOOR + BONUS_g2))) MiB"
    return $ok
}

# Issue 6: the savings collapse while the VMs hold their bonuses and the
# host sits just above the reserve.
s9_collapse() {
    local ok=0 m0 m1 m2 reserve g b1 b2
    kb_ksm_set 1
    m0=$(rs_meminfo_available)
    reserve=$((m0 - 32 * RS_MIB))
    echo "  host MemAvailable $m0 KiB; reserve set to $reserve KiB (32 MiB below)"
    # A pass at that reserve: the bonuses are held (or grow by at most 32 MiB).
    pass_run s9-before --reserve "${reserve}K"
    check "the pass before the collapse exits 0" test "$PASS_RC" -eq 0 || return 1
    b1=$(rs_actual g1)
    b2=$(rs_actual g2)
    check "g1 and g2 hold bonuses before the collapse ($b1, $b2 KiB)" test "${b1:-0}" -gt "$FLOOR" -a "${b2:-0}" -gt "$FLOOR" || return 1
    m0=$(rs_meminfo_available)
    kb_ksm_set 2
    m1=$(rs_meminfo_available)
    echo "  KSM unmerged everything: MemAvailable $m0 -> $m1 KiB ($(mib $((m1 - m0))) MiB); under the reserve: $([ "$m1" -lt "$reserve" ] && echo yes || echo no)"
    pass_run s9 --reserve "${reserve}K"
    check "the pass exits 0" test "$PASS_RC" -eq 0 || return 1
    for g in g1 g2; do
        check "$g back at its floor: dommemstat actual $FLOOR" kb_wait_until 30 "$g at floor" rs_actual_is "$g" "$FLOOR" || ok=1
        expect_memtotal "$g" "$FLOOR" || ok=1
    done
    m2=$(rs_meminfo_available)
    figure "s9 collapse: g1 $(mib "$b1") and g2 $(mib "$b2") MiB -> $((FLOOR / 1024)) MiB; host MemAvailable before $(mib "$m0") MiB, after unmerge $(mib "$m1") MiB, after the pass $(mib "$m2") MiB; reserve $(mib "$reserve") MiB"
    return $ok
}

# --- setup, run, teardown ----------------------------------------------------------

suite_start=$(date +%s)
rs_setup "$BIN"
kb_log "setup done in $(($(date +%s) - RS_LOCKED_AT))s after taking the lock ($((RS_LOCKED_AT - suite_start))s waiting for it); $("$RS_BIN" --version)"

scenario "1: three guests start, the hook records floor and ceiling" s1_boot_and_hook
if [ ${#FAILED[@]} -gt 0 ]; then
    # Every later scenario needs these guests: stop here rather than pile up failures.
    rs_teardown
    kb_die "scenario 1 failed: the other scenarios need its guests and were not run"
fi
scenario "2: KSM starts, a pass hands out the savings" s2_ksm_starts
scenario "3: shared data, savings jump, capped at ceilings" s3_shared_data
scenario "4: KSM unmerges, every guest back to its floor" s4_unmerge
scenario "5: one guest destroyed, two share the savings" s5_destroy_one
scenario "6: no balloon and no headroom are left alone" s6_unmanageable
scenario "7: timer loop with steady savings, no resize calls" s7_timer_loop
scenario "8: libvirtd stopped mid-run, then back" s8_libvirtd_down
scenario "9: savings collapse near the reserve" s9_collapse

rs_teardown
printf '\n=== real-stack summary\n'
printf 'ok    %s\n' "${PASSED[@]}"
[ ${#FAILED[@]} -eq 0 ] || printf 'FAIL  %s\n' "${FAILED[@]}"
printf 'figures:\n'
printf '  %s\n' "${FIGURES[@]}"
printf 'wall time %ss (%ss of it waiting for the real-stack lock)\n' "$(($(date +%s) - suite_start))" "$((RS_LOCKED_AT - suite_start))"
[ ${#FAILED[@]} -eq 0 ]
