#!/usr/bin/env bash
# Builds the binary RPM the way a release does, from a clean clone of the
# committed HEAD: `make dist` (vendors every crate into the source tarball;
# the only step that may use the network), then `make rpm` inside a network
# namespace that has no network at all (`unshare -n`: only a downed
# loopback), which proves rpmbuild needs none.
#
# Usage: tests/packaging/build-rpm.sh REPO WORKDIR
# Leaves the clone in WORKDIR/clone, the path of the ksm-balloon RPM in
# WORKDIR/rpm-path, that of the ksm-balloon-selinux RPM (the SELinux policy
# module, noarch) in WORKDIR/rpm-selinux-path, and the build log in
# WORKDIR/rpmbuild.log; prints the timings.
set -euo pipefail
repo=$(realpath "$1")
work=$2
clone=$work/clone

# The clean clone: committed files only, no target/, no dist/.
rm -rf "$clone"
git clone --quiet --no-local "$repo" "$clone"
echo "clean clone of $(git -C "$clone" rev-parse --short HEAD) in $clone"

t0=$(date +%s)
# cargo gets crates from its cache or the registry here, and only here.
make -C "$clone" --no-print-directory dist >"$work/dist.log" 2>&1 ||
    { tail -n 30 "$work/dist.log"; echo "make dist failed" >&2; exit 1; }
t1=$(date +%s)
echo "make dist: $((t1 - t0)) s, tarball $(du -h "$clone"/dist/*.tar.gz | cut -f1)"

# No network from here on: show it, then build.
if unshare -n sh -c 'ip -o link show up 2>/dev/null | grep -v " lo:"' | grep -q .; then
    echo "unshare -n still shows an interface that is up" >&2
    exit 1
fi
if ! unshare -n make -C "$clone" --no-print-directory rpm >"$work/rpmbuild.log" 2>&1; then
    tail -n 60 "$work/rpmbuild.log"
    echo "rpmbuild failed inside unshare -n (log: $work/rpmbuild.log)" >&2
    exit 1
fi
t2=$(date +%s)
echo "make rpm (rpmbuild -bb, offline, %check included): $((t2 - t1)) s"

mapfile -t rpms < <(find "$clone/dist/rpmbuild/RPMS" -name '*.rpm' | sort)
main=() selinux=()
for r in "${rpms[@]}"; do
    case $(basename "$r") in
        ksm-balloon-selinux-[0-9]*.noarch.rpm) selinux+=("$r") ;;
        ksm-balloon-[0-9]*.rpm) main+=("$r") ;;
        *) echo "unexpected binary RPM: $r" >&2; exit 1 ;;
    esac
done
if [ "${#main[@]}" -ne 1 ] || [ "${#selinux[@]}" -ne 1 ]; then
    echo "expected one ksm-balloon and one ksm-balloon-selinux RPM, found: ${rpms[*]:-none}" >&2
    exit 1
fi
printf '%s\n' "${main[0]}" >"$work/rpm-path"
printf '%s\n' "${selinux[0]}" >"$work/rpm-selinux-path"
for r in "${main[0]}" "${selinux[0]}"; do
    echo "built ${r#"$clone"/} ($(du -h "$r" | cut -f1))"
done
