# shellcheck shell=bash
# A real systemd for the tests: a Debian 12 root file system built with
# mmdebstrap from the Debian archives this machine's apt uses, cached under
# $SD_CACHE, booted with systemd as PID 1 in a systemd-nspawn container, and
# the ways into it. Used by tests/systemd/suite.sh.
#
# The host this runs on has no systemd of its own (PID 1 is something
# else), which shapes the nspawn command: --register=no and --keep-unit (no
# machined, no system bus to ask for a scope), --private-network (the
# container's libvirtd must not touch the host's network). Commands run
# inside through nsenter into the container's namespaces (machinectl needs
# machined).
#
# The root is only read: each boot mounts an overlay (the cached root as
# its lower layer, a fresh upper layer under the run's work directory), so
# what a run installs or breaks is gone at the next boot.
#
# Source it after tests/lib/libvirtd.sh. Every function is prefixed sd_.

SD_CACHE=${SD_CACHE:-/var/cache/ksm-balloon-tests}
SD_SUITE=bookworm
# What the root holds besides Debian's essential packages and apt: systemd
# as init, libvirt's daemon as Debian ships it (units, default settings,
# socket activation), QEMU for software-emulated guests, Debian's rpm to
# install ksm-balloon's RPM, and the tools the suite runs inside.
SD_PACKAGES=(systemd systemd-sysv dbus libvirt-daemon-system libvirt-daemon-driver-qemu
    libvirt-clients qemu-system-x86 rpm procps util-linux)

# sd_apt_sources: one "deb URI SUITE COMPONENT..." line for each Debian
# bookworm source this machine's apt is configured with (one-line and deb822
# formats), so the root comes from the same archives as the host's packages.
# sd_cache_ready DIR: DIR is a cache entry named PREFIX-KEY (a build keyed
# by its inputs: a Debian root, a disk image) whose .complete file marks it
# whole and, by its mtime, its last use. Removes the entries beside it with
# the same PREFIX unused for a week, then succeeds (marking DIR used) when
# DIR is complete, fails when it must be built.
sd_cache_ready() {
    local dir=$1 old
    find "$(dirname "$dir")" -maxdepth 2 -path "${dir%-*}-*/.complete" -mtime +7 \
        ! -path "$dir/.complete" -printf '%h\n' 2>/dev/null | while read -r old; do
        kb_log "removing the unused $old"
        rm -rf "$old"
    done
    [ -e "$dir/.complete" ] && touch "$dir/.complete"
}

sd_apt_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]\+[[:space:]]\+bookworm[^[:space:]]*[[:space:]].*\)$/deb \2/p' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # deb822: stanzas separated by blank lines; Types, URIs, Suites and
        # Components may each hold several words.
        awk '
            function flush(   t, u, s, nt, nu, ns, i, j, k) {
                if (enabled != "no" && types != "" && uris != "" && suites != "") {
                    nt = split(types, t, " "); nu = split(uris, u, " "); ns = split(suites, s, " ")
                    for (i = 1; i <= nt; i++) if (t[i] == "deb")
                        for (j = 1; j <= nu; j++) for (k = 1; k <= ns; k++)
                            if (s[k] ~ /^bookworm/) print "deb " u[j] " " s[k] " " comps
                }
                types = uris = suites = comps = enabled = ""
            }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            { key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "") }
            key == "types" { types = $0 } key == "uris" { uris = $0 }
            key == "suites" { suites = $0 } key == "components" { comps = $0 }
            key == "enabled" { enabled = tolower($0) }
            END { flush() }
        ' "$f"
    done
}

# sd_customize ROOT: what the root needs to boot in nspawn on this host and
# run QEMU guests under its libvirtd (run by mmdebstrap on the new root,
# before it is cached; its text is part of the cache key).
sd_customize() {
    local r=$1
    echo kb-systemd >"$r/etc/hostname"
    # libvirt resolves the host name when it starts a guest.
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tkb-systemd\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
    # The host mounts cgroups in hybrid mode and nspawn hands the container
    # the v1 controllers read-only: libvirt must not try to create its
    # machine cgroups there. Guests run as root without a security driver,
    # as the other real-stack suites run them.
    cat >>"$r/etc/libvirt/qemu.conf" <<'CONF'

# ksm-balloon tests (tests/systemd/lib.sh): no cgroup controllers (read-only
# in this nspawn container), guests as root, no security driver.
cgroup_controllers = [ ]
user = "root"
group = "root"
security_driver = "none"
CONF
    # No dnsmasq behind a default network: the container has no network and
    # the guests no NIC.
    rm -f "$r/etc/libvirt/qemu/networks/autostart/default.xml"
    # libvirt-guests would try to shut the test guests down cleanly at power
    # off (they ignore ACPI) and hold it for minutes; the suite destroys them.
    ln -sf /dev/null "$r/etc/systemd/system/libvirt-guests.service"
    # Units that cannot work in this container and would only add noise.
    ln -sf /dev/null "$r/etc/systemd/system/systemd-networkd-wait-online.service"
    ln -sf /dev/null "$r/etc/systemd/system/getty@tty1.service"
    ln -sf /dev/null "$r/etc/systemd/system/console-getty.service"
    # Debian's rpm starts with no database; ksm-balloon's RPM is installed
    # with rpm -i --nodeps.
    chroot "$r" rpm --initdb
    # Journal kept in memory; the suite reads it while the container runs.
    mkdir -p "$r/etc/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\nRateLimitBurst=0\n' >"$r/etc/systemd/journald.conf.d/ksm-balloon-tests.conf"
}

# sd_debian_root PREFIX RECIPE VARIANT PACKAGES [MMDEBSTRAP_OPTION...]:
# sets SD_DEBIAN_ROOT (and SD_DEBIAN_ROOT_KEY) to a cached Debian
# $SD_SUITE root, PREFIX-KEY, built with mmdebstrap (VARIANT, the packages
# of the comma-separated PACKAGES, no recommends, the options) when no root
# with the same key exists. The key: RECIPE (the caller's recipe: its
# package list, its functions' text), the options and the apt sources.
# Roots of other recipes go after a week unused (sd_cache_ready).
sd_debian_root() {
    local prefix=$1 recipe=$2 variant=$3 packages=$4 key sources tmp log
    shift 4
    sources=$(sd_apt_sources)
    [ -n "$sources" ] || kb_die "no Debian $SD_SUITE source in this machine's apt configuration"
    command -v mmdebstrap >/dev/null || kb_die "mmdebstrap is missing: run tests/deps.sh"
    key=$( {
        echo "$SD_SUITE $variant $packages"
        echo "$recipe"
        printf '%s\n' "$@"
        echo "$sources"
        declare -f sd_debian_root
    } | sha256sum | cut -c1-16)
    # shellcheck disable=SC2034 # for the caller (bench/dbguest/build.sh)
    SD_DEBIAN_ROOT_KEY=$key
    SD_DEBIAN_ROOT=$prefix-$key
    sd_cache_ready "$SD_DEBIAN_ROOT" && return 0
    kb_log "building a Debian $SD_SUITE root file system into $SD_DEBIAN_ROOT (mmdebstrap; a few minutes)"
    mkdir -p "$(dirname "$prefix")"
    tmp=$SD_DEBIAN_ROOT.tmp.$$
    log=$SD_DEBIAN_ROOT.log
    rm -rf "$tmp"
    if ! printf '%s\n' "$sources" | mmdebstrap --variant="$variant" --mode=root \
        --aptopt='APT::Install-Recommends "false"' --include="$packages" "$@" \
        "$SD_SUITE" "$tmp" - >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -rf "$tmp"
        kb_die "mmdebstrap failed (log: $log)"
    fi
    touch "$tmp/.complete"
    rm -rf "$SD_DEBIAN_ROOT"
    mv "$tmp" "$SD_DEBIAN_ROOT"
    kb_log "root file system ready: $(du -sh "$SD_DEBIAN_ROOT" | cut -f1)"
}

# sd_build_root: sets SD_ROOT to the cached root file system of the
# systemd suite's containers (sd_debian_root).
sd_build_root() {
    # The customize hook runs in a child shell: it gets the function's text.
    sd_debian_root "$SD_CACHE/debian12-systemd" "$(declare -f sd_customize)" apt \
        "$(IFS=,; echo "${SD_PACKAGES[*]}")" \
        --customize-hook="$(declare -f sd_customize); sd_customize \"\$1\""
    SD_ROOT=$SD_DEBIAN_ROOT
}

# --- the RPM ------------------------------------------------------------------

# RPMs are cached by the commit they were built from (`make dist` archives
# the committed HEAD, so one commit gives one package): 40-packaging stores
# the one it built, this suite reuses it or builds its own.
sd_rpm_cache_dir() { echo "$SD_CACHE/rpm/$1"; }

# sd_rpm_store RPM COMMIT: keeps a copy of RPM for COMMIT; the 10 newest
# commits' RPMs are kept.
sd_rpm_store() {
    local dir old
    dir=$(sd_rpm_cache_dir "$2")
    mkdir -p "$dir"
    cp "$1" "$dir/.tmp.$$" && mv "$dir/.tmp.$$" "$dir/$(basename "$1")"
    touch "$dir"
    find "$SD_CACHE/rpm" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn |
        tail -n +11 | cut -d' ' -f2- | while read -r old; do rm -rf "$old"; done
}

# sd_rpm REPO WORKDIR: sets SD_RPM to the RPM of REPO's HEAD: the cached one,
# or one built now by tests/packaging/build-rpm.sh (a clean clone, `make
# dist`, `make rpm` offline), then cached.
sd_rpm() {
    local repo=$1 work=$2 commit found
    commit=$(git -C "$repo" rev-parse HEAD) || kb_die "$repo is not a git checkout"
    found=$(ls -1 "$(sd_rpm_cache_dir "$commit")"/*.rpm 2>/dev/null)
    if [ "$(printf '%s' "$found" | grep -c .)" = 1 ]; then
        SD_RPM=$found
        kb_log "using the RPM built earlier from commit ${commit:0:12}: $SD_RPM"
        return 0
    fi
    kb_log "no RPM of commit ${commit:0:12} cached: building one (make dist, make rpm)"
    mkdir -p "$work"
    bash "$repo/tests/packaging/build-rpm.sh" "$repo" "$work" || kb_die "building the RPM failed"
    sd_rpm_store "$(cat "$work/rpm-path")" "$commit"
    SD_RPM=$(ls -1 "$(sd_rpm_cache_dir "$commit")"/*.rpm)
}

# --- the .deb -------------------------------------------------------------------

# The same for the .deb (tests/packaging/build-deb.sh; 40-packaging stores
# the one it built).
sd_deb_cache_dir() { echo "$SD_CACHE/deb/$1"; }

# sd_deb_store DEB COMMIT: keeps a copy of DEB for COMMIT; the 10 newest
# commits' .debs are kept.
sd_deb_store() {
    local dir old
    dir=$(sd_deb_cache_dir "$2")
    mkdir -p "$dir"
    cp "$1" "$dir/.tmp.$$" && mv "$dir/.tmp.$$" "$dir/$(basename "$1")"
    touch "$dir"
    find "$SD_CACHE/deb" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn |
        tail -n +11 | cut -d' ' -f2- | while read -r old; do rm -rf "$old"; done
}

# sd_deb REPO WORKDIR: sets SD_DEB to the .deb of REPO's HEAD: the cached
# one, or one built now by tests/packaging/build-deb.sh (a clean clone, `make
# dist`, `make deb` offline, its tests skipped: 10-cargo and the RPM's
# %check run them), then cached.
sd_deb() {
    local repo=$1 work=$2 commit found
    commit=$(git -C "$repo" rev-parse HEAD) || kb_die "$repo is not a git checkout"
    found=$(ls -1 "$(sd_deb_cache_dir "$commit")"/*.deb 2>/dev/null)
    if [ "$(printf '%s' "$found" | grep -c .)" = 1 ]; then
        SD_DEB=$found
        kb_log "using the .deb built earlier from commit ${commit:0:12}: $SD_DEB"
        return 0
    fi
    kb_log "no .deb of commit ${commit:0:12} cached: building one (make dist, make deb)"
    mkdir -p "$work"
    KB_DEB_NOCHECK=1 bash "$repo/tests/packaging/build-deb.sh" "$repo" "$work" || kb_die "building the .deb failed"
    sd_deb_store "$(cat "$work/deb-path")" "$commit"
    SD_DEB=$(ls -1 "$(sd_deb_cache_dir "$commit")"/*.deb)
}

# --- the container ------------------------------------------------------------

SD_MACHINE=${SD_MACHINE:-kb-systemd}
SD_NSPAWN_PID=
SD_PID1=
SD_MERGED=

# sd_boot DIR [NSPAWN-ARGS...]: boots the cached root (an overlay with its
# upper layer in DIR) with systemd as PID 1; waits until systemd
# reports the boot finished. Sets SD_PID1 (the container's systemd, as the
# host sees it) and SD_NSPAWN_PID. The console goes to DIR/console.log.
sd_boot() {
    local dir=$1
    shift
    mkdir -p "$dir/upper" "$dir/overlay-work" "$dir/merged"
    mount -t overlay overlay \
        -o "lowerdir=$SD_ROOT,upperdir=$dir/upper,workdir=$dir/overlay-work" "$dir/merged" ||
        kb_die "cannot mount the overlay of $SD_ROOT on $dir/merged"
    SD_MERGED=$dir/merged
    # Not kb_spawn_daemon's setsid: nspawn wants to stay in our session so
    # it goes away with us; the lock's descriptor is closed all the same.
    if [ -n "${KB_LOCK_FD:-}" ]; then
        systemd-nspawn -q -b -D "$SD_MERGED" -M "$SD_MACHINE" --register=no --keep-unit \
            --private-network --console=read-only "$@" {KB_LOCK_FD}>&- \
            >"$dir/console.log" 2>&1 </dev/null &
    else
        systemd-nspawn -q -b -D "$SD_MERGED" -M "$SD_MACHINE" --register=no --keep-unit \
            --private-network --console=read-only "$@" >"$dir/console.log" 2>&1 </dev/null &
    fi
    SD_NSPAWN_PID=$!
    kb_wait_until 30 "the container's systemd to start" sd_find_pid1 ||
        { tail -n 30 "$dir/console.log" >&2; kb_die "systemd-nspawn did not start a systemd"; }
    SD_PID1=$(sd_find_pid1)
    kb_log "container $SD_MACHINE: nspawn pid $SD_NSPAWN_PID, its systemd is pid $SD_PID1 on the host"
    kb_wait_until 120 "the container's boot to finish" sd_booted ||
        { tail -n 30 "$dir/console.log" >&2; kb_die "the container did not finish booting"; }
    kb_log "container booted: $(sd_run systemctl is-system-running 2>&1)"
}

# sd_find_pid1: prints the host pid of the container's PID 1 (a descendant
# of nspawn that is pid 1 in its own pid namespace).
sd_find_pid1() {
    local p
    [ -n "$SD_NSPAWN_PID" ] || return 1
    for p in $(pgrep -P "$SD_NSPAWN_PID"; for c in $(pgrep -P "$SD_NSPAWN_PID"); do pgrep -P "$c"; done); do
        if awk '$1 == "NSpid:" { exit !($NF == 1 && NF > 2) }' "/proc/$p/status" 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# sd_run COMMAND...: runs COMMAND inside the container (its mount, UTS, IPC,
# network, pid and cgroup namespaces) with a clean environment.
sd_run() {
    nsenter -t "$SD_PID1" -m -u -i -n -p -C -- \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

sd_booted() {
    local s
    s=$(sd_run systemctl is-system-running 2>/dev/null)
    [ "$s" = running ] || [ "$s" = degraded ]
}

# sd_poweroff: asks the container's systemd to power off, waits for nspawn
# to exit (kills it after 60 s), unmounts the overlay. Safe to call twice.
sd_poweroff() {
    if [ -n "$SD_NSPAWN_PID" ] && ! kb_pid_gone "$SD_NSPAWN_PID"; then
        sd_run systemctl poweroff >/dev/null 2>&1 || kill -TERM "$SD_PID1" 2>/dev/null
        if ! kb_wait_until 60 "the container to power off" kb_pid_gone "$SD_NSPAWN_PID"; then
            kb_log "the container did not power off: killing nspawn (pid $SD_NSPAWN_PID)"
            kill -KILL "$SD_NSPAWN_PID" 2>/dev/null
            kb_wait_until 10 "nspawn to exit" kb_pid_gone "$SD_NSPAWN_PID" || true
        fi
        wait "$SD_NSPAWN_PID" 2>/dev/null
    fi
    SD_NSPAWN_PID=
    if [ -n "$SD_MERGED" ] && mountpoint -q "$SD_MERGED"; then
        umount "$SD_MERGED" || umount -l "$SD_MERGED"
    fi
    SD_MERGED=
}
