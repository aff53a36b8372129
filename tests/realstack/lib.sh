# shellcheck shell=bash
# The real-stack harness shared by tests/realstack/suite.sh and demo.sh:
# this suite's guest (tests/lib/guest.sh with guest-init.sh as its /init),
# booting and destroying guests, reading what libvirt and the guest say
# about its memory, sending it commands, the KSM counters, running
# ksm-balloon with the test's settings, and a full teardown.
#
# Source it after tests/lib/libvirtd.sh; it sources tests/lib/guest.sh.
# Every function is prefixed rs_. Guests are transient libvirt domains
# named "kbrs-*"; only those are ever destroyed.

RS_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/guest.sh
. "$RS_HERE/../lib/guest.sh"
# shellcheck disable=SC2034 # for the scripts that source this file
RS_REPO=$(cd "$RS_HERE/../.." && pwd)
# Runtime files: consoles, command sockets, ksm-balloon's config and state.
RS_RUN=${RS_RUN:-/run/ksm-balloon-test}
RS_CONFIG=$RS_RUN/config
RS_STATE=$RS_RUN/state.json
RS_PREFIX=kbrs-
# shellcheck disable=SC2034 # for the scripts that source this file
RS_MIB=1024 # KiB per MiB

# The shared read-only disk the guests copy identical data from (MiB).
RS_DATA_MIB=64

rs_virsh() { virsh -q -c "$KB_URI" "$@"; }

# --- scenarios: checks, figures, a summary -----------------------------------

RS_FIGURES=()
RS_FAILED=()
RS_PASSED=()

# rs_figure TEXT: a measured figure, printed now and in the summary.
rs_figure() {
    RS_FIGURES+=("$*")
    echo "  figure: $*"
}

# rs_mib KIB: KIB in MiB, one decimal.
rs_mib() { python3 -c "print(f'{$1/1024:.1f}')"; }

# rs_check DESCRIPTION COMMAND...: prints ok/FAIL; returns the command's status.
rs_check() {
    local what=$1
    shift
    if "$@"; then
        echo "  ok: $what"
    else
        KB_FAILURES+=("$what")
        echo "  FAIL: $what"
        return 1
    fi
}

# rs_scenario NAME FUNCTION: runs one scenario, timed; a failing one prints
# the diagnostics (rs_diagnostics).
rs_scenario() {
    local name=$1 t0
    shift
    printf '\n=== scenario %s (%s)\n' "$name" "$(date -u +%H:%M:%S)"
    t0=$(date +%s)
    if "$@"; then
        RS_PASSED+=("$name ($(($(date +%s) - t0))s)")
        echo "--- ok: scenario $name ($(($(date +%s) - t0))s)"
    else
        RS_FAILED+=("$name")
        echo "--- FAIL: scenario $name"
        rs_diagnostics
        echo "--- FAIL: scenario $name (above)"
    fi
}

# rs_summary TITLE START_EPOCH: the scenarios' results and figures; fails
# when a scenario failed.
rs_summary() {
    printf '\n=== %s summary\n' "$1"
    [ ${#RS_PASSED[@]} -eq 0 ] || printf 'ok    %s\n' "${RS_PASSED[@]}"
    [ ${#RS_FAILED[@]} -eq 0 ] || printf 'FAIL  %s\n' "${RS_FAILED[@]}"
    [ ${#RS_FAILED[@]} -eq 0 ] || printf '  failed or timed out: %s\n' "${KB_FAILURES[@]}"
    printf 'figures:\n'
    [ ${#RS_FIGURES[@]} -eq 0 ] || printf '  %s\n' "${RS_FIGURES[@]}"
    printf 'wall time %ss (%ss of it waiting for the real-stack lock)\n' \
        "$(($(date +%s) - $2))" "$((RS_LOCKED_AT - $2))"
    [ ${#RS_FAILED[@]} -eq 0 ]
}

# rs_now_at_least EPOCH: the clock has reached EPOCH (for kb_wait_until).
rs_now_at_least() { [ "$(date +%s)" -ge "$1" ]; }

# --- the guest ------------------------------------------------------------

# rs_build_guest: sets RS_KERNEL, RS_INITRD and RS_DATA: this suite's guest
# image (tests/lib/guest.sh with tests/realstack/guest-init.sh as /init),
# built unless cached, and the shared data disk.
rs_build_guest() {
    kg_build_image "$RS_HERE/guest-init.sh" || return 1
    RS_KERNEL=$KG_KERNEL
    RS_INITRD=$KG_INITRD
    RS_DATA=$(kg_disk shared-data "$RS_DATA_MIB")
}

rs_console() { kg_console "$RS_RUN" "$1"; }
rs_socket() { kg_socket "$RS_RUN" "$1"; }

# rs_guest_args NAME MEMORY_MIB CURRENT_MIB [BALLOON(virtio|none)
# [OPTION...]]: sets RS_GUEST_ARGS to kg_domain_xml's options for the
# suite's guest NAME (the image, the shared data disk read-only, its command
# socket in RS_RUN), all but its console, which kg_boot adds; OPTIONs are
# more of kg_domain_xml's (e.g. --stats 0, --cmdline kb_fill=128).
rs_guest_args() {
    RS_GUEST_ARGS=(--memory "$2" --current "$3" --balloon "${4:-virtio}"
        --kernel "$RS_KERNEL" --initrd "$RS_INITRD" --disk "$RS_DATA,ro,shared"
        --socket "$(rs_socket "$1")" "${@:5}")
}

# rs_domain_xml NAME MEMORY_MIB CURRENT_MIB [BALLOON [OPTION...]]: the
# suite's guest's domain XML, its console in RS_RUN.
rs_domain_xml() {
    rs_guest_args "$@"
    kg_domain_xml "$1" "${RS_GUEST_ARGS[@]}" --console "$(rs_console "$1")"
}

# rs_boot NAME MEMORY_MIB CURRENT_MIB [BALLOON [OPTION...]]: creates the
# transient domain kbrs-NAME (libvirt runs the hook meanwhile). Does not
# wait for the guest.
rs_boot() {
    local name=$RS_PREFIX$1
    rs_guest_args "$name" "${@:2}"
    kg_boot "$RS_RUN" "$name" "${RS_GUEST_ARGS[@]}"
}

# rs_wait_ready SECONDS GUEST...: every guest printed its ready marker, its
# balloon is at the size it booted at (kg_wait_boot_size: QEMU reports the
# maximum until the guest's driver has inflated it), and it printed a
# MEMTOTAL line after that, so rs_actual and rs_memtotal read right after
# this return the boot size and the guest's view of it.
rs_wait_ready() {
    local limit=$1 g line
    shift
    for g in "$@"; do
        kg_wait_console "$limit" "$(rs_console "$RS_PREFIX$g")" '^KB-GUEST-READY' "guest $g" ||
            return 1
    done
    for g in "$@"; do
        kg_wait_boot_size 60 "$RS_RUN" "$RS_PREFIX$g" || return 1
        line=$(rs_console_lines "$g")
        kb_wait_until 20 "guest $g to print MEMTOTAL at its boot size" rs_memtotal_after "$g" "$line" ||
            return 1
    done
}

# rs_actual GUEST: the balloon's size as libvirt reports it (dommemstat
# actual), KiB.
rs_actual() {
    rs_virsh dommemstat "$RS_PREFIX$1" 2>/dev/null | awk '$1 == "actual" { print $2; f = 1 } END { exit !f }'
}

# rs_memtotal GUEST: the guest's own MemTotal (kB) from the last MEMTOTAL
# line on its console.
rs_memtotal() {
    kg_console_whole "$(rs_console "$RS_PREFIX$1")" | grep -a '^MEMTOTAL ' | tail -n1 |
        awk '{ print $2; f = 1 } END { exit !f }'
}

# rs_guest_field GUEST FIELD: a field of the last MEMTOTAL line on the
# guest's console (MEMTOTAL, MEMFREE, MEMAVAILABLE in kB; FILL, OWN in MiB).
rs_guest_field() {
    kg_console_whole "$(rs_console "$RS_PREFIX$1")" | grep -a '^MEMTOTAL ' | tail -n1 | tr -d '\r' |
        awk -v k="$2" '{ for (i = 1; i < NF; i += 2) if ($i == k) { print $(i + 1); f = 1 } } END { exit !f }'
}

# rs_console_problem GUEST: prints the console lines that say the guest is
# dying or lost a process (a kernel panic, the OOM killer); fails when
# there is none.
rs_console_problem() {
    grep -aE 'Kernel panic|Out of memory|oom-kill|invoked oom-killer|deadlocked on memory' \
        "$(rs_console "$RS_PREFIX$1")" 2>/dev/null
}

# rs_alive GUEST: nothing on its console says it panicked or met the OOM
# killer, and it still answers a command (prints the console's lines when
# it did).
rs_alive() {
    local p
    if p=$(rs_console_problem "$1"); then
        echo "  $1's console: $(head -n3 <<<"$p" | tr -d '\r' | paste -sd'|')"
        return 1
    fi
    [ "$(rs_cmd "$1" ping)" = pong ]
}

# rs_memtotal_after GUEST LINE: a MEMTOTAL printed after console line LINE.
rs_console_lines() { wc -l <"$(rs_console "$RS_PREFIX$1")"; }
rs_memtotal_after() {
    kg_console_whole "$(rs_console "$RS_PREFIX$1")" | tail -n +"$(($2 + 1))" | grep -a '^MEMTOTAL ' |
        tail -n1 | awk '{ print $2; f = 1 } END { exit !f }'
}

# rs_used GUEST: the memory libvirt says the domain uses (dominfo "Used
# memory"), KiB; for a guest without a balloon, dommemstat has no `actual`.
rs_used() {
    rs_virsh dominfo "$RS_PREFIX$1" 2>/dev/null | awk '$1 == "Used" { print $3; f = 1 } END { exit !f }'
}

# rs_actual_is GUEST KIB: dommemstat actual equals KIB.
rs_actual_is() { [ "$(rs_actual "$1")" = "$2" ]; }
# rs_actual_within GUEST LO HI
rs_actual_within() {
    local a
    a=$(rs_actual "$1") || return 1
    [ "$a" -ge "$2" ] && [ "$a" -le "$3" ]
}

# rs_cmd GUEST COMMAND [ARG]: sends a command to the guest's ttyS1 and
# prints its acknowledgement (kg_cmd).
rs_cmd() {
    local g=$RS_PREFIX$1
    shift
    kg_cmd "$(rs_socket "$g")" "$(rs_console "$g")" "$*"
}

rs_destroy() { kg_destroy "$RS_PREFIX$1"; }
rs_destroy_all() { kg_destroy_all "$RS_PREFIX"; }

# --- KSM --------------------------------------------------------------------

rs_ksm() { cat "$KB_KSM_DIR/$1"; }

# rs_savings_kib: what KSM saved, read by the test itself: general_profit
# (bytes, net of KSM's own metadata) where the kernel has it, as
# ksm-balloon's default metric does; negative counts as 0.
rs_savings_kib() {
    local p
    if [ -r "$KB_KSM_DIR/general_profit" ]; then
        p=$(rs_ksm general_profit)
        [ "$p" -gt 0 ] && echo $((p / 1024)) || echo 0
    else
        echo $(( ($(rs_ksm pages_sharing) + $(cat "$KB_KSM_DIR/ksm_zero_pages" 2>/dev/null || echo 0)) * $(getconf PAGESIZE) / 1024 ))
    fi
}

# rs_wait_savings_settle SECONDS MIN_KIB: waits until the savings are at
# least MIN_KIB and moved less than 2 MiB over the last 3 s (KSM merged to a
# level). It samples once a second, not kb_wait_until's 0.2 s: "the last 3
# s" is its last 4 samples, so that 1 s is its clock, not a guess.
rs_savings_settled() {
    local min=$1 now
    now=$(rs_savings_kib)
    RS_SAVINGS_HISTORY+=("$now")
    local n=${#RS_SAVINGS_HISTORY[@]}
    [ "$n" -ge 4 ] || return 1
    local old=${RS_SAVINGS_HISTORY[$((n - 4))]}
    [ "$now" -ge "$min" ] && [ $((now > old ? now - old : old - now)) -lt 2048 ]
}
rs_wait_savings_settle() {
    local limit=$1 min=$2 deadline
    RS_SAVINGS_HISTORY=()
    deadline=$(($(date +%s) + limit))
    until rs_savings_settled "$min"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            kb_log "timed out after ${limit}s waiting for KSM savings >= $((min / 1024)) MiB and steady (last $(rs_savings_kib) KiB)"
            return 1
        fi
        sleep 1
    done
}

rs_meminfo_available() { awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo; }

# --- ksm-balloon --------------------------------------------------------------

# rs_write_config: the settings file the hook wrapper and every test pass
# read (KEY=VALUE, as /etc/sysconfig/ksm-balloon).
rs_write_config() {
    mkdir -p "$RS_RUN"
    cat >"$RS_CONFIG" <<CONF
# written by tests/realstack/lib.sh: test-only state, never /var/lib/ksm-balloon
KSM_BALLOON_STATE=$RS_STATE
KSM_BALLOON_CONNECT=$KB_URI
CONF
}

# rs_kb ARGS...: ksm-balloon with the config file's settings (as the timer
# would run it), stdout and stderr as they are.
rs_kb() {
    (
        set -a
        # shellcheck disable=SC1090
        . "$RS_CONFIG"
        set +a
        "$RS_BIN" "$@"
    )
}

# rs_pass LABEL [ARGS...]: one `ksm-balloon [ARGS...] run --json` as the
# timer would run it. Its report (what the pass saw and did) goes to
# RS_PASS_JSON=$RS_RUN/pass-LABEL.json, its log to $RS_RUN/pass-LABEL.out;
# sets RS_PASS_RC. Tests read what the pass did from the report, never
# from the log, which is only shown.
rs_pass() {
    local label=$1
    shift
    rs_pass_with "$label" -- "$@"
}

# rs_pass_with LABEL [PREFIX...] -- [ARGS...]: rs_pass, the binary run
# under PREFIX (a command that runs the rest of its line: `timeout 150`,
# `timeout -s KILL 2.5`, `strace -o FILE`), as the suites that bound,
# kill or trace a pass need.
rs_pass_with() {
    local label=$1 wrap=()
    shift
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        wrap+=("$1")
        shift
    done
    [ $# -gt 0 ] || kb_die "rs_pass_with $label: no -- after the prefix"
    shift
    RS_PASS_JSON=$RS_RUN/pass-$label.json
    (
        set -a
        # shellcheck disable=SC1090
        . "$RS_CONFIG"
        set +a
        exec "${wrap[@]}" "$RS_BIN" "$@" run --json
    ) >"$RS_PASS_JSON" 2>"$RS_RUN/pass-$label.out"
    # shellcheck disable=SC2034 # for the scripts that source this file
    RS_PASS_RC=$?
}

# rs_pass_show LABEL [ARGS...]: rs_pass, then its exit status, its log
# (indented) and its report's table.
rs_pass_show() {
    rs_pass "$@"
    echo "  ksm-balloon run ($1): exit $RS_PASS_RC; its log:"
    sed 's/^/    | /' "$RS_RUN/pass-$1.out"
    [ "$RS_PASS_RC" -ne 0 ] || rs_show_report "$RS_PASS_JSON"
}

# rs_show_report FILE: the report's VMs as a table, for the log (what the
# pass saw of each guest and what it did), then its host figures.
rs_show_report() {
    python3 - "$1" "$RS_PREFIX" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = lambda k: "-" if k is None else f"{k / 1024:.1f}"
print(f"    {'VM':6} {'CURRENT':>8} {'PENDING':>8} {'TARGET':>8} {'ACTION':7} {'REASON':12} {'KEPT':>6} {'SQUEEZED':>8} {'GIVABLE':>8} {'USABLE':>7} {'FREE':>6} FRESH STUCK")
for v in r["vms"]:
    g = v["guest"]
    print(f"    {v['name'].removeprefix(sys.argv[2]):6} {m(v['current_kib']):>8} {m(v['pending_kib']):>8} {m(v['target_kib']):>8} "
          f"{v['action']:7} {v['reason']:12} {m(v['kept_kib']):>6} {m(v['squeezed_kib']):>8} {m(v['givable_kib']):>8} "
          f"{m(g.get('usable_kib')):>7} {m(g.get('unused_kib')):>6} {str(v['guest_stats_fresh']).lower():5} {'yes' if v['stuck'] else '-'}")
c = r["calls"]
print(f"    (MiB) savings {m(r['savings_kib'])}, pool {m(r['pool_kib'])}, host MemAvailable {m(r['host']['available_kib'])}, "
      f"reserve {m(r['reserve_kib'])}, under it {str(r['under_reserve']).lower()} (shortfall {m(r['shortfall_kib'])}), "
      f"recalled {m(r['recalled_kib'])}, kept {m(r['kept_kib'])}, squeezed {m(r['squeezed_kib'])}; "
      f"calls: set_memory {c['set_memory']}, stats_period {c['stats_period']}; hook records {r['hook_records']}")
PY
}

# rs_status_json FILE [ARGS...]: `ksm-balloon [ARGS...] status --json` (what
# a pass would see and do now; nothing changed) into FILE.
rs_status_json() {
    local f=$1
    shift
    KSM_BALLOON_LOG=error rs_kb "$@" status --json >"$f" 2>/dev/null
}

# rs_json FILE EXPR: evaluates the Python expression EXPR over the JSON
# document in FILE: `r` is the document, `vm(GUEST)` its entry in "vms" for
# the suite's guest GUEST (prefix added; fails unless there is exactly one),
# `MIB` is 1024. A bool is the exit status (for checks); anything else is
# printed.
rs_json() {
    python3 - "$1" "$2" "$RS_PREFIX" <<'PY'
import json, sys
path, expr, prefix = sys.argv[1:4]
r = json.load(open(path))
MIB = 1024
def vm(guest):
    hits = [v for v in r["vms"] if v["name"] == prefix + guest]
    if len(hits) != 1:
        sys.exit(f"{path}: {len(hits)} VMs named {prefix + guest}")
    return hits[0]
v = eval(expr)
if isinstance(v, bool):
    sys.exit(0 if v else 1)
print(v)
PY
}

# rs_state_field UUID-or-NAME FIELD: a VM's field in the state file.
rs_state_vm() {
    python3 - "$RS_STATE" "$1" "$2" <<'PY'
import json, sys
path, name, field = sys.argv[1:4]
vms = json.load(open(path))["vms"]
hits = [v for v in vms.values() if v["name"] == name]
if len(hits) != 1:
    sys.exit(1)
print(hits[0][field])
PY
}

# rs_spooled GUEST: the operations of the hook's records for kbrs-GUEST
# still in the spool (the hook drops one file per call; the next pass folds
# them into the state), in the order the hook ran, one per line.
rs_spooled() {
    python3 - "$(dirname "$RS_STATE")/spool" "$RS_PREFIX$1" <<'PY'
import json, os, sys
d, name = sys.argv[1:3]
for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    if not f.endswith(".json"):
        continue
    try:
        rec = json.load(open(os.path.join(d, f)))
    except (OSError, ValueError):
        continue
    if rec.get("domain") == name:
        print(rec["operation"])
PY
}

rs_state_names() {
    python3 -c 'import json,sys; print("\n".join(sorted(v["name"] for v in json.load(open(sys.argv[1]))["vms"].values())))' "$RS_STATE"
}

# rs_balloons_settled [GUEST...]: every managed guest's balloon, as the
# pass reads it (libvirt's bulk stats, which follow QEMU's balloon events,
# throttled to one a second), is within 1 MiB of what the last pass set (or
# of its floor before any pass: then there is no state file yet, and the
# floor is the one status read from the hook's records). A VM the pass
# would skip is not waited for, unless it is a GUEST named: each of those
# must be managed and there, whatever the pass would do (so the wait is not
# met by a hook that recorded nothing, nor by a balloon status calls
# "unsettled", which is on its way somewhere else). Before the first pass
# this is the state to wait for after rs_wait_ready (issue 22: the check
# used to open the state file the first pass writes, and timed out on
# every demo run).
rs_balloons_settled() {
    local report
    report=$(KSM_BALLOON_LOG=error rs_kb status --json 2>/dev/null) || return 1
    python3 - "$RS_STATE" "$report" "$RS_PREFIX" "$@" <<'PY'
import json, os, sys
path, report, prefix, *guests = sys.argv[1:]
state = json.load(open(path))["vms"] if os.path.exists(path) else {}
vms = json.loads(report)["vms"]
named = {prefix + g for g in guests}
if not named <= {vm["name"] for vm in vms if vm["managed"]}:
    sys.exit(1)
for vm in vms:
    if vm["name"] not in named and (vm["action"] == "skip" or not vm["managed"]):
        continue
    rec = state.get(vm["uuid"]) or {}
    want = rec.get("last_target_kib") or vm["floor_kib"]
    if abs(vm["current_kib"] - want) > 1024:
        sys.exit(1)
PY
}

# rs_figures_after EPOCH: status --json says every managed guest that
# reports statistics reported at or after EPOCH (libvirt's last-update).
rs_figures_after() {
    local f=$RS_RUN/figures-after.json
    rs_status_json "$f" || return 1
    rs_json "$f" "all((v['guest']['last_update'] or 0) >= $1 for v in r['vms'] if v['managed'] and v['action'] != 'skip' and v['guest_stats_fresh'])"
}

# rs_recall LABEL MAX [ARGS...]: a recall runs in steps (issue 23), each on
# figures the guest reported after the step before had landed: passes, each
# once the balloons reached what the last set and the guests reported again
# (MOVE_SECS, 3 s, after it), until a pass changes nothing (no resize, no
# guest awaiting its figures, none on its way) or MAX passes ran. The
# reports are RS_RECALL_REPORTS, the last RS_PASS_JSON. Fails when the
# recall did not end within MAX passes or a pass failed.
rs_recall() {
    local label=$1 max=$2 i
    shift 2
    RS_RECALL_REPORTS=()
    for ((i = 1; i <= max; i++)); do
        rs_pass "$label-$i" "$@"
        RS_RECALL_REPORTS+=("$RS_PASS_JSON")
        [ "$RS_PASS_RC" -eq 0 ] || return 1
        if rs_json "$RS_PASS_JSON" "r['resized'] == 0 and not any(v['reason'] in ('awaiting', 'in-flight') or v['pending_kib'] for v in r['vms'] if v['managed'])"; then
            return 0
        fi
        # (a balloon that cannot reach its target stops short: the next
        # pass finds it so, which is the point; 10 s is ten times what a
        # balloon change takes here)
        kb_wait_until 10 "the balloons to reach what pass $label-$i set" rs_balloons_settled || true
        kb_wait_until 30 "the guests to report after pass $label-$i" \
            rs_figures_after "$(($(rs_json "$RS_PASS_JSON" "r['at']") + 3))" || return 1
    done
    kb_log "the recall $label did not end within $max passes"
    return 1
}

# rs_recall_safe REPORT...: every shrink above the reserve in REPORTs was
# one recall step on figures that answered every ask and were at most 3 s
# old (RECALL_FRESH_SECS), never more than what the report says it could
# give; prints the violations.
rs_recall_safe() {
    python3 - "$@" <<'PY'
import json, sys
bad = []
for path in sys.argv[1:]:
    r = json.load(open(path))
    if r["under_reserve"]:
        continue
    for v in r["vms"]:
        if v["action"] != "shrink" or v["reason"] in ("blind-step", "out-of-bounds"):
            continue
        # taken from the balloon's size now (a grow still on its way, handed
        # back, was never the guest's)
        base = min(v["current_kib"], v["pending_kib"] or v["current_kib"])
        step = base - v["target_kib"]
        if step <= 0:
            continue
        if not v["figures_confirmed"] or (v["figures_age_secs"] or 0) > 3 or step > v["givable_kib"]:
            bad.append(f"{path}: {v['name']} shrank {step} KiB on figures {v['figures_age_secs']} s old, confirmed {v['figures_confirmed']}, givable {v['givable_kib']}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
}

# --- the method, computed by the test ----------------------------------------

# rs_expected_bonuses POOL_KIB HEADROOM_KIB...: the split of POOL with each
# share capped at its headroom, what a capped VM cannot take going to the
# others (water-filling, `policy::water_fill`); prints one bonus per VM, in
# order. Equal parts, or by the weights in RS_SPLIT_WEIGHTS (one per VM,
# space-separated: see rs_split_weights).
rs_expected_bonuses() {
    RS_SPLIT_WEIGHTS=${RS_SPLIT_WEIGHTS:-} python3 - "$@" <<'PY'
import os, sys
from fractions import Fraction
pool, caps = int(sys.argv[1]), [int(c) for c in sys.argv[2:]]
weights = [max(1, int(w)) for w in os.environ["RS_SPLIT_WEIGHTS"].split()] or [1] * len(caps)
assert len(weights) == len(caps), "RS_SPLIT_WEIGHTS: one weight per VM"
out, left, weight_left = [0] * len(caps), pool, sum(weights)
for i in sorted(range(len(caps)), key=lambda i: (Fraction(caps[i], weights[i]), i)):
    give = min(left * weights[i] // weight_left, caps[i])
    out[i] = give
    left -= give
    weight_left -= weights[i]
print(" ".join(map(str, out)))
PY
}

# rs_split_weights REPORT GUEST...: each guest's weight (GUEST is the
# domain kbrs-GUEST) in the split the pass REPORT ran (its `policy.split`):
# 1 under `equal`; under `demand` `policy::DEMAND_BASE` (1000, an idle or
# unknown VM) plus its demand; times its metadata weight. The demand is the pass's input (what the guest read),
# not its output: the test still works the split out itself.
rs_split_weights() {
    RS_PREFIX=$RS_PREFIX python3 - "$@" <<'PY'
import json, os, sys
report = json.load(open(sys.argv[1]))
names = [os.environ["RS_PREFIX"] + n for n in sys.argv[2:]]
split = report["policy"]["split"]
vms = {v["name"]: v for v in report["vms"]}
def base(v):
    if split == "equal":
        return 1
    if split == "demand":
        return 1000 + (v.get("demand") or 0)
    sys.exit(f"rs_split_weights: split {split!r}: only equal and demand are worked out here")
print(" ".join(str(base(vms[n]) * vms[n].get("weight", 1)) for n in names))
PY
}

# --- setup, failure reports and teardown ------------------------------------------

# rs_bin [BIN]: sets BIN to the ksm-balloon binary to test: BIN when given,
# else the debug build of the checkout (ksm-balloon and its hook built here,
# in cargo's target directory, wherever CARGO_TARGET_DIR puts it).
rs_bin() {
    if [ -n "${1:-}" ]; then
        BIN=$1
        return
    fi
    (cd "$RS_REPO" && cargo build -q --locked --bin ksm-balloon --bin ksm-balloon-hook) ||
        kb_die "cargo build failed"
    BIN=$(cd "$RS_REPO" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/ksm-balloon
    [ -x "$BIN" ] || kb_die "cargo built no $BIN"
}

# rs_setup BIN: takes the real-stack lock for the rest of the calling shell,
# arms the teardown (EXIT, and Ctrl-C/TERM through it), saves KSM's knobs,
# builds or reuses the guest image, writes the test config, installs the hook
# calling BIN before any guest starts, starts libvirtd, destroys kbrs-*
# guests a crashed run may have left, and unmerges whatever KSM held so the
# run starts from no savings. Sets RS_BIN.
rs_setup() {
    RS_BIN=$(realpath "$1")
    [ -x "$RS_BIN" ] || kb_die "ksm-balloon binary $RS_BIN is missing: build it first"
    local tool
    for tool in virsh qemu-system-x86_64 cpio python3 /usr/sbin/libvirtd /usr/sbin/virtlogd; do
        command -v "$tool" >/dev/null || kb_die "$tool is missing: run tests/deps.sh"
    done
    kb_realstack_lock
    # shellcheck disable=SC2034 # for the suite's timing line
    RS_LOCKED_AT=$(date +%s)
    trap 'rs_teardown' EXIT
    trap 'exit 130' INT TERM
    kb_ksm_save
    rs_build_guest || kb_die "cannot build the guest image"
    mkdir -p "$RS_RUN"
    rm -f "$RS_RUN"/*.console "$RS_RUN"/*.cmd "$RS_RUN"/*.xml "$RS_RUN"/pass-*.out \
        "$RS_RUN"/*.json "$RS_STATE" "$RS_STATE.lock"
    rs_write_config
    kb_install_hook "$RS_BIN" "$RS_CONFIG"
    kb_libvirtd_start
    rs_destroy_all
    # The hook's records of an earlier run, and of what this start did: a
    # run killed mid-way leaves guests whose QEMU died with it, and libvirtd,
    # reconnecting to them, runs the hook's stopped and release for each.
    # Cleared after the destroy, so the suite's first pass folds only its
    # own guests' records. (A CI run that followed a killed session found 3
    # such guests and failed scenario 1 of suite 30; strays in its first
    # pass are the likely cause: the log kept did not show the check.)
    rm -rf "$(dirname "$RS_STATE")/spool"
    kb_ksm_set 2
}

rs_diagnostics() {
    echo "=============== diagnostics"
    kg_diagnostics "$RS_RUN"
    echo "--- state $RS_STATE"
    cat "$RS_STATE" 2>&1 || true
    echo "--- ksm-balloon status"
    rs_kb status 2>&1 || true
    echo "=============== end of diagnostics; what failed or timed out so far:"
    [ ${#KB_FAILURES[@]} -eq 0 ] || printf '  - %s\n' "${KB_FAILURES[@]}"
}

# rs_teardown: guests destroyed, KSM as found, hook removed. Safe to call
# twice and from a trap.
rs_teardown() {
    trap - EXIT INT TERM
    kb_log "teardown: destroying ${RS_PREFIX}* guests, restoring KSM, removing the hook"
    if kb_libvirtd_alive; then
        rs_destroy_all
    else
        # libvirtd is down (a test stopped it): kill our QEMUs by their pid files.
        local p
        for p in /run/libvirt/qemu/"$RS_PREFIX"*.pid; do
            [ -e "$p" ] && kill "$(cat "$p")" 2>/dev/null
        done
    fi
    kb_ksm_restore
    kb_remove_hook
}
