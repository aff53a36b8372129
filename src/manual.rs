//! The manual-change detector: was a VM's balloon set by someone else (an
//! operator's `virsh setmem`), or is it at, or on its way to, the size
//! ksm-balloon last asked for?
//!
//! Pure: each pass feeds one [`Observation`] of the balloon (from the bulk
//! statistics it reads anyway) to the VM's [`History`], which lives in the
//! state file, and gets a [`Decision`]. Each resize the pass makes is
//! recorded with [`History::asked`].
//!
//! What the balloon does on the real stack (libvirt 9.0, QEMU software
//! emulation, Linux 6.1 guests; measured with `virsh domstats --balloon`
//! every 0.5 s) and what this module makes of it:
//!
//! - A resize is reached within 1-2 s, or the guest cannot give up enough
//!   memory and the balloon stops short of the target, between where it was
//!   and the target. Either way the size stays on the path from the size we
//!   asked at to the size we asked for: [`Decision::Converging`], however
//!   long it takes (a slow guest is never taken for an operator).
//! - At start the balloon is at `<memory>` and inflates to `<currentMemory>`
//!   once the guest's driver loads: the same path, from the maximum
//!   ([`History::started`]).
//! - A balloon device with `autodeflate='on'` gives pages back to a guest
//!   that runs out of memory: the size rose 55 MiB above the target within
//!   2 s, then jittered by 1 MiB steps (deflate, re-inflate) with the guest's
//!   usable memory at 6-8 MiB. A size above the target on such a device,
//!   with the guest short of memory, is [`Decision::DeflatedOnOom`].
//! - An operator's `virsh setmem` moves the balloon to a size of their own
//!   and it stays there. A size off the path (or away from a target it had
//!   reached), seen at the same size on two passes in a row, is
//!   [`Decision::Manual`]; seen once, or still moving, it is
//!   [`Decision::Unknown`] and the pass should leave the VM alone this once.
//!
//! Once manual, the VM stays held (the same decision every pass) until
//! [`History::release`] or until the VM restarts (the hook then records it
//! anew with [`History::started`]).

use serde::{Deserialize, Serialize};

/// Sizes this close count as equal. The 1 MiB deflate/re-inflate steps of
/// a guest at the edge of its memory must not look like a move.
pub const TOLERANCE_KIB: u64 = 2048;

/// A guest with less usable memory than this (or than
/// [`OOM_USABLE_DIVISOR`]th of its size, if that is more) is short of memory.
/// Measured: 6-8 MiB usable in a 133 MiB guest while its balloon deflated
/// on OOM, against 85 MiB at rest.
pub const OOM_USABLE_MIN_KIB: u64 = 16 * 1024;

/// See [`OOM_USABLE_MIN_KIB`].
pub const OOM_USABLE_DIVISOR: u64 = 32;

/// A balloon back at the VM's maximum after reaching its target is a guest
/// that reset (its driver starts over, then inflates to the target again)
/// for this long; after that, someone else set it.
pub const RESET_GRACE_SECS: u64 = 120;

/// A VM set by someone else and left alone since.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// When it was first seen away from our target (seconds since the epoch).
    pub since: u64,
    /// The size it was held at, KiB.
    pub size_kib: u64,
}

/// What the detector remembers of one VM between passes: a field of its
/// record in the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The size last asked for: ksm-balloon's last target, or the size the
    /// VM was started with. KiB.
    pub asked_kib: u64,
    /// When it was asked (seconds since the epoch).
    pub asked_at: u64,
    /// The balloon's size when it was asked, KiB.
    pub from_kib: u64,
    /// When the balloon was first seen at the asked size since.
    #[serde(default)]
    pub reached_at: Option<u64>,
    /// The last size seen, KiB.
    #[serde(default)]
    pub last_kib: Option<u64>,
    /// When the balloon was first seen away from where it should be.
    #[serde(default)]
    pub away_since: Option<u64>,
    /// Set once the balloon was found set by someone else.
    #[serde(default)]
    pub held: Option<Held>,
}

/// One look at the balloon, from a pass's bulk statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// When (seconds since the epoch).
    pub at: u64,
    /// `balloon.current`, KiB.
    pub current_kib: u64,
    /// `balloon.maximum`, KiB.
    pub maximum_kib: u64,
    /// The balloon device deflates on guest OOM (`<memballoon
    /// autodeflate='on'>` in the domain XML).
    pub autodeflate: bool,
    /// `balloon.usable`: what the guest can use without swapping, KiB; None
    /// when the guest has no figures that speak for it now (no `<stats
    /// period>`, or none fresh and taken since the size was asked).
    pub usable_kib: Option<u64>,
}

/// What the detector makes of an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision")]
pub enum Decision {
    /// At the size ksm-balloon last asked for.
    Ours,
    /// On its way there, or stopped on the way (a slow guest, or one that
    /// cannot give up more memory).
    Converging,
    /// Set by someone else: leave it alone until released or restarted.
    Manual {
        /// Seen away since (seconds since the epoch).
        since: u64,
        /// The size it was set to, KiB.
        size_kib: u64,
    },
    /// Above our target because the guest ran out of memory and its balloon
    /// deflated (`autodeflate='on'`): not an operator.
    DeflatedOnOom,
    /// Away from our target, but not yet for long enough to tell why: leave
    /// it alone this pass.
    Unknown,
}

impl Decision {
    /// Whether a pass may resize the VM: not while it is held by hand or
    /// while its move is unexplained.
    pub fn may_resize(&self) -> bool {
        !matches!(self, Decision::Manual { .. } | Decision::Unknown)
    }
}

fn near(a: u64, b: u64) -> bool {
    a.abs_diff(b) <= TOLERANCE_KIB
}

impl History {
    /// Moves every instant it holds by `delta` seconds (the wall clock
    /// stepped: `crate::state::State::shift_instants`).
    pub fn shift_instants(&mut self, delta: i64) {
        let sh = |t: &mut u64| *t = crate::state::model::shifted(*t, delta);
        let History {
            asked_kib: _,
            asked_at,
            from_kib: _,
            reached_at,
            last_kib: _,
            away_since,
            held,
        } = self;
        sh(asked_at);
        reached_at.iter_mut().for_each(sh);
        away_since.iter_mut().for_each(sh);
        if let Some(Held { since, size_kib: _ }) = held {
            sh(since);
        }
    }

    /// A VM just started (or recorded) at `size_kib`: libvirt asked for its
    /// `<currentMemory>`, and the balloon inflates to it from the maximum.
    pub fn started(at: u64, size_kib: u64, maximum_kib: u64) -> History {
        History {
            asked_kib: size_kib,
            asked_at: at,
            from_kib: maximum_kib.max(size_kib),
            reached_at: None,
            last_kib: None,
            away_since: None,
            held: None,
        }
    }

    /// A VM whose history is unknown (adopted, or a state file written
    /// before this field existed): its size now is taken as the size asked.
    pub fn adopted(at: u64, current_kib: u64) -> History {
        History {
            asked_kib: current_kib,
            asked_at: at,
            from_kib: current_kib,
            reached_at: Some(at),
            last_kib: Some(current_kib),
            away_since: None,
            held: None,
        }
    }

    /// ksm-balloon set the balloon to `target_kib` while it was at
    /// `current_kib`.
    pub fn asked(&mut self, at: u64, target_kib: u64, current_kib: u64) {
        self.asked_kib = target_kib;
        self.asked_at = at;
        self.from_kib = current_kib;
        self.reached_at = None;
        self.away_since = None;
    }

    /// The operator handed the VM back (`ksm-balloon release`, or metadata):
    /// its size now becomes the size asked, and it is managed again.
    pub fn release(&mut self, at: u64, current_kib: u64) {
        *self = History::adopted(at, current_kib);
    }

    /// Takes one observation into the history and says what it means.
    pub fn observe(&mut self, obs: Observation) -> Decision {
        let previous = self.last_kib.replace(obs.current_kib);
        if let Some(h) = self.held {
            return Decision::Manual {
                since: h.since,
                size_kib: h.size_kib,
            };
        }
        let (c, t) = (obs.current_kib, self.asked_kib);
        if near(c, t) {
            self.reached_at.get_or_insert(obs.at);
            self.away_since = None;
            return Decision::Ours;
        }
        let usable_floor = (c / OOM_USABLE_DIVISOR).max(OOM_USABLE_MIN_KIB);
        let short_of_memory = obs.usable_kib.map_or(true, |u| u < usable_floor);
        if obs.autodeflate && c > t && short_of_memory {
            self.away_since = None;
            return Decision::DeflatedOnOom;
        }
        let lo = self.from_kib.min(t).saturating_sub(TOLERANCE_KIB);
        let hi = self.from_kib.max(t).saturating_add(TOLERANCE_KIB);
        if self.reached_at.is_none() && (lo..=hi).contains(&c) {
            self.away_since = None;
            return Decision::Converging;
        }
        // Off the path, or gone from a target it had reached.
        let since = *self.away_since.get_or_insert(obs.at);
        let at_maximum = near(c, obs.maximum_kib) && !near(t, obs.maximum_kib);
        if at_maximum {
            // A guest that reset deflates all the way, then inflates to
            // the target QEMU still holds once its driver is back.
            if obs.at.saturating_sub(since) < RESET_GRACE_SECS {
                return Decision::Unknown;
            }
        } else if previous.map_or(true, |p| !near(p, c)) || since == obs.at {
            // Seen away once, or still moving: wait for it to settle.
            return Decision::Unknown;
        }
        let held = Held { since, size_kib: c };
        self.held = Some(held);
        Decision::Manual {
            since: held.since,
            size_kib: held.size_kib,
        }
    }
}

/// Whether a domain's balloon deflates on guest OOM: `<memballoon
/// autodeflate='on'>` under the `<domain>` node given (the XML the hook gets
/// at start, or the persistent definition read at adoption).
pub fn balloon_autodeflate(domain: roxmltree::Node) -> bool {
    domain
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|d| d.children().filter(|n| n.has_tag_name("memballoon")))
        .any(|b| b.attribute("autodeflate") == Some("on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autodeflate_from_the_domain_xml() {
        for (xml, want) in [
            ("<domain><devices><memballoon model='virtio' autodeflate='on'><stats period='2'/></memballoon></devices></domain>", true),
            ("<domain><devices><memballoon model='virtio' autodeflate='off'/></devices></domain>", false),
            ("<domain><devices><memballoon model='virtio'/></devices></domain>", false),
            ("<domain><memballoon autodeflate='on'/></domain>", false),
            ("<domain/>", false),
        ] {
            let doc = roxmltree::Document::parse(xml).unwrap();
            assert_eq!(balloon_autodeflate(doc.root_element()), want, "{xml}");
        }
    }

    const MIB: u64 = 1024;
    const MAX: u64 = 256 * MIB;

    fn obs(at: u64, current_kib: u64) -> Observation {
        Observation {
            at,
            current_kib,
            maximum_kib: MAX,
            autodeflate: false,
            usable_kib: None,
        }
    }

    use Decision::*;

    /// One row: where the history starts, then each step: `Ask(target)`
    /// (ksm-balloon resized it at that time) or `See(size)` with the
    /// decision expected.
    enum Step {
        Ask(u64, u64),
        See(u64, u64, Decision),
        SeeOom(u64, u64, Option<u64>, Decision),
        Release(u64),
    }
    use Step::*;

    fn run(name: &str, mut h: History, autodeflate: bool, steps: &[Step]) -> History {
        let mut current = h.last_kib.unwrap_or(h.from_kib);
        for (i, s) in steps.iter().enumerate() {
            match *s {
                Ask(at, target) => h.asked(at, target, current),
                See(at, size, want) => {
                    current = size;
                    let got = h.observe(Observation {
                        autodeflate,
                        ..obs(at, size)
                    });
                    assert_eq!(got, want, "{name}: step {i} (t={at}, {size} KiB)");
                }
                SeeOom(at, size, usable, want) => {
                    current = size;
                    let got = h.observe(Observation {
                        autodeflate,
                        usable_kib: usable,
                        ..obs(at, size)
                    });
                    assert_eq!(got, want, "{name}: step {i} (t={at}, {size} KiB)");
                }
                Release(at) => h.release(at, current),
            }
        }
        h
    }

    #[test]
    fn boot_inflates_from_the_maximum_to_the_floor() {
        // Measured: 261120 at the first sample, 163840 half a second later.
        run(
            "boot",
            History::started(0, 160 * MIB, MAX),
            false,
            &[
                See(1, 261_120, Converging),
                See(2, 200 * MIB, Converging),
                See(3, 163_840, Ours),
                See(13, 163_840, Ours),
            ],
        );
    }

    #[test]
    fn our_resizes_reached_quickly() {
        run(
            "grow then shrink",
            History::adopted(0, 160 * MIB),
            false,
            &[
                Ask(10, 200 * MIB),
                See(20, 200 * MIB, Ours),
                Ask(20, 170 * MIB),
                See(30, 170 * MIB - 12, Ours),
                See(40, 170 * MIB + 1000, Ours),
            ],
        );
    }

    #[test]
    fn slow_guest_is_converging_however_long_it_takes() {
        run(
            "slow shrink",
            History::adopted(0, 256 * MIB),
            false,
            &[
                Ask(0, 160 * MIB),
                See(10, 256 * MIB, Converging), // not moved yet
                See(20, 240 * MIB, Converging),
                See(30, 240 * MIB, Converging), // stalled: still not an operator
                See(600, 200 * MIB, Converging),
                See(610, 160 * MIB, Ours),
            ],
        );
    }

    #[test]
    fn guest_that_cannot_reach_a_low_target_stays_converging() {
        // Measured (no autodeflate would hold it flat; with it, it jitters):
        // setmem 72 MiB from 160 MiB stopped at 80984..82564 KiB.
        run(
            "stalled shrink",
            History::adopted(0, 163_840),
            false,
            &[
                Ask(0, 73_728),
                See(10, 80_984, Converging),
                See(20, 82_552, Converging),
                See(30, 81_528, Converging),
                See(300, 82_564, Converging),
            ],
        );
    }

    #[test]
    fn operator_setmem_after_our_target_was_reached() {
        let h = run(
            "setmem",
            History::adopted(0, 160 * MIB),
            false,
            &[
                Ask(0, 220 * MIB),
                See(10, 220 * MIB, Ours),
                // the operator: virsh setmem 180M (inside our old path: it
                // is the target having been reached that tells)
                See(20, 180 * MIB, Unknown),
                See(
                    30,
                    180 * MIB,
                    Manual {
                        since: 20,
                        size_kib: 180 * MIB,
                    },
                ),
                // held whatever it does next, until released
                See(
                    40,
                    190 * MIB,
                    Manual {
                        since: 20,
                        size_kib: 180 * MIB,
                    },
                ),
                See(
                    50,
                    220 * MIB,
                    Manual {
                        since: 20,
                        size_kib: 180 * MIB,
                    },
                ),
                Release(60),
                See(70, 220 * MIB, Ours),
            ],
        );
        assert_eq!(h.held, None);
    }

    #[test]
    fn operator_setmem_off_the_path_while_converging() {
        run(
            "setmem while converging",
            History::adopted(0, 160 * MIB),
            false,
            &[
                Ask(0, 220 * MIB),
                See(10, 190 * MIB, Converging),
                See(20, 120 * MIB, Unknown), // below where we started from
                See(
                    30,
                    120 * MIB + 512,
                    Manual {
                        since: 20,
                        size_kib: 120 * MIB + 512,
                    },
                ),
            ],
        );
    }

    #[test]
    fn operator_change_still_moving_waits() {
        run(
            "slow operator shrink",
            History::adopted(0, 200 * MIB),
            false,
            &[
                See(10, 200 * MIB, Ours),
                See(20, 150 * MIB, Unknown),
                See(30, 120 * MIB, Unknown), // still moving
                See(40, 100 * MIB, Unknown),
                See(
                    50,
                    100 * MIB,
                    Manual {
                        since: 20,
                        size_kib: 100 * MIB,
                    },
                ),
            ],
        );
    }

    #[test]
    fn back_at_our_target_after_one_odd_sample_is_ours() {
        run(
            "blip",
            History::adopted(0, 200 * MIB),
            false,
            &[
                See(10, 150 * MIB, Unknown),
                See(20, 200 * MIB, Ours),
                See(30, 150 * MIB, Unknown), // a new departure starts afresh
                See(
                    40,
                    150 * MIB,
                    Manual {
                        since: 30,
                        size_kib: 150 * MIB,
                    },
                ),
            ],
        );
    }

    #[test]
    fn deflate_on_oom_is_not_an_operator() {
        // Measured: a guest at 80 MiB (target 72) filled 48 MiB of tmpfs;
        // the balloon deflated to 136..137 MiB within 2 s and jittered by
        // 1 MiB, the guest's usable memory 7.6 MiB.
        run(
            "oom",
            History::adopted(0, 163_840),
            true,
            &[
                Ask(0, 73_728),
                SeeOom(10, 81_528, Some(5_624), DeflatedOnOom),
                SeeOom(20, 137_176, Some(7_616), DeflatedOnOom),
                SeeOom(30, 136_144, Some(7_608), DeflatedOnOom),
                SeeOom(40, 137_168, Some(7_612), DeflatedOnOom),
                // the guest freed its memory; the driver re-inflates
                SeeOom(50, 73_728, Some(30_000), Ours),
            ],
        );
    }

    #[test]
    fn oom_needs_an_autodeflate_device() {
        // Without autodeflate the guest cannot take pages back: a rise
        // above the target it had reached is someone else.
        run(
            "no autodeflate",
            History::adopted(0, 100 * MIB),
            false,
            &[
                SeeOom(10, 136 * MIB, Some(7_000), Unknown),
                SeeOom(
                    20,
                    136 * MIB,
                    Some(7_000),
                    Manual {
                        since: 10,
                        size_kib: 136 * MIB,
                    },
                ),
            ],
        );
    }

    #[test]
    fn autodeflate_device_with_a_comfortable_guest_is_an_operator() {
        // The guest has plenty of usable memory: it did not deflate on OOM.
        run(
            "autodeflate, operator grow",
            History::adopted(0, 100 * MIB),
            true,
            &[
                SeeOom(10, 200 * MIB, Some(150 * MIB), Unknown),
                SeeOom(
                    20,
                    200 * MIB,
                    Some(150 * MIB),
                    Manual {
                        since: 10,
                        size_kib: 200 * MIB,
                    },
                ),
            ],
        );
        // No statistics: an autodeflate device above its target is given
        // the benefit of the doubt.
        run(
            "autodeflate, no stats",
            History::adopted(0, 100 * MIB),
            true,
            &[
                SeeOom(10, 200 * MIB, None, DeflatedOnOom),
                SeeOom(20, 200 * MIB, None, DeflatedOnOom),
            ],
        );
        // A shrink below the target is never an OOM deflation.
        run(
            "autodeflate, operator shrink",
            History::adopted(0, 100 * MIB),
            true,
            &[
                SeeOom(10, 80 * MIB, Some(1000), Unknown),
                SeeOom(
                    20,
                    80 * MIB,
                    Some(1000),
                    Manual {
                        since: 10,
                        size_kib: 80 * MIB,
                    },
                ),
            ],
        );
    }

    #[test]
    fn guest_reset_is_given_time_to_inflate_again() {
        run(
            "reset",
            History::adopted(0, 160 * MIB),
            false,
            &[
                See(10, MAX, Unknown),
                See(20, MAX, Unknown),
                See(100, MAX, Unknown),
                See(110, 160 * MIB, Ours),
                // a reset that never inflates again (no driver any more, or
                // someone set the maximum): held after the grace
                See(200, MAX, Unknown),
                See(200 + RESET_GRACE_SECS - 1, MAX, Unknown),
                See(
                    200 + RESET_GRACE_SECS,
                    MAX,
                    Manual {
                        since: 200,
                        size_kib: MAX,
                    },
                ),
            ],
        );
    }

    #[test]
    fn a_new_target_starts_a_new_path() {
        run(
            "new target",
            History::adopted(0, 160 * MIB),
            false,
            &[
                See(5, 190 * MIB, Unknown),
                // the pass asked anyway (Unknown should have held it; the
                // history stays consistent if it did not)
                Ask(10, 200 * MIB),
                See(20, 195 * MIB, Converging),
                See(30, 200 * MIB, Ours),
            ],
        );
    }

    #[test]
    fn may_resize() {
        assert!(Ours.may_resize());
        assert!(Converging.may_resize());
        assert!(DeflatedOnOom.may_resize());
        assert!(!Unknown.may_resize());
        assert!(!Manual {
            since: 1,
            size_kib: 1
        }
        .may_resize());
    }

    #[test]
    fn history_in_the_state_file() {
        let mut h = History::started(5, 160 * MIB, MAX);
        h.observe(obs(6, 160 * MIB));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<History>(&json).unwrap(), h);
        // The optional fields may be absent.
        let min = r#"{"asked_kib":1,"asked_at":2,"from_kib":3}"#;
        let h: History = serde_json::from_str(min).unwrap();
        assert_eq!(
            (h.reached_at, h.last_kib, h.away_since, h.held),
            (None, None, None, None)
        );
        assert_eq!(
            serde_json::to_value(Manual {
                since: 1,
                size_kib: 2
            })
            .unwrap(),
            serde_json::json!({"decision": "manual", "since": 1, "size_kib": 2})
        );
    }
}
