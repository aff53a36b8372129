//! The invariants checker (tests/common/mod.rs `check`) is itself tested
//! here: each invariant, broken on purpose, must be reported. Also holds the
//! entry point the shell scenarios use to run the same checker against a
//! real host (`check_from_env`, ignored unless asked for by name).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{check, report, resizes, Dom, Expect, Fixture};
use ksm_balloon::state::{Source, State, VmRecord};

fn record(d: &Dom) -> VmRecord {
    VmRecord::new(
        d.name.clone(),
        d.uuid.clone(),
        d.current_kib,
        d.memory_kib,
        true,
        Source::Hook,
        1,
    )
}

fn write(fx: &Fixture, s: &State) {
    fs::create_dir_all(fx.state_dir()).unwrap();
    fs::write(fx.state_path(), s.to_json()).unwrap();
}

fn violations(fx: &Fixture, e: &Expect, reports: &[&str]) -> String {
    let reports: Vec<String> = reports.iter().map(|s| s.to_string()).collect();
    match check(&fx.state_path(), e, &reports) {
        Ok(_) => String::new(),
        Err(v) => v,
    }
}

#[test]
fn a_good_state_passes() {
    let a = Dom::numbered("a", 1);
    let fx = Fixture::new(std::slice::from_ref(&a));
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let e = Expect {
        present: vec![a],
        live_uri: Some(fx.uri()),
        ..Expect::default()
    };
    assert_eq!(violations(&fx, &e, &[&out.stdout]), "");
}

#[test]
fn each_broken_invariant_is_reported() {
    let a = Dom::numbered("a", 1);
    let b = Dom::numbered("b", 2);
    let fx = Fixture::new(std::slice::from_ref(&a));
    // unparsable
    fs::create_dir_all(fx.state_dir()).unwrap();
    fs::write(fx.state_path(), "{").unwrap();
    assert!(violations(&fx, &Expect::default(), &[]).contains("does not parse"));
    // a record a load would drop (the file itself still loads)
    let mut s = State::default();
    let mut zero = record(&a);
    zero.floor_kib = 0;
    s.vms.insert(a.uuid.clone(), zero);
    fs::write(fx.state_path(), s.to_json()).unwrap();
    let v = violations(&fx, &Expect::default(), &[]);
    assert!(
        v.contains("impossible record for VM \"a001\": floor is 0"),
        "{v}"
    );
    // a running VM missing, a stopped one present
    let mut s = State::default();
    s.vms.insert(b.uuid.clone(), record(&b));
    write(&fx, &s);
    let e = Expect {
        present: vec![a.clone()],
        absent: vec![b.clone()],
        live_uri: Some(fx.uri()),
        ..Expect::default()
    };
    let v = violations(&fx, &e, &[]);
    assert!(v.contains("\"a001\""), "{v}");
    assert!(v.contains("stopped VM \"b002\""), "{v}");
    assert!(v.contains("active VM \"a001\" is not recorded"), "{v}");
    // wrong floor, duplicate name, a target out of bounds
    let mut s = State::default();
    let mut ra = record(&a);
    ra.floor_kib -= 1;
    ra.last_target_kib = Some(ra.ceiling_kib + 1);
    s.vms.insert(a.uuid.clone(), ra);
    let mut dup = record(&b);
    dup.name = a.name.clone();
    s.vms.insert(b.uuid.clone(), dup);
    write(&fx, &s);
    let e = Expect {
        present: vec![a.clone()],
        maybe: vec![b.clone()],
        ..Expect::default()
    };
    let v = violations(&fx, &e, &[]);
    assert!(v.contains("floor/ceiling"), "{v}");
    assert!(v.contains("recorded 2 times"), "{v}");
    assert!(v.contains("last target"), "{v}");
    // a live balloon out of bounds: record a floor above the driver's size
    let mut s = State::default();
    let mut ra = record(&a);
    ra.floor_kib = a.current_kib + 1024;
    s.vms.insert(a.uuid.clone(), ra);
    write(&fx, &s);
    let e = Expect {
        live_uri: Some(fx.uri()),
        ..Expect::default()
    };
    assert!(violations(&fx, &e, &[]).contains("balloon 163840 KiB outside"));
    // growth under the reserve, a resize out of bounds, a stray temp file
    let mut s = State::default();
    s.vms.insert(a.uuid.clone(), record(&a));
    write(&fx, &s);
    fs::write(fx.state_dir().join("state.json.tmp.123"), "x").unwrap();
    let grew = |from: u64, to: u64, reason: &str| {
        serde_json::json!({
            "under_reserve": true,
            "vms": [{"name": "a001", "action": "grow", "current_kib": from,
                     "target_kib": to, "reason": reason, "error": null}]
        })
        .to_string()
    };
    let v = violations(&fx, &Expect::default(), &[&grew(163_840, 307_200, "share")]);
    assert!(v.contains("under the reserve grew"), "{v}");
    assert!(v.contains("outside [163840, 262144]"), "{v}");
    assert!(v.contains("state.json.tmp.123"), "{v}");
    // a bounds repair up to the floor is allowed under the reserve
    fs::remove_file(fx.state_dir().join("state.json.tmp.123")).unwrap();
    let repair = grew(102_400, 163_840, "out-of-bounds");
    assert_eq!(violations(&fx, &Expect::default(), &[&repair]), "");
    // and something that is not a report is itself a violation: a checker
    // handed log text would otherwise see nothing and pass
    let v = violations(&fx, &Expect::default(), &["[x INFO ] VM \"a001\": 1 -> 2"]);
    assert!(v.contains("not a pass report"), "{v}");
}

#[test]
fn resizes_read_back_from_a_real_report() {
    let name = "we\"ird \\ näme\t";
    let a = Dom {
        name: name.into(),
        ..Dom::numbered("a", 1)
    };
    let fx = Fixture::new(std::slice::from_ref(&a));
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let l = &resizes(&report(&out.stdout))[0];
    assert_eq!(l.name, name);
    assert_eq!(l.from_kib, 163_840);
    assert!(l.to_kib > l.from_kib);
    assert_eq!(
        l.reason, "ceiling",
        "one VM takes the whole pool up to its ceiling"
    );
}

/// The same checker against a real host, for the shell scenarios
/// (tests/reliability/*.sh): KB_CHECK_STATE (the state file), KB_CHECK_URI
/// (every active domain must be recorded, its balloon within bounds),
/// KB_CHECK_PRESENT / KB_CHECK_ABSENT (`name=uuid=floor_kib=ceiling_kib`
/// entries separated by ';'), KB_CHECK_REPORTS (files holding pass reports,
/// `run --json` output, separated by ':').
#[test]
#[ignore = "run by the shell scenarios with KB_CHECK_* set"]
fn check_from_env() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let doms = |k: &str| -> Vec<Dom> {
        var(k)
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|e| {
                let f: Vec<&str> = e.split('=').collect();
                assert_eq!(f.len(), 4, "bad entry {e:?} in {k}");
                Dom {
                    name: f[0].into(),
                    uuid: f[1].into(),
                    current_kib: f[2].parse().unwrap(),
                    memory_kib: f[3].parse().unwrap(),
                    balloon: true,
                }
            })
            .collect()
    };
    let state = std::path::PathBuf::from(var("KB_CHECK_STATE"));
    assert!(state.is_absolute(), "KB_CHECK_STATE must be set");
    let reports: Vec<String> = var("KB_CHECK_REPORTS")
        .split(':')
        .filter(|s| !s.is_empty())
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    let e = Expect {
        present: doms("KB_CHECK_PRESENT"),
        absent: doms("KB_CHECK_ABSENT"),
        live_uri: Some(var("KB_CHECK_URI")).filter(|s| !s.is_empty()),
        allowed_extra_files: var("KB_CHECK_ALLOW")
            .split(':')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        ..Expect::default()
    };
    let s = common::assert_invariants(&state, &e, &reports);
    println!("invariants hold: {} VM(s) recorded", s.vms.len());
}
