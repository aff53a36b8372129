//! Stage 2 of the plan: what is lent. The savings by the metric in use;
//! for the contribution splits, each VM's part of them from the kernel's
//! per-process figures, and only the VMs' part is lent; then only what
//! held over the holding window ([`hold`]).

use std::collections::BTreeMap;

use log::Level;
use serde::Serialize;

use crate::attribution::Attribution;
use crate::ksm::Savings;
use crate::state::State;

use super::notes::{note, Note};
use super::observe::Observation;
use super::settings::{Settings, HOLD_MAX_ENTRIES};

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

/// What the pass can lend, and whose savings it is.
#[derive(Clone, Debug)]
pub struct Lending {
    /// The host's savings by the metric in use.
    pub savings: Savings,
    /// Whose savings (contribution splits), or why there is no attribution
    /// this pass.
    pub attribution: Result<AttributionReport, String>,
    /// Each VM's own KSM figures and part, by UUID (contribution splits).
    pub parts: BTreeMap<String, VmKsm>,
    /// What the pool is taken from: the savings (the VMs' part of them, for
    /// the contribution splits) that held over the holding window, KiB.
    pub lendable_kib: u64,
}

/// Works out what is lent this pass, keeping the holding window's readings
/// in `state`.
pub fn lending(
    settings: &Settings,
    obs: &Observation,
    savings: Savings,
    state: &mut State,
    notes: &mut Vec<Note>,
) -> Lending {
    let now = obs.at;
    // Whose savings: the VMs' parts, for the contribution splits.
    let (attribution, parts) = if settings.policy.split.inputs().contribution {
        match attribute_vms(obs, savings.metric) {
            Ok((a, parts)) => (
                Ok(AttributionReport {
                    host_kib: a.host_kib,
                    vms_kib: a.vms_kib,
                    non_vm_kib: a.non_vm_kib,
                    others_kib: a.others_kib,
                }),
                parts,
            ),
            Err(why) => {
                note(
                    notes,
                    Level::Debug,
                    format!("no per-process KSM figures ({why}): the split is equal this pass"),
                );
                (Err(why), BTreeMap::new())
            }
        }
    } else {
        (Err("not needed by this split".to_string()), BTreeMap::new())
    };
    if let Some(procs) = &obs.procs {
        for (uuid, r) in &procs.vms {
            if let Err(why) = r {
                let name = state
                    .vms
                    .get(uuid)
                    .map_or(uuid.as_str(), |r| r.name.as_str());
                note(
                    notes,
                    Level::Debug,
                    format!(
                        "VM {name:?}: no per-process KSM figures ({why}); counted as an average VM"
                    ),
                );
            }
        }
    }
    // Lend only what holds (of the VMs' part, for the contribution splits).
    let lendable_now = match &attribution {
        Ok(a) => u64::try_from(a.vms_kib).unwrap_or(0),
        Err(_) => savings.kib,
    };
    let lendable_kib = if obs.ksm.counters_live() {
        hold(
            &mut state.savings_seen,
            lendable_now,
            now,
            settings.hold_window_secs,
        )
    } else {
        state.savings_seen.clear();
        lendable_now
    };
    Lending {
        savings,
        attribution,
        parts,
        lendable_kib,
    }
}

/// Lend only what holds: records `now_kib` in `seen` (dropping readings
/// older than `window_secs`) and returns the smallest reading of the
/// window, the present one included, so a fall is followed at once and a
/// rise only once it has lasted the window.
///
/// `seen` (in the state file) keeps only what can still be the smallest:
/// a reading followed by one as small or smaller never will be, so the
/// readings kept rise with time (one entry at steady savings, not one per
/// pass). At most [`HOLD_MAX_ENTRIES`] are kept: past that, the
/// two kept closest in time become one, with the smaller reading and the
/// later time, which can only hold a rise back a little longer, never
/// lend it early.
pub fn hold(seen: &mut Vec<(u64, u64)>, now_kib: u64, now: u64, window_secs: u64) -> u64 {
    if window_secs == 0 {
        seen.clear();
        return now_kib;
    }
    seen.retain(|&(at, _)| at <= now && now - at < window_secs);
    while seen.last().is_some_and(|&(_, k)| k >= now_kib) {
        seen.pop();
    }
    seen.push((now, now_kib));
    while seen.len() > HOLD_MAX_ENTRIES {
        let i = (1..seen.len())
            .min_by_key(|&i| seen[i].0 - seen[i - 1].0)
            .unwrap_or(1);
        seen[i].1 = seen[i].1.min(seen[i - 1].1);
        seen.remove(i - 1);
    }
    seen.iter().map(|&(_, k)| k).min().unwrap_or(now_kib)
}

/// The VMs' parts of the host's savings from the per-process figures:
/// (the attribution, each VM's QEMU pid and merging pages and part by
/// UUID), or why there is none this pass.
fn attribute_vms(
    obs: &Observation,
    metric: crate::ksm::Metric,
) -> Result<(Attribution, BTreeMap<String, VmKsm>), String> {
    let procs = obs
        .procs
        .as_ref()
        .ok_or("per-process figures were not read")?;
    let all = procs.all.as_ref().map_err(Clone::clone)?;
    let mut uuids = Vec::new();
    let mut figures = Vec::new();
    for (uuid, r) in &procs.vms {
        if let Ok(vp) = r {
            if let Some(f) = crate::attribution::ProcessFigures::from_stat(&vp.stat) {
                uuids.push((uuid.clone(), vp.pid, f.merging_pages));
                figures.push(f);
            }
        }
    }
    let vm_pids: std::collections::BTreeSet<u32> = uuids.iter().map(|(_, p, _)| *p).collect();
    let others: Vec<_> = all
        .others(&vm_pids)
        .filter_map(crate::attribution::ProcessFigures::from_stat)
        .collect();
    let host = crate::attribution::HostFigures::from_counters(&obs.ksm);
    let a = crate::attribution::attribute(&host, metric, &figures, Some(&others))
        .map_err(|e| e.to_string())?;
    let parts = uuids
        .into_iter()
        .zip(&a.vm_kib)
        .map(|((uuid, pid, merging_pages), &kib)| {
            (
                uuid,
                VmKsm {
                    pid,
                    merging_pages,
                    attributed_kib: kib,
                },
            )
        })
        .collect();
    Ok((a, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_held_over_the_window_is_lent() {
        let mut seen = Vec::new();
        assert_eq!(hold(&mut seen, 100, 0, 60), 100);
        // a peak is not lent until it has lasted the window
        assert_eq!(hold(&mut seen, 180, 10, 60), 100);
        assert_eq!(hold(&mut seen, 180, 50, 60), 100);
        assert_eq!(hold(&mut seen, 180, 60, 60), 180);
        // a fall is followed at once
        assert_eq!(hold(&mut seen, 90, 70, 60), 90);
        // window 0: the savings of the moment (the paper)
        assert_eq!(hold(&mut seen, 500, 80, 0), 500);
        assert!(seen.is_empty());
    }
}
