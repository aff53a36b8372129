//! The libvirt qemu hook, in two halves that never meet in time.
//!
//! The hook's half ([`run`]): libvirt calls `<hook> <domain> <operation>
//! <sub-op> <extra>` with the domain XML on stdin and waits for it while it
//! starts or stops a VM. So this half reads stdin, and for the operations
//! that matter drops one record into the spool ([`crate::state::spool`]):
//! no lock, no libvirt connection, nothing printed on stdout (for
//! `migrate` and `restore` libvirt would take it as replacement XML), and
//! it never fails a VM start: every problem is returned for the caller to
//! log, and the exit is 0.
//!
//! The pass's half ([`fold`]): under the pass lock, each spooled record is
//! applied to the state in the order the hooks ran ([`apply`], pure).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::domxml::{self, DomainXml};
use crate::state::spool::{self, HookRecord, SPOOL_VERSION};
use crate::state::{Source, State, VmRecord};

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
    /// was missed. Spooled all the same: it asks for a pass, which sizes the
    /// new VM within a second instead of at the next tick.
    Started,
    /// `reconnect`/`attach`/`restore`/`migrate`: the XML's size is the
    /// balloon's of the moment (a bonus, or a boot not finished); keep a
    /// floor already known, and leave a VM not known to the pass's adoption
    /// rule.
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
    /// A VM not known, met at `reconnect`/`attach`/`restore`/`migrate`:
    /// not recorded, since the XML's size may be a booting balloon's (still
    /// at its maximum) or hold a bonus; the pass adopts it by the adoption
    /// rule ([`crate::pass::reconcile::adoption`]), which waits for a
    /// settled balloon or reads the definition's boot size.
    LeftToAdoption,
    /// The record the XML gives cannot be right (a floor of 0): the state
    /// is not changed by it.
    Rejected(String),
}

/// A record of the VM `xml` describes, booting at `floor_kib`: its
/// metadata applied (a valid floor or ceiling of its own replaces the
/// definition's), the manual-change detector started.
pub fn record_from(xml: &DomainXml, floor_kib: u64, source: Source, now: u64) -> VmRecord {
    let mut r = VmRecord::new(
        xml.name.clone(),
        xml.uuid.clone(),
        floor_kib,
        xml.memory_kib,
        xml.balloon,
        source,
        now,
    );
    r.defined = Some((floor_kib, xml.memory_kib.max(floor_kib)));
    r.autodeflate = xml.autodeflate;
    r.apply_settings(xml.metadata.settings.clone());
    r.manual = Some(crate::manual::History::started(
        now,
        r.floor_kib,
        xml.memory_kib,
    ));
    r
}

/// What is wrong with the metadata of the VM `xml` describes, booting at
/// `floor_kib`, one line each, naming the VM.
pub fn metadata_problems(xml: &DomainXml, floor_kib: u64) -> Vec<String> {
    let bounds = crate::metadata::Bounds {
        current_memory_kib: floor_kib,
        memory_kib: xml.memory_kib.max(floor_kib),
    };
    let (_, resolved) = xml.metadata.settings.resolve(bounds);
    xml.metadata
        .problems
        .iter()
        .chain(&resolved)
        .map(|p| format!("VM {:?}: {p}; ignored", xml.name))
        .collect()
}

/// Drops records of other UUIDs under the same name: a domain that was
/// undefined and redefined while a stop event was missed. Returns the
/// UUIDs dropped.
fn drop_stale_namesakes(state: &mut State, name: &str, uuid: &str) -> Vec<String> {
    let stale: Vec<String> = state
        .vms
        .iter()
        .filter(|(k, v)| v.name == name && k.as_str() != uuid)
        .map(|(k, _)| k.clone())
        .collect();
    for k in &stale {
        state.vms.remove(k);
    }
    stale
}

/// Applies one event to the state. Pure. Applying the same record twice
/// gives the same state as applying it once (a pass killed after saving
/// but before removing the spool folds it again).
pub fn apply(state: &mut State, event: Event, xml: &DomainXml, now: u64) -> Outcome {
    match event {
        Event::Ignore => Outcome::Nothing,
        Event::Register => {
            let floor = xml.current_memory_kib.min(xml.memory_kib);
            let new = record_from(xml, floor, Source::Hook, now);
            if let Some(why) = new.impossible(&xml.uuid) {
                return Outcome::Rejected(why);
            }
            drop_stale_namesakes(state, &xml.name, &xml.uuid);
            state.candidates.remove(&xml.uuid);
            match state.vms.get(&xml.uuid) {
                // The same start told twice (prepare, then start; or a
                // record folded again): keep what passes learnt since.
                Some(old)
                    if old.source == Source::Hook
                        && old.floor_kib == new.floor_kib
                        && old.ceiling_kib == new.ceiling_kib
                        && old.balloon == new.balloon
                        && old.settings == new.settings
                        && old.name == new.name =>
                {
                    Outcome::Kept
                }
                Some(_) => {
                    state.vms.insert(xml.uuid.clone(), new);
                    Outcome::Updated
                }
                None => {
                    state.vms.insert(xml.uuid.clone(), new);
                    Outcome::Recorded
                }
            }
        }
        Event::Started => {
            if state.vms.contains_key(&xml.uuid) {
                Outcome::Kept
            } else {
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
            // Not known (its start was missed: the spool was full, or the
            // state was lost): the XML's <currentMemory> is the balloon's
            // size of the moment, the maximum for a guest still booting, so
            // it is no floor. The chaos soak's CI of bbdec68 found a VM
            // started on a full spool, then met at libvirtd's restart,
            // recorded with its maximum as floor.
            None => Outcome::LeftToAdoption,
        },
        Event::Forget => {
            state.candidates.remove(&xml.uuid);
            match state.vms.remove(&xml.uuid) {
                Some(_) => Outcome::Forgotten,
                None => Outcome::Nothing,
            }
        }
    }
}

/// Forgets by name, for a stop whose XML could not be read.
pub fn forget_by_name(state: &mut State, name: &str) -> Outcome {
    let before = state.vms.len();
    state.vms.retain(|_, v| v.name != name);
    state.candidates.retain(|_, c| c.name != name);
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

/// What one hook call did, for its caller to log.
#[derive(Debug, Default)]
pub struct HookRun {
    /// The record dropped into the spool, if one was.
    pub spooled: Option<PathBuf>,
    /// Problems, one log line each (the call still exits 0).
    pub problems: Vec<String>,
}

/// The hook's whole job: read the XML from `input`, and for an operation
/// that matters drop a record into the spool of `state_path`. Never fails:
/// problems come back in [`HookRun::problems`].
pub fn run(
    state_path: &Path,
    domain: &str,
    operation: &str,
    sub_op: &str,
    input: impl Read,
    now: u64,
) -> HookRun {
    let mut out = HookRun::default();
    // Names the call in every log line, quoted and escaped: an argument with
    // a newline must not start a second, forged log line.
    let at = format!(
        "hook {domain:?} {} {}",
        operation.escape_debug(),
        sub_op.escape_debug()
    );
    // Read stdin whatever the event, so libvirt never writes into a closed pipe.
    let (xml, xml_problem) = match read_capped(input) {
        Ok(Some(t)) => (Some(t), None),
        Ok(None) => (
            None,
            Some(format!(
                "the domain XML on stdin is larger than {MAX_XML_BYTES} bytes"
            )),
        ),
        Err(e) => (
            None,
            Some(format!("cannot read the domain XML from stdin: {e}")),
        ),
    };
    if classify(operation) == Event::Ignore {
        return out;
    }
    if let Some(p) = &xml_problem {
        out.problems.push(format!("{at}: {p}"));
    }
    let record = HookRecord {
        v: SPOOL_VERSION,
        domain: domain.to_string(),
        operation: operation.to_string(),
        sub_op: sub_op.to_string(),
        at: now,
        xml,
        xml_problem,
    };
    match spool::drop_record(state_path, &record) {
        Ok(p) => out.spooled = Some(p),
        Err(e) => out.problems.push(format!(
            "{at}: cannot spool the record in {}: {e}; the next pass adopts the VM instead",
            spool::dir_of(state_path).display()
        )),
    }
    out
}

/// What folding one spooled record did, for the pass to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folded {
    /// The hook call, `hook "<domain>" <operation> <sub-op>`.
    pub call: String,
    /// The VM's name (from its XML when there was one).
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
    /// Problems with the record (its XML unusable, a name that differs,
    /// metadata ignored).
    pub problems: Vec<String>,
}

/// Applies spooled hook records to the state, in the order given (the
/// order the hooks ran). Pure.
pub fn fold(state: &mut State, records: &[HookRecord]) -> Vec<Folded> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let call = format!(
            "hook {:?} {} {}",
            r.domain,
            r.operation.escape_debug(),
            r.sub_op.escape_debug()
        );
        let event = classify(&r.operation);
        let parsed = match (&r.xml, &r.xml_problem) {
            (Some(text), _) => domxml::parse(text).map_err(|e| crate::errors::chain(&e)),
            (None, Some(p)) => Err(p.clone()),
            (None, None) => Err("no domain XML".to_string()),
        };
        let (outcome, name, problems) = match parsed {
            Ok(x) => {
                let mut problems: Vec<String> = (x.name != r.domain)
                    .then(|| {
                        format!(
                            "called for {:?} but the XML names {:?}; used the XML",
                            r.domain, x.name
                        )
                    })
                    .into_iter()
                    .collect();
                let outcome = apply(state, event, &x, r.at);
                if let Outcome::Rejected(why) = &outcome {
                    problems.push(format!(
                        "impossible record for VM {:?}: {why}; dropped, state not changed by it",
                        x.name
                    ));
                }
                if matches!(outcome, Outcome::Recorded | Outcome::Updated) {
                    let floor = x.current_memory_kib.min(x.memory_kib);
                    problems.extend(metadata_problems(&x, floor));
                }
                (outcome, x.name, problems)
            }
            Err(why) if event == Event::Forget => (
                forget_by_name(state, &r.domain),
                r.domain.clone(),
                vec![format!("{why}; forgot the VM by name")],
            ),
            Err(why) => (
                Outcome::Nothing,
                r.domain.clone(),
                vec![format!("{why}; state not changed by it")],
            ),
        };
        out.push(Folded {
            call,
            name,
            outcome,
            problems,
        });
    }
    out
}

/// How verbose the hook is (`KSM_BALLOON_LOG`): problems always, each
/// spooled record at `debug`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Problems only.
    Problems,
    /// Problems and what was spooled.
    Debug,
}

/// The hook's settings: the state file (its spool is beside it) and the
/// verbosity, from the settings file's text overridden by the environment.
/// `Err` names the setting at fault.
pub fn settings(
    file: &[(String, String)],
    env: impl Fn(&str) -> Option<String>,
) -> Result<(PathBuf, Verbosity), String> {
    let get = |key: &str| env(key).or_else(|| crate::sysconfig::lookup(file, key));
    let root = PathBuf::from(get("KSM_BALLOON_ROOT").unwrap_or_else(|| "/".into()));
    let state = PathBuf::from(
        get("KSM_BALLOON_STATE").unwrap_or_else(|| crate::sysconfig::DEFAULT_STATE.into()),
    );
    if !root.is_absolute() {
        return Err(format!(
            "KSM_BALLOON_ROOT={:?} is not an absolute path",
            root.display()
        ));
    }
    if !state.is_absolute() || state.file_name().is_none() {
        return Err(format!(
            "KSM_BALLOON_STATE={:?} is not an absolute path to a file",
            state.display()
        ));
    }
    let verbosity = match get("KSM_BALLOON_LOG").as_deref() {
        Some(l) if l.contains("debug") || l.contains("trace") => Verbosity::Debug,
        _ => Verbosity::Problems,
    };
    Ok((crate::paths::under_root(&root, &state), verbosity))
}

/// Where the hook's log lines go: the system log where there is one (the
/// journal under systemd), else stderr (libvirtd keeps a hook's stderr in
/// its own log). `KSM_BALLOON_HOOK_LOG=stderr` forces stderr (for tests).
fn log_line(line: &str) {
    let forced_stderr = std::env::var_os("KSM_BALLOON_HOOK_LOG").is_some_and(|v| v == "stderr");
    if !forced_stderr && Path::new("/dev/log").exists() {
        let ident = c"ksm-balloon-hook";
        let msg = std::ffi::CString::new(line.replace('\0', " ")).unwrap_or_default();
        // SAFETY: both strings are NUL-terminated and outlive the calls;
        // the format takes exactly one string argument.
        unsafe {
            libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
            libc::syslog(libc::LOG_WARNING, c"%s".as_ptr(), msg.as_ptr());
            libc::closelog();
        }
    } else {
        eprintln!("ksm-balloon-hook: {line}");
    }
}

/// The hook as a program: `args` are libvirt's (`<domain> <operation>
/// <sub-op> <extra>`), `input` the domain XML. Reads the settings file
/// (`KSM_BALLOON_CONFIG`, default [`crate::sysconfig::DEFAULT_PATH`]) and
/// the environment, spools, logs problems. Always returns: the caller
/// exits 0 whatever happened, so a VM start never fails because of it.
pub fn entry(args: &[String], input: impl Read) {
    entry_with(args, input, &crate::cli::HookFlags::default());
}

/// [`entry`], with the `--root` and `--state` of `ksm-balloon [flags]
/// hook ...` (issue 22: they were accepted and ignored, and the record
/// went to the host's real spool): a flag wins over the environment,
/// which wins over the settings file.
pub fn entry_with(args: &[String], mut input: impl Read, flags: &crate::cli::HookFlags) {
    let env = |k: &str| {
        let flag = match k {
            "KSM_BALLOON_ROOT" => flags.root.clone(),
            "KSM_BALLOON_STATE" => flags.state.clone(),
            _ => None,
        };
        flag.or_else(|| std::env::var(k).ok().filter(|v| !v.is_empty()))
    };
    let config = env("KSM_BALLOON_CONFIG").unwrap_or_else(|| crate::sysconfig::DEFAULT_PATH.into());
    // Read as systemd's EnvironmentFile=- reads it for the pass: a file
    // it refuses (a key or value not UTF-8) is one it ignores.
    let file = match std::fs::read(&config) {
        Ok(bytes) => crate::sysconfig::parse_bytes(&bytes).unwrap_or_else(|why| {
            log_line(&format!(
                "{config}: {why}; systemd ignores the whole file, and so does the hook"
            ));
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    let (state_path, verbosity) = match settings(&file, env) {
        Ok(s) => s,
        Err(why) => {
            let _ = io::copy(&mut input, &mut io::sink());
            log_line(&format!(
                "{why} (in {config} or the environment): nothing recorded; fix the setting"
            ));
            return;
        }
    };
    let [domain, operation, rest @ ..] = args else {
        let _ = io::copy(&mut input, &mut io::sink());
        log_line(&format!(
            "called with {} argument(s); libvirt passes <domain> <operation> <sub-op> <extra>",
            args.len()
        ));
        return;
    };
    let sub_op = rest.first().map_or("-", String::as_str);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let r = run(&state_path, domain, operation, sub_op, input, now);
    for p in &r.problems {
        log_line(p);
    }
    if let (Verbosity::Debug, Some(p)) = (verbosity, &r.spooled) {
        log_line(&format!("spooled {}", p.display()));
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
            autodeflate: false,
            metadata: crate::metadata::Parsed::default(),
        }
    }

    fn text(current: u64, memory: u64) -> String {
        format!("<domain><name>g1</name><uuid>u1</uuid><memory>{memory}</memory><currentMemory>{current}</currentMemory></domain>")
    }

    fn rec(op: &str, xml: Option<String>, at: u64) -> HookRecord {
        HookRecord {
            v: SPOOL_VERSION,
            domain: "g1".into(),
            operation: op.into(),
            sub_op: "begin".into(),
            at,
            xml,
            xml_problem: None,
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
            Outcome::Kept
        );
        // at started, libvirt shows currentMemory == memory: must not matter
        assert_eq!(
            apply(&mut s, Event::Started, &xml(256, 256), 3),
            Outcome::Kept
        );
        assert_eq!(s.vms["u1"].floor_kib, 160);
        assert_eq!(s.vms["u1"].ceiling_kib, 256);
        assert_eq!(s.vms["u1"].recorded_at, 1);
    }

    #[test]
    fn a_restart_with_a_new_definition_updates_the_record() {
        let mut s = State::default();
        apply(&mut s, Event::Register, &xml(160, 256), 1);
        s.vms.get_mut("u1").unwrap().last_target_kib = Some(200);
        assert_eq!(
            apply(&mut s, Event::Register, &xml(128, 512), 9),
            Outcome::Updated
        );
        let r = &s.vms["u1"];
        assert_eq!(
            (r.floor_kib, r.ceiling_kib, r.last_target_kib),
            (128, 512, None)
        );
    }

    #[test]
    fn reconnect_keeps_a_known_floor() {
        let mut s = State::default();
        apply(&mut s, Event::Register, &xml(160, 256), 1);
        // live size includes our bonus: 200
        assert_eq!(
            apply(&mut s, Event::KeepFloor, &xml(200, 256), 2),
            Outcome::Kept
        );
        assert_eq!(s.vms["u1"].floor_kib, 160);
    }

    #[test]
    fn a_reconnect_of_a_vm_not_known_leaves_it_to_adoption_regression() {
        // CI of bbdec68 (37-chaos): a VM started on a full spool (its
        // records refused), then libvirtd restarted while it booted; the
        // reconnect's XML gave its balloon's size of the moment, its
        // maximum, and the VM was recorded with it as floor.
        for (op, live) in [
            ("reconnect", 256),
            ("attach", 200),
            ("restore", 160),
            ("migrate", 256),
        ] {
            let mut s = State::default();
            assert_eq!(
                apply(&mut s, classify(op), &xml(live, 256), 2),
                Outcome::LeftToAdoption,
                "{op}"
            );
            assert!(s.vms.is_empty(), "{op}: {s:?}");
            let f = fold(&mut s, &[rec(op, Some(text(live, 256)), 3)]);
            assert_eq!(f[0].outcome, Outcome::LeftToAdoption, "{op}");
            assert!(f[0].problems.is_empty(), "{op}: {:?}", f[0].problems);
            assert!(s.vms.is_empty(), "{op}: {s:?}");
        }
    }

    #[test]
    fn an_impossible_record_from_the_spool_is_dropped_regression() {
        // Issue 18: a start whose XML gave a floor of 0 was recorded and
        // saved; the next load then moved the whole state file aside.
        let mut s = State::default();
        apply(&mut s, Event::Register, &xml(160, 256), 1);
        let before = s.clone();
        let mut zero = xml(0, 256);
        zero.uuid = "u2".into();
        zero.name = "g2".into();
        assert_eq!(
            apply(&mut s, Event::Register, &zero, 2),
            Outcome::Rejected("floor is 0".into())
        );
        assert_eq!(
            apply(&mut s, Event::KeepFloor, &zero, 2),
            Outcome::LeftToAdoption
        );
        assert_eq!(s, before);
        let f = fold(
            &mut s,
            &[rec(
                "prepare",
                Some(text(0, 256).replace("u1", "u3").replace("g1", "g3")),
                3,
            )],
        );
        assert_eq!(s, before);
        assert!(
            f[0].problems
                .iter()
                .any(|p| p.contains("impossible record for VM \"g3\": floor is 0")),
            "{:?}",
            f[0].problems
        );
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
    fn fold_applies_in_order_and_twice_is_once() {
        let records = [
            rec("prepare", Some(text(160, 256)), 1),
            rec("start", Some(text(160, 256)), 1),
            rec("started", Some(text(256, 256)), 2),
        ];
        let mut s = State::default();
        let f = fold(&mut s, &records);
        let outcomes: Vec<_> = f.iter().map(|f| f.outcome.clone()).collect();
        assert_eq!(outcomes, [Outcome::Recorded, Outcome::Kept, Outcome::Kept]);
        let once = s.clone();
        fold(&mut s, &records);
        assert_eq!(s, once);
        let f = fold(&mut s, &[rec("stopped", Some(text(160, 256)), 5)]);
        assert_eq!(f[0].outcome, Outcome::Forgotten);
        assert!(s.vms.is_empty());
    }

    #[test]
    fn fold_forgets_by_name_when_a_stops_xml_is_unusable() {
        let mut s = State::default();
        fold(&mut s, &[rec("prepare", Some(text(160, 256)), 1)]);
        let f = fold(&mut s, &[rec("release", Some("<domain".into()), 2)]);
        assert_eq!(f[0].outcome, Outcome::Forgotten);
        assert!(f[0].problems[0].contains("forgot the VM by name"));
        // an unusable start changes nothing and says so
        let f = fold(&mut s, &[rec("prepare", None, 3)]);
        assert_eq!(f[0].outcome, Outcome::Nothing);
        assert_eq!(f[0].problems.len(), 1);
    }

    #[test]
    fn hook_run_spools_what_matters_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let r = run(
            &state,
            "g1",
            "prepare",
            "begin",
            text(160, 256).as_bytes(),
            1,
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let p = r.spooled.unwrap();
        let got = spool::parse(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(got.operation, "prepare");
        assert_eq!(got.xml.as_deref(), Some(text(160, 256).as_str()));
        let r = run(&state, "g1", "shutdown", "end", &b"<domain/>"[..], 1);
        assert!(r.spooled.is_none() && r.problems.is_empty());
        assert_eq!(spool::read_all(&state).unwrap().len(), 1);
    }

    #[test]
    fn a_full_spool_is_logged_and_the_call_still_returns_regression() {
        // Issue 18: the hook stops adding records above the spool's cap,
        // and says so (the caller logs each problem to syslog).
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let first = run(
            &state,
            "g1",
            "prepare",
            "begin",
            text(160, 256).as_bytes(),
            1,
        );
        let spool_dir = spool::dir_of(&state);
        for i in 1..spool::MAX_RECORDS {
            std::fs::write(spool_dir.join(format!("junk-{i}")), "").unwrap();
        }
        let r = run(
            &state,
            "g1",
            "started",
            "begin",
            text(256, 256).as_bytes(),
            2,
        );
        assert!(first.spooled.is_some() && r.spooled.is_none());
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0].contains("its limit") && r.problems[0].contains("adopts the VM"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn settings_from_file_and_environment() {
        let none = |_: &str| None;
        assert_eq!(
            settings(&[], none).unwrap(),
            (
                PathBuf::from("/var/lib/ksm-balloon/state.json"),
                Verbosity::Problems
            )
        );
        let file = "KSM_BALLOON_STATE=/run/t/state.json\nKSM_BALLOON_LOG=debug\n";
        assert_eq!(
            settings(&crate::sysconfig::parse(file), none).unwrap(),
            (PathBuf::from("/run/t/state.json"), Verbosity::Debug)
        );
        let env = |k: &str| (k == "KSM_BALLOON_ROOT").then(|| "/fake".to_string());
        assert_eq!(
            settings(&crate::sysconfig::parse(file), env).unwrap().0,
            PathBuf::from("/fake/run/t/state.json")
        );
        let err = settings(
            &crate::sysconfig::parse("KSM_BALLOON_STATE=relative.json"),
            none,
        )
        .unwrap_err();
        assert!(err.contains("KSM_BALLOON_STATE"), "{err}");
    }

    #[test]
    fn an_invalid_pass_setting_does_not_stop_the_hook() {
        // Issue 12: the binary exited 2 on KSM_BALLOON_RESERVE=lots before
        // reading stdin. The hook reads only the settings it needs.
        let file = "KSM_BALLOON_RESERVE=lots\nKSM_BALLOON_SHARE=2\n";
        assert!(settings(&crate::sysconfig::parse(file), |_: &str| None).is_ok());
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
