//! What KSM costs, measured every pass (issue 21, its first part): ksmd's
//! CPU time, the pages it scanned and its full scans since the last pass,
//! set against what KSM saved and what of that is lent.
//!
//! The kernel keeps ksmd's CPU time in `/proc/<pid>/stat` (a kernel thread
//! named `ksmd`, child of `kthreadd`) and its work in
//! `/sys/kernel/mm/ksm/` (`pages_scanned` since 6.7, `full_scans`). All are
//! totals since boot: a rate needs the previous pass's reading, which the
//! state keeps ([`Mark`]; its instant moves with a step of the wall clock
//! like every other). [`cost`] is pure; [`read_ksmd`] is the thin reader of
//! `/proc`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ksm::KsmCounters;
use crate::procksm::{self, ProcStat};

/// `kthreadd`'s pid: the parent of every kernel thread.
const KTHREADD: u32 = 2;

/// ksmd as one pass read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ksmd {
    /// Its pid.
    pub pid: u32,
    /// When it started (clock ticks after boot): with the pid, this boot's
    /// ksmd and no other process.
    pub start_time: u64,
    /// Its CPU time since it started, clock ticks.
    pub cpu_ticks: u64,
    /// Clock ticks per second (`USER_HZ`).
    pub hz: u64,
}

/// What the state keeps of the last pass's reading, for the next pass's
/// rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// When (seconds since the epoch; moved with a step of the wall clock).
    pub at: u64,
    /// ksmd's pid and start time: a different ksmd (a reboot) starts anew.
    pub pid: u32,
    /// ksmd's start time, clock ticks after boot.
    pub start_time: u64,
    /// Its CPU time, clock ticks.
    pub cpu_ticks: u64,
    /// `pages_scanned`, where the kernel has it.
    pub pages_scanned: Option<u64>,
    /// `full_scans`.
    pub full_scans: u64,
}

/// What KSM cost since the last pass, and what it bought: the report's
/// `ksm_cost`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KsmCost {
    /// ksmd's CPU time since it started, seconds (`None`: ksmd not found).
    pub ksmd_cpu_secs: Option<f64>,
    /// The interval measured over: since the last pass, seconds (`None`:
    /// the first reading, or a new ksmd).
    pub interval_secs: Option<u64>,
    /// ksmd's CPU over the interval, percent of one core.
    pub ksmd_cpu_percent: Option<f64>,
    /// Pages scanned per second over the interval (kernels with
    /// `pages_scanned`).
    pub pages_scanned_per_sec: Option<f64>,
    /// Full scans completed in the interval.
    pub full_scans: Option<u64>,
    /// The savings, KiB (the pass's metric).
    pub savings_kib: u64,
    /// What the VMs hold above their floors after this pass's plan: the
    /// part of the savings that is lent, KiB.
    pub lent_kib: u64,
    /// The savings per ksmd CPU-second spent each second: MiB kept merged
    /// for each whole core ksmd keeps busy (savings over the CPU fraction);
    /// `None` with no CPU measured (ksmd idle, or no interval).
    pub savings_mib_per_cpu_sec: Option<f64>,
    /// What is lent for each ksmd CPU-second per second, MiB.
    pub lent_mib_per_cpu_sec: Option<f64>,
    /// Why ksmd's figures are missing, if they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The cost over the interval since `prev`, and the mark to keep for the
/// next pass. `ksmd` is this pass's reading of ksmd (or why there is
/// none).
pub fn cost(
    prev: Option<Mark>,
    ksmd: &Result<Ksmd, String>,
    ksm: &KsmCounters,
    savings_kib: u64,
    lent_kib: u64,
    now: u64,
) -> (KsmCost, Option<Mark>) {
    let mut c = KsmCost {
        savings_kib,
        lent_kib,
        ..KsmCost::default()
    };
    let k = match ksmd {
        Ok(k) => *k,
        Err(why) => {
            c.problem = Some(why.clone());
            return (c, None);
        }
    };
    let hz = k.hz.max(1);
    c.ksmd_cpu_secs = Some(k.cpu_ticks as f64 / hz as f64);
    let mark = Mark {
        at: now,
        pid: k.pid,
        start_time: k.start_time,
        cpu_ticks: k.cpu_ticks,
        pages_scanned: ksm.pages_scanned,
        full_scans: ksm.full_scans,
    };
    // The same ksmd, later, and no counter gone back: a rate.
    let Some(p) = prev.filter(|p| {
        p.pid == k.pid
            && p.start_time == k.start_time
            && now > p.at
            && k.cpu_ticks >= p.cpu_ticks
            && ksm.full_scans >= p.full_scans
    }) else {
        return (c, Some(mark));
    };
    let dt = now - p.at;
    let cpu = (k.cpu_ticks - p.cpu_ticks) as f64 / hz as f64 / dt as f64;
    c.interval_secs = Some(dt);
    c.ksmd_cpu_percent = Some(cpu * 100.0);
    c.full_scans = Some(ksm.full_scans - p.full_scans);
    c.pages_scanned_per_sec = match (p.pages_scanned, ksm.pages_scanned) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / dt as f64),
        _ => None,
    };
    if cpu > 0.0 {
        c.savings_mib_per_cpu_sec = Some(savings_kib as f64 / 1024.0 / cpu);
        c.lent_mib_per_cpu_sec = Some(lent_kib as f64 / 1024.0 / cpu);
    }
    (c, Some(mark))
}

/// Whether a process is ksmd: a kernel thread of that name.
fn is_ksmd(s: &ProcStat) -> bool {
    s.comm == "ksmd" && s.ppid == KTHREADD
}

fn read_stat(proc_dir: &Path, pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")).ok()?;
    procksm::parse_proc_stat(&text)
}

/// Finds ksmd under `proc_dir` and reads its CPU time: first at `hint`
/// (the pid and start time the last pass found, one file read), else by a
/// scan of every process.
pub fn read_ksmd(proc_dir: &Path, hint: Option<(u32, u64)>) -> Result<Ksmd, String> {
    let found = |pid: u32, s: ProcStat| Ksmd {
        pid,
        start_time: s.start_time,
        cpu_ticks: s.cpu_ticks,
        hz: procksm::clock_ticks_per_sec(),
    };
    if let Some((pid, start)) = hint {
        if let Some(s) = read_stat(proc_dir, pid).filter(|s| is_ksmd(s) && s.start_time == start) {
            return Ok(found(pid, s));
        }
    }
    let entries = std::fs::read_dir(proc_dir)
        .map_err(|e| format!("cannot list {}: {e}", proc_dir.display()))?;
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // ksmd starts early: a low pid, found after a few reads.
    pids.sort_unstable();
    pids.into_iter()
        .find_map(|pid| {
            read_stat(proc_dir, pid)
                .filter(is_ksmd)
                .map(|s| found(pid, s))
        })
        .ok_or_else(|| {
            format!(
                "no ksmd kernel thread under {} (a kernel without KSM, or not the host's /proc)",
                proc_dir.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ksm(pages_scanned: Option<u64>, full_scans: u64) -> KsmCounters {
        KsmCounters {
            run: 1,
            full_scans,
            pages_scanned,
            ..KsmCounters::default()
        }
    }

    fn ksmd(pid: u32, cpu_ticks: u64) -> Result<Ksmd, String> {
        Ok(Ksmd {
            pid,
            start_time: 28,
            cpu_ticks,
            hz: 100,
        })
    }

    #[test]
    fn the_first_reading_gives_totals_and_a_mark_no_rate() {
        let (c, m) = cost(
            None,
            &ksmd(39, 1500),
            &ksm(Some(10), 2),
            200 << 10,
            100 << 10,
            1000,
        );
        assert_eq!(c.ksmd_cpu_secs, Some(15.0));
        assert_eq!(
            (c.interval_secs, c.ksmd_cpu_percent, c.full_scans),
            (None, None, None)
        );
        assert_eq!(c.savings_mib_per_cpu_sec, None);
        let m = m.unwrap();
        assert_eq!(
            (m.at, m.pid, m.cpu_ticks, m.pages_scanned, m.full_scans),
            (1000, 39, 1500, Some(10), 2)
        );
    }

    #[test]
    fn rates_over_the_interval_since_the_last_pass() {
        let (_, m) = cost(None, &ksmd(39, 1500), &ksm(Some(10_000), 2), 0, 0, 1000);
        // 10 s later: 250 ticks (2.5 s of CPU, 25 %), 40 000 pages, 1 full scan
        let (c, m2) = cost(
            m,
            &ksmd(39, 1750),
            &ksm(Some(50_000), 3),
            200 << 10,
            50 << 10,
            1010,
        );
        assert_eq!(c.interval_secs, Some(10));
        assert_eq!(c.ksmd_cpu_percent, Some(25.0));
        assert_eq!(c.pages_scanned_per_sec, Some(4000.0));
        assert_eq!(c.full_scans, Some(1));
        // 200 MiB held by a quarter of a core: 800 MiB per CPU-second per
        // second; 50 MiB lent: 200
        assert_eq!(c.savings_mib_per_cpu_sec, Some(800.0));
        assert_eq!(c.lent_mib_per_cpu_sec, Some(200.0));
        assert_eq!(m2.unwrap().at, 1010);
    }

    #[test]
    fn an_idle_ksmd_costs_nothing_and_has_no_ratio() {
        let (_, m) = cost(None, &ksmd(39, 1500), &ksm(None, 2), 0, 0, 1000);
        let (c, _) = cost(m, &ksmd(39, 1500), &ksm(None, 2), 200 << 10, 0, 1010);
        assert_eq!(c.ksmd_cpu_percent, Some(0.0));
        assert_eq!(
            c.pages_scanned_per_sec, None,
            "no pages_scanned on this kernel"
        );
        assert_eq!(c.savings_mib_per_cpu_sec, None);
    }

    #[test]
    fn a_new_ksmd_a_clock_gone_back_or_counters_gone_back_start_anew() {
        let (_, m) = cost(None, &ksmd(39, 1500), &ksm(Some(10), 5), 0, 0, 1000);
        // a reboot: another ksmd (another pid, or the same pid started later)
        for k in [
            ksmd(41, 1600),
            Ok(Ksmd {
                pid: 39,
                start_time: 29,
                cpu_ticks: 1600,
                hz: 100,
            }),
        ] {
            let (c, m2) = cost(m, &k, &ksm(Some(20), 5), 0, 0, 1010);
            assert_eq!(c.interval_secs, None);
            assert_eq!(m2.unwrap().at, 1010, "the new ksmd is the next pass's mark");
        }
        // no time passed (two passes in one second), or full scans went back
        assert_eq!(
            cost(m, &ksmd(39, 1600), &ksm(Some(20), 5), 0, 0, 1000)
                .0
                .interval_secs,
            None
        );
        assert_eq!(
            cost(m, &ksmd(39, 1600), &ksm(Some(20), 4), 0, 0, 1010)
                .0
                .interval_secs,
            None
        );
        // pages_scanned went back alone: the CPU still measured, no scan rate
        let (c, _) = cost(m, &ksmd(39, 1600), &ksm(Some(5), 6), 0, 0, 1010);
        assert_eq!(
            (c.ksmd_cpu_percent, c.pages_scanned_per_sec),
            (Some(10.0), None)
        );
    }

    #[test]
    fn without_ksmd_the_report_says_why_and_no_mark_is_kept() {
        let (c, m) = cost(None, &Err("no ksmd".into()), &ksm(None, 0), 7, 3, 1000);
        assert_eq!(c.problem.as_deref(), Some("no ksmd"));
        assert_eq!((c.savings_kib, c.lent_kib, c.ksmd_cpu_secs), (7, 3, None));
        assert_eq!(m, None);
    }

    #[test]
    fn ksmd_is_found_by_name_and_parent_then_by_its_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let stat = |pid: u32, comm: &str, ppid: u32, ticks: u64| {
            let d = dir.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!("{pid} ({comm}) S {ppid} 0 0 0 -1 0 0 0 0 0 0 {ticks} 0 0 25 5 1 0 28 0 0"),
            )
            .unwrap();
        };
        stat(1, "init", 0, 5);
        stat(7, "ksmd", 1, 99); // a user process named ksmd: not the thread
        stat(39, "ksmd", 2, 111_766);
        std::fs::create_dir_all(dir.join("self")).unwrap();
        let k = read_ksmd(&dir, None).unwrap();
        assert_eq!((k.pid, k.start_time, k.cpu_ticks), (39, 28, 111_766));
        // the hint is read first; a stale hint (another start) falls back to the scan
        assert_eq!(read_ksmd(&dir, Some((39, 28))).unwrap().pid, 39);
        assert_eq!(read_ksmd(&dir, Some((7, 28))).unwrap().pid, 39);
        assert_eq!(read_ksmd(&dir, Some((39, 27))).unwrap().pid, 39);
        std::fs::remove_dir_all(dir.join("39")).unwrap();
        let err = read_ksmd(&dir, Some((39, 28))).unwrap_err();
        assert!(err.contains("no ksmd kernel thread"), "{err}");
        let err = read_ksmd(&dir.join("missing"), None).unwrap_err();
        assert!(err.contains("cannot list"), "{err}");
    }
}
