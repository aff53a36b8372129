//! Golden-directory tests, one pass each against libvirt's test driver and a
//! fake host root.
//!
//! Every `tests/NN-name/` directory is a case:
//! - `root/`: the fake host tree (`sys/kernel/mm/ksm/*`, `proc/meminfo`, and
//!   maybe a prior `var/lib/ksm-balloon/state.json`);
//! - `node.xml`: the test driver's domains (or a file `connect` naming a
//!   URI such as `test:///default`);
//! - `args`: extra settings, one per line (optional);
//! - `expected/sizes`: every domain's balloon size after the pass, read back
//!   from the driver on the pass's own connection (the test driver forgets
//!   everything when its connection closes);
//! - `expected/calls`: the libvirt calls the pass made;
//! - `expected/state/`: the state directory after the pass (the lock file's
//!   pid replaced by `<pid>`).
//!
//! `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the expected files;
//! review the diff before committing it.

#![allow(clippy::unwrap_used)] // a test helper that fails should panic

use std::fs;
use std::path::{Path, PathBuf};

use clap::Parser;
use ksm_balloon::cli::Cli;
use ksm_balloon::hypervisor::{Hypervisor, Libvirt};
use ksm_balloon::pass;
use virt::connect::Connect;

/// The clock every case runs at.
const NOW: u64 = 1_800_000_000;

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Every file under `dir` as (relative path, contents), sorted.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(base).unwrap().display().to_string();
                let mut text = fs::read_to_string(e.path()).unwrap();
                if rel.ends_with(".lock") {
                    text = "<pid>\n".into();
                }
                out.push((rel, text));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn write_tree(dir: &Path, files: &[(String, String)]) {
    let _ = fs::remove_dir_all(dir);
    for (rel, text) in files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

fn run_case(case: &Path) -> Result<(), String> {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    copy_tree(&case.join("root"), &root);
    let uri = if case.join("node.xml").exists() {
        format!(
            "test://{}",
            case.join("node.xml").canonicalize().unwrap().display()
        )
    } else {
        fs::read_to_string(case.join("connect"))
            .map_err(|e| format!("no node.xml and no connect file: {e}"))?
            .trim()
            .to_string()
    };
    let mut argv: Vec<String> = vec![
        "ksm-balloon".into(),
        "--root".into(),
        root.display().to_string(),
        "--connect".into(),
        uri.clone(),
    ];
    if let Ok(args) = fs::read_to_string(case.join("args")) {
        argv.extend(
            args.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    argv.push("run".into());
    let cli = Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
    let cfg = cli.settings.validate().map_err(|e| e.to_string())?;

    ksm_balloon::hypervisor::quiet_libvirt();
    let conn = Connect::open(Some(&uri)).map_err(|e| e.to_string())?;
    let mut open = || -> anyhow::Result<Box<dyn Hypervisor>> {
        Ok(Box::new(Libvirt::from_connect(&uri, conn.clone())))
    };
    let report = pass::run(&cfg, &mut open, NOW).map_err(|e| format!("{e:#}"))?;

    let mut sizes = String::new();
    let mut doms: Vec<(String, u64)> = conn
        .list_all_domains(0)
        .unwrap()
        .iter()
        .map(|d| (d.name().unwrap(), d.info().unwrap().memory))
        .collect();
    doms.sort();
    for (name, kib) in doms {
        sizes.push_str(&format!("{name}\t{kib}\n"));
    }
    let c = report.calls;
    let calls = format!(
        "bulk_stats {}\nper_domain_info {}\nxml {}\nset_memory {}\n",
        c.bulk_stats, c.per_domain_info, c.xml, c.set_memory
    );
    let state = tree(&root.join("var/lib/ksm-balloon"));

    let expected = case.join("expected");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(&expected).unwrap();
        fs::write(expected.join("sizes"), &sizes).unwrap();
        fs::write(expected.join("calls"), &calls).unwrap();
        write_tree(&expected.join("state"), &state);
        return Ok(());
    }
    let mut problems = Vec::new();
    let want = |f: &str| fs::read_to_string(expected.join(f)).unwrap_or_default();
    if want("sizes") != sizes {
        problems.push(format!(
            "sizes differ:\n--- expected\n{}--- got\n{sizes}",
            want("sizes")
        ));
    }
    if want("calls") != calls {
        problems.push(format!(
            "calls differ:\n--- expected\n{}--- got\n{calls}",
            want("calls")
        ));
    }
    let want_state = tree(&expected.join("state"));
    if want_state != state {
        let show = |t: &[(String, String)]| {
            t.iter()
                .map(|(p, c)| format!("== {p}\n{c}"))
                .collect::<String>()
        };
        problems.push(format!(
            "state directory differs:\n--- expected\n{}--- got\n{}",
            show(&want_state),
            show(&state)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.len() > 3
                        && n.as_bytes()[..2].iter().all(u8::is_ascii_digit)
                        && n.as_bytes()[2] == b'-'
                })
        })
        .collect();
    out.sort();
    out
}

#[test]
fn golden_cases() {
    let cases = cases();
    assert!(cases.len() >= 10, "golden cases missing: {cases:?}");
    let mut failed = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        match run_case(case) {
            Ok(()) => eprintln!("ok   {name}"),
            Err(e) => {
                eprintln!("FAIL {name}\n{e}");
                failed.push(name);
            }
        }
    }
    assert!(failed.is_empty(), "golden cases failed: {failed:?}");
}
