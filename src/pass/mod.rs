//! One pass, in three steps with plain data between them:
//!
//! 1. [`observe`]: read the host (KSM, meminfo) and libvirt (every active
//!    domain in one bulk call; a definition only for a VM to adopt). No
//!    state changes.
//! 2. [`plan`]: reconcile the state with what runs, track what earlier
//!    passes asked of each balloon, run the policy. Pure: no libvirt, no
//!    files, no clock.
//! 3. [`apply`]: make the resizes (and turn guest statistics on where
//!    missing), returning what happened; [`apply::record`] writes it into
//!    the state.
//!
//! `plan`, `run --dry-run` and `status` are observe + plan; `run` is all
//! three, under the pass lock, with the state saved at the end. The
//! [`Report`] is the machine-readable record of what a pass saw and did
//! (`run --json`, `plan --json`, `status --json`).

pub mod apply;
pub mod observe;
pub mod plan;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use log::{debug, error, info, log, warn};
use serde::Serialize;

use crate::hook;
use crate::hypervisor::{CallCount, GuestStats, Hypervisor};
use crate::ksm::{KsmCounters, Metric};
use crate::meminfo::MemInfo;
use crate::policy::{Action, Policy, Reason, Split};
use crate::state::{spool, Loaded, Source, State, Store, Stuck};
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
}

impl Paths {
    /// Every path under `root`, the state at `state` (absolute, host view).
    pub fn under(root: &Path, state: &Path) -> Paths {
        let at = |p: &str| crate::cli::under_root(root, Path::new(p));
        Paths {
            ksm_dir: at("/sys/kernel/mm/ksm"),
            meminfo: at("/proc/meminfo"),
            proc_locks: at("/proc/locks"),
            state: crate::cli::under_root(root, state),
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
        }
    }
}

/// The guest statistics period turned on by default: 5 s, so figures are
/// at most 5 s old at a pass every 10 s.
pub const DEFAULT_GUEST_STATS_PERIOD: u32 = 5;

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

/// One active domain in a report.
#[derive(Clone, Debug, Serialize)]
pub struct VmReport {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Managed (recorded), as opposed to waiting to be adopted.
    pub managed: bool,
    /// Floor, KiB.
    pub floor_kib: u64,
    /// Ceiling, KiB (the smaller of the recorded and the live maximum).
    pub ceiling_kib: u64,
    /// Balloon size before this pass, KiB.
    pub current_kib: u64,
    /// A target an earlier pass asked for that the balloon is still on its
    /// way to, KiB.
    pub pending_kib: Option<u64>,
    /// The policy's target, KiB.
    pub target_kib: u64,
    /// What the pass does (or would do).
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// Its bonus (target above floor) as a fraction of what is handed out.
    pub share_of_pool: f64,
    /// What it keeps that the savings no longer cover (its applications
    /// hold it), KiB.
    pub kept_kib: u64,
    /// What the host guard takes from its applications' memory, KiB.
    pub squeezed_kib: u64,
    /// What it could give back without harm, KiB.
    pub givable_kib: u64,
    /// Its guest's own figures, as the bulk call reported them.
    pub guest: GuestStats,
    /// Those figures are recent enough to go by.
    pub guest_stats_fresh: bool,
    /// Its balloon does not reach the last target (back-off).
    pub stuck: Option<Stuck>,
    /// How it came to be managed.
    pub source: Option<Source>,
    /// Adopted by this pass (no hook had recorded it).
    pub adopted: bool,
    /// When its balloon was last set by ksm-balloon (seconds since the epoch).
    pub last_change_at: Option<u64>,
    /// The error that made the resize fail, if it did.
    pub error: Option<String>,
}

/// What a pass saw and did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When (seconds since the epoch).
    pub at: u64,
    /// Nothing was applied.
    pub dry_run: bool,
    /// The KSM counters.
    pub ksm: KsmCounters,
    /// The metric used.
    pub metric: Metric,
    /// The savings, KiB.
    pub savings_kib: u64,
    /// Savings × share, KiB.
    pub pool_kib: u64,
    /// What was handed out after the host guard, KiB.
    pub budget_kib: u64,
    /// The host.
    pub host: MemInfo,
    /// The reserve, KiB.
    pub reserve_kib: u64,
    /// The host is under its reserve.
    pub under_reserve: bool,
    /// How far under, KiB.
    pub shortfall_kib: u64,
    /// What the bonuses shrink by this pass, KiB.
    pub recalled_kib: u64,
    /// What VMs keep that the savings no longer cover, KiB.
    pub kept_kib: u64,
    /// What the guard takes from applications' memory, KiB.
    pub squeezed_kib: u64,
    /// The policy used.
    pub policy: Policy,
    /// Every active domain.
    pub vms: Vec<VmReport>,
    /// Hook records folded into the state by this pass.
    pub hook_records: usize,
    /// Resize calls that succeeded.
    pub resized: u32,
    /// Resize calls that failed (VM vanished or refused).
    pub failed: u32,
    /// libvirt calls made.
    pub calls: CallCount,
    /// A problem with the state file, if there was one.
    pub state_problem: Option<String>,
}

/// How a pass reaches libvirt: called once, after the host was read.
pub type Opener<'a> = dyn FnMut() -> anyhow::Result<Box<dyn Hypervisor>> + 'a;

/// Folds the hook's spooled records into `state`, logging what each did
/// when `log_it`. Returns the spool entries read (records and strays), for
/// the caller to remove once the state that holds them is saved.
pub fn fold_spool(store: &Store, state: &mut State, log_it: bool) -> Vec<spool::Entry> {
    let entries = match spool::read_all(store.path()) {
        Ok(e) => e,
        Err(e) => {
            warn!(
                "cannot read the hook spool {}: {e}; its records wait for the next pass",
                store.spool_dir().display()
            );
            return Vec::new();
        }
    };
    let mut records = Vec::new();
    for e in &entries {
        match &e.record {
            Ok(r) => records.push(r.clone()),
            Err(why) if log_it => warn!("hook spool: {}: {why}; removed", e.path.display()),
            Err(_) => {}
        }
    }
    for f in hook::fold(state, &records) {
        if !log_it {
            continue;
        }
        if let Some(p) = &f.problem {
            warn!("{}: {p}", f.call);
        }
        match (&f.outcome, state.vms.values().find(|v| v.name == f.name)) {
            (hook::Outcome::Recorded | hook::Outcome::Updated, Some(r)) => info!(
                "{}: recorded VM {:?} floor {} ceiling {}{}",
                f.call,
                f.name,
                crate::units::Kib(r.floor_kib),
                crate::units::Kib(r.ceiling_kib),
                if r.balloon {
                    ""
                } else {
                    " (no balloon device)"
                }
            ),
            (hook::Outcome::Forgotten, _) => info!("{}: forgot VM {:?}", f.call, f.name),
            (o, _) => debug!("{}: VM {:?}: {o:?}", f.call, f.name),
        }
    }
    entries
}

/// `ksm-balloon run`: under the pass lock, fold the hook spool, observe,
/// plan, apply, save.
pub fn run(
    paths: &Paths,
    settings: &Settings,
    lock_timeout: Duration,
    open: &mut Opener<'_>,
    now: u64,
) -> anyhow::Result<Report> {
    let store = paths.store();
    let lock = store.lock(lock_timeout)?;
    let mut problem = None;
    let mut state = match lock.load(now)? {
        Loaded::Recovered {
            state,
            moved_to,
            problem: p,
        } => {
            error!(
                "state file {} was unusable ({p}); moved aside to {} and rebuilt from libvirt",
                store.path().display(),
                moved_to.display()
            );
            problem = Some(p);
            state
        }
        other => other.into_state(),
    };
    spool::remove_stale_temps(store.path(), now);
    let folded = fold_spool(&store, &mut state, true);
    let hook_records = folded.iter().filter(|e| e.record.is_ok()).count();
    if !folded.is_empty() {
        // Saved before anything else can fail, so the records can go: a
        // spool left full would keep the systemd path unit starting passes.
        lock.save(&state)?;
        spool::remove(&folded);
    }
    let (ksm, mem) = observe::read_host(paths)?;
    let mut hv = open()?;
    debug!("connected to libvirt");
    let obs = observe::observe(ksm, mem, hv.as_mut(), &state, now)?;
    let planned = plan::plan(settings, &obs, state, &paths.ksm_dir)?;
    for n in &planned.notes {
        log!(n.level, "{}", n.text);
    }
    let applied = apply::apply(hv.as_mut(), &planned);
    let (state, mut report) = apply::record(planned, &applied, now);
    report.calls = hv.calls();
    report.hook_records = hook_records;
    report.state_problem = problem;
    debug!("libvirt calls this pass: {:?}", report.calls);
    lock.save(&state)
        .context("the pass's resizes were made but its state could not be saved")?;
    if let Some(fatal) = applied.fatal {
        // The resizes that were made are recorded; the rest wait.
        return Err(anyhow::Error::new(fatal).context("pass cut short; what it did is recorded"));
    }
    Ok(report)
}

/// `plan`, `run --dry-run` and `status`: observe and plan, with the hook
/// records still in the spool folded in; nothing changed, no lock taken.
pub fn dry_run(
    paths: &Paths,
    settings: &Settings,
    open: &mut Opener<'_>,
    now: u64,
) -> anyhow::Result<Report> {
    let store = paths.store();
    let (mut state, problem) = store.peek()?;
    if let Some(p) = &problem {
        warn!(
            "state file {} is unusable ({p}); the next pass moves it aside and rebuilds",
            store.path().display()
        );
    }
    let folded = fold_spool(&store, &mut state, false);
    let (ksm, mem) = observe::read_host(paths)?;
    let mut hv = open()?;
    let obs = observe::observe(ksm, mem, hv.as_mut(), &state, now)?;
    let planned = plan::plan(settings, &obs, state, &paths.ksm_dir)?;
    let mut report = planned.report;
    report.dry_run = true;
    report.calls = hv.calls();
    report.hook_records = folded.iter().filter(|e| e.record.is_ok()).count();
    report.state_problem = problem;
    Ok(report)
}

#[cfg(test)]
mod tests;
