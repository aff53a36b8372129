//! The savings-trace replay behind `examples/replay`: a trace of KSM
//! savings and host MemAvailable, taken every pass, run through the pure
//! policy (with and without the holding window), balloons reaching their
//! targets at once, every bonus assumed used by its guest. It counts the
//! resizes, the memory-seconds lent, and any pass that left the host under
//! its reserve after growing a VM (a guard breach).
#![allow(dead_code)]

use ksm_balloon::pass::lend::hold;
use ksm_balloon::policy::{self, GuestView, HostView, Policy, VmStatus, VmView};

/// One pass of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// Seconds since the trace's start.
    pub t: u64,
    /// KSM's savings, KiB.
    pub savings_kib: u64,
    /// The host's MemAvailable with nothing lent, KiB.
    pub available_kib: u64,
}

/// Parses `t,savings_kib,available_kib` lines (a header line and `#`
/// comments are skipped).
pub fn parse_csv(text: &str) -> Result<Vec<Point>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('t') {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let num = |i: usize| -> Result<u64, String> {
            f.get(i)
                .ok_or_else(|| format!("line {}: {} fields, want 3", n + 1, f.len()))?
                .parse()
                .map_err(|_| format!("line {}: {:?} is not a number", n + 1, f[i]))
        };
        out.push(Point {
            t: num(0)?,
            savings_kib: num(1)?,
            available_kib: num(2)?,
        });
    }
    Ok(out)
}

/// A synthetic trace, one point every `step` s for `secs` s: savings
/// around 140 MiB wandering by a few MiB a pass (KSM scanning, guests
/// writing), with a peak of +40 MiB lasting one or two passes now and then,
/// and a slow collapse and recovery; MemAvailable steady. xorshift, seeded.
pub fn synthetic(seed: u64, secs: u64, step: u64) -> Vec<Point> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11
    };
    let mib = 1024u64;
    let mut level: i64 = 140 * 1024;
    let mut peak_left = 0;
    (0..secs / step)
        .map(|i| {
            let t = i * step;
            level += (rnd() % (6 * mib)) as i64 - 3 * 1024;
            level = level.clamp(60 * 1024, 200 * 1024);
            if peak_left == 0 && rnd() % 12 == 0 {
                peak_left = 1 + rnd() % 2;
            }
            let peak = if peak_left > 0 {
                peak_left -= 1;
                40 * mib
            } else {
                0
            };
            // a collapse to a third between 40 % and 55 % of the trace
            let phase = t * 100 / secs.max(1);
            let factor = if (40..55).contains(&phase) { 1 } else { 3 };
            Point {
                t,
                savings_kib: (level as u64 * factor / 3) + peak,
                available_kib: 2 << 20,
            }
        })
        .collect()
}

/// What a replay came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Passes run.
    pub passes: u32,
    /// Resize calls made.
    pub resizes: u32,
    /// Memory lent over time, KiB × s.
    pub lent_kib_seconds: u128,
    /// The most lent at once, KiB.
    pub max_lent_kib: u64,
    /// The host's lowest MemAvailable above its reserve after a pass, KiB
    /// (negative: under it).
    pub min_headroom_kib: i64,
    /// Passes that grew a VM and left the host under its reserve.
    pub guard_breaches: u32,
}

/// Replays `trace` for `vms` (floor, ceiling) VMs under `policy`, lending
/// what held over `window_secs`.
pub fn replay(trace: &[Point], vms: &[(u64, u64)], policy: &Policy, window_secs: u64) -> Outcome {
    let mut sizes: Vec<u64> = vms.iter().map(|&(f, _)| f).collect();
    let mut seen = Vec::new();
    let mut out = Outcome {
        min_headroom_kib: i64::MAX,
        ..Outcome::default()
    };
    let mut prev_t = None;
    for p in trace {
        let lent: u64 = sizes.iter().zip(vms).map(|(s, &(f, _))| s - f).sum();
        if let Some(pt) = prev_t {
            out.lent_kib_seconds += u128::from(lent) * u128::from(p.t - pt);
        }
        prev_t = Some(p.t);
        let held = hold(&mut seen, p.savings_kib, p.t, window_secs);
        let views: Vec<VmView> = sizes
            .iter()
            .zip(vms)
            .map(|(&s, &(f, c))| {
                // a guest that can give back all it was lent
                VmView::new(f, c, s, VmStatus::Managed).with_guest(GuestView::now(s, s, s))
            })
            .collect();
        let host = HostView {
            savings_kib: held,
            ksm_counters_live: true,
            available_kib: p.available_kib.saturating_sub(lent),
        };
        let plan = policy::plan(policy, &host, &views);
        let mut grew = false;
        for (s, d) in sizes.iter_mut().zip(&plan.decisions) {
            if d.resizes() {
                out.resizes += 1;
                grew |= d.target_kib > *s;
                *s = d.target_kib;
            }
        }
        let lent_after: u64 = sizes.iter().zip(vms).map(|(s, &(f, _))| s - f).sum();
        out.max_lent_kib = out.max_lent_kib.max(lent_after);
        let headroom = p.available_kib as i64 - lent_after as i64 - policy.reserve_kib as i64;
        out.min_headroom_kib = out.min_headroom_kib.min(headroom);
        if grew && headroom < 0 {
            out.guard_breaches += 1;
        }
        out.passes += 1;
    }
    out
}
