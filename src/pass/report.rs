//! The report: the machine-readable record of what a pass saw and did
//! (`run --json`, `plan --json`, `status --json`), a pass's figures and
//! one [`VmReport`] per active domain. Every test and benchmark reads what
//! a pass did from it, never from the log. It is made here and nowhere
//! else: [`build`] from what the plan's stages worked out, then
//! [`Report::finish`] with what the pass did ([`Outcome`]: the resizes'
//! results, the libvirt calls, the hook records folded, the counters).
//!
//! Which stage decides each field of a [`VmReport`]:
//!
//! | fields | stage |
//! | --- | --- |
//! | `name`, `uuid`, `current_kib`, `guest` | [`super::observe`] |
//! | `managed`, `adopted`, `source`, `manage`, `weight`, `autodeflate`, and `floor_kib` of a VM not managed | [`super::reconcile`] (the record) |
//! | `ksm`, `contribution_share`, `ksm_problem` | [`super::lend`] |
//! | `floor_kib`, `ceiling_kib`, `pending_kib`, `guest_stats_fresh`, `figures_age_secs`, `figures_confirmed`, `demand`, `demand_basis`, `held_by_hand` | [`super::rows`] |
//! | `target_kib`, `action`, `reason`, `kept_kib`, `squeezed_kib`, `givable_kib`, `share_of_pool` | [`crate::policy::plan`], then [`super::adjust`] |
//! | `stuck` | [`super::adjust`] (the back-off) |
//! | `unresponsive` | [`super::observe`] (a call on its QEMU timed out) |
//! | `unresponsive_since` | [`super::reconcile`] (the record), then [`super::apply`] for a resize that timed out |
//! | `last_change_at`, `error` | [`super::apply`] (what the resize did, through [`Outcome`]) |
//!
//! The pass's `clock_step_secs` is [`super::clock`]'s, found as the state is loaded.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::hypervisor::{CallCount, GuestStats, LiveDomain};
use crate::ksm::{KsmCounters, Metric};
use crate::ksmcost::KsmCost;
use crate::meminfo::MemInfo;
use crate::policy::{self, Action, Decision, Policy, Reason};
use crate::state::{Source, State, Stuck};

use super::lend::Lending;
pub use super::lend::{AttributionReport, VmKsm};
use super::observe::Observation;
use super::rows::{DemandBasis, Motion, Row};
use super::settings::Settings;

/// One active domain in a report.
#[derive(Clone, Debug, Serialize)]
pub struct VmReport {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Managed (recorded), as opposed to waiting to be adopted.
    pub managed: bool,
    /// Floor, KiB.
    pub floor_kib: u64,
    /// Ceiling, KiB (the smaller of the recorded and the live maximum).
    pub ceiling_kib: u64,
    /// Balloon size before this pass, KiB.
    pub current_kib: u64,
    /// A target an earlier pass asked for that the balloon is still on its
    /// way to, KiB.
    pub pending_kib: Option<u64>,
    /// The policy's target, KiB.
    pub target_kib: u64,
    /// What the pass does (or would do).
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// Its bonus (target above floor) as a fraction of what is handed out.
    pub share_of_pool: f64,
    /// What it keeps that the savings no longer cover (its applications
    /// hold it), KiB.
    pub kept_kib: u64,
    /// What the host guard takes from its applications' memory, KiB.
    pub squeezed_kib: u64,
    /// What it could give back without harm, KiB.
    pub givable_kib: u64,
    /// Its guest's own figures, as the bulk call reported them.
    pub guest: GuestStats,
    /// Those figures are recent enough to go by.
    pub guest_stats_fresh: bool,
    /// How old the figures the decision used were, seconds (`None`: no
    /// fresh figures; a recall step above the reserve waits for figures
    /// at most [`crate::policy::RECALL_FRESH_SECS`] old).
    pub figures_age_secs: Option<u64>,
    /// Those figures answer every ask: reported after the last shrink
    /// landed and after the pass asked for fresh ones (`None`: no fresh
    /// figures).
    pub figures_confirmed: Option<bool>,
    /// Its balloon deflates on guest OOM (`<memballoon autodeflate='on'>`):
    /// the guest's own net against a recall it cannot pay (`None`: not
    /// known, a VM not recorded yet).
    pub autodeflate: Option<bool>,
    /// Its balloon does not reach the last target (back-off).
    pub stuck: Option<Stuck>,
    /// Its balloon was set by someone else and is left alone since then.
    pub held_by_hand: Option<crate::manual::Held>,
    /// Its metadata's `manage` (false: never resized).
    pub manage: bool,
    /// Its weight in the split (its metadata's).
    pub weight: u32,
    /// Its I/O demand (demand splits): thousandths of a MiB/s of disk
    /// reads while its memory was full, smoothed; `None` when unknown
    /// (it then weighs as an idle VM).
    pub demand: Option<u64>,
    /// What its demand rests on (demand splits; absent otherwise):
    /// `reads`, `free-memory`, or why it is unknown: `no-statistics`,
    /// `no-disk-figures`, `first-reading`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demand_basis: Option<DemandBasis>,
    /// Its own KSM figures (contribution splits).
    pub ksm: Option<VmKsm>,
    /// Its part of the VMs' savings, 0 to 1 (contribution splits).
    pub contribution_share: Option<f64>,
    /// Why its own KSM figures could not be had (contribution splits).
    pub ksm_problem: Option<String>,
    /// How it came to be managed.
    pub source: Option<Source>,
    /// Adopted by this pass (no hook had recorded it).
    pub adopted: bool,
    /// When its balloon was last set by ksm-balloon (seconds since the epoch).
    pub last_change_at: Option<u64>,
    /// The error that made the resize fail, if it did.
    pub error: Option<String>,
    /// Why its QEMU is taken not to answer this pass (a call on it did not
    /// come back in time): it is left alone, its record kept. Absent from
    /// the JSON while it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresponsive: Option<String>,
    /// Since when it does not answer (seconds since the epoch). Absent from
    /// the JSON while it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresponsive_since: Option<u64>,
}

/// What a pass saw and did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When (seconds since the epoch).
    pub at: u64,
    /// How far the wall clock stepped since the last pass, seconds
    /// (negative: back), when it stepped by more than
    /// [`crate::state::CLOCK_STEP_TOLERANCE_SECS`] within this boot (the
    /// times in the state were moved by it: [`super::clock`]); absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_step_secs: Option<i64>,
    /// Nothing was applied.
    pub dry_run: bool,
    /// The KSM counters.
    pub ksm: KsmCounters,
    /// What KSM's scanning cost since the last pass (ksmd's CPU), and what
    /// it bought: the savings and what of them is lent.
    pub ksm_cost: KsmCost,
    /// The KSM governor (`--ksm`): what it did with KSM's knobs this pass,
    /// and why.
    pub ksm_governor: crate::governor::Decision,
    /// The metric used.
    pub metric: Metric,
    /// The savings, KiB.
    pub savings_kib: u64,
    /// What the pool is taken from, KiB: the savings that held over the
    /// holding window (for the contribution splits, the VMs' part of them).
    pub lendable_kib: u64,
    /// Whose savings (contribution splits).
    pub attribution: Option<AttributionReport>,
    /// Why there is no attribution this pass (contribution splits).
    pub attribution_problem: Option<String>,
    /// The holding window, seconds.
    pub policy_window_secs: u64,
    /// Savings × share, KiB.
    pub pool_kib: u64,
    /// What was handed out after the host guard, KiB.
    pub budget_kib: u64,
    /// The host.
    pub host: MemInfo,
    /// The reserve, KiB.
    pub reserve_kib: u64,
    /// The host is under its reserve.
    pub under_reserve: bool,
    /// How far under, KiB.
    pub shortfall_kib: u64,
    /// What the bonuses shrink by this pass, KiB.
    pub recalled_kib: u64,
    /// What VMs keep that the savings no longer cover, KiB.
    pub kept_kib: u64,
    /// What the guard takes from applications' memory, KiB.
    pub squeezed_kib: u64,
    /// The policy used.
    pub policy: Policy,
    /// Every active domain.
    pub vms: Vec<VmReport>,
    /// Hook records folded into the state by this pass.
    pub hook_records: usize,
    /// Resize calls that succeeded.
    pub resized: u32,
    /// Resize calls that failed (VM vanished or refused).
    pub failed: u32,
    /// libvirt calls made.
    pub calls: CallCount,
    /// Counters across passes, as this pass leaves them.
    pub counters: crate::metrics::Counters,
    /// A problem with the state file, if there was one.
    pub state_problem: Option<String>,
}

/// What the plan's stages worked out, as the report needs it.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The pass's settings.
    pub settings: &'a Settings,
    /// What was observed.
    pub obs: &'a Observation,
    /// The state after the plan's stages.
    pub state: &'a State,
    /// What is lent, and whose savings it is.
    pub lending: &'a Lending,
    /// The policy's settings.
    pub policy: &'a Policy,
    /// The policy's figures for the pass.
    pub plan: &'a policy::Plan,
    /// The managed VMs, in the order of the domains.
    pub rows: &'a [Row<'a>],
    /// Their decisions after the adjustments, in the same order.
    pub decided: &'a [Decision],
    /// The UUIDs adopted by this pass.
    pub adopted: &'a [String],
    /// What KSM cost ([`super::plan`] works it out once the bonuses are
    /// decided).
    pub ksm_cost: &'a KsmCost,
    /// The KSM governor's decision.
    pub ksm_governor: &'a crate::governor::Decision,
}

/// The report of the plan: every active domain, managed or not (yet). What
/// the pass then does (`resized`, `failed`, a VM's `error` and
/// `last_change_at`, the calls, the counters) is added by
/// [`Report::finish`].
pub fn build(i: &Inputs) -> Report {
    let (obs, p, lending) = (i.obs, i.plan, i.lending);
    let mut vms = Vec::with_capacity(obs.domains.len());
    let mut rows_iter = i.rows.iter().zip(i.decided).peekable();
    for d in &obs.domains {
        let managed_row = match rows_iter.peek() {
            Some((row, _)) if row.d.uuid == d.uuid => rows_iter.next(),
            _ => None,
        };
        vms.push(vm_report(i, d, managed_row));
    }
    Report {
        at: obs.at,
        clock_step_secs: obs.clock_step_secs,
        dry_run: false,
        ksm: obs.ksm.clone(),
        ksm_cost: i.ksm_cost.clone(),
        ksm_governor: i.ksm_governor.clone(),
        metric: lending.savings.metric,
        savings_kib: lending.savings.kib,
        lendable_kib: lending.lendable_kib,
        policy_window_secs: i.settings.hold_window_secs,
        attribution: lending.attribution.as_ref().ok().copied(),
        attribution_problem: if i.settings.policy.split.inputs().contribution {
            lending.attribution.as_ref().err().cloned()
        } else {
            None
        },
        pool_kib: p.pool_kib,
        budget_kib: p.budget_kib,
        host: obs.mem,
        reserve_kib: i.policy.reserve_kib,
        under_reserve: p.under_reserve,
        shortfall_kib: p.shortfall_kib,
        recalled_kib: p.recalled_kib,
        kept_kib: p.kept_kib,
        squeezed_kib: p.squeezed_kib,
        policy: i.policy.clone(),
        vms,
        hook_records: 0,
        resized: 0,
        failed: 0,
        calls: Default::default(),
        counters: i.state.counters,
        state_problem: None,
    }
}

/// The decision shown for a domain the policy did not see: why it is left
/// alone.
fn left_alone(d: &LiveDomain, recorded: bool) -> Decision {
    let reason = if d.unresponsive.is_some() {
        Reason::Unresponsive
    } else if recorded {
        Reason::Unreadable
    } else if !d.running {
        Reason::NotRunning
    } else {
        Reason::Adopting
    };
    Decision {
        target_kib: d.sizes.map_or(0, |s| s.current_kib),
        action: Action::Skip,
        reason,
        kept_kib: 0,
        squeezed_kib: 0,
        givable_kib: 0,
    }
}

/// One domain's report; `managed_row` is its row and decision when the
/// policy saw it.
fn vm_report(i: &Inputs, d: &LiveDomain, managed_row: Option<(&Row, &Decision)>) -> VmReport {
    let r = i.state.vms.get(&d.uuid);
    let parts: &BTreeMap<String, VmKsm> = &i.lending.parts;
    let sizes = d.sizes;
    let current = sizes.map_or(0, |s| s.current_kib);
    let (view, dec, fresh, pending, demand_basis) = match managed_row {
        Some((row, dec)) => (
            Some(row.view),
            *dec,
            row.fresh,
            match row.motion {
                Motion::InFlight(t) => Some(t),
                _ => None,
            },
            row.demand_basis,
        ),
        None => (
            None,
            left_alone(d, r.is_some()),
            super::rows::fresh_on(i.obs, d),
            None,
            None,
        ),
    };
    let floor = view.map_or(r.map_or(current, |r| r.floor_kib), |v| v.floor_kib);
    let budget_kib = i.plan.budget_kib;
    VmReport {
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
        share_of_pool: if budget_kib > 0 && dec.action != Action::Skip {
            dec.target_kib.saturating_sub(floor) as f64 / budget_kib as f64
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
        demand_basis,
        ksm: parts.get(&d.uuid).copied(),
        contribution_share: match (&i.lending.attribution, parts.get(&d.uuid)) {
            (Ok(a), Some(p)) if a.vms_kib > 0 => {
                Some(p.attributed_kib.max(0) as f64 / a.vms_kib as f64)
            }
            _ => None,
        },
        ksm_problem: i
            .obs
            .procs
            .as_ref()
            .and_then(|p| p.vms.get(&d.uuid))
            .and_then(|r| r.as_ref().err().cloned()),
        stuck: r.and_then(|r| r.stuck),
        held_by_hand: r.and_then(|r| r.manual).and_then(|h| h.held),
        manage: r.map_or(true, |r| r.settings.manage),
        weight: r.map_or(crate::metadata::DEFAULT_WEIGHT, |r| r.settings.weight),
        source: r.map(|r| r.source),
        adopted: i.adopted.contains(&d.uuid),
        last_change_at: r.and_then(|r| r.last_change_at),
        error: None,
        unresponsive: d.unresponsive.clone(),
        unresponsive_since: r.and_then(|r| r.unresponsive_since),
    }
}

/// What the pass did with its plan, for [`Report::finish`].
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Nothing was applied (`plan`, `status`, `run --dry-run`).
    pub dry_run: bool,
    /// Each resize tried, in the plan's order: the domain's UUID and `Ok`
    /// or the error's text.
    pub resizes: Vec<(String, Result<(), String>)>,
    /// When the resizes were made (seconds since the epoch).
    pub at: u64,
    /// libvirt calls made.
    pub calls: CallCount,
    /// Hook records folded into the state by this pass.
    pub hook_records: usize,
    /// Counters across passes, as this pass leaves them.
    pub counters: crate::metrics::Counters,
    /// A problem with the state file, if there was one.
    pub state_problem: Option<String>,
    /// The VMs a call timed out on this pass, by UUID, and since when they
    /// do not answer (a resize that timed out counts as asked at `at`).
    pub unresponsive: Vec<(String, u64)>,
}

impl Report {
    /// The report of the plan with what the pass did.
    pub fn finish(mut self, outcome: Outcome) -> Report {
        for (uuid, result) in &outcome.resizes {
            let vm = self.vms.iter_mut().find(|v| &v.uuid == uuid);
            match result {
                Ok(()) => {
                    self.resized += 1;
                    if let Some(v) = vm {
                        v.last_change_at = Some(outcome.at);
                    }
                }
                Err(e) => {
                    self.failed += 1;
                    if let Some(v) = vm {
                        v.error = Some(e.clone());
                        if outcome.unresponsive.iter().any(|(u, _)| u == uuid) {
                            v.last_change_at = Some(outcome.at);
                        }
                    }
                }
            }
        }
        for (uuid, since) in &outcome.unresponsive {
            if let Some(v) = self.vms.iter_mut().find(|v| &v.uuid == uuid) {
                v.unresponsive_since = Some(*since);
            }
        }
        self.dry_run = outcome.dry_run;
        self.calls = outcome.calls;
        self.hook_records = outcome.hook_records;
        self.counters = outcome.counters;
        self.state_problem = outcome.state_problem;
        self
    }
}
