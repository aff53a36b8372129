//! Stage 5 of the plan: the rules that change the policy's decision for
//! a VM after the split, each from what earlier passes asked of its
//! balloon (the policy sees one pass; these rules see the episode):
//!
//! - [`back_off`]: a balloon that stays short of a target it was asked is
//!   not asked for the same thing again until an exponential back-off
//!   expires ([`BACKOFF_FIRST_SECS`], doubling, up to
//!   [`BACKOFF_MAX_SECS`]); only a balloon that gets there, or a target
//!   clearly less demanding, ends the episode;
//! - [`withdraw_shrink`]: above the reserve, a balloon short of a shrink
//!   its guest's own fresh figures say it cannot give is asked for the size
//!   it can be at (holding is not enough: the target asked stays in the
//!   guest);
//! - [`say_what_it_keeps`]: once per episode, what a VM keeps of its loan
//!   (the record remembers it).
//!
//! The rules decided inside the policy (held by hand, opted out, unsettled,
//! the blind step of a guest without fresh figures, awaiting confirmed
//! figures, the recall step) are in [`crate::policy::plan`]; the status
//! they read is [`super::rows`]'.

use log::Level;

use crate::policy::{Action, Decision, Policy, Reason, VmStatus};
use crate::state::{State, Stuck, VmRecord};
use crate::units::Kib;

use super::notes::{note, Note};
use super::rows::{Motion, Row, REACHED_KIB};

/// The first back-off for a balloon short of its target; it doubles at
/// every further try, up to [`BACKOFF_MAX_SECS`].
pub const BACKOFF_FIRST_SECS: u64 = 60;

/// The longest back-off.
pub const BACKOFF_MAX_SECS: u64 = 3600;

/// Every managed VM's decision after the rules that see the episode, in
/// the rows' order; each VM's back-off and what it keeps are in its record.
pub fn adjust(
    policy: &Policy,
    under_reserve: bool,
    rows: &[Row],
    decisions: &[Decision],
    state: &mut State,
    now: u64,
    notes: &mut Vec<Note>,
) -> Vec<Decision> {
    let mut decided = Vec::with_capacity(rows.len());
    for (row, dec) in rows.iter().zip(decisions) {
        let mut dec = *dec;
        let r = state.vms.get_mut(&row.d.uuid).expect("a row has a record");
        back_off(&mut dec, row, r, policy.deadband_kib, now, notes);
        withdraw_shrink(&mut dec, row, r, policy.deadband_kib, under_reserve, notes);
        say_what_it_keeps(&dec, row, r, policy, notes);
        if dec.action != Action::Skip {
            r.kept_kib = dec.kept_kib;
        }
        decided.push(dec);
    }
    decided
}

/// Back off from a target the balloon does not reach: holds `dec` while
/// the back-off runs, and keeps the episode in `r.stuck`.
pub fn back_off(
    dec: &mut Decision,
    row: &Row,
    r: &mut VmRecord,
    deadband_kib: u64,
    now: u64,
    notes: &mut Vec<Note>,
) {
    let name = &row.d.name;
    match row.motion {
        Motion::Short(asked)
            if dec.resizes()
                && asks_no_less(
                    dec.target_kib,
                    asked,
                    row.view.actual_kib,
                    deadband_kib.max(REACHED_KIB),
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
                        notes,
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
                        notes,
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
                    notes,
                    Level::Info,
                    format!(
                        "VM {name:?}: its balloon reached {}",
                        Kib(row.view.actual_kib)
                    ),
                );
            }
        }
    }
}

/// A balloon short of a shrink its guest's own figures say it cannot
/// give: holding is not enough, the target asked stays in the guest and
/// its balloon driver goes on taking every page the guest frees. Ask for
/// what it can be at (above the reserve; below it the host wins, and
/// without figures there is no telling). Only for a VM held in place by
/// the policy: a skipped one (held by hand, unsettled, opted out) is not
/// ours to resize.
pub fn withdraw_shrink(
    dec: &mut Decision,
    row: &Row,
    r: &mut VmRecord,
    deadband_kib: u64,
    under_reserve: bool,
    notes: &mut Vec<Note>,
) {
    let name = &row.d.name;
    if let Motion::Short(asked) = row.motion {
        if dec.action == Action::Hold
            && row.view.status == VmStatus::Managed
            && row.view.guest.is_some_and(|g| g.recall_ready())
            && !under_reserve
            && asked < row.view.actual_kib
            && dec.target_kib > asked.saturating_add(deadband_kib.max(REACHED_KIB))
        {
            dec.action = Action::Grow;
            dec.reason = Reason::Kept;
            r.stuck = None;
            note(
                notes,
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
}

/// Safe recall: says once per episode what a VM keeps (when it starts to
/// keep something, and when it stops), from the record's `kept_kib` of
/// the last pass.
pub fn say_what_it_keeps(
    dec: &Decision,
    row: &Row,
    r: &VmRecord,
    policy: &Policy,
    notes: &mut Vec<Note>,
) {
    let name = &row.d.name;
    if dec.kept_kib > 0
        && r.kept_kib == 0
        && matches!(dec.reason, Reason::Awaiting | Reason::RecallStep)
    {
        note(
            notes,
            Level::Info,
            format!(
                "VM {name:?}: {} of its loan to give back, in recall steps, each once its guest's fresh figures allow it",
                Kib(dec.kept_kib)
            ),
        );
    } else if dec.kept_kib > 0 && r.kept_kib == 0 {
        note(
            notes,
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
            notes,
            Level::Info,
            format!("VM {name:?} keeps nothing the savings do not cover any more"),
        );
    }
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
