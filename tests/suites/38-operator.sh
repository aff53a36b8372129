#!/usr/bin/env bash
# The operator's controls and view, with the real tools: Debian's
# node_exporter serves the metrics file while it is rewritten
# (tests/metrics/node-exporter.sh); the metadata examples of
# docs/METADATA.md run on a real libvirtd, validate against the schema and
# are read by `ksm-balloon reload` (tests/metadata/virsh-examples.sh); and
# four real guests under real passes: manage="no" never resized, weight 2
# twice the bonus of weight 1, a balloon set by hand left alone until
# released, metadata changed live and reloaded, node_exporter serving every
# pass's metrics file whole (tests/realstack/operator.sh). The last two take
# the real-stack lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
KB_SCRAPE_SECONDS=10 bash tests/metrics/node-exporter.sh
bash tests/metadata/virsh-examples.sh
bash tests/realstack/operator.sh
