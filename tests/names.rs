//! Domain names with spaces, quotes, backslashes, XML metacharacters,
//! unicode and 200 characters: stored exactly in the state, shown in the
//! status and plan tables and in `status --json`, and logged unambiguously
//! (quoted and escaped, one line per event) by passes and by the hook.
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_invariants, report, resizes, Dom, Expect, Fixture};

fn odd_names() -> Vec<String> {
    let long: String = "ж".repeat(100) + &"x".repeat(100);
    assert_eq!(long.chars().count(), 200);
    vec![
        "web 2 \"quoted\"".into(),
        "it's a 'vm'".into(),
        "back\\slash and \\\"both\\\"".into(),
        "a&b <c> d".into(),
        "ünïcödé 名前 🚀".into(),
        "  leading and trailing  ".into(),
        "a\ttab".into(),
        long,
    ]
}

#[test]
fn odd_names_are_stored_shown_and_logged() {
    let names = odd_names();
    let listed: Vec<Dom> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Dom {
            name: n.clone(),
            ..Dom::numbered("n", i as u32)
        })
        .collect();
    // the same names once more as hook-only VMs (starting, not listed)
    let hooked: Vec<Dom> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Dom {
            name: format!("{n} (hook)"),
            ..Dom::numbered("h", 100 + i as u32)
        })
        .collect();
    let fx = Fixture::new(&listed);
    let mut logs = Vec::new();
    for d in &hooked {
        let out = fx.hook(d, "prepare");
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let r = report(&out.stdout);
    // What the pass did is in its report: it folded every hook's record and
    // adopted every listed VM by its exact name. The log is checked only
    // for how it writes the names: the pass that folds the hooks' records
    // names each VM it recorded, quoted.
    assert_eq!(r["hook_records"], hooked.len(), "{}", out.stdout);
    for d in &listed {
        let v = r["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == d.name.as_str())
            .unwrap_or_else(|| panic!("{:?} not in the report: {}", d.name, out.stdout));
        assert_eq!(v["adopted"], true, "{:?}: {v}", d.name);
    }
    for d in &hooked {
        assert!(
            out.stderr.contains(&format!("recorded VM {:?}", d.name)),
            "{}",
            out.stderr
        );
    }
    // every listed VM grew, and the report names it exactly
    let resized: Vec<String> = resizes(&r).into_iter().map(|l| l.name).collect();
    for d in &listed {
        assert!(
            resized.contains(&d.name),
            "{:?} not in {resized:?}\n{}",
            d.name,
            out.stderr
        );
        assert!(out.stderr.contains(&format!("adopted VM {:?}", d.name)));
    }
    logs.push(out.stdout);
    // stored exactly
    let state = fx.state();
    for d in listed.iter().chain(&hooked) {
        assert_eq!(state.vms[&d.uuid].name, d.name);
    }
    // shown: the tables hold each name as it is (control characters
    // escaped, so a name cannot repaint the terminal), JSON exactly
    let status = fx.run(&["status"]);
    let plan = fx.run(&["plan"]);
    for d in &listed {
        let shown = ksm_balloon::render::cell(&d.name);
        assert!(shown.chars().all(|c| !c.is_control()));
        assert!(
            status.stdout.contains(&shown),
            "{shown:?} not in\n{}",
            status.stdout
        );
        assert!(
            plan.stdout.contains(&shown),
            "{shown:?} not in\n{}",
            plan.stdout
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&fx.run(&["status", "--json"]).stdout).unwrap();
    let shown: Vec<&str> = json["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for d in &listed {
        assert!(
            shown.contains(&d.name.as_str()),
            "{:?} not in {shown:?}",
            d.name
        );
    }
    // forgotten by name at stop
    for d in &hooked {
        assert_eq!(fx.hook(d, "stopped").code, Some(0));
    }
    let out = fx.run(&["run", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // folded (the invariants below: every one forgotten), each named in the log
    assert_eq!(
        report(&out.stdout)["hook_records"],
        hooked.len(),
        "{}",
        out.stdout
    );
    for d in &hooked {
        assert!(
            out.stderr.contains(&format!("forgot VM {:?}", d.name)),
            "{}",
            out.stderr
        );
    }
    logs.push(out.stdout);
    assert_invariants(
        &fx.state_path(),
        &Expect {
            present: listed,
            absent: hooked,
            live_uri: Some(fx.uri()),
            ..Expect::default()
        },
        &logs,
    );
}

#[test]
fn hook_log_lines_quote_the_names_they_are_given() {
    // The hook's own arguments are logged too (by the hook, and by the pass
    // that folds its record): a name (or operation) with a newline must not
    // start a second, forged log line.
    let fx = Fixture::new(&[]);
    let forged = "vm\n[2026-01-01T00:00:00Z ERROR] forged line";
    let no_forged_line = |what: &str, log: &str| {
        assert!(
            !log.lines().any(|l| l.contains("forged")
                && !l.contains("WARN")
                && !l.contains("INFO")
                && !l.contains("DEBUG")),
            "{what}: a forged log line:\n{log}"
        );
    };
    for (args, stdin) in [
        (vec![forged, "prepare", "begin", "-"], ""),
        (vec!["vm", "frob\n[x ERROR] forged op", "begin", "-"], ""),
        (vec![forged, "start", "begin", "-"], "<domain"),
        (vec![forged, "stopped", "end", "-"], "<domain"),
    ] {
        let out = fx.hook_raw(&args, stdin.as_bytes());
        assert_eq!(out.code, Some(0));
        no_forged_line(&format!("hook {args:?}"), &out.stderr);
        let out = fx.run(&["run"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        no_forged_line(&format!("pass after {args:?}"), &out.stderr);
        if args[1] != "prepare" && !args[1].starts_with("frob") {
            assert!(out.stderr.contains("hook \"vm\\n[2026"), "{}", out.stderr);
        }
    }
}
