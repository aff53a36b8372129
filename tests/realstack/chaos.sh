#!/usr/bin/env bash
# The chaos soak (issue 18): ksm-balloon's passes on a real libvirtd, real
# QEMU guests (software-emulated, virtio balloons, 256 MiB maximum, booting
# at 144, 160 or 176 MiB) and the host's KSM, while the soak does, at
# random, everything a busy host does to them:
#
#   app       guests grow and free their applications' memory (`own`), fill
#             their memory with data KSM can merge (`fill`, read from the
#             shared disk) and read their disks through their page cache
#             (`read`), 1-3 guests at a time, without waiting for them
#   ksm       KSM merging (run=1) or unmerging everything (run=2): the
#             savings vanish and every loan must come back
#   start     a VM started (`virsh create`, the hook records it)
#   stop      a VM destroyed
#   kill      a pass SIGKILLed at a random point (a random delay within
#             the shortest of the last 3 passes' times; a pass that ended
#             first is counted apart and the kill tried again, up to 3
#             times, sooner)
#   restart   libvirtd restarted (never while a QEMU is stopped)
#   sigstop   one guest's QEMU stopped (SIGSTOP) for 2-4 passes, then
#             continued
#   flood     the spool flooded: 2200 calls of the hook (as libvirtd makes
#             them: prepare, started, stopped, release of 550 short-lived
#             domains), past its cap of 2048 records, then a VM started on
#             the full spool (its records refused: the pass adopts it)
#
# Every fault is injected at least once (the first ticks take each kind
# once, in an order the seed shuffles); the rest are drawn by weight. After
# every pass that was not killed, the invariants are checked from its JSON
# report and the files it left (tests/realstack/chaos_check.py):
#   - the pass exited 0 within its bound (PASS_BOUND: its 30 s for libvirt
#     work and 5 s for the rest);
#   - no balloon below its floor or above its ceiling, no target outside
#     them;
#   - every VM the soak started is managed with the floor it booted with
#     (the hook's record, or the pass's adoption when the hook's record was
#     refused), within 90 s of its start;
#   - no VM held by hand (no operator touched any);
#   - no shrink asks a guest down to more than it was ever given (its
#     floor, or the most any pass asked for it, a killed pass's included);
#   - the state file loads (no state_problem, no `.bad-*` file moved aside);
#   - the spool drained: no record older than the pass left in it, nothing
#     in the quarantine;
#   - no guest console (every guest the soak ever started) shows an OOM
#     kill or a panic.
# At the end: the stopped QEMU continued, KSM unmerged, passes until every
# loan is back; every guest still answers a command.
#
# The soak compresses time: passes every 1-3 s (the timer's 10 s in
# production) with a 20 s holding window (60 s in production), so a few
# minutes hold many loans and recalls. It prints a table: passes (normal,
# killed, a kill that came too late), faults by kind, invariant violations
# by kind (goal 0), the slowest pass; and writes it as JSON to
# $RS_RUN/chaos-summary.json (and --out FILE).
#
# Usage (as root):
#   tests/realstack/chaos.sh [--seconds S | --minutes M] [--guests N] [--seed S] [--out FILE] [BIN]
# Defaults: 150 seconds of faults, 4 guests, a seed from the clock (printed: the same
# seed draws the same faults; what the machine does with them varies). The
# soak goes on past its seconds until every kind of fault was injected and a
# pass was killed mid-run (at most three times its seconds).
# The long form: --minutes 35 --guests 12 (docs/RELIABILITY.md).
# Takes the real-stack lock; always tears down (a stopped QEMU continued
# first, guests destroyed, KSM knobs restored, the hook removed).
# The faults are called by name ("fault_$kind") and finish by the trap:
# shellcheck disable=SC2317
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/libvirtd.sh
. "$here/../lib/libvirtd.sh"
# shellcheck source=lib.sh
. "$here/lib.sh"

SECONDS_=150
MAX_GUESTS=4
SEED=$(($(date +%s) % 32768))
OUT=''
BIN=''
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) SECONDS_=$2; shift 2 ;;
        --minutes) SECONDS_=$(($2 * 60)); shift 2 ;;
        --guests) MAX_GUESTS=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -*) kb_die "unknown option $1 (usage: chaos.sh [--seconds S | --minutes M] [--guests N] [--seed S] [--out FILE] [BIN])" ;;
        *) BIN=$1; shift ;;
    esac
done
[ "$(id -u)" -eq 0 ] || kb_die "the chaos soak must run as root"
[ "$MAX_GUESTS" -ge 2 ] || kb_die "--guests must be at least 2"
rs_bin "$BIN"
RANDOM=$SEED
CEIL_MIB=256
BOOT_SIZES=(144 160 176)
HOLD=20
# A pass's libvirt work is bounded at 30 s (docs/DESIGN.md, "A pass has a
# deadline"); 5 s more for starting, folding the spool and saving.
PASS_BOUND=35
started=$(date +%s)

rs_setup "$BIN"
STOPPED='' STOPPED_PID='' STOPPED_UNTIL=0
finish() {
    local rc=$?
    if [ -n "$STOPPED_PID" ]; then
        kill -CONT "$STOPPED_PID" 2>/dev/null
        kb_log "continued the stopped QEMU (pid $STOPPED_PID)"
    fi
    jobs -p | xargs -r kill 2>/dev/null
    rs_teardown
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- the guests -------------------------------------------------------------------

declare -A BOOT_MIB=()   # guest -> the size it booted at (MiB)
declare -A STARTED_AT=() # guest -> when it was created (epoch)
declare -A CMD_PID=()    # guest -> its outstanding command's pid
RUNNING=()
EVER=()
NEXT=0

# start_guest: a new guest cNN at a random boot size; not waited for.
start_guest() {
    local g boot
    NEXT=$((NEXT + 1))
    g=$(printf 'c%02d' "$NEXT")
    boot=${BOOT_SIZES[$((RANDOM % ${#BOOT_SIZES[@]}))]}
    rs_boot "$g" "$CEIL_MIB" "$boot" >/dev/null || return 1
    BOOT_MIB[$g]=$boot
    STARTED_AT[$g]=$(date +%s)
    RUNNING+=("$g")
    EVER+=("$g")
    echo "    started $g at $boot MiB"
}

# stop_guest GUEST: destroyed (its console kept for the OOM/panic check).
stop_guest() {
    local g=$1 k
    rs_destroy "$g" >/dev/null 2>&1
    for k in "${!RUNNING[@]}"; do
        [ "${RUNNING[$k]}" = "$g" ] && unset 'RUNNING[k]'
    done
    RUNNING=("${RUNNING[@]}")
    unset 'BOOT_MIB[$g]' 'STARTED_AT[$g]'
    echo "    destroyed $g"
}

# pick_guest [EXCEPT]: a random running guest, not EXCEPT.
pick_guest() {
    local c=() g
    for g in "${RUNNING[@]}"; do [ "$g" != "${1:-}" ] && c+=("$g"); done
    [ ${#c[@]} -gt 0 ] || return 1
    echo "${c[$((RANDOM % ${#c[@]}))]}"
}

# guest_cmd GUEST COMMAND...: sent without waiting (one at a time per guest:
# a guest still busy with the last is left alone).
guest_cmd() {
    local g=$1
    shift
    if [ -n "${CMD_PID[$g]:-}" ] && kill -0 "${CMD_PID[$g]}" 2>/dev/null; then
        return 0
    fi
    rs_cmd "$g" "$@" >/dev/null 2>&1 &
    CMD_PID[$g]=$!
    echo "    $g: $*"
}

# guests_json: the running guests the soak started, for the checker.
guests_json() {
    local g sep=''
    printf '{'
    for g in "${RUNNING[@]}"; do
        printf '%s"%s%s": {"boot_kib": %d, "started_at": %d}' "$sep" "$RS_PREFIX" "$g" \
            $((BOOT_MIB[$g] * RS_MIB)) "${STARTED_AT[$g]}"
        sep=', '
    done
    printf '}'
}

# --- passes -----------------------------------------------------------------------

declare -A FAULTS=()
declare -A VIOLATIONS=()
PASSES=0 KILLED=0 KILL_LATE=0 SLOWEST=0 SLOWEST_AT='' FAILED_PASSES=0
RECENT=(1 1 1) # the last 3 normal passes' times
MISJUDGED=0 UNSETTLED=0 ADOPTED=0 LENT_MAX=0
NPASS=0

boottime_ns() { python3 -c 'import time; print(time.clock_gettime_ns(time.CLOCK_BOOTTIME))'; }

# run_pass [KILL_AFTER]: one pass as the timer runs it; with KILL_AFTER
# (seconds), SIGKILLed then unless it ended first. Sets PASS_RC, PASS_SECS,
# PASS_JSON, PASS_BT0 (CLOCK_BOOTTIME when it started, ns).
run_pass() {
    local kill_after=${1:-} t0 t1 label
    NPASS=$((NPASS + 1))
    label=$(printf '%05d' "$NPASS")
    PASS_BT0=$(boottime_ns)
    t0=$(date +%s%N)
    if [ -n "$kill_after" ]; then
        rs_pass_with "$label" timeout -s KILL "$kill_after" -- --hold-window "$HOLD"
    else
        rs_pass_with "$label" timeout 150 -- --hold-window "$HOLD"
    fi
    PASS_JSON=$RS_PASS_JSON PASS_RC=$RS_PASS_RC
    t1=$(date +%s%N)
    PASS_SECS=$(python3 -c "print(f'{($t1 - $t0) / 1e9:.2f}')")
}

# check_pass: the invariants after a pass that was not killed.
check_pass() {
    local out rc=0 kind g problem
    PASSES=$((PASSES + 1))
    python3 -c "import sys; sys.exit(not $PASS_SECS > $SLOWEST)" && { SLOWEST=$PASS_SECS; SLOWEST_AT=$(basename "$PASS_JSON"); }
    [ "$PASS_RC" -eq 0 ] && RECENT=("${RECENT[@]:1}" "$PASS_SECS")
    guests_json >"$RS_RUN/chaos-guests.json"
    out=$(python3 "$here/chaos_check.py" --report "$PASS_JSON" --rc "$PASS_RC" --secs "$PASS_SECS" \
        --bound "$PASS_BOUND" --guests "$RS_RUN/chaos-guests.json" --stopped "${STOPPED:+$RS_PREFIX$STOPPED}" \
        --state "$RS_STATE" --pass-boottime "$PASS_BT0" --ceiling $((CEIL_MIB * RS_MIB)) \
        --now "$(date +%s)" --prefix "$RS_PREFIX" --lent "$RS_RUN/chaos-lent.json") || rc=1
    while read -r kind rest; do
        case $kind in
            VIOLATION)
                g=${rest%%:*}
                VIOLATIONS[$g]=$((${VIOLATIONS[$g]:-0} + 1))
                echo "  VIOLATION $rest ($(basename "$PASS_JSON"))"
                ;;
            MISJUDGED) MISJUDGED=$((MISJUDGED + rest)) ;;
            UNSETTLED) UNSETTLED=$((UNSETTLED + rest)) ;;
            ADOPTED) ADOPTED=$((ADOPTED + rest)) ;;
            LENT) [ "$rest" -gt "$LENT_MAX" ] && LENT_MAX=$rest ;;
            SUMMARY) echo "  pass $(basename "$PASS_JSON" .json): exit $PASS_RC in ${PASS_SECS}s; $rest" ;;
        esac
    done <<<"$out"
    if [ "$PASS_RC" -ne 0 ]; then
        FAILED_PASSES=$((FAILED_PASSES + 1))
        sed 's/^/    | /' "${PASS_JSON%.json}.out" | tail -n 20
    fi
    # every guest the soak ever started: no OOM kill, no panic
    for g in "${EVER[@]}"; do
        if problem=$(rs_console_problem "$g"); then
            if [ -z "${CONSOLE_BAD[$g]:-}" ]; then
                CONSOLE_BAD[$g]=1
                VIOLATIONS[console]=$((${VIOLATIONS[console]:-0} + 1))
                echo "  VIOLATION console: $g: $(head -n3 <<<"$problem" | tr -d '\r' | paste -sd'|')"
                rc=1
            fi
        fi
    done
    return $rc
}
declare -A CONSOLE_BAD=()

# --- the faults -------------------------------------------------------------------

KINDS=(app ksm start stop kill restart sigstop flood)
# weights, in KINDS' order (percent)
WEIGHTS=(42 10 9 9 16 4 6 4)

draw_kind() {
    local r=$((RANDOM % 100)) i acc=0
    for i in "${!KINDS[@]}"; do
        acc=$((acc + WEIGHTS[i]))
        [ "$r" -lt "$acc" ] && { echo "${KINDS[$i]}"; return; }
    done
    echo app
}

fault_app() {
    local n=$((1 + RANDOM % 3)) i g what
    for ((i = 0; i < n; i++)); do
        g=$(pick_guest "$STOPPED") || return 0
        case $((RANDOM % 3)) in
            0) what="own $((RANDOM % 25))" ;;
            1) what="fill $((8 * (RANDOM % 4)))" ;;
            2) what="read $((16 * (1 + RANDOM % 4)))" ;;
        esac
        # shellcheck disable=SC2086 # the command and its argument
        guest_cmd "$g" $what
    done
}

fault_ksm() {
    if [ "$(rs_ksm run)" = 1 ]; then
        kb_ksm_set 2
        echo "    KSM unmerged everything"
    else
        kb_ksm_set 1 1000 20
        echo "    KSM merging"
    fi
}

fault_start() {
    if [ ${#RUNNING[@]} -ge "$MAX_GUESTS" ]; then
        stop_guest "$(pick_guest "$STOPPED")"
    fi
    start_guest
}

fault_stop() {
    local g
    if [ ${#RUNNING[@]} -le $((MAX_GUESTS / 2)) ]; then
        start_guest
        return
    fi
    g=$(pick_guest "$STOPPED") && stop_guest "$g"
}

# fault_kill: the pass SIGKILLed after a random delay within the shortest
# of the last 3 normal passes' times; a pass that ends first is checked
# like any, and the kill tried again sooner (3 tries).
fault_kill() {
    local ms after _
    ms=$(python3 -c "print(max(20, int(min(${RECENT[*]/%/,}) * 900)))")
    for _ in 1 2 3; do
        after=$(python3 -c "print(f'{($RANDOM % $ms + 3) / 1000:.3f}')")
        run_pass "$after"
        if [ "$PASS_RC" -eq 137 ]; then
            KILLED=$((KILLED + 1))
            # what it asked before it died is in the state (recorded first)
            python3 "$here/chaos_check.py" --update-only --report - --rc 0 --secs 0 --bound 0 \
                --guests - --state "$RS_STATE" --pass-boottime 0 --ceiling 0 --now 0 \
                --prefix "$RS_PREFIX" --lent "$RS_RUN/chaos-lent.json"
            echo "    pass $(basename "$PASS_JSON" .json) SIGKILLed after ${after}s"
            return
        fi
        KILL_LATE=$((KILL_LATE + 1))
        echo "    pass $(basename "$PASS_JSON" .json) ended (exit $PASS_RC) before its kill at ${after}s"
        check_pass
        ms=$((ms / 2 > 10 ? ms / 2 : 10))
    done
}

fault_restart() {
    if [ -n "$STOPPED" ]; then
        fault_app
        return
    fi
    kb_libvirtd_restart
    echo "    libvirtd restarted"
}

fault_sigstop() {
    local g
    if [ -n "$STOPPED" ]; then
        fault_app
        return
    fi
    g=$(pick_guest) || return 0
    STOPPED_PID=$(cat "/run/libvirt/qemu/$RS_PREFIX$g.pid") || return 0
    kill -STOP "$STOPPED_PID"
    STOPPED=$g
    STOPPED_UNTIL=$((NPASS + 2 + RANDOM % 3))
    echo "    $g's QEMU stopped (pid $STOPPED_PID) until pass $STOPPED_UNTIL"
}

cont_stopped() {
    [ -n "$STOPPED" ] || return 0
    kill -CONT "$STOPPED_PID" 2>/dev/null
    echo "    $STOPPED's QEMU continued"
    STOPPED='' STOPPED_PID=''
}

# fault_flood: 2200 hook calls for 550 short-lived domains, as libvirtd
# makes them (the domain XML on stdin), then a VM started on the full
# spool.
FLOOD_N=0
fault_flood() {
    local i op uuid spool held
    spool=$(dirname "$RS_STATE")/spool
    FLOOD_N=$((FLOOD_N + 1))
    for ((i = 1; i <= 550; i++)); do
        uuid=$(printf '00000000-0000-4000-8000-%04d%08d' "$FLOOD_N" "$i")
        for op in "prepare begin" "started begin" "stopped end" "release end"; do
            # shellcheck disable=SC2086 # operation and sub-operation
            printf "<domain type='qemu'><name>kbflood-%d-%d</name><uuid>%s</uuid><memory unit='KiB'>262144</memory><currentMemory unit='KiB'>163840</currentMemory><devices><memballoon model='virtio'/></devices></domain>\n" \
                "$FLOOD_N" "$i" "$uuid" | "$KB_HOOK_PATH" "kbflood-$FLOOD_N-$i" $op - >/dev/null 2>&1
        done
    done
    held=$(find "$spool" -mindepth 1 -maxdepth 1 -name '*.json' | wc -l)
    FLOOD_HELD=$held
    echo "    spool flooded: 2200 hook calls, $held records held (cap 2048)"
    [ ${#RUNNING[@]} -lt "$MAX_GUESTS" ] || stop_guest "$(pick_guest "$STOPPED")"
    start_guest
}
FLOOD_HELD=0

# --- the soak ---------------------------------------------------------------------

echo "=== chaos soak: $SECONDS_ s of faults, up to $MAX_GUESTS guests, seed $SEED"
for ((i = 0; i < MAX_GUESTS; i++)); do start_guest || kb_die "cannot boot a guest"; done
rs_wait_ready 300 "${RUNNING[@]}" || kb_die "the guests did not boot"
for g in "${RUNNING[@]}"; do rs_cmd "$g" fill 40 >/dev/null; done
kb_ksm_set 1 1000 20
soak_start=$(date +%s)
soak_end=$((soak_start + SECONDS_))
# the first ticks inject each kind once, in an order the seed shuffles
mapfile -t FIRST < <(printf '%s\n' "${KINDS[@]}" | awk -v s="$SEED" 'BEGIN { srand(s) } { print rand() "\t" $0 }' | sort | cut -f2)
# The soak lasts its seconds and at least until every kind was injected and
# a pass was killed mid-run: on a loaded machine a tick takes longer, and CI
# (main fa78883, one busy core) fit 6 ticks in 120 s, so ksm and stop were
# never drawn. Past three times its seconds it stops anyway, and the check
# below says what is missing.
soak_cap=$((soak_start + 3 * SECONDS_))
soak_more() {
    local now
    now=$(date +%s)
    [ "$now" -lt "$soak_end" ] && return 0
    [ "$now" -lt "$soak_cap" ] && { [ "$tick" -lt ${#FIRST[@]} ] || [ "$KILLED" -eq 0 ]; }
}
tick=0
while soak_more; do
    tick=$((tick + 1))
    if [ -n "$STOPPED" ] && [ "$NPASS" -ge "$STOPPED_UNTIL" ]; then cont_stopped; fi
    if [ "$tick" -le ${#FIRST[@]} ]; then kind=${FIRST[$((tick - 1))]}; else kind=$(draw_kind); fi
    FAULTS[$kind]=$((${FAULTS[$kind]:-0} + 1))
    echo "[$(date -u +%H:%M:%S)] tick $tick: $kind"
    "fault_$kind"
    run_pass
    check_pass
    # pacing: the timer's period, compressed
    sleep "$((1 + RANDOM % 3))"
done
soak_secs=$(($(date +%s) - soak_start))

# --- the end: every loan back, every guest alive -------------------------------

echo "=== the end: QEMU continued, KSM unmerged, passes until every loan is back"
cont_stopped
kb_ksm_set 2
end_ok=0
for ((i = 1; i <= 40; i++)); do
    run_pass
    check_pass
    if [ "$PASS_RC" -eq 0 ] && python3 - "$PASS_JSON" "$RS_PREFIX" <<'PY'; then
import json, sys
r = json.load(open(sys.argv[1]))
ours = [v for v in r["vms"] if v["name"].startswith(sys.argv[2])]
sys.exit(0 if ours and all(v["managed"] and v["target_kib"] == v["floor_kib"]
                           and abs(v["current_kib"] - v["floor_kib"]) <= 1024 for v in ours) else 1)
PY
        end_ok=1
        break
    fi
    sleep 2
done
alive=0
for g in "${RUNNING[@]}"; do
    if rs_alive "$g"; then alive=$((alive + 1)); else VIOLATIONS[dead]=$((${VIOLATIONS[dead]:-0} + 1)); fi
done
[ "$end_ok" -eq 1 ] || VIOLATIONS[end]=1

# --- the table --------------------------------------------------------------------

total_v=0
for k in "${!VIOLATIONS[@]}"; do total_v=$((total_v + VIOLATIONS[$k])); done
missing=()
for k in "${KINDS[@]}"; do [ "${FAULTS[$k]:-0}" -gt 0 ] || missing+=("$k"); done
faults_json=$(for k in "${KINDS[@]}"; do printf '"%s": %d\n' "$k" "${FAULTS[$k]:-0}"; done | paste -sd, -)
viol_json=$(for k in "${!VIOLATIONS[@]}"; do printf '"%s": %d\n' "$k" "${VIOLATIONS[$k]}"; done | paste -sd, -)
summary=$(
    cat <<JSON
{"seed": $SEED, "seconds": $SECONDS_, "soak_secs": $soak_secs, "max_guests": $MAX_GUESTS,
 "guests_started": ${#EVER[@]}, "passes_checked": $PASSES, "passes_killed": $KILLED,
 "kills_too_late": $KILL_LATE, "passes_failed": $FAILED_PASSES,
 "faults": {$faults_json}, "violations": {$viol_json}, "violations_total": $total_v,
 "slowest_pass_secs": $SLOWEST, "slowest_pass": "$SLOWEST_AT", "flood_records_held": $FLOOD_HELD,
 "healthy_guest_named_unresponsive": $MISJUDGED, "unsettled_sightings": $UNSETTLED,
 "adoptions": $ADOPTED, "most_lent_kib": $LENT_MAX,
 "end_every_loan_back": $([ "$end_ok" -eq 1 ] && echo true || echo false),
 "guests_alive_at_end": $alive, "guests_running_at_end": ${#RUNNING[@]}}
JSON
)
echo "$summary" | python3 -m json.tool >"$RS_RUN/chaos-summary.json"
[ -z "$OUT" ] || cp "$RS_RUN/chaos-summary.json" "$OUT"
printf '\n=== chaos soak summary (seed %s)\n' "$SEED"
python3 - "$RS_RUN/chaos-summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"| soak | {s['soak_secs']} s, up to {s['max_guests']} guests ({s['guests_started']} started in all) |")
print(f"| passes checked | {s['passes_checked']} ({s['passes_failed']} failed) |")
print(f"| passes SIGKILLed | {s['passes_killed']} (and {s['kills_too_late']} that ended before their kill) |")
for k, n in s["faults"].items():
    print(f"| fault: {k} | {n} |")
print(f"| invariant violations | {s['violations_total']} {s['violations'] or ''} |")
print(f"| slowest pass | {s['slowest_pass_secs']} s ({s['slowest_pass']}) |")
print(f"| spool records held after a flood | {s['flood_records_held']} |")
print(f"| healthy guest named unresponsive | {s['healthy_guest_named_unresponsive']} |")
print(f"| VMs adopted by a pass | {s['adoptions']} |")
print(f"| most lent to one guest | {s['most_lent_kib'] // 1024} MiB |")
print(f"| end: every loan back | {s['end_every_loan_back']}; guests alive {s['guests_alive_at_end']} of {s['guests_running_at_end']} |")
PY
rc=0
[ "$KILLED" -gt 0 ] || missing+=("kill (no pass was killed before it ended)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "FAIL: the soak did not inject every kind of fault: ${missing[*]} (too short a run)"
    rc=1
fi
[ "$total_v" -eq 0 ] || { echo "FAIL: $total_v invariant violation(s)"; rc=1; }
[ "$FAILED_PASSES" -eq 0 ] || { echo "FAIL: $FAILED_PASSES pass(es) failed"; rc=1; }
[ "$rc" -eq 0 ] && echo "ok: chaos soak, 0 violations"
printf 'wall time %ss (%ss of it waiting for the real-stack lock)\n' \
    "$(($(date +%s) - started))" "$((RS_LOCKED_AT - started))"
exit "$rc"
