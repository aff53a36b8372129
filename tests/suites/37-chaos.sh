#!/usr/bin/env bash
# Issue 18's chaos soak, its short form for CI (tests/realstack/chaos.sh):
# 120 s of faults (about 3 min with the guests' boot and the end), up
# to 4 guests, every kind of fault injected at least once
# (guests' memory and disk reads, KSM merging and unmerging, VMs started
# and stopped, passes SIGKILLed at random points, libvirtd restarted, a
# QEMU stopped and continued, the spool flooded past its cap), the
# invariants checked after every pass from its report. The seed is the
# clock's (printed; KB_CHAOS_SEED fixes it). The long form (35 minutes, 12
# guests) and its figures: docs/RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
# the checker first: each invariant broken on purpose must be reported
python3 tests/realstack/chaos_check_test.py
bash tests/realstack/chaos.sh --seconds "${KB_CHAOS_SECONDS:-120}" --guests "${KB_CHAOS_GUESTS:-4}" \
    ${KB_CHAOS_SEED:+--seed "$KB_CHAOS_SEED"} target/debug/ksm-balloon
