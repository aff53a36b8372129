//! Stage 3 of the plan: what each managed VM is now, as the policy sees
//! it ([`Row`]). Where its balloon is relative to what was asked
//! ([`Motion`]: a target still on its way is planned from, not the
//! balloon's old size), its guest's own figures (fresh or not, moved by
//! what the balloon moved since they were taken, confirmed or not as
//! answering every ask), its I/O demand (tracked in the state, for a split that uses it), whether
//! someone else set its balloon (the manual-change detector, in the state),
//! and from those its status for the policy.

use std::collections::BTreeMap;

use log::Level;

use crate::hypervisor::{GuestStats, LiveDomain};
use crate::policy::{GuestView, VmStatus, VmView};
use crate::state::{IoTrack, State, VmRecord};
use crate::units::Kib;

use super::lend::VmKsm;
use super::notes::{note, Note};
use super::observe::Observation;
use super::settings::Settings;

/// Guest statistics older than this are stale (`last-update` not moving).
pub const STATS_FRESH_SECS: u64 = 30;

/// A target asked that long ago and not reached means the balloon is short
/// of it (a balloon change takes about a second).
pub const SETTLE_SECS: u64 = 20;

/// A balloon this close to its target has reached it, KiB.
pub const REACHED_KIB: u64 = 1024;

/// A balloon reaches a new size within this long of the resize (measured:
/// 256 -> 160 MiB in about 1 s, growing in 0.2 s): guest figures taken
/// sooner may describe the guest before the shrink.
pub const MOVE_SECS: u64 = 3;

/// Where a balloon is relative to the last target asked of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Motion {
    /// At the last target, or nothing was asked.
    Settled,
    /// On its way to this target (asked less than [`SETTLE_SECS`] ago).
    InFlight(u64),
    /// Short of this target, asked longer ago than that.
    Short(u64),
}

/// A balloon still on its way from the maximum to the size its VM started
/// with, nothing asked of it since, counts as booting for at most this long
/// after the start (the detector's `asked_at`): its guest's driver inflates
/// it down to the boot size (QEMU holds that target from the start). The same bound as a
/// slow boot's at adoption ([`super::reconcile::ADOPT_AT_MAXIMUM_SECS`]).
pub const BOOT_INFLATE_SECS: u64 = super::reconcile::ADOPT_AT_MAXIMUM_SECS;

/// Where `rec`'s balloon is, at `actual_kib`, relative to what was asked.
///
/// Nothing asked since the VM started, and its balloon above the size it
/// started with, which it has not reached yet (the manual-change
/// detector's [`crate::manual::History::started`]), within
/// [`BOOT_INFLATE_SECS`] of the start: on its way to that size (the guest
/// still booting), so the plan starts from there. Without this, the chaos
/// soak's first pass after a VM start took the balloon's maximum for a
/// loan and "recalled" it in a blind step to 16 MiB below the maximum: an
/// ask that raised the target QEMU held (the boot size), lending the
/// booting guest 96 MiB the savings did not cover. A VM handed back by
/// its operator starts from its size then (`History::adopted`): settled.
pub fn motion(rec: &VmRecord, actual_kib: u64, now: u64) -> Motion {
    let (Some(target), Some(at)) = (rec.last_target_kib, rec.last_change_at) else {
        if let Some(m) = rec.manual {
            if m.reached_at.is_none()
                && m.held.is_none()
                && actual_kib > m.asked_kib + REACHED_KIB
                && now.saturating_sub(m.asked_at) < BOOT_INFLATE_SECS
            {
                return Motion::InFlight(m.asked_kib);
            }
        }
        return Motion::Settled;
    };
    if actual_kib.abs_diff(target) <= REACHED_KIB {
        Motion::Settled
    } else if now.saturating_sub(at) < SETTLE_SECS {
        Motion::InFlight(target)
    } else {
        Motion::Short(target)
    }
}

/// The guest's figures moved to the balloon's size now. Figures taken
/// before the last resize describe the guest at the size it was asked
/// from; what the balloon has moved since came out of (or went into) the
/// memory the guest has available. A shrink is counted whenever the
/// figures may predate it (taken before it, or within [`MOVE_SECS`] of
/// it), a grow only when they surely do: any error is on the side of
/// asking the guest for less. Without this, a pass right after a recall,
/// before the guest's next report, saw the memory just given back still
/// available and asked for it a second time.
pub fn figures_now(g: GuestView, rec: &VmRecord, actual_kib: u64, last_update: u64) -> GuestView {
    let (Some(from), Some(at)) = (rec.asked_from_kib, rec.last_change_at) else {
        return g;
    };
    let before = if actual_kib < from {
        last_update < at.saturating_add(MOVE_SECS)
    } else {
        last_update < at
    };
    if !before {
        g
    } else if actual_kib >= from {
        let more = actual_kib - from;
        GuestView {
            usable_kib: g.usable_kib + more,
            unused_kib: g.unused_kib + more,
            ..g
        }
    } else {
        let less = from - actual_kib;
        GuestView {
            usable_kib: g.usable_kib.saturating_sub(less),
            unused_kib: g.unused_kib.saturating_sub(less),
            ..g
        }
    }
}

/// The guest's figures for the policy, when they are complete and fresh
/// (at most [`STATS_FRESH_SECS`] old), with their age at `now`. They are
/// taken as answering every ask; [`confirm`] says whether they do.
pub fn guest_view(g: &GuestStats, now: u64) -> Option<GuestView> {
    let t = g.last_update.filter(|&t| t > 0)?;
    let age_secs = now.saturating_sub(t);
    if age_secs > STATS_FRESH_SECS {
        return None;
    }
    match (g.usable_kib, g.unused_kib, g.available_kib) {
        (Some(usable_kib), Some(unused_kib), Some(total_kib)) => Some(GuestView {
            usable_kib,
            unused_kib,
            total_kib,
            age_secs,
            confirmed: true,
        }),
        _ => None,
    }
}

/// Whether figures the guest reported at `last_update` answer every ask
/// made of it: reported once the last shrink asked of its balloon had
/// landed ([`MOVE_SECS`] after it), and, when the pass manages statistics
/// periods (`asks_for_figures`), after the pass last asked for fresh
/// figures (set its recall period). Figures that do not are stale for a
/// recall: what the guest did since is unknown.
pub fn confirm(
    g: GuestView,
    rec: &VmRecord,
    last_update: u64,
    asks_for_figures: bool,
) -> GuestView {
    let after_shrink = match (rec.asked_from_kib, rec.last_target_kib, rec.last_change_at) {
        (Some(from), Some(to), Some(at)) if to < from => {
            last_update >= at.saturating_add(MOVE_SECS)
        }
        _ => true,
    };
    let after_ask = !asks_for_figures || rec.recall_stats_at.is_some_and(|t| last_update > t);
    GuestView {
        confirmed: after_shrink && after_ask,
        ..g
    }
}

/// Reads under this (thousandths of a MiB/s: 0.1 MiB/s, 1 MiB in a
/// 10 s pass) have stopped: they are never remembered as a VM's live
/// demand. The rig's idle guests read nothing at all (their counters do not
/// move across a benchmark run, bench/results/io-demand), its readers 20 to
/// 30 MiB/s: any figure between would do; this one keeps a guest's
/// housekeeping reads from replacing what it read when it was busy.
pub const READS_STOPPED: u64 = 100;

/// What a VM whose memory stays full holds of its live demand (the
/// highest read rate since its memory became full) once its reads stop
/// (or fall under it), as a fraction: a quarter. Its
/// cache is full of what it was lent and may be its whole working set
/// (its reads stopped because it fits): it keeps a part of its weight, with
/// no time decay, while its memory stays full, so the pool does not drift
/// back to equal and recall what it caches; a new reader at the rate it
/// had outweighs it 4:1 at once. Chosen, not measured against another
/// fraction; on the real stack (tests/realstack/demand.sh) a reader whose
/// data came to fit at its ceiling held its quarter and its ceiling, and a
/// new reader had the split the pass its rate was known (docs/DESIGN.md).
pub const HOLD_FRACTION: (u64, u64) = (1, 4);

/// A guest whose free memory is under this (or its margin, if more) has
/// its memory full: its reads would be cut by more memory. A tenth of its
/// memory: measured, a guest re-reading its disk kept about 4 MiB free of
/// 190, idle ones about 90.
pub const FULL_PERCENT: u64 = 10;

/// What a VM's demand rests on this pass (reported per VM under a demand
/// split, so `status` can say why a VM weighs what it weighs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DemandBasis {
    /// Its disk reads while its memory was full, as a rate over the time
    /// since the last pass: the live rate, unsmoothed.
    Reads,
    /// Its memory is full and its reads stopped (or fell under what it
    /// holds): it holds [`HOLD_FRACTION`] of its live demand, its
    /// cache full of what it was lent.
    Held,
    /// Its fresh figures show its memory is not full: it has no demand for
    /// more, whatever its disks do (or whether it has any), at once.
    FreeMemory,
    /// Unknown: no fresh guest statistics.
    NoStatistics,
    /// Unknown: its memory is full but libvirt gives no disk figures (no
    /// disks, or a disk without them): it may read from network storage.
    NoDiskFigures,
    /// Unknown: its memory is full and its disks were read for the first
    /// time (or their counters went back, a restart): a rate takes two.
    FirstReading,
}

impl DemandBasis {
    /// The demand is measured (or known to be none), not unknown.
    pub fn known(self) -> bool {
        matches!(
            self,
            DemandBasis::Reads | DemandBasis::Held | DemandBasis::FreeMemory
        )
    }

    /// What it rests on, in `status`'s words.
    pub fn why(self) -> &'static str {
        match self {
            DemandBasis::Reads => "disk reads with its memory full",
            DemandBasis::Held => {
                "memory full, reads stopped: holds a quarter of its highest demand"
            }
            DemandBasis::FreeMemory => "free memory",
            DemandBasis::NoStatistics => "no fresh statistics",
            DemandBasis::NoDiskFigures => "memory full, no disk figures",
            DemandBasis::FirstReading => "memory full, first disk reading",
        }
    }
}

/// Whether a guest's memory is full: its free memory under its margin or
/// [`FULL_PERCENT`] of its memory, whichever is more.
fn memory_full(g: &GuestView) -> bool {
    g.unused_kib <= g.margin_kib().max(g.total_kib / 100 * FULL_PERCENT)
}

/// Takes a pass's reading of a VM's disk reads into its track, and says its
/// demand (thousandths of a MiB/s of reads while its memory was full), or
/// `None` when it cannot be known this pass, with what the answer rests on
/// ([`DemandBasis`]). Nothing decays with time:
///
/// - fresh figures that show free memory: no demand, at once, whatever its
///   disks do and whether it has any (issue 20: an idle appliance booted
///   from its initramfs is not an unknown); what it held is forgotten;
/// - memory full and a read rate of at least what it holds: the live rate
///   (not smoothed: it is already the mean over the pass, and a mean over
///   two passes would follow a new reader a pass later); its live demand
///   is the highest such rate of at least [`READS_STOPPED`] since its
///   memory became full (a rate that falls as its working set comes to
///   fit does not lower it);
/// - memory full and its reads under what it holds ([`HOLD_FRACTION`] of
///   its live demand): that, for as long as its memory stays full;
/// - no fresh figures, or memory full and no disk rate (no disk figures;
///   the first reading, or its counters went back, a restart, which also
///   forgets what it held): unknown. The track runs on.
pub fn track_io(
    prev: Option<IoTrack>,
    rd_bytes: Option<u64>,
    guest: Option<GuestView>,
    now: u64,
) -> (Option<IoTrack>, Option<u64>, DemandBasis) {
    let full = guest.as_ref().map(memory_full);
    let Some(rd) = rd_bytes else {
        // No disk figures: no rate; the memory says what it can.
        return match full {
            Some(false) => (
                prev.map(|p| IoTrack {
                    demand: 0,
                    live: 0,
                    ..p
                }),
                Some(0),
                DemandBasis::FreeMemory,
            ),
            Some(true) => (prev, None, DemandBasis::NoDiskFigures),
            None => (prev, None, DemandBasis::NoStatistics),
        };
    };
    let restarted = prev.is_some_and(|p| rd < p.rd_bytes);
    let rate = match prev {
        Some(p) if now > p.at && rd >= p.rd_bytes => Some(
            u64::try_from(u128::from(rd - p.rd_bytes) * 1000 / (1 << 20) / u128::from(now - p.at))
                .unwrap_or(u64::MAX),
        ),
        _ => None,
    };
    let live = prev.filter(|_| !restarted).map_or(0, |p| p.live);
    let hold =
        u64::try_from(u128::from(live) * u128::from(HOLD_FRACTION.0) / u128::from(HOLD_FRACTION.1))
            .unwrap_or(u64::MAX);
    let (demand, live, basis) = match (full, rate) {
        (None, _) => (None, live, DemandBasis::NoStatistics),
        (Some(false), _) => (Some(0), 0, DemandBasis::FreeMemory),
        (Some(true), None) => (None, live, DemandBasis::FirstReading),
        (Some(true), Some(r)) if r < hold => (Some(hold), live, DemandBasis::Held),
        // the highest rate of this stretch of full memory: a rate that
        // falls as the working set comes to fit is not a new, smaller
        // demand (issue 20: held as its last rate, the quarter ratcheted
        // down 18 408 -> 4836 -> 1209 and the reader lost the cache it read
        // from)
        (Some(true), Some(r)) if r >= READS_STOPPED => (Some(r), r.max(live), DemandBasis::Reads),
        (Some(true), Some(r)) => (Some(r), live, DemandBasis::Reads),
    };
    (
        Some(IoTrack {
            at: now,
            rd_bytes: rd,
            demand: demand.unwrap_or(0),
            live,
        }),
        demand,
        basis,
    )
}

/// When `d`'s guest figures were taken, on the clock of the pass that
/// observed `obs` ([`super::clock::dated`]): `None` when they cannot be
/// dated (stamped before a step back this pass cannot measure).
fn dated_on(obs: &Observation, d: &LiveDomain) -> Option<super::clock::Dated> {
    super::clock::dated(
        d.guest.last_update,
        obs.at,
        obs.read_after_secs,
        obs.clock_step_secs,
    )
}

/// Whether `d`'s guest figures are fresh enough to go by, dated on the
/// pass's clock as a managed row's are: the report's `guest_stats_fresh`
/// of a domain the policy did not see.
pub fn fresh_on(obs: &Observation, d: &LiveDomain) -> bool {
    let stats = GuestStats {
        last_update: dated_on(obs, d).map(|t| t.at),
        ..d.guest
    };
    guest_view(&stats, obs.at).is_some()
}

/// One managed VM as the policy sees it, with what the later stages need.
#[derive(Clone, Debug)]
pub struct Row<'a> {
    /// The domain, as observed.
    pub d: &'a LiveDomain,
    /// What the policy is given.
    pub view: VmView,
    /// Where its balloon is relative to what was asked.
    pub motion: Motion,
    /// Its guest's figures are fresh enough to go by.
    pub fresh: bool,
    /// What its demand rests on (`None` unless the split weighs by it).
    pub demand_basis: Option<DemandBasis>,
}

/// The VMs the policy sees: every domain with a record and readable sizes
/// whose QEMU answers, in the order of the domains. Moves each record's I/O track and
/// manual-change detector on to this pass.
pub fn rows<'a>(
    settings: &Settings,
    obs: &'a Observation,
    state: &mut State,
    parts: &BTreeMap<String, VmKsm>,
    notes: &mut Vec<Note>,
) -> Vec<Row<'a>> {
    let now = obs.at;
    let mut rows = Vec::new();
    for d in &obs.domains {
        // A VM whose QEMU does not answer is no row: the policy does not
        // see it, its balloon stays where it is (reconcile keeps since when).
        let (Some(r), Some(s), None) = (state.vms.get_mut(&d.uuid), d.sizes, &d.unresponsive)
        else {
            continue;
        };
        let actual = s.current_kib;
        let motion = motion(r, actual, now);
        let current = match motion {
            Motion::InFlight(t) => t,
            Motion::Settled | Motion::Short(_) => actual,
        };
        // When the figures were taken, on this pass's clock: a report
        // stamped before a step of the wall clock is never fresher than
        // now, nor taken as answering an ask made after it.
        let dated = dated_on(obs, d);
        let last_update = dated.map_or(0, |t| t.at);
        let stats = GuestStats {
            last_update: dated.map(|t| t.at),
            ..d.guest
        };
        let guest = guest_view(&stats, now).map(|g| {
            let g = confirm(
                figures_now(g, r, actual, last_update),
                r,
                last_update,
                settings.guest_stats_period > 0,
            );
            GuestView {
                confirmed: g.confirmed && dated.is_some_and(|t| t.sure),
                ..g
            }
        });
        // Tracked only for a split that weighs by it.
        let (io, demand, demand_basis) = if settings.policy.split.inputs().demand {
            let (io, demand, basis) = track_io(r.io, d.block_rd_bytes, guest, now);
            (io, demand, Some(basis))
        } else {
            (None, None, None)
        };
        r.io = io;
        let hand = hand_set(r, d, &stats, s.maximum_kib, now, notes);
        rows.push(Row {
            d,
            view: VmView {
                floor_kib: r.floor_kib,
                ceiling_kib: r.ceiling_kib.min(s.maximum_kib),
                current_kib: current,
                actual_kib: actual,
                guest,
                weight: r.settings.weight,
                demand,
                contribution_kib: parts
                    .get(&d.uuid)
                    .map(|p| u64::try_from(p.attributed_kib).unwrap_or(0)),
                status: status(r, d, hand),
            },
            motion,
            fresh: guest.is_some(),
            demand_basis,
        });
    }
    rows
}

/// Was the balloon set by someone else? Feeds its size to the VM's
/// manual-change detector (only for a VM we manage: one that opted out is
/// nobody's business here) and says what it decided, with a note when the
/// VM is newly held by hand.
///
/// The guest's `usable` figure goes with it only when it can speak for the
/// guest now: fresh ([`STATS_FRESH_SECS`]) and taken since the size was
/// last asked. A stale one (a guest without a statistics period reports
/// once, at boot, with all its memory free) told the detector a guest
/// whose balloon deflated on OOM had plenty, and the deflate was taken
/// for an operator's `setmem`: the VM was held by hand for good.
fn hand_set(
    r: &mut VmRecord,
    d: &LiveDomain,
    stats: &GuestStats,
    maximum_kib: u64,
    now: u64,
    notes: &mut Vec<Note>,
) -> Option<crate::manual::Decision> {
    if !(r.balloon && d.running && r.settings.manage) {
        return None;
    }
    let actual = d.sizes.map_or(0, |s| s.current_kib);
    let was_held = r.manual.is_some_and(|h| h.held.is_some());
    let hist = r
        .manual
        .get_or_insert_with(|| crate::manual::History::adopted(now, actual));
    let speaks_now = stats
        .last_update
        .is_some_and(|t| t > 0 && now.saturating_sub(t) <= STATS_FRESH_SECS && t >= hist.asked_at);
    let decision = hist.observe(crate::manual::Observation {
        at: now,
        current_kib: actual,
        maximum_kib,
        autodeflate: r.autodeflate,
        usable_kib: stats.usable_kib.filter(|_| speaks_now),
    });
    if let (crate::manual::Decision::Manual { size_kib, .. }, false) = (decision, was_held) {
        note(
            notes,
            Level::Warn,
            format!(
                "VM {:?}: its balloon was set to {} by someone else (ksm-balloon asked for {}): left alone until it restarts or 'ksm-balloon release {}'",
                d.name,
                Kib(size_kib),
                Kib(hist.asked_kib),
                d.name.escape_debug()
            ),
        );
    }
    Some(decision)
}

/// The VM's status for the policy.
fn status(r: &VmRecord, d: &LiveDomain, hand: Option<crate::manual::Decision>) -> VmStatus {
    if !r.balloon {
        VmStatus::NoBalloon
    } else if !d.running {
        VmStatus::NotRunning
    } else if !r.settings.manage {
        VmStatus::OptedOut
    } else {
        match hand {
            Some(crate::manual::Decision::Manual { .. }) => VmStatus::HeldByHand,
            Some(crate::manual::Decision::Unknown) => VmStatus::Unsettled,
            _ => VmStatus::Managed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Source;

    const MIB: u64 = 1024;

    fn guest(free_mib: u64) -> Option<GuestView> {
        Some(GuestView::now(100 * MIB, free_mib * MIB, 190 * MIB))
    }

    #[test]
    fn figures_taken_before_the_last_resize_are_moved_by_it() {
        let g = GuestView::now(60 * MIB, 50 * MIB, 190 * MIB);
        let mut rec = VmRecord::new(
            "a".into(),
            "u".into(),
            160 * MIB,
            320 * MIB,
            true,
            Source::Hook,
            0,
        );
        // nothing asked yet: as reported
        assert_eq!(figures_now(g, &rec, 240 * MIB, 100), g);
        // shrunk 240 -> 200 at 100
        rec.asked_from_kib = Some(240 * MIB);
        rec.last_change_at = Some(100);
        let moved = |t| {
            let n = figures_now(g, &rec, 200 * MIB, t);
            (n.usable_kib / MIB, n.unused_kib / MIB)
        };
        assert_eq!(moved(99), (20, 10)); // taken before: the 40 given is gone
        assert_eq!(moved(100), (20, 10)); // the same second: may be before
        assert_eq!(moved(100 + MOVE_SECS - 1), (20, 10)); // the balloon may still be moving
        assert_eq!(moved(100 + MOVE_SECS), (60, 50)); // taken after it moved
                                                      // grown 160 -> 240 at 100: counted only when surely before
        rec.asked_from_kib = Some(160 * MIB);
        let grown = |t| figures_now(g, &rec, 240 * MIB, t).usable_kib / MIB;
        assert_eq!(grown(99), 140);
        assert_eq!(grown(100), 60);
        // a balloon that gave back more than the guest had: nothing left
        rec.asked_from_kib = Some(320 * MIB);
        assert_eq!(figures_now(g, &rec, 200 * MIB, 99).usable_kib, 0);
    }

    /// A track as a pass left it: at `at` s, `rd_mib` read, last live
    /// demand `live`.
    fn track(at: u64, rd_mib: u64, live: u64) -> Option<IoTrack> {
        Some(IoTrack {
            at,
            rd_bytes: rd_mib << 20,
            demand: 0,
            live,
        })
    }

    /// A row of [`each_branch_of_the_demand`].
    type Case = (
        Option<IoTrack>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        DemandBasis,
        u64,
    );

    #[test]
    fn each_branch_of_the_demand() {
        use DemandBasis::*;
        // (what the last pass left, MiB read now, free MiB (None: no fresh
        // figures), at 10 s) -> (demand, basis, live demand after)
        let none = None;
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // free memory: none, at once, what it held forgotten
            (track(0, 0, 30_000), Some(300), Some(90), Some(0), FreeMemory, 0),
            (track(0, 0, 30_000), None, Some(90), Some(0), FreeMemory, 0),
            (none, Some(7), Some(90), Some(0), FreeMemory, 0),
            // full and reading: the live rate, the highest remembered
            (track(0, 0, 0), Some(300), Some(4), Some(30_000), Reads, 30_000),
            (track(0, 0, 10_000), Some(300), Some(4), Some(30_000), Reads, 30_000),
            (track(0, 0, 30_000), Some(100), Some(4), Some(10_000), Reads, 30_000),
            // full, reads stopped after a live demand: a quarter of it held
            (track(0, 300, 30_000), Some(300), Some(4), Some(7_500), Held, 30_000),
            // ... or fallen under that quarter: held, the memory kept
            (track(0, 300, 30_000), Some(350), Some(4), Some(7_500), Held, 30_000),
            // full, no reads and nothing held: none
            (track(0, 0, 0), Some(0), Some(4), Some(0), Reads, 0),
            // unknown: no fresh figures (what it held kept for later)
            (track(0, 0, 30_000), Some(300), None, None, NoStatistics, 30_000),
            // unknown: full, no disk figures
            (track(0, 0, 30_000), None, Some(4), None, NoDiskFigures, 30_000),
            // unknown: full, first reading; counters went back (a
            // restart: what it held is forgotten)
            (none, Some(300), Some(4), None, FirstReading, 0),
            (track(0, 500, 30_000), Some(300), Some(4), None, FirstReading, 0),
        ];
        for (i, &(prev, rd_mib, free, demand, basis, live)) in cases.iter().enumerate() {
            let g = free.and_then(guest);
            let (t, d, b) = track_io(prev, rd_mib.map(|m| m << 20), g, 10);
            assert_eq!((d, b), (demand, basis), "case {i}");
            assert_eq!(t.map_or(0, |t| t.live), live, "case {i}");
            if let Some(rd) = rd_mib {
                // the track runs on, whatever the demand
                assert_eq!(
                    t.map(|t| (t.at, t.rd_bytes)),
                    Some((10, rd << 20)),
                    "case {i}"
                );
            }
        }
        // full, a trickle under READS_STOPPED but not under what it holds:
        // the rate, not remembered (5 MiB in 100 s: 0.05 MiB/s; 200 held
        // a quarter, 50)
        let (t, d, b) = track_io(track(0, 0, 200), Some(5 << 20), guest(4), 100);
        assert_eq!((d, b, t.map(|t| t.live)), (Some(50), Reads, Some(200)));
        assert!(FreeMemory.known() && Reads.known() && Held.known());
        assert!(!NoStatistics.known() && !NoDiskFigures.known() && !FirstReading.known());
    }

    #[test]
    fn a_guest_with_free_memory_has_no_demand_at_once() {
        // Issue 20: a former reader whose fresh figures show free memory
        // kept its decayed demand (half of it a minute later): it has room,
        // so none, the pass it shows it.
        let (t, d, _) = track_io(None, Some(0), guest(4), 0);
        let (t, d2, _) = track_io(t, Some(300 << 20), guest(4), 10);
        assert_eq!((d, d2), (None, Some(30_000)));
        let (t, d, b) = track_io(t, Some(300 << 20), guest(90), 20);
        assert_eq!((d, b), (Some(0), DemandBasis::FreeMemory));
        // and its memory full again, reads still stopped: nothing held
        let (_, d, b) = track_io(t, Some(300 << 20), guest(4), 30);
        assert_eq!((d, b), (Some(0), DemandBasis::Reads));
        // the same without disk figures (an appliance): none, known
        assert_eq!(
            track_io(None, None, guest(89), 0),
            (None, Some(0), DemandBasis::FreeMemory)
        );
    }

    #[test]
    fn a_reader_whose_working_set_fits_keeps_a_quarter_while_its_memory_is_full() {
        // Issue 20: once a reader's working set fits in what it was lent,
        // its reads stop and its demand decayed (16 685 -> 730 in minutes):
        // the pool drifted back to equal. It holds a quarter of its last
        // live demand, with no time decay, while its memory stays full.
        let mut t = track(0, 0, 0);
        let mut read = 0;
        let mut seen = Vec::new();
        for (at, mib_per_s) in [(10, 20), (20, 20), (30, 0), (40, 0), (3600, 0), (7200, 0)] {
            read += mib_per_s * 10;
            let (t2, d, _) = track_io(t, Some(read << 20), guest(4), at);
            t = t2;
            seen.push(d);
        }
        assert_eq!(
            seen,
            [
                Some(20_000),
                Some(20_000),
                Some(5_000),
                Some(5_000),
                Some(5_000),
                Some(5_000)
            ]
        );
    }

    #[test]
    fn a_reader_slowing_as_its_set_comes_to_fit_holds_a_quarter_of_its_peak_regression() {
        // Issue 20, the mixed rig's oracle gap: a reader at 18.4 MiB/s,
        // lent its ceiling, slowed to 4.8 MiB/s as its set came to fit;
        // that slower rate became what it held a quarter of (1209), and
        // beside two idle guests it lost 23 MiB of the cache it read from.
        // Measured rates (KiB/s read with the memory full, passes 10 s
        // apart), then no reads: the quarter of the peak stays.
        let mut t = track(0, 0, 0);
        let mut read_kib = 0u64;
        let mut seen = Vec::new();
        for (at, kib_per_s) in [(10, 18_850), (20, 4_952), (30, 0), (40, 0), (3600, 0)] {
            read_kib += kib_per_s * 10;
            let (t2, d, b) = track_io(t, Some(read_kib << 10), guest(4), at);
            t = t2;
            seen.push((d, b));
        }
        use DemandBasis::*;
        assert_eq!(
            seen,
            [
                (Some(18_408), Reads),
                (Some(4_835), Reads),
                (Some(4_602), Held),
                (Some(4_602), Held),
                (Some(4_602), Held)
            ]
        );
        // and free memory still forgets it at once
        let (t, d, _) = track_io(t, Some(read_kib << 10), guest(90), 3610);
        assert_eq!((d, t.map(|t| t.live)), (Some(0), Some(0)));
    }

    #[test]
    fn no_disk_figures_and_no_statistics_stay_unknown() {
        use DemandBasis::*;
        // full memory and no disk figures at all: unknown (it may read
        // from network storage), the track kept
        let t = track(0, 100, 10_000);
        assert_eq!(track_io(t, None, guest(4), 20), (t, None, NoDiskFigures));
        // no fresh statistics and no disks: unknown
        assert_eq!(track_io(None, None, None, 0), (None, None, NoStatistics));
    }
}
