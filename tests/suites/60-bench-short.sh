#!/usr/bin/env bash
# The benchmarks' short version (docs/BENCHMARKS.md), so the scripts
# cannot rot: the pass cost on the test driver (N = 1, 10, 100) and on the
# real stack (3 guests), every libvirt call count checked; then one short
# repeat of the I/O arms a, c and d on the identical rig, and of the
# equal and demand splits and the demand split's static oracle (c, e, oe)
# on the mixed rig, each checked for completeness and for behaving as it
# says (KSM off/on, balloons at floor/ceiling/the oracle's sizes,
# ksm-balloon growing the guests in c and the reader in e); then a one-minute
# savings trace, replayed. Speeds are printed, never asserted. Results go
# to $KBB_OUT (default /tmp/ksm-balloon-bench-short), never over the
# committed ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
export KBB_OUT=${KBB_OUT:-/tmp/ksm-balloon-bench-short}
rm -rf "$KBB_OUT"
bash bench/pass-cost.sh --short
# Each rig's arms under one hold of the real-stack lock (--lock-span rig):
# on a machine where other suites queue for the lock, releasing it between
# the 7 arms let them in 6 times, each wait as long as their whole run (a
# run of this suite on the shared machine waited 11 min before one arm);
# the lock is still released between the rigs. On a CI machine of its own
# nothing changes.
# Arm b (KSM on, no ksm-balloon, balloons at the floor) is left out of the
# short version (about 70 s of CI): its code path is arm a's boot with
# KSM on, which the mixed rig's arm oe runs and checks ("KSM on, no
# balloon grows without ksm-balloon"); the full benchmark runs it.
bash bench/io-effect.sh --short --lock-span rig --arms a,c,d
bash bench/io-effect.sh --short --lock-span rig --rig mixed --arms c,e,oe --out "$KBB_OUT/io-demand"
bash bench/record-savings.sh --duration 60 --out "$KBB_OUT/savings-trace.csv"
cargo run --locked --quiet --example replay -- "$KBB_OUT/savings-trace.csv"
