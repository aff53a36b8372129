#!/usr/bin/env bash
# The operator's view, with the real tools: Debian's node_exporter serves
# the metrics file while it is rewritten (tests/metrics/node-exporter.sh),
# and the metadata examples of docs/METADATA.md run on a real libvirtd and
# validate against the schema (tests/metadata/virsh-examples.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
KB_SCRAPE_SECONDS=10 bash tests/metrics/node-exporter.sh
bash tests/metadata/virsh-examples.sh
