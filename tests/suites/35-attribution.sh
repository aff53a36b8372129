#!/usr/bin/env bash
# Issue 14's per-process KSM figures on the real kernel: the identities the
# attribution rests on (tests/realstack/ksm-sums.sh, host processes only),
# then the three-guest scenario with a host process outside libvirt
# (tests/realstack/attribution.sh). Both take the real-stack lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/realstack/ksm-sums.sh
bash tests/realstack/attribution.sh
