#!/usr/bin/env bash
# Issue 18's real-stack scenarios: a pass has a deadline that no VM can
# hold, and a VM no hook recorded is adopted only with what is known. A real
# libvirtd with no hook installed (but for one restart in 1), three real
# QEMU guests (software-emulated, virtio balloons, 256 MiB maximum, booting
# at 160 MiB: transient domains, so no persistent definition tells their
# boot size) and the host's KSM.
#
#  1. Adoption from the first second: passes every 2 s from the moment the
#     guests are created, while their balloon drivers inflate from 256 MiB
#     to 160 MiB. Right after the guests are created, libvirtd is restarted
#     with the hook in place (then it is removed): its `reconnect` records
#     give each balloon's size of the moment, which must not become a
#     floor. Every guest is adopted exactly once, with 160 MiB as its
#     floor (never a size its driver had not finished reaching), no pass
#     ever shows one held by hand or away from what was asked, and once KSM
#     merges a pass lends to each (its target above its floor, its balloon
#     there).
#  2. A stopped QEMU: `kill -STOP` on g2's QEMU (what a hung QEMU, or a
#     monitor busy with a long command, looks like to libvirt), then KSM
#     unmerges everything, so every balloon must come down. The next pass
#     ends within its bound (exit 0), names g2 (reason "unresponsive", since
#     when), and asks g1 and g3 for their floors in that very pass; their
#     balloons get there. A second pass, still stopped, is as quick and
#     names g2 with the same "since". `status` names it too. Then `kill
#     -CONT`: within two passes g2 is managed again and back at its floor.
#     No report of the whole run shows a VM held by hand.
#  3. A pass killed right after its resizes: KSM merges again, and the pass
#     that lends it is SIGKILLed (strace injects the signal into its second
#     rename, the save after the resizes; the first is the save that
#     records what it will ask) once libvirt has sent the balloon commands.
#     The balloons go where that pass asked; the passes after it find them
#     there: no VM held by hand or unsettled, the state loads, every guest
#     managed.
#
# Every check reads the passes' JSON reports and what libvirt says
# (dommemstat), never log text.
#
# Usage (as root): tests/realstack/actuation.sh [BIN]
# Takes the real-stack lock; always tears down (the stopped QEMU continued
# first, guests destroyed, KSM knobs restored).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/libvirtd.sh
. "$here/../lib/libvirtd.sh"
# shellcheck source=lib.sh
. "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || kb_die "the actuation scenarios must run as root"
rs_bin "${1:-}"
FLOOR=$((160 * RS_MIB))
CEIL=$((256 * RS_MIB))
TOL=$RS_MIB
# The pass's own bound on its libvirt work is 30 s (docs/DESIGN.md); a pass
# that meets a stopped QEMU waits 8 s for the bulk call, then 5 s for each
# domain's figures, side by side.
PASS_BOUND=30
GUESTS=(g1 g2 g3)
STOPPED_PID=''
started=$(date +%s)

rs_setup "$BIN"
finish() {
    local rc=$?
    if [ -n "$STOPPED_PID" ]; then
        kill -CONT "$STOPPED_PID" 2>/dev/null
        kb_log "continued the stopped QEMU (pid $STOPPED_PID)"
    fi
    rs_teardown
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM
# No hook: every guest is a domain found running that no hook recorded.
# (libvirt lists qemu.d at each call: a removed script is not run.)
kb_remove_hook

# pass LABEL: one pass as the timer runs it (--hold-window 0: the savings
# of the moment), timed: PASS_SECS (decimal), RS_PASS_JSON, RS_PASS_RC. A
# pass that has not ended after 150 s is killed (exit 124), as the issue's
# was.
PASS_SECS=0
pass() {
    local t0 t1
    t0=$(date +%s%N)
    rs_pass_with "$1" timeout 150 -- --hold-window 0
    t1=$(date +%s%N)
    PASS_SECS=$(python3 -c "print(f'{($t1 - $t0) / 1e9:.1f}')")
    echo "  pass $1: exit $RS_PASS_RC in ${PASS_SECS}s; its log:"
    sed 's/^/    | /' "$RS_RUN/pass-$1.out"
    [ "$RS_PASS_RC" -ne 0 ] || rs_show_report "$RS_PASS_JSON"
}

# reports_json: every pass report of this run, in order, as one JSON list
# (for the checks over the whole run).
reports() {
    python3 - "$RS_RUN" <<'PY'
import glob, json, os, sys
out = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "pass-*.json")), key=os.path.getmtime):
    try:
        out.append((os.path.basename(f), json.load(open(f))))
    except ValueError:
        pass
json.dump(out, sys.stdout)
PY
}

# none_held_by_hand: no pass report of the run shows a VM held by hand.
none_held_by_hand() {
    reports >"$RS_RUN/all-reports.json.tmp"
    python3 - "$RS_RUN/all-reports.json.tmp" <<'PY'
import json, sys
bad = [(f, v["name"], v["reason"]) for f, r in json.load(open(sys.argv[1])) for v in r["vms"]
       if v.get("held_by_hand") or v["reason"] == "held-by-hand"]
for b in bad:
    print("    held by hand:", *b)
sys.exit(1 if bad else 0)
PY
}

# reconnected_all: the hook's spool holds a reconnect record of each guest.
reconnected_all() {
    python3 - "$(dirname "$RS_STATE")/spool" "$RS_PREFIX" "${GUESTS[@]}" <<'PY'
import json, os, sys
d, prefix, guests = sys.argv[1], sys.argv[2], sys.argv[3:]
seen = set()
for f in os.listdir(d) if os.path.isdir(d) else []:
    try:
        rec = json.load(open(os.path.join(d, f)))
    except (OSError, ValueError):
        continue
    if rec.get("operation") == "reconnect":
        seen.add(rec.get("domain"))
sys.exit(0 if all(prefix + g in seen for g in guests) else 1)
PY
}

# at GUEST KIB: its balloon is within TOL of KIB.
at() { rs_actual_within "$1" $(($2 - TOL)) $(($2 + TOL)); }

# --- 1. adoption from the first second ------------------------------------------

s1_adopt_from_the_first_second() {
    local g i ok=0 t0
    t0=$(date +%s)
    for g in "${GUESTS[@]}"; do rs_boot "$g" 256 160 || return 1; done
    # libvirtd restarted with the hook in place while the guests boot: it
    # runs the hook's `reconnect` for each, whose XML gives the balloon's
    # size of the moment (the maximum, for a guest whose driver has not
    # inflated yet). Such a record must not make that size the floor: the
    # VMs are still adopted by the adoption rule (the chaos soak's CI of
    # bbdec68 found a VM recorded at `reconnect` with its maximum as floor).
    kb_install_hook "$RS_BIN" "$RS_CONFIG"
    # libvirtd reconnects to its guests in threads after it answers: the
    # hook is removed only when each guest's reconnect has run it. libvirt
    # kills a guest whose reconnect hook fails, and a hook removed between
    # libvirt's listing of qemu.d and its exec fails (the stop CI of d537fe4:
    # g2's reconnect met ENOENT, exit 127, and libvirt destroyed g2).
    kb_wait_until 60 "the hook's reconnect record of each guest" reconnected_all ||
        { echo "  FAIL: the hook did not record every guest's reconnect"; return 1; }
    kb_remove_hook
    rs_figure "s1 libvirtd restarted $(($(date +%s) - t0)) s after the guests were created; the hook's reconnect records: $(python3 - "$(dirname "$RS_STATE")/spool" <<'PY'
import json, os, re, sys
d = sys.argv[1]
out = []
for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    try:
        rec = json.load(open(os.path.join(d, f)))
    except (OSError, ValueError):
        continue
    m = re.search(r"<currentMemory unit='KiB'>(\d+)<", rec.get("xml") or "")
    out.append(f"{rec['domain']} {rec['operation']} at currentMemory {int(m.group(1)) // 1024 if m else '?'} MiB")
print("; ".join(out) or "none")
PY
)"
    # Passes every 2 s from the first second, until every guest is
    # adopted and two more passes saw them (at most 150 s).
    local adopted_all_at=''
    for i in $(seq -w 1 75); do
        pass "a$i" >/dev/null
        [ "$RS_PASS_RC" -eq 0 ] || { echo "  FAIL: pass a$i exited $RS_PASS_RC"; sed 's/^/    | /' "$RS_RUN/pass-a$i.out"; return 1; }
        if [ -z "$adopted_all_at" ] &&
            rs_json "$RS_PASS_JSON" "all(vm(g)['managed'] for g in ('g1', 'g2', 'g3'))" 2>/dev/null; then
            adopted_all_at=$i
            rs_figure "s1 every guest adopted by pass a$i, $(($(date +%s) - t0)) s after the guests were created"
        fi
        [ -n "$adopted_all_at" ] && [ "$((10#$i))" -ge $((10#$adopted_all_at + 2)) ] && break
        sleep 2
    done
    rs_show_report "$RS_PASS_JSON"
    rs_check "every guest was adopted within 150 s" test -n "$adopted_all_at" || return 1
    reports >"$RS_RUN/adoption-reports.json"
    rs_check "each guest adopted exactly once, floor $FLOOR KiB (its boot size), ceiling $CEIL KiB, by a pass (no record of the hook's reconnects)" \
        python3 - "$RS_RUN/adoption-reports.json" "$RS_PREFIX" "$FLOOR" "$CEIL" <<'PY' || ok=1
import json, sys
reports, prefix, floor, ceil = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ok = True
for g in ("g1", "g2", "g3"):
    name = prefix + g
    adoptions = [(f, v) for f, r in reports for v in r["vms"] if v["name"] == name and v["adopted"]]
    for f, v in adoptions:
        print(f"    {g}: adopted by {f}: floor {v['floor_kib']}, ceiling {v['ceiling_kib']}, balloon {v['current_kib']}, source {v['source']}")
    if len(adoptions) != 1:
        print(f"    {g}: adopted {len(adoptions)} times"); ok = False; continue
    f, v = adoptions[0]
    ok &= v["floor_kib"] == floor and v["ceiling_kib"] == ceil and v["source"] == "adopted"
    if sum(r["hook_records"] for _, r in reports) > 3:
        print("    passes folded more hook records than the 3 reconnects"); ok = False
sys.exit(0 if ok else 1)
PY
    rs_check "no pass left a guest alone as moved by someone else (unsettled) or held by hand" \
        python3 - "$RS_RUN/adoption-reports.json" <<'PY' || ok=1
import json, sys
bad = [(f, v["name"], v["reason"]) for f, r in json.load(open(sys.argv[1])) for v in r["vms"]
       if v["reason"] in ("held-by-hand", "unsettled") or v.get("held_by_hand")]
for b in bad:
    print("    ", *b)
sys.exit(1 if bad else 0)
PY
    # How many passes saw a balloon on its way from 256 to 160 MiB (the
    # moment the old rule adopted it with that size as its floor).
    rs_figure "s1 $(python3 - "$RS_RUN/adoption-reports.json" "$FLOOR" "$CEIL" <<'PY'
import json, sys
reports, floor, ceil = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
mid = [(f, v["name"], v["current_kib"]) for f, r in reports for v in r["vms"] if floor + 1024 < v["current_kib"] < ceil]
first = {}
for f, r in reports:
    for v in r["vms"]:
        first.setdefault(v["name"], f)
print(f"{len(reports)} passes; {len(mid)} sightings of a balloon between floor and ceiling "
      f"({', '.join(f'{n} {k // 1024} MiB in {f}' for f, n, k in mid[:6])}); first seen: "
      + ", ".join(f"{n} in {f}" for n, f in sorted(first.items())))
PY
)"
    for g in "${GUESTS[@]}"; do
        rs_check "$g's balloon at its 160 MiB floor" kb_wait_until 30 "$g at its floor" at "$g" "$FLOOR" || ok=1
    done
    rs_wait_ready 120 "${GUESTS[@]}" || return 1
    # KSM merges: identical data in each guest, then a pass lends to each.
    for g in "${GUESTS[@]}"; do
        rs_check "$g holds 40 MiB of the shared data" test "$(rs_cmd "$g" fill 40)" = "filled 40" || return 1
    done
    kb_ksm_set 1 1000 20
    rs_wait_savings_settle 180 $((60 * RS_MIB)) || return 1
    pass lend
    rs_check "the pass exits 0" test "$RS_PASS_RC" -eq 0 || return 1
    for g in "${GUESTS[@]}"; do
        local t
        t=$(rs_json "$RS_PASS_JSON" "vm('$g')['target_kib']")
        rs_check "$g is lent to: grows to $(rs_mib "$t") MiB (floor + $(rs_mib $((t - FLOOR))) MiB) and its balloon gets there" \
            eval "rs_json '$RS_PASS_JSON' \"vm('$g')['action'] == 'grow' and vm('$g')['target_kib'] > $FLOOR + 16 * MIB\" && kb_wait_until 30 '$g at its target' at $g $t" || ok=1
    done
    rs_figure "s1 savings $(rs_mib "$(rs_json "$RS_PASS_JSON" "r['savings_kib']")") MiB lent: g1 $(rs_mib "$(rs_actual g1)"), g2 $(rs_mib "$(rs_actual g2)"), g3 $(rs_mib "$(rs_actual g3)") MiB"
    return $ok
}

# --- 2. a stopped QEMU --------------------------------------------------------------

s2_stopped_qemu() {
    local ok=0 g since
    local pid
    pid=$(cat /run/libvirt/qemu/"${RS_PREFIX}g2".pid) || return 1
    kill -STOP "$pid" || return 1
    STOPPED_PID=$pid
    echo "  g2's QEMU (pid $pid) stopped: $(awk '/^State:/ { print $2, $3 }' "/proc/$pid/status")"
    kb_ksm_set 2
    echo "  KSM unmerged everything: savings $(rs_savings_kib) KiB"
    pass stop1
    rs_figure "s2 the pass with g2's QEMU stopped took ${PASS_SECS} s (bound ${PASS_BOUND} s)"
    rs_check "it exits 0" test "$RS_PASS_RC" -eq 0 || return 1
    rs_check "it ended within its bound (${PASS_SECS} s <= ${PASS_BOUND} s)" \
        python3 -c "import sys; sys.exit(not $PASS_SECS <= $PASS_BOUND)" || ok=1
    rs_check "it names g2: left alone, reason unresponsive, since this pass, its record kept" \
        rs_json "$RS_PASS_JSON" "vm('g2')['managed'] and vm('g2')['action'] == 'skip' and vm('g2')['reason'] == 'unresponsive' and vm('g2').get('unresponsive_since') is not None and vm('g2').get('unresponsive')" || ok=1
    since=$(rs_json "$RS_PASS_JSON" "vm('g2').get('unresponsive_since')")
    echo "  g2: $(rs_json "$RS_PASS_JSON" "vm('g2').get('unresponsive')")"
    # The others are planned as usual in that pass: asked for their floors,
    # or, where a recall first asks the guest for fresh figures (a recall
    # rule that holds a step until they come, reason "awaiting"), asked at
    # the next pass.
    rs_check "g1 and g3 are planned as usual in that pass: each asked for its floor (or awaiting its guest's fresh figures first)" \
        rs_json "$RS_PASS_JSON" "all((vm(g)['action'] == 'shrink' and vm(g)['target_kib'] == $FLOOR) or vm(g)['reason'] == 'awaiting' for g in ('g1', 'g3')) and r['resized'] == sum(vm(g)['action'] == 'shrink' for g in ('g1', 'g3'))" || ok=1
    # The others come down to their floors: in that pass, or step by step
    # where a recall rule takes a guest's loan back in steps on its fresh
    # figures. Passes every 3 s, g2 still stopped, until both are there
    # (at least one more pass: it must be as quick and name g2 the same).
    local n=1 most=0
    for g in g1 g3; do kb_wait_until 5 "$g at its floor" at "$g" "$FLOOR"; done
    while [ "$n" -lt 2 ] || ! { at g1 "$FLOOR" && at g3 "$FLOOR"; }; do
        n=$((n + 1))
        if [ "$n" -gt 15 ]; then
            echo "  FAIL: g1 and g3 not at their floors after $((n - 1)) passes"
            ok=1
            break
        fi
        sleep 3
        pass "stop$n" >/dev/null
        python3 -c "import sys; sys.exit(not $PASS_SECS <= $most)" || most=$PASS_SECS
        rs_check "pass stop$n, still stopped: exit 0 in ${PASS_SECS} s (within the bound), g2 named since the same time" \
            eval "[ $RS_PASS_RC -eq 0 ] && python3 -c 'import sys; sys.exit(not $PASS_SECS <= $PASS_BOUND)' && rs_json '$RS_PASS_JSON' \"vm('g2')['reason'] == 'unresponsive' and vm('g2').get('unresponsive_since') == $since and all(vm(g)['reason'] != 'unresponsive' for g in ('g1', 'g3'))\"" || ok=1
        for g in g1 g3; do kb_wait_until 5 "$g at its floor" at "$g" "$FLOOR"; done
    done
    rs_figure "s2 the passes after it, g2 still stopped, took at most ${most} s; g1 and g3 at their floors after $n pass(es) (1: in the pass that met the stopped QEMU)"
    for g in g1 g3; do
        rs_check "$g's balloon at its floor" at "$g" "$FLOOR" || ok=1
    done
    rs_status_json "$RS_RUN/stop-status.json" || ok=1
    rs_check "status names g2 as not answering, since the first pass that met it" \
        rs_json "$RS_RUN/stop-status.json" "vm('g2')['reason'] == 'unresponsive' and vm('g2').get('unresponsive_since') == $since" || ok=1
    kill -CONT "$pid"
    STOPPED_PID=''
    echo "  g2's QEMU continued"
    local managed='' k=0
    for i in 1 2; do
        pass "cont$i"
        [ "$RS_PASS_RC" -eq 0 ] || { echo "  FAIL: exit $RS_PASS_RC"; ok=1; }
        if rs_json "$RS_PASS_JSON" "vm('g2')['reason'] != 'unresponsive' and vm('g2').get('unresponsive') is None and (vm('g2')['action'] == 'shrink' or vm('g2')['reason'] == 'awaiting')"; then
            managed=$i
            break
        fi
        sleep 8
    done
    rs_check "within two passes of SIGCONT g2 is managed again (pass ${managed:-none}): asked to come down (or awaiting its fresh figures)" test -n "$managed" || ok=1
    # then down to its floor, in that pass or step by step
    kb_wait_until 5 "g2 at its floor" at g2 "$FLOOR"
    while ! at g2 "$FLOOR" && [ "$k" -lt 12 ]; do
        k=$((k + 1))
        sleep 3
        pass "down$k" >/dev/null
        kb_wait_until 5 "g2 at its floor" at g2 "$FLOOR"
    done
    rs_check "and its balloon reaches its floor ($k more pass(es))" at g2 "$FLOOR" || ok=1
    pass after
    rs_check "a pass after that: every guest at its floor, nothing to do" \
        rs_json "$RS_PASS_JSON" "r['resized'] == 0 and all(vm(g)['action'] == 'hold' for g in ('g1', 'g2', 'g3'))" || ok=1
    rs_check "no report of the whole run shows a VM held by hand" none_held_by_hand || ok=1
    return $ok
}

# --- 3. a pass killed right after its resizes -------------------------------------

s3_killed_after_resizes() {
    local ok=0 mark calls rc g i
    kb_ksm_set 1 1000 20
    rs_wait_savings_settle 180 $((60 * RS_MIB)) || return 1
    mark=$(kb_monitor_log_mark)
    (
        set -a
        # shellcheck disable=SC1090
        . "$RS_CONFIG"
        set +a
        exec strace -qq -f -o /dev/null -e trace=rename,renameat,renameat2 \
            -e inject=rename,renameat,renameat2:signal=KILL:when=2 \
            timeout 150 "$RS_BIN" --hold-window 0 run --json
    ) >"$RS_RUN/pass-killed.json.partial" 2>"$RS_RUN/pass-killed.out"
    rc=$?
    calls=$(kb_monitor_balloon_calls "$mark")
    echo "  the lending pass: exit $rc, $calls balloon command(s) sent before it died; its log:"
    sed 's/^/    | /' "$RS_RUN/pass-killed.out"
    rs_check "it was killed (exit $rc: 137 is SIGKILL) after libvirt sent its resizes ($calls balloon commands)" \
        test "$rc" -eq 137 -a "$calls" -ge 1 || return 1
    for i in 1 2 3; do
        sleep 3
        pass "afterkill$i"
        rs_check "pass afterkill$i exits 0" test "$RS_PASS_RC" -eq 0 || { ok=1; continue; }
        rs_check "pass afterkill$i: every guest managed, none held by hand or left alone as moved by someone else" \
            rs_json "$RS_PASS_JSON" "all(vm(g)['managed'] and not vm(g).get('held_by_hand') and vm(g)['reason'] not in ('held-by-hand', 'unsettled') for g in ('g1', 'g2', 'g3'))" || ok=1
    done
    for g in "${GUESTS[@]}"; do
        rs_check "$g was lent to (above its floor)" eval "[ \"\$(rs_actual $g)\" -gt $((FLOOR + 16 * RS_MIB)) ]" || ok=1
    done
    rs_figure "s3 killed after $calls balloon command(s); the next passes: g1 $(rs_mib "$(rs_actual g1)"), g2 $(rs_mib "$(rs_actual g2)"), g3 $(rs_mib "$(rs_actual g3)") MiB, none held by hand"
    rs_check "no report of the whole run shows a VM held by hand" none_held_by_hand || ok=1
    return $ok
}

rs_scenario "1 adoption from the first second, the hook only at a reconnect" s1_adopt_from_the_first_second
rs_scenario "2 a stopped QEMU while the savings fall" s2_stopped_qemu
rs_scenario "3 a pass killed right after its resizes" s3_killed_after_resizes
rs_summary "actuation (issue 18)" "$started"
