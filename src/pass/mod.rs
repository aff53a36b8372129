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

pub mod adjust;
pub mod apply;
pub mod asks;
pub mod clock;
pub mod lend;
pub mod notes;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod report;
pub mod rows;
pub mod settings;

pub use clock::Now;
pub use report::{AttributionReport, Report, VmKsm, VmReport};
pub use settings::{
    Paths, Settings, DEFAULT_GUEST_STATS_PERIOD, DEFAULT_HOLD_WINDOW_SECS, HOLD_MAX_ENTRIES,
};

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use log::{debug, error, info, log, warn};

use crate::hook;
use crate::hypervisor::Hypervisor;
use crate::state::{spool, Loaded, State, Store};

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
        (hook::Outcome::LeftToAdoption, _) => info!(
            "{}: VM {:?} was not recorded at its start; its size now may be a booting balloon's or hold a bonus, so it is adopted by the adoption rule instead",
            f.call, f.name
        ),
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
/// changes and nothing is logged. A record of this boot is dated by its
/// boot clock against `clocks` (a step of the wall clock since the hook
/// ran does not move it). Returns how many hook records were folded.
pub fn fold_spool(
    store: &Store,
    state: &mut State,
    commit: Option<&crate::state::Locked<'_>>,
    clocks: &Now,
) -> Result<usize, crate::state::StoreError> {
    let now = clocks.wall;
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
                Ok(mut r) => {
                    if let Some(at) = clocks
                        .boot
                        .as_ref()
                        .and_then(|b| spool::dated(path, b, now))
                    {
                        r.at = at;
                    }
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
    now: impl Into<Now>,
) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let clocks = now.into();
    let now = clocks.wall;
    let result = run_locked(paths, settings, lock_timeout, open, &clocks);
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
                lent_kib: r.ksm_cost.lent_kib,
                ksmd_cpu_seconds: r.ksm_cost.ksmd_cpu_secs,
                ksmd_cpu_ratio: r.ksm_cost.ksmd_cpu_percent.map(|p| p / 100.0),
                ksm_pages_scanned: r.ksm.pages_scanned,
                ksm_full_scans: r.ksm.full_scans,
                ksm_managed: r.ksm_governor.managing(),
                ksm_stepped_back: r.ksm_governor.stepped_back.is_some(),
                ksm_pages_to_scan: r.ksm_governor.pages_to_scan_left(),
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
    clocks: &Now,
) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let now = clocks.wall;
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
    // Before anything measures an interval from what the state holds.
    let clock_step = clock::take_step(&mut state, clocks);
    if let Some(delta) = clock_step {
        warn!("{}", clock::step_line(delta));
    }
    spool::remove_stale_temps(store.path(), now);
    // Saved (batch by batch) before anything else can fail, so the records
    // can go: a spool left full would keep the path unit starting passes.
    let hook_records = fold_spool(&store, &mut state, Some(&lock), clocks)?;
    let (mut hv, mut planned) =
        observe_and_plan(paths, settings, open, state, now, clock_step, started)?;
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
    // After the balloons: a knob that cannot be written never stops them.
    apply::write_knobs(&paths.ksm_dir, &mut planned);
    apply::withdraw(&mut planned.state, priors, &applied);
    let recorded = apply::record(planned, &applied, now);
    let state = recorded.state;
    let report = recorded.report.finish(report::Outcome {
        dry_run: false,
        resizes: recorded.resizes,
        unresponsive: recorded.unresponsive,
        at: now,
        calls: hv.calls(),
        hook_records,
        counters: state.counters,
        state_problem: problem,
    });
    debug!("libvirt calls this pass: {:?}", report.calls);
    lock.save(&state)
        .context("the pass's resizes were made but its state could not be saved")?;
    if let Some(fatal) = applied.fatal {
        // The resizes that were made are recorded; the rest wait.
        return Err(anyhow::Error::new(fatal).context("pass cut short; what it did is recorded"));
    }
    Ok(report)
}

/// Observe and plan, for a pass and a dry run alike: the host's counters,
/// then libvirt (connected through `open`) and its domains, then the plan
/// over `state`; the connection is returned for the resizes. `started` is
/// when the pass began (its lock wait counts), for how late the figures
/// were read.
fn observe_and_plan(
    paths: &Paths,
    settings: &Settings,
    open: &mut Opener<'_>,
    state: State,
    now: u64,
    clock_step: Option<i64>,
    started: std::time::Instant,
) -> anyhow::Result<(Box<dyn Hypervisor>, plan::Planned)> {
    let (ksm, mem) = observe::read_host(paths)?;
    let mut hv = open()?;
    debug!("connected to libvirt");
    let hv_ref = hv.as_mut();
    let contribution = settings.policy.split.inputs().contribution;
    let mut obs = observe::observe(ksm, mem, hv_ref, &state, now, &paths.procs, contribution)?;
    obs.knobs = crate::governor::Knobs::read(&paths.ksm_dir);
    obs.clock_step_secs = clock_step;
    obs.read_after_secs = started.elapsed().as_secs() + 1;
    let planned = plan::plan(settings, &obs, state, &paths.ksm_dir)?;
    Ok((hv, planned))
}

/// `plan`, `run --dry-run` and `status`: observe and plan, with the hook
/// records still in the spool folded in; nothing changed, no lock taken.
pub fn dry_run(
    paths: &Paths,
    settings: &Settings,
    open: &mut Opener<'_>,
    now: impl Into<Now>,
) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let clocks = now.into();
    let now = clocks.wall;
    let store = paths.store();
    let (mut state, problem) = store.peek()?;
    // In memory only: the pass that saves shifts the file.
    let clock_step = clock::take_step(&mut state, &clocks);
    if let Some(p) = &problem {
        warn!(
            "state file {} is unusable ({p}); the next pass moves it aside and rebuilds",
            store.path().display()
        );
    }
    let hook_records = fold_spool(&store, &mut state, None, &clocks)?;
    let (hv, planned) = observe_and_plan(paths, settings, open, state, now, clock_step, started)?;
    Ok(planned.report.finish(report::Outcome {
        dry_run: true,
        resizes: Vec::new(),
        unresponsive: Vec::new(),
        at: now,
        calls: hv.calls(),
        hook_records,
        counters: planned.state.counters,
        state_problem: problem,
    }))
}

#[cfg(test)]
mod tests;
