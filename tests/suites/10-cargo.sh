#!/usr/bin/env bash
# Unit, table, property, golden fake-root and libvirt test-driver tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test --locked --all-targets
