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

use std::path::Path;

use log::Level;

use crate::domxml::DomainXml;
use crate::hypervisor::{GuestStats, LiveDomain};
use crate::ksm::KsmError;
use crate::policy::{self, Action, Decision, GuestView, HostView, Reason, VmStatus, VmView};
use crate::state::{Candidate, Source, State, Stuck, VmRecord};
use crate::units::Kib;

use super::observe::Observation;
use super::{Report, Settings, VmReport};

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

/// A guest whose statistics the pass turns on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsPeriod {
    /// The domain's UUID.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// The period, seconds.
    pub seconds: u32,
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

/// The guest's figures for the policy, when they are complete and fresh.
pub fn guest_view(g: &GuestStats, now: u64) -> Option<GuestView> {
    let fresh = g
        .last_update
        .is_some_and(|t| t > 0 && now.saturating_sub(t) <= STATS_FRESH_SECS);
    match (fresh, g.usable_kib, g.unused_kib, g.available_kib) {
        (true, Some(usable_kib), Some(unused_kib), Some(total_kib)) => Some(GuestView {
            usable_kib,
            unused_kib,
            total_kib,
        }),
        _ => None,
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
        note(
            notes,
            Level::Info,
            format!(
                "adopted VM {:?} (no hook recorded it; installed while it ran?): floor {}, ceiling {}{}",
                d.name,
                Kib(floor),
                Kib(ceiling),
                if balloon { "" } else { ", no balloon device" }
            ),
        );
        state.vms.insert(
            d.uuid.clone(),
            VmRecord::new(
                d.name.clone(),
                d.uuid.clone(),
                floor,
                ceiling,
                balloon,
                Source::Adopted,
                now,
            ),
        );
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

    // The VMs the policy sees, in the order of the domains.
    let mut rows: Vec<Row> = Vec::new();
    for d in &obs.domains {
        let (Some(r), Some(s)) = (state.vms.get(&d.uuid), d.sizes) else {
            continue;
        };
        let actual = s.current_kib;
        let motion = motion(r, actual, now);
        let current = match motion {
            Motion::InFlight(t) => t,
            Motion::Settled | Motion::Short(_) => actual,
        };
        let guest = guest_view(&d.guest, now);
        rows.push(Row {
            d,
            view: VmView {
                floor_kib: r.floor_kib,
                ceiling_kib: r.ceiling_kib.min(s.maximum_kib),
                current_kib: current,
                actual_kib: actual,
                guest,
                status: if !r.balloon {
                    VmStatus::NoBalloon
                } else if !d.running {
                    VmStatus::NotRunning
                } else {
                    VmStatus::Managed
                },
            },
            motion,
            fresh: guest.is_some(),
        });
    }
    let views: Vec<VmView> = rows.iter().map(|r| r.view).collect();
    let host = HostView {
        savings_kib: savings.kib,
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
                    && dec.target_kib.abs_diff(asked) <= policy.deadband_kib.max(REACHED_KIB) =>
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
        // Safe recall: say once per episode what a VM keeps.
        if dec.kept_kib > 0 && r.kept_kib == 0 {
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
        let wants_stats = settings.guest_stats_period > 0
            && row.view.status == VmStatus::Managed
            && !r.stats_period_set
            && row.d.guest.last_update.is_none();
        if wants_stats {
            stats_periods.push(StatsPeriod {
                uuid: row.d.uuid.clone(),
                name: name.clone(),
                seconds: settings.guest_stats_period,
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
            stuck: r.and_then(|r| r.stuck),
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
