#!/usr/bin/env bash
# Issue 15's real-stack scenarios: the operator's controls and view, on a
# real libvirtd, four real QEMU guests (software-emulated, virtio balloons,
# 256 MiB maximum, started at 160 MiB) and the host's real KSM.
#
#  1. Metadata at start (the hook's spooled XML): kbrs-o1 carries
#     manage="no" and is never resized, at any pass of the whole run (its
#     balloon as libvirt reports it, its own MemTotal); kbrs-w2 carries
#     weight="2" and gets twice the bonus of kbrs-wa and kbrs-wb (weight 1),
#     in the pass's targets and in the balloons the guests end up with.
#  2. A balloon set by hand: `virsh setmem kbrs-wb 224M --live` between
#     passes; the next pass leaves it (unsettled), the one after holds it
#     (held by hand, at that size), the next one finds it held still, and the
#     others share the pool 2:1 as before.
#  3. `ksm-balloon release kbrs-wb`: the next pass manages it again (2:1:1).
#  4. `virsh metadata kbrs-wa --live ... manage="no"` and `ksm-balloon
#     reload kbrs-wa`: the next pass leaves it where it is; the metadata
#     removed and reloaded, it is managed again.
#  5. `weight="0"` on kbrs-wb, reloaded: it takes no part of the pool (back
#     to its floor), the others share it 2:1.
#
# Throughout, every pass runs as the timer would (every ~10 s, `run` with
# `--metrics-file` into a textfile-collector directory), and Debian's
# prometheus-node-exporter (127.0.0.1 only, textfile collector only) is
# scraped every 50 ms (5 s timeout per request) by
# tests/metrics/scrape_record.py. At the end every pass's file must hold
# every metric ksm-balloon writes, say what its pass's JSON report says and
# pass `promtool check metrics`, and every scrape must have served one whole
# file a pass wrote.
#
# Every check reads the passes' JSON reports (tests/realstack/
# operator_checks.py) and what libvirt and the guests report, never log text.
#
# Usage (as root): tests/realstack/operator.sh
# Takes the real-stack lock; always tears down (guests, node_exporter,
# scraper, KSM knobs, hook).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/libvirtd.sh
. "$here/../lib/libvirtd.sh"
# shellcheck source=lib.sh
. "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || kb_die "the operator scenarios must run as root"
for tool in prometheus-node-exporter promtool curl python3; do
    command -v "$tool" >/dev/null || kb_die "$tool is missing: run tests/deps.sh"
done
rs_bin "" # the checkout's own build
CHECKS=$here/operator_checks.py
NS=urn:ksm-balloon:metadata:1
FLOOR=$((160 * RS_MIB))
SET_BY_HAND=$((224 * RS_MIB))
DEADBAND=$((4 * RS_MIB)) # ksm-balloon's default
TOL=$RS_MIB              # a balloon reaches its target to the page; 1 MiB of slack
PASS_EVERY=10            # seconds, as the timer

WORK=$(mktemp -d)
mkdir -p "$WORK/textfile" "$WORK/prom"
PROM=$WORK/textfile/ksm-balloon.prom
EXPORTER_PID='' SCRAPER_PID=''
FAILS=0

rs_setup "$BIN"
finish() {
    local rc=$?
    [ "$FAILS" -eq 0 ] || rc=1
    touch "$WORK/stop"
    [ -n "$SCRAPER_PID" ] && { kill "$SCRAPER_PID" 2>/dev/null; wait "$SCRAPER_PID" 2>/dev/null; }
    [ -n "$EXPORTER_PID" ] && { kill "$EXPORTER_PID" 2>/dev/null; wait "$EXPORTER_PID" 2>/dev/null; }
    [ "$rc" -ne 0 ] && rs_diagnostics
    rs_teardown
    rm -rf "$WORK"
    exit "$rc"
}
trap finish EXIT

ok() { echo "  ok: $*"; }
bad() {
    echo "  FAIL: $*"
    FAILS=$((FAILS + 1))
}
# check DESCRIPTION COMMAND...
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
phase() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

# field GUEST PATH: a field of GUEST's row in the last pass's report.
field() { python3 "$CHECKS" get "$REPORT" "$RS_PREFIX" "$1" "$2"; }
is() { [ "$(field "$1" "$2")" = "$3" ]; }

# op_boot GUEST [ELEMENT]: boots kbrs-GUEST (256 MiB maximum, 160 MiB at
# start) with ksm-balloon's metadata ELEMENT in its domain XML, as an
# operator would write it there.
op_boot() {
    local name=$RS_PREFIX$1 meta=${2:-} xml
    xml=$RS_RUN/$name.xml
    rs_guest_args "$name" 256 160
    rm -f "$(rs_console "$name")" "$(rs_socket "$name")"
    kg_domain_xml "$name" --console "$(rs_console "$name")" "${RS_GUEST_ARGS[@]}" >"$xml"
    if [ -n "$meta" ]; then
        sed -i "/<\/name>/a\\  <metadata>$meta</metadata>" "$xml"
        grep -q "<metadata>" "$xml" || kb_die "no <metadata> in $xml"
    fi
    kg_create "$xml"
}

# op_pass LABEL [ARG...]: the next timer pass, PASS_EVERY s after the last
# one started: `ksm-balloon ARG... run --json --metrics-file`. Its report
# becomes REPORT; its metrics file is kept next to it. Checks what every
# pass must do: exit 0, and leave kbrs-o1 (manage="no") alone.
PASS=0
NEXT_AT=0
due() { [ "$(date +%s%N)" -ge "$NEXT_AT" ]; }
op_pass() {
    local label=$1 n
    shift
    kb_wait_until $((PASS_EVERY + 5)) "the timer's next pass" due
    NEXT_AT=$(($(date +%s%N) + PASS_EVERY * 1000000000))
    PASS=$((PASS + 1))
    n=$(printf '%02d' "$PASS")
    REPORT=$WORK/pass-$n-$label.json
    echo "  pass $n ($label):"
    if ! rs_kb "$@" run --json --metrics-file "$PROM" >"$REPORT" 2>"$WORK/pass-$n.log"; then
        bad "pass $n exited non-zero: $(tail -n 5 "$WORK/pass-$n.log")"
        return 1
    fi
    cp "$PROM" "$WORK/prom/pass-$n.prom"
    PAIRS+=("$REPORT:$WORK/prom/pass-$n.prom")
    python3 "$CHECKS" show "$REPORT" "$RS_PREFIX"
    if is o1 action skip && is o1 reason opted-out && is o1 manage false &&
        is o1 current_kib "$O1_AT"; then
        :
    else
        bad "pass $n: o1 (manage=no) is $(field o1 action)/$(field o1 reason) at $(field o1 current_kib) KiB"
    fi
}
PAIRS=()

# reached GUEST...: each guest's balloon (dommemstat actual) is where the
# last pass put it: within TOL of its target when the pass resized it,
# within the deadband of its target when the pass held it there, and where
# the pass found it when the pass left it alone.
at_within() { rs_actual_within "$1" $(($2 - $3)) $(($2 + $3)); }
reached() {
    local g action target want tol a
    for g in "$@"; do
        action=$(field "$g" action)
        target=$(field "$g" target_kib)
        case $action in
            grow | shrink) want=$target tol=$TOL ;;
            hold) want=$target tol=$((DEADBAND + TOL)) ;;
            *) want=$(field "$g" current_kib) tol=$TOL ;;
        esac
        if kb_wait_until 30 "$g's balloon to be within $tol KiB of $want" at_within "$g" "$want" "$tol"; then
            a=$(rs_actual "$g")
            ok "$g: balloon $a KiB = floor + $(python3 -c "print(f'{($a - $FLOOR) / 1024:.1f}')") MiB ($action to $target KiB)"
        else
            bad "$g: balloon $(rs_actual "$g") KiB, the pass ($action) wanted $want KiB (+- $tol)"
        fi
    done
}

# op_settle LABEL: a VM that gives back goes in recall steps, each on
# fresh figures (issue 23): the timer's passes until one changes nothing
# (no resize, no guest awaiting its figures or on its way), 12 at most.
op_settle() {
    local label=$1 i
    for i in $(seq 1 12); do
        op_pass "$label-$i" || return 1
        if python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(r["resized"] != 0 or any(v["reason"] in ("awaiting", "in-flight") or v["pending_kib"]
                                   for v in r["vms"] if v["managed"] and v["action"] != "skip"))' "$REPORT"; then
            ok "the recall ($label) ended after $i pass(es)"
            return 0
        fi
    done
    bad "the recall ($label) did not end in 12 passes"
    return 1
}

# split GUEST=WEIGHT...: the last pass split its budget among exactly these
# guests in proportion to their weights.
split() {
    if python3 "$CHECKS" split "$REPORT" "$RS_PREFIX" "$@"; then
        ok "the pool went to $* in proportion"
    else
        bad "the pool was not split as $*"
    fi
}

phase "boot: kbrs-o1 with manage=\"no\", kbrs-w2 with weight=\"2\", kbrs-wa and kbrs-wb without metadata"
op_boot o1 "<ksm-balloon:vm xmlns:ksm-balloon=\"$NS\" manage=\"no\"/>"
op_boot w2 "<ksm-balloon:vm xmlns:ksm-balloon=\"$NS\" weight=\"2\"/>"
op_boot wa
op_boot wb
# (rs_wait_ready returns once each balloon is at its boot size, the floor,
# and the guest printed its MemTotal after that: the guests' own view there)
rs_wait_ready 180 o1 w2 wa wb || exit 1
O1_AT=$FLOOR
O1_MEMTOTAL=$(rs_memtotal o1)
W2_MEMTOTAL=$(rs_memtotal w2)
echo "  every balloon at $FLOOR KiB; MemTotal there: o1 $O1_MEMTOTAL kB, w2 $W2_MEMTOTAL kB"

# node_exporter on loopback, on the directory the passes write to, and the
# scraper; neither keeps the real-stack lock's descriptor.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT/metrics
prometheus-node-exporter --web.listen-address="127.0.0.1:$PORT" --collector.disable-defaults \
    --collector.textfile --collector.textfile.directory="$WORK/textfile" \
    >"$WORK/exporter.log" 2>&1 {KB_LOCK_FD}>&- &
EXPORTER_PID=$!
kb_wait_until 30 "node_exporter to answer on $URL" curl -fsS --max-time 2 -o /dev/null "$URL" ||
    kb_die "node_exporter did not start: $(cat "$WORK/exporter.log")"
python3 "$RS_REPO/tests/metrics/scrape_record.py" "$URL" "$WORK/stop" "$WORK/scrapes.json" 0.05 \
    {KB_LOCK_FD}>&- &
SCRAPER_PID=$!

kb_ksm_set 1 1000 20
rs_wait_savings_settle 300 $((60 * RS_MIB)) || exit 1
echo "  KSM settled: $(rs_savings_kib) KiB saved"

phase "1. metadata at start: manage=\"no\" never resized, weight 2 gets twice the bonus"
op_pass start
settings_from_start() { is w2 weight 2 && is w2 manage true && is wa weight 1 && is wb weight 1 && is o1 managed true; }
check "the hook's XML gave o1 manage=no and w2 weight 2, the others the defaults" settings_from_start
all_grow() { is w2 action grow && is wa action grow && is wb action grow; }
check "w2, wa and wb grow from their floors" all_grow
split w2=2 wa=1 wb=1
reached w2 wa wb o1
real_ratio() {
    python3 - "$(rs_actual w2)" "$(rs_actual wa)" "$(rs_actual wb)" "$FLOOR" "$TOL" <<'PY'
import sys
w2, wa, wb, floor, tol = map(int, sys.argv[1:])
b2, ba, bb = w2 - floor, wa - floor, wb - floor
print(f"  real bonuses (dommemstat actual - floor): w2 {b2 / 1024:.1f} MiB, wa {ba / 1024:.1f}, wb {bb / 1024:.1f}: "
      f"w2/wa {b2 / ba:.3f}, w2/wb {b2 / bb:.3f}")
sys.exit(0 if all(abs(b2 - 2 * b) <= 3 * tol for b in (ba, bb)) else 1)
PY
}
check "the guests' balloons: w2's bonus is twice wa's and wb's (within 3 MiB)" real_ratio
memtotal_grew() {
    local mt
    mt=$(rs_memtotal w2)
    [ $((mt - W2_MEMTOTAL)) -ge $(($(rs_actual w2) - FLOOR - TOL)) ] &&
        [ $((mt - W2_MEMTOTAL)) -le $(($(rs_actual w2) - FLOOR + TOL)) ]
}
if kb_wait_until 20 "w2 to print a MemTotal matching its balloon" memtotal_grew; then
    ok "w2's own MemTotal rose by $(($(rs_memtotal w2) - W2_MEMTOTAL)) kB for a bonus of $(($(rs_actual w2) - FLOOR)) KiB"
else
    bad "w2's own MemTotal $(rs_memtotal w2) kB, $W2_MEMTOTAL at its floor, balloon $(rs_actual w2) KiB"
fi
# One steady pass: every pass after it holds o1 and checks it (above), so
# a second one here proved nothing more (10 s of CI time).
op_pass steady-1
reached w2 wa wb

phase "2. a balloon set by hand: virsh setmem kbrs-wb 224M --live"
WB_TARGET=$(field wb target_kib)
rs_virsh setmem "${RS_PREFIX}wb" "$SET_BY_HAND" --live || bad "virsh setmem failed"
kb_wait_until 30 "wb's balloon to reach $SET_BY_HAND KiB" at_within wb "$SET_BY_HAND" "$TOL" ||
    bad "wb's balloon did not follow virsh setmem: $(rs_actual wb) KiB"
# ... and libvirt's bulk statistics to say so, which is what the pass reads:
# libvirt takes balloon.current from QEMU's balloon events, and under load
# it trailed dommemstat's actual (asked of QEMU) when the pass ran (the
# flake hunt of 2026-12-04: the pass read 189.2 MiB, 1 MiB off its target,
# and held it by the deadband instead of finding it unsettled).
kb_wait_until 30 "libvirt's bulk statistics to report wb at $SET_BY_HAND KiB" \
    kg_balloon_near "${RS_PREFIX}wb" "$SET_BY_HAND" "$TOL" ||
    bad "libvirt's balloon.current for wb did not follow virsh setmem: $(kg_balloon "${RS_PREFIX}wb") KiB"
echo "  wb set to $(rs_actual wb) KiB by hand (ksm-balloon's target was $WB_TARGET KiB)"
op_pass hand-1
wb_unsettled() { is wb action skip && is wb reason unsettled; }
check "the first pass after it leaves wb alone (unsettled)" wb_unsettled
split w2=2 wa=1
reached w2 wa wb
op_pass hand-2
wb_held() {
    local size
    size=$(field wb held_by_hand.size_kib)
    is wb action skip && is wb reason held-by-hand &&
        [ "$size" -ge $((SET_BY_HAND - TOL)) ] && [ "$size" -le $((SET_BY_HAND + TOL)) ] &&
        at_within wb "$SET_BY_HAND" "$TOL"
}
check "the second pass holds wb by hand, at the size it was set to" wb_held
split w2=2 wa=1
reached w2 wa wb
# The third pass finds wb held in the state the second one saved: the
# hold carries over (a fourth pass went the same way: 10 s of CI time).
op_pass hand-3
check "pass hand-3: wb still held by hand, left at $SET_BY_HAND KiB" wb_held
split w2=2 wa=1
reached w2 wa

phase "3. ksm-balloon release kbrs-wb"
out=$(rs_kb release "${RS_PREFIX}wb" 2>&1)
echo "  release: $out"
check "release says it was released" grep -q 'released at' <<<"$out"
op_pass released
wb_released() { is wb held_by_hand null && { is wb action shrink || is wb reason awaiting; }; }
check "wb is managed again: no longer held, its recall to its share starts" wb_released
op_settle released
split w2=2 wa=1 wb=1
reached w2 wa wb

phase "4. virsh metadata --live manage=\"no\" on kbrs-wa, then ksm-balloon reload"
rs_virsh metadata "${RS_PREFIX}wa" --live --uri "$NS" --key ksm-balloon --set '<vm manage="no"/>' ||
    bad "virsh metadata --set failed"
out=$(rs_kb reload "${RS_PREFIX}wa" 2>&1)
echo "  reload: $out"
check "reload reads manage no" grep -q 'manage no' <<<"$out"
WA_AT=$(rs_actual wa)
wa_opted_out() { is wa action skip && is wa reason opted-out && is wa manage false && at_within wa "$WA_AT" 0; }
# One pass: that an opted-out VM stays left alone pass after pass is what
# o1 (manage="no" from its start) shows at every pass (a second pass here
# went the same way: 10 s of CI time).
op_pass opted-out-1
check "pass opted-out-1: wa is left alone (opted out) at $WA_AT KiB" wa_opted_out
split w2=2 wb=1
reached w2 wb
rs_virsh metadata "${RS_PREFIX}wa" --live --uri "$NS" --remove || bad "virsh metadata --remove failed"
out=$(rs_kb reload "${RS_PREFIX}wa" 2>&1)
echo "  reload: $out"
check "reload reads manage yes, weight 1" grep -q 'manage yes, weight 1,' <<<"$out"
op_pass opted-in
wa_managed() { is wa manage true && ! is wa action skip; }
check "wa is managed again" wa_managed
op_settle opted-in
split w2=2 wa=1 wb=1
reached w2 wa wb

phase "5. weight=\"0\" on kbrs-wb, reloaded: no part of the pool"
rs_virsh metadata "${RS_PREFIX}wb" --live --uri "$NS" --key ksm-balloon --set '<vm weight="0"/>' ||
    bad "virsh metadata --set failed"
out=$(rs_kb reload "${RS_PREFIX}wb" 2>&1)
echo "  reload: $out"
check "reload reads weight 0" grep -q 'manage yes, weight 0,' <<<"$out"
op_pass weight-0
op_settle weight-0
wb_to_floor() { is wb target_kib "$FLOOR" && [ "$(field wb kept_kib)" = 0 ]; }
check "wb goes back to its floor" wb_to_floor
split w2=2 wa=1 wb=0
reached w2 wa wb

phase "the whole run: kbrs-o1 never resized; node_exporter served every pass's metrics whole"
check "o1's balloon is where it started ($O1_AT KiB)" at_within o1 "$O1_AT" 0
o1_memtotal_same() { [ "$(rs_memtotal o1)" = "$O1_MEMTOTAL" ]; }
check "o1's own MemTotal is what it was at start ($O1_MEMTOTAL kB)" o1_memtotal_same
# The scraper must have seen the last pass's file before it stops.
scrapes() { cat "$WORK/scrapes.json.progress" 2>/dev/null || echo 0; }
last=$(scrapes)
scraped_since() { [ "$(scrapes)" -ge $((last + 5)) ]; }
kb_wait_until 10 "the scraper to scrape the last file" scraped_since ||
    bad "the scraper stopped scraping"
touch "$WORK/stop"
kb_wait_until 15 "the scraper to finish" test -s "$WORK/scrapes.json" || bad "the scraper wrote no result"
wait "$SCRAPER_PID"
SCRAPER_PID=''
if python3 "$CHECKS" metrics "$RS_PREFIX" "$RS_REPO/src/metrics.rs" "$WORK/scrapes.json" \
    "$(command -v promtool)" "${PAIRS[@]}"; then
    ok "every pass's metrics file was whole, complete, true to its report and served whole"
else
    bad "the metrics files or their scrapes"
fi

echo
if [ "$FAILS" -eq 0 ]; then
    echo "operator scenarios: all checks passed ($PASS passes)"
else
    echo "operator scenarios: $FAILS checks FAILED"
fi
