# shellcheck shell=bash
# The benchmarks' real-stack guests (docs/BENCHMARKS.md), built and booted
# with the test guest library (tests/lib/guest.sh, which this file
# sources), with what the I/O benchmark adds: a static reader in the
# initramfs (bench/guest/reader.rs) as the workload, its own /init
# (bench/guest/init.sh), a data disk of random bytes per guest throttled by
# <iotune> with host caching off (cache='none'), and a shared read-only
# "application" disk whose bytes every guest holds in memory (what KSM finds
# to merge).
#
# Source after tests/lib/libvirtd.sh. Every function is prefixed kbb_.
# Guests are persistent domains named "kbbench-*" (defined, then started;
# destroyed and undefined at the end of each run); only those are ever
# destroyed or undefined. Persistent, as an operator's VMs are (virsh
# define, virt-install): no hook is installed for the benchmarks, so
# ksm-balloon adopts their guests, and a persistent domain is adopted by
# its first pass with its definition's <currentMemory> as its floor. A
# transient one (virsh create) has no definition that tells its boot size,
# and is adopted only once its QEMU has run 60 s and its balloon stayed put
# (docs/DESIGN.md, "VMs found running but never recorded"): the short
# benchmark's arms end about 60-70 s after their guests start, so with
# transient guests ksm-balloon would measure its own adoption wait, not
# what it lends.

KBB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/guest.sh
. "$KBB_HERE/../tests/lib/guest.sh"
KBB_PREFIX=kbbench-
KBB_RUN=${KBB_RUN:-/run/ksm-balloon-bench}

# The guest and its disks (MiB, MiB/s); overridable from the environment.
KBB_FLOOR_MIB=${KBB_FLOOR_MIB:-160}
KBB_CEIL_MIB=${KBB_CEIL_MIB:-256}
KBB_DATA_MIB=${KBB_DATA_MIB:-128}
KBB_APP_MIB=${KBB_APP_MIB:-32}
# the unequal rig's second reader's working set (bench/io-effect.sh): three
# quarters of the first's whole disk, and like it more than an equal share
# caches (a floor guest caches about 44 MiB of a disk, each MiB lent adds
# about one: docs/BENCHMARKS.md part 3), so the split decides which fits
KBB_SPAN_MIB=${KBB_SPAN_MIB:-96}
KBB_IOTUNE_MIBS=${KBB_IOTUNE_MIBS:-20}
KBB_INTERVAL=${KBB_INTERVAL:-2}

kbb_virsh() { virsh -q -c "$KB_URI" "$@"; }

# kbb_set_sizes wait|nowait NAME=MIB...: sets each guest's balloon to MIB
# (`virsh setmem --live`, all first), then with `wait` waits up to 120 s
# for each to be there; fails naming the first that is not.
kbb_set_sizes() {
    local mode=$1 p
    shift
    for p in "$@"; do
        kbb_virsh setmem "${p%%=*}" "$((${p#*=} * 1024))" --live >/dev/null || return 1
    done
    [ "$mode" = wait ] || return 0
    for p in "$@"; do
        kb_wait_until 120 "${p%%=*}'s balloon to reach ${p#*=} MiB" \
            kg_balloon_near "${p%%=*}" "$((${p#*=} * 1024))" 0 || return 1
    done
}

# kbb_pick_bin SHORT: sets BIN to the ksm-balloon the benchmark measures:
# $KBB_BIN when set (nothing is built); else the debug build for the short
# (CI) version (SHORT = 1), which run-all.sh has already made, or the
# release build for the full one.
# shellcheck disable=SC2034 # BIN is for the caller
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

# kbb_build_guest: sets KBB_KERNEL and KBB_INITRD: the bench guest's image
# (bench/guest/init.sh as /init, the reader compiled by rustc), built
# unless cached.
kbb_build_guest() {
    local reader
    reader=$(kg_static_rust "$KBB_HERE/guest/reader.rs") || return 1
    kg_build_image "$KBB_HERE/guest/init.sh" "$reader" || return 1
    KBB_KERNEL=$KG_KERNEL
    KBB_INITRD=$KG_INITRD
}

# kbb_disk NAME MIB: a cached file of MIB MiB of random bytes; prints its
# path. Every arm and repeat reads the same data.
kbb_disk() { kg_disk "bench-$1" "$2"; }

kbb_console() { kg_console "$KBB_RUN" "$1"; }

# kbb_boot INDEX CURRENT_MIB [OPTION...]: defines and starts guest
# kbbench-INDEX (no wait), ceiling KBB_CEIL_MIB, booted at CURRENT_MIB.
#   --idle        it reads nothing until told (kb.read=0): an idle guest
#   --cmd         a command socket (ttyS1, kbb_socket) for kbb_cmd
#   --stats N     its balloon statistics period (default 2; 0: none)
#   --diskless    no disk at all (kb.disks=0): booted from its initramfs,
#                 it holds no application bytes and never reads
#   --span MIB    it reads only its data disk's first MIB MiB (its working
#                 set; default the whole disk)
kbb_boot() {
    local i=$1 name=$KBB_PREFIX$1 cur=$2 app=() extra=() read=1 has_disks=1 data=() span=0
    shift 2
    while [ $# -gt 0 ]; do
        case $1 in
            --idle) read=0 ;;
            --diskless) read=0 has_disks=0 ;;
            --span) span=$2; shift ;;
            --cmd) extra+=(--socket "$(kbb_socket "$name")") ;;
            --stats) extra+=(--stats "$2"); shift ;;
            *) kb_die "kbb_boot: unknown option $1" ;;
        esac
        shift
    done
    if [ "$has_disks" = 1 ]; then
        data=(--disk "$(kbb_disk "data-$i" "$KBB_DATA_MIB"),ro,cache=none,serial=kbdata,read_bytes_sec=$((KBB_IOTUNE_MIBS * 1048576))")
        if [ "$KBB_APP_MIB" -gt 0 ]; then
            app=(--disk "$(kbb_disk app "$KBB_APP_MIB"),ro,shared,cache=none,serial=kbapp")
        fi
    fi
    kg_boot "$KBB_RUN" "$name" --persistent --memory "$KBB_CEIL_MIB" --current "$cur" \
        --kernel "$KBB_KERNEL" --initrd "$KBB_INITRD" \
        --cmdline "kb.app_mib=$KBB_APP_MIB kb.interval=$KBB_INTERVAL kb.seed=$((i + 1)) kb.read=$read kb.disks=$has_disks kb.span_mib=$span" \
        "${data[@]}" "${app[@]}" "${extra[@]}"
}

kbb_socket() { kg_socket "$KBB_RUN" "$1"; }

# kbb_cmd NAME COMMAND: sends COMMAND (read, idle) to guest NAME and prints
# its acknowledgement (kg_cmd).
kbb_cmd() { kg_cmd "$(kbb_socket "$1")" "$(kbb_console "$1")" "$2"; }

kbb_names() {
    local i
    for ((i = 0; i < $1; i++)); do echo "$KBB_PREFIX$i"; done
}

kbb_failed() { kg_console_has "$(kbb_console "$1")" "$KG_FAILED_RE"; }

# kbb_wait_ready SECONDS NAME...: every guest printed KB-GUEST-READY (an
# idle guest prints nothing after it).
kbb_wait_ready() {
    local limit=$1 g
    shift
    for g in "$@"; do
        kg_wait_console "$limit" "$(kbb_console "$g")" '^KB-GUEST-READY' "guest $g" || return 1
    done
}

# kbb_wait_reading SECONDS NAME...: every guest printed its first KB-TPUT.
kbb_wait_reading() {
    local limit=$1 g
    shift
    for g in "$@"; do
        kg_wait_console "$limit" "$(kbb_console "$g")" '^KB-TPUT ' "guest $g" || return 1
    done
}

# kbb_wait_boot_size SECONDS NAME...: every guest's balloon is at the size
# it booted at (kg_wait_boot_size): until then QEMU reports it at the
# ceiling.
kbb_wait_boot_size() {
    local limit=$1
    shift
    kg_wait_boot_size "$limit" "$KBB_RUN" "$@"
}

kbb_destroy_all() { kg_destroy_all "$KBB_PREFIX"; }

kbb_diagnostics() {
    echo "=============== bench diagnostics"
    kg_diagnostics "$KBB_RUN"
    echo "=============== end of bench diagnostics"
}

# A benchmark's hold on the real stack, one run at a time: kbb_take_stack
# takes the real-stack lock, saves KSM's knobs, starts libvirtd and clears
# old bench guests (and refuses to run beside guests of others: they would
# share the CPUs and KSM); kbb_release_stack undoes it all. KBB_LOCKED says
# whether it is held; KBB_BG_PIDS are the run's background processes,
# which kbb_stop_bg stops.
# shellcheck disable=SC2034 # read by the scripts that source this file
KBB_LOCKED=0
KBB_BG_PIDS=()
kbb_stop_bg() {
    local p
    for p in "${KBB_BG_PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    KBB_BG_PIDS=()
}
kbb_take_stack() {
    kb_realstack_lock
    KBB_LOCKED=1
    kb_ksm_save
    kb_libvirtd_start
    kbb_destroy_all
    local others
    others=$(kbb_virsh list --name | grep -v "^$KBB_PREFIX" | grep -c . || true)
    [ "$others" = 0 ] || kb_die "other guests are running on $KB_URI: they would share the CPUs and KSM"
}
# shellcheck disable=SC2034 # KB_KSM_SAVED is tests/lib/libvirtd.sh's; KBB_LOCKED as above
kbb_release_stack() {
    kbb_destroy_all
    kb_ksm_restore
    KB_KSM_SAVED=()
    exec {KB_LOCK_FD}>&-
    unset KB_LOCK_FD
    KBB_LOCKED=0
}

# kbb_trap_cleanup [RELEASE]: on exit (and INT, TERM) the run's background
# processes are stopped and, while the stack is held, the diagnostics
# printed after a failure and the stack released by RELEASE (default
# kbb_release_stack; a benchmark that turns more than the knobs undoes it
# first).
kbb_trap_cleanup() {
    KBB_RELEASE=${1:-kbb_release_stack}
    trap kbb_cleanup EXIT INT TERM
}
kbb_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    kbb_stop_bg
    if [ "$KBB_LOCKED" = 1 ]; then
        [ $rc = 0 ] || kbb_diagnostics
        "$KBB_RELEASE"
    fi
    exit $rc
}

# kbb_pass_loop DIR ARGS...: ksm-balloon's passes as the timer runs them,
# in the background until kbb_stop_bg: `$BIN --connect $KB_URI --state
# DIR/state.json ARGS... run --json` every KBB_PASS_PERIOD seconds (10),
# each report one line of DIR/passes.jsonl, the log in DIR/ksm-balloon.log.
# With KBB_DRY_RUN=1, `run --json --dry-run`: passes that change nothing.
kbb_pass_loop() {
    local dir=$1 run=(run --json)
    shift
    [ "${KBB_DRY_RUN:-0}" = 0 ] || run+=(--dry-run)
    (
        exec {KB_LOCK_FD}>&-
        while :; do
            echo "pass at $(date -u +%FT%TZ)" >&2
            # one JSON report per line: what the pass saw and did
            if report=$("$BIN" --connect "$KB_URI" --state "$dir/state.json" "$@" "${run[@]}"); then
                printf '%s\n' "$report" | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' >>"$dir/passes.jsonl"
            else
                echo "pass failed: exit $?" >&2
            fi
            # pacing: the timer's period between passes
            sleep "${KBB_PASS_PERIOD:-10}"
        done
    ) 2>>"$dir/ksm-balloon.log" &
    KBB_BG_PIDS+=($!)
}

# kbb_host_json GUEST_KERNEL REPO: the machine and build a benchmark ran
# on, as the last members of its settings.json object (no braces): host,
# kernel, CPUs, memory, libvirt, QEMU, the guest kernel, the start time,
# the commit (+changes when src or bench differ from it) and the
# ksm-balloon binary ($BIN, relative to REPO).
kbb_host_json() {
    cat <<JSON
 "host": "$(hostname)", "kernel": "$(uname -r)", "cpus": $(nproc),
 "cpu_model": "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)",
 "mem_total_kib": $(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo),
 "libvirt": "$(virsh --version)", "qemu": "$(qemu-system-x86_64 --version | head -n1)",
 "guest_kernel": "$(basename "$1")", "started": "$(date -u +%FT%TZ)",
 "commit": "$(git -C "$2" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$2" diff --quiet HEAD -- src bench 2>/dev/null || echo +changes)",
 "ksm_balloon": "${BIN#"$2"/}"
JSON
}

# kbb_run_window DIR SPLIT END WHAT NAME...: an arm's fixed window, from
# t_ready to END (epoch, decimal): ksm-balloon's passes when SPLIT (equal,
# demand) is set, the guests watched (kbb_run_until, naming WHAT); then
# the background stopped, ksm-balloon's status kept as DIR/status.json and
# the consoles as DIR/NAME.console.
kbb_run_window() {
    local dir=$1 split=$2 end=$3 what=$4 g
    shift 4
    [ -z "$split" ] || kbb_pass_loop "$dir" --split "$split"
    kbb_run_until "$end" "$what" "$@"
    kbb_stop_bg
    if [ -n "$split" ]; then
        "$BIN" --connect "$KB_URI" --state "$dir/state.json" --split "$split" status --json >"$dir/status.json" || true
    fi
    for g in "$@"; do cp "$(kbb_console "$g")" "$dir/$g.console"; done
}

# kbb_run_until EPOCH WHAT NAME...: pacing, not a wait for a condition: a
# run's fixed window, until EPOCH (decimal), its guests checked every 5 s
# (a guest that failed, or the first one gone, ends the run naming WHAT).
kbb_run_until() {
    local end=$1 what=$2 g
    shift 2
    while python3 -c "import sys,time; sys.exit(time.time() >= $end)"; do
        for g in "$@"; do
            kbb_failed "$g" && kb_die "$what: guest $g failed"
        done
        kbb_virsh domstate "$1" >/dev/null || kb_die "$what: $1 is gone"
        sleep 5
    done
}

# kbb_ksm_clear: unmerges everything and zeroes the counters, so no run
# inherits another's merges.
kbb_ksm_clear() {
    kb_ksm_set 2
    kb_wait_until 120 "KSM to unmerge (pages_shared 0)" \
        bash -c "[ \"\$(cat $KB_KSM_DIR/pages_shared)\" = 0 ]" || kb_die "KSM did not unmerge"
}
