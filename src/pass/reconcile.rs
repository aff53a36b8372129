//! Stage 1 of the plan: the state brought in line with what libvirt runs.
//! Records of domains that are gone are forgotten (a stop the hook
//! missed), except a young one never resized (a VM still starting); running
//! domains no hook recorded are adopted, only with what is known
//! ([`adoption`]): a persistent domain at once, its definition's
//! `<currentMemory>` as its floor; a transient one (no definition tells its
//! boot size) only once its QEMU has run [`ADOPT_BOOT_SECS`] and its
//! balloon stayed put between two passes, so a VM is never adopted with a
//! size its balloon driver has not finished reaching as its floor. A VM
//! whose QEMU does not answer is neither adopted nor forgotten; its record
//! keeps since when it does not answer.

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

/// A transient domain no hook recorded is adopted only once its QEMU has
/// run this long (or, where `/proc` does not tell, once a pass first saw
/// it this long ago): a guest still booting has not loaded its balloon
/// driver, or not finished inflating its balloon from the maximum to its
/// boot size. Measured on the real stack here (software emulation, 2
/// cores, a benchmark's guests running beside): the drivers reached the
/// boot size 30 to 38 s after the domains were created.
pub const ADOPT_BOOT_SECS: u64 = 60;

/// A transient domain whose balloon is still at its maximum waits this
/// long instead: its guest may not have loaded its balloon driver yet (a
/// slow boot), and adopted there it would have no headroom, and its
/// balloon's later move to the boot size would look like someone else's.
/// Waiting costs nothing: at its maximum there is nothing to lend it.
pub const ADOPT_AT_MAXIMUM_SECS: u64 = 300;

/// A balloon within this of where the last pass saw it has not moved.
pub const STEADY_KIB: u64 = 1024;

/// How a VM no hook recorded may be adopted this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// Not yet: it may still be booting (its balloon driver not loaded, or
    /// on its way from the maximum to the boot size).
    Wait,
    /// A persistent domain: its definition's `<currentMemory>` is the size
    /// it boots with.
    Defined,
    /// A transient domain seen booting, its balloon settled since: that
    /// size is its boot size.
    Booted,
    /// A transient domain found running well after its boot: its boot
    /// size cannot be known; its size now is taken (the safe side for the
    /// guest: a bonus it may hold is never recalled).
    FloorUnknown,
}

/// The adoption rule. A persistent domain's floor is its definition's
/// `<currentMemory>`, known whatever its balloon does: adopted at once (a
/// balloon above it on its way down from the maximum is the boot's, and
/// the manual-change detector starts as for a VM the hook saw start). A
/// transient domain's only source is its balloon's size, so it waits while
/// that may still move on its own: until its QEMU has run
/// [`ADOPT_BOOT_SECS`] (`qemu_age`; where `/proc` does not tell, since the
/// first pass saw it: `seen_for`), [`ADOPT_AT_MAXIMUM_SECS`] while its
/// balloon is at its maximum (`maximum_kib`), and until the balloon stayed
/// within [`STEADY_KIB`] of where the previous pass saw it (`seen_before`).
/// A VM that stays at its maximum past that has no driver or no headroom.
/// Pure.
pub fn adoption(
    transient: bool,
    current_kib: u64,
    maximum_kib: u64,
    seen_before: Option<u64>,
    qemu_age: Option<u64>,
    seen_for: u64,
) -> Adoption {
    if !transient {
        return Adoption::Defined;
    }
    let steady = seen_before.is_some_and(|k| k.abs_diff(current_kib) <= STEADY_KIB);
    let wait = if current_kib.saturating_add(STEADY_KIB) >= maximum_kib {
        ADOPT_AT_MAXIMUM_SECS
    } else {
        ADOPT_BOOT_SECS
    };
    let old_enough = qemu_age.unwrap_or(seen_for) >= wait;
    if !(steady && old_enough) {
        return Adoption::Wait;
    }
    // Seen while it booted (its QEMU was young at the first sighting): the
    // size it settled at is its boot size.
    match qemu_age {
        Some(age) if age.saturating_sub(seen_for) < wait => Adoption::Booted,
        _ => Adoption::FloorUnknown,
    }
}

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

/// Keeps `r`'s record of whether its QEMU answers: since when it does not
/// (named in the log when it starts and when it ends). Its record is kept
/// either way: a VM that does not answer is neither forgotten nor
/// re-adopted.
fn track_unresponsive(r: &mut VmRecord, d: &LiveDomain, now: u64, notes: &mut Vec<Note>) {
    match (&d.unresponsive, r.unresponsive_since) {
        (Some(why), None) => {
            r.unresponsive_since = Some(now);
            note(
                notes,
                Level::Warn,
                format!(
                    "VM {:?} does not answer: {why}; left alone (its balloon stays at {}) until it does, the others are resized as usual",
                    d.name,
                    d.sizes.map_or("what it was".into(), |s| Kib(s.current_kib).to_string())
                ),
            );
        }
        (Some(why), Some(since)) => note(
            notes,
            Level::Warn,
            format!(
                "VM {:?} still does not answer ({}s): {why}; left alone",
                d.name,
                now.saturating_sub(since)
            ),
        ),
        (None, Some(since)) => {
            r.unresponsive_since = None;
            note(
                notes,
                Level::Info,
                format!(
                    "VM {:?} answers again (it did not for {}s): managed as before",
                    d.name,
                    now.saturating_sub(since)
                ),
            );
        }
        (None, None) => {}
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
            track_unresponsive(r, d, now, notes);
            continue;
        }
        let cand = state
            .candidates
            .entry(d.uuid.clone())
            .or_insert_with(|| Candidate {
                name: d.name.clone(),
                first_seen: now,
                last_kib: None,
            });
        let seen_before = cand.last_kib;
        if let Some(s) = d.sizes {
            cand.last_kib = Some(s.current_kib);
        }
        let first_seen = cand.first_seen;
        let (true, Some(sizes), None) = (d.running, d.sizes, &d.unresponsive) else {
            continue;
        };
        let Some(Ok(_)) = obs.definitions.get(&d.uuid) else {
            // No definition: its floor cannot be known this pass.
            continue;
        };
        let way = match adoption(
            obs.transient.contains(&d.uuid),
            sizes.current_kib.min(sizes.maximum_kib),
            sizes.maximum_kib,
            seen_before,
            obs.qemu_age.get(&d.uuid).copied(),
            now.saturating_sub(first_seen),
        ) {
            Adoption::Wait => continue,
            w => w,
        };
        let (floor, ceiling, balloon) = adoption_bounds(d, obs.definitions.get(&d.uuid));
        state.candidates.remove(&d.uuid);
        let r = adopt(
            d,
            obs.definitions.get(&d.uuid),
            (floor, ceiling, balloon),
            way,
            now,
            notes,
        );
        state.vms.insert(d.uuid.clone(), r);
        adopted.push(d.uuid.clone());
    }
    adopted
}

/// The record of `d`, adopted at `now` with `bounds` (floor, ceiling,
/// balloon) and its definition's settings; `way` says how its floor is
/// known.
fn adopt(
    d: &LiveDomain,
    def: Option<&Result<DomainXml, String>>,
    (floor, ceiling, balloon): (u64, u64, bool),
    way: Adoption,
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
        if way == Adoption::FloorUnknown {
            Level::Warn
        } else {
            Level::Info
        },
        format!(
            "adopted VM {:?} (no hook recorded it; installed while it ran?): floor {}, ceiling {}{}{}",
            d.name,
            Kib(r.floor_kib),
            Kib(r.ceiling_kib),
            if balloon { "" } else { ", no balloon device" },
            match way {
                Adoption::Defined | Adoption::Wait => "",
                Adoption::Booted =>
                    " (a transient domain: the size its balloon driver settled at after its boot)",
                Adoption::FloorUnknown => " (a transient domain found running: no definition tells its boot size, so its size now is taken as its floor; a bonus it may hold from before the state was lost is never taken back)",
            }
        ),
    );
    r
}
