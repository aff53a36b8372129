#!/usr/bin/env bash
# Installs every package the test suite, the demo and the packaging checks
# need, from Debian's archive. Idempotent: a second run installs nothing.
# Must run as root.
set -euo pipefail

PACKAGES=(
    # the real stack: libvirtd, QEMU (software emulation), the libvirt C library
    qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
    # the guest: the Debian kernel and a busybox initramfs
    linux-image-amd64 busybox-static cpio
    # building: virt-sys finds libvirt through pkg-config
    pkg-config
    # packaging checks: rpmbuild, systemd-analyze, man; make for the Makefile,
    # rpm2cpio/cpio/readelf to look inside the RPM; strace, iproute2 (below) and
    # libseccomp's Python binding for the sandboxed pass (tests/packaging/)
    rpm systemd man-db groff-base make rpm2cpio binutils strace git python3-seccomp
    # rpmlint as a Fedora packager runs it on the RPM (Debian's package)
    rpmlint
    # the .deb: dpkg-buildpackage and debhelper (debian/rules), lintian
    dpkg-dev debhelper lintian
    # the real systemd (tests/systemd/): a Debian root built by mmdebstrap
    # (with the archive's keyring), booted by systemd-nspawn
    mmdebstrap debian-archive-keyring systemd-container
    # helpers used by the scripts
    socat util-linux procps psmisc python3
    # reliability: ss (is a pass connected to libvirtd?); fuzzing: the C++
    # compiler libFuzzer is built with
    iproute2 g++
    # benchmarks (bench/): plots, the static guest reader built by rustc, and
    # qemu-img for the PostgreSQL guest's per-guest overlays (bench/dbguest/)
    python3-matplotlib libc6-dev qemu-utils
    # the operator's view (tests/metrics/, tests/metadata/): promtool checks
    # the metrics file, node_exporter serves it, xmllint validates the
    # metadata examples against docs/metadata.rng, curl scrapes
    prometheus prometheus-node-exporter libxml2-utils curl
    # lint of every shell script (tests/shellcheck.sh, run by .ci/run)
    shellcheck
)
# Installed without their Recommends (setools' would bring graphviz and GDAL):
# the SELinux policy module (packaging/selinux, tests/packaging/selinux.sh):
# the reference policy's devel Makefile and headers, checkmodule,
# semodule_package/semodule_unpackage, and policycoreutils' pp (a compiled
# module back to CIL). Installing policycoreutils writes /etc/selinux/config
# (SELINUX=permissive); without SELinux in the kernel nothing reads it.
NO_RECOMMENDS=(selinux-policy-dev checkpolicy semodule-utils policycoreutils)

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/deps.sh: must run as root (it installs packages)" >&2
    exit 1
fi

# missing NAME...: the packages among NAME that are not installed.
missing() {
    local p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            echo "$p"
        fi
    done
}
mapfile -t missing < <(missing "${PACKAGES[@]}")
mapfile -t missing_nr < <(missing "${NO_RECOMMENDS[@]}")
if [ ${#missing[@]} -eq 0 ] && [ ${#missing_nr[@]} -eq 0 ]; then
    exit 0
fi
echo "tests/deps.sh: installing ${missing[*]} ${missing_nr[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ${#missing_nr[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing_nr[@]}" >/dev/null
fi
