//! The Grafana dashboard (contrib/grafana/ksm-balloon.json) against the
//! metrics file: the JSON parses, every query names only metrics the writer
//! really writes (taken from the writer's own output, not from a list), every
//! metric written is plotted somewhere, and every query is valid PromQL as
//! Prometheus' own parser (`promtool check rules`) reads it.
#![allow(clippy::unwrap_used)]

mod metrics_sample;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn dashboard() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/ksm-balloon.json");
    let text = std::fs::read_to_string(&p).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every metric family the writer writes, from its output.
fn written() -> BTreeSet<String> {
    let text = ksm_balloon::metrics::render(&metrics_sample::sample(1));
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// The PromQL of every panel query and every query variable, with
/// Grafana's variables replaced by what Prometheus would see.
fn queries(d: &Value) -> Vec<(String, String)> {
    fn panels(v: &Value, out: &mut Vec<(String, String)>) {
        for p in v.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                out.push((title.clone(), expr.to_string()));
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        // label_values(SELECTOR, LABEL) is Grafana's; the selector is PromQL.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(sel, _)| sel.to_string())
            .unwrap_or_else(|| panic!("variable {}: unexpected query {q:?}", v["name"]));
        out.push((format!("variable {}", v["name"]), inner));
    }
    out.into_iter()
        .map(|(t, e)| {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
                .replace("$domain", ".*");
            (t, e)
        })
        .collect()
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ksm_balloon_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_parses_and_has_panels_per_host_and_per_vm() {
    let d = dashboard();
    assert_eq!(d["uid"], "ksm-balloon");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "instance", "domain"]);
    let q = queries(&d);
    assert!(q.len() >= 10, "{q:?}");
    // Per host and per VM: every panel query selects by host, and the VM
    // panels by domain too.
    for (title, expr) in &q {
        assert!(
            expr.contains("instance=~\".*\"") || title.starts_with("variable"),
            "{title}: {expr}"
        );
    }
    assert!(q.iter().any(|(_, e)| e.contains("domain=~\".*\"")));
}

#[test]
fn every_query_names_metrics_the_writer_writes_and_every_metric_is_plotted() {
    let written = written();
    let mut used = BTreeSet::new();
    for (title, expr) in queries(&dashboard()) {
        let names = metric_names(&expr);
        assert!(
            !names.is_empty(),
            "{title}: {expr} names no ksm_balloon_ metric"
        );
        for n in names {
            assert!(
                written.contains(&n),
                "{title}: {n} is not written (written: {written:?})"
            );
            used.insert(n);
        }
    }
    let unplotted: Vec<_> = written.difference(&used).collect();
    assert!(
        unplotted.is_empty(),
        "written but on no panel: {unplotted:?}"
    );
}

#[test]
fn every_query_is_valid_promql() {
    // promtool parses the expressions of a rules file with Prometheus' own
    // parser; Debian's prometheus package ships it (tests/deps.sh).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries(&dashboard()).iter().enumerate() {
        yaml += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        );
    }
    std::fs::write(&path, &yaml).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool is missing: run tests/deps.sh (Debian package prometheus)");
    assert!(
        out.status.success(),
        "{}{}\n{yaml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the check can fail.
    std::fs::write(&path, "groups:\n  - name: x\n    rules:\n      - record: x:y\n        expr: \"rate(ksm_balloon_resizes_total[5m]\"\n").unwrap();
    assert!(!Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap()
        .status
        .success());
}
