//! Step 1 of a pass: what the host and libvirt say now. Reads only; the
//! state is consulted (to know which running domains no hook recorded, and
//! so need their definition to be adopted) but never changed.

use std::collections::BTreeMap;

use log::warn;

use crate::domxml::{self, DomainXml};
use crate::errors::chain;
use crate::hypervisor::{HvError, Hypervisor, LiveDomain};
use crate::ksm::{self, KsmCounters};
use crate::meminfo::{self, MemInfo};
use crate::procksm::{self, AllProcesses, ProcPaths, VmProcess};
use crate::state::State;

use super::settings::Paths;

/// Everything a pass plans from.
#[derive(Clone, Debug)]
pub struct Observation {
    /// When (seconds since the epoch).
    pub at: u64,
    /// The KSM counters.
    pub ksm: KsmCounters,
    /// The host's meminfo.
    pub mem: MemInfo,
    /// Every active domain, by name then UUID.
    pub domains: Vec<LiveDomain>,
    /// The definition of each running domain no hook recorded, by UUID (or
    /// why it could not be had).
    pub definitions: BTreeMap<String, Result<DomainXml, String>>,
    /// The kernel's per-process KSM figures, when the split needs them.
    pub procs: Option<ProcReading>,
    /// The running domains no hook recorded that have no persistent
    /// definition (transient: their definition's `<currentMemory>` is the
    /// balloon's size of the moment), by UUID.
    pub transient: std::collections::BTreeSet<String>,
    /// How long the QEMU of each running domain no hook recorded has been
    /// running, seconds, where `/proc` tells (by UUID).
    pub qemu_age: BTreeMap<String, u64>,
    /// How far the wall clock stepped since the last pass, seconds
    /// (positive: forward), when it did (`super::clock`): the state's
    /// instants are already moved by it; the guests' figures are not.
    pub clock_step_secs: Option<i64>,
    /// ksmd (its pid and CPU time), or why it was not found: what KSM's
    /// scanning costs ([`crate::ksmcost`]).
    pub ksmd: Result<crate::ksmcost::Ksmd, String>,
    /// KSM's knobs (`run`, `pages_to_scan`, `sleep_millisecs`, the
    /// advisor), or why they could not be read: the governor's input
    /// ([`crate::governor`]).
    pub knobs: Result<crate::governor::Found, String>,
    /// How long after `at` the domains were read, seconds, rounded up: the
    /// pass's wait for its lock and libvirt's time (by the monotonic
    /// clock). A guest's report may be stamped that much after `at`.
    pub read_after_secs: u64,
}

/// The kernel's per-process KSM figures of one pass.
#[derive(Clone, Debug)]
pub struct ProcReading {
    /// Each running VM's QEMU and its figures, by UUID (or why they could
    /// not be had).
    pub vms: BTreeMap<String, Result<VmProcess, String>>,
    /// Every process's figures (for what the others saved), or why not.
    pub all: Result<AllProcesses, String>,
}

/// Reads the per-process figures of the running `domains` (a VM adopted
/// this pass counts too), and of every process. Never fails: each problem
/// is the VM's (or the host's) fallback, logged by the plan.
pub fn read_procs(paths: &ProcPaths, domains: &[LiveDomain]) -> ProcReading {
    let vms = domains
        .iter()
        .filter(|d| d.running)
        .map(|d| {
            let r = procksm::read_vm(paths, &d.name, Some(&d.uuid)).map_err(|e| chain(&e));
            (d.uuid.clone(), r)
        })
        .collect();
    let all = procksm::read_all(&paths.proc_dir).map_err(|e| chain(&e));
    ProcReading { vms, all }
}

/// Reads KSM and meminfo.
pub fn read_host(paths: &Paths) -> anyhow::Result<(KsmCounters, MemInfo)> {
    let ksm = ksm::read(&paths.ksm_dir, ksm::host_page_size())?;
    let mem = meminfo::read(&paths.meminfo)?;
    Ok((ksm, mem))
}

/// Lists the domains (one bulk call), fetches the definition of each
/// running one that `state` does not know (whether it is persistent, and
/// how long its QEMU has run: what tells a VM still booting), and reads the
/// per-process KSM figures when `contribution` asks for them. A fatal
/// libvirt error (the connection is gone) ends the pass.
pub fn observe(
    ksm: KsmCounters,
    mem: MemInfo,
    hv: &mut dyn Hypervisor,
    state: &State,
    now: u64,
    proc_paths: &ProcPaths,
    contribution: bool,
) -> Result<Observation, HvError> {
    let mut domains = hv.domains()?;
    domains.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));
    let mut definitions = BTreeMap::new();
    let mut transient = std::collections::BTreeSet::new();
    let mut qemu_age = BTreeMap::new();
    for d in &domains {
        if state.vms.contains_key(&d.uuid)
            || !d.running
            || d.sizes.is_none()
            || d.unresponsive.is_some()
        {
            continue;
        }
        let def = match hv.inactive_xml(&d.uuid) {
            Ok(text) => domxml::parse(&text).map_err(|e| chain(&e)),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                warn!(
                    "VM {:?}: cannot fetch its definition to adopt it: {}",
                    d.name,
                    chain(&e)
                );
                Err(chain(&e))
            }
        };
        let def = def.and_then(|x| match hv.persistent(&d.uuid) {
            Ok(p) => {
                if !p {
                    transient.insert(d.uuid.clone());
                }
                Ok(x)
            }
            Err(e) => Err(chain(&e)),
        });
        definitions.insert(d.uuid.clone(), def);
        if let Ok(age) = procksm::qemu_age_secs(proc_paths, &d.name, Some(&d.uuid)) {
            qemu_age.insert(d.uuid.clone(), age);
        }
    }
    let procs = contribution.then(|| read_procs(proc_paths, &domains));
    let ksmd = crate::ksmcost::read_ksmd(
        &proc_paths.proc_dir,
        state.ksm_cost.map(|m| (m.pid, m.start_time)),
    );
    Ok(Observation {
        at: now,
        ksm,
        mem,
        domains,
        definitions,
        procs,
        transient,
        qemu_age,
        ksmd,
        knobs: Err("not read".into()),
        clock_step_secs: None,
        read_after_secs: 0,
    })
}
