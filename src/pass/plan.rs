//! Step 2 of a pass: from what was observed and the state, every VM's
//! target, what the pass asks of libvirt, and what the state becomes.
//! Pure: no libvirt, no files, no clock (the observation carries the
//! time), no logging (what is worth saying comes back as [`Note`]s).
//!
//! [`plan`] runs named stages, each a function over plain data in a file
//! of its own:
//!
//! 1. [`super::reconcile`]: forget records of domains that are gone, adopt
//!    running domains no hook recorded;
//! 2. [`super::lend`]: the savings, whose they are (contribution splits),
//!    and what held over the holding window;
//! 3. [`super::rows`]: what each managed VM is now (its balloon's motion,
//!    its guest's figures, its I/O demand, whether it was set by hand);
//! 4. the policy ([`crate::policy::plan`]): pool, split, loan rule, recall
//!    rule, guard, deadband;
//! 5. [`super::adjust`]: the rules that change a decision from what
//!    earlier passes asked (back-off, withdraw a shrink);
//! 6. [`super::asks`]: the resizes and statistics periods to ask for;
//! 7. [`crate::ksmcost`]: what KSM cost since the last pass;
//! 8. the KSM governor ([`crate::governor`], `--ksm manage`): KSM's knobs
//!    to write after the balloons, or none;
//! 9. [`super::report::build`]: the report.

use std::path::Path;

use log::Level;

use crate::ksm::KsmError;
use crate::policy::{self, HostView, VmView};
use crate::state::State;
use crate::units::Kib;

use super::asks::{Resize, StatsPeriod};
use super::notes::{note, Note};
use super::observe::Observation;
use super::report::Report;
use super::settings::Settings;
use super::{adjust, asks, lend, reconcile, report, rows};

/// Everything the plan step works out.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The state after reconciling and tracking (the asks of this pass are
    /// recorded by [`super::apply::record`] once they are made).
    pub state: State,
    /// The plan's report ([`Report::finish`] adds what the pass did).
    pub report: Report,
    /// The balloons to set.
    pub resizes: Vec<Resize>,
    /// The statistics periods to turn on.
    pub stats_periods: Vec<StatsPeriod>,
    /// What is worth logging.
    pub notes: Vec<Note>,
}

/// Works out the pass, stage by stage. `ksm_dir` only names a counter
/// file in an error.
pub fn plan(
    settings: &Settings,
    obs: &Observation,
    mut state: State,
    ksm_dir: &Path,
) -> Result<Planned, KsmError> {
    let now = obs.at;
    let mut notes = Vec::new();
    let savings = obs.ksm.savings(settings.metric, ksm_dir)?;
    // ksm-balloon's own `run` 0 (manage, no VM with headroom) is no news
    let governed = settings.governor.mode == crate::governor::Mode::Manage
        && state
            .ksm_governor
            .as_ref()
            .is_some_and(|g| g.stepped_back.is_none() && g.left.run == obs.ksm.run);
    if !governed {
        ksm_notes(obs, ksm_dir, &mut notes);
    }
    let adopted = reconcile::reconcile(&mut state, obs, &mut notes);
    let policy = settings.policy(obs.mem.total_kib);
    let lending = lend::lending(settings, obs, savings, &mut state, &mut notes);
    let rows = rows::rows(settings, obs, &mut state, &lending.parts, &mut notes);
    let host = HostView {
        savings_kib: lending.lendable_kib,
        ksm_counters_live: obs.ksm.counters_live(),
        available_kib: obs.mem.available_kib,
    };
    let (p, decided) = decide(&policy, &host, &rows, &mut state, now, &mut notes);
    let resizes = asks::resizes(&rows, &decided);
    let stats_periods = asks::stats_periods(settings, &rows, &decided, &state);
    guard_note(obs, &policy, &p, &rows, &decided, &mut notes);
    // What KSM cost since the last pass, against what it saved and what
    // of that the VMs hold above their floors after this plan.
    let lent_kib = rows
        .iter()
        .zip(&decided)
        .map(|(r, d)| d.target_kib.saturating_sub(r.view.floor_kib))
        .sum();
    let (ksm_cost, mark) = crate::ksmcost::cost(
        state.ksm_cost,
        &obs.ksmd,
        &obs.ksm,
        savings.kib,
        lent_kib,
        now,
    );
    state.ksm_cost = mark;
    let governor = govern(settings, obs, &rows, &ksm_cost, &mut state, &mut notes);
    let report = report::build(&report::Inputs {
        settings,
        obs,
        state: &state,
        lending: &lending,
        policy: &policy,
        plan: &p,
        rows: &rows,
        decided: &decided,
        adopted: &adopted,
        ksm_cost: &ksm_cost,
        ksm_governor: &governor,
    });
    Ok(Planned {
        state,
        report,
        resizes,
        stats_periods,
        notes,
    })
}

/// Stages 4 and 5: the policy over the rows, then the rules that change
/// its decisions from what earlier passes asked ([`adjust::adjust`]).
/// Returns the policy's plan and every row's decision as the pass acts on
/// it. The property tests of the whole pipeline (`tests/pipeline_props.rs`)
/// run this, so a rule in either stage is checked against the same
/// invariants.
pub fn decide(
    policy: &policy::Policy,
    host: &HostView,
    rows: &[rows::Row],
    state: &mut State,
    now: u64,
    notes: &mut Vec<Note>,
) -> (policy::Plan, Vec<policy::Decision>) {
    let views: Vec<VmView> = rows.iter().map(|r| r.view).collect();
    let p = policy::plan(policy, host, &views);
    let decided = adjust::adjust(
        policy,
        p.under_reserve,
        rows,
        &p.decisions,
        state,
        now,
        notes,
    );
    (p, decided)
}

/// Stage 8: the KSM governor ([`crate::governor::govern`]) over what
/// this pass measured; its memory goes into the state as if its writes
/// succeed ([`super::apply::write_knobs`] corrects a failed one).
fn govern(
    settings: &Settings,
    obs: &Observation,
    rows: &[rows::Row],
    cost: &crate::ksmcost::KsmCost,
    state: &mut State,
    notes: &mut Vec<Note>,
) -> crate::governor::Decision {
    use crate::governor::{Action, Input};
    use policy::VmStatus;
    let headroom_vms = rows
        .iter()
        .filter(|r| {
            matches!(r.view.status, VmStatus::Managed | VmStatus::Unsettled)
                && r.view.ceiling_kib > r.view.floor_kib
                && r.view.weight > 0
        })
        .count();
    let input = Input {
        now: obs.at,
        found: obs.knobs.clone(),
        headroom_vms,
        savings_kib: cost.savings_kib,
        page_kib: (obs.ksm.page_size / 1024).max(1),
        pages_scanned: obs.ksm.pages_scanned,
        full_scans: obs.ksm.full_scans,
        cpu_percent: cost.ksmd_cpu_percent,
        boot_id: state.clock.as_ref().map(|c| c.boot_id.clone()),
        min_gain_kib: settings.policy.deadband_kib,
    };
    let out = crate::governor::govern(&settings.governor, &input, state.ksm_governor.as_ref());
    // A give-back (observe after manage) is done with the memory only once
    // its writes succeed: it is kept until [`super::apply::write_knobs`]
    // has made them, so a write that fails is tried again by the next pass.
    if out.decision.action != Action::Restore {
        state.ksm_governor = out.memory;
    }
    if let Some(line) = out.log {
        let level = if out.decision.action == Action::StepBack {
            Level::Warn
        } else {
            Level::Info
        };
        note(notes, level, line);
    }
    out.decision
}

/// What KSM's `run` means for the savings, when it is not merging.
fn ksm_notes(obs: &Observation, ksm_dir: &Path, notes: &mut Vec<Note>) {
    if obs.ksm.unmerged() {
        note(
        notes,
        Level::Info,
        format!(
            "KSM has unmerged everything ({}/run = 2): its savings are gone, so the bonuses go with them",
            ksm_dir.display()
        ),
    );
    } else if !obs.ksm.counters_live() {
        note(
        notes,
        Level::Warn,
        format!(
            "KSM is not merging ({}/run = {}): its counters are stale, so sizes are held; start it with 'echo 1 > /sys/kernel/mm/ksm/run'",
            ksm_dir.display(),
            obs.ksm.run
        ),
    );
    }
}

/// When the host is under its reserve: what the guard takes, and from
/// whose applications' memory.
fn guard_note(
    obs: &Observation,
    policy: &policy::Policy,
    p: &policy::Plan,
    rows: &[rows::Row],
    decided: &[policy::Decision],
    notes: &mut Vec<Note>,
) {
    let squeezed: Vec<String> = rows
        .iter()
        .zip(decided)
        .filter(|(_, dec)| dec.squeezed_kib > 0)
        .map(|(row, dec)| format!("{:?} by {}", row.d.name, Kib(dec.squeezed_kib)))
        .collect();
    if p.under_reserve {
        note(
        notes,
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
}
