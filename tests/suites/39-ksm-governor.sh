#!/usr/bin/env bash
# Issue 21's KSM governor on the real stack (tests/realstack/governor.sh):
# observe never writes to /sys/kernel/mm/ksm (strace); manage turns KSM on
# and sets the scan rate; another writer makes it step back; back to
# observe restores the operator's knobs. Takes the real-stack lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/realstack/governor.sh
