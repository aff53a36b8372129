# shellcheck shell=bash
# Shared helpers for the shell reliability scenarios (tests/reliability/*.sh):
# a throw-away fake host, the invariants checker (the Rust one in
# tests/common, run through tests/invariants.rs check_from_env), and checks
# that print what they compared. Source it after tests/lib/libvirtd.sh.

KB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KB_BIN=${KB_BIN:-$KB_REPO/target/debug/ksm-balloon}

# kb_rel_check STATE [URI] [PRESENT] [ABSENT] [REPORTS] [ALLOW]: runs the
# invariants checker; PRESENT/ABSENT are 'name=uuid=floor=ceiling;...',
# REPORTS a ':'-separated list of files holding pass reports (`run --json`
# stdout; an empty file is a pass that failed and printed none), every
# resize in them checked against its VM's bounds; ALLOW prefixes of files
# the state directory may hold besides the state, its lock and the spool.
kb_rel_check() {
    local out rc
    out=$(cd "$KB_REPO" && KB_CHECK_STATE=$1 KB_CHECK_URI=${2:-} KB_CHECK_PRESENT=${3:-} \
        KB_CHECK_ABSENT=${4:-} KB_CHECK_REPORTS=${5:-} KB_CHECK_ALLOW=${6:-} \
        cargo test --locked --quiet --test invariants -- --ignored --exact check_from_env --nocapture 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '%s\n' "$out" | grep -v '^\s*[0-9]*: \|^\s*at ' >&2
        kb_die "invariants do not hold on $1"
    fi
    kb_log "$(printf '%s\n' "$out" | grep 'invariants hold')"
}

# kb_rel_same FILE SHA WHAT: the file's sha256 must still be SHA.
kb_rel_same() {
    local now
    now=$(sha256sum "$1" | cut -d' ' -f1)
    [ "$now" = "$2" ] || kb_die "$3: $1 changed ($2 -> $now)"
    kb_log "ok: $3: $1 byte-identical"
}

# kb_rel_expect CODE PATTERN LOGFILE -- CMD...: runs CMD with stderr and
# stdout to LOGFILE; the exit code must be CODE and the output match
# PATTERN (unless it is empty). For error messages (the error contract) and the hook's problem
# lines only: what a pass did is read from its report (kb_rel_pass).
kb_rel_expect() {
    local code=$1 pattern=$2 log=$3 rc
    shift 4
    "$@" >"$log" 2>&1
    rc=$?
    if [ "$rc" -ne "$code" ]; then
        sed 's/^/    /' "$log" >&2
        kb_die "exit $rc, expected $code: $*"
    fi
    if [ -n "$pattern" ] && ! grep -Eq -- "$pattern" "$log"; then
        sed 's/^/    /' "$log" >&2
        kb_die "output lacks /$pattern/: $*"
    fi
    kb_log "ok: exit $code${pattern:+, /$pattern/}: $*"
}

# kb_rel_pass CODE PATTERN NAME [ARGS...]: one `ksm-balloon [ARGS...] run
# --json`, its report (stdout) to NAME.json and its log (stderr) to NAME.log;
# the exit code must be CODE and, when PATTERN is not empty, the log must
# match it (an error message: the error contract). What the pass did is
# judged from NAME.json (kb_rel_report), never from the log.
kb_rel_pass() {
    local code=$1 pattern=$2 name=$3 rc
    shift 3
    "$KB_BIN" "$@" run --json >"$name.json" 2>"$name.log"
    rc=$?
    if [ "$rc" -ne "$code" ]; then
        sed 's/^/    /' "$name.log" >&2
        kb_die "run exited $rc, expected $code ($name)"
    fi
    if [ -n "$pattern" ] && ! grep -Eq -- "$pattern" "$name.log"; then
        sed 's/^/    /' "$name.log" >&2
        kb_die "run's stderr lacks /$pattern/ ($name)"
    fi
    kb_log "ok: run exit $code${pattern:+, /$pattern/} ($(basename "$name"))"
}

# kb_rel_report FILE WHAT EXPR: the Python expression EXPR over the pass
# report in FILE must be true: `r` is the report, `vm(NAME)` its entry in
# "vms" for the active domain NAME (exactly one), `calls` its libvirt call
# counts. Dies naming WHAT otherwise.
kb_rel_report() {
    if ! python3 - "$1" "$3" <<'PY'
import json, sys
path, expr = sys.argv[1:3]
try:
    r = json.load(open(path))
except (OSError, ValueError) as e:
    sys.exit(f"{path}: not a pass report: {e}")
calls = r["calls"]
def vm(name):
    hits = [v for v in r["vms"] if v["name"] == name]
    if len(hits) != 1:
        sys.exit(f"{path}: {len(hits)} VMs named {name!r}")
    return hits[0]
if not eval(expr):
    print(f"{path}: false: {expr}", file=sys.stderr)
    print(f"  calls {calls}, hook_records {r['hook_records']}, resized {r['resized']}, failed {r['failed']}", file=sys.stderr)
    for v in r["vms"]:
        print(f"  VM {v['name']!r}: {v['current_kib']} -> {v['target_kib']} KiB, {v['action']} ({v['reason']}), adopted {v['adopted']}, error {v['error']}", file=sys.stderr)
    sys.exit(1)
PY
    then
        kb_die "$2"
    fi
    kb_log "ok: $2 ($(basename "$1"): $3)"
}
