#!/usr/bin/env bash
# The real-stack suite (tests/realstack/suite.sh): a real libvirtd, QEMU
# guests with virtio balloons and the host's KSM; issue 3's scenarios 1-8
# and issue 6's savings collapse, on the binary run-all.sh just built.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/realstack/suite.sh target/debug/ksm-balloon
