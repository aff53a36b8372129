//! The hook as libvirt runs it: the binary, the arguments libvirt passes and
//! the domain XML libvirt 9.0 really gave a hook script on this platform
//! (captured into tests/fixtures/hook-xml/ from a real `virsh create`).

#![allow(clippy::unwrap_used)] // a test helper that fails should panic

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ksm-balloon");
const UUID: &str = "02f216df-951e-4915-8db4-1257673b8525";

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hook-xml")
        .join(name);
    std::fs::read_to_string(p).unwrap()
}

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("var/lib/ksm-balloon/state.json")
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_path()).unwrap()).unwrap()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("KSM_BALLOON_ROOT", self.dir.path())
            .env("KSM_BALLOON_LOG", "debug")
            .args(args);
        c
    }

    fn hook(&self, args: &[&str], stdin: &str) -> Output {
        let mut full = vec!["hook"];
        full.extend_from_slice(args);
        let mut child = self
            .cmd(&full)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "hook {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // libvirt takes a migrate/restore hook's stdout as replacement XML
        assert!(
            out.stdout.is_empty(),
            "hook printed on stdout: {:?}",
            out.stdout
        );
        out
    }
}

#[test]
fn start_and_stop_sequence_from_real_libvirt_xml() {
    let h = Host::new();
    h.hook(
        &["g1", "prepare", "begin", "-"],
        &fixture("prepare-begin.xml"),
    );
    let vm = &h.state()["vms"][UUID];
    assert_eq!(vm["name"], "g1");
    assert_eq!(vm["floor_kib"], 163840);
    assert_eq!(vm["ceiling_kib"], 262144);
    assert_eq!(vm["balloon"], true);
    assert_eq!(vm["source"], "hook");
    h.hook(&["g1", "start", "begin", "-"], &fixture("start-begin.xml"));
    // at started libvirt reports currentMemory == memory: the floor must stay
    let started = fixture("started-begin.xml");
    assert!(started.contains("<currentMemory unit='KiB'>262144</currentMemory>"));
    h.hook(&["g1", "started", "begin", "-"], &started);
    assert_eq!(h.state()["vms"][UUID]["floor_kib"], 163840);
    h.hook(&["g1", "stopped", "end", "-"], &fixture("stopped-end.xml"));
    assert!(h.state()["vms"].as_object().unwrap().is_empty());
    h.hook(&["g1", "release", "end", "-"], &fixture("release-end.xml"));
    assert!(h.state()["vms"].as_object().unwrap().is_empty());
}

#[test]
fn reconnect_keeps_the_floor_it_knows() {
    let h = Host::new();
    h.hook(
        &["g1", "prepare", "begin", "-"],
        &fixture("prepare-begin.xml"),
    );
    // after a libvirtd restart the live XML shows the size with our bonus
    let live = fixture("started-begin.xml").replace(
        "<currentMemory unit='KiB'>262144</currentMemory>",
        "<currentMemory unit='KiB'>202000</currentMemory>",
    );
    h.hook(&["g1", "reconnect", "begin", "-"], &live);
    assert_eq!(h.state()["vms"][UUID]["floor_kib"], 163840);
}

#[test]
fn unknown_operations_and_bad_xml_leave_the_state_alone() {
    let h = Host::new();
    h.hook(
        &["g1", "prepare", "begin", "-"],
        &fixture("prepare-begin.xml"),
    );
    let before = std::fs::read(h.state_path()).unwrap();
    h.hook(
        &["g1", "frobnicate", "begin", "-"],
        &fixture("prepare-begin.xml"),
    );
    h.hook(&["g1", "start", "begin", "-"], "");
    let out = h.hook(&["g1", "start", "begin", "-"], "<domain><name>g1</name>");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not well-formed"));
    let out = h.hook(
        &["g1", "start", "begin", "-"],
        "<domain><name>g1</name><uuid>x</uuid></domain>",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no <memory> element"));
    assert_eq!(std::fs::read(h.state_path()).unwrap(), before);
}

#[test]
fn a_stop_with_unreadable_xml_still_forgets_the_vm_by_name() {
    let h = Host::new();
    h.hook(
        &["g1", "prepare", "begin", "-"],
        &fixture("prepare-begin.xml"),
    );
    h.hook(&["g1", "stopped", "end", "-"], "not xml");
    assert!(h.state()["vms"].as_object().unwrap().is_empty());
}

/// Accepts one connection on `listener` within `wait`, if any arrives.
fn accepted_within(listener: &UnixListener, wait: Duration) -> bool {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if listener.accept().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn the_hook_opens_no_libvirt_connection() {
    let h = Host::new();
    let sock = h.dir.path().join("libvirt-sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let uri = format!("qemu+unix:///system?socket={}", sock.display());

    for (op, xml) in [
        ("prepare", "prepare-begin.xml"),
        ("start", "start-begin.xml"),
        ("started", "started-begin.xml"),
        ("reconnect", "started-begin.xml"),
        ("stopped", "stopped-end.xml"),
        ("release", "release-end.xml"),
    ] {
        let mut c = h.cmd(&["--connect", &uri, "hook", "g1", op, "begin", "-"]);
        c.env("LIBVIRT_DEFAULT_URI", &uri)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(fixture(xml).as_bytes())
            .unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0));
        assert!(
            !accepted_within(&listener, Duration::from_millis(50)),
            "hook {op} connected to libvirt"
        );
    }

    // The control: a pass with the same URI does reach the socket, so the
    // check above can fail.
    let mut pass = h.cmd(&["--connect", &uri, "status"]);
    pass.stdout(Stdio::null()).stderr(Stdio::null());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root");
    for sub in ["sys/kernel/mm/ksm", "proc"] {
        std::fs::create_dir_all(h.dir.path().join(sub)).unwrap();
        for f in std::fs::read_dir(fixtures.join(sub)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), h.dir.path().join(sub).join(f.file_name())).unwrap();
        }
    }
    let mut child = pass.spawn().unwrap();
    let connected = accepted_within(&listener, Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        connected,
        "the control pass never connected: the test is blind"
    );
}
