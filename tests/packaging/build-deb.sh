#!/usr/bin/env bash
# Builds the binary .deb the way a release does, from a clean clone of the
# committed HEAD: `make dist` (vendors every crate into the source tarball;
# the only step that may use the network), then `make deb` (dpkg-buildpackage
# -b on the tarball's tree, debian/rules) inside a network namespace that has
# no network at all (`unshare -n`), which proves the build needs none.
#
# Usage: tests/packaging/build-deb.sh REPO WORKDIR
# Reuses WORKDIR/clone and its dist/ tarball when tests/packaging/build-rpm.sh
# made them from the same commit (40-packaging builds the RPM first), else
# makes both. The Rust toolchain is the one on PATH (rustup's; the build
# profile pkg.ksm-balloon.rustup drops debian/control's cargo-web). The
# tests in dh_auto_test are skipped with DEB_BUILD_OPTIONS=nocheck when
# KB_DEB_NOCHECK=1: 40-packaging sets it because the RPM's %check ran the
# same `cargo test` and tests/exit-codes.sh on the same tarball just before.
# Leaves the .deb's path in WORKDIR/deb-path, the .changes' in
# WORKDIR/changes-path, the log in WORKDIR/debbuild.log; prints the timings.
set -euo pipefail
repo=$(realpath "$1")
work=$2
clone=$work/clone
head=$(git -C "$repo" rev-parse HEAD)

if [ -d "$clone" ] && [ "$(git -C "$clone" rev-parse HEAD 2>/dev/null)" = "$head" ] &&
    compgen -G "$clone/dist/ksm-balloon-*.tar.gz" >/dev/null; then
    echo "reusing the clean clone of ${head:0:7} and its make dist tarball in $clone"
else
    rm -rf "$clone"
    git clone --quiet --no-local "$repo" "$clone"
    echo "clean clone of $(git -C "$clone" rev-parse --short HEAD) in $clone"
    t0=$(date +%s)
    make -C "$clone" --no-print-directory dist >"$work/dist.log" 2>&1 ||
        { tail -n 30 "$work/dist.log"; echo "make dist failed" >&2; exit 1; }
    echo "make dist: $(($(date +%s) - t0)) s"
fi

if unshare -n sh -c 'ip -o link show up 2>/dev/null | grep -v " lo:"' | grep -q .; then
    echo "unshare -n still shows an interface that is up" >&2
    exit 1
fi
opts=
[ "${KB_DEB_NOCHECK:-0}" = 1 ] && opts=nocheck
t1=$(date +%s)
if ! DEB_BUILD_OPTIONS="$opts" unshare -n make -C "$clone" --no-print-directory deb \
    DEB_BUILD_FLAGS="-Ppkg.ksm-balloon.rustup${opts:+,nocheck}" >"$work/debbuild.log" 2>&1; then
    tail -n 60 "$work/debbuild.log"
    echo "dpkg-buildpackage failed inside unshare -n (log: $work/debbuild.log)" >&2
    exit 1
fi
echo "make deb (dpkg-buildpackage -b, offline${opts:+, nocheck}): $(($(date +%s) - t1)) s; $(grep -c '^ *Compiling ' "$work/debbuild.log") crates compiled"

mapfile -t debs < <(find "$clone/dist/deb" -maxdepth 1 -name '*.deb')
mapfile -t changes < <(find "$clone/dist/deb" -maxdepth 1 -name '*.changes')
if [ "${#debs[@]}" -ne 1 ] || [ "${#changes[@]}" -ne 1 ]; then
    echo "expected one .deb and one .changes in $clone/dist/deb, found: ${debs[*]:-no .deb} ${changes[*]:-no .changes}" >&2
    exit 1
fi
printf '%s\n' "${debs[0]}" >"$work/deb-path"
printf '%s\n' "${changes[0]}" >"$work/changes-path"
echo "built ${debs[0]#"$clone"/} ($(du -h "${debs[0]}" | cut -f1))"
