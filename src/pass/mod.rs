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
/// ([`plan::hold`]), however long the window: the state file stays the
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

/// A VM's own KSM figures (from its QEMU's `/proc/<pid>/ksm_stat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VmKsm {
    /// Its QEMU's pid.
    pub pid: u32,
    /// `ksm_merging_pages`: its pages KSM merged.
    pub merging_pages: u64,
    /// Its part of the host's savings by the metric in use, KiB.
    pub attributed_kib: i64,
}

/// Whose savings: the VMs' part and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AttributionReport {
    /// The host's savings by the metric in use, KiB.
    pub host_kib: i64,
    /// The VMs' parts together, KiB.
    pub vms_kib: i64,
    /// The rest: other processes, and pages no live process accounts for.
    pub non_vm_kib: i64,
    /// What the other processes' own figures add up to, KiB.
    pub others_kib: Option<i64>,
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
    /// How old the figures the decision used were, seconds (`None`: no
    /// fresh figures; a recall step above the reserve waits for figures
    /// at most [`crate::policy::RECALL_FRESH_SECS`] old).
    pub figures_age_secs: Option<u64>,
    /// Those figures answer every ask: reported after the last shrink
    /// landed and after the pass asked for fresh ones (`None`: no fresh
    /// figures).
    pub figures_confirmed: Option<bool>,
    /// Its balloon deflates on guest OOM (`<memballoon autodeflate='on'>`):
    /// the guest's own net against a recall it cannot pay (`None`: not
    /// known, a VM not recorded yet).
    pub autodeflate: Option<bool>,
    /// Its balloon does not reach the last target (back-off).
    pub stuck: Option<Stuck>,
    /// Its balloon was set by someone else and is left alone since then.
    pub held_by_hand: Option<crate::manual::Held>,
    /// Its metadata's `manage` (false: never resized).
    pub manage: bool,
    /// Its weight in the split (its metadata's).
    pub weight: u32,
    /// Its I/O demand (demand splits): thousandths of a MiB/s of disk
    /// reads while its memory was full, smoothed; `None` when unknown.
    pub demand: Option<u64>,
    /// Its own KSM figures (contribution splits).
    pub ksm: Option<VmKsm>,
    /// Its part of the VMs' savings, 0 to 1 (contribution splits).
    pub contribution_share: Option<f64>,
    /// Why its own KSM figures could not be had (contribution splits).
    pub ksm_problem: Option<String>,
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
    /// What the pool is taken from, KiB: the savings that held over the
    /// holding window (for the contribution splits, the VMs' part of them).
    pub lendable_kib: u64,
    /// Whose savings (contribution splits).
    pub attribution: Option<AttributionReport>,
    /// Why there is no attribution this pass (contribution splits).
    pub attribution_problem: Option<String>,
    /// The holding window, seconds.
    pub policy_window_secs: u64,
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
    /// Counters across passes, as this pass leaves them.
    pub counters: crate::metrics::Counters,
    /// A problem with the state file, if there was one.
    pub state_problem: Option<String>,
}

/// How a pass reaches libvirt: called once, after the host was read.
pub type Opener<'a> = dyn FnMut() -> anyhow::Result<Box<dyn Hypervisor>> + 'a;

/// Logs what folding one spooled record did.
fn log_folded(state: &State, f: &hook::Folded) {
    for p in &f.problems {
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

/// Moves a spool entry the pass cannot use to the quarantine, out of the
/// path unit's sight; failing that removes it; failing that says so.
fn set_aside(store: &Store, path: &Path, why: &str, now: u64) {
    match spool::quarantine(store.path(), path, now) {
        Ok(to) => warn!(
            "hook spool: {}: {why}; moved to {}",
            path.display(),
            to.display()
        ),
        Err(q) => match spool::remove_entry(path) {
            Ok(()) => warn!(
                "hook spool: {}: {why}; removed (cannot move it to {}: {q})",
                path.display(),
                spool::quarantine_dir(store.path()).display()
            ),
            Err(e) => error!(
                "hook spool: {}: {why}; can be neither moved to {} ({q}) nor removed ({e}): the path unit starts passes for it until its trigger limit; remove it by hand",
                path.display(),
                spool::quarantine_dir(store.path()).display()
            ),
        },
    }
}

/// Folds the hook's spooled records into `state`, oldest first, one
/// record in memory at a time. With `commit` (the pass lock held), the
/// state is saved after every [`spool::FOLD_BATCH`] records and those
/// records are then removed, and what cannot be folded or removed goes to
/// the quarantine, logged; without it (`status`, `plan`) nothing on disk
/// changes and nothing is logged. Returns how many hook records were
/// folded.
pub fn fold_spool(
    store: &Store,
    state: &mut State,
    commit: Option<&crate::state::Locked<'_>>,
    now: u64,
) -> Result<usize, crate::state::StoreError> {
    let listing = match spool::list(store.path(), &spool::boot_id()) {
        Ok(l) => l,
        Err(e) => {
            if commit.is_some() {
                warn!(
                    "cannot read the hook spool {}: {e}; its records wait for the next pass",
                    store.spool_dir().display()
                );
            }
            return Ok(0);
        }
    };
    if commit.is_some() {
        for p in &listing.strays {
            set_aside(store, p, "not a name the hook gives its records", now);
        }
    }
    let mut folded = 0;
    for batch in listing.records.chunks(spool::FOLD_BATCH) {
        let mut done = Vec::with_capacity(batch.len());
        for path in batch {
            match spool::read_record(path) {
                Ok(r) => {
                    for f in hook::fold(state, std::slice::from_ref(&r)) {
                        if commit.is_some() {
                            log_folded(state, &f);
                        }
                    }
                    folded += 1;
                    done.push(path);
                }
                Err(why) if commit.is_some() => set_aside(store, path, &why, now),
                Err(_) => {}
            }
        }
        let Some(lock) = commit else {
            continue;
        };
        if done.is_empty() {
            continue;
        }
        // Saved before the records go, so a record is never lost; a pass
        // killed in a long drain keeps the batches it saved.
        lock.save(state)?;
        for path in done {
            if let Err(e) = spool::remove_entry(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    set_aside(
                        store,
                        path,
                        &format!("folded, but cannot be removed: {e}"),
                        now,
                    );
                }
            }
        }
    }
    Ok(folded)
}

/// `ksm-balloon run`: under the pass lock, fold the hook spool, observe,
/// plan, apply, save; then the metrics file, if one is set, whether the
/// pass succeeded or not (a metrics file that cannot be written is logged,
/// never a failed pass).
pub fn run(
    paths: &Paths,
    settings: &Settings,
    lock_timeout: Duration,
    open: &mut Opener<'_>,
    now: u64,
) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let result = run_locked(paths, settings, lock_timeout, open, now);
    if let Some(file) = &paths.metrics_file {
        let input = metrics_input(paths, &result, now, started.elapsed().as_secs_f64());
        if let Err(e) = crate::metrics::write(file, &input) {
            warn!("{}", crate::errors::chain(&e));
        }
    }
    result
}

/// What the metrics file says after a pass.
pub fn metrics_input(
    paths: &Paths,
    result: &anyhow::Result<Report>,
    now: u64,
    duration_seconds: f64,
) -> crate::metrics::MetricsInput {
    use crate::metrics::{HostFigures, MetricsInput, PassFigures, VmFigures};
    let pass = PassFigures {
        at: now,
        duration_seconds,
        success: result.is_ok(),
    };
    match result {
        Ok(r) => MetricsInput {
            host: Some(HostFigures {
                savings: crate::metrics::savings_by_metric(&r.ksm),
                metric_in_use: r.metric.to_string(),
                pool_kib: r.pool_kib,
                budget_kib: r.budget_kib,
                reserve_kib: r.reserve_kib,
                available_kib: r.host.available_kib,
            }),
            vms: r
                .vms
                .iter()
                .filter(|v| v.managed)
                .map(|v| VmFigures {
                    name: v.name.clone(),
                    uuid: v.uuid.clone(),
                    floor_kib: v.floor_kib,
                    ceiling_kib: v.ceiling_kib,
                    current_kib: v.current_kib,
                    target_kib: v.target_kib,
                    bonus_kib: v.target_kib.saturating_sub(v.floor_kib),
                    held: v.held_by_hand.is_some(),
                })
                .collect(),
            counters: r.counters,
            pass,
        },
        Err(_) => MetricsInput {
            host: None,
            vms: Vec::new(),
            counters: paths
                .store()
                .peek()
                .map(|(s, _)| s.counters)
                .unwrap_or_default(),
            pass,
        },
    }
}

fn run_locked(
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
        Loaded::Repaired { state, dropped } => {
            for d in &dropped {
                error!(
                    "state file {}: {d}; dropped that record, kept the rest",
                    store.path().display()
                );
            }
            problem = Some(dropped.join("; "));
            state
        }
        other => other.into_state(),
    };
    spool::remove_stale_temps(store.path(), now);
    // Saved (batch by batch) before anything else can fail, so the records
    // can go: a spool left full would keep the path unit starting passes.
    let hook_records = fold_spool(&store, &mut state, Some(&lock), now)?;
    let (ksm, mem) = observe::read_host(paths)?;
    let mut hv = open()?;
    debug!("connected to libvirt");
    let procs = settings.split.needs_contribution().then_some(&paths.procs);
    let obs = observe::observe(ksm, mem, hv.as_mut(), &state, now, procs)?;
    let mut planned = plan::plan(settings, &obs, state, &paths.ksm_dir)?;
    for n in &planned.notes {
        log!(n.level, "{}", n.text);
    }
    // Record before asking: each resize is in the saved state before it
    // is made, so a pass killed after a resize and before its last save
    // leaves a state that knows the balloon's new size is ours.
    let priors = apply::intend(&mut planned.state, &planned.resizes, now);
    if !priors.is_empty() {
        lock.save(&planned.state)
            .context("cannot record the resizes this pass is about to make; none was made")?;
    }
    let applied = apply::apply(hv.as_mut(), &planned);
    apply::withdraw(&mut planned.state, priors, &applied);
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
    let hook_records = fold_spool(&store, &mut state, None, now)?;
    let (ksm, mem) = observe::read_host(paths)?;
    let mut hv = open()?;
    let procs = settings.split.needs_contribution().then_some(&paths.procs);
    let obs = observe::observe(ksm, mem, hv.as_mut(), &state, now, procs)?;
    let planned = plan::plan(settings, &obs, state, &paths.ksm_dir)?;
    let mut report = planned.report;
    report.dry_run = true;
    report.calls = hv.calls();
    report.hook_records = hook_records;
    report.state_problem = problem;
    Ok(report)
}

#[cfg(test)]
mod tests;
