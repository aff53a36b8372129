#!/usr/bin/env bash
# The benchmarks' short version (docs/BENCHMARKS.md), so the scripts
# cannot rot: the pass cost on the test driver (N = 1, 10, 100) and on the
# real stack (3 guests), every libvirt call count checked; then one short
# repeat (5 s warm-up, 10 s measured) of the I/O arms c and d on the
# identical rig, and of the demand split and its static oracle (e, oe) on
# the mixed rig, each checked for completeness and for behaving as it
# says (KSM off/on, balloons at floor/ceiling/the oracle's sizes,
# ksm-balloon growing the guests in c and the reader in e); then a
# 30-second savings trace, replayed. Speeds are printed, never asserted.
# Results go to $KBB_OUT (default /tmp/ksm-balloon-bench-short), never
# over the committed ones.
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
# Arms left out of the short version, each an arm whose code path another
# arm here runs and checks; the full benchmarks run them all:
# - b (KSM on, no ksm-balloon, balloons at the floor; about 70 s of CI):
#   the floor boot with KSM on, which the mixed rig's arm oe runs and
#   checks ("KSM on, no balloon grows without ksm-balloon");
# - a (static floor, KSM off; about 35 s): the floor boot is c's (checked:
#   ksm-balloon recorded every guest at the floor and its first resize
#   started there), a static arm with KSM off is d (checked: every balloon
#   at its boot size, KSM saved nothing);
# - c on the mixed rig (about 35 s): the same equal split as c on the
#   identical rig, idle guests booted as in e and oe.
# What goes with them: the short run no longer prints c against a, nor the
# demand split against the equal one (its figures were never asserted).
bash bench/io-effect.sh --short --lock-span rig --arms c,d
bash bench/io-effect.sh --short --lock-span rig --rig mixed --arms e,oe --out "$KBB_OUT/io-demand"
# 30 s: the schedule is in fractions of the duration (14 changes), the
# trace 4 samples; enough for the recorder and the replay to run end to
# end (the committed trace is 600 s).
bash bench/record-savings.sh --duration 30 --out "$KBB_OUT/savings-trace.csv"
cargo run --locked --quiet --example replay -- "$KBB_OUT/savings-trace.csv"
