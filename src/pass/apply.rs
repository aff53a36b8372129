//! Step 3 of a pass: the libvirt writes the plan asks for (resizes, and a
//! guest statistics period where one is missing), then [`record`] of what
//! happened into the state (the report takes it from [`Recorded`]). A VM that vanished or refuses
//! is logged and skipped, never fatal to the others; a lost connection
//! stops the writes, and what was done before it is still recorded.

use log::{error, info, warn};

use crate::errors::chain;
use crate::hypervisor::{HvError, Hypervisor};
use crate::state::{LastPass, State};
use crate::units::{Kib, KibDelta};

use super::asks::{PeriodKind, Resize};
use super::plan::Planned;
use super::report::Report;

/// What the writes did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Per resize of the plan, in its order: `Ok` or the error's text.
    /// Shorter than the plan's list when a fatal error stopped the writes.
    pub resizes: Vec<Result<(), String>>,
    /// Per statistics period of the plan, likewise.
    pub stats_periods: Vec<Result<(), String>>,
    /// The error that stopped the writes (the connection is gone).
    pub fatal: Option<HvError>,
    /// The domains a call timed out on (their QEMU does not answer): no
    /// further call on them this pass.
    pub timed_out: std::collections::BTreeSet<String>,
}

/// Makes the writes `planned` asks for.
pub fn apply(hv: &mut dyn Hypervisor, planned: &Planned) -> Applied {
    let mut out = Applied::default();
    let r = &planned.report;
    for z in &planned.resizes {
        if out.timed_out.contains(&z.uuid) {
            out.resizes
                .push(Err("an earlier call on it timed out this pass".into()));
            continue;
        }
        match hv.set_memory(&z.uuid, z.to_kib) {
            Ok(()) => {
                info!(
                    "VM {:?}: {} -> {} ({}; {}): {} savings, {} handed out over {} VMs",
                    z.name,
                    Kib(z.from_kib),
                    Kib(z.to_kib),
                    KibDelta(z.to_kib as i64 - z.from_kib as i64),
                    z.reason,
                    Kib(r.savings_kib),
                    Kib(r.budget_kib),
                    r.vms.iter().filter(|v| v.managed).count()
                );
                out.resizes.push(Ok(()));
            }
            Err(e) if e.is_fatal() => {
                out.fatal = Some(e);
                return out;
            }
            Err(e @ HvError::Unresponsive { .. }) => {
                warn!(
                    "VM {:?}: resize to {} abandoned: {}; the others go on (it may still reach that size once its QEMU answers)",
                    z.name,
                    Kib(z.to_kib),
                    chain(&e)
                );
                out.timed_out.insert(z.uuid.clone());
                out.resizes.push(Err(chain(&e)));
            }
            Err(e) => {
                warn!(
                    "VM {:?}: resize to {} skipped: {}",
                    z.name,
                    Kib(z.to_kib),
                    chain(&e)
                );
                out.resizes.push(Err(chain(&e)));
            }
        }
    }
    for s in &planned.stats_periods {
        if out.timed_out.contains(&s.uuid) {
            out.stats_periods
                .push(Err("an earlier call on it timed out this pass".into()));
            continue;
        }
        match hv.set_stats_period(&s.uuid, s.seconds) {
            Ok(()) => {
                match s.kind {
                    PeriodKind::TurnOn => info!(
                        "VM {:?}: turned its guest's memory statistics on (every {} s, live only): the loan rule needs them",
                        s.name, s.seconds
                    ),
                    PeriodKind::Recall => info!(
                        "VM {:?}: recalling its loan: its guest reports every {} s until the recall is over (each step waits for its fresh figures)",
                        s.name, s.seconds
                    ),
                    PeriodKind::Restore => info!(
                        "VM {:?}: recall over: its guest reports every {} s again",
                        s.name, s.seconds
                    ),
                }
                out.stats_periods.push(Ok(()));
            }
            Err(e) if e.is_fatal() => {
                out.fatal = Some(e);
                return out;
            }
            Err(e @ HvError::Unresponsive { .. }) => {
                warn!(
                    "VM {:?}: setting its guest's statistics period abandoned: {}",
                    s.name,
                    chain(&e)
                );
                out.timed_out.insert(s.uuid.clone());
                out.stats_periods.push(Err(chain(&e)));
            }
            Err(e) => {
                warn!(
                    "VM {:?}: cannot turn its guest's memory statistics on: {}; it is treated as a guest without statistics",
                    s.name,
                    chain(&e)
                );
                out.stats_periods.push(Err(chain(&e)));
            }
        }
    }
    out
}

/// Writes the KSM knobs the governor decided (`--ksm manage`, or the
/// restore of `observe`), after the balloons; each write's error is kept
/// in the report and logged, never fatal to the pass, and the governor's
/// memory records the knob as it was left. A restore forgets the memory
/// once every write succeeded, and keeps it otherwise
/// ([`crate::governor::after_give_back`]): the next pass tries again.
pub fn write_knobs(ksm_dir: &std::path::Path, planned: &mut Planned) {
    let g = &mut planned.report.ksm_governor;
    crate::governor::write_all(ksm_dir, &mut g.writes, &g.reason);
    let memory = planned.state.ksm_governor.take();
    planned.state.ksm_governor = match (g.action, &g.found) {
        (crate::governor::Action::Restore, Some(found)) => {
            memory.and_then(|m| crate::governor::after_give_back(m, found, &g.writes))
        }
        _ => crate::governor::after_writes(memory, &g.writes),
    };
}

/// Writes what `applied` did into the plan's state: each resize made is
/// the VM's last ask (target, time, the size it was asked from), and so
/// is one that timed out (libvirt may still make it once the QEMU
/// answers); each statistics period set is not asked again; a VM a call
/// timed out on does not answer since now (unless it already did not); the
/// pass's figures go into `last_pass`. Returns the state, the plan's
/// report, each resize's result by UUID, in the plan's order, and the VMs
/// that timed out (for [`Report::finish`]).
pub fn record(planned: Planned, applied: &Applied, now: u64) -> Recorded {
    let Planned {
        mut state,
        report,
        resizes,
        stats_periods,
        ..
    } = planned;
    let mut results = Vec::with_capacity(applied.resizes.len());
    let (mut resized, mut failed) = (0u32, 0u32);
    for (z, result) in resizes.iter().zip(&applied.resizes) {
        if result.is_err() {
            failed += 1;
        } else {
            resized += 1;
        }
        results.push((z.uuid.clone(), result.clone()));
        // A resize that timed out was sent, and libvirt may still make it
        // once the QEMU answers: it counts as asked (a balloon that gets
        // there later is ours, not an operator's).
        if result.is_ok() || applied.timed_out.contains(&z.uuid) {
            if let Some(r) = state.vms.get_mut(&z.uuid) {
                r.last_target_kib = Some(z.to_kib);
                r.last_change_at = Some(now);
                r.asked_from_kib = Some(z.from_kib);
                if let Some(h) = r.manual.as_mut() {
                    h.asked(now, z.to_kib, z.from_kib);
                }
            }
        }
    }
    for (s, result) in stats_periods.iter().zip(&applied.stats_periods) {
        if result.is_err() && applied.timed_out.contains(&s.uuid) {
            // Not the guest's refusal: its QEMU did not answer; asked
            // again once it does.
            continue;
        }
        // Recorded whether it worked or not, so it is not asked again
        // every pass: a guest whose period cannot be set is treated as one
        // without statistics (turned on), or answers at its own period
        // (a recall: its next report after this pass still confirms).
        if let Some(r) = state.vms.get_mut(&s.uuid) {
            match s.kind {
                PeriodKind::TurnOn => r.stats_period_set = true,
                PeriodKind::Recall => {
                    r.stats_period_set = true;
                    r.recall_stats_at = Some(now);
                }
                PeriodKind::Restore => r.recall_stats_at = None,
            }
        }
    }
    if failed > 0 {
        error!(
            "{} of {} resizes failed this pass",
            failed,
            failed + resized
        );
    }
    // A VM a call timed out on does not answer, since now unless it
    // already did not (reconcile clears it once its QEMU answers).
    let mut unresponsive = Vec::with_capacity(applied.timed_out.len());
    for uuid in &applied.timed_out {
        if let Some(r) = state.vms.get_mut(uuid) {
            unresponsive.push((uuid.clone(), *r.unresponsive_since.get_or_insert(now)));
        }
    }
    state.counters.resizes += u64::from(resized);
    state.counters.resize_failures += u64::from(failed);
    if applied.fatal.is_none() {
        state.counters.last_success_at = Some(now);
    }
    state.last_pass = Some(LastPass {
        at: now,
        metric: report.metric.to_string(),
        savings_kib: report.savings_kib,
        pool_kib: report.pool_kib,
        budget_kib: report.budget_kib,
        available_kib: report.host.available_kib,
        resized,
        failed,
    });
    Recorded {
        state,
        report,
        resizes: results,
        unresponsive,
    }
}

/// What [`record`] leaves.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The state, with what the pass did.
    pub state: State,
    /// The plan's report (what the pass did is added by [`Report::finish`]).
    pub report: Report,
    /// Each resize tried, by UUID, in the plan's order.
    pub resizes: Vec<(String, Result<(), String>)>,
    /// The VMs a call timed out on this pass, by UUID, and since when they
    /// do not answer.
    pub unresponsive: Vec<(String, u64)>,
}

// Record before asking (issue 18). Kept apart from `record`: a pass killed
// between a resize and the save at its end (the unit's timeout, an OOM
// kill, a full disk) must leave a state that tells its own asks from an
// operator's, so each ask is in the saved state before it is made.

/// What a VM's record said of its last ask before [`intend`] wrote this
/// pass's into it: put back by [`withdraw`] when the resize surely was not
/// made.
#[derive(Clone, Debug)]
pub struct Prior {
    uuid: String,
    last_target_kib: Option<u64>,
    last_change_at: Option<u64>,
    asked_from_kib: Option<u64>,
    manual: Option<crate::manual::History>,
}

/// Writes every resize of the plan into `state` as asked at `now`, as
/// [`record`] does for a resize made: the VM's last target, when, from
/// what size, and the manual-change detector's ask. The caller saves the
/// state before making any of them. Returns what each record said before,
/// in the plan's order.
pub fn intend(state: &mut State, resizes: &[Resize], now: u64) -> Vec<Prior> {
    let mut priors = Vec::with_capacity(resizes.len());
    for z in resizes {
        let Some(r) = state.vms.get_mut(&z.uuid) else {
            // Never so (a resize is planned for a record only); kept in
            // step with the plan's list all the same.
            priors.push(Prior {
                uuid: z.uuid.clone(),
                last_target_kib: None,
                last_change_at: None,
                asked_from_kib: None,
                manual: None,
            });
            continue;
        };
        priors.push(Prior {
            uuid: z.uuid.clone(),
            last_target_kib: r.last_target_kib,
            last_change_at: r.last_change_at,
            asked_from_kib: r.asked_from_kib,
            manual: r.manual,
        });
        r.last_target_kib = Some(z.to_kib);
        r.last_change_at = Some(now);
        r.asked_from_kib = Some(z.from_kib);
        if let Some(h) = r.manual.as_mut() {
            h.asked(now, z.to_kib, z.from_kib);
        }
    }
    priors
}

/// Puts back what [`intend`] wrote for each resize that surely was not
/// made: one libvirt refused (the VM vanished, its balloon driver is not
/// loaded), and those a lost connection stopped before they were tried.
/// The one the connection was lost on keeps its intent: libvirt may have
/// made it, and a balloon at either size is then on the path from where it
/// was asked to what was asked, never "set by someone else"; one that did
/// not move is short of its target, and the usual back-off applies.
pub fn withdraw(state: &mut State, priors: Vec<Prior>, applied: &Applied) {
    let uncertain = applied.fatal.is_some().then_some(applied.resizes.len());
    for (i, p) in priors.into_iter().enumerate() {
        let made_or_maybe = match applied.resizes.get(i) {
            // A resize that timed out may still be made once its QEMU
            // answers: its intent stays.
            Some(result) => result.is_ok() || applied.timed_out.contains(&p.uuid),
            None => Some(i) == uncertain,
        };
        if made_or_maybe {
            continue;
        }
        if let Some(r) = state.vms.get_mut(&p.uuid) {
            r.last_target_kib = p.last_target_kib;
            r.last_change_at = p.last_change_at;
            r.asked_from_kib = p.asked_from_kib;
            r.manual = p.manual;
        }
    }
}
