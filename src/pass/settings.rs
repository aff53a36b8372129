//! What a pass is given: where it reads and writes ([`Paths`], every path
//! under `--root`) and what it is told ([`Settings`], the command line's
//! settings as the pass needs them, not clap's types).

use std::path::{Path, PathBuf};

use crate::ksm::Metric;
use crate::policy::{Policy, Split};
use crate::state::Store;
use crate::units::SizeOrPercent;

/// Where a pass reads and writes, every path already under `--root`.
#[derive(Clone, Debug)]
pub struct Paths {
    /// `<root>/sys/kernel/mm/ksm`.
    pub ksm_dir: PathBuf,
    /// `<root>/proc/meminfo`.
    pub meminfo: PathBuf,
    /// `<root>/proc/locks` (names a lock's holder).
    pub proc_locks: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// The Prometheus text file every pass writes, if any.
    pub metrics_file: Option<PathBuf>,
    /// `/proc` and libvirt's pid files, for the per-process KSM figures.
    pub procs: crate::procksm::ProcPaths,
}

impl Paths {
    /// Every path under `root`, the state at `state` (absolute, host view).
    pub fn under(root: &Path, state: &Path) -> Paths {
        let at = |p: &str| crate::paths::under_root(root, Path::new(p));
        Paths {
            ksm_dir: at("/sys/kernel/mm/ksm"),
            meminfo: at("/proc/meminfo"),
            proc_locks: at("/proc/locks"),
            state: crate::paths::under_root(root, state),
            metrics_file: None,
            procs: crate::procksm::ProcPaths::under(root),
        }
    }

    /// The state store.
    pub fn store(&self) -> Store {
        Store::new(self.state.clone()).with_proc_locks(self.proc_locks.clone())
    }
}

/// What a pass needs to know from the settings (not the command line).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Which KSM counter is the savings.
    pub metric: Metric,
    /// Fraction of the savings handed out.
    pub share: f64,
    /// How the pool is divided.
    pub split: Split,
    /// Host MemAvailable to keep free.
    pub reserve: SizeOrPercent,
    /// Targets this close to the current size are left alone, KiB.
    pub deadband_kib: u64,
    /// Most growth per VM per pass, KiB.
    pub max_grow_kib: Option<u64>,
    /// Most shrink per VM per pass above the reserve, KiB.
    pub max_shrink_kib: Option<u64>,
    /// Most taken from a VM's applications per pass under the reserve, KiB.
    pub max_squeeze_kib: Option<u64>,
    /// Most a VM without fresh statistics gives back per pass, KiB (None:
    /// all of it).
    pub blind_step_kib: Option<u64>,
    /// The statistics period the pass turns on for a guest that reports
    /// none (seconds; 0: never touch it).
    pub guest_stats_period: u32,
    /// Lend only the savings that held this long (the smallest the passes
    /// of that window saw); 0 lends the savings of the moment (the paper).
    pub hold_window_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        let p = Policy::default();
        Settings {
            metric: Metric::Auto,
            share: p.share,
            split: p.split,
            reserve: SizeOrPercent::Percent(5.0),
            deadband_kib: p.deadband_kib,
            max_grow_kib: None,
            max_shrink_kib: None,
            max_squeeze_kib: None,
            blind_step_kib: p.blind_step_kib,
            guest_stats_period: DEFAULT_GUEST_STATS_PERIOD,
            hold_window_secs: DEFAULT_HOLD_WINDOW_SECS,
        }
    }
}

/// The guest statistics period turned on by default: 5 s, so figures are
/// at most 5 s old at a pass every 10 s.
pub const DEFAULT_GUEST_STATS_PERIOD: u32 = 5;

/// The holding window by default: a minute of passes.
pub const DEFAULT_HOLD_WINDOW_SECS: u64 = 60;

/// The most savings readings the state keeps for the holding window
/// ([`super::lend::hold`]), however long the window: the state file stays the
/// same size pass after pass.
pub const HOLD_MAX_ENTRIES: usize = 64;

impl Settings {
    /// The policy's settings, the reserve resolved against `mem_total_kib`.
    pub fn policy(&self, mem_total_kib: u64) -> Policy {
        Policy {
            share: self.share,
            split: self.split,
            reserve_kib: self.reserve.resolve(mem_total_kib),
            deadband_kib: self.deadband_kib,
            max_grow_kib: self.max_grow_kib,
            max_shrink_kib: self.max_shrink_kib,
            max_squeeze_kib: self.max_squeeze_kib,
            blind_step_kib: self.blind_step_kib,
        }
    }
}
