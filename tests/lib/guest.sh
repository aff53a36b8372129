# shellcheck shell=bash
# The test guest, for every suite and benchmark that runs one on the real
# stack: its image (the installed Debian kernel and a busybox initramfs with
# the caller's /init, the virtio drivers and any extra static binaries,
# cached under a key of everything that goes into it), the disks of random
# bytes it reads, its libvirt domain XML, and booting, waiting for and
# destroying it. The guests' own behaviour lives in their /init scripts
# (tests/realstack/guest-init.sh, bench/guest/init.sh), which start by
# sourcing tests/lib/guest-prelude.sh.
#
# Source after tests/lib/libvirtd.sh (kb_log, kb_die, kb_wait_until,
# KB_URI). Every function is prefixed kg_.

KG_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Built images, static binaries and data disks; reused across runs.
KG_CACHE=${KG_CACHE:-/var/cache/ksm-balloon-tests}
# The drivers the guest loads, in this order: virtio PCI, the balloon, the
# disks.
KG_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
    virtio_balloon virtio_blk)
# The guest kernel's command line: its console on ttyS0 (the console file),
# and no_timer_check: under software emulation on a busy host the kernel's
# boot-time check of the IO-APIC timer can miss its ticks and panic ("IO-APIC
# + timer doesn't work!"); the check proves nothing about an emulated timer.
KG_CMDLINE="console=ttyS0 quiet no_timer_check"
# 1: boot the kernel as its ELF (kg_kernel_elf), 0: the bzImage. The ELF
# boots in a fifth of the time but is 65 MB that QEMU loads inside
# `virsh create`: 45-systemd's median create was 1219 ms on the ELF (CI of
# ed1c5f5), 810 and 465.5 ms on the bzImage in the two runs after it
# (467.5 ms in an earlier CI run); a suite that times `virsh create`
# itself sets 0.
KG_KERNEL_ELF=${KG_KERNEL_ELF:-1}
# A console line that means the guest will never get ready: a panic, or a
# KB-...-FAILED marker from its /init.
KG_FAILED_RE='^KB-[A-Z-]*FAILED|Kernel panic'

kg_virsh() { virsh -q -c "$KB_URI" "$@"; }

# --- the image ----------------------------------------------------------------

# The newest installed Debian kernel that has the virtio balloon module.
kg_kernel_version() {
    local v
    for v in $(find /lib/modules -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -rV); do
        if [ -r "/boot/vmlinuz-$v" ] &&
            compgen -G "/lib/modules/$v/kernel/drivers/virtio/virtio_balloon.ko*" >/dev/null; then
            echo "$v"
            return 0
        fi
    done
    return 1
}

# kg_copy_module VERSION NAME DESTDIR: the module as a plain .ko (Debian may
# ship them compressed; busybox insmod wants them plain). Found anywhere in
# the kernel's module tree: the virtio drivers, and for a guest that mounts
# a disk (bench/dbguest/) ext4 and its dependencies (fs/, lib/, crypto/).
kg_copy_module() {
    local v=$1 m=$2 dest=$3 f
    f=$(find "/lib/modules/$v/kernel" -name "$m.ko*" | sort | head -n1)
    [ -n "$f" ] || { kb_log "module $m not found for kernel $v"; return 1; }
    case $f in
        *.ko) cp "$f" "$dest/$m.ko" ;;
        *.ko.xz) xz -dc "$f" >"$dest/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$dest/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$dest/$m.ko" ;;
        *) kb_log "module $f: unknown compression"; return 1 ;;
    esac
}

# kg_kernel_elf VERSION: prints the path of the uncompressed kernel ELF
# (vmlinux) of /boot/vmlinuz-VERSION, extracted once into KG_CACHE; prints
# the bzImage itself where none can be made. Why: under software emulation
# a bzImage spends most of its boot before the kernel's first line,
# decompressing itself (Debian's is xz): measured here with 3 guests on 2
# busy cores, "Linux version" came 37 s after `virsh create` and the guest
# was ready at 63-71 s; the same kernel as an ELF, which QEMU boots through
# its PVH entry point (the kernel's PHYS32_ENTRY note, CONFIG_PVH), was
# ready at 11-14 s. The guest runs the same kernel either way.
kg_kernel_elf() {
    local v=$1 bz=/boot/vmlinuz-$1 elf=$KG_CACHE/vmlinux-$1 tmp
    if [ ! -s "$elf" ]; then
        mkdir -p "$KG_CACHE"
        tmp=$(mktemp "$KG_CACHE/vmlinux.XXXXXX")
        if python3 - "$bz" "$tmp" <<'PY'; then
import bz2, gzip, lzma, sys, zlib
data = open(sys.argv[1], "rb").read()
# The compressed payload starts at one of these magics (xz, gzip, bzip2);
# the ELF it holds must carry the PVH entry note (Xen note type 18).
for magic, unpack in ((b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor().decompress(b)),
                      (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b)),
                      (b"BZh", lambda b: bz2.BZ2Decompressor().decompress(b))):
    at = data.find(magic)
    while at >= 0:
        try:
            out = unpack(data[at:])
        except Exception:
            out = b""
        if out[:4] == b"\x7fELF" and b"Xen\x00" in out:
            open(sys.argv[2], "wb").write(out)
            sys.exit(0)
        at = data.find(magic, at + 1)
sys.exit(1)
PY
            chmod 0644 "$tmp"
            mv "$tmp" "$elf"
        else
            rm -f "$tmp"
            kb_log "no PVH kernel ELF could be extracted from $bz: booting the bzImage (slower)"
            echo "$bz"
            return 0
        fi
    fi
    echo "$elf"
}

# kg_build_image INIT [BINARY...]: sets KG_KERNEL and KG_INITRD: the kernel
# (kg_kernel_elf),
# and an initramfs whose /init is the script INIT, with /bin/busybox (and
# its applets), the drivers of KG_MODULES under /modules (their load order
# in /modules/order), tests/lib/guest-prelude.sh as /lib/guest-prelude.sh,
# and each BINARY (static: the initramfs has no libc) as /bin/<its name>.
# Built only when no cached image has the same key: the kernel version,
# busybox's version, the module list, the bytes of INIT, the prelude and
# every BINARY, and this recipe (these functions' text).
# shellcheck disable=SC2034 # KG_KERNEL is for the caller
kg_build_image() {
    local init=$1 v key dir tmp m b
    shift
    v=$(kg_kernel_version) ||
        kb_die "no installed kernel with virtio_balloon under /lib/modules (is linux-image-amd64 installed?)"
    [ -x /bin/busybox ] || kb_die "/bin/busybox is missing (busybox-static)"
    [ -r "$init" ] || kb_die "guest /init $init is missing"
    for b in "$@"; do
        [ -x "$b" ] || kb_die "guest binary $b is missing"
    done
    key=$( {
        echo "$v"
        /bin/busybox | head -n1
        echo "${KG_MODULES[*]}"
        sha256sum "$init" "$KG_LIB/guest-prelude.sh" "$@" | cut -d' ' -f1
        basename -a "$init" "$@"
        declare -f kg_build_image kg_copy_module
    } | sha256sum | cut -c1-16)
    dir=$KG_CACHE/guest-$v-$key
    if [ "$KG_KERNEL_ELF" = 1 ]; then
        KG_KERNEL=$(kg_kernel_elf "$v")
    else
        KG_KERNEL=/boot/vmlinuz-$v
    fi
    KG_INITRD=$dir/initrd.img
    [ -s "$KG_INITRD" ] && return 0
    kb_log "building the guest initramfs ($(basename "$init") on kernel $v) into $dir"
    tmp=$(mktemp -d)
    mkdir -p "$tmp/root/bin" "$tmp/root/lib" "$tmp/root/modules"
    cp /bin/busybox "$tmp/root/bin/busybox"
    ln -s busybox "$tmp/root/bin/sh"
    for m in "${KG_MODULES[@]}"; do
        kg_copy_module "$v" "$m" "$tmp/root/modules" || { rm -rf "$tmp"; return 1; }
        echo "$m" >>"$tmp/root/modules/order"
    done
    install -m 0644 "$KG_LIB/guest-prelude.sh" "$tmp/root/lib/guest-prelude.sh"
    for b in "$@"; do
        install -m 0755 "$b" "$tmp/root/bin/$(basename "$b")"
    done
    install -m 0755 "$init" "$tmp/root/init"
    mkdir -p "$dir"
    (cd "$tmp/root" && find . | cpio -o -H newc --quiet | gzip -9) >"$tmp/initrd.img"
    mv "$tmp/initrd.img" "$KG_INITRD"
    rm -rf "$tmp"
}

# kg_static_rust SOURCE: a static, stripped binary compiled by rustc from
# the one-file program SOURCE, for the guest's initramfs; prints its path.
# Cached under a key of the source and rustc's version.
kg_static_rust() {
    local src=$1 key out tmp
    command -v rustc >/dev/null || kb_die "rustc is missing: it builds the guest program $src"
    key=$( { sha256sum <"$src"; rustc --version; } | sha256sum | cut -c1-16)
    out=$KG_CACHE/bin-$key/$(basename "$src" .rs)
    if [ ! -x "$out" ]; then
        kb_log "compiling the guest program $src (static)"
        mkdir -p "$(dirname "$out")"
        tmp=$(mktemp "$out.XXXXXX")
        rustc -O -C target-feature=+crt-static -C strip=symbols --edition 2021 "$src" -o "$tmp" ||
            { rm -f "$tmp"; kb_die "compiling $src failed"; }
        mv "$tmp" "$out"
    fi
    echo "$out"
}

# kg_disk NAME MIB: a cached file of MIB MiB of random bytes; prints its
# path. Written once and reused, so every run reads the same data.
kg_disk() {
    local f=$KG_CACHE/$1-$2M.img
    if [ "$(stat -c %s "$f" 2>/dev/null)" != $(($2 * 1048576)) ]; then
        kb_log "writing $f ($2 MiB of random bytes)"
        mkdir -p "$KG_CACHE"
        head -c $(($2 * 1048576)) /dev/urandom >"$f.tmp"
        mv "$f.tmp" "$f"
    fi
    echo "$f"
}

# --- the domain ---------------------------------------------------------------

# kg_xml_escape TEXT: TEXT for an XML element or a quoted attribute.
kg_xml_escape() {
    local s=$1
    s=${s//&/"&amp;"}
    s=${s//</"&lt;"}
    s=${s//>/"&gt;"}
    s=${s//\'/"&apos;"}
    s=${s//\"/"&quot;"}
    printf '%s' "$s"
}

# kg_domain_xml NAME OPTION...: the guest's libvirt domain XML on stdout.
#   --memory SIZE       the maximum (<memory>); required
#   --current SIZE      the size it boots at (<currentMemory>); default SIZE
#   --unit UNIT         of both sizes: MiB (default) or KiB
#   --type TYPE         the domain type; default qemu (software emulation)
#   --uuid UUID         default: libvirt makes one up
#   --kernel FILE --initrd FILE [--cmdline TEXT]
#                       direct kernel boot (kg_build_image's KG_KERNEL and
#                       KG_INITRD); the command line is KG_CMDLINE and
#                       TEXT. Without --kernel the VM has no OS: it
#                       idles in the firmware (enough for what happens at
#                       start and stop, and for a balloon that never moves)
#   --balloon MODEL     virtio (default) or none
#   --stats SECONDS     the balloon's statistics period; default 2, 0: none
#   --autodeflate on|off  the balloon deflates when the guest runs out of
#                       memory; default off (libvirt's default)
#   --disk FILE[,OPT...]  a virtio disk, vda for the first, vdb for the next;
#                       OPT: ro, shared, cache=MODE, serial=TEXT,
#                       read_bytes_sec=N, read_iops_sec=N (<iotune>
#                       limits), format=FMT (default raw; qcow2 for an
#                       overlay)
#   --console FILE      ttyS0 written to FILE
#   --socket FILE       ttyS1 as a unix socket the host connects to at FILE
kg_domain_xml() {
    local name=$1 type=qemu uuid='' mem='' cur='' unit=MiB kernel='' initrd='' cmdline=''
    local balloon=virtio stats=2 autodeflate=off console='' socket='' disks=() d
    shift
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || kb_die "kg_domain_xml $name: $1 needs a value"
        case $1 in
            --memory) mem=$2 ;;
            --current) cur=$2 ;;
            --unit) unit=$2 ;;
            --type) type=$2 ;;
            --uuid) uuid=$2 ;;
            --kernel) kernel=$2 ;;
            --initrd) initrd=$2 ;;
            --cmdline) cmdline=$2 ;;
            --balloon) balloon=$2 ;;
            --stats) stats=$2 ;;
            --autodeflate) autodeflate=$2 ;;
            --disk) disks+=("$2") ;;
            --console) console=$2 ;;
            --socket) socket=$2 ;;
            *) kb_die "kg_domain_xml $name: unknown option $1" ;;
        esac
        shift 2
    done
    [ -n "$mem" ] || kb_die "kg_domain_xml $name: --memory is required"
    echo "<domain type='$type'>"
    echo "  <name>$(kg_xml_escape "$name")</name>"
    [ -z "$uuid" ] || echo "  <uuid>$uuid</uuid>"
    echo "  <memory unit='$unit'>$mem</memory>"
    echo "  <currentMemory unit='$unit'>${cur:-$mem}</currentMemory>"
    echo "  <vcpu>1</vcpu>"
    echo "  <os>"
    echo "    <type arch='x86_64' machine='pc'>hvm</type>"
    if [ -n "$kernel" ]; then
        echo "    <kernel>$(kg_xml_escape "$kernel")</kernel>"
        echo "    <initrd>$(kg_xml_escape "$initrd")</initrd>"
        echo "    <cmdline>$(kg_xml_escape "$KG_CMDLINE${cmdline:+ $cmdline}")</cmdline>"
    fi
    echo "  </os>"
    echo "  <on_poweroff>destroy</on_poweroff>"
    echo "  <on_reboot>destroy</on_reboot>"
    echo "  <on_crash>destroy</on_crash>"
    echo "  <devices>"
    echo "    <emulator>/usr/bin/qemu-system-x86_64</emulator>"
    local letters=abcdefghijklmnop i=0
    for d in "${disks[@]}"; do
        kg_disk_xml "$d" "vd${letters:i:1}"
        i=$((i + 1))
    done
    echo "    <controller type='usb' model='none'/>"
    if [ -n "$console" ]; then
        echo "    <serial type='file'>"
        echo "      <source path='$(kg_xml_escape "$console")'/>"
        echo "      <target port='0'/>"
        echo "    </serial>"
    fi
    if [ -n "$socket" ]; then
        echo "    <serial type='unix'>"
        echo "      <source mode='bind' path='$(kg_xml_escape "$socket")'/>"
        echo "      <target port='1'/>"
        echo "    </serial>"
    fi
    local deflate=''
    [ "$autodeflate" = off ] || deflate=" autodeflate='$autodeflate'"
    if [ "$balloon" = virtio ] && [ "$stats" != 0 ]; then
        echo "    <memballoon model='virtio'$deflate><stats period='$stats'/></memballoon>"
    else
        echo "    <memballoon model='$balloon'$deflate/>"
    fi
    echo "  </devices>"
    echo "</domain>"
}

# kg_disk_xml FILE[,OPT...] DEV: one <disk> of kg_domain_xml.
kg_disk_xml() {
    local spec=$1 dev=$2 file opt cache='' serial='' bps='' iops='' ro='' shared='' format=raw opts=()
    IFS=, read -r -a opts <<<"$spec"
    file=${opts[0]}
    for opt in "${opts[@]:1}"; do
        case $opt in
            ro) ro=1 ;;
            shared) shared=1 ;;
            cache=*) cache=" cache='${opt#*=}'" ;;
            serial=*) serial=${opt#*=} ;;
            read_bytes_sec=*) bps=${opt#*=} ;;
            read_iops_sec=*) iops=${opt#*=} ;;
            format=*) format=${opt#*=} ;;
            *) kb_die "kg_domain_xml: disk $file: unknown option $opt" ;;
        esac
    done
    echo "    <disk type='file' device='disk'>"
    echo "      <driver name='qemu' type='$format'$cache/>"
    echo "      <source file='$(kg_xml_escape "$file")'/>"
    echo "      <target dev='$dev' bus='virtio'/>"
    [ -z "$serial" ] || echo "      <serial>$(kg_xml_escape "$serial")</serial>"
    if [ -n "$bps$iops" ]; then
        echo "      <iotune>${bps:+<read_bytes_sec>$bps</read_bytes_sec>}${iops:+<read_iops_sec>$iops</read_iops_sec>}</iotune>"
    fi
    [ -z "$ro" ] || echo "      <readonly/>"
    [ -z "$shared" ] || echo "      <shareable/>"
    echo "    </disk>"
}

# --- boot, wait, destroy ------------------------------------------------------

# kg_create XML_FILE [WHEN]: starts the transient domain XML_FILE describes
# (libvirt runs its hooks meanwhile); fails the test, saying WHEN, when
# libvirt refuses.
kg_create() {
    kg_virsh create "$1" >/dev/null || kb_die "virsh create $1 failed${2:+ $2}"
}

# kg_define_start XML_FILE NAME [WHEN]: defines the domain XML_FILE
# describes, named NAME, and starts it: a persistent domain, as an
# operator's `virsh define` or virt-install leaves it, whose definition's
# <currentMemory> tells ksm-balloon the size it boots with even when no
# hook recorded its start. kg_destroy undefines it again. Fails the test,
# saying WHEN, when libvirt refuses (a definition it would not start is
# removed first).
kg_define_start() {
    kg_virsh define "$1" >/dev/null || kb_die "virsh define $1 failed${3:+ $3}"
    if ! kg_virsh start "$2" >/dev/null; then
        kg_virsh undefine "$2" >/dev/null 2>&1 || true
        kb_die "virsh start $2 failed${3:+ $3}"
    fi
}

# kg_boot DIR NAME [--persistent] OPTION...: boots guest NAME from
# kg_domain_xml NAME OPTION... with its console in DIR/NAME.console
# (kg_console) and its XML kept as DIR/NAME.xml; an old console and command
# socket (DIR/NAME.cmd, kg_socket) of that name are removed first. A
# transient domain (virsh create), or with --persistent a defined one
# (kg_define_start). Does not wait for the guest.
kg_boot() {
    local dir=$1 name=$2 persistent=0
    shift 2
    if [ "${1:-}" = --persistent ]; then
        persistent=1
        shift
    fi
    mkdir -p "$dir"
    rm -f "$(kg_console "$dir" "$name")" "$(kg_socket "$dir" "$name")"
    kg_domain_xml "$name" --console "$(kg_console "$dir" "$name")" "$@" >"$dir/$name.xml"
    if [ $persistent = 1 ]; then
        kg_define_start "$dir/$name.xml" "$name"
    else
        kg_create "$dir/$name.xml"
    fi
}

kg_console() { echo "$1/$2.console"; }
kg_socket() { echo "$1/$2.cmd"; }

# kg_cmd SOCKET CONSOLE COMMAND: sends COMMAND to a guest's command socket
# (its second serial port) and waits (60 s at most) for the guest's
# acknowledgement on its console; prints it. A token no earlier command
# used (callers often run in subshells, so no counter) matches the
# acknowledgement. The connection stays open until then: QEMU takes a
# serial port's input 16 bytes (its FIFO) at a time and drops what is left
# when the client hangs up early.
kg_cmd() {
    python3 - "$1" "$2" "t$(date +%s%N)" "$3" <<'PY'
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
            # A whole line only: QEMU writes the guest's serial output to
            # the file a byte at a time, and a line read before its newline
            # came is cut short ("po" for "pong").
            if line.startswith(mark) and line.endswith("\n"):
                print(line[len(mark):].strip())
                sys.exit(0)
    time.sleep(0.2)
print(f"timed out after 60s waiting for {sock}'s guest to do '{command}'", file=sys.stderr)
sys.exit(1)
PY
}

# kg_console_whole CONSOLE: the console file's whole lines, the last one
# left out until its newline came (QEMU writes the guest's serial output a
# byte at a time: a line read before it ends is cut short, and a number on
# it is a different number). Nothing when the file is missing.
kg_console_whole() { perl -ne 'print if /\n\z/' -- "$1" 2>/dev/null; }

# kg_console_has CONSOLE REGEX: a line of the console file matches REGEX.
kg_console_has() { grep -aqE -- "$2" "$1" 2>/dev/null; }

# kg_wait_console SECONDS CONSOLE REGEX [WHAT]: waits until a console line
# matches REGEX (the guest says it is ready); fails at once when a line
# matches KG_FAILED_RE instead, printing it.
kg_wait_console() {
    local limit=$1 console=$2 ready=$3 what=${4:-$(basename "$2" .console)}
    kb_wait_until "$limit" "$what to print /$ready/ on $console" \
        kg_console_has "$console" "($ready)|($KG_FAILED_RE)" || return 1
    kg_console_has "$console" "$ready" && return 0
    kb_log "$what failed: $(grep -aE -- "$KG_FAILED_RE" "$console" | head -n3)"
    return 1
}

kg_running() { [ "$(kg_virsh domstate "$1" 2>/dev/null)" = running ]; }

# kg_wait_running SECONDS NAME: libvirt says NAME runs (for a guest with no
# OS, which prints nothing).
kg_wait_running() { kb_wait_until "$1" "$2 to run" kg_running "$2"; }

# --- the balloon: states to wait for ------------------------------------------

# kg_balloon NAME: the balloon's size (KiB) as libvirt's bulk statistics
# report it: balloon.current of `virsh domstats --balloon`, what a
# ksm-balloon pass and bench/io_sample.py read. libvirt updates it from
# QEMU's balloon events (at most one a second), so it may trail `virsh
# dommemstat`'s `actual` (asked of QEMU) by a second; waiting on this one
# waits for both.
kg_balloon() {
    kg_virsh domstats --balloon "$1" 2>/dev/null |
        awk -F= '$1 ~ /balloon.current$/ { print $2; f = 1 } END { exit !f }'
}

# kg_balloon_near NAME KIB [TOL_KIB]: the balloon is within TOL_KIB (default
# 1024: one MiB, the rounding to balloon pages) of KIB.
kg_balloon_near() {
    local b d
    b=$(kg_balloon "$1") || return 1
    d=$((b - $2))
    [ "${d#-}" -le "${3:-1024}" ]
}

# kg_boot_kib XML_FILE: the size (KiB) the domain XML_FILE describes boots
# at, its <currentMemory>; fails when the domain has no balloon device
# (nothing to wait for: its size never moves).
kg_boot_kib() {
    local xml=$1 line unit n
    [ -r "$xml" ] || { kb_log "kg_boot_kib: no domain XML $xml"; return 2; }
    grep -q "<memballoon model='none'" "$xml" && return 1
    line=$(grep -o "<currentMemory[^>]*>[0-9]*</currentMemory>" "$xml" | head -n1)
    [ -n "$line" ] || line=$(grep -o "<memory[^>]*>[0-9]*</memory>" "$xml" | head -n1)
    n=$(sed 's/.*>\([0-9]*\)<.*/\1/' <<<"$line")
    unit=$(sed -n "s/.*unit='\([A-Za-z]*\)'.*/\1/p" <<<"$line")
    [ -n "$n" ] || { kb_log "kg_boot_kib: no size in $xml"; return 2; }
    case ${unit:-KiB} in
        KiB | k | K) echo "$n" ;;
        MiB | M) echo $((n * 1024)) ;;
        GiB | G) echo $((n * 1048576)) ;;
        *) kb_log "kg_boot_kib: unit $unit in $xml"; return 2 ;;
    esac
}

# kg_wait_boot_size SECONDS DIR NAME...: waits, SECONDS at most for each,
# until every guest's balloon (kg_balloon) is at the size it booted at: the
# <currentMemory> of DIR/NAME.xml, the XML kg_boot kept. Exactly, not
# within a MiB: the driver inflates in steps of up to a MiB, so "within a
# MiB" can be one step short, and the balloons of these guests do reach
# their boot size to the KiB (suites check that equality right after). A
# guest booted below its maximum is not at its boot size when it is ready:
# QEMU reports the balloon at the maximum (<memory>) until the guest's
# balloon driver has inflated it, which under software emulation takes
# seconds after the guest printed it is ready. Anything that samples or
# checks a balloon after a boot waits for this first. A guest without a
# balloon device is skipped. Fails, naming the guest and its size, at the
# deadline.
kg_wait_boot_size() {
    local limit=$1 dir=$2 g want rc
    shift 2
    for g in "$@"; do
        rc=0
        want=$(kg_boot_kib "$dir/$g.xml") || rc=$?
        [ "$rc" = 1 ] && continue
        [ "$rc" = 0 ] || return 1
        if ! kb_wait_until "$limit" "$g's balloon to reach its boot size, $want KiB" \
            kg_balloon_near "$g" "$want" 0; then
            kb_log "$g's balloon is at $(kg_balloon "$g" || echo '?') KiB, booted at $want KiB"
            return 1
        fi
    done
}

# kg_stats_update NAME: when the guest last reported its memory statistics
# (libvirt's balloon.last-update, epoch seconds); fails when it never did
# (no statistics period, or the driver has not reported yet).
kg_stats_update() {
    kg_virsh domstats --balloon "$1" 2>/dev/null |
        awk -F= '$1 ~ /balloon.last-update$/ && $2 > 0 { print $2; f = 1 } END { exit !f }'
}

# kg_stats_after NAME EPOCH: the guest's statistics are newer than EPOCH.
kg_stats_after() {
    local t
    t=$(kg_stats_update "$1") || return 1
    [ "$t" -gt "$2" ]
}

# kg_wait_stats_after SECONDS EPOCH NAME...: waits until every guest reported
# memory statistics after EPOCH (a pass, a check or a sample that reads a
# guest's own figures after a change waits for this first). The period is
# the domain's <stats period>, 2 s by default.
kg_wait_stats_after() {
    local limit=$1 since=$2 g
    shift 2
    for g in "$@"; do
        kb_wait_until "$limit" "$g's memory statistics newer than $(date -u -d "@$since" +%T)" \
            kg_stats_after "$g" "$since" || return 1
    done
}

# kg_undefine NAME: removes the definition of a persistent domain that is
# not running (kg_define_start's); nothing for a transient one, which is
# gone once destroyed, or for one still running.
kg_undefine() {
    [ "$(kg_virsh domstate "$1" 2>/dev/null)" = "shut off" ] || return 0
    kg_virsh undefine "$1" >/dev/null 2>&1 || true
}

# kg_destroy NAME: destroys the domain, and removes its definition if it
# was defined (kg_define_start); fails when there was none to destroy.
kg_destroy() {
    local rc=0
    kg_virsh destroy "$1" >/dev/null 2>&1 || rc=$?
    kg_undefine "$1"
    return $rc
}

# kg_domains PREFIX: every running domain whose name starts with PREFIX.
kg_domains() { kg_virsh list --name 2>/dev/null | grep -- "^$1" || true; }

# kg_destroy_all PREFIX: destroys every running domain named PREFIX*, and
# removes the definitions of those defined and not running (a run killed
# before its clean-up leaves them); only a suite's own prefix, so nothing
# else on the host is touched.
kg_destroy_all() {
    local d
    [ -n "$1" ] || kb_die "kg_destroy_all: no prefix"
    for d in $(kg_domains "$1"); do
        kg_destroy "$d" || true
    done
    for d in $(kg_virsh list --inactive --name 2>/dev/null | grep -- "^$1" || true); do
        kg_undefine "$d"
    done
}

# kg_diagnostics DIR: for a failure report, the end of every guest console in
# DIR, libvirtd's log tail, the domains libvirt has and KSM's counters.
kg_diagnostics() {
    local c
    for c in "$1"/*.console; do
        [ -e "$c" ] || continue
        echo "--- console $(basename "$c" .console) (last 15 lines)"
        tail -n 15 "$c" | tr -d '\r'
    done
    kb_libvirtd_log_tail 40
    echo "--- virsh list"
    kg_virsh list --all 2>&1 || true
    echo "--- KSM: run=$(cat "$KB_KSM_DIR/run") pages_sharing=$(cat "$KB_KSM_DIR/pages_sharing") general_profit=$(cat "$KB_KSM_DIR/general_profit" 2>/dev/null)"
}
