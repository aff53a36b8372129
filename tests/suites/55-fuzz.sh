#!/usr/bin/env bash
# Bounded fuzzing of the parsers (fuzz/, cargo-fuzz + libFuzzer with
# AddressSanitizer): the state file, the hook's domain XML, the command
# line, the KSM counter files, /proc/meminfo, the per-process KSM files and
# the per-VM metadata. Each target runs for
# KB_FUZZ_SECS seconds (default 15: CI's budget; KB_FUZZ_SECS=30 or more
# for a longer run, e.g. before a release), KB_FUZZ_JOBS at a time
# (default: one per core), from the seed corpus in fuzz/corpus/<target>
# (copied: the committed corpus is never changed). A crash fails the suite
# and leaves its input in fuzz/artifacts/<target>/. Prints executions per target.
#
# cargo-fuzz needs nightly flags (-Zsanitizer); the machine's stable
# toolchain allows them with RUSTC_BOOTSTRAP=1. cargo-fuzz is installed from
# crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${KB_FUZZ_SECS:-15}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "55-fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz@0.13.2 >/dev/null 2>&1 ||
        { echo "55-fuzz: FAIL: cannot install cargo-fuzz"; exit 1; }
fi

cd fuzz
cargo fuzz build >/dev/null 2>&1 || { cargo fuzz build; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# count DIR: the files in DIR.
count() { find "$1" -mindepth 1 -maxdepth 1 | wc -l; }
# fuzz TARGET: runs TARGET for $secs seconds into $work/TARGET, its log in
# $work/TARGET.log and "ok" or "CRASH" in $work/TARGET.status.
fuzz() {
    local target=$1 status=ok
    mkdir -p "$work/$target"
    cargo fuzz run "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$work/$target.log" 2>&1 || status=CRASH
    echo "$status" >"$work/$target.status"
}
# libFuzzer runs one target on one core: the targets run $jobs at a time
# (default: one per core), each still for $secs seconds, so a 2-core
# machine fuzzes as much in half the time.
jobs=${KB_FUZZ_JOBS:-$(nproc)}
mapfile -t targets < <(cargo fuzz list)
for target in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    fuzz "$target" &
done
wait
total=0
failed=0
summary=()
for target in "${targets[@]}"; do
    log="$work/$target.log"
    status=$(cat "$work/$target.status" 2>/dev/null || echo CRASH)
    if [ "$status" != ok ]; then
        failed=1
        grep -E 'panicked|ERROR: AddressSanitizer|SUMMARY|artifact|Test unit written' "$log" | head -20
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    total=$((total + ${execs:-0}))
    summary+=("$(printf '%-14s %-5s %10s executions in %ss, corpus %s -> %s inputs' \
        "$target" "$status" "${execs:-?}" "$secs" "$(count "corpus/$target")" \
        "$(( $(count "$work/$target") + $(count "corpus/$target") ))")")
done
printf '%s\n' "${summary[@]}"
echo "55-fuzz: $total executions in all, $([ "$failed" = 0 ] && echo 0 || echo some) crashes"
exit "$failed"
