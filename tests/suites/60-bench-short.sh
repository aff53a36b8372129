#!/usr/bin/env bash
# The benchmarks' short version (docs/BENCHMARKS.md), so the scripts
# cannot rot: the pass cost on the test driver (N = 1, 10, 100) and on the
# real stack (3 guests), every libvirt call count checked; then one short
# repeat of each I/O arm (a, b, c, d), checked for completeness and for
# each arm behaving as it says (KSM off/on, balloons at floor/ceiling,
# ksm-balloon growing the guests in arm c). Speeds are printed, never
# asserted. Results go to $KBB_OUT (default /tmp/ksm-balloon-bench-short),
# never over the committed ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
export KBB_OUT=${KBB_OUT:-/tmp/ksm-balloon-bench-short}
rm -rf "$KBB_OUT"
bash bench/pass-cost.sh --short
bash bench/io-effect.sh --short
