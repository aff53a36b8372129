//! Bad input to the hook, as libvirt (or a broken install) could hand it:
//! unknown operations, missing arguments, domain XML that is empty, huge,
//! malformed, an entity bomb, not a domain, lacking its memory elements, with
//! odd or unknown units. The hook exits 0 and prints nothing on stdout
//! whatever it gets (failing would block a VM start); it spools the XML as
//! given, and the pass that folds the record logs a clear line and leaves
//! the state as it was; sizes in odd units must be recorded right. Each
//! case ends with the invariants check (tests/common).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};

use common::{assert_invariants, Dom, Expect, Fixture};
use ksm_balloon::state::State;

/// A fixture with one VM already recorded (still starting: the test
/// driver does not list it), so "untouched" means something.
fn recorded() -> (Fixture, Dom, State) {
    let known = Dom::numbered("known-", 1);
    let fx = Fixture::new(&[]);
    let out = fx.hook(&known, "prepare");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = fx.run(&["run"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let state = fx.state();
    assert!(state.vms.contains_key(&known.uuid));
    (fx, known, state)
}

/// A pass folds what the hook spooled; returns its log (stderr) and its
/// report (stdout).
fn pass(fx: &Fixture) -> common::Ran {
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out
}

fn untouched(fx: &Fixture, known: &Dom, before: &State, what: &str, report: String) {
    assert_eq!(fx.state().vms, before.vms, "{what}: the state changed");
    assert!(
        ksm_balloon::state::spool::read_all(&fx.state_path())
            .unwrap()
            .is_empty(),
        "{what}: the pass left records in the spool"
    );
    assert_invariants(
        &fx.state_path(),
        &Expect {
            present: vec![known.clone()],
            ..Expect::default()
        },
        &[report],
    );
}

fn domain(name: &str, body: &str) -> String {
    format!("<domain type='kvm'><name>{name}</name><uuid>aaaaaaaa-0000-4000-8000-000000000001</uuid>{body}</domain>")
}

#[test]
fn bad_xml_is_logged_exit_0_state_untouched() {
    let (fx, known, before) = recorded();
    let huge = {
        let mut s = domain("huge", "<memory>1024</memory>");
        s.insert_str(
            s.len() - "</domain>".len(),
            &format!("<description>{}</description>", "x".repeat(5 << 20)),
        );
        s
    };
    let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE domain [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
 <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
]>
<domain><name>&g;</name><uuid>u</uuid><memory>1024</memory></domain>"#;
    // (stdin, the log must say)
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "the domain XML is empty"),
        ("   \n\t".into(), "the domain XML is empty"),
        (huge, "larger than 4194304 bytes"),
        ("<domain><name>x</name".into(), "not well-formed"),
        ("not xml at all".into(), "not well-formed"),
        (bomb.into(), "not well-formed"),
        (
            "<network><name>x</name></network>".into(),
            "root element is <network>, not <domain>",
        ),
        (domain("nomem", ""), "has no <memory> element"),
        (
            domain("emptymem", "<memory unit='KiB'></memory>"),
            "<memory> holds \"\"",
        ),
        (
            "<domain><uuid>u</uuid><memory>1024</memory></domain>".into(),
            "has no <name> element",
        ),
        (
            "<domain><name>n</name><memory>1024</memory></domain>".into(),
            "has no <uuid> element",
        ),
        (
            domain("furlong", "<memory unit='furlong'>3</memory>"),
            "unknown unit \"furlong\"",
        ),
        (
            domain("neg", "<memory>-1024</memory>"),
            "not a whole non-negative number",
        ),
        (
            domain("frac", "<memory unit='GiB'>1.5</memory>"),
            "not a whole non-negative number",
        ),
        (
            domain("big", "<memory unit='EiB'>99999</memory>"),
            "too large",
        ),
        (
            domain(
                "cur",
                "<memory>1024</memory><currentMemory unit='parsec'>1</currentMemory>",
            ),
            "<currentMemory> holds \"1\" with unit \"parsec\"",
        ),
        ("\u{feff}\u{0}\u{1}binary\u{7f}".into(), "not well-formed"),
    ];
    for (stdin, msg) in cases {
        for op in ["prepare", "start", "reconnect"] {
            let what = format!("{op} with {:?}", stdin.chars().take(60).collect::<String>());
            let out = fx.hook_raw(&["vm-bad", op, "begin", "-"], stdin.as_bytes());
            assert_eq!(out.code, Some(0), "{what}: {}", out.stderr);
            assert!(out.stdout.is_empty(), "{what}: printed on stdout");
            let out = pass(&fx);
            let line = out
                .stderr
                .lines()
                .find(|l| l.contains(msg))
                .unwrap_or_else(|| panic!("{what}: wanted {msg:?} in\n{}", out.stderr));
            assert!(line.contains("WARN"), "{what}: {line}");
            assert!(line.contains("hook \"vm-bad\""), "{what}: {line}");
            untouched(&fx, &known, &before, &what, out.stdout);
        }
    }
}

#[test]
fn huge_xml_is_drained_not_left_in_the_pipe() {
    // libvirt writes the whole XML; a hook that stopped reading would make
    // that write fail. The writer here checks every byte was taken.
    let (fx, known, before) = recorded();
    let mut child = fx.spawn_hook(&["vm", "prepare", "begin", "-"]);
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let chunk = vec![b'<'; 1 << 20];
        for _ in 0..12 {
            input.write_all(&chunk)?;
        }
        Ok::<_, std::io::Error>(())
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().expect("the hook took all 12 MiB");
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("larger than 4194304 bytes"), "{err}");
    let out = pass(&fx);
    assert!(
        out.stderr.contains("larger than 4194304 bytes"),
        "{}",
        out.stderr
    );
    untouched(&fx, &known, &before, "12 MiB", out.stdout);
}

#[test]
fn unknown_operations_exit_0_at_once_and_spool_nothing() {
    // A VM start waits for the hook: an operation ksm-balloon does not act
    // on costs it nothing but reading stdin.
    let (fx, known, before) = recorded();
    for op in [
        "frobnicate",
        "",
        "PREPARE",
        "shutdown",
        "stopped\n",
        "-",
        "prepare ",
    ] {
        for program in [common::HOOK_BIN, common::BIN] {
            let mut c = fx.cmd();
            if program == common::BIN {
                c.arg("hook");
            } else {
                c = Command::new(program);
                c.env("KSM_BALLOON_ROOT", &fx.root)
                    .env("KSM_BALLOON_HOOK_LOG", "stderr");
            }
            let mut child = c
                .env("KSM_BALLOON_LOG", "info")
                .args(["known-001", op, "begin", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(known.xml().as_bytes())
                    .unwrap();
            }
            let out: common::Ran = child.wait_with_output().unwrap().into();
            assert_eq!(out.code, Some(0), "{op:?}: {}", out.stderr);
            assert!(
                out.stdout.is_empty() && out.stderr.is_empty(),
                "{op:?}: {out:?}"
            );
            assert!(
                ksm_balloon::state::spool::read_all(&fx.state_path())
                    .unwrap()
                    .is_empty(),
                "{op:?} was spooled"
            );
        }
        untouched(&fx, &known, &before, op, String::new());
    }
}

#[test]
fn missing_arguments_are_usage_errors_but_the_installed_hook_exits_0() {
    let (fx, known, before) = recorded();
    // `ksm-balloon hook` alone is a usage error (exit 2)
    let out = fx.cmd().args(["hook"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("required arguments were not provided"));
    // sub-op and extra may be missing: they default to "-"
    let out = fx.hook_raw(&["vm-x", "frobnicate"], b"");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    untouched(&fx, &known, &before, "two args", pass(&fx).stdout);
    // the program libvirt runs: whatever it is given, it exits 0, prints
    // nothing on stdout, and says what was wrong on stderr
    for args in [&[][..], &["vm1"][..], &["vm1", "bogus", "x", "y", "z"][..]] {
        let out = Command::new(common::HOOK_BIN)
            .args(args)
            .stdin(Stdio::null())
            .env("KSM_BALLOON_ROOT", &fx.root)
            .env("KSM_BALLOON_HOOK_LOG", "stderr")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "hook program {args:?}");
        assert!(
            out.stdout.is_empty(),
            "hook program {args:?} printed on stdout"
        );
        if args.len() < 2 {
            assert!(
                String::from_utf8_lossy(&out.stderr)
                    .contains("libvirt passes <domain> <operation>"),
                "{args:?}: {out:?}"
            );
        }
        untouched(&fx, &known, &before, "hook program", pass(&fx).stdout);
    }
}

#[test]
fn odd_units_are_recorded_in_kib() {
    let fx = Fixture::new(&[]);
    // (memory, currentMemory, floor KiB, ceiling KiB)
    let cases = [
        (
            "<memory unit='KiB'>262144</memory>",
            "<currentMemory unit='KiB'>163840</currentMemory>",
            163840,
            262144,
        ),
        (
            "<memory unit='MiB'>256</memory>",
            "<currentMemory unit='MiB'>160</currentMemory>",
            163840,
            262144,
        ),
        (
            "<memory unit='GiB'>2</memory>",
            "<currentMemory unit='MiB'>1536</currentMemory>",
            1572864,
            2097152,
        ),
        (
            "<memory unit='b'>268435456</memory>",
            "<currentMemory unit='bytes'>167772161</currentMemory>",
            163841,
            262144,
        ),
        (
            "<memory unit='G'>1</memory>",
            "<currentMemory unit='M'>512</currentMemory>",
            524288,
            1048576,
        ),
        (
            "<memory unit='MB'>1000</memory>",
            "<currentMemory unit='KB'>512000</currentMemory>",
            500000,
            976563,
        ),
        ("<memory>262144</memory>", "", 262144, 262144),
        (
            "<memory unit='KiB'> 262144 </memory>",
            "<currentMemory unit=' KiB '>100</currentMemory>",
            100,
            262144,
        ),
        // current above memory: the floor is the ceiling (never above it)
        (
            "<memory unit='MiB'>128</memory>",
            "<currentMemory unit='MiB'>256</currentMemory>",
            131072,
            131072,
        ),
    ];
    let mut present = Vec::new();
    for (i, (mem, cur, floor, ceiling)) in cases.iter().enumerate() {
        let d = Dom {
            current_kib: *floor,
            memory_kib: *ceiling,
            ..Dom::numbered("units-", i as u32)
        };
        let xml = format!(
            "<domain type='kvm'><name>{}</name><uuid>{}</uuid>{mem}{cur}</domain>",
            d.name, d.uuid
        );
        let out = fx.hook_raw(&[&d.name, "prepare", "begin", "-"], xml.as_bytes());
        assert_eq!(out.code, Some(0), "{xml}: {}", out.stderr);
        let r = fx.next_state().vms[&d.uuid].clone();
        assert_eq!((r.floor_kib, r.ceiling_kib), (*floor, *ceiling), "{xml}");
        present.push(d);
    }
    assert_invariants(
        &fx.state_path(),
        &Expect {
            present,
            ..Expect::default()
        },
        &[],
    );
}

#[test]
fn a_stop_with_unreadable_xml_still_forgets_by_name() {
    let (fx, known, _) = recorded();
    let out = fx.hook_raw(&[&known.name, "stopped", "end", "-"], b"<domain");
    assert_eq!(out.code, Some(0));
    let out = pass(&fx);
    // the record is folded (the invariants below: the VM forgotten), and
    // the pass says what was wrong with it
    assert_eq!(
        common::report(&out.stdout)["hook_records"],
        1,
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("not well-formed"), "{}", out.stderr);
    assert_invariants(
        &fx.state_path(),
        &Expect {
            absent: vec![known],
            ..Expect::default()
        },
        &[out.stdout],
    );
}
