#!/usr/bin/env bash
# The real-stack harness's waits against libvirt's test driver, with the
# built binary: no guest, no KSM, no real-stack lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/harness-waits.sh target/debug/ksm-balloon
