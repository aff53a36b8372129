//! Each VM's part of what KSM saved, worked out from the kernel's
//! per-process figures so that the parts of all processes add up to the
//! host-wide savings by the chosen metric. Pure: plain numbers in, parts out.
//!
//! How the kernel counts (mm/ksm.c, `stable_tree_append` and the removal
//! paths; the same from Linux 6.4 to at least 6.18): a KSM page mapped at k
//! places (k rmap items, from one process or several) adds 1 to
//! `pages_shared`, k − 1 to `pages_sharing`, and 1 to the
//! `ksm_merging_pages` of the process owning each of the k places. So, summed
//! over all processes, `Σ ksm_merging_pages = pages_shared + pages_sharing`;
//! `Σ ksm_zero_pages = ksm_zero_pages`; and since `ksm_process_profit` is
//! `(merging + zero) × page − rmap_items × sizeof(rmap_item)` while
//! `general_profit` is `(pages_sharing + ksm_zero_pages) × page −
//! ksm_rmap_items × sizeof(rmap_item)`, `Σ ksm_process_profit − pages_shared
//! × page = general_profit`. tests/realstack/ksm-sums.sh checks all three on
//! the running kernel.
//!
//! A process's `ksm_merging_pages` does not say how many mappers its KSM
//! pages have, so each of its merging pages is given the host's average:
//! with `r = pages_sharing / (pages_shared + pages_sharing)`, a process's part
//! is `merging × r + zero` pages by `sharing`, `merging × (1 − r)` by
//! `shared`, and `ksm_process_profit − merging × (1 − r) × page` bytes by
//! `profit`. The parts add up to the host's figure exactly; one process's
//! part is exact when all KSM pages have the same number of mappers, and
//! otherwise leans toward the average. docs/DESIGN.md ("Whose savings") has
//! the derivation and the kernel's definitions.

use serde::Serialize;

use crate::ksm::{KsmCounters, Metric};
use crate::procksm::KsmStat;

/// The host-wide counters the attribution needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostFigures {
    /// `pages_shared`: KSM pages in use.
    pub pages_shared: u64,
    /// `pages_sharing`: further places mapping them (pages saved).
    pub pages_sharing: u64,
    /// `ksm_zero_pages` (0 where the kernel lacks it).
    pub zero_pages: u64,
    /// `general_profit` in bytes, where the kernel has it.
    pub general_profit: Option<i64>,
    /// Page size in bytes.
    pub page_size: u64,
}

impl HostFigures {
    /// The figures of one reading of `/sys/kernel/mm/ksm`.
    pub fn from_counters(c: &KsmCounters) -> HostFigures {
        HostFigures {
            pages_shared: c.pages_shared,
            pages_sharing: c.pages_sharing,
            zero_pages: c.ksm_zero_pages.unwrap_or(0),
            general_profit: c.general_profit,
            page_size: c.page_size,
        }
    }

    /// `auto` resolved as [`KsmCounters::savings`] resolves it.
    pub fn resolve(&self, metric: Metric) -> Metric {
        match metric {
            Metric::Auto if self.general_profit.is_some() => Metric::Profit,
            Metric::Auto => Metric::Sharing,
            m => m,
        }
    }

    /// The host-wide savings by `metric` in bytes (signed: `general_profit`
    /// can be negative).
    pub fn savings_bytes(&self, metric: Metric) -> Result<i128, AttributionError> {
        let page = i128::from(self.page_size);
        Ok(match self.resolve(metric) {
            Metric::Profit => {
                i128::from(self.general_profit.ok_or(AttributionError::NoProfit {
                    what: "general_profit",
                })?)
            }
            Metric::Sharing => {
                (i128::from(self.pages_sharing) + i128::from(self.zero_pages)) * page
            }
            Metric::Shared => i128::from(self.pages_shared) * page,
            Metric::Auto => unreachable!("resolved above"),
        })
    }
}

/// One process's figures, as the attribution needs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessFigures {
    /// `ksm_merging_pages`.
    pub merging_pages: u64,
    /// `ksm_zero_pages` (0 where the kernel lacks it).
    pub zero_pages: u64,
    /// `ksm_process_profit` in bytes, where the kernel has it.
    pub process_profit: Option<i64>,
}

impl ProcessFigures {
    /// From a parsed `ksm_stat`; `None` when it lacks `ksm_merging_pages`
    /// (a kernel before 5.19, or a process without an address space).
    pub fn from_stat(s: &KsmStat) -> Option<ProcessFigures> {
        Some(ProcessFigures {
            merging_pages: s.merging_pages?,
            zero_pages: s.zero_pages.unwrap_or(0),
            process_profit: s.process_profit,
        })
    }
}

/// Why an attribution cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttributionError {
    /// `profit` needs `general_profit` and `ksm_process_profit` (Linux 6.4).
    #[error(
        "metric 'profit' needs {what}, which this kernel does not print (Linux 6.4 or later does)"
    )]
    NoProfit {
        /// The missing figure.
        what: &'static str,
    },
}

/// The bytes `p`'s part of the host's savings by `metric` comes to; signed
/// for `profit` (a process whose rmap items cost more than its merges save
/// has a negative part).
pub fn part_bytes(
    host: &HostFigures,
    metric: Metric,
    p: &ProcessFigures,
) -> Result<i128, AttributionError> {
    let page = i128::from(host.page_size);
    let merged = i128::from(host.pages_shared) + i128::from(host.pages_sharing);
    let m = i128::from(p.merging_pages);
    // merging × share / merged, in bytes, floored (or rounded up, for what
    // is taken away, so that every part is floored); 0 when nothing is merged.
    let of = |share: u64, up: bool| {
        if merged == 0 {
            0
        } else {
            (m * i128::from(share) * page + if up { merged - 1 } else { 0 }) / merged
        }
    };
    Ok(match host.resolve(metric) {
        Metric::Sharing => of(host.pages_sharing, false) + i128::from(p.zero_pages) * page,
        Metric::Shared => of(host.pages_shared, false),
        Metric::Profit => {
            if host.general_profit.is_none() {
                return Err(AttributionError::NoProfit {
                    what: "general_profit",
                });
            }
            let profit = p.process_profit.ok_or(AttributionError::NoProfit {
                what: "ksm_process_profit in /proc/<pid>/ksm_stat",
            })?;
            // The kernel's process profit counts every merging page as
            // saved; one copy of each KSM page is kept, and this process's
            // share of the kept copies is its merging × (1 − r).
            i128::from(profit) - of(host.pages_shared, true)
        }
        Metric::Auto => unreachable!("resolved above"),
    })
}

/// Each VM's part of the host's savings, and what is not the VMs'.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// The metric used (`auto` resolved).
    pub metric: Metric,
    /// The host-wide savings by that metric, KiB (negative only for a
    /// negative `general_profit`).
    pub host_kib: i64,
    /// Each VM's part, KiB, in the order the VMs were given.
    pub vm_kib: Vec<i64>,
    /// The VMs' parts together.
    pub vms_kib: i64,
    /// `host_kib − vms_kib`: what other processes saved plus what no live
    /// process accounts for (pages of a process that exited, not yet
    /// dropped by ksmd; drift between the reads).
    pub non_vm_kib: i64,
    /// The parts of the other processes read, together, when they were
    /// read ([`crate::procksm::read_all`]).
    pub others_kib: Option<i64>,
}

fn kib(bytes: i128) -> i64 {
    i64::try_from(bytes.div_euclid(1024)).unwrap_or(if bytes < 0 { i64::MIN } else { i64::MAX })
}

/// Attributes the host's savings by `metric` to the VMs' QEMU processes
/// `vms` (and sums the parts of `others`, the non-VM processes, when given).
/// Parts are floored to KiB; `non_vm_kib` takes the rest, so `vms_kib +
/// non_vm_kib = host_kib` exactly.
pub fn attribute(
    host: &HostFigures,
    metric: Metric,
    vms: &[ProcessFigures],
    others: Option<&[ProcessFigures]>,
) -> Result<Attribution, AttributionError> {
    let host_kib = kib(host.savings_bytes(metric)?);
    let vm_kib = vms
        .iter()
        .map(|p| part_bytes(host, metric, p).map(kib))
        .collect::<Result<Vec<_>, _>>()?;
    let vms_kib: i64 = vm_kib.iter().sum();
    let others_kib = match others {
        Some(o) => Some(kib(o
            .iter()
            .map(|p| part_bytes(host, metric, p))
            .sum::<Result<i128, _>>()?)),
        None => None,
    };
    Ok(Attribution {
        metric: host.resolve(metric),
        host_kib,
        vm_kib,
        vms_kib,
        non_vm_kib: host_kib - vms_kib,
        others_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PAGE: u64 = 4096;
    // sizeof(struct ksm_rmap_item) on x86_64, as the kernel subtracts it.
    const RMAP: i64 = 64;

    /// A process's figures as the kernel would print them.
    fn proc_fig(merging: u64, zero: u64, rmap: u64) -> ProcessFigures {
        ProcessFigures {
            merging_pages: merging,
            zero_pages: zero,
            process_profit: Some((merging + zero) as i64 * PAGE as i64 - rmap as i64 * RMAP),
        }
    }

    /// Host counters as the kernel keeps them, for KSM pages given as lists
    /// of owning processes (one entry per mapping) and zero pages and rmap
    /// items per process.
    fn kernel(
        nodes: &[Vec<usize>],
        zero: &[u64],
        rmap: &[u64],
    ) -> (HostFigures, Vec<ProcessFigures>) {
        let n = zero.len();
        let mut merging = vec![0u64; n];
        let (mut shared, mut sharing) = (0, 0);
        for mappers in nodes {
            shared += 1;
            sharing += mappers.len() as u64 - 1;
            for &p in mappers {
                merging[p] += 1;
            }
        }
        let z: u64 = zero.iter().sum();
        let r: u64 = rmap.iter().sum();
        let host = HostFigures {
            pages_shared: shared,
            pages_sharing: sharing,
            zero_pages: z,
            general_profit: Some((sharing + z) as i64 * PAGE as i64 - r as i64 * RMAP),
            page_size: PAGE,
        };
        let procs = (0..n)
            .map(|i| proc_fig(merging[i], zero[i], rmap[i]))
            .collect();
        (host, procs)
    }

    #[test]
    fn two_processes_sharing_page_for_page_each_get_half() {
        // 4096 KSM pages, each mapped once by process 0 and once by 1.
        let nodes: Vec<Vec<usize>> = (0..4096).map(|_| vec![0, 1]).collect();
        let (host, procs) = kernel(&nodes, &[0, 0, 0], &[4096, 4096, 4096]);
        let a = attribute(&host, Metric::Sharing, &procs[..2], Some(&procs[2..])).unwrap();
        assert_eq!(a.host_kib, 4096 * 4);
        assert_eq!(a.vm_kib, vec![2048 * 4, 2048 * 4]);
        assert_eq!(a.non_vm_kib, 0);
        assert_eq!(a.others_kib, Some(0));
        let a = attribute(&host, Metric::Shared, &procs[..2], None).unwrap();
        assert_eq!(a.vm_kib, vec![2048 * 4, 2048 * 4]);
        // Profit: half the saving each, less each one's own rmap items.
        let a = attribute(&host, Metric::Profit, &procs[..2], Some(&procs[2..])).unwrap();
        assert_eq!(a.vm_kib, vec![2048 * 4 - 256, 2048 * 4 - 256]);
        // The third process scanned 4096 unique pages: its rmap items cost.
        assert_eq!(a.others_kib, Some(-256));
        assert_eq!(a.non_vm_kib, -256);
    }

    // Measured on this machine (Linux 6.18) by tests/realstack/ksm-sums.sh:
    // a pair sharing 4096 pages, 4096 unique pages, 1024 copies of one page
    // (max_page_sharing 256: 4 KSM pages), 1024 KSM zero pages.
    fn measured() -> (HostFigures, Vec<ProcessFigures>) {
        let host = HostFigures {
            pages_shared: 4100,
            pages_sharing: 5116,
            zero_pages: 1024,
            general_profit: Some(24295872),
            page_size: PAGE,
        };
        let p = |m, z, profit| ProcessFigures {
            merging_pages: m,
            zero_pages: z,
            process_profit: Some(profit),
        };
        let procs = vec![
            p(4096, 0, 16515072),
            p(4096, 0, 16513472),
            p(0, 0, -262144),
            p(1024, 0, 4128768),
            p(0, 1024, 4194304),
        ];
        (host, procs)
    }

    #[test]
    fn measured_figures_add_up_by_every_metric() {
        let (host, procs) = measured();
        for metric in [Metric::Profit, Metric::Sharing, Metric::Shared] {
            let total: i128 = procs
                .iter()
                .map(|p| part_bytes(&host, metric, p).unwrap())
                .sum();
            let want = host.savings_bytes(metric).unwrap();
            // Each part is floored to a byte: at most one byte short each.
            assert!(
                want - total >= 0 && want - total < procs.len() as i128,
                "{metric}: {total} vs {want}"
            );
        }
        let a = attribute(&host, Metric::Auto, &procs[..2], Some(&procs[2..])).unwrap();
        assert_eq!(a.metric, Metric::Profit);
        assert_eq!(a.host_kib, 24295872 / 1024);
        assert_eq!(a.vms_kib + a.non_vm_kib, a.host_kib);
        // The pair's parts (8838 KiB each) lean above the exact 8192 − 64
        // because the repeated page's 256 mappers raise the host's average.
        assert_eq!(a.vm_kib, vec![8839, 8837]);
        let others = a.others_kib.unwrap();
        assert!((a.non_vm_kib - others).abs() <= 2, "{a:?}");
    }

    #[test]
    fn nothing_merged_leaves_only_zero_pages() {
        let host = HostFigures {
            zero_pages: 10,
            general_profit: Some(10 * 4096),
            page_size: PAGE,
            ..HostFigures::default()
        };
        let p = proc_fig(0, 10, 0);
        assert_eq!(part_bytes(&host, Metric::Sharing, &p).unwrap(), 10 * 4096);
        assert_eq!(part_bytes(&host, Metric::Shared, &p).unwrap(), 0);
        assert_eq!(part_bytes(&host, Metric::Profit, &p).unwrap(), 10 * 4096);
    }

    #[test]
    fn profit_on_a_kernel_without_it() {
        let host = HostFigures {
            pages_shared: 1,
            pages_sharing: 1,
            page_size: PAGE,
            ..HostFigures::default()
        };
        assert_eq!(host.resolve(Metric::Auto), Metric::Sharing);
        let p = ProcessFigures {
            merging_pages: 2,
            ..ProcessFigures::default()
        };
        let e = attribute(&host, Metric::Profit, &[p], None).unwrap_err();
        assert!(e.to_string().contains("general_profit"), "{e}");
        let host = HostFigures {
            general_profit: Some(0),
            ..host
        };
        let e = attribute(&host, Metric::Profit, &[p], None).unwrap_err();
        assert!(e.to_string().contains("ksm_process_profit"), "{e}");
        assert_eq!(
            attribute(&host, Metric::Sharing, &[p], None)
                .unwrap()
                .vm_kib,
            vec![4]
        );
    }

    #[test]
    fn from_stat_needs_merging_pages() {
        let s = KsmStat {
            rmap_items: Some(3),
            ..KsmStat::default()
        };
        assert_eq!(ProcessFigures::from_stat(&s), None);
        let s = KsmStat {
            merging_pages: Some(5),
            process_profit: Some(-1),
            ..s
        };
        assert_eq!(
            ProcessFigures::from_stat(&s),
            Some(ProcessFigures {
                merging_pages: 5,
                zero_pages: 0,
                process_profit: Some(-1)
            })
        );
    }

    fn nodes_strategy() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<u64>, Vec<u64>)> {
        (1usize..6).prop_flat_map(|n| {
            (
                prop::collection::vec(prop::collection::vec(0..n, 2..8), 0..60),
                prop::collection::vec(0u64..50, n),
                prop::collection::vec(0u64..500, n),
            )
        })
    }

    proptest! {
        /// Whatever the KSM pages and their mappers, the parts of all
        /// processes add up to the host's savings by every metric (to the
        /// byte lost to flooring each part).
        #[test]
        fn parts_add_up_to_the_host((nodes, zero, rmap) in nodes_strategy()) {
            let (host, procs) = kernel(&nodes, &zero, &rmap);
            for metric in [Metric::Profit, Metric::Sharing, Metric::Shared] {
                let total: i128 = procs.iter().map(|p| part_bytes(&host, metric, p).unwrap()).sum();
                let want = host.savings_bytes(metric).unwrap();
                prop_assert!(want - total >= 0 && want - total < procs.len() as i128,
                    "{}: {} vs {}", metric, total, want);
                let a = attribute(&host, metric, &procs, None).unwrap();
                prop_assert_eq!(a.vms_kib + a.non_vm_kib, a.host_kib);
            }
        }

        /// When every KSM page has the same number of mappers k, each
        /// process's part is exact: (k − 1)/k of its merging pages saved.
        #[test]
        fn uniform_sharing_is_exact(k in 2usize..6, pages in 1usize..40, n in 1usize..5, seed in 0usize..1000) {
            let nodes: Vec<Vec<usize>> = (0..pages)
                .map(|i| (0..k).map(|j| (i * 7 + j * 3 + seed) % n).collect())
                .collect();
            let (host, procs) = kernel(&nodes, &vec![0; n], &vec![0; n]);
            for p in &procs {
                let exact = i128::from(p.merging_pages) * (k as i128 - 1) * 4096 / k as i128;
                prop_assert_eq!(part_bytes(&host, Metric::Sharing, p).unwrap(), exact);
            }
        }
    }
}
