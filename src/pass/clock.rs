//! The pass's clocks, and what it does when the wall clock steps.
//!
//! Every instant in the state is the wall clock's (seconds since the
//! epoch), as is the `last-update` libvirt gives for a guest's figures. A
//! wall clock stepped back (NTP after a bad RTC, an operator's `date -s`)
//! froze every interval measured from a stored instant for as long as the
//! step (a back-off, `now < retry_at`, for an hour) and made the holding
//! window drop its "future" readings; stepped forward it expired them all
//! at once. So a pass is given `CLOCK_BOOTTIME` with the boot's id beside
//! the wall clock ([`Now`], injected like the wall clock was, so tests step
//! either), the state keeps both as its pass read them
//! ([`crate::state::ClockMark`]), and the next pass of the same boot takes
//! the step, wall elapsed less boot time elapsed, and shifts every stored
//! instant by it ([`take_step`], [`crate::state::State::shift_instants`]):
//! each interval then runs on the clock that did not step. Across a reboot
//! nothing is shifted: the boot clock started over, and the time the host
//! was off is only the wall clock's.
//!
//! A guest's figures are stamped by its QEMU with the wall clock of the
//! moment, and a report from before a step keeps its stamp ([`dated`]).

use crate::state::model::shifted;
use crate::state::spool::Stamp;
use crate::state::{ClockMark, State, CLOCK_STEP_TOLERANCE_SECS};

/// What a pass reads its clocks as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Now {
    /// The wall clock, seconds since the epoch.
    pub wall: u64,
    /// This boot's id and `CLOCK_BOOTTIME`, read with it; `None` where
    /// the caller gives none (a test that does not step clocks): no step
    /// is then known, and the state keeps no mark.
    pub boot: Option<Stamp>,
}

impl From<u64> for Now {
    fn from(wall: u64) -> Now {
        Now { wall, boot: None }
    }
}

impl Now {
    /// The host's clocks now.
    pub fn system() -> Now {
        let boot = Stamp::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Now {
            wall,
            boot: Some(boot),
        }
    }

    /// The mark a state saved now keeps.
    pub fn mark(&self) -> Option<ClockMark> {
        self.boot.as_ref().map(|b| ClockMark {
            wall: self.wall,
            boot_id: b.boot_id.clone(),
            boottime_ns: b.boottime_ns,
        })
    }
}

/// How far the wall clock stepped since the pass that saved `state`, if
/// it did: every instant in `state` is then shifted by it. `state` keeps
/// `now`'s mark from here on (the saves of this pass write it).
pub fn take_step(state: &mut State, now: &Now) -> Option<i64> {
    let mark = now.mark();
    let step = match (&mark, &state.clock) {
        (Some(m), Some(earlier)) => m.step(earlier),
        _ => None,
    };
    if let Some(delta) = step {
        state.shift_instants(delta);
    }
    state.clock = mark;
    step
}

/// The log line of a step.
pub fn step_line(delta: i64) -> String {
    format!(
        "the wall clock stepped {} by {} s since the last pass (by this boot's monotonic clock); every time in the state moved with it, so back-offs, the holding window, the demand's read rate and the figures' ages run as if it had not",
        if delta < 0 { "back" } else { "forward" },
        delta.unsigned_abs()
    )
}

/// When a guest's figures stamped `last_update` by its QEMU were taken, as
/// far as this pass can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dated {
    /// When, on the pass's clock (never after `now`).
    pub at: u64,
    /// Whether that is surely when: `false` for figures that may be from
    /// before a step back this pass found, which are never taken as
    /// answering an ask.
    pub sure: bool,
}

/// Dates figures stamped `last_update` (libvirt's `last-update`, the wall
/// clock of the QEMU when the guest reported) at a pass at `now` that read
/// them up to `read_after` seconds later (its `now` is read before it
/// waits for its lock and for libvirt) and found the wall clock stepped by
/// `step`:
///
/// - a stamp ahead of when the figures were read (`now` + `read_after`,
///   by more than the tolerance) was taken before the clock stepped back.
///   The pass that finds the step knows by how much, and dates it
///   exactly; a later pass cannot, and the figures count as stale (`None`:
///   the VM is treated as one without fresh statistics): they are never
///   fresher than now, nor taken as answering an ask made after them;
/// - any other stamp is clamped to `now`. On the pass that finds a step
///   back, such figures may be from before the step (older than they
///   look, by the step) or after it: they are not `sure`, and answer no
///   ask this pass, so the recall waits a pass rather than trust them. A
///   step forward makes figures from before it look older than they are:
///   on the safe side (a larger margin, a wait), with no change.
pub fn dated(
    last_update: Option<u64>,
    now: u64,
    read_after: u64,
    step: Option<i64>,
) -> Option<Dated> {
    let t = last_update.filter(|&t| t > 0)?;
    let read_at = now.saturating_add(read_after);
    let ahead = |t: u64| t > read_at.saturating_add_signed(CLOCK_STEP_TOLERANCE_SECS);
    match step {
        Some(d) if d < 0 && ahead(t) => {
            let t = shifted(t, d);
            (!ahead(t)).then_some(Dated {
                at: t.min(now),
                sure: true,
            })
        }
        _ if ahead(t) => None,
        Some(d) if d < 0 => Some(Dated {
            at: t.min(now),
            sure: false,
        }),
        _ => Some(Dated {
            at: t.min(now),
            sure: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(wall: u64, boot: &str, boot_secs: u64) -> Now {
        Now {
            wall,
            boot: Some(Stamp {
                boot_id: boot.into(),
                boottime_ns: boot_secs * 1_000_000_000,
            }),
        }
    }

    const B: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_step_is_wall_time_less_boot_time_within_one_boot() {
        let mut s = State::default();
        assert_eq!(take_step(&mut s, &at(10_000, B, 500)), None);
        // 10 s later by both clocks: no step
        assert_eq!(take_step(&mut s, &at(10_010, B, 510)), None);
        // 10 s later by the boot clock, the wall clock back an hour
        assert_eq!(take_step(&mut s, &at(6_420, B, 520)), Some(-3600));
        // and forward an hour again
        assert_eq!(take_step(&mut s, &at(10_030, B, 530)), Some(3600));
        // within the tolerance: NTP's slew, the whole seconds
        assert_eq!(take_step(&mut s, &at(10_042, B, 540)), None);
        assert_eq!(take_step(&mut s, &at(10_053, B, 552)), None);
        // another boot: the boot clock started over, no step known
        let other = "fedcba9876543210fedcba9876543210";
        assert_eq!(take_step(&mut s, &at(20_000, other, 5)), None);
        assert_eq!(s.clock.as_ref().unwrap().boot_id, other);
        // a pass given no boot clock knows no step and keeps no mark
        assert_eq!(take_step(&mut s, &Now::from(1)), None);
        assert_eq!(s.clock, None);
        // the unknown boot is no boot
        let unknown = crate::state::spool::UNKNOWN_BOOT;
        take_step(&mut s, &at(10_000, unknown, 500));
        assert_eq!(take_step(&mut s, &at(6_420, unknown, 520)), None);
    }

    #[test]
    fn figures_are_never_fresher_than_now() {
        let now = 10_000;
        // within the tolerance: clamped to now
        assert_eq!(dated(Some(now + 2), now, 0, None).unwrap().at, now);
        // ahead of now, no step known: stale
        assert_eq!(dated(Some(now + 600), now, 0, None), None);
        // ahead of now on the pass that found the step back: dated exactly
        assert_eq!(
            dated(Some(now + 600), now, 0, Some(-3600)),
            Some(Dated {
                at: now - 3000,
                sure: true
            })
        );
        // at or before now on that pass: maybe from before the step
        assert_eq!(
            dated(Some(now - 1), now, 0, Some(-3600)),
            Some(Dated {
                at: now - 1,
                sure: false
            })
        );
        // a step forward: as stamped
        assert_eq!(
            dated(Some(now - 1), now, 0, Some(3600)),
            Some(Dated {
                at: now - 1,
                sure: true
            })
        );
        assert_eq!(dated(Some(0), now, 0, None), None);
        assert_eq!(dated(None, now, 0, None), None);
        // a report made while the pass waited for its lock is of this
        // pass: clamped to now, not stale
        assert_eq!(
            dated(Some(now + 25), now, 24, None),
            Some(Dated {
                at: now,
                sure: true
            })
        );
        assert_eq!(dated(Some(now + 27), now, 24, None), None);
    }
}
