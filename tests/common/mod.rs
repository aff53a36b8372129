//! Shared support for the reliability integration tests (tests/storm.rs,
//! tests/faults.rs, tests/bad_input.rs, tests/files.rs, tests/invariants.rs)
//! and the test-driver tests (tests/testdriver.rs): a throw-away fake host (a
//! copy of tests/fixtures/root plus a libvirt test-driver node XML with the
//! domains a test wants, from [`node`]), helpers that run the built binary
//! against it, and the invariants checker every scenario ends with
//! ([`check`]).
//!
//! Each integration test file is its own crate and uses only part of this.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use ksm_balloon::hypervisor::{self, Hypervisor, Libvirt};
use ksm_balloon::state::{State, STATE_VERSION};

pub mod node;
pub use node::{node_xml, Dom};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ksm-balloon");

/// The hook program under test.
pub const HOOK_BIN: &str = env!("CARGO_BIN_EXE_ksm-balloon-hook");

/// tests/fixtures in the source tree.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What one invocation of the binary did.
#[derive(Clone, Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Ran {
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A fake host: fake /sys and /proc, a state directory, a node XML.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub node: PathBuf,
}

/// Copies a directory tree (files and directories only).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), &dst).unwrap();
        }
    }
}

impl Fixture {
    /// A fake host whose test driver lists `doms` as running.
    pub fn new(doms: &[Dom]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        copy_tree(&fixtures().join("root"), &root);
        let node = dir.path().join("node.xml");
        fs::write(&node, node_xml(doms)).unwrap();
        Fixture { dir, root, node }
    }

    /// The test-driver URI.
    pub fn uri(&self) -> String {
        format!("test://{}", self.node.display())
    }

    /// The state file under the fake root.
    pub fn state_path(&self) -> PathBuf {
        self.root.join("var/lib/ksm-balloon/state.json")
    }

    /// Asserts the invariants with every one of `doms` running, managed and
    /// inside its bounds on this fixture's test driver.
    pub fn assert_all_managed(&self, doms: &[Dom], logs: &[String]) -> State {
        assert_invariants(
            &self.state_path(),
            &Expect {
                present: doms.to_vec(),
                live_uri: Some(self.uri()),
                ..Expect::default()
            },
            logs,
        )
    }

    /// The state directory under the fake root.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("var/lib/ksm-balloon")
    }

    /// The state file's bytes, if any.
    pub fn state_bytes(&self) -> Option<Vec<u8>> {
        fs::read(self.state_path()).ok()
    }

    /// The parsed state (panics when it does not parse).
    pub fn state(&self) -> State {
        let text = fs::read_to_string(self.state_path()).expect("a state file");
        State::parse(&text).unwrap_or_else(|e| panic!("state does not parse: {e}\n{text}"))
    }

    /// The state the next pass starts from: the state file (empty when
    /// there is none) with the hook records still in the spool folded in.
    pub fn next_state(&self) -> State {
        let mut state = match fs::read_to_string(self.state_path()) {
            Ok(text) => State::parse(&text).unwrap(),
            Err(_) => State::default(),
        };
        let records: Vec<_> = ksm_balloon::state::spool::read_all(&self.state_path())
            .unwrap()
            .into_iter()
            .filter_map(|e| e.record.ok())
            .collect();
        ksm_balloon::hook::fold(&mut state, &records);
        state
    }

    /// Writes one KSM counter of the fake root.
    pub fn set_counter(&self, name: &str, text: &str) {
        fs::write(self.root.join("sys/kernel/mm/ksm").join(name), text).unwrap();
    }

    /// Replaces the fake meminfo atomically (a pass never sees half a file).
    pub fn set_meminfo(&self, total_kib: u64, available_kib: u64) {
        let p = self.root.join("proc/meminfo");
        let tmp = self.root.join("proc/.meminfo.tmp");
        fs::write(
            &tmp,
            format!("MemTotal:       {total_kib} kB\nMemFree:        {available_kib} kB\nMemAvailable:   {available_kib} kB\n"),
        )
        .unwrap();
        fs::rename(tmp, p).unwrap();
    }

    /// The binary with this host's settings in its environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KSM_BALLOON_") {
                c.env_remove(k);
            }
        }
        c.env("KSM_BALLOON_ROOT", &self.root)
            // never the host's own settings file: one under the fake root,
            // absent unless a test writes it
            .env(
                "KSM_BALLOON_CONFIG",
                self.root.join("etc/sysconfig/ksm-balloon"),
            )
            .env("KSM_BALLOON_CONNECT", self.uri())
            .env("KSM_BALLOON_LOG", "debug")
            .env("KSM_BALLOON_LOG_STYLE", "never")
            .env("KSM_BALLOON_HOOK_LOG", "stderr")
            // The test driver reports no guest statistics: without this
            // every recall would go 16 MiB a pass (the loan rule for a
            // guest that says nothing); these tests are about other things.
            .env("KSM_BALLOON_BLIND_STEP", "unlimited")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        c
    }

    /// Runs the binary with `args` and stdin from /dev/null.
    pub fn run(&self, args: &[&str]) -> Ran {
        self.cmd().args(args).output().unwrap().into()
    }

    /// Runs `hook <name> <op> begin -` with `stdin` as the domain XML.
    pub fn hook_raw(&self, args: &[&str], stdin: &[u8]) -> Ran {
        let mut child = self.spawn_hook(args);
        let mut input = child.stdin.take().unwrap();
        // The hook may stop reading early; a broken pipe is its business.
        let _ = input.write_all(stdin);
        drop(input);
        child.wait_with_output().unwrap().into()
    }

    /// Spawns `hook ARGS...` with piped stdin, stdout and stderr.
    pub fn spawn_hook(&self, args: &[&str]) -> Child {
        self.cmd()
            .arg("hook")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The hook for `d` at `op`, its XML on stdin.
    pub fn hook(&self, d: &Dom, op: &str) -> Ran {
        let sub = if matches!(op, "stopped" | "release") {
            "end"
        } else {
            "begin"
        };
        self.hook_raw(&[&d.name, op, sub, "-"], d.xml().as_bytes())
    }
}

/// Every file under `dir` with its bytes and mode, for before/after checks.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(base).unwrap().to_path_buf();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(rel.clone(), (Vec::new(), mode));
                walk(base, &e.path(), out);
            } else if meta.file_type().is_symlink() {
                let t = fs::read_link(e.path()).unwrap();
                out.insert(rel, (t.to_string_lossy().as_bytes().to_vec(), mode));
            } else {
                out.insert(rel, (fs::read(e.path()).unwrap(), mode));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// What a scenario expects of the state at its end.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Must be recorded exactly once with these figures (running or starting).
    pub present: Vec<Dom>,
    /// Must not be recorded (stopped).
    pub absent: Vec<Dom>,
    /// Either, atomically: when recorded, with these figures (their hook was killed).
    pub maybe: Vec<Dom>,
    /// A libvirt URI whose active domains must all be recorded, within bounds.
    pub live_uri: Option<String>,
    /// Files the state directory may hold besides the state and its lock
    /// (prefixes, e.g. "state.json.bad-" where a scenario corrupts the file).
    pub allowed_extra_files: Vec<String>,
}

/// One resize a pass made, from its JSON report (`run --json`).
#[derive(Clone, Debug, PartialEq)]
pub struct Resized {
    pub name: String,
    pub from_kib: u64,
    pub to_kib: u64,
    pub reason: String,
}

/// The resizes a pass made (those without an error), from its report.
pub fn resizes(report: &serde_json::Value) -> Vec<Resized> {
    report["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| (v["action"] == "grow" || v["action"] == "shrink") && v["error"].is_null())
        .map(|v| Resized {
            name: v["name"].as_str().unwrap().to_string(),
            from_kib: v["current_kib"].as_u64().unwrap(),
            to_kib: v["target_kib"].as_u64().unwrap(),
            reason: v["reason"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// A pass's report from its stdout (`run --json`); panics when it is not one.
pub fn report(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not a pass report ({e}): {stdout:?}"))
}

/// The invariants every scenario ends with. Returns the state when they
/// hold, every violation found otherwise:
/// - the state file parses (and has this build's version);
/// - every expected VM is recorded exactly once with its floor and ceiling;
///   every stopped VM is gone; no two records share a name;
/// - every active domain of `live_uri` is recorded and its balloon is within
///   its record's [floor, ceiling];
/// - every last target set is within [floor, ceiling];
/// - in every pass report (`run --json` stdout; empty strings are passes
///   that failed and printed none): every resize landed within the VM's
///   [floor, ceiling]; a pass that found the host under its reserve grew no
///   VM (except back up to its floor, a bounds repair);
/// - the state directory holds nothing but the state, its lock and what the
///   scenario allows (no temp files left by killed passes).
pub fn check(state_path: &Path, expect: &Expect, reports: &[String]) -> Result<State, String> {
    let mut bad = Vec::new();
    let spool_dir = ksm_balloon::state::spool::dir_of(state_path);
    let text = match fs::read_to_string(state_path) {
        Ok(t) => t,
        // only hooks ran: their records wait in the spool
        Err(_) if spool_dir.is_dir() => State::default().to_json(),
        Err(e) => return Err(format!("cannot read {}: {e}", state_path.display())),
    };
    let mut state = match State::parse_checked(&text) {
        // A record the load would drop is one the save should never have
        // written.
        Ok((s, dropped)) => {
            bad.extend(dropped.into_iter().map(|d| format!("state file: {d}")));
            s
        }
        Err(e) => {
            return Err(format!(
                "state does not parse: {}\n{text}",
                ksm_balloon::errors::chain(&e)
            ))
        }
    };
    // Hook records not folded yet are part of the state the next pass works
    // from: read them as it will.
    let spooled: Vec<_> = ksm_balloon::state::spool::read_all(state_path)
        .map_err(|e| format!("cannot read the spool: {e}"))?
        .into_iter()
        .filter_map(|e| e.record.ok())
        .collect();
    ksm_balloon::hook::fold(&mut state, &spooled);
    if state.version != STATE_VERSION {
        bad.push(format!("state version {}", state.version));
    }
    let by_name = |name: &str| state.vms.values().filter(|r| r.name == name).count();
    for d in &expect.present {
        match state.vms.get(&d.uuid) {
            None => bad.push(format!("VM {:?} ({}) is not recorded", d.name, d.uuid)),
            Some(r) => {
                if r.name != d.name {
                    bad.push(format!(
                        "VM {} recorded as {:?}, is {:?}",
                        d.uuid, r.name, d.name
                    ));
                }
                if (r.floor_kib, r.ceiling_kib) != (d.current_kib, d.memory_kib) {
                    bad.push(format!(
                        "VM {:?}: floor/ceiling {}/{} KiB, expected {}/{}",
                        d.name, r.floor_kib, r.ceiling_kib, d.current_kib, d.memory_kib
                    ));
                }
            }
        }
        if by_name(&d.name) > 1 {
            bad.push(format!(
                "VM {:?} is recorded {} times",
                d.name,
                by_name(&d.name)
            ));
        }
    }
    for d in &expect.absent {
        if state.vms.contains_key(&d.uuid) || by_name(&d.name) > 0 {
            bad.push(format!(
                "stopped VM {:?} ({}) is still recorded",
                d.name, d.uuid
            ));
        }
    }
    for d in &expect.maybe {
        if let Some(r) = state.vms.get(&d.uuid) {
            if (r.floor_kib, r.ceiling_kib, r.name.as_str())
                != (d.current_kib, d.memory_kib, d.name.as_str())
            {
                bad.push(format!(
                    "VM {:?} recorded with wrong figures: {r:?}",
                    d.name
                ));
            }
        }
    }
    let known: BTreeSet<&str> = expect
        .present
        .iter()
        .chain(&expect.maybe)
        .map(|d| d.uuid.as_str())
        .collect();
    let mut live_uuids = BTreeSet::new();
    if let Some(uri) = &expect.live_uri {
        hypervisor::quiet_libvirt();
        match Libvirt::open(uri).and_then(|mut h| h.domains()) {
            Err(e) => bad.push(format!("cannot list the domains of {uri}: {e}")),
            Ok(doms) => {
                for d in doms {
                    live_uuids.insert(d.uuid.clone());
                    match state.vms.get(&d.uuid) {
                        None => bad.push(format!("active VM {:?} is not recorded", d.name)),
                        Some(r) if r.balloon => {
                            let s = d.sizes.expect("the test driver gives sizes");
                            let ceiling = r.ceiling_kib.min(s.maximum_kib);
                            if s.current_kib < r.floor_kib || s.current_kib > ceiling {
                                bad.push(format!(
                                    "VM {:?}: balloon {} KiB outside [{}, {}]",
                                    d.name, s.current_kib, r.floor_kib, ceiling
                                ));
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    let mut names = BTreeMap::new();
    for r in state.vms.values() {
        *names.entry(r.name.as_str()).or_insert(0) += 1;
        if let Some(t) = r.last_target_kib {
            if t < r.floor_kib || t > r.ceiling_kib {
                bad.push(format!(
                    "VM {:?}: last target {t} KiB outside [{}, {}]",
                    r.name, r.floor_kib, r.ceiling_kib
                ));
            }
        }
        if (expect.live_uri.is_some() || !known.is_empty())
            && !known.contains(r.uuid.as_str())
            && !live_uuids.contains(&r.uuid)
        {
            bad.push(format!(
                "VM {:?} ({}) is recorded but neither running nor starting",
                r.name, r.uuid
            ));
        }
    }
    for (n, c) in names {
        if c > 1 {
            bad.push(format!("name {n:?} is recorded {c} times"));
        }
    }
    let bounds: BTreeMap<&str, (u64, u64)> = state
        .vms
        .values()
        .map(|r| (r.name.as_str(), (r.floor_kib, r.ceiling_kib)))
        .collect();
    for text in reports.iter().filter(|t| !t.trim().is_empty()) {
        let r = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(r) if r.get("vms").is_some() => r,
            _ => {
                bad.push(format!(
                    "not a pass report: {:?}",
                    text.chars().take(80).collect::<String>()
                ));
                continue;
            }
        };
        let under = r["under_reserve"] == true;
        for l in resizes(&r) {
            if let Some(&(f, c)) = bounds.get(l.name.as_str()) {
                if l.to_kib < f || l.to_kib > c {
                    bad.push(format!(
                        "resize of {:?} to {} KiB outside [{f}, {c}]: {l:?}",
                        l.name, l.to_kib
                    ));
                }
            }
            if under && l.to_kib > l.from_kib && l.reason != "out-of-bounds" {
                bad.push(format!("a pass under the reserve grew {:?}: {l:?}", l.name));
            }
        }
    }
    if let Some(dir) = state_path.parent() {
        let file = state_path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == file || n == format!("{file}.lock") || n == "spool" {
                continue;
            }
            if !expect.allowed_extra_files.iter().any(|p| n.starts_with(p)) {
                bad.push(format!("unexpected file in the state directory: {n}"));
            }
        }
    }
    if bad.is_empty() {
        Ok(state)
    } else {
        let mut msg = String::new();
        for b in &bad {
            let _ = writeln!(msg, "invariant violated: {b}");
        }
        Err(msg)
    }
}

/// [`check`], panicking with every violation.
pub fn assert_invariants(state_path: &Path, expect: &Expect, reports: &[String]) -> State {
    check(state_path, expect, reports).unwrap_or_else(|e| panic!("{e}"))
}
