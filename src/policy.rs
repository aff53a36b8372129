//! The policy: KSM savings in, one balloon target per VM out.
//!
//! A pure function over plain structs: no libvirt, sysfs, files or clock in
//! here, so it is tested with tables and property tests (see the bottom of
//! this file and `tests/policy_props.rs`).
//!
//! The method (the paper): the memory KSM saved is a pool; the pool is split
//! among the managed VMs; each VM's target is its floor (the size it was
//! started with) plus its part, never above its ceiling (its boot-time
//! maximum). What a VM cannot take because it reaches its ceiling goes to the
//! others (water-filling). When the savings shrink, the targets shrink in the
//! same pass.
//!
//! The host guard: the total bonus handed out never exceeds what is already
//! handed out plus what the host has available above its reserve. Below the
//! reserve, no VM grows and the bonuses shrink by the shortfall.

use serde::Serialize;
use std::fmt;

/// How the pool is divided among the managed VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Every managed VM gets the same amount (the paper).
    Equal,
    /// Each VM gets an amount proportional to its floor (bigger VMs get more).
    Proportional,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Equal => "equal",
            Split::Proportional => "proportional",
        })
    }
}

/// The policy's settings, already validated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// The fraction of the savings handed out, 0.0 to 1.0.
    pub share: f64,
    /// How the pool is divided.
    pub split: Split,
    /// The host's MemAvailable below which nothing grows, in KiB.
    pub reserve_kib: u64,
    /// Targets closer than this to the current size are left alone, in KiB.
    pub deadband_kib: u64,
    /// At most this much growth per VM per pass (None: unlimited, the paper).
    pub max_grow_kib: Option<u64>,
    /// At most this much shrink per VM per pass (None: unlimited, the paper).
    pub max_shrink_kib: Option<u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            share: 1.0,
            split: Split::Equal,
            reserve_kib: 0,
            deadband_kib: DEFAULT_DEADBAND_KIB,
            max_grow_kib: None,
            max_shrink_kib: None,
        }
    }
}

/// The default deadband: 4 MiB.
pub const DEFAULT_DEADBAND_KIB: u64 = 4 * 1024;

/// A return to the floor is applied once the VM is more than this above it,
/// even inside the deadband, so "savings gone" really means "back at the floor".
pub const FLOOR_TOLERANCE_KIB: u64 = 1024;

/// What the host looks like this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HostView {
    /// KSM's savings by the chosen metric, in KiB.
    pub savings_kib: u64,
    /// KSM's counters are live: it is merging (`run` = 1), or it unmerged
    /// everything (`run` = 2, the counters cleared: the savings are gone).
    /// When it is stopped (`run` = 0) the counters are stale: nothing grows
    /// and the sizes are held (the guard may still shrink them).
    pub ksm_counters_live: bool,
    /// The host's MemAvailable, in KiB.
    pub available_kib: u64,
}

/// Why a VM takes no part in the split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmStatus {
    /// Running with a balloon: takes part.
    Managed,
    /// Its domain has no balloon device (`<memballoon model='none'/>`).
    NoBalloon,
    /// Paused, shutting down, or otherwise not running.
    NotRunning,
}

/// One VM as the policy sees it. Sizes in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VmView {
    /// Its floor: the size it was started with.
    pub floor_kib: u64,
    /// Its ceiling: its boot-time maximum.
    pub ceiling_kib: u64,
    /// Its balloon's size now.
    pub current_kib: u64,
    /// Whether it takes part.
    pub status: VmStatus,
}

/// What to do with a VM this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Set the balloon to the target (it is larger).
    Grow,
    /// Set the balloon to the target (it is smaller).
    Shrink,
    /// Leave it: already at the target or within the deadband.
    Hold,
    /// Leave it: not managed (see the reason).
    Skip,
}

/// Why the target is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Floor plus its part of the pool.
    Share,
    /// Its part reached its ceiling; the rest went to the others.
    Ceiling,
    /// The host guard cut the pool or stopped growth.
    HostGuard,
    /// KSM is not merging: sizes held.
    KsmStopped,
    /// A per-pass growth or shrink limit applied.
    StepLimit,
    /// Its size was outside [floor, ceiling]: brought back inside.
    OutOfBounds,
    /// Already at the target.
    Steady,
    /// Within the deadband of the target.
    Deadband,
    /// Floor equals ceiling: no headroom to give.
    NoHeadroom,
    /// No balloon device.
    NoBalloon,
    /// Not running.
    NotRunning,
    /// Floor above ceiling: the record is impossible.
    BadBounds,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Share => "floor plus its share of the savings",
            Reason::Ceiling => "its share reaches its ceiling",
            Reason::HostGuard => "host guard: MemAvailable near the reserve",
            Reason::KsmStopped => "KSM is not merging: sizes held",
            Reason::StepLimit => "per-pass step limit",
            Reason::OutOfBounds => "size was outside [floor, ceiling]",
            Reason::Steady => "at its target",
            Reason::Deadband => "within the deadband",
            Reason::NoHeadroom => "floor equals ceiling: no headroom",
            Reason::NoBalloon => "no balloon device",
            Reason::NotRunning => "not running",
            Reason::BadBounds => "floor above ceiling",
        })
    }
}

/// The decision for one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The policy's target in KiB (for Skip: the current size).
    pub target_kib: u64,
    /// What to do.
    pub action: Action,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// The size the VM has after this decision is applied.
    pub fn applied_kib(&self, current_kib: u64) -> u64 {
        match self.action {
            Action::Grow | Action::Shrink => self.target_kib,
            Action::Hold | Action::Skip => current_kib,
        }
    }

    /// True when the balloon is to be set.
    pub fn resizes(&self) -> bool {
        matches!(self.action, Action::Grow | Action::Shrink)
    }
}

/// The whole pass's plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Savings × share, in KiB.
    pub pool_kib: u64,
    /// What is handed out after the host guard, in KiB.
    pub budget_kib: u64,
    /// The bonuses the managed VMs hold now (above their floors), in KiB.
    pub bonus_now_kib: u64,
    /// MemAvailable is under the reserve: nothing grows.
    pub under_reserve: bool,
    /// How many VMs take part in the split.
    pub managed: usize,
    /// One decision per input VM, in input order.
    pub decisions: Vec<Decision>,
}

/// Divides `pool` among slots with capacity `caps` and weights `weights`,
/// filling the smallest capacity-per-weight first so that what a slot cannot
/// take goes to the others. Each slot gets at most its cap; the total is at
/// most `pool`.
pub fn water_fill(pool: u64, caps: &[u64], weights: &[u64]) -> Vec<u64> {
    assert_eq!(caps.len(), weights.len());
    let weights: Vec<u128> = weights.iter().map(|&w| u128::from(w.max(1))).collect();
    let mut order: Vec<usize> = (0..caps.len()).collect();
    // Ascending cap/weight, compared without division.
    order.sort_by(|&a, &b| {
        (u128::from(caps[a]) * weights[b])
            .cmp(&(u128::from(caps[b]) * weights[a]))
            .then(a.cmp(&b))
    });
    let mut left = u128::from(pool);
    let mut weight_left: u128 = weights.iter().sum();
    let mut out = vec![0u64; caps.len()];
    for i in order {
        let fair = left * weights[i] / weight_left.max(1);
        let give = fair.min(u128::from(caps[i]));
        out[i] = give as u64;
        left -= give;
        weight_left -= weights[i];
    }
    out
}

/// Works out every VM's target. Pure: same input, same output.
pub fn plan(policy: &Policy, host: &HostView, vms: &[VmView]) -> Plan {
    let share = if policy.share.is_finite() {
        policy.share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut decisions: Vec<Option<Decision>> = vec![None; vms.len()];
    let mut eligible = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        let skip = |reason| {
            Some(Decision {
                target_kib: vm.current_kib,
                action: Action::Skip,
                reason,
            })
        };
        decisions[i] = match vm.status {
            VmStatus::NoBalloon => skip(Reason::NoBalloon),
            VmStatus::NotRunning => skip(Reason::NotRunning),
            VmStatus::Managed if vm.floor_kib > vm.ceiling_kib => skip(Reason::BadBounds),
            VmStatus::Managed if vm.floor_kib == vm.ceiling_kib => skip(Reason::NoHeadroom),
            VmStatus::Managed => {
                eligible.push(i);
                None
            }
        };
    }

    let bonus_of = |vm: &VmView| vm.current_kib.clamp(vm.floor_kib, vm.ceiling_kib) - vm.floor_kib;
    let bonus_now: u64 = eligible.iter().map(|&i| bonus_of(&vms[i])).sum();
    let pool = if host.ksm_counters_live {
        (host.savings_kib as f64 * share).floor() as u64
    } else {
        0
    };
    let room = i128::from(host.available_kib) - i128::from(policy.reserve_kib);
    let guard_cap = (i128::from(bonus_now) + room).max(0) as u64;
    let under_reserve = room < 0;

    let (wanted, caps): (u64, Vec<u64>) = if host.ksm_counters_live {
        let caps = eligible
            .iter()
            .map(|&i| vms[i].ceiling_kib - vms[i].floor_kib)
            .collect();
        (pool, caps)
    } else {
        let caps = eligible.iter().map(|&i| bonus_of(&vms[i])).collect();
        (bonus_now, caps)
    };
    let budget = wanted.min(guard_cap);
    let guarded = budget < wanted;
    let weights: Vec<u64> = eligible
        .iter()
        .map(|&i| match policy.split {
            Split::Equal => 1,
            Split::Proportional => vms[i].floor_kib,
        })
        .collect();
    let alloc = water_fill(budget, &caps, &weights);

    for (k, &i) in eligible.iter().enumerate() {
        let vm = &vms[i];
        let headroom = vm.ceiling_kib - vm.floor_kib;
        let mut target = vm.floor_kib + alloc[k];
        let mut reason = if !host.ksm_counters_live {
            Reason::KsmStopped
        } else if guarded {
            Reason::HostGuard
        } else if alloc[k] == headroom && headroom > 0 {
            Reason::Ceiling
        } else {
            Reason::Share
        };
        let current_in_bounds = vm.current_kib.clamp(vm.floor_kib, vm.ceiling_kib);
        if under_reserve && target > current_in_bounds {
            target = current_in_bounds;
            reason = Reason::HostGuard;
        }
        if let Some(g) = policy.max_grow_kib {
            if target > vm.current_kib.saturating_add(g) {
                target = vm.current_kib.saturating_add(g);
                reason = Reason::StepLimit;
            }
        }
        if let Some(s) = policy.max_shrink_kib {
            if target.saturating_add(s) < vm.current_kib {
                target = vm.current_kib - s;
                reason = Reason::StepLimit;
            }
        }
        // Bounds win over everything above.
        let target = target.clamp(vm.floor_kib, vm.ceiling_kib);
        let out_of_bounds = vm.current_kib != current_in_bounds;
        let diff = target.abs_diff(vm.current_kib);
        let band = if target == vm.floor_kib {
            policy.deadband_kib.min(FLOOR_TOLERANCE_KIB)
        } else {
            policy.deadband_kib
        };
        let (action, reason) = if diff == 0 {
            (Action::Hold, Reason::Steady)
        } else if out_of_bounds {
            let a = if target > vm.current_kib {
                Action::Grow
            } else {
                Action::Shrink
            };
            (a, Reason::OutOfBounds)
        } else if diff <= band {
            (Action::Hold, Reason::Deadband)
        } else if target > vm.current_kib {
            (Action::Grow, reason)
        } else {
            (Action::Shrink, reason)
        };
        decisions[i] = Some(Decision {
            target_kib: target,
            action,
            reason,
        });
    }

    Plan {
        pool_kib: pool,
        budget_kib: budget,
        bonus_now_kib: bonus_now,
        under_reserve,
        managed: eligible.len(),
        decisions: decisions
            .into_iter()
            .map(|d| d.expect("every VM has a decision"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024;

    fn vm(floor: u64, ceiling: u64, current: u64) -> VmView {
        VmView {
            floor_kib: floor * MIB,
            ceiling_kib: ceiling * MIB,
            current_kib: current * MIB,
            status: VmStatus::Managed,
        }
    }

    fn host(savings_mib: u64) -> HostView {
        HostView {
            savings_kib: savings_mib * MIB,
            ksm_counters_live: true,
            available_kib: 64 * 1024 * MIB,
        }
    }

    fn targets_mib(p: &Plan) -> Vec<u64> {
        p.decisions.iter().map(|d| d.target_kib / MIB).collect()
    }

    #[test]
    fn equal_split_table() {
        // (savings MiB, [(floor, ceiling, current)], expected targets MiB)
        type Row<'a> = (u64, &'a [(u64, u64, u64)], &'a [u64]);
        let table: &[Row] = &[
            (0, &[(160, 256, 160), (160, 256, 160)], &[160, 160]),
            (
                60,
                &[(160, 256, 160), (160, 256, 160), (160, 256, 160)],
                &[180, 180, 180],
            ),
            // the paper's sizes: 2 GB floor, 2.25 GB ceiling, three VMs
            (300, &[(2048, 2304, 2048); 3], &[2148, 2148, 2148]),
            // more savings than headroom: everyone at the ceiling
            (10_000, &[(160, 256, 160), (160, 256, 160)], &[256, 256]),
            // water-filling: the small one fills, the rest goes to the big one
            (120, &[(160, 180, 160), (160, 400, 160)], &[180, 260]),
            (
                90,
                &[(100, 110, 100), (100, 120, 100), (100, 500, 100)],
                &[110, 120, 160],
            ),
        ];
        for (savings, vms, want) in table {
            let vms: Vec<_> = vms.iter().map(|&(f, c, cur)| vm(f, c, cur)).collect();
            let p = plan(&Policy::default(), &host(*savings), &vms);
            assert_eq!(&targets_mib(&p), want, "savings {savings} vms {vms:?}");
        }
    }

    #[test]
    fn share_scales_the_pool() {
        let policy = Policy {
            share: 0.5,
            ..Policy::default()
        };
        let p = plan(&policy, &host(60), &[vm(100, 200, 100), vm(100, 200, 100)]);
        assert_eq!(p.pool_kib, 30 * MIB);
        assert_eq!(targets_mib(&p), [115, 115]);
    }

    #[test]
    fn proportional_split() {
        let policy = Policy {
            split: Split::Proportional,
            ..Policy::default()
        };
        let p = plan(
            &policy,
            &host(90),
            &[vm(100, 1000, 100), vm(200, 1000, 200)],
        );
        assert_eq!(targets_mib(&p), [130, 260]);
    }

    #[test]
    fn shrinks_when_savings_fall() {
        let vms = [vm(160, 256, 200), vm(160, 256, 200)];
        let p = plan(&Policy::default(), &host(20), &vms);
        assert_eq!(targets_mib(&p), [170, 170]);
        assert!(p.decisions.iter().all(|d| d.action == Action::Shrink));
        let p = plan(&Policy::default(), &host(0), &vms);
        assert_eq!(targets_mib(&p), [160, 160]);
    }

    #[test]
    fn floors_are_never_crossed() {
        // current below the floor (someone shrank it by hand): back to the floor
        let p = plan(&Policy::default(), &host(0), &[vm(160, 256, 100)]);
        assert_eq!(p.decisions[0].target_kib, 160 * MIB);
        assert_eq!(p.decisions[0].action, Action::Grow);
        assert_eq!(p.decisions[0].reason, Reason::OutOfBounds);
    }

    #[test]
    fn deadband_and_floor_snap() {
        let policy = Policy {
            deadband_kib: 8 * MIB,
            ..Policy::default()
        };
        // 5 MiB move: inside the 8 MiB deadband
        let p = plan(&policy, &host(30), &[vm(100, 200, 125)]);
        assert_eq!(p.decisions[0].action, Action::Hold);
        assert_eq!(p.decisions[0].reason, Reason::Deadband);
        // but a return to the floor from 3 MiB above it is applied
        let p = plan(&policy, &host(0), &[vm(100, 200, 103)]);
        assert_eq!(p.decisions[0].action, Action::Shrink);
        // and within the floor tolerance it is not
        let mut v = vm(100, 200, 100);
        v.current_kib += 512;
        let p = plan(&policy, &host(0), &[v]);
        assert_eq!(p.decisions[0].action, Action::Hold);
    }

    #[test]
    fn steady_is_hold() {
        let p = plan(
            &Policy::default(),
            &host(40),
            &[vm(100, 200, 120), vm(100, 200, 120)],
        );
        assert!(p
            .decisions
            .iter()
            .all(|d| d.action == Action::Hold && d.reason == Reason::Steady));
    }

    #[test]
    fn guard_under_reserve_shrinks_and_never_grows() {
        let policy = Policy {
            reserve_kib: 1000 * MIB,
            ..Policy::default()
        };
        // 900 MiB available, 1000 reserve: 100 MiB short. Bonuses now 60+60.
        let h = HostView {
            savings_kib: 500 * MIB,
            ksm_counters_live: true,
            available_kib: 900 * MIB,
        };
        let p = plan(
            &policy,
            &h,
            &[vm(100, 300, 160), vm(100, 300, 160), vm(100, 300, 100)],
        );
        assert!(p.under_reserve);
        assert_eq!(p.budget_kib, 20 * MIB);
        // the budget of 20 would give each 6.67; nobody grows, the two shrink
        let t = targets_mib(&p);
        assert!(t[0] < 160 && t[1] < 160, "{t:?}");
        assert_eq!(t[2], 100);
        assert!(p.decisions.iter().all(|d| d.action != Action::Grow));
    }

    #[test]
    fn guard_above_reserve_caps_growth_at_the_room() {
        let policy = Policy {
            reserve_kib: 1000 * MIB,
            ..Policy::default()
        };
        let h = HostView {
            savings_kib: 500 * MIB,
            ksm_counters_live: true,
            available_kib: 1040 * MIB,
        };
        let p = plan(&policy, &h, &[vm(100, 300, 100), vm(100, 300, 100)]);
        assert!(!p.under_reserve);
        assert_eq!(p.budget_kib, 40 * MIB);
        assert_eq!(targets_mib(&p), [120, 120]);
        assert_eq!(p.decisions[0].reason, Reason::HostGuard);
    }

    #[test]
    fn ksm_stopped_holds() {
        let h = HostView {
            ksm_counters_live: false,
            ..host(500)
        };
        let p = plan(
            &Policy::default(),
            &h,
            &[vm(100, 300, 150), vm(100, 300, 100)],
        );
        assert_eq!(targets_mib(&p), [150, 100]);
        assert!(p.decisions.iter().all(|d| d.action == Action::Hold));
    }

    #[test]
    fn step_limits() {
        let policy = Policy {
            max_grow_kib: Some(10 * MIB),
            max_shrink_kib: Some(5 * MIB),
            deadband_kib: 0,
            ..Policy::default()
        };
        let p = plan(&policy, &host(100), &[vm(100, 300, 100)]);
        assert_eq!(p.decisions[0].target_kib, 110 * MIB);
        assert_eq!(p.decisions[0].reason, Reason::StepLimit);
        let p = plan(&policy, &host(0), &[vm(100, 300, 150)]);
        assert_eq!(p.decisions[0].target_kib, 145 * MIB);
    }

    #[test]
    fn skipped_vms_keep_their_size_and_take_no_share() {
        let mut nb = vm(100, 300, 100);
        nb.status = VmStatus::NoBalloon;
        let mut paused = vm(100, 300, 120);
        paused.status = VmStatus::NotRunning;
        let vms = [vm(100, 100, 100), nb, paused, vm(100, 300, 100)];
        let p = plan(&Policy::default(), &host(60), &vms);
        let d = &p.decisions;
        assert_eq!(
            (d[0].action, d[0].reason),
            (Action::Skip, Reason::NoHeadroom)
        );
        assert_eq!(
            (d[1].action, d[1].reason),
            (Action::Skip, Reason::NoBalloon)
        );
        assert_eq!(
            (d[2].action, d[2].reason),
            (Action::Skip, Reason::NotRunning)
        );
        assert_eq!(d[2].target_kib, 120 * MIB);
        assert_eq!(d[3].target_kib, 160 * MIB);
        assert_eq!(p.managed, 1);
    }

    #[test]
    fn water_fill_basics() {
        assert_eq!(water_fill(90, &[10, 20, 400], &[1, 1, 1]), [10, 20, 60]);
        assert_eq!(water_fill(0, &[10, 20], &[1, 1]), [0, 0]);
        assert_eq!(water_fill(100, &[], &[]), Vec::<u64>::new());
        assert_eq!(water_fill(10, &[100, 100, 100], &[1, 1, 1]), [3, 3, 4]);
    }
}
