#!/usr/bin/env bash
# ksm-balloon on a real systemd (tests/systemd/suite.sh): a Debian 12 system
# booted with systemd as PID 1 in a systemd-nspawn container, the RPM of
# this commit installed there (the one 40-packaging built, or one built now),
# libvirtd started by systemd, QEMU guests, the host's KSM; issue 10's
# scenarios: the timer's period, VM starts never delayed by a pass, the
# hook's cost, libvirtd restarts and a host boot storm.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/systemd/suite.sh
