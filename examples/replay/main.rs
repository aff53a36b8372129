//! Replays a KSM savings trace through the pure policy, with and without
//! the holding window, and prints the resizes, the memory-seconds lent and
//! the host guard's margin (issue 13, "lend only what holds").
//!
//! `cargo run --release --example replay -- [TRACE.csv] [--vms N] [--reserve MIB]`:
//! TRACE.csv holds `t,savings_kib,available_kib` lines, one per pass (as
//! bench/record-savings.sh writes them); without it a synthetic trace
//! (seeded) is used. Prints a table, one row per window.

use std::process::ExitCode;

use ksm_balloon::policy::Policy;

mod sim;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut trace_path = None;
    let mut vms = 3u64;
    let mut reserve_mib = 0u64;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--vms" => {
                vms = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(3);
                i += 2;
            }
            "--reserve" => {
                reserve_mib = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(0);
                i += 2;
            }
            p => {
                trace_path = Some(p.to_string());
                i += 1;
            }
        }
    }
    let (name, trace) = match &trace_path {
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| sim::parse_csv(&t))
        {
            Ok(t) => (p.clone(), t),
            Err(e) => {
                eprintln!("replay: {p}: {e}");
                return ExitCode::from(2);
            }
        },
        None => (
            "synthetic (seed 1, 1 h, 10 s)".to_string(),
            sim::synthetic(1, 3600, 10),
        ),
    };
    let guests: Vec<(u64, u64)> = (0..vms).map(|_| (160 << 10, 256 << 10)).collect();
    let policy = Policy {
        reserve_kib: reserve_mib << 10,
        ..Policy::default()
    };
    let secs = trace.last().map_or(0, |p| p.t) - trace.first().map_or(0, |p| p.t);
    println!(
        "trace: {name}: {} passes over {} s; {vms} VMs 160/256 MiB; reserve {reserve_mib} MiB",
        trace.len(),
        secs
    );
    println!(
        "{:>8} {:>8} {:>10} {:>16} {:>12} {:>12} {:>9}",
        "window", "resizes", "per hour", "lent MiB*s", "mean MiB", "min margin", "breaches"
    );
    for window in [0u64, 30, 60, 120] {
        let o = sim::replay(&trace, &guests, &policy, window);
        let hours = secs.max(1) as f64 / 3600.0;
        println!(
            "{:>7}s {:>8} {:>10.0} {:>16.0} {:>12.1} {:>11.1}M {:>9}",
            window,
            o.resizes,
            o.resizes as f64 / hours,
            o.lent_kib_seconds as f64 / 1024.0,
            o.lent_kib_seconds as f64 / 1024.0 / secs.max(1) as f64,
            o.min_headroom_kib as f64 / 1024.0,
            o.guard_breaches
        );
    }
    ExitCode::SUCCESS
}
