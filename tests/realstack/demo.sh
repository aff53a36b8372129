#!/usr/bin/env bash
# The demo: ksm-balloon running for real, with one command on a fresh
# Debian 12 machine (the README's quick start), as root, from the top of a
# clone:
#
#     bash tests/realstack/demo.sh
#
# (a fresh Debian root has no sudo; where there is sudo, `sudo -i` first: a
# plain `sudo bash` resets PATH and finds no cargo installed by rustup)
#
# It installs the packages (tests/deps.sh), builds ksm-balloon
# (cargo build --release), starts libvirtd with ksm-balloon's hook, boots
# three small QEMU guests with headroom (ceiling 256 MiB, started at 160
# MiB), starts the host's KSM and runs `ksm-balloon run` every 10 s as the
# timer would, printing `ksm-balloon status` after each pass:
#   1. the balloons follow what KSM saves on three idle guests;
#   2. the guests load the same 40 MiB of data: the savings jump, the
#      balloons grow;
#   3. g1's application writes 40 MiB of its own into the memory it was
#      lent, then KSM unmerges everything (run = 2): the savings vanish; g2
#      and g3 return to their floors, g1 gives back what it can and keeps
#      what its application holds (the KEPT column): the bonus is a loan,
#      recalled only as far as the guest can pay, in steps: the first pass
#      asks the guests for fresh figures, each next one takes at most half
#      of what the guest's fresh figures say it can give.
# Everything is torn down when it ends or on Ctrl-C: guests destroyed, KSM
# as it was found, the hook removed. About four minutes once built.
#
# The passes lend the savings of the moment (KSM_BALLOON_HOLD_WINDOW=0, as
# the paper's method does), so the balloons follow within a pass; by
# default ksm-balloon lends only what held for a minute.
#
# DEMO_TICKS="5 4 6" sets how many passes each phase runs.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run it as root (a root shell, or sudo -i first): it starts libvirtd and QEMU guests and turns KSM on" >&2
    exit 1
fi
# Before the packages: a missing toolchain is said at once, not after minutes of apt.
command -v cargo >/dev/null ||
    { echo "demo.sh: cargo is not on root's PATH: install a Rust toolchain, 1.75 or newer (rustup), as root, or 'sudo -i' to get root's own PATH" >&2; exit 1; }

say() { printf '\n\033[1m>>> %s\033[0m\n' "$*"; }

say "Installing what the demo needs (Debian packages: QEMU, libvirt, a kernel and busybox for the guests)"
bash tests/deps.sh

say "Building ksm-balloon (cargo build --release)"
cargo build --release --locked --quiet

# shellcheck source=tests/lib/libvirtd.sh
. tests/lib/libvirtd.sh
# shellcheck source=tests/realstack/lib.sh
. tests/realstack/lib.sh

read -r TICKS1 TICKS2 TICKS3 <<<"${DEMO_TICKS:-5 4 6}"
export KSM_BALLOON_HOLD_WINDOW=0

# status: the table, without the log lines status repeats from the pass.
status() { KSM_BALLOON_LOG=warn rs_kb status; }

say "Starting libvirtd with ksm-balloon's hook (state in $RS_STATE; waits if a test suite holds the stack)"
set +e # from here on, a failing step is reported and the demo carries on or tears down
rs_setup target/release/ksm-balloon

say "Booting three guests: ceiling 256 MiB, started at 160 MiB, their floor (software-emulated, ~10 s)"
# kb_fill=96: room in the guests' tmpfs for the shared data and g1's own.
for g in g1 g2 g3; do rs_boot "$g" 256 160 virtio --cmdline kb_fill=96; done
# rs_wait_ready returns once each balloon is at its boot size (libvirt's
# bulk stats, as a pass reads them). Then what status says: each guest
# managed, recorded by the hook, its balloon at the floor of that record.
# There is no state file before the first pass: status folds the hook's
# spooled records in memory, as the first pass will (issue 22: the check
# read the state file, and this printed a timeout on every run).
rs_wait_ready 120 g1 g2 g3 || { rs_diagnostics; exit 1; }
kb_wait_until 10 "libvirt to report the balloons at their floors, each guest recorded by the hook" \
    rs_balloons_settled g1 g2 g3
echo "libvirt ran the hook; the state records each guest's floor and ceiling:"
status

TICK=0
NEXT=$(date +%s)
# tick: one pass as the timer runs it, then what ksm-balloon, libvirt and
# the guests themselves say.
tick() {
    local g line="" out
    TICK=$((TICK + 1))
    NEXT=$((NEXT + 10))
    kb_wait_until 15 "the next 10 s tick" now_at_least "$NEXT"
    printf '\n--- pass %d at %s: ksm-balloon run\n' "$TICK" "$(date +%H:%M:%S)"
    out=$(rs_kb run 2>&1)
    if [ -n "$out" ]; then
        sed 's/^\[[^]]*\] //; s/^/  /' <<<"$out"
    else
        echo "  (no balloon moved: every target is within the deadband of its size)"
    fi
    # Show the table once the balloons got where the pass sent them, and
    # the guests printed their MemTotal since (they do every 2 s).
    kb_wait_until 15 "the balloons to reach their targets" rs_balloons_settled
    line=$(rs_console_lines g3)
    kb_wait_until 6 "g3 to print its MemTotal" rs_memtotal_after g3 "$line"
    status
    line=""
    for g in g1 g2 g3; do
        line+="$g $(rs_actual "$g" || echo '?') KiB (its MemTotal $(rs_memtotal "$g" || echo '?') kB)   "
    done
    echo "libvirt (dommemstat actual) and the guests' own view: $line"
}
now_at_least() { [ "$(date +%s)" -ge "$1" ]; }

say "Starting KSM (pages_to_scan 1000, sleep_millisecs 20); a pass every 10 s: the balloons follow the savings"
kb_ksm_set 1 1000 20
NEXT=$(date +%s)
for _ in $(seq "$TICKS1"); do tick; done

say "The guests now load the same 40 MiB of data: KSM merges it, the savings jump, the balloons grow"
for g in g1 g2 g3; do echo "$g: $(rs_cmd "$g" fill 40)"; done
for _ in $(seq "$TICKS2"); do tick; done

say "g1's application writes 40 MiB of its own into the memory it was lent (a database grows into its cache)"
echo "g1: $(rs_cmd g1 own 40)"
say "KSM unmerges everything (echo 2 > /sys/kernel/mm/ksm/run): the savings vanish; g2 and g3 return to their floors, g1 keeps what its application holds"
echo "host MemAvailable before: $(($(rs_meminfo_available) / 1024)) MiB"
kb_ksm_set 2
echo "host MemAvailable after the unmerge: $(($(rs_meminfo_available) / 1024)) MiB"
for _ in $(seq "$TICKS3"); do tick; done

say "Done. Tearing down: guests destroyed, KSM as it was found, the hook removed"
