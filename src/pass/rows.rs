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

/// A VM's demand halves every this long once it stops reading (it rises
/// at once when it reads): the pool follows a VM that goes busy within a
/// pass, one that goes idle within a few, and a busy VM whose working set
/// now fits in the memory it was lent is not recalled the pass its reads
/// stop.
pub const DEMAND_HALF_LIFE_SECS: u64 = 60;

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
    /// since the last pass (0 when its memory was not full), smoothed.
    Reads,
    /// Its fresh figures show its memory is not full: it has no demand for
    /// more, whatever its disks do (or whether it has any); what it had
    /// decays.
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
        matches!(self, DemandBasis::Reads | DemandBasis::FreeMemory)
    }

    /// What it rests on, in `status`'s words.
    pub fn why(self) -> &'static str {
        match self {
            DemandBasis::Reads => "disk reads with its memory full",
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
/// demand (thousandths of a MiB/s of reads while its memory was full,
/// smoothed), or `None` when it cannot be known this pass, with what the
/// answer rests on ([`DemandBasis`]).
///
/// What the guest says about its memory comes first (issue 20): a guest
/// whose fresh figures show free memory has no demand for more, with or
/// without disk figures (an idle appliance booted from its initramfs is
/// not an unknown). Only a guest with no fresh figures, or with full
/// memory and no disk rate yet, is unknown.
pub fn track_io(
    prev: Option<IoTrack>,
    rd_bytes: Option<u64>,
    guest: Option<GuestView>,
    now: u64,
) -> (Option<IoTrack>, Option<u64>, DemandBasis) {
    let decayed = prev.map_or(0, |p| {
        let dt = now.saturating_sub(p.at) as f64;
        (p.demand as f64 * 0.5f64.powf(dt / DEMAND_HALF_LIFE_SECS as f64)) as u64
    });
    let full = guest.as_ref().map(memory_full);
    let Some(rd) = rd_bytes else {
        // No disk figures: nothing to track; the memory says what it can.
        return match full {
            Some(false) => (prev, Some(decayed), DemandBasis::FreeMemory),
            Some(true) => (prev, None, DemandBasis::NoDiskFigures),
            None => (prev, None, DemandBasis::NoStatistics),
        };
    };
    let rate = match prev {
        Some(p) if now > p.at && rd >= p.rd_bytes => Some(
            u64::try_from(u128::from(rd - p.rd_bytes) * 1000 / (1 << 20) / u128::from(now - p.at))
                .unwrap_or(u64::MAX),
        ),
        _ => None,
    };
    let (reading, basis) = match (full, rate) {
        (None, _) => (None, DemandBasis::NoStatistics),
        (Some(false), _) => (Some(0), DemandBasis::FreeMemory),
        (Some(true), Some(r)) => (Some(r), DemandBasis::Reads),
        (Some(true), None) => (None, DemandBasis::FirstReading),
    };
    let demand = reading.map_or(decayed, |r| r.max(decayed));
    (
        Some(IoTrack {
            at: now,
            rd_bytes: rd,
            demand,
        }),
        reading.map(|_| demand),
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

    #[test]
    fn demand_is_reads_while_memory_is_full() {
        use DemandBasis::*;
        // the first reading with its memory full gives no rate: unknown
        let (t, d, b) = track_io(None, Some(0), guest(4), 0);
        assert_eq!((d, b), (None, FirstReading));
        // 100 MiB read in 10 s with 4 MiB free: 10 MiB/s
        let (t, d, b) = track_io(t, Some(100 << 20), guest(4), 10);
        assert_eq!((d, b), (Some(10_000), Reads));
        // the same reads with 90 MiB free: cold reads, more memory would
        // not cut them; the demand only decays (60 s half-life)
        let (t2, d2, b2) = track_io(t, Some(200 << 20), guest(90), 70);
        assert_eq!((d2, b2), (Some(5_000), FreeMemory));
        // no fresh guest statistics: unknown, the track still moves on
        let (t3, d3, b3) = track_io(t2, Some(300 << 20), None, 80);
        assert_eq!((d3, b3), (None, NoStatistics));
        assert_eq!(t3.unwrap().rd_bytes, 300 << 20);
        // a VM restarted (counters went back): no rate this pass
        let (_, d4, b4) = track_io(t3, Some(5), guest(4), 90);
        assert_eq!((d4, b4), (None, FirstReading));
        // full memory and no disk figures at all: unknown (it may read
        // from network storage), the track kept
        assert_eq!(track_io(t, None, guest(4), 20), (t, None, NoDiskFigures));
    }

    #[test]
    fn a_guest_with_free_memory_has_no_demand_with_or_without_disks_regression() {
        // Issue 20: two idle guests without any disk, each with 89 MiB of
        // 197 free, had a `null` demand (no disk figures), counted as the
        // average, as hungry as the reader beside them.
        use DemandBasis::*;
        assert_eq!(
            track_io(None, None, guest(89), 0),
            (None, Some(0), FreeMemory)
        );
        // with disks, known from its first pass (no rate needed for none)
        let (t, d, b) = track_io(None, Some(7 << 20), guest(89), 0);
        assert_eq!((d, b), (Some(0), FreeMemory));
        assert_eq!(t.unwrap().rd_bytes, 7 << 20);
        // a former reader without disk figures now: what it had decays
        let was = Some(IoTrack {
            at: 0,
            rd_bytes: 0,
            demand: 8_000,
        });
        assert_eq!(
            track_io(was, None, guest(89), 60),
            (was, Some(4_000), FreeMemory)
        );
        // no fresh statistics and no disks: unknown
        assert_eq!(track_io(None, None, None, 0), (None, None, NoStatistics));
        assert!(FreeMemory.known() && Reads.known());
        assert!(!NoStatistics.known() && !NoDiskFigures.known() && !FirstReading.known());
    }
}
