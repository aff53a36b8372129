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
# stdout to LOGFILE; the exit code must be CODE and the log match PATTERN.
kb_rel_expect() {
    local code=$1 pattern=$2 log=$3 rc
    shift 4
    "$@" >"$log" 2>&1
    rc=$?
    if [ "$rc" -ne "$code" ]; then
        sed 's/^/    /' "$log" >&2
        kb_die "exit $rc, expected $code: $*"
    fi
    if ! grep -Eq -- "$pattern" "$log"; then
        sed 's/^/    /' "$log" >&2
        kb_die "output lacks /$pattern/: $*"
    fi
    kb_log "ok: exit $code, /$pattern/: ${*: -1}"
}
