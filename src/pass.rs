//! One pass: read KSM and the host, read every domain in one bulk call,
//! reconcile with the state, run the policy, apply the targets that moved,
//! save the state. `plan` and `status` run the same reading and policy with
//! nothing applied and nothing written.

use std::collections::BTreeSet;

use anyhow::Context;
use log::{debug, error, info, warn};
use serde::Serialize;

use crate::cli::Config;
use crate::domxml;
use crate::hook;
use crate::hypervisor::{CallCount, Hypervisor, LiveDomain};
use crate::ksm::{self, KsmCounters, Metric};
use crate::meminfo::{self, MemInfo};
use crate::policy::{self, Action, HostView, Policy, Reason, VmStatus, VmView};
use crate::state::{spool, LastPass, Loaded, Source, State, Store, VmRecord};
use crate::units::{Kib, KibDelta};

/// A record this young whose domain is not active yet is a VM still
/// starting (the hook ran at `prepare`): kept, not forgotten.
pub const STARTING_GRACE_SECS: u64 = 120;

/// How a pass is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Apply and save, under the lock.
    Apply,
    /// Work it all out, change nothing, take no lock.
    DryRun,
}

/// One VM in a report.
#[derive(Clone, Debug, Serialize)]
pub struct VmReport {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Floor, KiB.
    pub floor_kib: u64,
    /// Ceiling, KiB (the smaller of the recorded and the live maximum).
    pub ceiling_kib: u64,
    /// Balloon size before this pass, KiB.
    pub current_kib: u64,
    /// The policy's target, KiB.
    pub target_kib: u64,
    /// What the pass does (or would do).
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// Its bonus (target above floor) as a fraction of the pool.
    pub share_of_pool: f64,
    /// How it came to be managed.
    pub source: Source,
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
    /// The policy used.
    pub policy: Policy,
    /// Every active domain.
    pub vms: Vec<VmReport>,
    /// Resize calls that succeeded.
    pub resized: u32,
    /// Resize calls that failed (VM vanished or refused).
    pub failed: u32,
    /// libvirt calls made.
    pub calls: CallCount,
    /// A problem with the state file, if there was one.
    pub state_problem: Option<String>,
}

/// The host side of a pass: KSM and meminfo.
pub struct HostReading {
    /// The counters.
    pub ksm: KsmCounters,
    /// meminfo.
    pub mem: MemInfo,
}

/// Reads KSM and meminfo under the configured root.
pub fn read_host(cfg: &Config) -> anyhow::Result<HostReading> {
    let ksm = ksm::read(&cfg.ksm_dir, ksm::host_page_size())?;
    let mem = meminfo::read(&cfg.meminfo)?;
    Ok(HostReading { ksm, mem })
}

fn adopt(hv: &mut dyn Hypervisor, d: &LiveDomain, now: u64) -> VmRecord {
    // The persistent definition's <currentMemory> is the size the VM boots
    // with; a transient domain's is its live size.
    let from_xml = match hv.inactive_xml(&d.uuid) {
        Ok(text) => match domxml::parse(&text) {
            Ok(x) => Some(x),
            Err(e) => {
                warn!(
                    "VM {:?}: cannot read its XML to adopt it ({e}); using its live size",
                    d.name
                );
                None
            }
        },
        Err(e) => {
            warn!(
                "VM {:?}: cannot fetch its XML to adopt it ({e}); using its live size",
                d.name
            );
            None
        }
    };
    let (floor, ceiling, balloon) = match from_xml {
        Some(x) => (
            x.current_memory_kib
                .min(d.current_kib)
                .min(x.memory_kib)
                .max(1),
            x.memory_kib.min(d.maximum_kib),
            x.balloon,
        ),
        None => (d.current_kib.max(1), d.maximum_kib, true),
    };
    VmRecord::new(
        d.name.clone(),
        d.uuid.clone(),
        floor,
        ceiling.max(floor),
        balloon,
        Source::Adopted,
        now,
    )
}

/// Brings the state in line with what libvirt runs: forgets VMs that are
/// gone (a stop the hook missed), adopts VMs no hook recorded. Returns the
/// UUIDs adopted.
pub fn reconcile(
    state: &mut State,
    domains: &[LiveDomain],
    hv: &mut dyn Hypervisor,
    now: u64,
    log_changes: bool,
) -> BTreeSet<String> {
    let live: BTreeSet<&str> = domains.iter().map(|d| d.uuid.as_str()).collect();
    state.vms.retain(|uuid, r| {
        if live.contains(uuid.as_str()) {
            return true;
        }
        if now.saturating_sub(r.recorded_at) < STARTING_GRACE_SECS && r.last_change_at.is_none() {
            debug!(
                "VM {:?} recorded {}s ago is not active yet: still starting",
                r.name,
                now.saturating_sub(r.recorded_at)
            );
            return true;
        }
        if log_changes {
            info!(
                "VM {:?} is no longer running: forgotten (its stop was not seen by the hook)",
                r.name
            );
        }
        false
    });
    let mut adopted = BTreeSet::new();
    for d in domains {
        match state.vms.get_mut(&d.uuid) {
            Some(r) => {
                if r.name != d.name {
                    r.name = d.name.clone();
                }
            }
            None => {
                let r = adopt(hv, d, now);
                if log_changes {
                    info!(
                        "adopted VM {:?} (no hook recorded it; installed while it ran?): floor {}, ceiling {}{}",
                        r.name,
                        Kib(r.floor_kib),
                        Kib(r.ceiling_kib),
                        if r.balloon { "" } else { ", no balloon device" }
                    );
                }
                adopted.insert(d.uuid.clone());
                state.vms.insert(d.uuid.clone(), r);
            }
        }
    }
    adopted
}

/// Runs one pass. With [`Mode::Apply`] the caller holds the lock and has
/// loaded `state`; the state is updated in place for the caller to save.
pub fn pass(
    cfg: &Config,
    host: &HostReading,
    state: &mut State,
    hv: &mut dyn Hypervisor,
    mode: Mode,
    now: u64,
) -> anyhow::Result<Report> {
    let s = &cfg.settings;
    let savings = host.ksm.savings(s.metric, &cfg.ksm_dir)?;
    if host.ksm.unmerged() {
        info!(
            "KSM has unmerged everything ({}/run = 2): its savings are gone, so the bonuses go with them",
            cfg.ksm_dir.display()
        );
    } else if !host.ksm.counters_live() {
        warn!(
            "KSM is not merging ({}/run = {}): its counters are stale, so sizes are held; start it with 'echo 1 > /sys/kernel/mm/ksm/run'",
            cfg.ksm_dir.display(),
            host.ksm.run
        );
    }
    let mut domains = hv.domains()?;
    domains.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));
    let adopted = reconcile(state, &domains, hv, now, mode == Mode::Apply);

    let policy = Policy {
        share: s.share,
        split: s.split,
        reserve_kib: s.reserve.resolve(host.mem.total_kib),
        deadband_kib: s.deadband,
        max_grow_kib: s.max_grow.0,
        max_shrink_kib: s.max_shrink.0,
    };
    let hv_view = HostView {
        savings_kib: savings.kib,
        ksm_counters_live: host.ksm.counters_live(),
        available_kib: host.mem.available_kib,
    };
    let managed: Vec<(&LiveDomain, &VmRecord)> = domains
        .iter()
        .filter_map(|d| state.vms.get(&d.uuid).map(|r| (d, r)))
        .collect();
    let views: Vec<VmView> = managed
        .iter()
        .map(|(d, r)| VmView {
            floor_kib: r.floor_kib,
            ceiling_kib: r.ceiling_kib.min(d.maximum_kib),
            current_kib: d.current_kib,
            status: if !r.balloon {
                VmStatus::NoBalloon
            } else if !d.running {
                VmStatus::NotRunning
            } else {
                VmStatus::Managed
            },
        })
        .collect();
    let plan = policy::plan(&policy, &hv_view, &views);
    debug!(
        "pass: run={} pages_shared={} pages_sharing={} pages_unshared={} pages_volatile={} full_scans={} general_profit={:?} ksm_zero_pages={:?}; savings {} ({}), pool {}, budget {}, bonus now {}, MemAvailable {}, reserve {}, {} managed of {} active",
        host.ksm.run, host.ksm.pages_shared, host.ksm.pages_sharing, host.ksm.pages_unshared,
        host.ksm.pages_volatile, host.ksm.full_scans, host.ksm.general_profit, host.ksm.ksm_zero_pages,
        Kib(savings.kib), savings.metric, Kib(plan.pool_kib), Kib(plan.budget_kib), Kib(plan.bonus_now_kib),
        Kib(host.mem.available_kib), Kib(policy.reserve_kib), plan.managed, domains.len()
    );
    if plan.under_reserve {
        warn!(
            "host MemAvailable {} is under the reserve {}: no VM grows, bonuses shrink",
            Kib(host.mem.available_kib),
            Kib(policy.reserve_kib)
        );
    }

    let mut vms = Vec::with_capacity(managed.len());
    for ((d, r), (view, dec)) in managed.iter().zip(views.iter().zip(&plan.decisions)) {
        if dec.action == Action::Skip && mode == Mode::Apply {
            debug!("VM {:?}: left alone: {}", d.name, dec.reason);
        }
        let bonus = dec.target_kib.saturating_sub(view.floor_kib);
        vms.push(VmReport {
            name: d.name.clone(),
            uuid: d.uuid.clone(),
            floor_kib: view.floor_kib,
            ceiling_kib: view.ceiling_kib,
            current_kib: d.current_kib,
            target_kib: dec.target_kib,
            action: dec.action,
            reason: dec.reason,
            share_of_pool: if plan.budget_kib > 0 && dec.action != Action::Skip {
                bonus as f64 / plan.budget_kib as f64
            } else {
                0.0
            },
            source: r.source,
            adopted: adopted.contains(&d.uuid),
            last_change_at: r.last_change_at,
            error: None,
        });
    }

    let mut report = Report {
        at: now,
        dry_run: mode == Mode::DryRun,
        ksm: host.ksm.clone(),
        metric: savings.metric,
        savings_kib: savings.kib,
        pool_kib: plan.pool_kib,
        budget_kib: plan.budget_kib,
        host: host.mem,
        reserve_kib: policy.reserve_kib,
        under_reserve: plan.under_reserve,
        policy,
        vms,
        resized: 0,
        failed: 0,
        calls: CallCount::default(),
        state_problem: None,
    };

    if mode == Mode::Apply {
        for vm in report
            .vms
            .iter_mut()
            .filter(|v| matches!(v.action, Action::Grow | Action::Shrink))
        {
            match hv.set_memory(&vm.uuid, vm.target_kib) {
                Ok(()) => {
                    report.resized += 1;
                    info!(
                        "VM {:?}: {} -> {} ({}; {}): {} savings, pool {} over {} VMs",
                        vm.name,
                        Kib(vm.current_kib),
                        Kib(vm.target_kib),
                        KibDelta(vm.target_kib as i64 - vm.current_kib as i64),
                        vm.reason,
                        Kib(report.savings_kib),
                        Kib(report.budget_kib),
                        plan.managed
                    );
                    if let Some(r) = state.vms.get_mut(&vm.uuid) {
                        r.last_target_kib = Some(vm.target_kib);
                        r.last_change_at = Some(now);
                    }
                    vm.last_change_at = Some(now);
                }
                Err(e) if e.is_fatal() => {
                    return Err(e).context("pass aborted; the state file is left as it was");
                }
                Err(e) => {
                    report.failed += 1;
                    warn!(
                        "VM {:?}: resize to {} skipped: {e}",
                        vm.name,
                        Kib(vm.target_kib)
                    );
                    vm.error = Some(e.to_string());
                }
            }
        }
        state.last_pass = Some(LastPass {
            at: now,
            metric: savings.metric.to_string(),
            savings_kib: report.savings_kib,
            pool_kib: report.pool_kib,
            budget_kib: report.budget_kib,
            available_kib: host.mem.available_kib,
            resized: report.resized,
            failed: report.failed,
        });
        if report.failed > 0 {
            error!(
                "{} of {} resizes failed this pass",
                report.failed,
                report.failed + report.resized
            );
        }
    }
    report.calls = hv.calls();
    debug!("libvirt calls this pass: {:?}", report.calls);
    Ok(report)
}

/// Folds the hook's spooled records into `state`, logging what each did.
/// Returns the spool entries read (records and strays), for the caller to
/// remove once the state that holds them is saved.
pub fn fold_spool(store: &Store, state: &mut State, log: bool) -> Vec<spool::Entry> {
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
            Err(why) if log => warn!("hook spool: {}: {why}; removed", e.path.display()),
            Err(_) => {}
        }
    }
    for f in hook::fold(state, &records) {
        if !log {
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
                Kib(r.floor_kib),
                Kib(r.ceiling_kib),
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

/// `ksm-balloon run`: lock, load, fold the spool, pass, save.
pub fn run(
    cfg: &Config,
    hv_open: &mut dyn FnMut() -> anyhow::Result<Box<dyn Hypervisor>>,
    now: u64,
) -> anyhow::Result<Report> {
    let store = Store::new(cfg.state_path.clone()).with_proc_locks(crate::cli::under_root(
        &cfg.settings.root,
        std::path::Path::new("/proc/locks"),
    ));
    let lock = store.lock(cfg.settings.lock_timeout)?;
    let loaded = lock.load(now)?;
    let mut problem = None;
    let mut state = match loaded {
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
    if !folded.is_empty() {
        // Saved before anything else can fail, so the records can go: a
        // spool left full would keep the systemd path unit starting passes.
        lock.save(&state)?;
        spool::remove(&folded);
    }
    let host = read_host(cfg)?;
    let mut hv = hv_open()?;
    debug!("connected to libvirt at {}", cfg.settings.connect);
    let mut report = pass(cfg, &host, &mut state, hv.as_mut(), Mode::Apply, now)?;
    lock.save(&state)?;
    report.state_problem = problem;
    Ok(report)
}

/// `plan`, `run --dry-run` and `status`: the same reading, nothing changed.
pub fn dry_run(
    cfg: &Config,
    hv_open: &mut dyn FnMut() -> anyhow::Result<Box<dyn Hypervisor>>,
    now: u64,
) -> anyhow::Result<Report> {
    let store = Store::new(cfg.state_path.clone());
    let (mut state, problem) = store.peek()?;
    if let Some(p) = &problem {
        warn!(
            "state file {} is unusable ({p}); the next pass moves it aside and rebuilds",
            store.path().display()
        );
    }
    fold_spool(&store, &mut state, false);
    let host = read_host(cfg)?;
    let mut hv = hv_open()?;
    let mut report = pass(cfg, &host, &mut state, hv.as_mut(), Mode::DryRun, now)?;
    report.state_problem = problem;
    Ok(report)
}
