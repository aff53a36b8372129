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
# 5 s per writer: about 1,800 clean scrapes of the atomic writer's file and
# some thousand torn ones caught from the in-place writer (10 s gave 3,620
# and 3,025 of 4,381 in CI B); KB_SCRAPE_SECONDS=10 or more by hand.
KB_SCRAPE_SECONDS=5 bash tests/metrics/node-exporter.sh
bash tests/metadata/virsh-examples.sh
bash tests/realstack/operator.sh
