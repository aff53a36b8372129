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
# libvirtd's own log (warnings and errors) and a second log with the QEMU
# monitor traffic at debug level: every QMP command libvirt sends (a balloon
# resize is {"execute":"balloon",...}), so tests can count resizes from
# libvirt's side rather than trusting ksm-balloon's word.
KB_LIBVIRTD_LOG=${KB_LIBVIRTD_LOG:-/var/log/libvirt/libvirtd.log}
KB_MONITOR_LOG=${KB_MONITOR_LOG:-/var/log/libvirt/libvirtd-qemu-monitor.log}
KB_KSM_DIR=${KB_KSM_DIR:-/sys/kernel/mm/ksm}

kb_log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
# KB_FAILURES: every failure said so far (kb_die, kb_wait_until's timeouts,
# rs_check), so a diagnostics dump can repeat them at its end: CI shows the
# tail of a long log, and the cause must be in it.
KB_FAILURES=()
kb_die() { KB_FAILURES+=("$*"); kb_log "FAIL: $*"; exit 1; }

# kb_wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s
# until it succeeds; fails with DESCRIPTION after SECONDS.
kb_wait_until() {
    local limit=$1 what=$2 deadline
    shift 2
    deadline=$(( $(date +%s%N) + limit * 1000000000 ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s%N)" -ge "$deadline" ]; then
            KB_FAILURES+=("timed out after ${limit}s waiting for: $what")
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
# emulation, and its logging; idempotent. Sets KB_LIBVIRTD_CONF_CHANGED=1
# when libvirtd.conf was (re)written, so a running daemon gets restarted.
KB_LIBVIRTD_CONF_CHANGED=0
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
    local want
    want=$(cat <<CONF
# written by ksm-balloon tests: logs to files (there is no journal here)
log_filters="1:qemu.qemu_monitor 3:*"
log_outputs="3:file:$KB_LIBVIRTD_LOG 1:file:$KB_MONITOR_LOG"
CONF
)
    if [ "$want" != "$(cat /etc/libvirt/libvirtd.conf 2>/dev/null)" ]; then
        if [ -e /etc/libvirt/libvirtd.conf ] &&
            ! grep -q '^# written by ksm-balloon tests' /etc/libvirt/libvirtd.conf; then
            cp -n /etc/libvirt/libvirtd.conf /etc/libvirt/libvirtd.conf.before-ksm-balloon-tests
        fi
        printf '%s\n' "$want" >/etc/libvirt/libvirtd.conf
        KB_LIBVIRTD_CONF_CHANGED=1
    fi
}

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

kb_libvirtd_alive() { timeout 10 virsh -c "$KB_URI" version >/dev/null 2>&1; }

# kb_pid_gone PID: the process exited (a zombie nobody reaped counts as gone:
# PID 1 on these machines does not always reap daemons' zombies).
kb_pid_gone() { [ ! -e "/proc/$1" ] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# kb_running NAME: the pids of live (not zombie) processes called NAME.
kb_running() {
    local pid
    for pid in $(pgrep -x "$1"); do
        kb_pid_gone "$pid" || echo "$pid"
    done
}

kb_libvirtd_start() {
    kb_libvirtd_configure
    if [ -z "$(kb_running virtlogd)" ]; then
        kb_spawn_daemon /usr/sbin/virtlogd -d
    fi
    if [ "$KB_LIBVIRTD_CONF_CHANGED" = 1 ] && [ -n "$(kb_running libvirtd)" ]; then
        kb_log "libvirtd.conf changed: restarting libvirtd so it logs to $KB_LIBVIRTD_LOG"
        KB_LIBVIRTD_CONF_CHANGED=0
        kb_libvirtd_stop
    fi
    KB_LIBVIRTD_CONF_CHANGED=0
    if [ -z "$(kb_running libvirtd)" ]; then
        kb_spawn_daemon /usr/sbin/libvirtd -d
    fi
    # (180 s: seen here, a libvirtd restarted with guests of another run
    # still being torn down on a loaded 2-core machine answered after
    # more than 60 s; a healthy one answers within a second or two)
    kb_wait_until 180 "libvirtd to answer on $KB_URI" kb_libvirtd_alive || {
        kb_log "libvirtd processes: $(kb_running libvirtd | tr '\n' ' ')"
        kb_libvirtd_log_tail 20 >&2
        kb_die "libvirtd did not start; see $KB_LIBVIRTD_LOG"
    }
}

# The running libvirtd's pid: from its pid file, checked against /proc.
kb_libvirtd_pid() {
    local pid
    pid=$(cat /run/libvirtd.pid 2>/dev/null)
    if [ -z "$pid" ] || kb_pid_gone "$pid" || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != libvirtd ]; then
        pid=$(kb_running libvirtd | head -n1)
    fi
    [ -n "$pid" ] && echo "$pid"
}

# Stops libvirtd (by its pid); its guests (QEMU processes) keep running.
kb_libvirtd_stop() {
    local pid
    pid=$(kb_libvirtd_pid) || return 0
    kill "$pid" 2>/dev/null || true
    kb_wait_until 30 "libvirtd (pid $pid) to exit" kb_pid_gone "$pid" ||
        { kill -9 "$pid" 2>/dev/null || true; }
}

kb_libvirtd_restart() {
    kb_libvirtd_stop
    kb_libvirtd_start
}

# kb_install_hook BIN CONFIG: installs, as libvirt's qemu.d hook, a wrapper
# that runs the hook program with the test's settings file: libvirtd gives
# hooks a bare environment, so KSM_BALLOON_CONFIG is set in the wrapper
# (an installed host has no wrapper: the link points at the program, which
# reads /etc/sysconfig/ksm-balloon). BIN is the hook program
# (ksm-balloon-hook), or the ksm-balloon program beside which cargo built it.
# libvirtd only reads hooks when it starts, so it is restarted when the
# hook changed.
kb_install_hook() {
    local bin=$1 config=$2 new
    [ "$(basename "$bin")" = ksm-balloon-hook ] || bin=$(dirname "$bin")/ksm-balloon-hook
    [ -x "$bin" ] || kb_die "the hook program $bin is missing: build it first (cargo build)"
    new=$(printf '%s\n' '#!/bin/sh' \
        '# Written by tests/lib/libvirtd.sh (kb_install_hook): the hook program with' \
        "# a test's settings file." \
        "KSM_BALLOON_CONFIG='$config' exec '$bin' \"\$@\"")
    if [ "$new" != "$(cat "$KB_HOOK_PATH" 2>/dev/null)" ]; then
        mkdir -p "$(dirname "$KB_HOOK_PATH")"
        rm -f "$KB_HOOK_PATH.tmp"
        printf '%s\n' "$new" >"$KB_HOOK_PATH.tmp"
        chmod 0755 "$KB_HOOK_PATH.tmp"
        mv "$KB_HOOK_PATH.tmp" "$KB_HOOK_PATH"
        if [ -n "$(kb_running libvirtd)" ]; then
            kb_log "hook changed: restarting libvirtd so it sees it"
            kb_libvirtd_restart
        fi
    fi
}

# Removes the hook kb_install_hook installed. libvirtd is left running: a
# hook script that is gone is simply not run.
kb_remove_hook() {
    rm -f "$KB_HOOK_PATH" "$KB_HOOK_PATH.tmp"
}

# kb_libvirtd_log_tail [LINES]: the end of libvirtd's log, for a failure report.
kb_libvirtd_log_tail() {
    local n=${1:-40}
    echo "--- last $n lines of $KB_LIBVIRTD_LOG"
    tail -n "$n" "$KB_LIBVIRTD_LOG" 2>&1 || true
}

# kb_monitor_log_mark: prints the monitor log's current size; pass it to
# kb_monitor_balloon_calls to count what libvirt sent since.
kb_monitor_log_mark() { stat -c %s "$KB_MONITOR_LOG" 2>/dev/null || echo 0; }

# kb_monitor_balloon_calls MARK: how many balloon resize commands libvirt
# sent to any QEMU since MARK (one per virDomainSetMemory on a live guest).
kb_monitor_balloon_calls() {
    tail -c +"$(( $1 + 1 ))" "$KB_MONITOR_LOG" 2>/dev/null |
        grep -c 'QEMU_MONITOR_SEND_MSG.*"execute":"balloon"' || true
}

# kb_monitor_sent_since MARK: how many commands libvirt sent to any QEMU's
# monitor since MARK (a call libvirtd makes on a client's behalf that needs
# QEMU: while that QEMU is stopped, the client is blocked in its call).
kb_monitor_sent_since() {
    tail -c +"$(( $1 + 1 ))" "$KB_MONITOR_LOG" 2>/dev/null | grep -c 'QEMU_MONITOR_SEND_MSG' || true
}

# KSM: save the knobs a test turns, restore them exactly.
KB_KSM_KNOBS=(run pages_to_scan sleep_millisecs)
declare -gA KB_KSM_SAVED=()

kb_ksm_save() {
    local k
    [ -d "$KB_KSM_DIR" ] || kb_die "$KB_KSM_DIR is missing: this kernel has no KSM"
    for k in "${KB_KSM_KNOBS[@]}"; do
        KB_KSM_SAVED[$k]=$(cat "$KB_KSM_DIR/$k")
    done
    kb_log "KSM as found: run=${KB_KSM_SAVED[run]} pages_to_scan=${KB_KSM_SAVED[pages_to_scan]} sleep_millisecs=${KB_KSM_SAVED[sleep_millisecs]}"
}

kb_ksm_restore() {
    local k
    [ "${#KB_KSM_SAVED[@]}" -gt 0 ] || return 0
    for k in pages_to_scan sleep_millisecs run; do
        [ -n "${KB_KSM_SAVED[$k]:-}" ] || continue
        echo "${KB_KSM_SAVED[$k]}" >"$KB_KSM_DIR/$k" ||
            kb_log "could not restore $KB_KSM_DIR/$k to ${KB_KSM_SAVED[$k]}"
    done
    kb_log "KSM restored: run=$(cat "$KB_KSM_DIR/run") pages_to_scan=$(cat "$KB_KSM_DIR/pages_to_scan") sleep_millisecs=$(cat "$KB_KSM_DIR/sleep_millisecs")"
}

# kb_ksm_set RUN [PAGES_TO_SCAN SLEEP_MILLISECS]
kb_ksm_set() {
    if [ $# -ge 3 ]; then
        echo "$2" >"$KB_KSM_DIR/pages_to_scan"
        echo "$3" >"$KB_KSM_DIR/sleep_millisecs"
    fi
    echo "$1" >"$KB_KSM_DIR/run"
}
