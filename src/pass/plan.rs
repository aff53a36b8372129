//! Step 2 of a pass: from what was observed and the state, every VM's
//! target and what the state becomes. Pure: no libvirt, no files, no clock
//! (the observation carries the time), no logging (what is worth saying
//! comes back as [`Note`]s).
//!
//! - Reconcile: forget records of domains that are gone (a stop the hook
//!   missed), adopt running domains no hook recorded. A domain whose
//!   balloon is still at its maximum may be one still starting (its guest's
//!   balloon driver has not inflated yet) or one started without headroom;
//!   it is adopted only after [`ADOPT_SETTLE_SECS`], so a VM is never
//!   adopted with its not-yet-inflated size as its floor.
//! - Track what was asked: a target asked by an earlier pass that the
//!   balloon has not reached yet is on its way for [`SETTLE_SECS`]; the
//!   policy then plans from it, not from the balloon's old size. A balloon
//!   that stays short of its target after that (a guest that cannot give
//!   the memory, or one that deflated on OOM) is not asked for the same
//!   thing again until an exponential back-off expires.
//! - Run the policy ([`crate::policy::plan`]).

use std::collections::BTreeMap;
use std::path::Path;

use log::Level;

use crate::attribution::Attribution;
use crate::domxml::DomainXml;
use crate::hypervisor::{GuestStats, LiveDomain};
use crate::ksm::KsmError;
use crate::policy::{self, Action, Decision, GuestView, HostView, Reason, VmStatus, VmView};
use crate::state::{Candidate, IoTrack, Source, State, Stuck, VmRecord};
use crate::units::Kib;

use super::observe::Observation;
use super::report::{AttributionReport, Report, VmKsm, VmReport};
use super::settings::{Settings, HOLD_MAX_ENTRIES};

/// A record this young whose domain is not active yet is a VM still
/// starting (the hook ran at `prepare`): kept, not forgotten.
pub const STARTING_GRACE_SECS: u64 = 120;

/// An unrecorded domain whose balloon sits at its maximum is adopted only
/// once it has been seen that long (a starting guest inflates well within it).
pub const ADOPT_SETTLE_SECS: u64 = 30;

/// Guest statistics older than this are stale (`last-update` not moving).
pub const STATS_FRESH_SECS: u64 = 30;

/// A target asked that long ago and not reached means the balloon is short
/// of it (a balloon change takes about a second).
pub const SETTLE_SECS: u64 = 20;

/// A balloon this close to its target has reached it, KiB.
pub const REACHED_KIB: u64 = 1024;

/// The first back-off for a balloon short of its target; it doubles at
/// every further try, up to [`BACKOFF_MAX_SECS`].
pub const BACKOFF_FIRST_SECS: u64 = 60;

/// The longest back-off.
pub const BACKOFF_MAX_SECS: u64 = 3600;

/// A log line the pass is worth (the caller decides whether to log it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub text: String,
}

/// A balloon to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resize {
    /// The domain's UUID.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// Its size now, KiB.
    pub from_kib: u64,
    /// The target, KiB.
    pub to_kib: u64,
    /// Why.
    pub reason: Reason,
}

/// Why the pass sets a guest's statistics period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeriodKind {
    /// It reports none: turned on once.
    TurnOn,
    /// A recall starts: the short period, so each step is checked by the
    /// guest's fresh answer ([`RECALL_STATS_PERIOD_SECS`]).
    Recall,
    /// The recall is over: back to `--guest-stats-period`.
    Restore,
}

/// A guest whose statistics period the pass sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsPeriod {
    /// The domain's UUID.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// The period, seconds.
    pub seconds: u32,
    /// Why.
    pub kind: PeriodKind,
}

/// Everything the plan step works out.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The state after reconciling and tracking (the asks of this pass are
    /// recorded by [`super::apply::record`] once they are made).
    pub state: State,
    /// The report, as far as it is known before applying.
    pub report: Report,
    /// The balloons to set.
    pub resizes: Vec<Resize>,
    /// The statistics periods to turn on.
    pub stats_periods: Vec<StatsPeriod>,
    /// What is worth logging.
    pub notes: Vec<Note>,
}

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

/// Where `rec`'s balloon is, at `actual_kib`, relative to what was asked.
pub fn motion(rec: &VmRecord, actual_kib: u64, now: u64) -> Motion {
    let (Some(target), Some(at)) = (rec.last_target_kib, rec.last_change_at) else {
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

/// A balloon reaches a new size within this long of the resize (measured:
/// 256 -> 160 MiB in about 1 s, growing in 0.2 s): guest figures taken
/// sooner may describe the guest before the shrink.
pub const MOVE_SECS: u64 = 3;

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

/// The guest's statistics period while ksm-balloon recalls from it,
/// seconds: a recall step waits for figures this fresh.
pub const RECALL_STATS_PERIOD_SECS: u32 = 1;

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

/// Takes a pass's reading of a VM's disk reads into its track, and says its
/// demand (thousandths of a MiB/s of reads while its memory was full,
/// smoothed), or `None` when it cannot be known this pass (no fresh guest
/// statistics, no disk figures, or no earlier reading to take a rate from).
pub fn track_io(
    prev: Option<IoTrack>,
    rd_bytes: Option<u64>,
    guest: Option<GuestView>,
    now: u64,
) -> (Option<IoTrack>, Option<u64>) {
    let Some(rd) = rd_bytes else {
        return (prev, None);
    };
    let decayed = prev.map_or(0, |p| {
        let dt = now.saturating_sub(p.at) as f64;
        (p.demand as f64 * 0.5f64.powf(dt / DEMAND_HALF_LIFE_SECS as f64)) as u64
    });
    let reading = match (prev, guest) {
        (Some(p), Some(g)) if now > p.at && rd >= p.rd_bytes => {
            let full = g.unused_kib <= g.margin_kib().max(g.total_kib / 100 * FULL_PERCENT);
            let rate = u128::from(rd - p.rd_bytes) * 1000 / (1 << 20) / u128::from(now - p.at);
            Some(if full {
                u64::try_from(rate).unwrap_or(u64::MAX)
            } else {
                0
            })
        }
        _ => None,
    };
    let demand = reading.map_or(decayed, |r| r.max(decayed));
    (
        Some(IoTrack {
            at: now,
            rd_bytes: rd,
            demand,
        }),
        reading.map(|_| demand),
    )
}

/// Lend only what holds: records `now_kib` in `seen` (dropping readings
/// older than `window_secs`) and returns the smallest reading of the
/// window, the present one included, so a fall is followed at once and a
/// rise only once it has lasted the window.
///
/// `seen` (in the state file) keeps only what can still be the smallest:
/// a reading followed by one as small or smaller never will be, so the
/// readings kept rise with time (one entry at steady savings, not one per
/// pass). At most [`HOLD_MAX_ENTRIES`] are kept: past that, the
/// two kept closest in time become one, with the smaller reading and the
/// later time, which can only hold a rise back a little longer, never
/// lend it early.
pub fn hold(seen: &mut Vec<(u64, u64)>, now_kib: u64, now: u64, window_secs: u64) -> u64 {
    if window_secs == 0 {
        seen.clear();
        return now_kib;
    }
    seen.retain(|&(at, _)| at <= now && now - at < window_secs);
    while seen.last().is_some_and(|&(_, k)| k >= now_kib) {
        seen.pop();
    }
    seen.push((now, now_kib));
    while seen.len() > HOLD_MAX_ENTRIES {
        let i = (1..seen.len())
            .min_by_key(|&i| seen[i].0 - seen[i - 1].0)
            .unwrap_or(1);
        seen[i].1 = seen[i].1.min(seen[i - 1].1);
        seen.remove(i - 1);
    }
    seen.iter().map(|&(_, k)| k).min().unwrap_or(now_kib)
}

/// The VMs' parts of the host's savings from the per-process figures:
/// (the attribution, each VM's QEMU pid and merging pages and part by
/// UUID), or why there is none this pass.
fn attribute_vms(
    obs: &Observation,
    metric: crate::ksm::Metric,
) -> Result<(Attribution, BTreeMap<String, VmKsm>), String> {
    let procs = obs
        .procs
        .as_ref()
        .ok_or("per-process figures were not read")?;
    let all = procs.all.as_ref().map_err(Clone::clone)?;
    let mut uuids = Vec::new();
    let mut figures = Vec::new();
    for (uuid, r) in &procs.vms {
        if let Ok(vp) = r {
            if let Some(f) = crate::attribution::ProcessFigures::from_stat(&vp.stat) {
                uuids.push((uuid.clone(), vp.pid, f.merging_pages));
                figures.push(f);
            }
        }
    }
    let vm_pids: std::collections::BTreeSet<u32> = uuids.iter().map(|(_, p, _)| *p).collect();
    let others: Vec<_> = all
        .others(&vm_pids)
        .filter_map(crate::attribution::ProcessFigures::from_stat)
        .collect();
    let host = crate::attribution::HostFigures::from_counters(&obs.ksm);
    let a = crate::attribution::attribute(&host, metric, &figures, Some(&others))
        .map_err(|e| e.to_string())?;
    let parts = uuids
        .into_iter()
        .zip(&a.vm_kib)
        .map(|((uuid, pid, merging_pages), &kib)| {
            (
                uuid,
                VmKsm {
                    pid,
                    merging_pages,
                    attributed_kib: kib,
                },
            )
        })
        .collect();
    Ok((a, parts))
}

/// A new target for a balloon short of `asked` (at `actual_kib`) that asks
/// as much as that or more (within `band`): the same thing it could not
/// do. Only a target clearly less demanding is a new ask. (A target worked
/// out from where the balloon stands moves with it: a balloon jittering by
/// 1 MiB at the edge of a guest's memory must not look like a new ask.)
pub fn asks_no_less(target_kib: u64, asked: u64, actual_kib: u64, band: u64) -> bool {
    if asked < actual_kib {
        target_kib <= asked.saturating_add(band)
    } else {
        target_kib.saturating_add(band) >= asked
    }
}

/// The back-off after `tries` failed tries.
pub fn backoff_secs(tries: u32) -> u64 {
    BACKOFF_FIRST_SECS
        .saturating_mul(1u64 << tries.saturating_sub(1).min(20))
        .min(BACKOFF_MAX_SECS)
}

fn note(notes: &mut Vec<Note>, level: Level, text: String) {
    notes.push(Note { level, text });
}

/// The floor and ceiling to adopt `d` with, from its definition.
fn adoption_bounds(d: &LiveDomain, def: Option<&Result<DomainXml, String>>) -> (u64, u64, bool) {
    let s = d.sizes.expect("only domains with sizes are adopted");
    match def {
        // The definition's <currentMemory> is the size it boots with; a
        // transient domain's is its live size.
        Some(Ok(x)) => {
            let floor = x
                .current_memory_kib
                .min(s.current_kib)
                .min(x.memory_kib)
                .max(1);
            (floor, x.memory_kib.min(s.maximum_kib).max(floor), x.balloon)
        }
        _ => (
            s.current_kib.max(1),
            s.maximum_kib.max(s.current_kib.max(1)),
            true,
        ),
    }
}

/// Brings the state in line with what libvirt runs. Returns the UUIDs
/// adopted.
fn reconcile(state: &mut State, obs: &Observation, notes: &mut Vec<Note>) -> Vec<String> {
    let now = obs.at;
    let live: std::collections::BTreeSet<&str> =
        obs.domains.iter().map(|d| d.uuid.as_str()).collect();
    state.vms.retain(|uuid, r| {
        if live.contains(uuid.as_str()) {
            return true;
        }
        if now.saturating_sub(r.recorded_at) < STARTING_GRACE_SECS && r.last_change_at.is_none() {
            return true;
        }
        note(
            notes,
            Level::Info,
            format!(
                "VM {:?} is no longer running: forgotten (its stop was not seen by the hook)",
                r.name
            ),
        );
        false
    });
    state
        .candidates
        .retain(|uuid, _| live.contains(uuid.as_str()) && !state.vms.contains_key(uuid));
    let mut adopted = Vec::new();
    for d in &obs.domains {
        if let Some(r) = state.vms.get_mut(&d.uuid) {
            if r.name != d.name {
                r.name = d.name.clone();
            }
            continue;
        }
        let first_seen = state
            .candidates
            .entry(d.uuid.clone())
            .or_insert_with(|| Candidate {
                name: d.name.clone(),
                first_seen: now,
            })
            .first_seen;
        if !d.running || d.sizes.is_none() {
            continue;
        }
        let (floor, ceiling, balloon) = adoption_bounds(d, obs.definitions.get(&d.uuid));
        let settled = now.saturating_sub(first_seen) >= ADOPT_SETTLE_SECS;
        if floor >= ceiling && !settled {
            continue;
        }
        state.candidates.remove(&d.uuid);
        let mut r = VmRecord::new(
            d.name.clone(),
            d.uuid.clone(),
            floor,
            ceiling,
            balloon,
            Source::Adopted,
            now,
        );
        r.defined = Some((floor, ceiling));
        if let Some(Ok(def)) = obs.definitions.get(&d.uuid) {
            r.autodeflate = def.autodeflate;
            let problems = def
                .metadata
                .problems
                .iter()
                .cloned()
                .chain(r.apply_settings(def.metadata.settings.clone()));
            for p in problems {
                note(notes, Level::Warn, format!("VM {:?}: {p}; ignored", d.name));
            }
        }
        // A balloon above the size the VM boots with may still be inflating
        // to it (a guest just started, its balloon driver not yet loaded):
        // that is the path from the maximum down to the boot size, not an
        // operator's setmem. Above the floor, start the detector as the hook
        // does for a VM it saw start.
        let current = d.sizes.map_or(floor, |s| s.current_kib);
        r.manual = Some(if current > floor {
            crate::manual::History::started(now, floor, d.sizes.map_or(current, |s| s.maximum_kib))
        } else {
            crate::manual::History::adopted(now, current)
        });
        note(
            notes,
            Level::Info,
            format!(
                "adopted VM {:?} (no hook recorded it; installed while it ran?): floor {}, ceiling {}{}",
                d.name,
                Kib(r.floor_kib),
                Kib(r.ceiling_kib),
                if balloon { "" } else { ", no balloon device" }
            ),
        );
        state.vms.insert(d.uuid.clone(), r);
        adopted.push(d.uuid.clone());
    }
    adopted
}

/// One managed VM between the policy and the report.
struct Row<'a> {
    d: &'a LiveDomain,
    view: VmView,
    motion: Motion,
    fresh: bool,
}

/// Works out the pass: reconcile, track, policy. `ksm_dir` only names a
/// counter file in an error.
pub fn plan(
    settings: &Settings,
    obs: &Observation,
    mut state: State,
    ksm_dir: &Path,
) -> Result<Planned, KsmError> {
    let now = obs.at;
    let mut notes = Vec::new();
    let savings = obs.ksm.savings(settings.metric, ksm_dir)?;
    if obs.ksm.unmerged() {
        note(
            &mut notes,
            Level::Info,
            format!(
                "KSM has unmerged everything ({}/run = 2): its savings are gone, so the bonuses go with them",
                ksm_dir.display()
            ),
        );
    } else if !obs.ksm.counters_live() {
        note(
            &mut notes,
            Level::Warn,
            format!(
                "KSM is not merging ({}/run = {}): its counters are stale, so sizes are held; start it with 'echo 1 > /sys/kernel/mm/ksm/run'",
                ksm_dir.display(),
                obs.ksm.run
            ),
        );
    }
    let adopted = reconcile(&mut state, obs, &mut notes);
    let policy = settings.policy(obs.mem.total_kib);
    // Whose savings: the VMs' parts, for the contribution splits.
    let (attribution, parts) = if settings.split.needs_contribution() {
        match attribute_vms(obs, savings.metric) {
            Ok((a, parts)) => (
                Ok(AttributionReport {
                    host_kib: a.host_kib,
                    vms_kib: a.vms_kib,
                    non_vm_kib: a.non_vm_kib,
                    others_kib: a.others_kib,
                }),
                parts,
            ),
            Err(why) => {
                note(
                    &mut notes,
                    Level::Debug,
                    format!("no per-process KSM figures ({why}): the split is equal this pass"),
                );
                (Err(why), BTreeMap::new())
            }
        }
    } else {
        (Err("not needed by this split".to_string()), BTreeMap::new())
    };
    if let Some(procs) = &obs.procs {
        for (uuid, r) in &procs.vms {
            if let Err(why) = r {
                let name = state
                    .vms
                    .get(uuid)
                    .map_or(uuid.as_str(), |r| r.name.as_str());
                note(
                    &mut notes,
                    Level::Debug,
                    format!(
                        "VM {name:?}: no per-process KSM figures ({why}); counted as an average VM"
                    ),
                );
            }
        }
    }
    // Lend only what holds (of the VMs' part, for the contribution splits).
    let lendable_now = match &attribution {
        Ok(a) => u64::try_from(a.vms_kib).unwrap_or(0),
        Err(_) => savings.kib,
    };
    let lendable = if obs.ksm.counters_live() {
        hold(
            &mut state.savings_seen,
            lendable_now,
            now,
            settings.hold_window_secs,
        )
    } else {
        state.savings_seen.clear();
        lendable_now
    };

    // The VMs the policy sees, in the order of the domains.
    let mut rows: Vec<Row> = Vec::new();
    for d in &obs.domains {
        let (Some(r), Some(s)) = (state.vms.get_mut(&d.uuid), d.sizes) else {
            continue;
        };
        let actual = s.current_kib;
        let motion = motion(r, actual, now);
        let current = match motion {
            Motion::InFlight(t) => t,
            Motion::Settled | Motion::Short(_) => actual,
        };
        let last_update = d.guest.last_update.unwrap_or(0);
        let guest = guest_view(&d.guest, now).map(|g| {
            confirm(
                figures_now(g, r, actual, last_update),
                r,
                last_update,
                settings.guest_stats_period > 0,
            )
        });
        let (io, demand) = track_io(r.io, d.block_rd_bytes, guest, now);
        r.io = io;
        // Was the balloon set by someone else? (Only for a VM we manage:
        // one that opted out is nobody's business here.)
        let hand = if r.balloon && d.running && r.settings.manage {
            let was_held = r.manual.is_some_and(|h| h.held.is_some());
            let hist = r
                .manual
                .get_or_insert_with(|| crate::manual::History::adopted(now, actual));
            let decision = hist.observe(crate::manual::Observation {
                at: now,
                current_kib: actual,
                maximum_kib: s.maximum_kib,
                autodeflate: r.autodeflate,
                usable_kib: d.guest.usable_kib,
            });
            if let (crate::manual::Decision::Manual { size_kib, .. }, false) = (decision, was_held)
            {
                note(
                    &mut notes,
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
        } else {
            None
        };
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
                status: if !r.balloon {
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
                },
            },
            motion,
            fresh: guest.is_some(),
        });
    }
    let views: Vec<VmView> = rows.iter().map(|r| r.view).collect();
    let host = HostView {
        savings_kib: lendable,
        ksm_counters_live: obs.ksm.counters_live(),
        available_kib: obs.mem.available_kib,
    };
    let p = policy::plan(&policy, &host, &views);

    let mut resizes = Vec::new();
    let mut stats_periods = Vec::new();
    let mut squeezed = Vec::new();
    let mut decided: Vec<Decision> = Vec::with_capacity(rows.len());
    for (row, dec) in rows.iter().zip(&p.decisions) {
        let mut dec = *dec;
        let r = state.vms.get_mut(&row.d.uuid).expect("a row has a record");
        let name = &row.d.name;
        // Back off from a target the balloon does not reach.
        match row.motion {
            Motion::Short(asked)
                if dec.resizes()
                    && asks_no_less(
                        dec.target_kib,
                        asked,
                        row.view.actual_kib,
                        policy.deadband_kib.max(REACHED_KIB),
                    ) =>
            {
                match r.stuck {
                    Some(st) if now < st.retry_at => {
                        dec.action = Action::Hold;
                        dec.reason = Reason::Backoff;
                    }
                    Some(st) => {
                        let tries = st.tries + 1;
                        r.stuck = Some(Stuck {
                            retry_at: now + backoff_secs(tries),
                            tries,
                            at_kib: row.view.actual_kib,
                            ..st
                        });
                        note(
                            &mut notes,
                            Level::Info,
                            format!(
                                "VM {name:?}: asking again for {} (try {tries}); its balloon stays at {}",
                                Kib(dec.target_kib),
                                Kib(row.view.actual_kib)
                            ),
                        );
                    }
                    None => {
                        r.stuck = Some(Stuck {
                            since: now,
                            at_kib: row.view.actual_kib,
                            retry_at: now + backoff_secs(1),
                            tries: 1,
                        });
                        dec.action = Action::Hold;
                        dec.reason = Reason::Backoff;
                        note(
                            &mut notes,
                            Level::Warn,
                            format!(
                                "VM {name:?}: its balloon stays at {}, {}s after ksm-balloon asked for {} (the guest cannot give the memory, or deflated on OOM); not asked again for the same before {}s",
                                Kib(row.view.actual_kib),
                                now.saturating_sub(r.last_change_at.unwrap_or(now)),
                                Kib(asked),
                                backoff_secs(1)
                            ),
                        );
                    }
                }
            }
            // A retry on its way, or a hold while short, is still the same
            // episode: only a balloon that got there, or a new target,
            // ends it (else the back-off would start over at every retry).
            _ if row.motion != Motion::Settled && !dec.resizes() => {}
            _ => {
                if r.stuck.take().is_some() && row.motion == Motion::Settled {
                    note(
                        &mut notes,
                        Level::Info,
                        format!(
                            "VM {name:?}: its balloon reached {}",
                            Kib(row.view.actual_kib)
                        ),
                    );
                }
            }
        }
        // A balloon short of a shrink its guest's own figures say it cannot
        // give: holding is not enough, the target asked stays in the guest
        // and its balloon driver goes on taking every page the guest frees.
        // Ask for what it can be at (above the reserve; below it the host
        // wins, and without figures there is no telling).
        // Only for a VM held in place by the policy: a skipped one (held by
        // hand, unsettled, opted out) is not ours to resize.
        if let Motion::Short(asked) = row.motion {
            if dec.action == Action::Hold
                && row.view.status == VmStatus::Managed
                && row.view.guest.is_some_and(|g| g.recall_ready())
                && !p.under_reserve
                && asked < row.view.actual_kib
                && dec.target_kib > asked.saturating_add(policy.deadband_kib.max(REACHED_KIB))
            {
                dec.action = Action::Grow;
                dec.reason = Reason::Kept;
                r.stuck = None;
                note(
                    &mut notes,
                    Level::Info,
                    format!(
                        "VM {name:?}: its balloon stays at {}, short of the {} asked, and its guest has nothing more to give: asking for {} instead",
                        Kib(row.view.actual_kib),
                        Kib(asked),
                        Kib(dec.target_kib)
                    ),
                );
            }
        }
        // Safe recall: say once per episode what a VM keeps.
        if dec.kept_kib > 0
            && r.kept_kib == 0
            && matches!(dec.reason, Reason::Awaiting | Reason::RecallStep)
        {
            note(
                &mut notes,
                Level::Info,
                format!(
                    "VM {name:?}: {} of its loan to give back, in recall steps, each once its guest's fresh figures allow it",
                    Kib(dec.kept_kib)
                ),
            );
        } else if dec.kept_kib > 0 && r.kept_kib == 0 {
            note(
                &mut notes,
                Level::Warn,
                format!(
                    "VM {name:?} keeps {} that the savings no longer cover: its applications hold it ({}); it gives it back as they free it",
                    Kib(dec.kept_kib),
                    match row.view.guest {
                        Some(g) => format!(
                            "MemAvailable {}, margin {}",
                            Kib(g.usable_kib),
                            Kib(g.margin_kib())
                        ),
                        None => format!(
                            "no fresh guest statistics: at most {} a pass",
                            Kib(policy.blind_step_kib.unwrap_or(0))
                        ),
                    }
                ),
            );
        } else if dec.kept_kib == 0 && r.kept_kib > 0 {
            note(
                &mut notes,
                Level::Info,
                format!("VM {name:?} keeps nothing the savings do not cover any more"),
            );
        }
        if dec.action != Action::Skip {
            r.kept_kib = dec.kept_kib;
        }
        if dec.squeezed_kib > 0 {
            squeezed.push(format!("{name:?} by {}", Kib(dec.squeezed_kib)));
        }
        if dec.resizes() {
            resizes.push(Resize {
                uuid: row.d.uuid.clone(),
                name: name.clone(),
                from_kib: row.view.actual_kib,
                to_kib: dec.target_kib,
                reason: dec.reason,
            });
        }
        // No fresh figures, not merely none at all: a guest without a
        // statistics period still sends one report when its balloon
        // driver starts, and its last-update then stays at that moment.
        let manages_periods =
            settings.guest_stats_period > 0 && row.view.status == VmStatus::Managed;
        // A recall (a shrink, a loan kept, figures awaited) asks the guest
        // for fresh figures: the short period until it is over.
        let shrinking = match row.motion {
            Motion::InFlight(t) | Motion::Short(t) => t < row.view.actual_kib,
            Motion::Settled => false,
        };
        let recalling = dec.action == Action::Shrink
            || dec.reason == Reason::Awaiting
            || dec.kept_kib > 0
            || shrinking;
        let kind = if !manages_periods {
            None
        } else if recalling && r.recall_stats_at.is_none() {
            Some(PeriodKind::Recall)
        } else if !recalling && r.recall_stats_at.is_some() {
            Some(PeriodKind::Restore)
        } else if !r.stats_period_set && !row.fresh {
            Some(PeriodKind::TurnOn)
        } else {
            None
        };
        if let Some(kind) = kind {
            stats_periods.push(StatsPeriod {
                uuid: row.d.uuid.clone(),
                name: name.clone(),
                seconds: match kind {
                    PeriodKind::Recall => RECALL_STATS_PERIOD_SECS,
                    PeriodKind::TurnOn | PeriodKind::Restore => settings.guest_stats_period,
                },
                kind,
            });
        }
        decided.push(dec);
    }
    if p.under_reserve {
        note(
            &mut notes,
            Level::Warn,
            format!(
                "host MemAvailable {} is under the reserve {} by {}: no VM grows, bonuses shrink by {}{}",
                Kib(obs.mem.available_kib),
                Kib(policy.reserve_kib),
                Kib(p.shortfall_kib),
                Kib(p.recalled_kib),
                if squeezed.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; squeezed into their applications' memory: {}",
                        squeezed.join(", ")
                    )
                }
            ),
        );
    }

    // The report: every active domain, managed or not (yet).
    let mut vms = Vec::with_capacity(obs.domains.len());
    let mut rows_iter = rows.iter().zip(&decided).peekable();
    for d in &obs.domains {
        let r = state.vms.get(&d.uuid);
        let managed_row = match rows_iter.peek() {
            Some((row, _)) if row.d.uuid == d.uuid => rows_iter.next(),
            _ => None,
        };
        let sizes = d.sizes;
        let current = sizes.map_or(0, |s| s.current_kib);
        let (view, dec, fresh, pending) = match managed_row {
            Some((row, dec)) => (
                Some(row.view),
                *dec,
                row.fresh,
                match row.motion {
                    Motion::InFlight(t) => Some(t),
                    _ => None,
                },
            ),
            None => {
                let reason = if r.is_some() {
                    Reason::Unreadable
                } else if !d.running {
                    Reason::NotRunning
                } else {
                    Reason::Adopting
                };
                (
                    None,
                    Decision {
                        target_kib: current,
                        action: Action::Skip,
                        reason,
                        kept_kib: 0,
                        squeezed_kib: 0,
                        givable_kib: 0,
                    },
                    guest_view(&d.guest, now).is_some(),
                    None,
                )
            }
        };
        let floor = view.map_or(r.map_or(current, |r| r.floor_kib), |v| v.floor_kib);
        vms.push(VmReport {
            name: d.name.clone(),
            uuid: d.uuid.clone(),
            managed: r.is_some(),
            floor_kib: floor,
            ceiling_kib: view.map_or(sizes.map_or(0, |s| s.maximum_kib), |v| v.ceiling_kib),
            current_kib: current,
            pending_kib: pending,
            target_kib: dec.target_kib,
            action: dec.action,
            reason: dec.reason,
            share_of_pool: if p.budget_kib > 0 && dec.action != Action::Skip {
                dec.target_kib.saturating_sub(floor) as f64 / p.budget_kib as f64
            } else {
                0.0
            },
            kept_kib: dec.kept_kib,
            squeezed_kib: dec.squeezed_kib,
            givable_kib: dec.givable_kib,
            guest: d.guest,
            guest_stats_fresh: fresh,
            figures_age_secs: view.and_then(|v| v.guest).map(|g| g.age_secs),
            figures_confirmed: view.and_then(|v| v.guest).map(|g| g.confirmed),
            autodeflate: r.map(|r| r.autodeflate),
            demand: view.and_then(|v| v.demand),
            ksm: parts.get(&d.uuid).copied(),
            contribution_share: match (&attribution, parts.get(&d.uuid)) {
                (Ok(a), Some(p)) if a.vms_kib > 0 => {
                    Some(p.attributed_kib.max(0) as f64 / a.vms_kib as f64)
                }
                _ => None,
            },
            ksm_problem: obs
                .procs
                .as_ref()
                .and_then(|p| p.vms.get(&d.uuid))
                .and_then(|r| r.as_ref().err().cloned()),
            stuck: r.and_then(|r| r.stuck),
            held_by_hand: r.and_then(|r| r.manual).and_then(|h| h.held),
            manage: r.map_or(true, |r| r.settings.manage),
            weight: r.map_or(crate::metadata::DEFAULT_WEIGHT, |r| r.settings.weight),
            source: r.map(|r| r.source),
            adopted: adopted.contains(&d.uuid),
            last_change_at: r.and_then(|r| r.last_change_at),
            error: None,
        });
    }
    let report = Report {
        at: now,
        dry_run: false,
        ksm: obs.ksm.clone(),
        metric: savings.metric,
        savings_kib: savings.kib,
        lendable_kib: lendable,
        policy_window_secs: settings.hold_window_secs,
        attribution: attribution.as_ref().ok().copied(),
        attribution_problem: if settings.split.needs_contribution() {
            attribution.as_ref().err().cloned()
        } else {
            None
        },
        pool_kib: p.pool_kib,
        budget_kib: p.budget_kib,
        host: obs.mem,
        reserve_kib: policy.reserve_kib,
        under_reserve: p.under_reserve,
        shortfall_kib: p.shortfall_kib,
        recalled_kib: p.recalled_kib,
        kept_kib: p.kept_kib,
        squeezed_kib: p.squeezed_kib,
        policy,
        vms,
        hook_records: 0,
        resized: 0,
        failed: 0,
        calls: Default::default(),
        counters: state.counters,
        state_problem: None,
    };
    Ok(Planned {
        state,
        report,
        resizes,
        stats_periods,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // the first reading gives no rate: unknown
        let (t, d) = track_io(None, Some(0), guest(4), 0);
        assert_eq!(d, None);
        // 100 MiB read in 10 s with 4 MiB free: 10 MiB/s
        let (t, d) = track_io(t, Some(100 << 20), guest(4), 10);
        assert_eq!(d, Some(10_000));
        // the same reads with 90 MiB free: cold reads, more memory would
        // not cut them; the demand only decays (60 s half-life)
        let (t2, d2) = track_io(t, Some(200 << 20), guest(90), 70);
        assert_eq!(d2, Some(5_000));
        // no fresh guest statistics: unknown, the track still moves on
        let (t3, d3) = track_io(t2, Some(300 << 20), None, 80);
        assert_eq!(d3, None);
        assert_eq!(t3.unwrap().rd_bytes, 300 << 20);
        // a VM restarted (counters went back): no rate this pass
        let (_, d4) = track_io(t3, Some(5), guest(4), 90);
        assert_eq!(d4, None);
        // no disk figures at all: unknown, the track kept
        assert_eq!(track_io(t, None, guest(4), 20), (t, None));
    }

    #[test]
    fn only_what_held_over_the_window_is_lent() {
        let mut seen = Vec::new();
        assert_eq!(hold(&mut seen, 100, 0, 60), 100);
        // a peak is not lent until it has lasted the window
        assert_eq!(hold(&mut seen, 180, 10, 60), 100);
        assert_eq!(hold(&mut seen, 180, 50, 60), 100);
        assert_eq!(hold(&mut seen, 180, 60, 60), 180);
        // a fall is followed at once
        assert_eq!(hold(&mut seen, 90, 70, 60), 90);
        // window 0: the savings of the moment (the paper)
        assert_eq!(hold(&mut seen, 500, 80, 0), 500);
        assert!(seen.is_empty());
    }
}
