#!/usr/bin/env bash
# Issue 11's real-stack scenarios (tests/realstack/loans.sh): the bonus is a
# loan, recalled only as far as each guest can give it back; under the
# reserve the host gets its shortfall; guests without statistics; a balloon
# that does not reach its target. A real libvirtd, QEMU guests with virtio
# balloons and the host's KSM, on the binary run-all.sh just built.
set -euo pipefail
cd "$(dirname "$0")/../.."
# KB_LOANS_SCENARIOS="1" runs scenario 1 alone (repeated runs of it).
bash tests/realstack/loans.sh --scenarios "${KB_LOANS_SCENARIOS:-1 2 3 4 5 6}" target/debug/ksm-balloon
