# shellcheck shell=bash
# The benchmarks' real-stack guests (docs/BENCHMARKS.md): built and booted
# the way tests/realstack/lib.sh does it (same kernel, modules, busybox and
# libvirtd helpers, which this file reuses), with what the I/O benchmark
# adds: a static reader in the initramfs (bench/guest/reader.rs) as the
# workload, its own /init (bench/guest/init.sh), a data disk of random
# bytes per guest throttled by <iotune> with host caching off
# (cache='none'), and a shared read-only "application" disk whose bytes
# every guest holds in memory (what KSM finds to merge).
#
# Source after tests/lib/libvirtd.sh and tests/realstack/lib.sh. Every
# function is prefixed kbb_. Guests are transient domains named "kbbench-*";
# only those are ever destroyed.

KBB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KBB_PREFIX=kbbench-
KBB_RUN=${KBB_RUN:-/run/ksm-balloon-bench}
KBB_CACHE=${KBB_CACHE:-/var/cache/ksm-balloon-bench}

# The guest and its disks (MiB, MiB/s); overridable from the environment.
KBB_FLOOR_MIB=${KBB_FLOOR_MIB:-160}
KBB_CEIL_MIB=${KBB_CEIL_MIB:-256}
KBB_DATA_MIB=${KBB_DATA_MIB:-128}
KBB_APP_MIB=${KBB_APP_MIB:-32}
KBB_IOTUNE_MIBS=${KBB_IOTUNE_MIBS:-20}
KBB_INTERVAL=${KBB_INTERVAL:-2}

kbb_virsh() { virsh -q -c "$KB_URI" "$@"; }

# kbb_pick_bin SHORT: sets BIN to the ksm-balloon the benchmark measures:
# $KBB_BIN when set (nothing is built); else the debug build for the short
# (CI) version (SHORT = 1), which run-all.sh has already made, or the
# release build for the full one.
kbb_pick_bin() {
    local repo
    repo=$(cd "$KBB_HERE/.." && pwd)
    if [ -n "${KBB_BIN:-}" ]; then
        BIN=$KBB_BIN
    elif [ "$1" = 1 ]; then
        (cd "$repo" && cargo build --locked --quiet)
        BIN=$repo/target/debug/ksm-balloon
    else
        (cd "$repo" && cargo build --release --locked --quiet)
        BIN=$repo/target/release/ksm-balloon
    fi
}

# kbb_build_guest: sets KBB_KERNEL and KBB_INITRD, building the initramfs
# (with the reader compiled by rustc) unless a cached one with the same key
# exists. The key: kernel, busybox, module list, init.sh, reader.rs, rustc.
kbb_build_guest() {
    local v key dir tmp m
    v=$(rs_guest_kernel_version) ||
        kb_die "no installed kernel with virtio_balloon under /lib/modules (is linux-image-amd64 installed?)"
    [ -x /bin/busybox ] || kb_die "/bin/busybox is missing (busybox-static)"
    command -v rustc >/dev/null || kb_die "rustc is missing: it builds the guest's reader"
    key=$( {
        echo "$v"
        /bin/busybox | head -n1
        echo "${RS_MODULES[*]}"
        cat "$KBB_HERE/guest/init.sh" "$KBB_HERE/guest/reader.rs"
        rustc --version
    } | sha256sum | cut -c1-16)
    dir=$KBB_CACHE/guest-$v-$key
    KBB_KERNEL=/boot/vmlinuz-$v
    KBB_INITRD=$dir/initrd.img
    mkdir -p "$KBB_CACHE"
    if [ ! -s "$KBB_INITRD" ]; then
        kb_log "building the bench guest initramfs for kernel $v into $dir"
        tmp=$(mktemp -d)
        mkdir -p "$tmp/root/bin" "$tmp/root/modules"
        cp /bin/busybox "$tmp/root/bin/busybox"
        ln -s busybox "$tmp/root/bin/sh"
        for m in "${RS_MODULES[@]}"; do
            rs_copy_module "$v" "$m" "$tmp/root/modules" || { rm -rf "$tmp"; return 1; }
        done
        rustc -O -C target-feature=+crt-static -C strip=symbols --edition 2021 \
            "$KBB_HERE/guest/reader.rs" -o "$tmp/root/bin/reader" ||
            { rm -rf "$tmp"; kb_die "building the guest reader failed"; }
        install -m 0755 "$KBB_HERE/guest/init.sh" "$tmp/root/init"
        mkdir -p "$dir"
        (cd "$tmp/root" && find . | cpio -o -H newc --quiet | gzip -9) >"$tmp/initrd.img"
        mv "$tmp/initrd.img" "$KBB_INITRD"
        rm -rf "$tmp"
    fi
}

# kbb_disk NAME MIB: a cached file of MIB MiB of random bytes; prints its path.
# Written once and reused, so every arm and repeat reads the same data.
kbb_disk() {
    local f=$KBB_CACHE/$1-$2M.img
    if [ "$(stat -c %s "$f" 2>/dev/null)" != $(($2 * 1048576)) ]; then
        kb_log "writing $f ($2 MiB of random bytes)"
        mkdir -p "$KBB_CACHE"
        head -c $(($2 * 1048576)) /dev/urandom >"$f.tmp"
        mv "$f.tmp" "$f"
    fi
    echo "$f"
}

kbb_console() { echo "$KBB_RUN/$1.console"; }

# kbb_domain_xml NAME INDEX CURRENT_MIB: the bench guest, ceiling
# KBB_CEIL_MIB, booted at CURRENT_MIB.
kbb_domain_xml() {
    local name=$1 i=$2 cur=$3 data app app_disk=''
    data=$(kbb_disk "data-$i" "$KBB_DATA_MIB")
    if [ "$KBB_APP_MIB" -gt 0 ]; then
        app=$(kbb_disk app "$KBB_APP_MIB")
        app_disk="<disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='$app'/>
      <target dev='vdb' bus='virtio'/>
      <serial>kbapp</serial>
      <readonly/>
      <shareable/>
    </disk>"
    fi
    cat <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>$KBB_CEIL_MIB</memory>
  <currentMemory unit='MiB'>$cur</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$KBB_KERNEL</kernel>
    <initrd>$KBB_INITRD</initrd>
    <cmdline>console=ttyS0 quiet kb.app_mib=$KBB_APP_MIB kb.interval=$KBB_INTERVAL kb.seed=$((i + 1))</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='$data'/>
      <target dev='vda' bus='virtio'/>
      <serial>kbdata</serial>
      <iotune>
        <read_bytes_sec>$((KBB_IOTUNE_MIBS * 1048576))</read_bytes_sec>
      </iotune>
      <readonly/>
    </disk>
    $app_disk
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='$(kbb_console "$name")'/>
      <target port='0'/>
    </serial>
    <memballoon model='virtio'><stats period='2'/></memballoon>
  </devices>
</domain>
XML
}

# kbb_boot INDEX CURRENT_MIB: creates guest kbbench-INDEX (no wait).
kbb_boot() {
    local name=$KBB_PREFIX$1 xml
    mkdir -p "$KBB_RUN"
    xml=$KBB_RUN/$name.xml
    rm -f "$(kbb_console "$name")"
    kbb_domain_xml "$name" "$1" "$2" >"$xml"
    kbb_virsh create "$xml" >/dev/null || kb_die "virsh create $name failed"
}

kbb_names() {
    local i
    for ((i = 0; i < $1; i++)); do echo "$KBB_PREFIX$i"; done
}

kbb_reading() { grep -aq '^KB-TPUT ' "$(kbb_console "$1")" 2>/dev/null; }
kbb_failed() { grep -aqE '^KB-(GUEST|READER)-FAILED|Kernel panic' "$(kbb_console "$1")" 2>/dev/null; }

# kbb_wait_reading SECONDS NAME...: every guest printed its first KB-TPUT.
kbb_wait_reading() {
    local limit=$1 g
    shift
    for g in "$@"; do
        if kbb_failed "$g"; then
            kb_log "guest $g failed: $(grep -aE '^KB-(GUEST|READER)-FAILED|Kernel panic' "$(kbb_console "$g")" | head -n3)"
            return 1
        fi
        kb_wait_until "$limit" "guest $g to boot and start reading" kbb_reading "$g" || return 1
    done
}

# kbb_balloon NAME: balloon.current (KiB) as libvirt reports it.
kbb_balloon() {
    kbb_virsh domstats --balloon "$1" 2>/dev/null |
        awk -F= '$1 ~ /balloon.current$/ { print $2; f = 1 } END { exit !f }'
}
kbb_balloon_is() { [ "$(kbb_balloon "$1")" = "$2" ]; }

kbb_our_domains() { kbb_virsh list --name 2>/dev/null | grep "^$KBB_PREFIX" || true; }

kbb_destroy_all() {
    local d
    for d in $(kbb_our_domains); do
        kbb_virsh destroy "$d" >/dev/null 2>&1 || true
    done
}

kbb_diagnostics() {
    local c
    echo "=============== bench diagnostics"
    for c in "$KBB_RUN"/*.console; do
        [ -e "$c" ] || continue
        echo "--- console $(basename "$c" .console) (last 15 lines)"
        tail -n 15 "$c" | tr -d '\r'
    done
    if declare -F kb_libvirtd_log_tail >/dev/null; then
        kb_libvirtd_log_tail 40
    fi
    echo "--- virsh list"
    kbb_virsh list --all 2>&1 || true
    echo "--- KSM: run=$(cat "$KB_KSM_DIR/run") pages_sharing=$(cat "$KB_KSM_DIR/pages_sharing") general_profit=$(cat "$KB_KSM_DIR/general_profit" 2>/dev/null)"
    echo "=============== end of bench diagnostics"
}
