//! The operator's commands that change the state outside a pass, each
//! under the pass lock:
//!
//! - `release VM...`: hands VMs whose balloon was set by someone else back
//!   to ksm-balloon; their size now becomes where it starts from.
//! - `reload [VM...]`: re-reads VMs' ksm-balloon metadata from libvirt
//!   (after `virsh metadata --live`): one metadata read per VM, on demand,
//!   never in the timer's pass.
//! - `ksm-restore`: gives KSM's knobs back as the operator had them before
//!   `--ksm manage` took them over (the packages' uninstall scriptlets run
//!   it); never connects to libvirt.

use anyhow::{bail, Context};
use log::{info, warn};

use crate::hypervisor::Hypervisor;
use crate::metadata;
use crate::pass::{fold_spool, Now, Opener, Paths};
use crate::state::{State, VmRecord};
use crate::units::Kib;

fn pick<'a>(state: &'a mut State, names: &[String]) -> anyhow::Result<Vec<&'a mut VmRecord>> {
    if let Some(missing) = names
        .iter()
        .find(|n| !state.vms.values().any(|r| &r.name == *n || &r.uuid == *n))
    {
        bail!("no managed VM is called {missing:?} (see 'ksm-balloon status')");
    }
    Ok(state
        .vms
        .values_mut()
        .filter(|r| names.is_empty() || names.iter().any(|n| *n == r.name || *n == r.uuid))
        .collect())
}

/// Logs the VM records a load dropped (they cannot be right).
fn logged(store: &crate::state::Store, loaded: crate::state::Loaded) -> crate::state::Loaded {
    for d in loaded.dropped() {
        log::error!(
            "state file {}: {d}; dropped that record, kept the rest",
            store.path().display()
        );
    }
    loaded
}

/// Takes the pass lock and loads the state, with the wall clock's step
/// since the last pass taken out of it (as a pass does: the times this
/// command writes are on the same clock as the rest) and the spool folded.
fn locked(
    store: &crate::state::Store,
    lock_timeout: std::time::Duration,
    clocks: Now,
) -> anyhow::Result<(crate::state::Locked<'_>, State, u64)> {
    let now = clocks.wall;
    let lock = store.lock(lock_timeout)?;
    let mut state = logged(store, lock.load(now)?).into_state();
    if let Some(delta) = crate::pass::clock::take_step(&mut state, &clocks) {
        warn!("{}", crate::pass::clock::step_line(delta));
    }
    fold_spool(store, &mut state, Some(&lock), &clocks)?;
    Ok((lock, state, now))
}

/// `ksm-balloon release VM...`: what each VM was, one line each.
pub fn release(
    paths: &Paths,
    lock_timeout: std::time::Duration,
    names: &[String],
    now: impl Into<Now>,
) -> anyhow::Result<Vec<String>> {
    let store = paths.store();
    let (lock, mut state, now) = locked(&store, lock_timeout, now.into())?;
    let mut out = Vec::new();
    for r in pick(&mut state, names)? {
        let Some(h) = r.manual.as_mut() else {
            out.push(format!("VM {:?}: not held by hand; nothing to do", r.name));
            continue;
        };
        match h.held {
            Some(held) => {
                let at = h.last_kib.unwrap_or(held.size_kib);
                r.handed_back(now, at);
                info!(
                    "VM {:?}: released by the operator at {}: managed again",
                    r.name,
                    Kib(at)
                );
                out.push(format!(
                    "VM {:?}: released at {} (held by hand since {}): managed again from the next pass",
                    r.name,
                    Kib(at),
                    crate::render::utc(held.since)
                ));
            }
            None => out.push(format!("VM {:?}: not held by hand; nothing to do", r.name)),
        }
    }
    lock.save(&state)?;
    Ok(out)
}

/// `ksm-balloon reload [VM...]`: what each VM's settings became, one line
/// each. Without names, every managed VM.
pub fn reload(
    paths: &Paths,
    lock_timeout: std::time::Duration,
    open: &mut Opener<'_>,
    names: &[String],
    now: impl Into<Now>,
) -> anyhow::Result<Vec<String>> {
    let store = paths.store();
    let (lock, mut state, now) = locked(&store, lock_timeout, now.into())?;
    let mut hv: Box<dyn Hypervisor> = open()?;
    let live = hv.domains().context("listing the domains")?;
    let mut out = Vec::new();
    for r in pick(&mut state, names)? {
        if !live.iter().any(|d| d.uuid == r.uuid) {
            out.push(format!("VM {:?}: not running; left as it is", r.name));
            continue;
        }
        let parsed = match hv.metadata(&r.uuid) {
            Ok(Some(text)) => metadata::parse_element(&text),
            Ok(None) => metadata::Parsed::default(),
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) => {
                warn!(
                    "VM {:?}: cannot read its metadata: {}; left as it is",
                    r.name,
                    crate::errors::chain(&e)
                );
                out.push(format!(
                    "VM {:?}: cannot read its metadata; left as it is",
                    r.name
                ));
                continue;
            }
        };
        let was_managed = r.settings.manage;
        let problems: Vec<_> = parsed
            .problems
            .iter()
            .cloned()
            .chain(r.apply_settings(parsed.settings))
            .collect();
        for p in &problems {
            warn!("VM {:?}: {p}; ignored", r.name);
        }
        if r.settings.manage && !was_managed {
            // Handed to ksm-balloon now: what it holds is where it starts.
            if let Some(d) = live.iter().find(|d| d.uuid == r.uuid) {
                if let Some(s) = d.sizes {
                    r.handed_back(now, s.current_kib);
                }
            }
        }
        let line = format!(
            "VM {:?}: manage {}, weight {}, floor {}, ceiling {}{}",
            r.name,
            if r.settings.manage { "yes" } else { "no" },
            r.settings.weight,
            Kib(r.floor_kib),
            Kib(r.ceiling_kib),
            if problems.is_empty() {
                String::new()
            } else {
                format!(" ({} problem(s) logged)", problems.len())
            }
        );
        info!("{line}");
        out.push(line);
    }
    lock.save(&state)?;
    Ok(out)
}

/// `ksm-balloon ksm-restore`: under the pass lock, gives KSM's knobs back
/// as the operator had them before `--ksm manage` took them over, by the
/// rule of a pass with `--ksm observe` ([`crate::governor::give_back`]):
/// written back while ksm-balloon holds them; left as they are, the
/// governor's memory only dropped, when `manage` had stepped back for
/// another writer or another writer changed a knob since (restoring over
/// it would fight that writer). Returns the one line of what it did;
/// nothing to restore (no governor memory, no state directory: no pass
/// ever ran) is not an error, and then nothing is created or written.
/// `Err` names the knob or file at fault: knobs that cannot be read (the
/// memory kept, for another try), a knob that cannot be written (the
/// memory kept, with the knobs written back taken for ksm-balloon's own,
/// so another try writes the rest). Never connects to libvirt.
pub fn ksm_restore(
    paths: &Paths,
    lock_timeout: std::time::Duration,
    now: impl Into<Now>,
) -> anyhow::Result<String> {
    let store = paths.store();
    let nothing = || {
        format!(
            "ksm-restore: nothing to restore: ksm-balloon does not hold KSM's knobs (no --ksm manage memory in {})",
            store.path().display()
        )
    };
    // A pass creates the state directory before it takes the lock: none,
    // no pass ever ran here (and uninstalling creates nothing).
    if !store.path().parent().is_some_and(std::path::Path::is_dir) {
        return Ok(nothing());
    }
    let (lock, mut state, _) = locked(&store, lock_timeout, now.into())?;
    let Some(m) = state.ksm_governor.clone() else {
        lock.save(&state)?;
        return Ok(nothing());
    };
    let found = crate::governor::Knobs::read(&paths.ksm_dir).map_err(|why| {
        anyhow::anyhow!(
            "cannot give KSM's knobs back: {why}; the operator's (run {}, pages_to_scan {}, sleep_millisecs {}) stay in {} for another try",
            m.operator.run,
            m.operator.pages_to_scan,
            m.operator.sleep_millisecs,
            store.path().display()
        )
    })?;
    // this boot's id: `locked` took the clocks' mark into the state
    let boot_id = state.clock.as_ref().map(|c| c.boot_id.clone());
    let mut back = crate::governor::give_back(&m, &found, boot_id.as_deref());
    crate::governor::write_all(&paths.ksm_dir, &mut back.writes, &back.reason);
    state.ksm_governor = crate::governor::after_give_back(m, &found, &back.writes);
    lock.save(&state)?;
    let failed: Vec<&str> = back
        .writes
        .iter()
        .filter_map(|w| w.error.as_deref())
        .collect();
    if !failed.is_empty() {
        bail!(
            "ksm-restore: {}; kept in {} for another try",
            failed.join("; "),
            store.path().display()
        );
    }
    let wrote = back
        .writes
        .iter()
        .map(|w| format!("{} {} -> {}", w.knob, w.from, w.to))
        .collect::<Vec<_>>()
        .join(", ");
    let line = match back.action {
        crate::governor::Action::Restore if wrote.is_empty() => {
            format!("ksm-restore: {} (they held them already)", back.reason)
        }
        crate::governor::Action::Restore => format!("ksm-restore: {} ({wrote})", back.reason),
        _ => format!(
            "ksm-restore: {}; ksm-balloon's memory of the operator's knobs dropped",
            back.reason
        ),
    };
    Ok(line)
}
