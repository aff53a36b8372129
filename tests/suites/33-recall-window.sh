#!/usr/bin/env bash
# Issue 23's real-stack scenario (tests/realstack/recall-window.sh): the
# guests' applications grow right after they report, KSM unmerges right
# after, passes every 5 s: no guest meets the OOM killer or panics, every
# recall step is taken on figures that answer every ask. One repeat here,
# for CI's time (each is about 105 s); docs/RELIABILITY.md has a run of ten.
set -euo pipefail
cd "$(dirname "$0")/../.."
# KB_RECALL_WINDOW_REPEATS=10 for the closing note's run.
bash tests/realstack/recall-window.sh --repeats "${KB_RECALL_WINDOW_REPEATS:-1}" target/debug/ksm-balloon
