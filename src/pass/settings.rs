//! What a pass is given: where it reads and writes ([`Paths`], every path
//! under `--root`) and what it is told ([`Settings`], the command line's
//! settings as the pass needs them, not clap's types).

use std::path::{Path, PathBuf};

use crate::ksm::Metric;
use crate::policy::Policy;
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

/// What a pass needs to know from the settings (not the command line):
/// the policy's own settings, held whole, and the few the pass resolves or
/// acts on itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Which KSM counter is the savings.
    pub metric: Metric,
    /// Host MemAvailable to keep free, as given: resolved against MemTotal
    /// into the policy's `reserve_kib` every pass ([`Settings::policy`]).
    pub reserve: SizeOrPercent,
    /// The policy's settings (share, split, deadband, step limits, blind
    /// step); its `reserve_kib` is not used, `reserve` is.
    pub policy: Policy,
    /// The statistics period the pass turns on for a guest that reports
    /// none (seconds; 0: never touch it).
    pub guest_stats_period: u32,
    /// Lend only the savings that held this long (the smallest the passes
    /// of that window saw); 0 lends the savings of the moment (the paper).
    pub hold_window_secs: u64,
    /// The KSM governor: `--ksm` and `--ksm-max-cpu`.
    pub governor: crate::governor::Settings,
}

impl Settings {
    /// The defaults, defined once: the command line's defaults are these
    /// and [`Policy::DEFAULT`] (`cli::Settings`, clap's `default_value_t`),
    /// as is [`Settings::default`].
    pub const DEFAULT: Settings = Settings {
        metric: Metric::Auto,
        reserve: SizeOrPercent::Percent(5.0),
        policy: Policy::DEFAULT,
        guest_stats_period: DEFAULT_GUEST_STATS_PERIOD,
        hold_window_secs: DEFAULT_HOLD_WINDOW_SECS,
        governor: crate::governor::Settings::DEFAULT,
    };
}

impl Default for Settings {
    fn default() -> Self {
        Settings::DEFAULT
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
            reserve_kib: self.reserve.resolve(mem_total_kib),
            ..self.policy.clone()
        }
    }
}
