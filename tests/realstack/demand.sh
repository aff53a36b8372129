#!/usr/bin/env bash
# Issue 13's real-stack scenarios of the demand split (`--split demand`),
# on a real libvirtd, software-emulated QEMU guests and the host's KSM:
#
#  1. three guests, one re-reading a data set larger than what its floor
#     caches, two idle: the busy one gets most of the pool (up to its
#     ceiling), the idle ones little; the equal split would have given it a
#     third;
#  2. the busy one goes idle and another gets busy: the pool follows within
#     3 passes of the new reader's demand being known (issue 20: the old
#     reader, its reads stopped with its memory full, holds a quarter of its
#     last demand, `demand_basis` "held"; no half-life any more), unless the
#     loan rule has a guest keep what it cannot give yet (its `kept_kib`,
#     counted here and printed), and no guest is recalled below what its
#     applications hold (every pass's targets against the guests' own figures; no
#     "Out of memory" or panic on any console);
#  3. a guest with no statistics (`<memballoon>` without `<stats>`, and
#     `--guest-stats-period 0` so the pass does not turn them on) has an
#     unknown demand (`demand_basis` "no-statistics") and weighs as an idle
#     guest (issue 20: never as the average of the known ones, which let
#     unknowns dilute a reader): its part is what the policy's
#     water-filling gives that weight, computed here from the pass's own
#     figures;
#  4. a guest without any disk (booted from its initramfs, as appliances and
#     network-booted VMs are), idle with its memory half free, beside the
#     reader: within 3 passes of its first statistics it has less than a
#     third of the pool (its demand 0, `demand_basis` "free-memory": a guest
#     with free memory needs none, whatever its disks), the reader most of it
#     (issue 20: an unknown demand used to count as the average, and every
#     guest got the equal share).
#
# The guests are the I/O benchmark's (bench/lib.sh, bench/guest/init.sh):
# ceiling 256 MiB, floor 160 MiB, 32 MiB of "application" bytes held in
# tmpfs (the same in every guest: what KSM merges), and a 128 MiB data disk
# of random bytes throttled to 20 MiB/s with cache='none', which a busy
# guest re-reads at random (at its floor it caches about 45 MiB of it);
# each takes "read" and "idle" on a command socket. A pass runs every 10 s,
# as the timer would (`ksm-balloon run --json`); every check reads the
# passes' JSON reports (kept in $KBD_OUT, default /tmp/ksm-balloon-demand).
#
# Usage: tests/realstack/demand.sh [KSM_BALLOON_BINARY] (default
# target/debug/ksm-balloon). Takes the real-stack lock; destroys its guests
# and leaves KSM as found, also on failure (after printing the consoles,
# the last pass and libvirtd's log tail).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "${1:-target/debug/ksm-balloon}")
[ -x "$BIN" ] || { echo "ksm-balloon binary $BIN is missing: build it first" >&2; exit 1; }
OUT=${KBD_OUT:-/tmp/ksm-balloon-demand}
STATE=$OUT/state.json
PASS_PERIOD=10
KBB_RUN=/run/ksm-balloon-demand

# shellcheck source=tests/lib/libvirtd.sh
. tests/lib/libvirtd.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

for tool in virsh qemu-system-x86_64 cpio python3 /usr/sbin/libvirtd /usr/sbin/virtlogd; do
    command -v "$tool" >/dev/null || kb_die "$tool is missing: run tests/deps.sh"
done
started=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT"
kbb_build_guest || kb_die "cannot build the guest image"
for i in 0 1 2 3; do kbb_disk "data-$i" "$KBB_DATA_MIB" >/dev/null; done
kbb_disk app "$KBB_APP_MIB" >/dev/null

kb_realstack_lock
locked_at=$(date +%s)
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$rc" != 0 ]; then
        kbb_diagnostics
        echo "--- the last pass ($LAST)"
        [ -z "${LAST:-}" ] || summary "$LAST" || true
    fi
    kbb_destroy_all
    kb_ksm_restore
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
kb_ksm_save
kb_libvirtd_start
kbb_destroy_all
# no merges left from an earlier run, then KSM as the benchmark runs it
kb_ksm_set 2
kb_wait_until 120 "KSM to unmerge" bash -c "[ \"\$(cat $KB_KSM_DIR/pages_shared)\" = 0 ]" ||
    kb_die "KSM did not unmerge"
kb_ksm_set 1 1000 20

G=("${KBB_PREFIX}0" "${KBB_PREFIX}1" "${KBB_PREFIX}2" "${KBB_PREFIX}3" "${KBB_PREFIX}4")

# --- passes and their reports -------------------------------------------------

N=0 LAST='' NEXT_PASS=0
# pass: one `ksm-balloon run --json` (the demand split, guest statistics
# never turned on by the pass), paced PASS_PERIOD apart as the timer's;
# its report is $OUT/pass-N.json ($LAST), and every invariant is checked on
# it at once.
pass() {
    local now
    now=$(date +%s)
    # pacing, not a wait for a condition: the timer's period between passes
    [ "$now" -ge "$NEXT_PASS" ] || sleep $((NEXT_PASS - now))
    NEXT_PASS=$(($(date +%s) + PASS_PERIOD))
    N=$((N + 1))
    LAST=$OUT/pass-$N.json
    "$BIN" --connect "$KB_URI" --state "$STATE" --split demand --guest-stats-period 0 run --json \
        >"$LAST" 2>>"$OUT/ksm-balloon.log" || kb_die "pass $N failed (exit $?): see $OUT/ksm-balloon.log"
    invariants "$LAST" || kb_die "pass $N broke an invariant (above)"
    consoles_clean || kb_die "a guest ran out of memory"
}

# pydef NAME: reads a Python check from stdin (a here-document) into NAME.
pydef() { IFS= read -r -d '' "$1" || true; }

# py SCRIPT ARGS...: a check in Python over pass reports; SCRIPT sees
# load(path), vm(report, name) and MIB.
PY_PRELUDE='
import functools, json, sys
def load(p):
    with open(p) as f:
        return json.load(f)
def vm(r, name):
    return next((v for v in r["vms"] if v["name"] == name), None)
MIB = 1024
'
py() {
    python3 -c "$PY_PRELUDE
PRELUDE = '''$PY_PRELUDE'''
$1" "${@:2}"
}

# summary PASS: one line per VM of a pass report.
pydef SUMMARY <<'PY'
r = load(sys.argv[1])
print(f"  savings {r['savings_kib'] // MIB} MiB, lendable {r['lendable_kib'] // MIB}, "
      f"budget {r['budget_kib'] // MIB}, resized {r['resized']}")
for v in r['vms']:
    g = v['guest']
    print(f"  {v['name']}: {v['current_kib'] // MIB} -> {v['target_kib'] // MIB} MiB "
          f"({v['action']}, {v['reason']}), demand {v['demand']} ({v.get('demand_basis')}), free {g.get('unused_kib')} KiB, "
          f"usable {g.get('usable_kib')} KiB, kept {v['kept_kib']}, stats fresh {v['guest_stats_fresh']}")
PY
summary() { py "$SUMMARY" "$1"; }

# invariants PASS: every VM within its floor and ceiling; none asked to give
# back more than it can without harm (its MemAvailable less its margin,
# policy::GUEST_MARGIN_*: what its applications hold it keeps); no failed
# resize; the host above its reserve (under it the host wins, and the loan
# rule is not what is tested).
pydef INVARIANTS <<'PY'
r = load(sys.argv[1])
bad = []
if r['failed']:
    bad.append(f"{r['failed']} resize calls failed")
if r['under_reserve']:
    bad.append("the host is under its reserve")
for v in r['vms']:
    if v['action'] == 'skip':
        continue
    if not v['floor_kib'] <= v['target_kib'] <= v['ceiling_kib']:
        bad.append(f"{v['name']}: target {v['target_kib']} outside [{v['floor_kib']}, {v['ceiling_kib']}]")
    g = v['guest']
    if v['guest_stats_fresh']:
        margin = max(16 * MIB, g['available_kib'] // 100 * 5)
        can_give = max(g['usable_kib'] - margin, 0)
        if v['target_kib'] + MIB < v['current_kib'] - can_give:
            bad.append(f"{v['name']}: target {v['target_kib']} KiB takes back more than it can give "
                       f"({v['current_kib']} - {can_give} KiB)")
for b in bad:
    print("INVARIANT: " + b)
sys.exit(1 if bad else 0)
PY
invariants() { py "$INVARIANTS" "$1"; }

consoles_clean() {
    local g c
    for g in "${G[@]}"; do
        c=$(kbb_console "$g")
        [ -e "$c" ] || continue
        if kg_console_has "$c" 'Out of memory|Kernel panic|KB-[A-Z-]*FAILED'; then
            kb_log "$g: $(grep -aE 'Out of memory|Kernel panic|KB-[A-Z-]*FAILED' "$c" | head -n3)"
            return 1
        fi
    done
}

# passes_until SECONDS WHAT CHECK [ARGS...]: passes until the Python CHECK
# holds on the last one (its argv[1], then ARGS); fails after SECONDS.
# Says how many passes it took.
passes_until() {
    local limit=$1 what=$2 check=$3 deadline first=$((N + 1))
    shift 3
    deadline=$(($(date +%s) + limit))
    while :; do
        pass
        if py "$check" "$LAST" "$@" >"$OUT/check.out" 2>&1; then
            kb_log "$what: after $((N - first + 1)) pass(es) (pass $N): $(cat "$OUT/check.out")"
            summary "$LAST" >&2
            return 0
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            kb_log "timed out after ${limit}s: $what; the last check said: $(cat "$OUT/check.out")"
            summary "$LAST" >&2
            kb_die "$what"
        fi
    done
}

# MOST BUSY OTHER...: the busy guest has most of the pool (at its ceiling
# or 60 % of the budget), its balloon there (within 1 MiB of the target,
# or held short of it by the deadband);
# every other guest a known demand below the busy one's and at most half
# its bonus. (A reader whose reads stop with its memory full, its data
# fitting in what it was lent, holds only a quarter of its highest demand:
# so no fixed figure is asked of it here, but more than the others'.)
pydef MOST <<'PY'
r = load(sys.argv[1])
busy = vm(r, sys.argv[2])
others = [vm(r, n) for n in sys.argv[3:]]
def bonus(v):
    return v['target_kib'] - v['floor_kib']
print(f"busy {busy['name']}: demand {busy['demand']}, bonus {bonus(busy)} KiB of {r['budget_kib']}; "
      + ", ".join(f"{v['name']}: demand {v['demand']}, bonus {bonus(v)}" for v in others))
most = busy['target_kib'] == busy['ceiling_kib'] or bonus(busy) >= 0.6 * r['budget_kib']
# its balloon there: within 1 MiB, or held short of it by the deadband (a
# move under it is not made: 254 MiB of a 256 MiB ceiling stays 254)
there = abs(busy['current_kib'] - busy['target_kib']) <= max(MIB, r['policy']['deadband_kib'])
ok = (most and there and busy['demand'] is not None and r['budget_kib'] >= 32 * MIB
      and all(v['demand'] is not None and v['demand'] < busy['demand'] and bonus(v) * 2 <= bonus(busy)
              for v in others))
sys.exit(0 if ok else 1)
PY

# MORE OLD NEW: the newly busy guest weighs more than the old one and is
# given more.
pydef MORE <<'PY'
r = load(sys.argv[1])
old, new = vm(r, sys.argv[2]), vm(r, sys.argv[3])
print(f"old {old['name']}: demand {old['demand']}, target {old['target_kib']}; "
      f"new {new['name']}: demand {new['demand']}, target {new['target_kib']}")
sys.exit(0 if (new['demand'] or 0) > (old['demand'] or 0) and new['target_kib'] > old['target_kib'] else 1)
PY

# FOLLOWED BUSY OTHER...: the busy guest's part of the split is most of
# the pool (at its ceiling or 60 % of the budget), counting what the
# others still keep of it under the loan rule (their `kept_kib`, said in
# their reports): the split has followed, whatever the balloons still have
# to give. Prints what each other guest's demand rests on (the old reader
# should hold: "held") and keeps.
pydef FOLLOWED <<'PY'
r = load(sys.argv[1])
busy = vm(r, sys.argv[2])
others = [vm(r, n) for n in sys.argv[3:]]
bonus = busy['target_kib'] - busy['floor_kib']
kept = sum(v['kept_kib'] for v in others)
print(f"busy {busy['name']}: demand {busy['demand']}, bonus {bonus} KiB of {r['budget_kib']}, "
      f"{kept} KiB kept by the others under the loan rule; "
      + ", ".join(f"{v['name']}: demand {v['demand']} ({v.get('demand_basis')}), kept {v['kept_kib']}"
                  for v in others))
ok = (busy['target_kib'] == busy['ceiling_kib'] or bonus + kept >= 0.6 * r['budget_kib'])
sys.exit(0 if ok and r['budget_kib'] >= 32 * MIB else 1)
PY

# WITHIN DIR FROM TO CHECK BUSY OTHER...: in passes FROM+1..TO, the first
# pass where CHECK (a script as FOLLOWED) holds is at most the third from
# the first where BUSY's demand is known from its reads.
pydef WITHIN <<'PY'
import subprocess
d, lo, hi, check, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
known = next((n for n in range(lo + 1, hi + 1)
              if (vm(load(f"{d}/pass-{n}.json"), names[0]) or {}).get('demand_basis') == 'reads'
              and (vm(load(f"{d}/pass-{n}.json"), names[0])['demand'] or 0) > 0), None)
held = next((n for n in range(lo + 1, hi + 1)
             if subprocess.run([sys.executable, '-c', PRELUDE + check, f"{d}/pass-{n}.json", *names],
                               capture_output=True).returncode == 0), None)
print(f"{names[0]}'s demand known at pass {known}, the split followed at pass {held}")
sys.exit(0 if known is not None and held is not None and held - known + 1 <= 3 else 1)
PY

# EQUAL_VS BUSY (argv: the demand pass, the equal plan, the busy guest).
pydef EQUAL_VS <<'PY'
d, e = vm(load(sys.argv[1]), sys.argv[3]), vm(load(sys.argv[2]), sys.argv[3])
print(f"{sys.argv[3]}: demand split {d['target_kib'] // MIB} MiB, equal split {e['target_kib'] // MIB} MiB")
sys.exit(0 if d['target_kib'] >= e['target_kib'] + 8 * MIB else 1)
PY

# SHRUNK DIR FROM TO NAME: NAME was shrunk in passes FROM+1..TO.
pydef SHRUNK <<'PY'
d, lo, hi, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
passes = [load(f"{d}/pass-{n}.json") for n in range(lo + 1, hi + 1)]
shrinks = [v for r in passes for v in r['vms'] if v['name'] == name and v['action'] == 'shrink']
low = min(v['target_kib'] for v in shrinks) // MIB if shrinks else None
print(f"{name} was shrunk {len(shrinks)} time(s) in {len(passes)} passes, down to {low} MiB, "
      "each time within what it could give")
sys.exit(0 if shrinks else 1)
PY

# UNKNOWN NAME: NAME has no fresh statistics (none turned on, none newer
# than 30 s, no demand, basis "no-statistics"), and every managed VM's part
# is what policy::water_fill gives the pass's budget over their headrooms
# with weights 1000 + demand, an unknown demand weighing as an idle VM's
# (1000); nothing kept anywhere (a loan would move the parts).
pydef UNKNOWN <<'PY'
r = load(sys.argv[1])
x = vm(r, sys.argv[2])
if x is None or not x['managed'] or x['action'] == 'skip':
    print(f"{sys.argv[2]} not managed yet")
    sys.exit(1)
if r['calls']['stats_period']:
    print("the pass turned guest statistics on")
    sys.exit(2)
# (its balloon driver reports once, as it loads: figures that never move)
seen = x['guest'].get('last_update')
if x['guest_stats_fresh'] or x['demand'] is not None or (seen is not None and r['at'] - seen < 30):
    print(f"{x['name']} has fresh statistics or a demand: {x['guest']}, {x['demand']}")
    sys.exit(1)
if x.get('demand_basis') != 'no-statistics':
    print(f"{x['name']}'s demand rests on {x.get('demand_basis')!r}, not 'no-statistics'")
    sys.exit(1)
vms = [v for v in r['vms'] if v['managed'] and v['action'] != 'skip']
known = [v['demand'] for v in vms if v['demand'] is not None]
if not known:
    print("no known demand")
    sys.exit(1)
weights = [max(v['weight'] * (1000 + (v['demand'] or 0)), 1) for v in vms]
caps = [v['ceiling_kib'] - v['floor_kib'] if v['weight'] else 0 for v in vms]
def order(a, b):
    la, lb = caps[a] * weights[b], caps[b] * weights[a]
    return -1 if la < lb else 1 if la > lb else (a > b) - (a < b)
left, wleft, part = r['budget_kib'], sum(weights), [0] * len(vms)
for i in sorted(range(len(vms)), key=functools.cmp_to_key(order)):
    part[i] = min(left * weights[i] // wleft, caps[i])
    left -= part[i]
    wleft -= weights[i]
kept = sum(v['kept_kib'] for v in vms)
got = [v['target_kib'] - v['floor_kib'] for v in vms]
i = vms.index(x)
print(f"known demands {known}: {x['name']} (unknown) weighs {weights[i]}, as an idle guest; "
      f"water-filled parts {part} KiB, bonuses {got} KiB, kept {kept}")
sys.exit(0 if kept == 0 and got[i] > 0 and all(abs(g - p) <= MIB for g, p in zip(got, part)) else 1)
PY

# --- 1. one busy guest, two idle ----------------------------------------------

kb_log "scenario 1: ${G[0]} reads its 128 MiB disk, ${G[1]} and ${G[2]} idle"
kbb_boot 0 "$KBB_FLOOR_MIB" --cmd
kbb_boot 1 "$KBB_FLOOR_MIB" --cmd --idle
kbb_boot 2 "$KBB_FLOOR_MIB" --cmd --idle
kbb_wait_ready 120 "${G[@]:0:3}" || kb_die "the guests did not boot"
kbb_wait_reading 60 "${G[0]}" || kb_die "${G[0]} did not start reading"
# no hook records them: the first pass adopts them (persistent domains,
# bench/lib.sh: floor their definition's <currentMemory>, at once), and it
# splits by their own figures: not before each reported them at the size
# they booted at
kbb_wait_boot_size 60 "${G[@]:0:3}" || kb_die "the guests' balloons did not inflate"
booted=$(date +%s)
kg_wait_stats_after 30 "$booted" "${G[@]:0:3}" || kb_die "the guests sent no memory statistics"
# what KSM merges in these guests: their kernels and the same 32 MiB each
kb_wait_until 120 "KSM to save 64 MiB" \
    bash -c "[ \"\$(cat $KB_KSM_DIR/general_profit)\" -ge $((64 << 20)) ]" ||
    kb_die "KSM saved only $(($(cat "$KB_KSM_DIR/general_profit") >> 20)) MiB"
passes_until 180 "${G[0]} (busy) has most of the pool, ${G[1]} and ${G[2]} (idle) little" \
    "$MOST" "${G[0]}" "${G[1]}" "${G[2]}"
s1=$LAST
pydef IDLE <<'PY'
r = load(sys.argv[1])
d = {n: vm(r, n)['demand'] for n in sys.argv[2:]}
print(f"demands {d}")
sys.exit(0 if all(v == 0 for v in d.values()) else 1)
PY
py "$IDLE" "$s1" "${G[1]}" "${G[2]}" >&2 || kb_die "an idle guest has a demand"
# what the paper's equal split would do in the same state: a third each
"$BIN" --connect "$KB_URI" --state "$STATE" --split equal --guest-stats-period 0 plan --json \
    >"$OUT/plan-equal.json" 2>>"$OUT/ksm-balloon.log" || kb_die "plan --split equal failed"
py "$EQUAL_VS" "$s1" "$OUT/plan-equal.json" "${G[0]}" >&2 ||
    kb_die "the demand split gave the busy guest no more than the equal split would"

# --- 2. the busy one goes idle, another gets busy -------------------------------

kb_log "scenario 2: ${G[0]} stops reading (its data stays cached), ${G[1]} starts"
kbb_cmd "${G[0]}" idle >/dev/null || kb_die "${G[0]} did not go idle"
kbb_cmd "${G[1]}" read >/dev/null || kb_die "${G[1]} did not start reading"
mark=$(wc -l <"$(kbb_console "${G[1]}")")
switched=$N
# within a few passes the newly busy guest weighs more and is given more ...
passes_until 60 "${G[1]} (now busy) outweighs ${G[0]} (now idle) and is given more" \
    "$MORE" "${G[0]}" "${G[1]}"
# ... the split follows within 3 passes of its demand being known (the
# first pass with its read rate counts as the first; with the half-life
# this took 14 to 23 passes) ...
passes_until 120 "the split gives ${G[1]} most of the pool" \
    "$FOLLOWED" "${G[1]}" "${G[0]}" "${G[2]}"
py "$WITHIN" "$OUT" "$switched" "$N" "$FOLLOWED" "${G[1]}" "${G[0]}" "${G[2]}" >&2 ||
    kb_die "the split did not follow ${G[1]} within 3 passes of its demand being known"
# ... and its balloons get there as the loan rule lets them (what the
# quarter ${G[0]} holds leaves it: to be checked against its reads)
passes_until 120 "${G[1]} has most of the pool, ${G[0]} and ${G[2]} little" \
    "$MOST" "${G[1]}" "${G[0]}" "${G[2]}"
py "$SHRUNK" "$OUT" "$switched" "$N" "${G[0]}" >&2 ||
    kb_die "the pool followed without shrinking ${G[0]}"
# (awk, not tail | grep -q: under pipefail grep's early exit can kill tail
# with SIGPIPE once the console holds more than one buffer after the mark,
# and the pipeline then fails though the guest is reading)
awk -v m="$mark" 'NR > m && /^KB-TPUT / { n++ } END { exit !n }' "$(kbb_console "${G[1]}")" ||
    kb_die "${G[1]} stopped reading"

# --- 3. a guest without statistics ----------------------------------------------

kb_log "scenario 3: ${G[2]} replaced by ${G[3]}, idle, with no balloon statistics"
kg_destroy "${G[2]}" || kb_die "cannot destroy ${G[2]}"
kbb_boot 3 "$KBB_FLOOR_MIB" --cmd --idle --stats 0
kbb_wait_ready 120 "${G[3]}" || kb_die "${G[3]} did not boot"
# No hook records it (as none did the others): the pass adopts it at once
# with its definition's <currentMemory> as its floor (persistent, as the
# others); its figures are read once its balloon driver has inflated it to
# the size it boots at.
kbb_wait_boot_size 60 "${G[3]}" || kb_die "${G[3]}'s balloon did not inflate"
passes_until 120 "${G[3]} (no statistics) weighs as an idle guest" "$UNKNOWN" "${G[3]}"
consoles_clean || kb_die "a guest ran out of memory"

# --- 4. a guest without any disk beside the reader ------------------------------

kb_log "scenario 4: ${G[3]} replaced by ${G[4]}, idle, without any disk"
kg_destroy "${G[3]}" || kb_die "cannot destroy ${G[3]}"
kbb_boot 4 "$KBB_FLOOR_MIB" --cmd --diskless
kbb_wait_ready 120 "${G[4]}" || kb_die "${G[4]} did not boot"
kbb_wait_boot_size 60 "${G[4]}" || kb_die "${G[4]}'s balloon did not inflate"
booted=$(date +%s)
kg_wait_stats_after 30 "$booted" "${G[4]}" || kb_die "${G[4]} sent no memory statistics"
# DISKLESS X READER OTHER: X (no disk) has a known demand of 0 from its
# free memory and less than a third of the budget; READER has most of the
# pool (FOLLOWED's measure: at its ceiling, or 60 % of the budget counting
# what the others keep under the loan rule).
pydef DISKLESS <<'PY'
r = load(sys.argv[1])
x, reader, other = vm(r, sys.argv[2]), vm(r, sys.argv[3]), vm(r, sys.argv[4])
if x is None or not x['managed'] or x['action'] == 'skip':
    print(f"{sys.argv[2]} not managed yet")
    sys.exit(1)
bx = x['target_kib'] - x['floor_kib']
br = reader['target_kib'] - reader['floor_kib']
kept = x['kept_kib'] + other['kept_kib']
print(f"{x['name']} (no disk): demand {x['demand']} ({x.get('demand_basis')}), free {x['guest'].get('unused_kib')} KiB, "
      f"bonus {bx} KiB; reader {reader['name']}: demand {reader['demand']} ({reader.get('demand_basis')}), "
      f"bonus {br} KiB; {other['name']}: demand {other['demand']} ({other.get('demand_basis')}); "
      f"budget {r['budget_kib']} KiB, {kept} KiB kept by the others")
ok = (x.get('demand_basis') == 'free-memory' and x['demand'] == 0 and 3 * bx < r['budget_kib']
      and (reader['target_kib'] == reader['ceiling_kib'] or br + kept >= 0.6 * r['budget_kib'])
      and r['budget_kib'] >= 32 * MIB)
sys.exit(0 if ok else 1)
PY
# the first pass after its first statistics counts as the first of three
first=$((N + 1))
while pass; ! py "$DISKLESS" "$LAST" "${G[4]}" "${G[1]}" "${G[0]}" >"$OUT/check.out" 2>&1; do
    summary "$LAST" >&2
    [ "$N" -lt $((first + 2)) ] ||
        kb_die "${G[4]} (no disk) did not have less than a third, the reader most, within 3 passes: $(cat "$OUT/check.out")"
done
kb_log "${G[4]} (no disk) beside the reader: after $((N - first + 1)) pass(es) (pass $N): $(cat "$OUT/check.out")"
summary "$LAST" >&2
consoles_clean || kb_die "a guest ran out of memory"

kb_log "demand: 4 scenarios passed in $(($(date +%s) - started)) s" \
    "($(($(date +%s) - locked_at)) s holding the real-stack lock, $N passes); reports in $OUT"
