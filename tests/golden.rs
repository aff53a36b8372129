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
//! - `expected/report.json`: the pass's report (`run --json`), with the
//!   fake root's path replaced by `<root>`;
//! - `expected/state/`: the state directory after the pass (the lock file's
//!   pid replaced by `<pid>`).
//!
//! One test function per case, so each runs and fails alone
//! (`cargo test --test golden case_04`); `every_case_has_a_test` fails when a
//! directory has none. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites
//! the expected files; review the diff before committing it.

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
    let report = pass::run(
        &cfg.paths,
        &cfg.pass,
        cfg.settings.lock_timeout,
        &mut open,
        NOW,
    )
    .map_err(|e| format!("{e:#}"))?;
    let report_json = serde_json::to_string_pretty(&report)
        .unwrap()
        .replace(&root.display().to_string(), "<root>")
        + "\n";

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
        "bulk_stats {}\nper_domain_info {}\nxml {}\nset_memory {}\nstats_period {}\n",
        c.bulk_stats, c.per_domain_info, c.xml, c.set_memory, c.stats_period
    );
    let state = tree(&root.join("var/lib/ksm-balloon"));

    let expected = case.join("expected");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(&expected).unwrap();
        fs::write(expected.join("sizes"), &sizes).unwrap();
        fs::write(expected.join("calls"), &calls).unwrap();
        fs::write(expected.join("report.json"), &report_json).unwrap();
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
    if want("report.json") != report_json {
        problems.push(format!(
            "report differs:\n--- expected\n{}--- got\n{report_json}",
            want("report.json")
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

/// Runs the case in `tests/<name>/`.
fn case(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    assert!(dir.is_dir(), "no case directory {}", dir.display());
    if let Err(e) = run_case(&dir) {
        panic!("golden case {name} failed:\n{e}");
    }
}

macro_rules! golden {
    ($($f:ident => $dir:literal,)*) => {
        $(#[test] fn $f() { case($dir) })*
        const CASES: &[&str] = &[$($dir),*];
    };
}

golden! {
    case_01_adopt_equal_split => "01-adopt-equal-split",
    case_02_water_filling => "02-water-filling",
    case_03_savings_fall => "03-savings-fall",
    case_04_host_guard => "04-host-guard",
    case_05_no_balloon_no_headroom => "05-no-balloon-no-headroom",
    case_06_ksm_stopped => "06-ksm-stopped",
    case_07_metric_shared => "07-metric-shared",
    case_08_corrupt_state => "08-corrupt-state",
    case_09_stale_and_starting_records => "09-stale-and-starting-records",
    case_10_proportional_split => "10-proportional-split",
    case_11_test_default_driver => "11-test-default-driver",
    case_12_deadband => "12-deadband",
    case_13_below_floor_restored => "13-below-floor-restored",
    case_14_share_and_step_limit => "14-share-and-step-limit",
    case_15_old_kernel_auto_metric => "15-old-kernel-auto-metric",
    case_16_contribution_split => "16-contribution-split",
    case_17_metadata => "17-metadata",
}

#[test]
fn every_case_has_a_test() {
    let dirs: Vec<String> = cases()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        dirs, listed,
        "tests/NN-* directories and golden! cases differ"
    );
}
