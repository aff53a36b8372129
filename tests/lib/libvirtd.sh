# shellcheck shell=bash
# Shared shell helpers for every test that needs the real stack: libvirtd
# and virtlogd started by hand (there is no systemd as PID 1 on the CI
# machines), ksm-balloon's hook installed where libvirt runs it, a
# machine-wide lock so two suites never share libvirtd and KSM at once, and
# a polling wait with a deadline (no bare sleeps in tests).
#
# Source it; every function is prefixed kb_.

KB_REALSTACK_LOCK=${KB_REALSTACK_LOCK:-/run/lock/ksm-balloon-realstack.lock}
KB_HOOK_PATH=${KB_HOOK_PATH:-/etc/libvirt/hooks/qemu.d/ksm-balloon}
KB_URI=${KB_URI:-qemu:///system}

kb_log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
kb_die() { kb_log "FAIL: $*"; exit 1; }

# kb_wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s
# until it succeeds; fails with DESCRIPTION after SECONDS.
kb_wait_until() {
    local limit=$1 what=$2 deadline
    shift 2
    deadline=$(( $(date +%s%N) + limit * 1000000000 ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s%N)" -ge "$deadline" ]; then
            kb_log "timed out after ${limit}s waiting for: $what"
            return 1
        fi
        sleep 0.2
    done
}

# Takes the machine-wide real-stack lock for the rest of the calling shell.
kb_realstack_lock() {
    mkdir -p "$(dirname "$KB_REALSTACK_LOCK")"
    exec {KB_LOCK_FD}>"$KB_REALSTACK_LOCK"
    if ! flock -n "$KB_LOCK_FD"; then
        kb_log "waiting for another real-stack suite to finish ($KB_REALSTACK_LOCK)"
        flock -w 3600 "$KB_LOCK_FD" || kb_die "real-stack lock not free after an hour"
    fi
}

# Writes what libvirtd needs to run QEMU guests as root under software
# emulation; idempotent.
kb_libvirtd_configure() {
    mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/qemu \
        /etc/libvirt/hooks/qemu.d
    # The Debian build's default qemu user must exist even when qemu.conf
    # overrides it.
    getent passwd libvirt-qemu >/dev/null || useradd -r -M -s /usr/sbin/nologin libvirt-qemu
    getent group kvm >/dev/null || groupadd -r kvm
    if ! grep -q '^# written by ksm-balloon tests' /etc/libvirt/qemu.conf 2>/dev/null; then
        if [ -e /etc/libvirt/qemu.conf ]; then
            cp -n /etc/libvirt/qemu.conf /etc/libvirt/qemu.conf.before-ksm-balloon-tests
        fi
        cat >/etc/libvirt/qemu.conf <<'CONF'
# written by ksm-balloon tests: guests run as root, no security driver
user = "root"
group = "root"
security_driver = "none"
CONF
    fi
}

kb_libvirtd_alive() { virsh -c "$KB_URI" version >/dev/null 2>&1; }

# kb_spawn_daemon CMD...: starts a daemon in its own session WITHOUT the
# real-stack lock's file descriptor. A daemon that inherited it would hold
# the machine-wide lock for as long as it runs (flock belongs to the open
# file, shared by every process that has it), and every later suite would
# wait for it in vain.
kb_spawn_daemon() {
    if [ -n "${KB_LOCK_FD:-}" ]; then
        setsid "$@" {KB_LOCK_FD}>&-
    else
        setsid "$@"
    fi
}

kb_libvirtd_start() {
    kb_libvirtd_configure
    if ! pgrep -x virtlogd >/dev/null; then
        kb_spawn_daemon /usr/sbin/virtlogd -d
    fi
    if ! pgrep -x libvirtd >/dev/null; then
        kb_spawn_daemon /usr/sbin/libvirtd -d
    fi
    kb_wait_until 60 "libvirtd to answer on $KB_URI" kb_libvirtd_alive ||
        kb_die "libvirtd did not start; see /var/log/libvirt/"
}

kb_libvirtd_stop() {
    pkill -x libvirtd || true
    kb_wait_until 30 "libvirtd to exit" bash -c '! pgrep -x libvirtd' ||
        { pkill -9 -x libvirtd || true; }
}

kb_libvirtd_restart() {
    kb_libvirtd_stop
    kb_libvirtd_start
}

# kb_install_hook BIN CONFIG: installs hooks/ksm-balloon as libvirt's qemu.d
# hook, calling BIN with the settings in CONFIG. libvirtd only reads hooks
# when it starts, so it is restarted when the hook changed.
kb_install_hook() {
    local bin=$1 config=$2 src new
    src="$(dirname "${BASH_SOURCE[0]}")/../../hooks/ksm-balloon"
    new=$(sed -e "s|^BIN=.*|BIN=$bin|" -e "s|^CONFIG=.*|CONFIG=$config|" "$src")
    if [ "$new" != "$(cat "$KB_HOOK_PATH" 2>/dev/null)" ]; then
        mkdir -p "$(dirname "$KB_HOOK_PATH")"
        printf '%s\n' "$new" >"$KB_HOOK_PATH.tmp"
        chmod 0755 "$KB_HOOK_PATH.tmp"
        mv "$KB_HOOK_PATH.tmp" "$KB_HOOK_PATH"
        if pgrep -x libvirtd >/dev/null; then
            kb_log "hook changed: restarting libvirtd so it sees it"
            kb_libvirtd_restart
        fi
    fi
}
