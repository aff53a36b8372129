#!/usr/bin/env bash
# The flake hunt (issue 25): runs chosen suites N times each, every run from
# a fresh clone of the repository at one commit, as CI runs them (a clean
# checkout with ../shared beside it, `bash tests/run-all.sh NN` as root),
# and prints each suite's pass rate and the first lines of each failure.
#
# Usage (as root): tests/flake-hunt.sh [--runs N] [--load] [--rev REV]
#                      [--logs DIR] [--keep] SUITE...
#   SUITE       a suite's number or name prefix, as run-all.sh takes it
#               (60, 60-bench-short, 3 for every 3x suite)
#   --runs N    runs per suite (default 3)
#   --load      a competing CPU load for the whole hunt: one busy core (a
#               shell spinning), as a noisy neighbour on a CI machine
#   --rev REV   the commit to clone (default HEAD of this checkout; a
#               dirty working tree is not what runs: commit first)
#   --logs DIR  where each run's whole output is kept (default
#               /tmp/kb-flake-hunt-<time>); clones are removed after each run
#   --keep      keep each run's clone too (for a post-mortem)
#
# It does not take the real-stack lock: the suites take it themselves, so a
# hunt queues behind other suites on the machine like any run (the time
# waiting for it is part of a run's time; the suites print it). Each
# clone's benchmark output goes to its own KBB_OUT, so a hunt never
# deletes the results of another run of 60-bench-short on the machine.
#
# Output: one line per run (suite, run, ok/FAIL, seconds), on a failure its
# first failing lines (CHECK FAILED, FAIL, timed out), and per suite:
#   flake-hunt: 60-bench-short at 1a2b3c4: 5/5 passed (100 %), no load, 598-640 s
# plus a row for the table of docs/TESTING.md (cause and fix to fill in).
# Exits 1 when any run failed. Stopped (INT, TERM), it stops the suite it
# is running too (TERM to the run's process group: the suite's own traps
# destroy its guests and free the real-stack lock) before it exits.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

runs=3 load=0 rev=HEAD logs='' keep=0 suites=()
usage() {
    echo "usage: tests/flake-hunt.sh [--runs N] [--load] [--rev REV] [--logs DIR] [--keep] SUITE..." >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
        --runs) [ $# -ge 2 ] || usage; runs=$2; shift ;;
        --load) load=1 ;;
        --rev) [ $# -ge 2 ] || usage; rev=$2; shift ;;
        --logs) [ $# -ge 2 ] || usage; logs=$2; shift ;;
        --keep) keep=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) usage ;;
        *) suites+=("$1") ;;
    esac
    shift
done
[ ${#suites[@]} -gt 0 ] || usage
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "flake-hunt: --runs wants a positive number, not '$runs'" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "flake-hunt: run it as root, as CI runs the suites" >&2; exit 1; }
sha=$(git -C "$repo" rev-parse --verify "$rev^{commit}") ||
    { echo "flake-hunt: no commit '$rev' in $repo" >&2; exit 2; }
short=$(git -C "$repo" rev-parse --short "$sha")
# CI has the shared directory (the paper, the style guide) beside its clone.
shared=$(realpath -m "$repo/../shared")
[ -d "$shared" ] || { echo "flake-hunt: $shared (../shared beside the checkout) is missing" >&2; exit 1; }
for s in "${suites[@]}"; do
    compgen -G "$repo/tests/suites/$s*.sh" >/dev/null ||
        { echo "flake-hunt: no suite tests/suites/$s*.sh" >&2; exit 2; }
done
logs=${logs:-/tmp/kb-flake-hunt-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$logs"

log() { printf '[%s] flake-hunt: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

loader='' work='' run_pid='' finished=0
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ "$finished" = 1 ] || log "stopped early (exit $rc)${work:+ with $work in use}"
    if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
        # the run is a process group of its own (setsid): stop all of it
        log "stopping the running suite (process group $run_pid)"
        kill -TERM -- "-$run_pid" 2>/dev/null || true
        wait "$run_pid" 2>/dev/null || true
    fi
    if [ -n "$loader" ]; then
        kill "$loader" 2>/dev/null || true
        wait "$loader" 2>/dev/null || true
    fi
    if [ -n "$work" ] && [ "$keep" = 0 ]; then rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# a command of the hunt itself that fails says where (set -e then ends it)
trap 'log "line $LINENO failed: $BASH_COMMAND"' ERR

loadnote='no load' loadrow=''
if [ "$load" = 1 ]; then
    loadnote='one busy core' loadrow=' (one busy core)'
    # one busy core for the whole hunt: the loop never sleeps
    sh -c 'while :; do :; done' &
    loader=$!
    log "competing load: one busy core (pid $loader)"
fi

failed=0
summary=() rows=()
for s in "${suites[@]}"; do
    name=$(basename "$(compgen -G "$repo/tests/suites/$s*.sh" | head -n1)" .sh)
    [ "$(compgen -G "$repo/tests/suites/$s*.sh" | wc -l)" = 1 ] || name="$s*"
    pass=0 times=() firsts=()
    for ((i = 1; i <= runs; i++)); do
        work=$(mktemp -d /tmp/kb-flake.XXXXXX)
        ln -s "$shared" "$work/shared"
        out=$logs/$name-run$i.log
        git clone -q --no-checkout "$repo" "$work/ksm-balloon"
        git -C "$work/ksm-balloon" checkout -q --detach "$sha"
        log "$name run $i/$runs at $short in $work/ksm-balloon, $loadnote"
        t0=$(date +%s)
        rc=0
        # in a session of its own, so a stopped hunt can stop all of it
        (cd "$work/ksm-balloon" && KBB_OUT=$work/bench-out exec setsid bash tests/run-all.sh "$s") >"$out" 2>&1 &
        run_pid=$!
        wait "$run_pid" || rc=$?
        run_pid=''
        dt=$(( $(date +%s) - t0 ))
        times+=("$dt")
        if [ "$rc" = 0 ]; then
            pass=$((pass + 1))
            log "$name run $i/$runs: ok in ${dt}s ($(grep -E '^(ok|FAIL) +[0-9]{2}-' "$out" | tr '\n' ' '))"
        else
            failed=1
            first=$(grep -m 8 -E 'CHECK FAILED|FAIL|timed out|panicked' "$out" || tail -n 8 "$out")
            firsts+=("run $i: $(head -n1 <<<"$first")")
            log "$name run $i/$runs: FAILED (exit $rc) in ${dt}s; first failing lines (whole log: $out):"
            sed 's/^/    | /' <<<"$first"
        fi
        if [ "$keep" = 0 ]; then rm -rf "$work"; else log "kept $work"; fi
        work=''
    done
    range=$(printf '%s\n' "${times[@]}" | sort -n | sed -n '1p;$p' | uniq | paste -sd- -)
    summary+=("flake-hunt: $name at $short: $pass/$runs passed ($((100 * pass / runs)) %), $loadnote, ${range} s per run")
    for f in "${firsts[@]}"; do summary+=("    $f"); done
    rows+=("| $name$loadrow | $runs | $pass | $((runs - pass)) | | | $short |")
done

printf '\n'
printf '%s\n' "${summary[@]}"
printf '\nfor docs/TESTING.md (suite | runs | passes | failures | cause | fix | commit):\n'
printf '%s\n' "${rows[@]}"
log "logs in $logs"
finished=1
exit "$failed"
