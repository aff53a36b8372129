//! Property tests of the policy: for any input, every target stays within
//! [floor, ceiling], the bonuses handed out never exceed the pool, nothing
//! grows under the reserve, skipped VMs keep their size, and the policy is
//! deterministic.

#![allow(clippy::unwrap_used)] // a test helper that fails should panic

use ksm_balloon::policy::{plan, Action, HostView, Policy, Split, VmStatus, VmView};
use proptest::prelude::*;

fn vm_strategy() -> impl Strategy<Value = VmView> {
    (1u64..1 << 24, 0u64..1 << 22, 0u64..1 << 25, 0u8..10).prop_map(
        |(floor, headroom, current, kind)| VmView {
            floor_kib: floor,
            ceiling_kib: floor + headroom,
            current_kib: current,
            status: match kind {
                0 => VmStatus::NoBalloon,
                1 => VmStatus::NotRunning,
                _ => VmStatus::Managed,
            },
        },
    )
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        0.0f64..=1.0,
        any::<bool>(),
        0u64..1 << 25,
        0u64..1 << 14,
        proptest::option::of(1u64..1 << 20),
        proptest::option::of(1u64..1 << 20),
    )
        .prop_map(|(share, eq, reserve, deadband, grow, shrink)| Policy {
            share,
            split: if eq {
                Split::Equal
            } else {
                Split::Proportional
            },
            reserve_kib: reserve,
            deadband_kib: deadband,
            max_grow_kib: grow,
            max_shrink_kib: shrink,
        })
}

fn host_strategy() -> impl Strategy<Value = HostView> {
    (0u64..1 << 26, any::<bool>(), 0u64..1 << 26).prop_map(|(s, m, a)| HostView {
        savings_kib: s,
        ksm_counters_live: m,
        available_kib: a,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn targets_within_bounds_and_skips_untouched(
        policy in policy_strategy(),
        host in host_strategy(),
        vms in proptest::collection::vec(vm_strategy(), 0..12),
    ) {
        let p = plan(&policy, &host, &vms);
        prop_assert_eq!(p.decisions.len(), vms.len());
        for (vm, d) in vms.iter().zip(&p.decisions) {
            let managed = vm.status == VmStatus::Managed && vm.floor_kib < vm.ceiling_kib;
            if managed {
                prop_assert!(d.target_kib >= vm.floor_kib, "{vm:?} {d:?}");
                prop_assert!(d.target_kib <= vm.ceiling_kib, "{vm:?} {d:?}");
                // what the VM ends up with after this pass is inside its bounds
                // whenever it started inside them
                if (vm.floor_kib..=vm.ceiling_kib).contains(&vm.current_kib) {
                    let after = d.applied_kib(vm.current_kib);
                    prop_assert!(after >= vm.floor_kib && after <= vm.ceiling_kib);
                } else {
                    prop_assert!(d.resizes(), "out of bounds must be corrected: {vm:?} {d:?}");
                }
            } else {
                prop_assert_eq!(d.action, Action::Skip);
                prop_assert_eq!(d.target_kib, vm.current_kib);
            }
        }
    }

    #[test]
    fn bonuses_never_exceed_the_pool(
        policy in policy_strategy(),
        host in host_strategy(),
        vms in proptest::collection::vec(vm_strategy(), 0..12),
    ) {
        // Per-pass shrink limits may keep a bonus above a fallen pool for a
        // while; without them the handed-out sum is at most the pool.
        let policy = Policy { max_shrink_kib: None, ..policy };
        let p = plan(&policy, &host, &vms);
        let sum: u64 = vms.iter().zip(&p.decisions)
            .filter(|(v, d)| d.action != Action::Skip && v.current_kib >= v.floor_kib)
            .map(|(v, d)| d.target_kib - v.floor_kib)
            .sum();
        prop_assert!(sum <= p.budget_kib, "sum {sum} budget {}", p.budget_kib);
        prop_assert!(p.budget_kib <= p.pool_kib || !host.ksm_counters_live);
    }

    #[test]
    fn nothing_grows_under_the_reserve(
        policy in policy_strategy(),
        host in host_strategy(),
        short in 1u64..1 << 22,
        vms in proptest::collection::vec(vm_strategy(), 0..12),
    ) {
        let policy = Policy { reserve_kib: host.available_kib + short, ..policy };
        let p = plan(&policy, &host, &vms);
        prop_assert!(p.under_reserve);
        for (vm, d) in vms.iter().zip(&p.decisions) {
            // growth only to climb back up to the floor
            prop_assert!(d.target_kib <= vm.current_kib.max(vm.floor_kib), "{vm:?} {d:?}");
        }
    }

    #[test]
    fn step_limits_hold_inside_the_bounds(
        policy in policy_strategy(),
        host in host_strategy(),
        vms in proptest::collection::vec(vm_strategy(), 0..12),
    ) {
        let p = plan(&policy, &host, &vms);
        for (vm, d) in vms.iter().zip(&p.decisions) {
            if !d.resizes() || !(vm.floor_kib..=vm.ceiling_kib).contains(&vm.current_kib) {
                continue;
            }
            if let Some(g) = policy.max_grow_kib {
                prop_assert!(d.target_kib <= vm.current_kib + g);
            }
            if let Some(s) = policy.max_shrink_kib {
                prop_assert!(d.target_kib + s >= vm.current_kib);
            }
        }
    }

    #[test]
    fn deterministic_and_order_independent_for_equal_vms(
        policy in policy_strategy(),
        host in host_strategy(),
        vms in proptest::collection::vec(vm_strategy(), 0..12),
    ) {
        let a = plan(&policy, &host, &vms);
        let b = plan(&policy, &host, &vms);
        prop_assert_eq!(&a, &b);
        let mut rev = vms.clone();
        rev.reverse();
        let r = plan(&policy, &host, &rev);
        prop_assert_eq!(a.budget_kib, r.budget_kib);
        prop_assert_eq!(a.managed, r.managed);
    }

    #[test]
    fn equal_split_is_equal_when_no_one_is_capped(
        savings in 0u64..1 << 20,
        n in 1usize..8,
        floor in 1u64..1 << 20,
    ) {
        let vms = vec![VmView { floor_kib: floor, ceiling_kib: floor + (1 << 21), current_kib: floor, status: VmStatus::Managed }; n];
        let host = HostView { savings_kib: savings, ksm_counters_live: true, available_kib: u64::MAX / 4 };
        let p = plan(&Policy { deadband_kib: 0, ..Policy::default() }, &host, &vms);
        let bonuses: Vec<u64> = p.decisions.iter().map(|d| d.target_kib - floor).collect();
        let min = *bonuses.iter().min().unwrap();
        let max = *bonuses.iter().max().unwrap();
        // integer KiB rounding: at most one KiB apart, nothing lost beyond n-1 KiB
        prop_assert!(max - min <= 1, "{bonuses:?}");
        prop_assert!(savings - bonuses.iter().sum::<u64>() < n as u64);
    }
}
