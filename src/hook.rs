//! The libvirt qemu hook: `ksm-balloon hook <domain> <operation> <sub-op> <extra>`
//! with the domain XML on stdin.
//!
//! libvirt waits for the hook while it starts or stops a VM, so this path
//! never opens a libvirt connection (the daemon would deadlock), takes the
//! lock for a short bounded time, and never fails a VM start: every problem
//! is logged and the exit is 0. It prints nothing on stdout: for `migrate`
//! and `restore`, libvirt would take whatever it printed as replacement XML.

use std::io::{self, Read};
use std::time::Duration;

use log::{info, warn};

use crate::domxml::{self, DomainXml};
use crate::state::{Loaded, Source, State, Store, VmRecord};

/// The most domain XML read from stdin; more is drained and ignored.
pub const MAX_XML_BYTES: u64 = 4 << 20;

/// What a hook call means for the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `prepare`/`start`: the XML's `<currentMemory>` is the configured
    /// baseline: record the VM with it as floor.
    Register,
    /// `started`: the XML already shows `<currentMemory>` equal to
    /// `<memory>`, so it says nothing about the floor; only note a VM that
    /// was missed.
    Started,
    /// `reconnect`/`attach`/`restore`/`migrate`: the XML's size may include
    /// a bonus; keep a floor already known.
    KeepFloor,
    /// `stopped`/`release`: forget the VM.
    Forget,
    /// Anything else.
    Ignore,
}

/// Classifies a hook call by its operation (the sub-operation does not
/// change the meaning for the qemu hook).
pub fn classify(operation: &str) -> Event {
    match operation {
        "prepare" | "start" => Event::Register,
        "started" => Event::Started,
        "reconnect" | "attach" | "restore" | "migrate" => Event::KeepFloor,
        "stopped" | "release" => Event::Forget,
        _ => Event::Ignore,
    }
}

/// What a hook call did to the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new record.
    Recorded,
    /// A record replaced with new figures.
    Updated,
    /// A known record kept as it was.
    Kept,
    /// A record removed.
    Forgotten,
    /// Nothing to do (not known, or not our business).
    Nothing,
}

fn record_from(xml: &DomainXml, floor_kib: u64, source: Source, now: u64) -> VmRecord {
    VmRecord {
        name: xml.name.clone(),
        uuid: xml.uuid.clone(),
        floor_kib,
        ceiling_kib: xml.memory_kib,
        balloon: xml.balloon,
        source,
        recorded_at: now,
        last_target_kib: None,
        last_change_at: None,
    }
}

/// Drops records of other UUIDs under the same name: a domain that was
/// undefined and redefined while a stop event was missed.
fn drop_stale_namesakes(state: &mut State, name: &str, uuid: &str) {
    state.vms.retain(|k, v| {
        let stale = v.name == name && k != uuid;
        if stale {
            warn!("dropping stale record of {name:?} (uuid {k}): the domain now has uuid {uuid}");
        }
        !stale
    });
}

/// Applies one event to the state. Pure: no I/O but logging.
pub fn apply(state: &mut State, event: Event, xml: &DomainXml, now: u64) -> Outcome {
    match event {
        Event::Ignore => Outcome::Nothing,
        Event::Register => {
            drop_stale_namesakes(state, &xml.name, &xml.uuid);
            let floor = xml.current_memory_kib.min(xml.memory_kib);
            let new = record_from(xml, floor, Source::Hook, now);
            match state.vms.insert(xml.uuid.clone(), new) {
                None => Outcome::Recorded,
                Some(_) => Outcome::Updated,
            }
        }
        Event::Started => {
            if state.vms.contains_key(&xml.uuid) {
                Outcome::Kept
            } else {
                warn!(
                    "VM {:?} was not recorded at prepare/start; the next pass adopts it",
                    xml.name
                );
                Outcome::Nothing
            }
        }
        Event::KeepFloor => match state.vms.get_mut(&xml.uuid) {
            Some(known) => {
                // The ceiling is the boot-time maximum; a migrated-in or
                // restored VM may bring a different one.
                known.ceiling_kib = xml.memory_kib.max(known.floor_kib);
                known.name = xml.name.clone();
                known.balloon = xml.balloon;
                Outcome::Kept
            }
            None => {
                drop_stale_namesakes(state, &xml.name, &xml.uuid);
                let floor = xml.current_memory_kib.min(xml.memory_kib);
                state.vms.insert(
                    xml.uuid.clone(),
                    record_from(xml, floor, Source::HookLive, now),
                );
                Outcome::Recorded
            }
        },
        Event::Forget => match state.vms.remove(&xml.uuid) {
            Some(_) => Outcome::Forgotten,
            None => Outcome::Nothing,
        },
    }
}

/// Forgets by name, for a stop whose XML could not be read.
pub fn forget_by_name(state: &mut State, name: &str) -> Outcome {
    let before = state.vms.len();
    state.vms.retain(|_, v| v.name != name);
    if state.vms.len() < before {
        Outcome::Forgotten
    } else {
        Outcome::Nothing
    }
}

/// Reads at most [`MAX_XML_BYTES`] of `input`, draining the rest. `Ok(None)`
/// when the input was larger than that.
pub fn read_capped(mut input: impl Read) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    (&mut input).take(MAX_XML_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_XML_BYTES {
        io::copy(&mut input, &mut io::sink())?;
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// An error with its causes, `outer: inner: ...`, for one log line (the
/// OS error that says why a file could not be written is a cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The hook's whole job. Never returns an error: a hook must not fail a VM
/// start; everything is logged instead.
pub fn run(
    store: &Store,
    lock_timeout: Duration,
    domain: &str,
    operation: &str,
    sub_op: &str,
    input: impl Read,
    now: u64,
) {
    let event = classify(operation);
    // Names the call in every log line, quoted and escaped: an argument with
    // a newline must not start a second, forged log line.
    let at = format!(
        "hook {domain:?} {} {}",
        operation.escape_debug(),
        sub_op.escape_debug()
    );
    // Read stdin whatever the event, so libvirt never writes into a closed pipe.
    let text = match read_capped(input) {
        Ok(Some(t)) => t,
        Ok(None) => {
            warn!("{at}: domain XML on stdin is larger than {MAX_XML_BYTES} bytes; ignored");
            return;
        }
        Err(e) => {
            warn!("{at}: cannot read the domain XML from stdin: {e}");
            return;
        }
    };
    if event == Event::Ignore {
        info!("{at}: not an operation ksm-balloon acts on; ignored");
        return;
    }
    let xml = match domxml::parse(&text) {
        Ok(x) => Some(x),
        Err(e) => {
            warn!("{at}: {e}; state not changed by the XML");
            None
        }
    };
    if let Some(x) = &xml {
        if x.name != domain {
            warn!(
                "hook called for {domain:?} but the XML names {:?}; using the XML",
                x.name
            );
        }
    }
    if xml.is_none() && event != Event::Forget {
        return;
    }
    let lock = match store.lock(lock_timeout) {
        Ok(l) => l,
        Err(e) => {
            warn!("{at}: {}; the next pass will catch up", chain(&e));
            return;
        }
    };
    let mut state = match store.load(&lock, now) {
        Ok(Loaded::Recovered {
            state,
            moved_to,
            problem,
        }) => {
            warn!(
                "state file {} was unusable ({problem}); moved to {}; rebuilding",
                store.path().display(),
                moved_to.display()
            );
            state
        }
        Ok(l) => l.into_state(),
        Err(e) => {
            warn!("{at}: {}; state not changed", chain(&e));
            return;
        }
    };
    let outcome = match &xml {
        Some(x) => apply(&mut state, event, x, now),
        None => forget_by_name(&mut state, domain),
    };
    let name = xml.as_ref().map_or(domain, |x| x.name.as_str());
    let changed = !matches!(outcome, Outcome::Nothing | Outcome::Kept) || event == Event::KeepFloor;
    // Say what happened only once it is on disk: a save that fails leaves
    // the state as it was, and the log must not claim otherwise.
    if changed {
        if let Err(e) = store.save(&lock, &state) {
            warn!(
                "{at}: {}; state not changed (VM {name:?} not {})",
                chain(&e),
                if outcome == Outcome::Forgotten {
                    "forgotten"
                } else {
                    "recorded"
                }
            );
            return;
        }
    }
    match (&outcome, state.vms.values().find(|v| v.name == name)) {
        (Outcome::Recorded | Outcome::Updated, Some(r)) => info!(
            "hook {}: recorded VM {name:?} floor {} ceiling {}{}",
            operation.escape_debug(),
            crate::units::Kib(r.floor_kib),
            crate::units::Kib(r.ceiling_kib),
            if r.balloon {
                ""
            } else {
                " (no balloon device)"
            }
        ),
        (Outcome::Forgotten, _) => info!("hook {}: forgot VM {name:?}", operation.escape_debug()),
        _ => log::debug!("{at}: VM {name:?}: {outcome:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(current: u64, memory: u64) -> DomainXml {
        DomainXml {
            name: "g1".into(),
            uuid: "u1".into(),
            memory_kib: memory,
            current_memory_kib: current,
            balloon: true,
        }
    }

    #[test]
    fn classify_table() {
        for (op, ev) in [
            ("prepare", Event::Register),
            ("start", Event::Register),
            ("started", Event::Started),
            ("stopped", Event::Forget),
            ("release", Event::Forget),
            ("reconnect", Event::KeepFloor),
            ("attach", Event::KeepFloor),
            ("restore", Event::KeepFloor),
            ("migrate", Event::KeepFloor),
            ("shutdown", Event::Ignore),
            ("", Event::Ignore),
            ("PREPARE", Event::Ignore),
        ] {
            assert_eq!(classify(op), ev, "{op}");
        }
    }

    #[test]
    fn start_sequence_keeps_the_prepare_floor() {
        let mut s = State::default();
        assert_eq!(
            apply(&mut s, Event::Register, &xml(160, 256), 1),
            Outcome::Recorded
        );
        assert_eq!(
            apply(&mut s, Event::Register, &xml(160, 256), 2),
            Outcome::Updated
        );
        // at started, libvirt shows currentMemory == memory: must not matter
        assert_eq!(
            apply(&mut s, Event::Started, &xml(256, 256), 3),
            Outcome::Kept
        );
        assert_eq!(s.vms["u1"].floor_kib, 160);
        assert_eq!(s.vms["u1"].ceiling_kib, 256);
    }

    #[test]
    fn reconnect_keeps_a_known_floor_and_records_an_unknown_one() {
        let mut s = State::default();
        apply(&mut s, Event::Register, &xml(160, 256), 1);
        // live size includes our bonus: 200
        assert_eq!(
            apply(&mut s, Event::KeepFloor, &xml(200, 256), 2),
            Outcome::Kept
        );
        assert_eq!(s.vms["u1"].floor_kib, 160);
        let mut s = State::default();
        assert_eq!(
            apply(&mut s, Event::KeepFloor, &xml(200, 256), 2),
            Outcome::Recorded
        );
        assert_eq!(s.vms["u1"].floor_kib, 200);
        assert_eq!(s.vms["u1"].source, Source::HookLive);
    }

    #[test]
    fn stop_forgets() {
        let mut s = State::default();
        apply(&mut s, Event::Register, &xml(160, 256), 1);
        assert_eq!(
            apply(&mut s, Event::Forget, &xml(160, 256), 2),
            Outcome::Forgotten
        );
        assert!(s.vms.is_empty());
        assert_eq!(
            apply(&mut s, Event::Forget, &xml(160, 256), 2),
            Outcome::Nothing
        );
    }

    #[test]
    fn started_alone_records_nothing() {
        let mut s = State::default();
        assert_eq!(
            apply(&mut s, Event::Started, &xml(256, 256), 1),
            Outcome::Nothing
        );
        assert!(s.vms.is_empty());
    }

    #[test]
    fn a_redefined_namesake_replaces_the_stale_record() {
        let mut s = State::default();
        apply(&mut s, Event::Register, &xml(160, 256), 1);
        let mut other = xml(100, 200);
        other.uuid = "u2".into();
        apply(&mut s, Event::Register, &other, 2);
        assert_eq!(s.vms.keys().collect::<Vec<_>>(), ["u2"]);
    }

    #[test]
    fn capped_read() {
        assert_eq!(
            read_capped(&b"<domain/>"[..]).unwrap().as_deref(),
            Some("<domain/>")
        );
        let big = vec![b'x'; MAX_XML_BYTES as usize + 10];
        assert_eq!(read_capped(&big[..]).unwrap(), None);
    }
}
