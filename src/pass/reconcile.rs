//! Stage 1 of the plan: the state brought in line with what libvirt runs.
//! Records of domains that are gone are forgotten (a stop the hook
//! missed), except a young one never resized (a VM still starting); running
//! domains no hook recorded are adopted. A domain whose balloon is still at
//! its maximum may be one still starting (its guest's balloon driver has
//! not inflated yet) or one started without headroom; it is adopted only
//! after [`ADOPT_SETTLE_SECS`], so a VM is never adopted with its
//! not-yet-inflated size as its floor.

use log::Level;

use crate::domxml::DomainXml;
use crate::hypervisor::LiveDomain;
use crate::state::{Candidate, Source, State, VmRecord};
use crate::units::Kib;

use super::notes::{note, Note};
use super::observe::Observation;

/// A record this young whose domain is not active yet is a VM still
/// starting (the hook ran at `prepare`): kept, not forgotten.
pub const STARTING_GRACE_SECS: u64 = 120;

/// An unrecorded domain whose balloon sits at its maximum is adopted only
/// once it has been seen that long (a starting guest inflates well within it).
pub const ADOPT_SETTLE_SECS: u64 = 30;

/// The floor and ceiling to adopt `d` with, from its definition.
fn adoption_bounds(d: &LiveDomain, def: Option<&Result<DomainXml, String>>) -> (u64, u64, bool) {
    let s = d.sizes.expect("only domains with sizes are adopted");
    match def {
        // The definition's <currentMemory> is the size it boots with; a
        // transient domain's is its live size.
        Some(Ok(x)) => {
            let floor = x
                .current_memory_kib
                .min(s.current_kib)
                .min(x.memory_kib)
                .max(1);
            (floor, x.memory_kib.min(s.maximum_kib).max(floor), x.balloon)
        }
        _ => (
            s.current_kib.max(1),
            s.maximum_kib.max(s.current_kib.max(1)),
            true,
        ),
    }
}

/// Brings the state in line with what libvirt runs. Returns the UUIDs
/// adopted.
pub fn reconcile(state: &mut State, obs: &Observation, notes: &mut Vec<Note>) -> Vec<String> {
    let now = obs.at;
    let live: std::collections::BTreeSet<&str> =
        obs.domains.iter().map(|d| d.uuid.as_str()).collect();
    state.vms.retain(|uuid, r| {
        if live.contains(uuid.as_str()) {
            return true;
        }
        if now.saturating_sub(r.recorded_at) < STARTING_GRACE_SECS && r.last_change_at.is_none() {
            return true;
        }
        note(
            notes,
            Level::Info,
            format!(
                "VM {:?} is no longer running: forgotten (its stop was not seen by the hook)",
                r.name
            ),
        );
        false
    });
    state
        .candidates
        .retain(|uuid, _| live.contains(uuid.as_str()) && !state.vms.contains_key(uuid));
    let mut adopted = Vec::new();
    for d in &obs.domains {
        if let Some(r) = state.vms.get_mut(&d.uuid) {
            if r.name != d.name {
                r.name = d.name.clone();
            }
            continue;
        }
        let first_seen = state
            .candidates
            .entry(d.uuid.clone())
            .or_insert_with(|| Candidate {
                name: d.name.clone(),
                first_seen: now,
            })
            .first_seen;
        if !d.running || d.sizes.is_none() {
            continue;
        }
        let (floor, ceiling, balloon) = adoption_bounds(d, obs.definitions.get(&d.uuid));
        let settled = now.saturating_sub(first_seen) >= ADOPT_SETTLE_SECS;
        if floor >= ceiling && !settled {
            continue;
        }
        state.candidates.remove(&d.uuid);
        let r = adopt(
            d,
            obs.definitions.get(&d.uuid),
            (floor, ceiling, balloon),
            now,
            notes,
        );
        state.vms.insert(d.uuid.clone(), r);
        adopted.push(d.uuid.clone());
    }
    adopted
}

/// The record of `d`, adopted at `now` with `bounds` (floor, ceiling,
/// balloon) and its definition's settings.
fn adopt(
    d: &LiveDomain,
    def: Option<&Result<DomainXml, String>>,
    (floor, ceiling, balloon): (u64, u64, bool),
    now: u64,
    notes: &mut Vec<Note>,
) -> VmRecord {
    let mut r = VmRecord::new(
        d.name.clone(),
        d.uuid.clone(),
        floor,
        ceiling,
        balloon,
        Source::Adopted,
        now,
    );
    r.defined = Some((floor, ceiling));
    if let Some(Ok(def)) = def {
        r.autodeflate = def.autodeflate;
        let problems = def
            .metadata
            .problems
            .iter()
            .cloned()
            .chain(r.apply_settings(def.metadata.settings.clone()));
        for p in problems {
            note(notes, Level::Warn, format!("VM {:?}: {p}; ignored", d.name));
        }
    }
    // A balloon above the size the VM boots with may still be inflating
    // to it (a guest just started, its balloon driver not yet loaded):
    // that is the path from the maximum down to the boot size, not an
    // operator's setmem. Above the floor, start the detector as the hook
    // does for a VM it saw start.
    let current = d.sizes.map_or(floor, |s| s.current_kib);
    r.manual = Some(if current > floor {
        crate::manual::History::started(now, floor, d.sizes.map_or(current, |s| s.maximum_kib))
    } else {
        crate::manual::History::adopted(now, current)
    });
    note(
        notes,
        Level::Info,
        format!(
            "adopted VM {:?} (no hook recorded it; installed while it ran?): floor {}, ceiling {}{}",
            d.name,
            Kib(r.floor_kib),
            Kib(r.ceiling_kib),
            if balloon { "" } else { ", no balloon device" }
        ),
    );
    r
}
