#!/usr/bin/env bash
# Issue 21's real-stack scenarios for the KSM governor (`--ksm
# observe|manage`, src/governor.rs): real `ksm-balloon run --json` passes,
# two real QEMU guests (software-emulated, virtio balloons, 256 MiB
# maximum, booting at 160 MiB) holding the same 32 MiB of data, under a
# real libvirtd, and the host's real KSM knobs in /sys/kernel/mm/ksm.
#
#  1. observe (the default) never writes to /sys/kernel/mm/ksm: the
#     operator has KSM stopped (run 0, pages_to_scan 100); a pass traced by
#     strace opens no file there for writing, and the knobs are as they
#     were; its report says "observe".
#  2. manage turns KSM on and sets the scan rate: the first pass writes
#     run 1 (two managed VMs with headroom); passes every 3 s while the
#     guests' shared data merges: the knobs in sysfs are always what the
#     pass's report says it left, pages_to_scan within [64, 1250], and the
#     governor writes pages_to_scan at least once (the savings grow per
#     page scanned).
#  3. another writer: pages_to_scan echoed by hand; the next pass steps
#     back (report: step-back, naming pages_to_scan, what it wrote and what
#     it found), `status --json` shows it, and the pass after it (traced)
#     opens nothing in /sys/kernel/mm/ksm for writing.
#  4. back to observe restores what the operator had: one observe pass
#     forgets the step back and touches nothing; then the operator's knobs
#     (run 0, pages_to_scan 150), manage takes them over (writes run 1),
#     and the next observe pass restores run 0 and pages_to_scan 150.
#
# Every check reads the passes' JSON reports, the sysfs files and strace's
# record of the open calls, never log text.
#
# Usage (as root): tests/realstack/governor.sh [BIN]
# Takes the real-stack lock; always tears down (guests destroyed, KSM's
# knobs restored as found).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/libvirtd.sh
. "$here/../lib/libvirtd.sh"
# shellcheck source=lib.sh
. "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || kb_die "the governor scenarios must run as root"
command -v strace >/dev/null || kb_die "strace is missing: run tests/deps.sh"
rs_bin "${1:-}"
started=$(date +%s)
rs_setup "$BIN"
GUESTS=(g1 g2)

# knobs: run pages_to_scan sleep_millisecs, as sysfs holds them.
knobs() { echo "$(rs_ksm run) $(rs_ksm pages_to_scan) $(rs_ksm sleep_millisecs)"; }

# traced LABEL ARGS...: rs_pass under strace (every open call, children
# included, into $RS_RUN/LABEL.strace).
traced() {
    local label=$1
    shift
    rs_pass_with "$label" strace -f -qq -e trace=open,openat,openat2,creat,truncate,rename,renameat,renameat2 \
        -o "$RS_RUN/$label.strace" -- "$@"
}

# wrote_ksm LABEL: the traced pass opened, created, truncated or renamed
# something under /sys/kernel/mm/ksm for writing (the calls, printed).
wrote_ksm() {
    python3 - "$RS_RUN/$1.strace" "$KB_KSM_DIR" <<'PY'
import re, sys
trace, ksm = sys.argv[1], sys.argv[2].rstrip("/") + "/"
hits = []
for line in open(trace):
    if ksm not in line:
        continue
    if re.search(r"\b(creat|truncate|rename\w*)\(", line) or re.search(r"O_(WRONLY|RDWR|CREAT|TRUNC|APPEND)", line):
        hits.append(line.strip())
for h in hits:
    print("    " + h)
sys.exit(0 if hits else 1)
PY
}

# gov EXPR: EXPR over the last pass's report's ksm_governor (`g`).
gov() { rs_json "$RS_PASS_JSON" "(lambda g: $1)(r['ksm_governor'])"; }

show() {
    echo "  pass $1: exit $RS_PASS_RC; knobs now (run pages_to_scan sleep_millisecs): $(knobs); governor: $(gov "g['action'] + ': ' + g['reason']" 2>/dev/null)"
}

# --- the guests: two, the same 32 MiB each --------------------------------------
for g in "${GUESTS[@]}"; do rs_boot "$g" 256 160 >/dev/null || kb_die "cannot boot $g"; done
rs_wait_ready 180 "${GUESTS[@]}" || kb_die "the guests did not boot"
for g in "${GUESTS[@]}"; do
    [ "$(rs_cmd "$g" fill 32)" = "filled 32" ] || kb_die "$g: fill failed"
done

# --- 1. observe never writes ----------------------------------------------------------
s1_observe() {
    local ok=0 before
    kb_ksm_set 0 100 20
    before=$(knobs)
    traced obs1
    show obs1
    rs_check "the pass exits 0" test "$RS_PASS_RC" -eq 0 || return 1
    rs_check "its report says observe, nothing written" gov "g['mode'] == 'observe' and g['action'] == 'observe' and g['writes'] == []" || ok=1
    if wrote_ksm obs1; then
        rs_check "it opened nothing in $KB_KSM_DIR for writing" false
        ok=1
    else
        rs_check "it opened nothing in $KB_KSM_DIR for writing ($(grep -c "$KB_KSM_DIR" "$RS_RUN/obs1.strace") opens there, all read-only)" true
    fi
    rs_check "the knobs as the operator left them ($before)" test "$(knobs)" = "$before" || ok=1
    return $ok
}

# --- 2. manage turns KSM on and sets the scan rate ------------------------------------
s2_manage() {
    local ok=0 i rates=() wrote_rate=0
    rs_pass man1 --ksm manage
    show man1
    rs_check "the pass exits 0" test "$RS_PASS_RC" -eq 0 || return 1
    rs_check "it wrote run 0 -> 1 (managed VMs with headroom)" \
        gov "any(w['knob'] == 'run' and w['from'] == 0 and w['to'] == 1 and 'error' not in w for w in g['writes'])" || ok=1
    rs_check "KSM runs" test "$(rs_ksm run)" = 1 || ok=1
    for i in $(seq -w 2 14); do
        sleep 3 # pacing: the timer's period, compressed (the scan rate is judged over a full scan)
        rs_pass "man$i" --ksm manage
        [ "$RS_PASS_RC" -eq 0 ] || { rs_check "pass man$i exits 0" false; return 1; }
        rates+=("$(rs_ksm pages_to_scan)")
        if ! gov "g['action'] in ('write', 'hold') and g['stepped_back'] is None"; then
            show "man$i"
            rs_check "pass man$i manages (no step back: nobody else writes)" false
            return 1
        fi
        # what the report says it left is what sysfs holds
        if ! gov "g['found']['knobs']['pages_to_scan'] if not [w for w in g['writes'] if w['knob'] == 'pages_to_scan'] else [w for w in g['writes'] if w['knob'] == 'pages_to_scan'][0]['to']" |
            grep -qx "$(rs_ksm pages_to_scan)"; then
            show "man$i"
            rs_check "pass man$i: sysfs holds the pages_to_scan its report left" false
            ok=1
        fi
        gov "any(w['knob'] == 'pages_to_scan' for w in g['writes'])" && wrote_rate=$((wrote_rate + 1))
        [ "$wrote_rate" -ge 2 ] && break
    done
    rs_figure "s2 pages_to_scan after each manage pass: 100 ${rates[*]} (ksmd's budget 10 % of a core; savings $(rs_mib "$(rs_json "$RS_PASS_JSON" "r['savings_kib']")") MiB at the end)"
    rs_check "the governor set the scan rate ($wrote_rate write(s) of pages_to_scan)" test "$wrote_rate" -ge 1 || ok=1
    rs_check "pages_to_scan within [64, 1250] after every pass" \
        python3 -c 'import sys; sys.exit(0 if all(64 <= int(x) <= 1250 for x in sys.argv[1:]) else 1)' "${rates[@]}" || ok=1
    return $ok
}

# --- 3. another writer: step back -----------------------------------------------------
s3_step_back() {
    local ok=0 mine theirs
    mine=$(rs_ksm pages_to_scan)
    theirs=$((mine == 200 ? 250 : 200))
    echo "$theirs" >"$KB_KSM_DIR/pages_to_scan"
    echo "  an operator's echo: pages_to_scan $mine -> $theirs"
    rs_pass back1 --ksm manage
    show back1
    rs_check "the pass exits 0" test "$RS_PASS_RC" -eq 0 || return 1
    rs_check "it stepped back, naming pages_to_scan: it left $mine, found $theirs" \
        gov "g['action'] == 'step-back' and g['writes'] == [] and g['stepped_back']['knob'] == 'pages_to_scan' and g['stepped_back']['wrote'] == $mine and g['stepped_back']['found'] == $theirs" || ok=1
    rs_status_json "$RS_RUN/status-back.json" --ksm manage
    rs_check "status --json shows it stepped back" \
        rs_json "$RS_RUN/status-back.json" "r['ksm_governor']['stepped_back'] is not None" || ok=1
    traced back2 --ksm manage
    show back2
    rs_check "the next pass exits 0, still stepped back" eval "[ $RS_PASS_RC -eq 0 ] && gov \"g['action'] == 'stepped-back' and g['writes'] == []\"" || ok=1
    if wrote_ksm back2; then
        rs_check "it opened nothing in $KB_KSM_DIR for writing" false
        ok=1
    else
        rs_check "it opened nothing in $KB_KSM_DIR for writing" true
    fi
    rs_check "pages_to_scan is still the other writer's $theirs" test "$(rs_ksm pages_to_scan)" = "$theirs" || ok=1
    return $ok
}

# --- 4. back to observe restores the operator's knobs ---------------------------------
s4_restore() {
    local ok=0 before
    rs_pass fresh1
    show fresh1
    rs_check "an observe pass after the step back touches nothing" \
        eval "[ $RS_PASS_RC -eq 0 ] && gov \"g['action'] == 'observe' and g['writes'] == []\"" || ok=1
    kb_ksm_set 0 150 20
    before=$(knobs)
    echo "  the operator's knobs: $before"
    rs_pass take1 --ksm manage
    show take1
    rs_check "manage takes them over: writes run 0 -> 1, keeps the operator's knobs to restore" \
        gov "any(w['knob'] == 'run' and w['to'] == 1 for w in g['writes']) and all(g['operator'][k] == v for k, v in {'run': 0, 'pages_to_scan': 150, 'sleep_millisecs': 20}.items())" || ok=1
    rs_pass restore1
    show restore1
    rs_check "the observe pass restores them" gov "g['action'] == 'restore'" || ok=1
    rs_check "sysfs back to the operator's ($before)" test "$(knobs)" = "$before" || ok=1
    return $ok
}

rs_scenario "1 observe never writes to $KB_KSM_DIR" s1_observe
rs_scenario "2 manage turns KSM on and sets the scan rate" s2_manage
rs_scenario "3 another writer: manage steps back" s3_step_back
rs_scenario "4 back to observe restores the operator's knobs" s4_restore
rs_summary "KSM governor" "$started"
