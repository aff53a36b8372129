//! A metrics input with every kind of figure and the label values that need
//! escaping, numbered by a generation `n` so a reader can tell which write
//! a scrape saw: every VM's current size is its floor plus `n` KiB, the
//! resize counter is `n`, the pass ran at `BASE_TIME + n`. Shared by
//! tests/metrics.rs, tests/grafana.rs and examples/metrics_writer.rs (which
//! tests/metrics/node-exporter.sh runs).
#![allow(dead_code)]

use ksm_balloon::metrics::{
    Counters, HostFigures, MetricsInput, PassFigures, SavingsFigure, VmFigures,
};

/// The pass time of generation 0.
pub const BASE_TIME: u64 = 1_700_000_000;

/// The domain names written: plain, and with each character the text format
/// escapes (double quote, backslash, line feed), and non-ASCII.
pub const NAMES: [&str; 5] = [
    "web1",
    "db \"primary\"",
    "back\\slash",
    "two\nlines",
    "ünïcode 名前",
];

/// Generation `n` of the sample.
pub fn sample(n: u64) -> MetricsInput {
    let vms = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let floor = 160 * 1024 + i as u64 * 1024;
            VmFigures {
                name: name.to_string(),
                uuid: format!("00000000-0000-4000-8000-{:012x}", i + 1),
                floor_kib: floor,
                ceiling_kib: 256 * 1024,
                current_kib: floor + n,
                target_kib: floor + 2 * n,
                bonus_kib: 2 * n,
                held: i == 1,
            }
        })
        .collect();
    MetricsInput {
        host: Some(HostFigures {
            savings: ["profit", "sharing", "shared"]
                .iter()
                .enumerate()
                .map(|(i, m)| SavingsFigure {
                    metric: m.to_string(),
                    kib: 60_000 + n + i as u64,
                })
                .collect(),
            metric_in_use: "profit".into(),
            pool_kib: 60_000 + n,
            budget_kib: 50_000 + n,
            reserve_kib: 100_000,
            available_kib: 2_000_000 - n,
            lent_kib: 40_000 + n,
            ksmd_cpu_seconds: Some(1117.66 + n as f64),
            ksmd_cpu_ratio: Some(0.25),
            ksm_pages_scanned: Some(745_532_482 + n),
            ksm_full_scans: n,
            ksm_managed: n % 2 == 0,
            ksm_stepped_back: n % 2 == 1,
            ksm_pages_to_scan: Some(64 + n),
        }),
        vms,
        counters: Counters {
            resizes: n,
            resize_failures: n / 10,
            last_success_at: Some(BASE_TIME + n),
        },
        pass: PassFigures {
            at: BASE_TIME + n,
            duration_seconds: 0.001 * (n % 100) as f64,
            success: true,
        },
    }
}
