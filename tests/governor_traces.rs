//! The KSM governor's scan-rate rule over traces recorded on the real
//! stack (issue 21): what each pass of bench/ksm-governor.sh measured
//! (savings, `pages_scanned`, `full_scans`, ksmd's CPU), under the fast,
//! default and `manage` arms, three repeats each, replayed pass by pass
//! through [`govern`] with the knobs it left fed back as the next pass's.
//!
//! The replay is open-loop: the savings are what the recorded arm's own
//! rate found, they do not answer the replayed rate. So the tests ask only
//! what a recording can answer: whether the rule raises the rate while the
//! recorded savings grow by what lending acts on, and never while they
//! stay flat (the quiet phase, where no new data was written). The traces
//! are `tests/fixtures/ksm-governor/*.csv`, written from the benchmark's
//! results by `bench/ksm_governor_trace.py`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ksm_balloon::governor::{govern, Found, Input, Knobs, Memory, Mode, Outcome, Settings};
use ksm_balloon::policy::Policy;

/// One recorded pass.
#[derive(Debug)]
struct Pass {
    t: i64,
    phase: String,
    savings_kib: u64,
    pages_scanned: u64,
    full_scans: u64,
    cpu_percent: Option<f64>,
    run: u64,
    pages_to_scan: u64,
}

/// Every recorded trace, by name (`manage-1`), in name order.
fn traces() -> Vec<(String, Vec<Pass>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ksm-governor");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    names.sort();
    assert!(names.len() >= 9, "the recorded traces in {}", dir.display());
    names
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let mut lines = text.lines().filter(|l| !l.starts_with('#'));
            let head: Vec<&str> = lines.next().unwrap().split(',').collect();
            let passes = lines
                .map(|l| {
                    let cells: Vec<&str> = l.split(',').collect();
                    let get = |name: &str| cells[head.iter().position(|h| *h == name).unwrap()];
                    let num = |name: &str| get(name).parse::<u64>().unwrap();
                    Pass {
                        t: get("t").parse().unwrap(),
                        phase: get("phase").to_string(),
                        savings_kib: num("savings_kib"),
                        pages_scanned: num("pages_scanned"),
                        full_scans: num("full_scans"),
                        cpu_percent: get("cpu_permille").parse::<f64>().ok().map(|c| c / 10.0),
                        run: num("run"),
                        pages_to_scan: num("pages_to_scan"),
                    }
                })
                .collect();
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                passes,
            )
        })
        .collect()
}

const MANAGE: Settings = Settings {
    mode: Mode::Manage,
    max_cpu_percent: 10.0,
};

/// The trace through the rule: each pass finds the knobs as the rule left
/// them (the first as the recorded arm had them); one outcome per pass.
fn replay(passes: &[Pass]) -> Vec<Outcome> {
    let mut knobs = Knobs {
        run: passes[0].run,
        pages_to_scan: passes[0].pages_to_scan,
        sleep_millisecs: 20,
        advisor_max_cpu: Some(70),
    };
    let mut memory: Option<Memory> = None;
    let mut out = Vec::new();
    for p in passes {
        let i = Input {
            now: (1_000 + p.t) as u64,
            found: Ok(Found {
                knobs,
                advisor: false,
                smart_scan: Some(1),
            }),
            headroom_vms: 3,
            savings_kib: p.savings_kib,
            page_kib: 4,
            pages_scanned: Some(p.pages_scanned),
            full_scans: p.full_scans,
            cpu_percent: p.cpu_percent,
            boot_id: Some("trace".into()),
            min_gain_kib: Policy::default().deadband_kib,
        };
        let o = govern(&MANAGE, &i, memory.as_ref());
        memory = o.memory.clone();
        knobs = memory.as_ref().expect("manage keeps a memory").left;
        out.push(o);
    }
    out
}

/// The rate the pass left, and the one it found.
fn rates(o: &Outcome) -> (u64, u64) {
    let found = o.decision.found.as_ref().unwrap().knobs.pages_to_scan;
    (found, o.decision.pages_to_scan_left().unwrap())
}

#[test]
fn in_the_quiet_phase_of_every_recorded_trace_the_rate_is_never_raised() {
    let mut raised = Vec::new();
    for (name, passes) in traces() {
        for (p, o) in passes.iter().zip(replay(&passes)) {
            let (from, to) = rates(&o);
            if p.phase == "quiet" && to > from {
                raised.push(format!(
                    "{name} t={} s: {from} -> {to} ({})",
                    p.t, o.decision.reason
                ));
            }
        }
    }
    assert!(
        raised.is_empty(),
        "raised while nothing new merged:\n{}",
        raised.join("\n")
    );
}

#[test]
fn while_the_recorded_savings_grow_the_rate_is_raised_the_same_pass() {
    // the first pass of each trace whose savings grew by a lendable amount
    // (past the deadband) since the pass before: the data's second scan
    let deadband = Policy::default().deadband_kib;
    for (name, passes) in traces() {
        let outcomes = replay(&passes);
        let first = passes
            .windows(2)
            .position(|w| w[1].savings_kib >= w[0].savings_kib + deadband)
            .map(|n| n + 1)
            .unwrap_or_else(|| panic!("{name}: the recorded savings never grew"));
        let (from, to) = rates(&outcomes[first]);
        assert!(
            to > from,
            "{name} t={} s: savings {} -> {} KiB, rate {from} -> {to} ({})",
            passes[first].t,
            passes[first - 1].savings_kib,
            passes[first].savings_kib,
            outcomes[first].decision.reason
        );
    }
}

#[test]
fn by_the_end_of_the_quiet_phase_the_rate_is_below_its_peak_while_merging() {
    for (name, passes) in traces() {
        let outcomes = replay(&passes);
        let left = |phase: &str| -> Vec<u64> {
            passes
                .iter()
                .zip(&outcomes)
                .filter(|(p, _)| p.phase == phase)
                .map(|(_, o)| rates(o).1)
                .collect()
        };
        let peak = left("merge").into_iter().max().unwrap();
        let end = *left("quiet").last().unwrap();
        println!(
            "{name}: peak {peak} while merging, {end} at the end of the quiet phase, {} at the end",
            rates(outcomes.last().unwrap()).1
        );
        assert!(
            end * 2 <= peak,
            "{name}: the rate peaked at {peak} while merging and ended the quiet phase at {end}"
        );
    }
}
