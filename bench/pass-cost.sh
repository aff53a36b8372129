#!/usr/bin/env bash
# Part 2 of docs/BENCHMARKS.md, the cost of one ksm-balloon pass, in one
# command:
#
#   bench/pass-cost.sh            the full version (committed results)
#   bench/pass-cost.sh --short    the CI version (tests/suites/60-bench-short.sh)
#   bench/pass-cost.sh --test-only / --qemu-only
#
# 1. libvirt's test driver with generated node XMLs, N = 1, 10, 100, 1000
#    (short: 1, 10, 100): wall, CPU, peak RSS and libvirt calls of one
#    `ksm-balloon run` in the first / steady / grown situations, and one
#    tick of the per-VM virsh alternative (bench/pass_cost.py).
# 2. the real stack (qemu:///system): the I/O rig's guests (bench/lib.sh),
#    N = 3 (KBB_PASS_GUESTS), the same situations and alternative, with
#    libvirtd's CPU time too. Holds the real-stack lock; destroys its guests
#    and leaves KSM as found.
# Then draws docs/bench/pass-cost.svg (full version only).
#
# Every count is checked (--check): one bulk read whatever N, N writes in
# first, none in steady, N in grown, the tool's counts equal libvirt's
# client log. Timings are printed, never asserted.
#
# Results: bench/results/pass-cost-{test,qemu}.{json,md} (full), or
# $KBB_OUT (default /tmp/ksm-balloon-bench-short) for --short.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

short=0 do_test=1 do_qemu=1
for a in "$@"; do
    case $a in
        --short) short=1 ;;
        --test-only) do_qemu=0 ;;
        --qemu-only) do_test=0 ;;
        *) echo "usage: bench/pass-cost.sh [--short] [--test-only|--qemu-only]" >&2; exit 2 ;;
    esac
done

if [ $short = 1 ]; then
    out=${KBB_OUT:-/tmp/ksm-balloon-bench-short}
    ns=1,10,100 repeat=1 alt_repeat=1 alt_max=10
else
    out=$REPO/bench/results
    ns=1,10,100,1000 repeat=5 alt_repeat=3 alt_max=100
fi
mkdir -p "$out"
PY=/usr/bin/python3
started=$(date +%s)

# The full version measures the release build. The short one only keeps
# the scripts from rotting, so it takes the debug build run-all.sh already
# made (no second, release, compile in CI).
# shellcheck source=bench/lib.sh
. bench/lib.sh
kbb_pick_bin $short

if [ $do_test = 1 ]; then
    echo "=== pass cost, libvirt test driver, N = $ns"
    # The per-process alternative opens one connection per virsh call and
    # the test driver parses the whole node XML at every connection (0.35 s
    # at N = 1000 on the reference machine): above alt_max that tick would
    # take over ten minutes and measure the parser, so it is not run there.
    # the node XMLs come from the generator the Rust tests use
    cargo build --locked --quiet --example testdriver-node
    "$PY" bench/pass_cost.py --driver test --n "$ns" --repeat "$repeat" \
        --alt-repeat "$alt_repeat" --alt-process-max-n "$alt_max" --bin "$BIN" --check \
        --node-xml-bin "$REPO/target/debug/examples/testdriver-node" \
        --json "$out/pass-cost-test.json" --markdown "$out/pass-cost-test.md"
fi

if [ $do_qemu = 1 ]; then
    echo "=== pass cost, real stack (qemu:///system)"
    # shellcheck source=tests/lib/libvirtd.sh
    . tests/lib/libvirtd.sh
    kb_realstack_lock
    kb_ksm_save
    cleanup() {
        local rc=$?
        trap - EXIT INT TERM
        [ $rc = 0 ] || kbb_diagnostics
        kbb_destroy_all
        kb_ksm_restore
        exit $rc
    }
    trap cleanup EXIT INT TERM
    kb_libvirtd_start
    kbb_destroy_all
    kbb_build_guest
    n=${KBB_PASS_GUESTS:-3}
    mapfile -t names < <(kbb_names "$n")
    for ((i = 0; i < n; i++)); do kbb_boot "$i" "$KBB_FLOOR_MIB"; done
    kbb_wait_reading 300 "${names[@]}" || kb_die "the bench guests did not start"
    kbb_wait_boot_size 120 "${names[@]}" || kb_die "the bench guests' balloons did not reach their floors"
    others=$(kbb_virsh list --name | grep -v "^$KBB_PREFIX" | grep -c . || true)
    [ "$others" = 0 ] || kb_die "other guests are running on $KB_URI: ksm-balloon would manage them too"
    "$PY" bench/pass_cost.py --driver qemu --uri "$KB_URI" --domains "$(IFS=,; echo "${names[*]}")" \
        --repeat "$repeat" --alt-repeat "$alt_repeat" --bin "$BIN" --check \
        --json "$out/pass-cost-qemu.json" --markdown "$out/pass-cost-qemu.md"
fi

if [ $short = 0 ] && [ -e "$out/pass-cost-test.json" ]; then
    "$PY" bench/plot_pass_cost.py "$out"/pass-cost-*.json --svg docs/bench/pass-cost.svg
fi
echo "pass-cost: done in $(( $(date +%s) - started ))s; results in $out"
