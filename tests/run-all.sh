#!/usr/bin/env bash
# The whole test suite: the README's test command. Run as root on a fresh
# Debian 12 machine: it installs what it needs (tests/deps.sh), starts
# libvirtd and virtlogd itself, and fails on anything missing: no test skips.
#
# It runs every tests/suites/NN-*.sh in order; each is a standalone script
# that exits non-zero on failure. `tests/run-all.sh NN` runs only the suites
# whose names start with NN.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
# Before the packages: a missing toolchain is said at once, not after minutes of apt.
command -v cargo >/dev/null ||
    { echo "run-all.sh: cargo is not on PATH: install a Rust toolchain, 1.75 or newer (rustup), as root, or 'sudo -i' to get root's own PATH" >&2; exit 1; }
bash tests/deps.sh
cargo build --locked --quiet

declare -a results=()
failed=0
for suite in tests/suites/"${1:-}"*.sh; do
    name=$(basename "$suite" .sh)
    printf '\n=== %s (%s)\n' "$name" "$(date -u +%H:%M:%S)"
    t0=$(date +%s)
    if bash "$suite"; then
        results+=("ok    $name ($(( $(date +%s) - t0 ))s)")
    else
        results+=("FAIL  $name ($(( $(date +%s) - t0 ))s)")
        failed=1
    fi
done

printf '\n=== summary\n'
printf '%s\n' "${results[@]}"
printf 'total %ss\n' "$(( $(date +%s) - started ))"
exit "$failed"
