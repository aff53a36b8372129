#!/usr/bin/env bash
# The whole test suite: the README's test command. Run as root on a fresh
# Debian 12 machine; it installs what it needs (tests/deps.sh), starts
# libvirtd and virtlogd itself, and fails on anything missing: no test skips.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
started=$(date +%s)

step "dependencies"
bash tests/deps.sh

step "unit, property, fake-root and test-driver tests (cargo test)"
cargo test --locked --all-targets

step "exit codes (shell)"
cargo build --locked --quiet
bash tests/exit-codes.sh target/debug/ksm-balloon

printf '\nall tests passed in %ss\n' "$(( $(date +%s) - started ))"
