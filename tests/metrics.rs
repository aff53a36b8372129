//! The metrics file checked by Prometheus' own tool: `promtool check
//! metrics` (Debian's `prometheus` package; tests/deps.sh installs it) reads
//! the file ksm-balloon writes and must find nothing wrong with it, lint
//! included. Missing promtool is a failure, not a skip.
#![allow(clippy::unwrap_used)]

mod metrics_sample;

use std::io::Write;
use std::process::{Command, Stdio};

use ksm_balloon::metrics;

fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: run tests/deps.sh (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && said.trim().is_empty(), said)
}

#[test]
fn promtool_accepts_the_file_the_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ksm-balloon.prom");
    for n in [0, 1, 12_345] {
        metrics::write(&path, &metrics_sample::sample(n)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let (ok, said) = promtool_check(&text);
        assert!(
            ok,
            "promtool check metrics on generation {n}:\n{said}\n--- file:\n{text}"
        );
    }
}

#[test]
fn promtool_accepts_a_failed_pass_and_no_vms() {
    let input = metrics::MetricsInput::default();
    let (ok, said) = promtool_check(&metrics::render(&input));
    assert!(ok, "{said}");
}

#[test]
fn promtool_catches_what_the_writer_must_not_do() {
    // The check can fail: unescaped quotes, a counter without _total, and a
    // unit that is not a base unit are all reported.
    for bad in [
        "# HELP a_bytes x\n# TYPE a_bytes gauge\na_bytes{domain=\"a\"b\"} 1\n",
        "# HELP ksm_balloon_resizes x\n# TYPE ksm_balloon_resizes counter\nksm_balloon_resizes 1\n",
        "# HELP ksm_balloon_pool_kilobytes x\n# TYPE ksm_balloon_pool_kilobytes gauge\nksm_balloon_pool_kilobytes 1\n",
    ] {
        let (ok, said) = promtool_check(bad);
        assert!(!ok, "promtool accepted {bad:?}: {said}");
    }
}
