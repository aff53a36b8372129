//! Multi-pass golden scenarios: a sequence of passes with time moving,
//! through the whole pass (`pass::run`: the state saved and read back,
//! the hook's records folded) against the in-memory hypervisor, whose
//! balloons move when asked.
//!
//! Every `tests/scenarios/<name>/` directory is a scenario:
//! - `scenario.json`, the observations in:
//!   - `args`: settings, as on the command line (optional);
//!   - `vms`: each VM, `name`, `floor` and `max` (MiB): recorded by the
//!     hook at the start, running at its floor;
//!   - `passes`: in order, each with `t` (seconds from the start, by the
//!     wall clock), optionally `boot` (seconds from the start by the boot's
//!     monotonic clock, `CLOCK_BOOTTIME`: given, the pass reads it too,
//!     and a `t` that moves otherwise than `boot` is a step of the wall
//!     clock; `t` may then go back), and what changed before it: `savings` (KSM's `general_profit`, MiB),
//!     `available` (the host's MemAvailable, MiB; MemTotal is 24 GiB),
//!     `release` (VM names handed back with `ksm-balloon release`), `ksm`
//!     (`scanned`: `pages_scanned`, `full_scans`, `ksmd_ticks`: ksmd's CPU
//!     time in the fake `/proc`, all totals since boot), `knobs` (KSM
//!     knobs an operator writes before the pass, e.g. `{"run": 0}`), and
//!     per VM under `vms`: `guest` (its own figures, MiB: `usable`,
//!     `unused`, `total`, and either `age` (seconds before each pass) or
//!     `at` (seconds from the start); `null`: none), `read` (its disk's
//!     reads since boot, MiB), `lowest` (the smallest size its balloon
//!     reaches, MiB; `null`: any), `setmem` (an operator sets its balloon
//!     to this, MiB). What is not given stays as it was.
//! - `expected`: per pass, the pass's figures, each VM's report (size,
//!   target, action, reason and the rest that decide the next pass), and
//!   the libvirt writes the pass made.
//!
//! One test function per scenario (`cargo test --test scenarios stuck`);
//! `every_scenario_has_a_test` fails when a directory has none.
//! `UPDATE_GOLDEN=1 cargo test --test scenarios` rewrites `expected`;
//! review the diff before committing it.

#![allow(clippy::unwrap_used)] // a test helper that fails should panic

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use clap::Parser;
use ksm_balloon::cli::Cli;
use ksm_balloon::hypervisor::fake::{FakeDomain, FakeHv, Shared};
use ksm_balloon::hypervisor::{GuestStats, Hypervisor};
use ksm_balloon::pass::{self, Report};
use ksm_balloon::state::spool::Stamp;
use ksm_balloon::testing;
use serde_json::Value;

const MIB: u64 = 1024;
/// The clock at a scenario's start.
const T0: u64 = 1_800_000_000;
/// The boot clock at a scenario's start, seconds.
const BOOT0: u64 = 1000;
/// The host's MemTotal, KiB.
const TOTAL_KIB: u64 = 24 << 20;

fn uuid(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-000000000000", i + 1)
}

fn mib(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64).map(|m| m * MIB)
}

/// KSM's counters as a scan left them: the savings (MiB), and where
/// given, `pages_scanned` and `full_scans`. `run` stays as it is once
/// written (the governor's, or an operator's), 1 at the start.
fn write_ksm(dir: &Path, savings_mib: u64, scanned: Option<u64>, full_scans: u64) {
    let run = fs::read_to_string(dir.join("run")).ok();
    let k = ksm_balloon::ksm::KsmCounters {
        pages_scanned: scanned,
        full_scans,
        ..testing::ksm_saving(savings_mib * MIB)
    };
    testing::write_ksm(dir, &k).unwrap();
    if let Some(run) = run {
        fs::write(dir.join("run"), run).unwrap();
    }
}

/// ksmd in the fake `/proc`, with `ticks` of CPU time.
fn write_ksmd(proc_dir: &Path, ticks: u64) {
    let dir = proc_dir.join("39");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("stat"),
        format!("39 (ksmd) S 2 0 0 0 -1 2097216 36 0 0 0 0 {ticks} 0 0 25 5 1 0 28 0 0"),
    )
    .unwrap();
}

fn write_meminfo(path: &Path, available_kib: u64) {
    fs::write(
        path,
        format!("MemTotal: {TOTAL_KIB} kB\nMemFree: 1 kB\nMemAvailable: {available_kib} kB\n"),
    )
    .unwrap();
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn in_mib(kib: u64) -> String {
    if kib % MIB == 0 {
        (kib / MIB).to_string()
    } else {
        format!("{:.1}", kib as f64 / MIB as f64)
    }
}

/// `at` from the start, seconds (before it: negative).
fn rel(at: u64) -> i64 {
    at as i64 - T0 as i64
}

/// One pass of the expected file.
fn describe(out: &mut String, n: usize, t: i64, r: &Report, writes: &[String]) {
    let _ = writeln!(
        out,
        "== pass {n} at {t:+}s{}: savings {} lendable {} pool {} budget {} available {}{}",
        r.clock_step_secs.map_or(String::new(), |s| format!(
            " (the wall clock stepped {s:+} s)"
        )),
        in_mib(r.savings_kib),
        in_mib(r.lendable_kib),
        in_mib(r.pool_kib),
        in_mib(r.budget_kib),
        in_mib(r.host.available_kib),
        if r.under_reserve {
            format!(" UNDER RESERVE by {}", in_mib(r.shortfall_kib))
        } else {
            String::new()
        }
    );
    for v in &r.vms {
        let _ = writeln!(
            out,
            "{}: {} -> {} {:?}/{:?} pending {} kept {} givable {} figures age {} confirmed {} demand {}{} stuck {} held {}",
            v.name,
            in_mib(v.current_kib),
            in_mib(v.target_kib),
            v.action,
            v.reason,
            opt(v.pending_kib.map(in_mib)),
            in_mib(v.kept_kib),
            in_mib(v.givable_kib),
            opt(v.figures_age_secs),
            opt(v.figures_confirmed),
            opt(v.demand),
            v.demand_basis.map_or(String::new(), |b| format!(" ({b:?})")),
            opt(v.stuck.map(|s| format!(
                "since {:+} tries {} retry {:+}",
                rel(s.since),
                s.tries,
                rel(s.retry_at)
            ))),
            opt(v.held_by_hand.map(|h| format!("since {:+}", rel(h.since)))),
        );
    }
    for w in writes {
        let _ = writeln!(out, "  {w}");
    }
    let g = &r.ksm_governor;
    if g.mode == ksm_balloon::governor::Mode::Manage {
        let _ = writeln!(
            out,
            "ksm {:?}: {}{}",
            g.action,
            g.reason,
            g.writes
                .iter()
                .map(|w| format!("; {} {} -> {}", w.knob, w.from, w.to))
                .collect::<String>()
        );
    }
}

fn run_scenario(dir: &Path) -> Result<(), String> {
    let spec: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("scenario.json")).unwrap()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let mut argv: Vec<String> = vec![
        "ksm-balloon".into(),
        "--root".into(),
        root.display().to_string(),
    ];
    if let Some(args) = spec["args"].as_array() {
        argv.extend(args.iter().map(|a| a.as_str().unwrap().to_string()));
    }
    argv.push("run".into());
    let cfg = Cli::try_parse_from(&argv)
        .map_err(|e| e.to_string())?
        .settings
        .validate()
        .map_err(|e| e.to_string())?;
    let paths = &cfg.paths;
    fs::create_dir_all(&paths.ksm_dir).unwrap();
    fs::create_dir_all(paths.meminfo.parent().unwrap()).unwrap();
    write_ksm(&paths.ksm_dir, 0, None, 1);
    for (knob, v) in [("pages_to_scan", 100), ("sleep_millisecs", 20)] {
        fs::write(paths.ksm_dir.join(knob), format!("{v}\n")).unwrap();
    }
    write_meminfo(&paths.meminfo, TOTAL_KIB);
    // KSM's figures as last given
    let (mut savings, mut scanned, mut full_scans) = (0, None, 1);

    let vms = spec["vms"].as_array().unwrap();
    let names: Vec<String> = vms
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let mut domains = Vec::new();
    for (i, v) in vms.iter().enumerate() {
        let (floor, max) = (mib(v, "floor").unwrap(), mib(v, "max").unwrap());
        let d = FakeDomain::new(&names[i], &uuid(i), floor, max);
        let xml = format!(
            "<domain><name>{}</name><uuid>{}</uuid><memory>{max}</memory><currentMemory>{floor}</currentMemory></domain>",
            names[i],
            uuid(i)
        );
        let h = ksm_balloon::hook::run(
            &paths.state,
            &names[i],
            "prepare",
            "begin",
            xml.as_bytes(),
            T0,
        );
        assert!(h.problems.is_empty(), "{:?}", h.problems);
        domains.push(d);
    }
    let hv = Shared(Rc::new(RefCell::new(FakeHv::new(domains))));
    // Each VM's guest figures as last given (re-stamped every pass when
    // given by age).
    let mut guests: Vec<Value> = vec![Value::Null; vms.len()];

    let mut out = String::new();
    for (n, p) in spec["passes"].as_array().unwrap().iter().enumerate() {
        let t = p["t"].as_i64().unwrap();
        let now = T0.saturating_add_signed(t);
        let clocks = pass::Now {
            wall: now,
            boot: p.get("boot").and_then(Value::as_u64).map(|b| Stamp {
                boot_id: "5ce7a210000040008000000000000000".into(),
                boottime_ns: (BOOT0 + b) * 1_000_000_000,
            }),
        };
        if let Some(s) = p.get("savings").and_then(Value::as_u64) {
            savings = s;
        }
        if let Some(k) = p.get("ksm") {
            scanned = k.get("scanned").and_then(Value::as_u64).or(scanned);
            full_scans = k
                .get("full_scans")
                .and_then(Value::as_u64)
                .unwrap_or(full_scans);
            if let Some(t) = k.get("ksmd_ticks").and_then(Value::as_u64) {
                write_ksmd(&paths.procs.proc_dir, t);
            }
        }
        write_ksm(&paths.ksm_dir, savings, scanned, full_scans);
        if let Some(knobs) = p.get("knobs").and_then(Value::as_object) {
            for (knob, v) in knobs {
                fs::write(paths.ksm_dir.join(knob), format!("{v}\n")).unwrap();
            }
        }
        if let Some(a) = mib(p, "available") {
            write_meminfo(&paths.meminfo, a);
        }
        if let Some(rel) = p.get("release").and_then(Value::as_array) {
            let rel: Vec<String> = rel.iter().map(|v| v.as_str().unwrap().into()).collect();
            ksm_balloon::admin::release(paths, cfg.settings.lock_timeout, &rel, clocks.clone())
                .map_err(|e| format!("{e:#}"))?;
        }
        if let Some(changes) = p.get("vms").and_then(Value::as_object) {
            let mut fake = hv.0.borrow_mut();
            for (name, c) in changes {
                let i = names.iter().position(|n| n == name).unwrap();
                let d = fake.domains.get_mut(&uuid(i)).unwrap();
                let c = c.as_object().unwrap();
                if let Some(g) = c.get("guest") {
                    guests[i] = g.clone();
                }
                if let Some(r) = c.get("read") {
                    d.live.block_rd_bytes = Some(r.as_u64().unwrap() << 20);
                }
                if let Some(l) = c.get("lowest") {
                    d.lowest_kib = l.as_u64().map(|m| m * MIB);
                }
                if let Some(s) = c.get("setmem") {
                    d.live.sizes.as_mut().unwrap().current_kib = s.as_u64().unwrap() * MIB;
                }
            }
        }
        {
            let mut fake = hv.0.borrow_mut();
            for (i, g) in guests.iter().enumerate() {
                let d = fake.domains.get_mut(&uuid(i)).unwrap();
                d.live.guest = if g.is_null() {
                    GuestStats::default()
                } else {
                    GuestStats {
                        usable_kib: mib(g, "usable"),
                        unused_kib: mib(g, "unused"),
                        available_kib: mib(g, "total"),
                        last_update: Some(match g.get("at").and_then(Value::as_u64) {
                            Some(at) => T0 + at,
                            None => now - g["age"].as_u64().unwrap_or(0),
                        }),
                        ..GuestStats::default()
                    }
                };
            }
        }
        let (resizes_before, periods_before) = {
            let f = hv.0.borrow();
            (f.resizes.len(), f.stats_periods.len())
        };
        let conn = hv.clone();
        let mut open = move || Ok(Box::new(conn.clone()) as Box<dyn Hypervisor>);
        let report = pass::run(
            paths,
            &cfg.pass,
            cfg.settings.lock_timeout,
            &mut open,
            clocks,
        )
        .map_err(|e| format!("pass {} at +{t}s: {e:#}", n + 1))?;
        let writes: Vec<String> = {
            let f = hv.0.borrow();
            let name = |u: &str| names[(0..names.len()).find(|&i| uuid(i) == u).unwrap()].clone();
            f.resizes[resizes_before..]
                .iter()
                .map(|(u, kib)| {
                    format!(
                        "set {} to {} (now at {})",
                        name(u),
                        in_mib(*kib),
                        in_mib(f.current(u).unwrap())
                    )
                })
                .chain(
                    f.stats_periods[periods_before..]
                        .iter()
                        .map(|(u, s)| format!("statistics period of {} to {s} s", name(u))),
                )
                .collect()
        };
        describe(&mut out, n + 1, t, &report, &writes);
    }

    let expected = dir.join("expected");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&expected, &out).unwrap();
        return Ok(());
    }
    let want = fs::read_to_string(&expected).unwrap_or_default();
    if want == out {
        return Ok(());
    }
    let diff: String = want
        .lines()
        .zip(out.lines())
        .filter(|(a, b)| a != b)
        .take(6)
        .map(|(a, b)| format!("- {a}\n+ {b}\n"))
        .collect();
    Err(format!(
        "{} differs from what the passes did (first differing lines):\n{diff}--- got\n{out}",
        expected.display()
    ))
}

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

fn scenario(name: &str) {
    if let Err(e) = run_scenario(&scenarios_dir().join(name)) {
        panic!("scenario {name}: {e}");
    }
}

macro_rules! scenarios {
    ($($f:ident => $dir:literal,)*) => {
        $(
            #[test]
            fn $f() {
                scenario($dir);
            }
        )*

        #[test]
        fn every_scenario_has_a_test() {
            let known = [$($dir),*];
            for e in fs::read_dir(scenarios_dir()).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(known.contains(&name.as_str()), "tests/scenarios/{name} has no test function");
            }
        }
    };
}

scenarios! {
    demand_split_follows_a_busy_vm => "demand-split-follows-a-busy-vm",
    demand_split_follows_a_new_reader_within_three_passes => "demand-split-follows-a-new-reader-within-three-passes",
    demand_split_a_working_set_that_fits_keeps_its_loan => "demand-split-a-working-set-that-fits-keeps-its-loan",
    demand_split_a_diskless_idle_guest_beside_a_reader => "demand-split-a-diskless-idle-guest-beside-a-reader",
    demand_split_unknowns_do_not_dilute_a_reader => "demand-split-unknowns-do-not-dilute-a-reader",
    demand_split_a_slowing_reader_holds_a_quarter_of_its_peak => "demand-split-a-slowing-reader-holds-a-quarter-of-its-peak",
    hold_window => "hold-window",
    ksm_governor_manage => "ksm-governor-manage",
    loan_recalled_as_the_guest_can_pay => "loan-recalled-as-the-guest-can-pay",
    manual_setmem_held_and_released => "manual-setmem-held-and-released",
    stuck_balloon_backoff => "stuck-balloon-backoff",
    clock_stepped_back => "clock-stepped-back",
}
