#!/usr/bin/env bash
# Issue 18 on the real stack (tests/realstack/actuation.sh): guests created
# with no hook installed, passes from their first second: each adopted with
# its boot size as floor, none held by hand, each lent to once KSM merges;
# then one guest's QEMU stopped (SIGSTOP) while the savings fall: the pass
# ends within its bound, the others reach their new targets in that pass,
# the stopped one is named, and after SIGCONT it is managed again within two
# passes; then a pass SIGKILLed right after its resizes leaves no VM held
# by hand. A real libvirtd, QEMU guests and the host's KSM, on the binary
# run-all.sh just built.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/realstack/actuation.sh target/debug/ksm-balloon
