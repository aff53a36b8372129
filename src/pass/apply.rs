//! Step 3 of a pass: the libvirt writes the plan asks for (resizes, and a
//! guest statistics period where one is missing), then [`record`] of what
//! happened into the state and the report. A VM that vanished or refuses
//! is logged and skipped, never fatal to the others; a lost connection
//! stops the writes, and what was done before it is still recorded.

use log::{error, info, warn};

use crate::errors::chain;
use crate::hypervisor::{HvError, Hypervisor};
use crate::state::{LastPass, State};
use crate::units::{Kib, KibDelta};

use super::plan::Planned;
use super::Report;

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
                info!(
                    "VM {:?}: turned its guest's memory statistics on (every {} s, live only): the loan rule needs them",
                    s.name, s.seconds
                );
                out.stats_periods.push(Ok(()));
            }
            Err(e) if e.is_fatal() => {
                out.fatal = Some(e);
                return out;
            }
            Err(e @ HvError::Unresponsive { .. }) => {
                warn!(
                    "VM {:?}: turning its guest's memory statistics on abandoned: {}",
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

/// Writes what `applied` did into the plan's state and report: each
/// resize made is the VM's last ask (target, time, the size it was asked
/// from); each statistics period set is not asked again; the pass's
/// figures go into `last_pass`.
pub fn record(planned: Planned, applied: &Applied, now: u64) -> (State, Report) {
    let Planned {
        mut state,
        mut report,
        resizes,
        stats_periods,
        ..
    } = planned;
    for (z, result) in resizes.iter().zip(&applied.resizes) {
        if result.is_err() && applied.timed_out.contains(&z.uuid) {
            // A resize that timed out was sent, and libvirt may still make
            // it once the QEMU answers: it counts as asked (a balloon that
            // gets there later is ours, not an operator's), and the VM as
            // one that does not answer, since now.
            if let Some(r) = state.vms.get_mut(&z.uuid) {
                r.last_target_kib = Some(z.to_kib);
                r.last_change_at = Some(now);
                r.asked_from_kib = Some(z.from_kib);
                if let Some(h) = r.manual.as_mut() {
                    h.asked(now, z.to_kib, z.from_kib);
                }
                let since = *r.unresponsive_since.get_or_insert(now);
                if let Some(v) = report.vms.iter_mut().find(|v| v.uuid == z.uuid) {
                    v.unresponsive_since = Some(since);
                    v.last_change_at = Some(now);
                }
            }
        }
        let vm = report.vms.iter_mut().find(|v| v.uuid == z.uuid);
        match result {
            Ok(()) => {
                report.resized += 1;
                if let Some(r) = state.vms.get_mut(&z.uuid) {
                    r.last_target_kib = Some(z.to_kib);
                    r.last_change_at = Some(now);
                    r.asked_from_kib = Some(z.from_kib);
                    if let Some(h) = r.manual.as_mut() {
                        h.asked(now, z.to_kib, z.from_kib);
                    }
                }
                if let Some(v) = vm {
                    v.last_change_at = Some(now);
                }
            }
            Err(e) => {
                report.failed += 1;
                if let Some(v) = vm {
                    v.error = Some(e.clone());
                }
            }
        }
    }
    for (s, result) in stats_periods.iter().zip(&applied.stats_periods) {
        if let (Ok(()), Some(r)) = (result, state.vms.get_mut(&s.uuid)) {
            r.stats_period_set = true;
        }
        if result.is_err() && applied.timed_out.contains(&s.uuid) {
            // Not the guest's refusal: asked again once it answers.
            if let Some(r) = state.vms.get_mut(&s.uuid) {
                r.unresponsive_since.get_or_insert(now);
            }
        } else if result.is_err() {
            // Not asked again every pass: the guest is treated as one
            // without statistics until it restarts.
            if let Some(r) = state.vms.get_mut(&s.uuid) {
                r.stats_period_set = true;
            }
        }
    }
    if report.failed > 0 {
        error!(
            "{} of {} resizes failed this pass",
            report.failed,
            report.failed + report.resized
        );
    }
    state.counters.resizes += u64::from(report.resized);
    state.counters.resize_failures += u64::from(report.failed);
    if applied.fatal.is_none() {
        state.counters.last_success_at = Some(now);
    }
    report.counters = state.counters;
    state.last_pass = Some(LastPass {
        at: now,
        metric: report.metric.to_string(),
        savings_kib: report.savings_kib,
        pool_kib: report.pool_kib,
        budget_kib: report.budget_kib,
        available_kib: report.host.available_kib,
        resized: report.resized,
        failed: report.failed,
    });
    (state, report)
}
