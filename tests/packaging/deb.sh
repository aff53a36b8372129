#!/usr/bin/env bash
# The Debian package's checks for tests/suites/40-packaging.sh, one
# subcommand a step (the .deb itself runs on a real systemd in
# tests/systemd/suite.sh):
#   files WORK     `dpkg-deb -c` and its conffiles are exactly
#                  tests/packaging/expected-files-deb.txt;
#   metadata WORK  version (Cargo.toml's), Depends (the libvirt daemon, its
#                  QEMU driver that runs the hook, libvirt0 from shlibs), and
#                  the maintainer scripts: the timer and the path unit
#                  enabled and started, the oneshot service never started,
#                  stopped or restarted by the package (a pass in flight
#                  survives an upgrade), purge deletes /var/lib/ksm-balloon,
#                  removal gives KSM's knobs back (prerm: ksm-restore,
#                  after debhelper's snippet, never failing the removal);
#   lintian WORK   lintian on the .changes (the .deb and the .buildinfo):
#                  nothing at all, errors to pedantic, beyond the commented
#                  overrides in debian/ksm-balloon.lintian-overrides;
#   installed REPO WORK
#                  unpacked (dpkg-deb -x): the settings file is
#                  packaging/sysconfig with its path, the service reads it,
#                  the timer and path unit are the repo's, the man page
#                  renders, the hook link points at the hook program, and
#                  that program, with no KSM_BALLOON_CONFIG, reads
#                  /etc/default/ksm-balloon (a private mount namespace
#                  gives it one naming a scratch state): it records there.
# WORK holds deb-path and changes-path (tests/packaging/build-deb.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cmd=$1
shift

files() {
    local work=$1 deb
    deb=$(cat "$work/deb-path")
    grep -v '^#' "$here/expected-files-deb.txt" >"$work/deb-expected-files"
    {
        dpkg-deb -c "$deb" | awk '{ p = $6; for (i = 7; i <= NF; i++) p = p " " $i; print $1, $2, p }'
        dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | sed 's/^/conffile /'
    } >"$work/deb-got-files"
    if ! diff -u "$work/deb-expected-files" "$work/deb-got-files"; then
        echo "dpkg-deb -c differs from tests/packaging/expected-files-deb.txt (- expected, + got)"
        return 1
    fi
    echo "dpkg-deb -c: the $(wc -l <"$work/deb-got-files") expected entries (modes, owners, link, conffile)"
}

metadata() {
    local work=$1 deb version v dep e=0 s
    deb=$(cat "$work/deb-path")
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/../../Cargo.toml" | head -n 1)
    v=$(dpkg-deb -f "$deb" Version)
    [ "${v%-*}" = "$version" ] || { echo ".deb version $v, Cargo.toml $version"; e=1; }
    for dep in libvirt-daemon-system libvirt-daemon-driver-qemu libvirt0; do
        dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/^ *//' | grep -q "^$dep\b" ||
            { echo ".deb does not depend on $dep: $(dpkg-deb -f "$deb" Depends)"; e=1; }
    done
    rm -rf "$work/deb-control"
    dpkg-deb -e "$deb" "$work/deb-control"
    for s in postinst prerm postrm; do
        [ -x "$work/deb-control/$s" ] || { echo "the .deb has no executable $s"; e=1; }
    done
    grep -q "deb-systemd-helper enable 'ksm-balloon.timer'" "$work/deb-control/postinst" ||
        { echo "postinst does not enable ksm-balloon.timer"; e=1; }
    grep -q "deb-systemd-helper enable 'ksm-balloon.path'" "$work/deb-control/postinst" ||
        { echo "postinst does not enable ksm-balloon.path"; e=1; }
    grep -q "deb-systemd-invoke \$_dh_action 'ksm-balloon.path' 'ksm-balloon.timer'" "$work/deb-control/postinst" ||
        { echo "postinst does not start (restart on upgrade) the timer and the path unit"; e=1; }
    if grep -l 'ksm-balloon\.service' "$work/deb-control"/p*; then
        echo "the maintainer scripts above name ksm-balloon.service: an upgrade could stop or restart a pass in flight"
        e=1
    fi
    grep -q 'rm -rf /var/lib/ksm-balloon' "$work/deb-control/postrm" || { echo "postrm purge keeps /var/lib/ksm-balloon"; e=1; }
    # removal (not upgrade) gives KSM's knobs back once the units are
    # stopped (debhelper's snippet comes first), and never fails for it
    awk '/deb-systemd-invoke stop/ { stop = NR } /ksm-balloon ksm-restore\)? \|\|/ { call = NR }
         END { exit !(stop && call > stop) }' "$work/deb-control/prerm" ||
        { echo "prerm does not run 'ksm-balloon ksm-restore ||' after stopping the units"; e=1; }
    grep -q '(set -a; .*/etc/default/ksm-balloon; exec /usr/bin/ksm-balloon ksm-restore) ||' "$work/deb-control/prerm" ||
        { echo "prerm does not run ksm-restore with the settings of /etc/default/ksm-balloon"; e=1; }
    [ "$e" -eq 0 ] && echo ".deb $(dpkg-deb -f "$deb" Package) $v: Depends $(dpkg-deb -f "$deb" Depends); timer and path unit enabled and started, the service left alone; purge deletes the state; removal gives KSM's knobs back"
    return "$e"
}

lint() {
    local work=$1 changes out rc=0
    changes=$(cat "$work/changes-path")
    # As root lintian says so on stderr; that line is not a finding.
    out=$(lintian --display-info --pedantic --display-experimental --fail-on error,warning,info,pedantic,experimental \
        "$changes" 2>&1) || rc=$?
    out=$(grep -v 'running with root privileges is not recommended' <<<"$out" || true)
    # A spelling hit in a binary is ours only when the word is in our
    # sources; otherwise it is machine data inside the linked code that
    # reads as a misspelling, and it changes with every build (c85ba0e's
    # binary held "thIk", 54cf695's none, so an override naming it went
    # stale and failed as unused). Those are shown and not counted.
    local line word kept='' machine=0
    while IFS= read -r line; do
        [ -n "$line" ] || continue
        if [[ $line == *" spelling-error-in-binary "* ]]; then
            word=$(awk '{ print $4 }' <<<"$line")
            if ! grep -rqwF -- "$word" "$here/../../src"; then
                echo "    (machine data, not our text: $line)"
                machine=$((machine + 1))
                continue
            fi
        fi
        kept+=$line$'\n'
    done <<<"$out"
    out=${kept%$'\n'}
    [ -z "$out" ] || sed 's/^/    /' <<<"$out"
    # lintian's exit is 2 for the hits set aside above; any other finding
    # or a failure with nothing said fails
    if [ -n "$out" ] || { [ "$rc" -ne 0 ] && [ "$machine" -eq 0 ]; }; then
        echo "lintian reported the findings above (exit $rc; overrides: debian/ksm-balloon.lintian-overrides)"
        return 1
    fi
    echo "lintian $(lintian --version | awk '{ print $2 }') on $(basename "$changes") (the .deb and the .buildinfo): nothing, info and pedantic included, beyond the commented overrides"
}

installed() {
    local repo=$1 work=$2 deb r e=0
    deb=$(cat "$work/deb-path")
    r=$work/debroot
    rm -rf "$r"
    dpkg-deb -x "$deb" "$r"
    sed 's|/etc/sysconfig/ksm-balloon|/etc/default/ksm-balloon|g' "$repo/packaging/sysconfig" | cmp - "$r/etc/default/ksm-balloon" ||
        { echo "/etc/default/ksm-balloon is not packaging/sysconfig with its own path"; e=1; }
    grep -qx 'EnvironmentFile=-/etc/default/ksm-balloon' "$r/lib/systemd/system/ksm-balloon.service" ||
        { echo "the service does not read /etc/default/ksm-balloon"; e=1; }
    grep -q '/etc/sysconfig' "$r/lib/systemd/system/ksm-balloon.service" "$r/etc/default/ksm-balloon" &&
        { echo "the service or the settings file still name /etc/sysconfig"; e=1; }
    grep -qx 'ExecStart=/usr/bin/ksm-balloon run' "$r/lib/systemd/system/ksm-balloon.service" ||
        { echo "the service has no 'ExecStart=/usr/bin/ksm-balloon run'"; e=1; }
    cmp "$repo/systemd-timers/ksm-balloon.timer" "$r/lib/systemd/system/ksm-balloon.timer" || { echo "timer differs"; e=1; }
    cmp "$repo/systemd-timers/ksm-balloon.path" "$r/lib/systemd/system/ksm-balloon.path" || { echo "path unit differs"; e=1; }
    local err
    err=$(MANWIDTH=80 man --warnings=all -l "$r/usr/share/man/man8/ksm-balloon.8.gz" 2>&1 >/dev/null)
    [ -z "$err" ] || { echo "the man page warns: $err"; e=1; }
    [ "$(readlink "$r/etc/libvirt/hooks/qemu.d/ksm-balloon")" = /usr/libexec/ksm-balloon/ksm-balloon-hook ] ||
        { echo "the hook link points at '$(readlink "$r/etc/libvirt/hooks/qemu.d/ksm-balloon")'"; e=1; }
    "$r/usr/bin/ksm-balloon" --version >/dev/null || { echo "the packaged ksm-balloon --version failed"; e=1; }
    bash -c "source '$r/usr/share/bash-completion/completions/ksm-balloon' && complete -p ksm-balloon" >/dev/null ||
        { echo "the bash completion registers nothing"; e=1; }
    grep -q '^#compdef ksm-balloon' "$r/usr/share/zsh/vendor-completions/_ksm-balloon" || { echo "zsh completion: no #compdef"; e=1; }
    # The hook's built-in settings file: /etc/default/ksm-balloon, in a
    # private mount namespace (a tmpfs over /etc/default) naming a scratch
    # state; a libvirt-like call (bare environment, XML on stdin) must
    # record there.
    local s=$work/debhook
    rm -rf "$s"
    mkdir -p "$s"
    # shellcheck source=tests/lib/libvirtd.sh
    source "$here/../lib/libvirtd.sh"
    # shellcheck source=tests/lib/guest.sh
    source "$here/../lib/guest.sh"
    kg_domain_xml vm1 --uuid 5a1e0000-0000-4000-8000-00000000deb1 --memory 256 --current 192 >"$s/domain.xml"
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private -- sh -c '
        mount -t tmpfs tmpfs /etc/default &&
        printf "KSM_BALLOON_STATE=%s/state.json\n" "$1" >/etc/default/ksm-balloon &&
        exec env -i PATH=/usr/bin:/bin "$2" vm1 prepare begin - <"$1/domain.xml"
    ' sh "$s" "$r/usr/libexec/ksm-balloon/ksm-balloon-hook" || { echo "the hook exited non-zero"; e=1; }
    if [ "$(find "$s/spool" -type f 2>/dev/null | wc -l)" -eq 1 ]; then
        echo "the packaged hook, with no KSM_BALLOON_CONFIG, read /etc/default/ksm-balloon and recorded vm1 in $s/spool"
    else
        echo "the packaged hook recorded nothing in $s/spool: it did not read /etc/default/ksm-balloon"
        e=1
    fi
    [ "$e" -eq 0 ] && echo "unpacked .deb: settings at /etc/default/ksm-balloon read by the service and the hook; units, man page, completions, hook link as expected"
    return "$e"
}

case $cmd in
    files) files "$@" ;;
    metadata) metadata "$@" ;;
    lintian) lint "$@" ;;
    installed) installed "$@" ;;
    *) echo "tests/packaging/deb.sh: unknown subcommand '$cmd' (files, metadata, lintian, installed)" >&2; exit 2 ;;
esac
