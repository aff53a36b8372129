#!/usr/bin/env bash
# Packaging: ksm-balloon as an operator installs it, proven with real tools
# on this Debian machine (Debian's rpm, systemd-analyze and man-db).
#   1. the man page renders with man(1) without a warning;
#   2. the binary RPM builds by `make dist && make rpm` from a clean clone of
#      HEAD, rpmbuild running with no network (tests/packaging/build-rpm.sh);
#   3. `rpm -qlp` lists exactly tests/packaging/expected-files.txt (modes,
#      owners, %config flags); the RPM's metadata (version, Requires);
#      rpmlint (Debian's) reports nothing beyond tests/packaging/rpmlint.toml's
#      short, commented allow-list;
#   4. the RPM installs into a scratch root (rpm -i --root, no scripts: no
#      systemd here), `rpm -V` finds every file as packaged, and the installed
#      binary runs --version and status --help from there; both binaries are
#      stripped, the hook does not load libvirt, libvirt's hook directory
#      holds a relative link to it; the installed units, settings file and
#      completions are what the repo holds; a by-hand `make install
#      PREFIX=/usr/local` and `make uninstall`;
#   5. systemd-analyze verify passes on the three installed units (the
#      binary and the man page present), and systemd-analyze security scores
#      the service;
#   6. the RPM's scriptlets enable/start/stop the timer when they should
#      (tests/packaging/scriptlets.sh);
#   7. the installed hook called as libvirtd calls it, in the cases a host
#      throws at it (tests/packaging/hook-direct.sh);
#   8. the installed hook run by a real libvirtd on a real QEMU VM's start and
#      stop, and a real pass under the service's restrictions rebuilt without
#      systemd (tests/packaging/hook-realstack.sh, sandbox-pass.sh,
#      unit_sandbox.py);
#   9. the .deb builds by `make deb` (dpkg-buildpackage, debian/rules) from
#      the same clean clone and tarball, with no network
#      (tests/packaging/build-deb.sh); `dpkg-deb -c` lists exactly
#      tests/packaging/expected-files-deb.txt; its metadata and maintainer
#      scripts; lintian finds nothing beyond debian/'s commented overrides;
#      unpacked, its hook reads /etc/default/ksm-balloon
#      (tests/packaging/deb.sh).
# Not shown here: the units running under systemd (not PID 1 on CI:
# tests/systemd/suite.sh boots one in a container and installs this RPM
# there), and an RPM built and installed on an RPM-based host (Fedora's
# macros differ).
#
# The RPM and the .deb it built are kept in /var/cache/ksm-balloon-tests/rpm/
# and deb/<commit>/ for tests/systemd/suite.sh (the same commit gives the
# same package).
#
# KB_KEEP=1 keeps the work directory (printed) for a look afterwards.
# The check functions below run through step(), which shellcheck cannot see:
# shellcheck disable=SC2317
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
repo=$PWD
here=$repo/tests/packaging
started=$(date +%s)

# /var/tmp, not /tmp: the sandboxed pass gets a private /tmp, and the state
# it writes must stay visible.
work=$(mktemp -d /var/tmp/ksm-balloon-pkg.XXXXXX)
if [ "${KB_KEEP:-0}" = 1 ]; then
    trap 'echo "work directory kept: $work"' EXIT
else
    trap 'rm -rf "$work"' EXIT
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
declare -a results=()
failed=0
# step NAME COMMAND...: runs one check, records ok/FAIL with its time.
step() {
    local name=$1 t0 rc=0
    shift
    printf '\n--- %s\n' "$name"
    t0=$(date +%s)
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        results+=("ok    $name ($(( $(date +%s) - t0 ))s)")
    else
        results+=("FAIL  $name ($(( $(date +%s) - t0 ))s)")
        failed=1
    fi
    return "$rc"
}

# man_clean PAGE: man(1) renders PAGE with groff's warnings on and says nothing.
man_clean() {
    local err
    err=$(MANROFFSEQ='' MANWIDTH=80 man --warnings=all -l "$1" 2>&1 >/dev/null)
    if [ -n "$err" ]; then
        echo "man -l $1 warned:"; echo "$err" | sed 's/^/    /'; return 1
    fi
    MANWIDTH=80 man -l "$1" 2>/dev/null | grep -q 'ksm-balloon' || { echo "man -l $1 rendered nothing"; return 1; }
    echo "man -l $1: rendered, no warnings ($(MANWIDTH=80 man -l "$1" 2>/dev/null | wc -l) lines)"
}

check_static() {
    local spec_version
    spec_version=$(sed -n 's/^Version:[[:space:]]*//p' packaging/ksm-balloon.spec)
    [ "$spec_version" = "$version" ] ||
        { echo "packaging/ksm-balloon.spec Version $spec_version, Cargo.toml $version"; return 1; }
    echo "spec Version $spec_version = Cargo.toml"
    local deb_version
    deb_version=$(dpkg-parsechangelog -l debian/changelog -S Version)
    [ "${deb_version%-*}" = "$version" ] ||
        { echo "debian/changelog version $deb_version, Cargo.toml $version"; return 1; }
    echo "debian/changelog $deb_version = Cargo.toml"
}

build() {
    if [ -n "${KB_PKG_RPM:-}" ]; then
        # For iterating on the later steps only: the suite still fails.
        echo "KB_PKG_RPM set: NOT building, checking $KB_PKG_RPM instead; this run cannot pass"
        realpath "$KB_PKG_RPM" >"$work/rpm-path"
        return 0
    fi
    bash "$here/build-rpm.sh" "$repo" "$work" || return 1
    # shellcheck disable=SC1091 # sourced by the child shell
    bash -c '. "$1/tests/lib/libvirtd.sh" && . "$1/tests/systemd/lib.sh" && sd_rpm_store "$2" "$3"' \
        store "$repo" "$(cat "$work/rpm-path")" "$(git -C "$work/clone" rev-parse HEAD)"
}

# The .deb, from the clone and tarball build() made. Its tests are not run
# again (DEB_BUILD_OPTIONS=nocheck): the RPM's %check just ran the same
# `cargo test` and tests/exit-codes.sh on the same tarball. Its release
# build is a build of its own: rpmbuild removes its build tree (and target/)
# when it succeeds, and cargo would not reuse it anyway from another
# directory (the vendored crates' paths are in its fingerprints).
build_deb() {
    KB_DEB_NOCHECK=1 bash "$here/build-deb.sh" "$repo" "$work" || return 1
    # shellcheck disable=SC1091 # sourced by the child shell
    bash -c '. "$1/tests/lib/libvirtd.sh" && . "$1/tests/systemd/lib.sh" && sd_deb_store "$2" "$3"' \
        store "$repo" "$(cat "$work/deb-path")" "$(git -C "$work/clone" rev-parse HEAD)"
}

# build_id FILE: the ELF build-id of FILE.
build_id() { readelf -n "$1" | awk '/Build ID/ { print $3 }'; }

check_file_list() {
    local rpmfile got f id
    rpmfile=$(cat "$work/rpm-path")
    got=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpmfile" |
        sed 's/^\([^ ]* [^ ]* [^ ]*\)  /\1 - /')
    # The build-ids, from the binaries themselves: a directory for each
    # first two digits, a link for each id.
    rpm2cpio "$rpmfile" | (cd "$work" && cpio -id --quiet ./usr/bin/ksm-balloon ./usr/libexec/ksm-balloon/ksm-balloon-hook)
    : >"$work/build-ids"
    for f in "$work/usr/bin/ksm-balloon" "$work/usr/libexec/ksm-balloon/ksm-balloon-hook"; do
        id=$(build_id "$f")
        [ -n "$id" ] || { echo "no build-id in the packaged ${f#"$work"}"; return 1; }
        printf 'drwxr-xr-x root root a /usr/lib/.build-id/%s\nlrwxrwxrwx root root a /usr/lib/.build-id/%s/%s\n' \
            "${id:0:2}" "${id:0:2}" "${id:2}" >>"$work/build-ids"
    done
    grep -v '^#' "$here/expected-files.txt" | sed -e "s/@VERSION@/$version/g" | while IFS= read -r line; do
        if [ "$line" = @BUILDIDS@ ]; then LC_ALL=C sort -u -k5 "$work/build-ids"; else printf '%s\n' "$line"; fi
    done >"$work/expected-files"
    printf '%s\n' "$got" >"$work/got-files"
    if ! diff -u "$work/expected-files" "$work/got-files"; then
        echo "rpm -qlp differs from tests/packaging/expected-files.txt (- expected, + got)"
        return 1
    fi
    echo "rpm -qlp: the $(wc -l <"$work/got-files") expected entries, modes and flags:"
    sed 's/^/    /' "$work/got-files"
}

check_metadata() {
    local rpmfile v
    rpmfile=$(cat "$work/rpm-path")
    v=$(rpm -qp --qf '%{VERSION}' "$rpmfile")
    [ "$v" = "$version" ] || { echo "RPM version $v, Cargo.toml $version"; return 1; }
    rpm -qp --requires "$rpmfile" | grep -qx 'libvirt-daemon' || { echo "RPM does not require libvirt-daemon"; return 1; }
    rpm -qp --requires "$rpmfile" | grep -q '^libvirt.so.0' || { echo "RPM lacks the automatic libvirt.so.0 dependency"; return 1; }
    echo "RPM $(rpm -qp --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}' "$rpmfile"): Requires libvirt-daemon and libvirt.so.0"
}

root=$work/root
install_scratch() {
    local rpmfile
    rpmfile=$(cat "$work/rpm-path")
    mkdir -p "$root"
    # --nodeps: the scratch root (like Debian's rpm database) has no
    # libvirt-daemon; --noscripts: its scriptlets talk to systemd, which is
    # not running (tests/packaging/scriptlets.sh runs them instead).
    rpm -i --root "$root" --nodeps --noscripts "$rpmfile" || { echo "rpm -i --root failed"; return 1; }
    rpm -q --root "$root" ksm-balloon || return 1
    local v
    v=$(rpm -V --root "$root" --nodeps ksm-balloon) || { echo "rpm -V found changes:"; echo "$v"; return 1; }
    echo "rpm -V: every installed file as packaged (modes, digests, owners)"
    stat -c '%A %n' "$root/var/lib/ksm-balloon"
    v=$("$root/usr/bin/ksm-balloon" --version) || { echo "installed binary --version failed"; return 1; }
    [ "$v" = "ksm-balloon $version" ] || { echo "--version printed '$v'"; return 1; }
    echo "installed binary --version: $v"
    "$root/usr/bin/ksm-balloon" status --help >"$work/status-help" || { echo "status --help failed"; return 1; }
    grep -q '^Usage: ksm-balloon status' "$work/status-help" || { echo "status --help: no usage line"; return 1; }
    echo "installed binary status --help: $(head -n 1 "$work/status-help")"
}

# stripped FILE: FILE has no symbol table.
stripped() { ! readelf -S "$1" | grep -q ' \.symtab '; }
# needed FILE: the shared libraries FILE loads (DT_NEEDED), one a line.
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

check_installed_files() {
    local e=0 hook=$root/usr/libexec/ksm-balloon/ksm-balloon-hook link=$root/etc/libvirt/hooks/qemu.d/ksm-balloon
    # The hook: a relative link in libvirt's directory to the program.
    [ -L "$link" ] || { echo "$link is not a symbolic link"; e=1; }
    [ "$(readlink "$link")" = ../../../../usr/libexec/ksm-balloon/ksm-balloon-hook ] ||
        { echo "$link points at '$(readlink "$link")'"; e=1; }
    [ "$(realpath "$link")" = "$hook" ] || { echo "$link does not resolve to $hook inside the root"; e=1; }
    echo "hook link: ${link#"$root"} -> $(readlink "$link")"
    local f
    for f in "$root/usr/bin/ksm-balloon" "$hook"; do
        stripped "$f" || { echo "${f#"$root"} is not stripped"; e=1; }
        echo "${f#"$root"}: $(du -h "$f" | cut -f1), stripped: $(stripped "$f" && echo yes || echo no), loads: $(needed "$f" | tr '\n' ' ')"
    done
    # What a VM start waits for must not load libvirt.
    needed "$hook" | grep -q '^libvirt' && { echo "the hook loads libvirt: $(needed "$hook" | tr '\n' ' ')"; e=1; }
    needed "$root/usr/bin/ksm-balloon" | grep -q '^libvirt\.so' || { echo "the program does not load libvirt?"; e=1; }
    cmp systemd-timers/ksm-balloon.path "$root/usr/lib/systemd/system/ksm-balloon.path" || { echo "path unit differs"; e=1; }
    cmp packaging/sysconfig "$root/etc/sysconfig/ksm-balloon" || { echo "installed settings file differs"; e=1; }
    cmp man/ksm-balloon.8 "$root/usr/share/man/man8/ksm-balloon.8" || { echo "installed man page differs"; e=1; }
    cmp systemd-timers/ksm-balloon.timer "$root/usr/lib/systemd/system/ksm-balloon.timer" || { echo "timer differs"; e=1; }
    grep -qx 'ExecStart=/usr/bin/ksm-balloon run' "$root/usr/lib/systemd/system/ksm-balloon.service" ||
        { echo "installed service has no 'ExecStart=/usr/bin/ksm-balloon run'"; e=1; }
    grep -qx 'EnvironmentFile=-/etc/sysconfig/ksm-balloon' "$root/usr/lib/systemd/system/ksm-balloon.service" ||
        { echo "installed service has no EnvironmentFile=-/etc/sysconfig/ksm-balloon"; e=1; }
    # Completions: generated by the binary from the clap definition.
    local c=$root/usr/share
    bash -n "$c/bash-completion/completions/ksm-balloon" || { echo "bash completion: syntax error"; e=1; }
    bash -c "source '$c/bash-completion/completions/ksm-balloon' && complete -p ksm-balloon" >/dev/null ||
        { echo "bash completion registers nothing for ksm-balloon"; e=1; }
    for f in "$c/bash-completion/completions/ksm-balloon" "$c/zsh/site-functions/_ksm-balloon" \
        "$c/fish/vendor_completions.d/ksm-balloon.fish"; do
        for w in run plan status hook share max-shrink; do
            grep -q -- "$w" "$f" || { echo "$f does not offer '$w'"; e=1; }
        done
    done
    grep -q '^#compdef ksm-balloon' "$c/zsh/site-functions/_ksm-balloon" || { echo "zsh completion: no #compdef"; e=1; }
    grep -q '^complete -c ksm-balloon' "$c/fish/vendor_completions.d/ksm-balloon.fish" || { echo "fish completion: no complete -c"; e=1; }
    [ "$e" -eq 0 ] && echo "installed hook and its link, units, settings, man page and bash/zsh/fish completions are as expected"
    return "$e"
}

# The by-hand install: `make install DESTDIR= PREFIX=/usr/local` with the
# RPM's binary as the build output; paths follow PREFIX, an edited settings
# file survives a reinstall, `make uninstall` leaves only settings and state.
check_make_install() {
    local d=$work/byhand t=$work/fake-target e=0
    mkdir -p "$t/release"
    # Without the hook binary, make install refuses, naming it.
    cp "$root/usr/bin/ksm-balloon" "$t/release/ksm-balloon"
    local out
    if out=$(make --no-print-directory -s install DESTDIR="$d" PREFIX=/usr/local CARGO_TARGET_DIR="$t" 2>&1); then
        echo "make install succeeded without the hook binary"; e=1
    elif ! grep -q "$t/release/ksm-balloon-hook is missing" <<<"$out"; then
        echo "make install without the hook binary said: $out"; e=1
    fi
    cp "$root/usr/libexec/ksm-balloon/ksm-balloon-hook" "$t/release/ksm-balloon-hook"
    rm -rf "$d"
    make --no-print-directory -s install DESTDIR="$d" PREFIX=/usr/local CARGO_TARGET_DIR="$t" >/dev/null ||
        { echo "make install failed"; return 1; }
    grep -qx 'ExecStart=/usr/local/bin/ksm-balloon run' "$d/usr/local/lib/systemd/system/ksm-balloon.service" ||
        { echo "ExecStart does not follow PREFIX"; e=1; }
    [ "$(realpath "$d/etc/libvirt/hooks/qemu.d/ksm-balloon")" = "$d/usr/local/libexec/ksm-balloon/ksm-balloon-hook" ] ||
        { echo "the hook link does not follow PREFIX: $(readlink "$d/etc/libvirt/hooks/qemu.d/ksm-balloon")"; e=1; }
    [ "$(stat -c %a "$d/var/lib/ksm-balloon")" = 700 ] || { echo "state dir not 0700"; e=1; }
    [ "$(stat -c %a "$d/var/lib/ksm-balloon/spool")" = 700 ] || { echo "spool dir not 0700"; e=1; }
    if [ ! -x "$d/usr/local/bin/ksm-balloon" ] || [ ! -s "$d/usr/local/share/zsh/site-functions/_ksm-balloon" ]; then
        echo "binary or completions missing"; e=1
    fi
    echo "KSM_BALLOON_SHARE=0.5" >>"$d/etc/sysconfig/ksm-balloon"
    make --no-print-directory -s install DESTDIR="$d" PREFIX=/usr/local CARGO_TARGET_DIR="$t" >/dev/null ||
        { echo "second make install failed"; return 1; }
    grep -qx 'KSM_BALLOON_SHARE=0.5' "$d/etc/sysconfig/ksm-balloon" || { echo "reinstall overwrote the settings"; e=1; }
    make --no-print-directory -s uninstall DESTDIR="$d" PREFIX=/usr/local >/dev/null || { echo "make uninstall failed"; return 1; }
    local left
    left=$(cd "$d" && find . ! -type d | sort | tr '\n' ' ')
    [ "$left" = "./etc/sysconfig/ksm-balloon " ] || { echo "after make uninstall, files left: $left"; e=1; }
    [ ! -e "$d/usr/local/libexec/ksm-balloon" ] || { echo "make uninstall left the hook's directory"; e=1; }
    [ -d "$d/var/lib/ksm-balloon" ] || { echo "make uninstall removed the state directory"; e=1; }
    [ "$e" -eq 0 ] && echo "make install PREFIX=/usr/local: paths follow PREFIX, settings kept on reinstall; make uninstall leaves settings and state"
    return "$e"
}

check_units() {
    local u=$work/units
    mkdir -p "$u"
    # verify wants ExecStart's binary present: the scratch root's, at the one
    # line that differs from the installed unit.
    sed "s|^ExecStart=/usr/bin/ksm-balloon |ExecStart=$root/usr/bin/ksm-balloon |" \
        "$root/usr/lib/systemd/system/ksm-balloon.service" >"$u/ksm-balloon.service"
    cp "$root/usr/lib/systemd/system/ksm-balloon.timer" "$root/usr/lib/systemd/system/ksm-balloon.path" "$u/"
    [ "$(diff "$root/usr/lib/systemd/system/ksm-balloon.service" "$u/ksm-balloon.service" | grep -c '^[<>]')" -eq 2 ] ||
        { echo "the unit under test differs from the installed one beyond ExecStart"; return 1; }
    local out
    # Documentation=man:ksm-balloon(8) is checked too: man finds the installed page.
    if ! out=$(MANPATH="$root/usr/share/man" systemd-analyze verify "$u/ksm-balloon.service" "$u/ksm-balloon.timer" \
        "$u/ksm-balloon.path" 2>&1) || [ -n "$out" ]; then
        echo "systemd-analyze verify:"; echo "$out" | sed 's/^/    /'; return 1
    fi
    echo "systemd-analyze verify ksm-balloon.service ksm-balloon.timer ksm-balloon.path: clean ($(systemd --version | head -n 1))"
    systemd-analyze security --offline=true "$u/ksm-balloon.service" >"$work/security.txt" 2>&1 ||
        { cat "$work/security.txt"; return 1; }
    grep -v '^✓' "$work/security.txt" | sed 's/^/    /'
    local score
    score=$(sed -n 's/.*Overall exposure level for ksm-balloon.service: \([0-9.]*\).*/\1/p' "$work/security.txt")
    echo "systemd-analyze security --offline=true: exposure $score (0 safest, 10 unsafe; hardening regressions fail above 2.0)"
    awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || { echo "exposure $score is above 2.0"; return 1; }
}

# rpmlint as a Fedora packager runs it, with Debian's rpmlint and its default
# configuration plus tests/packaging/rpmlint.toml: every finding it still
# prints fails the step.
check_rpmlint() {
    local rpmfile out
    rpmfile=$(cat "$work/rpm-path")
    out=$(rpmlint -c "$here/rpmlint.toml" "$rpmfile" 2>&1)
    sed 's/^/    /' <<<"$out"
    if grep -q ': [EW]: ' <<<"$out"; then
        echo "rpmlint reported the findings above (allowed: tests/packaging/rpmlint.toml)"
        return 1
    fi
    echo "rpmlint $(rpmlint --version): nothing beyond the allow-list"
}

step "static checks" check_static
step "man page renders without warnings" man_clean man/ksm-balloon.8
if step "build the RPM from a clean clone, offline" build; then
    step "rpm -qlp lists exactly the expected files" check_file_list
    step "RPM metadata" check_metadata
    step "rpmlint" check_rpmlint
    step "SELinux policy module and the ksm-balloon-selinux RPM" bash "$here/selinux.sh" "$repo" "$work"
    if step "install into a scratch root and run the binary" install_scratch; then
        step "installed files" check_installed_files
        step "installed man page renders without warnings" man_clean "$root/usr/share/man/man8/ksm-balloon.8"
        step "by-hand make install and uninstall" check_make_install
        step "systemd-analyze verify and security" check_units
        step "RPM scriptlets" bash "$here/scriptlets.sh" "$(cat "$work/rpm-path")" "$work"
        step "installed hook, called directly" bash "$here/hook-direct.sh" "$root" "$work"
        step "installed hook on a real libvirtd; sandboxed pass" bash "$here/hook-realstack.sh" "$root" "$work"
    fi
fi
if [ -z "${KB_PKG_RPM:-}" ] && step "build the .deb from the same clean clone, offline" build_deb; then
    step "dpkg-deb -c lists exactly the expected files" bash "$here/deb.sh" files "$work"
    step ".deb metadata and maintainer scripts" bash "$here/deb.sh" metadata "$work"
    step "lintian" bash "$here/deb.sh" lintian "$work"
    step "unpacked .deb: settings, units, hook" bash "$here/deb.sh" installed "$repo" "$work"
fi

if [ -n "${KB_PKG_RPM:-}" ]; then
    results+=("FAIL  the RPM was not built from a clean clone (KB_PKG_RPM set)")
    failed=1
fi
printf '\n--- packaging summary\n'
printf '%s\n' "${results[@]}"
printf 'packaging suite: %ss\n' "$(( $(date +%s) - started ))"
exit "$failed"
