#!/usr/bin/env bash
# Issue 13's real-stack scenarios of the demand split (tests/realstack/demand.sh):
# a busy guest among idle ones gets most of the pool, the pool follows when
# another gets busy without recalling what applications hold, and a guest
# without statistics counts as the average; on the binary run-all.sh built.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/realstack/demand.sh target/debug/ksm-balloon
