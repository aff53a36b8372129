#!/usr/bin/env bash
# Bad usage exits 2, runtime failures exit 1, against the built binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/exit-codes.sh target/debug/ksm-balloon
