//! Stage 6 of the plan: what the pass asks of libvirt, from the
//! decisions after [`super::adjust`]: the balloons to set ([`Resize`]) and
//! the guests' statistics periods to set ([`StatsPeriod`]): turned on once
//! for a guest that reports no fresh figures, the short recall period
//! while a recall lasts (each recall step waits for the guest's answer),
//! and back to `--guest-stats-period` once it is over.

use crate::policy::{Action, Decision, Reason, VmStatus};
use crate::state::{State, VmRecord};

use super::rows::{Motion, Row};
use super::settings::Settings;

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

/// The guest's statistics period while ksm-balloon recalls from it,
/// seconds: a recall step waits for figures this fresh.
pub const RECALL_STATS_PERIOD_SECS: u32 = 1;

/// The balloons to set: every decision that resizes, from the balloon's
/// size now.
pub fn resizes(rows: &[Row], decided: &[Decision]) -> Vec<Resize> {
    rows.iter()
        .zip(decided)
        .filter(|(_, dec)| dec.resizes())
        .map(|(row, dec)| Resize {
            uuid: row.d.uuid.clone(),
            name: row.d.name.clone(),
            from_kib: row.view.actual_kib,
            to_kib: dec.target_kib,
            reason: dec.reason,
        })
        .collect()
}

/// The statistics periods to set, one at most per VM.
pub fn stats_periods(
    settings: &Settings,
    rows: &[Row],
    decided: &[Decision],
    state: &State,
) -> Vec<StatsPeriod> {
    let mut out = Vec::new();
    for (row, dec) in rows.iter().zip(decided) {
        let r = state.vms.get(&row.d.uuid).expect("a row has a record");
        if let Some(kind) = period_kind(settings, row, dec, r) {
            out.push(StatsPeriod {
                uuid: row.d.uuid.clone(),
                name: row.d.name.clone(),
                seconds: match kind {
                    PeriodKind::Recall => RECALL_STATS_PERIOD_SECS,
                    PeriodKind::TurnOn | PeriodKind::Restore => settings.guest_stats_period,
                },
                kind,
            });
        }
    }
    out
}

/// Why the pass sets this VM's statistics period, if it does.
fn period_kind(settings: &Settings, row: &Row, dec: &Decision, r: &VmRecord) -> Option<PeriodKind> {
    // No fresh figures, not merely none at all: a guest without a
    // statistics period still sends one report when its balloon
    // driver starts, and its last-update then stays at that moment.
    let manages_periods = settings.guest_stats_period > 0 && row.view.status == VmStatus::Managed;
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
    if !manages_periods {
        None
    } else if recalling && r.recall_stats_at.is_none() {
        Some(PeriodKind::Recall)
    } else if !recalling && r.recall_stats_at.is_some() {
        Some(PeriodKind::Restore)
    } else if !r.stats_period_set && !row.fresh {
        Some(PeriodKind::TurnOn)
    } else {
        None
    }
}
