# shellcheck shell=bash
# The real-stack harness shared by tests/realstack/suite.sh and demo.sh:
# the test guest (built from installed packages, cached), its domain XML,
# booting and destroying guests, reading what libvirt and the guest say
# about its memory, sending it commands, the KSM counters, running
# ksm-balloon with the test's settings, and a full teardown.
#
# Source it after tests/lib/libvirtd.sh. Every function is prefixed rs_.
# Guests are transient libvirt domains named "kbrs-*"; only those are ever
# destroyed.

RS_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RS_REPO=$(cd "$RS_HERE/../.." && pwd)
# Runtime files: consoles, command sockets, ksm-balloon's config and state.
RS_RUN=${RS_RUN:-/run/ksm-balloon-test}
RS_CACHE=${RS_CACHE:-/var/cache/ksm-balloon-tests}
RS_CONFIG=$RS_RUN/config
RS_STATE=$RS_RUN/state.json
RS_PREFIX=kbrs-
RS_MIB=1024 # KiB per MiB

# The shared read-only disk the guests copy identical data from (MiB).
RS_DATA_MIB=64

rs_virsh() { virsh -q -c "$KB_URI" "$@"; }

# --- the guest image ------------------------------------------------------

# The newest installed Debian kernel that has the virtio balloon module.
rs_guest_kernel_version() {
    local v
    for v in $(ls -1 /lib/modules | sort -rV); do
        if [ -r "/boot/vmlinuz-$v" ] &&
            ls "/lib/modules/$v/kernel/drivers/virtio/virtio_balloon.ko"* >/dev/null 2>&1; then
            echo "$v"
            return 0
        fi
    done
    return 1
}

RS_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
    virtio_balloon virtio_blk)

# rs_copy_module VERSION NAME DESTDIR: the module as a plain .ko (Debian may
# ship them compressed; busybox insmod wants them plain).
rs_copy_module() {
    local v=$1 m=$2 dest=$3 f
    f=$(find "/lib/modules/$v/kernel/drivers/virtio" "/lib/modules/$v/kernel/drivers/block" \
        -name "$m.ko*" | head -n1)
    [ -n "$f" ] || { kb_log "module $m not found for kernel $v"; return 1; }
    case $f in
        *.ko) cp "$f" "$dest/$m.ko" ;;
        *.ko.xz) xz -dc "$f" >"$dest/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$dest/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$dest/$m.ko" ;;
        *) kb_log "module $f: unknown compression"; return 1 ;;
    esac
}

# rs_build_guest: sets RS_KERNEL, RS_INITRD and RS_DATA, building the
# initramfs (and the shared data disk) unless a cached one with the same key
# exists. The key: kernel version, busybox version, module list, this
# guest's /init and the build recipe itself (these functions' text).
rs_build_guest() {
    local v key dir tmp m
    v=$(rs_guest_kernel_version) ||
        kb_die "no installed kernel with virtio_balloon under /lib/modules (is linux-image-amd64 installed?)"
    [ -x /bin/busybox ] || kb_die "/bin/busybox is missing (busybox-static)"
    key=$( {
        echo "$v"
        /bin/busybox | head -n1
        echo "${RS_MODULES[*]}"
        cat "$RS_HERE/guest-init.sh"
        declare -f rs_build_guest rs_copy_module
    } | sha256sum | cut -c1-16)
    dir=$RS_CACHE/guest-$v-$key
    RS_KERNEL=/boot/vmlinuz-$v
    RS_INITRD=$dir/initrd.img
    RS_DATA=$RS_CACHE/shared-data-${RS_DATA_MIB}M.img
    mkdir -p "$RS_CACHE"
    if [ ! -s "$RS_INITRD" ]; then
        kb_log "building the guest initramfs for kernel $v into $dir"
        tmp=$(mktemp -d)
        mkdir -p "$tmp/root/bin" "$tmp/root/modules" "$tmp/root/fill"
        cp /bin/busybox "$tmp/root/bin/busybox"
        ln -s busybox "$tmp/root/bin/sh"
        for m in "${RS_MODULES[@]}"; do
            rs_copy_module "$v" "$m" "$tmp/root/modules" || { rm -rf "$tmp"; return 1; }
        done
        install -m 0755 "$RS_HERE/guest-init.sh" "$tmp/root/init"
        mkdir -p "$dir"
        (cd "$tmp/root" && find . | cpio -o -H newc --quiet | gzip -9) >"$tmp/initrd.img"
        mv "$tmp/initrd.img" "$RS_INITRD"
        rm -rf "$tmp"
    fi
    if [ "$(stat -c %s "$RS_DATA" 2>/dev/null)" != $((RS_DATA_MIB * 1048576)) ]; then
        kb_log "writing the shared data disk $RS_DATA ($RS_DATA_MIB MiB of random bytes)"
        head -c $((RS_DATA_MIB * 1048576)) /dev/urandom >"$RS_DATA.tmp"
        mv "$RS_DATA.tmp" "$RS_DATA"
    fi
}

# --- guests ----------------------------------------------------------------

rs_console() { echo "$RS_RUN/$1.console"; }
rs_socket() { echo "$RS_RUN/$1.cmd"; }

# rs_domain_xml NAME MEMORY_MIB CURRENT_MIB BALLOON(virtio|none)
rs_domain_xml() {
    local name=$1 mem=$2 cur=$3 balloon=$4 stats=''
    [ "$balloon" = virtio ] && stats="<stats period='2'/>"
    cat <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>$mem</memory>
  <currentMemory unit='MiB'>$cur</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$RS_KERNEL</kernel>
    <initrd>$RS_INITRD</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$RS_DATA'/>
      <target dev='vda' bus='virtio'/>
      <readonly/>
      <shareable/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='$(rs_console "$name")'/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path='$(rs_socket "$name")'/>
      <target port='1'/>
    </serial>
    <memballoon model='$balloon'>$stats</memballoon>
  </devices>
</domain>
XML
}

# rs_boot NAME MEMORY_MIB CURRENT_MIB [BALLOON]: creates the transient
# domain (libvirt runs the hook meanwhile). Does not wait for the guest.
rs_boot() {
    local name=$RS_PREFIX$1 xml
    xml=$RS_RUN/$name.xml
    rm -f "$(rs_console "$name")" "$(rs_socket "$name")"
    rs_domain_xml "$name" "$2" "$3" "${4:-virtio}" >"$xml"
    rs_virsh create "$xml" >/dev/null || kb_die "virsh create $name failed"
}

rs_guest_ready() { grep -q '^KB-GUEST-READY' "$(rs_console "$RS_PREFIX$1")" 2>/dev/null; }

# rs_wait_ready SECONDS GUEST...: every guest printed its ready marker and a
# first MEMTOTAL line.
rs_wait_ready() {
    local limit=$1 g
    shift
    for g in "$@"; do
        kb_wait_until "$limit" "guest $g to boot (marker on its console)" rs_guest_ready "$g" ||
            return 1
        kb_wait_until 20 "guest $g to print MEMTOTAL" rs_memtotal "$g" || return 1
    done
}

# rs_actual GUEST: the balloon's size as libvirt reports it (dommemstat
# actual), KiB.
rs_actual() {
    rs_virsh dommemstat "$RS_PREFIX$1" 2>/dev/null | awk '$1 == "actual" { print $2; f = 1 } END { exit !f }'
}

# rs_memtotal GUEST: the guest's own MemTotal (kB) from the last MEMTOTAL
# line on its console.
rs_memtotal() {
    grep -a '^MEMTOTAL ' "$(rs_console "$RS_PREFIX$1")" 2>/dev/null | tail -n1 |
        awk '{ print $2; f = 1 } END { exit !f }'
}

# rs_memtotal_after GUEST LINE: a MEMTOTAL printed after console line LINE.
rs_console_lines() { wc -l <"$(rs_console "$RS_PREFIX$1")"; }
rs_memtotal_after() {
    tail -n +"$(($2 + 1))" "$(rs_console "$RS_PREFIX$1")" 2>/dev/null | grep -a '^MEMTOTAL ' |
        tail -n1 | awk '{ print $2; f = 1 } END { exit !f }'
}

# rs_used GUEST: the memory libvirt says the domain uses (dominfo "Used
# memory"), KiB; for a guest without a balloon, dommemstat has no `actual`.
rs_used() {
    rs_virsh dominfo "$RS_PREFIX$1" 2>/dev/null | awk '$1 == "Used" { print $3; f = 1 } END { exit !f }'
}

# rs_actual_is GUEST KIB: dommemstat actual equals KIB.
rs_actual_is() { [ "$(rs_actual "$1")" = "$2" ]; }
# rs_actual_within GUEST LO HI
rs_actual_within() {
    local a
    a=$(rs_actual "$1") || return 1
    [ "$a" -ge "$2" ] && [ "$a" -le "$3" ]
}

# rs_cmd GUEST COMMAND [ARG]: sends a command to the guest's ttyS1 and waits
# (60 s at most) for its acknowledgement on the console; prints it. The
# connection stays open until then: QEMU takes a serial port's input 16
# bytes (its FIFO) at a time and drops what is left when the client hangs
# up early.
rs_cmd() {
    local g=$RS_PREFIX$1
    shift
    # A token no earlier command used (this often runs in a subshell, so
    # no counter): the acknowledgement is matched by it.
    python3 - "$(rs_socket "$g")" "$(rs_console "$g")" "t$(date +%s%N)" "$*" <<'PY'
import socket, sys, time
sock, console, token, command = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
s.sendall(f"{command} {token}\n".encode())
mark = f"KB-DONE {token} "
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    with open(console, errors="replace") as f:
        for line in f:
            if line.startswith(mark):
                print(line[len(mark):].strip())
                sys.exit(0)
    time.sleep(0.2)
print(f"timed out after 60s waiting for {sock}'s guest to do '{command}'", file=sys.stderr)
sys.exit(1)
PY
}

rs_destroy() { rs_virsh destroy "$RS_PREFIX$1" >/dev/null 2>&1; }

# Every kbrs-* domain libvirt runs.
rs_our_domains() { rs_virsh list --name 2>/dev/null | grep "^$RS_PREFIX" || true; }

rs_destroy_all() {
    local d
    for d in $(rs_our_domains); do
        virsh -q -c "$KB_URI" destroy "$d" >/dev/null 2>&1 || true
    done
}

# --- KSM --------------------------------------------------------------------

rs_ksm() { cat "$KB_KSM_DIR/$1"; }

# rs_savings_kib: what KSM saved, read by the test itself: general_profit
# (bytes, net of KSM's own metadata) where the kernel has it, as
# ksm-balloon's default metric does; negative counts as 0.
rs_savings_kib() {
    local p
    if [ -r "$KB_KSM_DIR/general_profit" ]; then
        p=$(rs_ksm general_profit)
        [ "$p" -gt 0 ] && echo $((p / 1024)) || echo 0
    else
        echo $(( ($(rs_ksm pages_sharing) + $(cat "$KB_KSM_DIR/ksm_zero_pages" 2>/dev/null || echo 0)) * $(getconf PAGESIZE) / 1024 ))
    fi
}

# rs_wait_savings_settle SECONDS MIN_KIB: waits until the savings are at
# least MIN_KIB and moved less than 2 MiB over the last 3 s.
rs_savings_settled() {
    local min=$1 now
    now=$(rs_savings_kib)
    RS_SAVINGS_HISTORY+=("$now")
    local n=${#RS_SAVINGS_HISTORY[@]}
    [ "$n" -ge 4 ] || return 1
    local old=${RS_SAVINGS_HISTORY[$((n - 4))]}
    [ "$now" -ge "$min" ] && [ $((now > old ? now - old : old - now)) -lt 2048 ]
}
rs_wait_savings_settle() {
    local limit=$1 min=$2 deadline
    RS_SAVINGS_HISTORY=()
    deadline=$(($(date +%s) + limit))
    until rs_savings_settled "$min"; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            kb_log "timed out after ${limit}s waiting for KSM savings >= $((min / 1024)) MiB and steady (last $(rs_savings_kib) KiB)"
            return 1
        fi
        sleep 1
    done
}

rs_meminfo_available() { awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo; }

# --- ksm-balloon --------------------------------------------------------------

# rs_write_config: the settings file the hook wrapper and every test pass
# read (KEY=VALUE, as /etc/sysconfig/ksm-balloon).
rs_write_config() {
    mkdir -p "$RS_RUN"
    cat >"$RS_CONFIG" <<CONF
# written by tests/realstack/lib.sh: test-only state, never /var/lib/ksm-balloon
KSM_BALLOON_STATE=$RS_STATE
KSM_BALLOON_CONNECT=$KB_URI
CONF
}

# rs_kb ARGS...: ksm-balloon with the config file's settings (as the timer
# would run it), stdout and stderr as they are.
rs_kb() {
    (
        set -a
        # shellcheck disable=SC1090
        . "$RS_CONFIG"
        set +a
        "$RS_BIN" "$@"
    )
}

# rs_state_field UUID-or-NAME FIELD: a VM's field in the state file.
rs_state_vm() {
    python3 - "$RS_STATE" "$1" "$2" <<'PY'
import json, sys
path, name, field = sys.argv[1:4]
vms = json.load(open(path))["vms"]
hits = [v for v in vms.values() if v["name"] == name]
if len(hits) != 1:
    sys.exit(1)
print(hits[0][field])
PY
}

rs_state_names() {
    python3 -c 'import json,sys; print("\n".join(sorted(v["name"] for v in json.load(open(sys.argv[1]))["vms"].values())))' "$RS_STATE"
}

# rs_balloons_settled: every managed guest's balloon, as the pass reads it
# (libvirt's bulk stats, which follow QEMU's balloon events, throttled to
# one a second), is within 1 MiB of what the last pass set (or of its floor
# before any pass).
rs_balloons_settled() {
    local report
    report=$(KSM_BALLOON_LOG=error rs_kb status --json 2>/dev/null) || return 1
    python3 - "$RS_STATE" "$report" <<'PY'
import json, sys
state = json.load(open(sys.argv[1]))["vms"]
for vm in json.loads(sys.argv[2])["vms"]:
    rec = state.get(vm["uuid"])
    if rec is None or vm["action"] == "skip":
        continue
    want = rec["last_target_kib"] or rec["floor_kib"]
    if abs(vm["current_kib"] - want) > 1024:
        sys.exit(1)
PY
}

# --- the method, computed by the test ----------------------------------------

# rs_expected_bonuses POOL_KIB HEADROOM_KIB...: equal split of POOL with
# each share capped at its headroom, what a capped VM cannot take going to
# the others (water-filling); prints one bonus per VM, in order.
rs_expected_bonuses() {
    python3 - "$@" <<'PY'
import sys
pool, caps = int(sys.argv[1]), [int(c) for c in sys.argv[2:]]
out, left = [0] * len(caps), pool
order = sorted(range(len(caps)), key=lambda i: caps[i])
for k, i in enumerate(order):
    give = min(left // (len(caps) - k), caps[i])
    out[i] = give
    left -= give
print(" ".join(map(str, out)))
PY
}

# --- setup, failure reports and teardown ------------------------------------------

# rs_setup BIN: takes the real-stack lock for the rest of the calling shell,
# arms the teardown (EXIT, and Ctrl-C/TERM through it), saves KSM's knobs,
# builds or reuses the guest image, writes the test config, installs the hook
# calling BIN before any guest starts, starts libvirtd, destroys kbrs-*
# guests a crashed run may have left, and unmerges whatever KSM held so the
# run starts from no savings. Sets RS_BIN.
rs_setup() {
    RS_BIN=$(realpath "$1")
    [ -x "$RS_BIN" ] || kb_die "ksm-balloon binary $RS_BIN is missing: build it first"
    local tool
    for tool in virsh qemu-system-x86_64 cpio python3 /usr/sbin/libvirtd /usr/sbin/virtlogd; do
        command -v "$tool" >/dev/null || kb_die "$tool is missing: run tests/deps.sh"
    done
    kb_realstack_lock
    RS_LOCKED_AT=$(date +%s)
    trap 'rs_teardown' EXIT
    trap 'exit 130' INT TERM
    kb_ksm_save
    rs_build_guest || kb_die "cannot build the guest image"
    mkdir -p "$RS_RUN"
    rm -f "$RS_RUN"/*.console "$RS_RUN"/*.cmd "$RS_RUN"/*.xml "$RS_RUN"/pass-*.out \
        "$RS_STATE" "$RS_STATE.lock"
    rs_write_config
    kb_install_hook "$RS_BIN" "$RS_CONFIG"
    kb_libvirtd_start
    rs_destroy_all
    kb_ksm_set 2
}

rs_diagnostics() {
    local c
    echo "=============== diagnostics"
    for c in "$RS_RUN"/*.console; do
        [ -e "$c" ] || continue
        echo "--- console $(basename "$c" .console) (last 15 lines)"
        tail -n 15 "$c" | tr -d '\r'
    done
    kb_libvirtd_log_tail 40
    echo "--- virsh list"
    rs_virsh list --all 2>&1 || true
    echo "--- KSM: run=$(rs_ksm run) pages_sharing=$(rs_ksm pages_sharing) general_profit=$(rs_ksm general_profit 2>/dev/null)"
    echo "--- state $RS_STATE"
    cat "$RS_STATE" 2>&1 || true
    echo "--- ksm-balloon status"
    rs_kb status 2>&1 || true
    echo "=============== end of diagnostics"
}

# rs_teardown: guests destroyed, KSM as found, hook removed. Safe to call
# twice and from a trap.
rs_teardown() {
    trap - EXIT INT TERM
    kb_log "teardown: destroying ${RS_PREFIX}* guests, restoring KSM, removing the hook"
    if kb_libvirtd_alive; then
        rs_destroy_all
    else
        # libvirtd is down (a test stopped it): kill our QEMUs by their pid files.
        local p
        for p in /run/libvirt/qemu/"$RS_PREFIX"*.pid; do
            [ -e "$p" ] && kill "$(cat "$p")" 2>/dev/null
        done
    fi
    kb_ksm_restore
    kb_remove_hook
}
