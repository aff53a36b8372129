//! The Prometheus textfile: what a pass saw and did, in the text exposition
//! format, for node_exporter's textfile collector.
//!
//! [`render`] is pure: a [`MetricsInput`] of plain figures in, the file's
//! text out. [`write()`] is the edge: the text goes to a temporary file in the
//! same directory, is synced, and is renamed over the old file, so a scrape
//! reads the old file or the new one, never half of one. The temporary name
//! does not end in `.prom`, so the collector never reads it.
//!
//! Names follow Prometheus' conventions: the `ksm_balloon_` prefix, base
//! units (`_bytes`, `_seconds`), `_total` for counters, `_info` for a
//! label-carrying constant. Sizes are in KiB inside ksm-balloon and in bytes
//! here. Samples carry no timestamps (the textfile collector refuses them).

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ksm::{KsmCounters, Metric};

/// The savings by one metric.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavingsFigure {
    /// The metric's name as `--metric` takes it: `profit`, `sharing`, `shared`.
    pub metric: String,
    /// The savings by it, KiB.
    pub kib: u64,
}

/// The host's figures of one pass. Sizes in KiB.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostFigures {
    /// The savings by every metric the kernel provides ([`savings_by_metric`]).
    pub savings: Vec<SavingsFigure>,
    /// The metric the pool is taken from (`auto` resolved).
    pub metric_in_use: String,
    /// Savings × share.
    pub pool_kib: u64,
    /// What is handed out after the host guard.
    pub budget_kib: u64,
    /// The host's reserve of MemAvailable.
    pub reserve_kib: u64,
    /// The host's MemAvailable.
    pub available_kib: u64,
    /// What the VMs hold above their floors after the pass: the savings
    /// lent.
    #[serde(default)]
    pub lent_kib: u64,
    /// ksmd's CPU time since boot, seconds (`None`: ksmd not found).
    #[serde(default)]
    pub ksmd_cpu_seconds: Option<f64>,
    /// ksmd's CPU since the last pass, a fraction of one core.
    #[serde(default)]
    pub ksmd_cpu_ratio: Option<f64>,
    /// `pages_scanned`, where the kernel has it.
    #[serde(default)]
    pub ksm_pages_scanned: Option<u64>,
    /// `full_scans`.
    #[serde(default)]
    pub ksm_full_scans: u64,
    /// The KSM governor has KSM's knobs (`--ksm manage`, not stepped back).
    #[serde(default)]
    pub ksm_managed: bool,
    /// `--ksm manage` stepped back for another writer.
    #[serde(default)]
    pub ksm_stepped_back: bool,
    /// `pages_to_scan` as the pass left it, where it could be read.
    #[serde(default)]
    pub ksm_pages_to_scan: Option<u64>,
}

/// One VM's figures of one pass. Sizes in KiB.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFigures {
    /// The domain's name (any characters libvirt allows; escaped here).
    pub name: String,
    /// The domain's UUID.
    pub uuid: String,
    /// Never shrunk below.
    pub floor_kib: u64,
    /// Never grown past.
    pub ceiling_kib: u64,
    /// The balloon's size as the pass found it.
    pub current_kib: u64,
    /// The pass's target.
    pub target_kib: u64,
    /// The target above the floor: its part of the pool.
    pub bonus_kib: u64,
    /// Set by someone else and left alone (the manual-change detector).
    pub held: bool,
}

/// Counters kept across passes (in the state file: the binary is stateless).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Balloon resizes that succeeded, ever.
    #[serde(default)]
    pub resizes: u64,
    /// Balloon resizes that failed (VM vanished or refused), ever.
    #[serde(default)]
    pub resize_failures: u64,
    /// When the last successful pass ended (seconds since the epoch).
    #[serde(default)]
    pub last_success_at: Option<u64>,
}

/// The pass itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PassFigures {
    /// When it ran (seconds since the epoch).
    pub at: u64,
    /// How long it took, seconds.
    pub duration_seconds: f64,
    /// Whether it succeeded.
    pub success: bool,
}

/// Everything the file says.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsInput {
    /// The host; None when the pass failed before reading it.
    pub host: Option<HostFigures>,
    /// Every VM the pass looked at.
    pub vms: Vec<VmFigures>,
    /// Counters across passes.
    pub counters: Counters,
    /// The pass.
    pub pass: PassFigures,
}

/// The savings by each metric the kernel provides (`profit` needs Linux
/// 6.4's `general_profit`).
pub fn savings_by_metric(ksm: &KsmCounters) -> Vec<SavingsFigure> {
    [Metric::Profit, Metric::Sharing, Metric::Shared]
        .into_iter()
        .filter_map(|m| {
            ksm.savings(m, Path::new("")).ok().map(|s| SavingsFigure {
                metric: m.to_string(),
                kib: s.kib,
            })
        })
        .collect()
}

/// Escapes a label value as the text format requires: backslash, double
/// quote and line feed.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: integers as integers, floats in Go's spelling of the
/// special values.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn bytes(kib: u64) -> String {
    (u128::from(kib) * 1024).to_string()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gauge,
    Counter,
}

/// One metric family: its HELP and TYPE lines and its samples, written
/// together as the format requires.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: Kind, help: &str) -> Self {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        // HELP text escapes backslash and line feed only.
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

/// The per-VM gauges: name, help, and the figure.
type VmGauge = (&'static str, &'static str, fn(&VmFigures) -> String);

const VM_GAUGES: [VmGauge; 6] = [
    (
        "ksm_balloon_vm_floor_bytes",
        "Size the VM is never shrunk below.",
        |v| bytes(v.floor_kib),
    ),
    (
        "ksm_balloon_vm_ceiling_bytes",
        "Size the VM is never grown past.",
        |v| bytes(v.ceiling_kib),
    ),
    (
        "ksm_balloon_vm_current_bytes",
        "Balloon size the pass found.",
        |v| bytes(v.current_kib),
    ),
    (
        "ksm_balloon_vm_target_bytes",
        "Balloon size the pass aimed at.",
        |v| bytes(v.target_kib),
    ),
    (
        "ksm_balloon_vm_bonus_bytes",
        "Target above the floor: the VM's part of the pool.",
        |v| bytes(v.bonus_kib),
    ),
    (
        "ksm_balloon_vm_held",
        "1 if the balloon was set by someone else and is left alone.",
        |v| u8::from(v.held).to_string(),
    ),
];

/// The file's text.
pub fn render(input: &MetricsInput) -> String {
    let mut out = String::new();
    let p = &input.pass;
    Family::new(
        &mut out,
        "ksm_balloon_pass_success",
        Kind::Gauge,
        "1 if the last pass succeeded, 0 if it failed.",
    )
    .sample(
        "ksm_balloon_pass_success",
        &[],
        if p.success { "1" } else { "0" },
    );
    Family::new(
        &mut out,
        "ksm_balloon_pass_duration_seconds",
        Kind::Gauge,
        "How long the last pass took.",
    )
    .sample(
        "ksm_balloon_pass_duration_seconds",
        &[],
        &float(p.duration_seconds),
    );
    Family::new(
        &mut out,
        "ksm_balloon_pass_timestamp_seconds",
        Kind::Gauge,
        "When the last pass ran, seconds since the epoch.",
    )
    .sample("ksm_balloon_pass_timestamp_seconds", &[], &p.at.to_string());
    let c = &input.counters;
    if let Some(at) = c.last_success_at {
        Family::new(
            &mut out,
            "ksm_balloon_last_success_timestamp_seconds",
            Kind::Gauge,
            "When the last successful pass ran, seconds since the epoch.",
        )
        .sample(
            "ksm_balloon_last_success_timestamp_seconds",
            &[],
            &at.to_string(),
        );
    }
    for (name, help, v) in [
        (
            "ksm_balloon_resizes_total",
            "Balloon resizes made.",
            c.resizes,
        ),
        (
            "ksm_balloon_resize_failures_total",
            "Balloon resizes that failed (the VM vanished or refused).",
            c.resize_failures,
        ),
    ] {
        Family::new(&mut out, name, Kind::Counter, help).sample(name, &[], &v.to_string());
    }

    if let Some(h) = &input.host {
        host_families(&mut out, h);
    }

    for (name, help, value) in VM_GAUGES {
        let mut f = Family::new(&mut out, name, Kind::Gauge, help);
        for v in &input.vms {
            f.sample(name, &[("domain", &v.name), ("uuid", &v.uuid)], &value(v));
        }
    }
    out
}

/// The host's families: the savings by each metric, the metric in use, the
/// pool, the budget, the reserve and MemAvailable.
fn host_families(out: &mut String, h: &HostFigures) {
    let name = "ksm_balloon_savings_bytes";
    let mut f = Family::new(
        out,
        name,
        Kind::Gauge,
        "What KSM saved, by each metric: profit (general_profit), sharing (pages_sharing + ksm_zero_pages), shared (pages_shared).",
    );
    for s in &h.savings {
        f.sample(name, &[("metric", &s.metric)], &bytes(s.kib));
    }
    let name = "ksm_balloon_savings_metric_info";
    Family::new(
        out,
        name,
        Kind::Gauge,
        "The metric the pool is taken from (value always 1).",
    )
    .sample(name, &[("metric", &h.metric_in_use)], "1");
    for (name, help, kib) in [
        (
            "ksm_balloon_pool_bytes",
            "Savings times the share: what may be handed out.",
            h.pool_kib,
        ),
        (
            "ksm_balloon_budget_bytes",
            "What is handed out after the host guard.",
            h.budget_kib,
        ),
        (
            "ksm_balloon_reserve_bytes",
            "Host MemAvailable kept free.",
            h.reserve_kib,
        ),
        (
            "ksm_balloon_host_memory_available_bytes",
            "Host MemAvailable as the pass read it.",
            h.available_kib,
        ),
        (
            "ksm_balloon_lent_bytes",
            "What the VMs hold above their floors after the pass: the savings lent.",
            h.lent_kib,
        ),
    ] {
        Family::new(out, name, Kind::Gauge, help).sample(name, &[], &bytes(kib));
    }
    ksm_cost_families(out, h);
    ksm_governor_families(out, h);
}

/// The KSM governor (`--ksm`): whether it has KSM's knobs, whether it
/// stepped back for another writer, and the scan rate.
fn ksm_governor_families(out: &mut String, h: &HostFigures) {
    for (name, help, on) in [
        (
            "ksm_balloon_ksm_managed",
            "1 while ksm-balloon has KSM's knobs (--ksm manage, not stepped back), else 0.",
            h.ksm_managed,
        ),
        (
            "ksm_balloon_ksm_stepped_back",
            "1 when --ksm manage stepped back for another writer of KSM's knobs, else 0.",
            h.ksm_stepped_back,
        ),
    ] {
        Family::new(out, name, Kind::Gauge, help).sample(name, &[], if on { "1" } else { "0" });
    }
    if let Some(p) = h.ksm_pages_to_scan {
        let name = "ksm_balloon_ksm_pages_to_scan";
        Family::new(
            out,
            name,
            Kind::Gauge,
            "KSM's pages_to_scan as the pass left it: pages ksmd scans per wake-up.",
        )
        .sample(name, &[], &p.to_string());
    }
}

/// What KSM's scanning costs: ksmd's CPU time and the kernel's scan
/// counters (totals since boot: `rate()` them), ksmd's CPU over the last
/// interval, and the savings per ksmd CPU-second.
fn ksm_cost_families(out: &mut String, h: &HostFigures) {
    if let Some(s) = h.ksmd_cpu_seconds {
        let name = "ksm_balloon_ksmd_cpu_seconds_total";
        Family::new(
            out,
            name,
            Kind::Counter,
            "CPU time ksmd has used since boot.",
        )
        .sample(name, &[], &float(s));
    }
    if let Some(n) = h.ksm_pages_scanned {
        let name = "ksm_balloon_ksm_pages_scanned_total";
        Family::new(
            out,
            name,
            Kind::Counter,
            "Pages ksmd has scanned since boot (pages_scanned).",
        )
        .sample(name, &[], &n.to_string());
    }
    let name = "ksm_balloon_ksm_full_scans_total";
    Family::new(
        out,
        name,
        Kind::Counter,
        "Full scans ksmd has completed since boot (full_scans).",
    )
    .sample(name, &[], &h.ksm_full_scans.to_string());
    if let Some(r) = h.ksmd_cpu_ratio {
        let name = "ksm_balloon_ksmd_cpu_ratio";
        Family::new(
            out,
            name,
            Kind::Gauge,
            "ksmd's CPU since the last pass, a fraction of one core.",
        )
        .sample(name, &[], &float(r));
        if r > 0.0 {
            let name = "ksm_balloon_savings_per_ksmd_cpu_bytes";
            let profit = h
                .savings
                .iter()
                .find(|s| s.metric == h.metric_in_use)
                .map_or(0, |s| s.kib);
            Family::new(
                out,
                name,
                Kind::Gauge,
                "The savings (the metric in use) per ksmd CPU-second spent each second: bytes kept merged per core ksmd keeps busy.",
            )
            .sample(name, &[], &float(profit as f64 * 1024.0 / r));
        }
    }
}

/// Why the file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The path has no file name (a directory, or `/`).
    #[error("metrics file {} has no file name", .0.display())]
    NoFileName(PathBuf),
    /// Writing, syncing or renaming failed.
    #[error("cannot write the metrics file {}", .path.display())]
    Write {
        /// The file (or its temporary) at fault.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Writes `text` to `path` atomically: a temporary file beside it (mode
/// 0644: node_exporter runs as another user), synced, then renamed over
/// `path`. A temporary left by a killed writer of the same pid is replaced;
/// a symbolic link planted at the temporary path is never followed.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), MetricsError> {
    let name = path
        .file_name()
        .ok_or_else(|| MetricsError::NoFileName(path.to_path_buf()))?;
    // A leading dot and no .prom ending: the textfile collector reads only
    // *.prom, so it never sees a file still being written.
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MetricsError::Write { path: p, source }
    };
    let open = || -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
    };
    let mut file = match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).map_err(err(&tmp))?;
            open()
        }
        other => other,
    }
    .map_err(err(&tmp))?;
    let result = (|| -> io::Result<()> {
        // The umask may have taken bits away from the mode asked for.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(MetricsError::Write {
            path: path.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

/// Renders `input` and writes it to `path` atomically.
pub fn write(path: &Path, input: &MetricsInput) -> Result<(), MetricsError> {
    write_atomically(path, &render(input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn small() -> MetricsInput {
        MetricsInput {
            host: Some(HostFigures {
                savings: vec![
                    SavingsFigure {
                        metric: "profit".into(),
                        kib: 65_000,
                    },
                    SavingsFigure {
                        metric: "sharing".into(),
                        kib: 70_000,
                    },
                ],
                metric_in_use: "profit".into(),
                pool_kib: 65_000,
                budget_kib: 60_000,
                reserve_kib: 100_000,
                available_kib: 2_000_000,
                lent_kib: 60_000,
                ksmd_cpu_seconds: Some(1117.66),
                ksmd_cpu_ratio: Some(0.25),
                ksm_pages_scanned: Some(745_532_482),
                ksm_full_scans: 39,
                ksm_managed: true,
                ksm_stepped_back: false,
                ksm_pages_to_scan: Some(400),
            }),
            vms: vec![VmFigures {
                name: "web\"1\"\\a\nb".into(),
                uuid: "6695eb01-f6a4-8304-79aa-97f2502e193f".into(),
                floor_kib: 163_840,
                ceiling_kib: 262_144,
                current_kib: 163_840,
                target_kib: 223_840,
                bonus_kib: 60_000,
                held: false,
            }],
            counters: Counters {
                resizes: 7,
                resize_failures: 1,
                last_success_at: Some(1_700_000_000),
            },
            pass: PassFigures {
                at: 1_700_000_010,
                duration_seconds: 0.0125,
                success: true,
            },
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("plain-name_1.x"), "plain-name_1.x");
        assert_eq!(escape_label_value("a\\b"), "a\\\\b");
        assert_eq!(escape_label_value("say \"hi\""), "say \\\"hi\\\"");
        assert_eq!(escape_label_value("two\nlines"), "two\\nlines");
        // Only those three: tabs, carriage returns and other characters are
        // written as they are (the format allows any UTF-8).
        assert_eq!(escape_label_value("t\tr\ré{}=,"), "t\tr\ré{}=,");
        assert_eq!(escape_label_value("\\\"\n"), "\\\\\\\"\\n");
    }

    #[test]
    fn the_whole_file() {
        let want = r#"# HELP ksm_balloon_pass_success 1 if the last pass succeeded, 0 if it failed.
# TYPE ksm_balloon_pass_success gauge
ksm_balloon_pass_success 1
# HELP ksm_balloon_pass_duration_seconds How long the last pass took.
# TYPE ksm_balloon_pass_duration_seconds gauge
ksm_balloon_pass_duration_seconds 0.0125
# HELP ksm_balloon_pass_timestamp_seconds When the last pass ran, seconds since the epoch.
# TYPE ksm_balloon_pass_timestamp_seconds gauge
ksm_balloon_pass_timestamp_seconds 1700000010
# HELP ksm_balloon_last_success_timestamp_seconds When the last successful pass ran, seconds since the epoch.
# TYPE ksm_balloon_last_success_timestamp_seconds gauge
ksm_balloon_last_success_timestamp_seconds 1700000000
# HELP ksm_balloon_resizes_total Balloon resizes made.
# TYPE ksm_balloon_resizes_total counter
ksm_balloon_resizes_total 7
# HELP ksm_balloon_resize_failures_total Balloon resizes that failed (the VM vanished or refused).
# TYPE ksm_balloon_resize_failures_total counter
ksm_balloon_resize_failures_total 1
# HELP ksm_balloon_savings_bytes What KSM saved, by each metric: profit (general_profit), sharing (pages_sharing + ksm_zero_pages), shared (pages_shared).
# TYPE ksm_balloon_savings_bytes gauge
ksm_balloon_savings_bytes{metric="profit"} 66560000
ksm_balloon_savings_bytes{metric="sharing"} 71680000
# HELP ksm_balloon_savings_metric_info The metric the pool is taken from (value always 1).
# TYPE ksm_balloon_savings_metric_info gauge
ksm_balloon_savings_metric_info{metric="profit"} 1
# HELP ksm_balloon_pool_bytes Savings times the share: what may be handed out.
# TYPE ksm_balloon_pool_bytes gauge
ksm_balloon_pool_bytes 66560000
# HELP ksm_balloon_budget_bytes What is handed out after the host guard.
# TYPE ksm_balloon_budget_bytes gauge
ksm_balloon_budget_bytes 61440000
# HELP ksm_balloon_reserve_bytes Host MemAvailable kept free.
# TYPE ksm_balloon_reserve_bytes gauge
ksm_balloon_reserve_bytes 102400000
# HELP ksm_balloon_host_memory_available_bytes Host MemAvailable as the pass read it.
# TYPE ksm_balloon_host_memory_available_bytes gauge
ksm_balloon_host_memory_available_bytes 2048000000
# HELP ksm_balloon_lent_bytes What the VMs hold above their floors after the pass: the savings lent.
# TYPE ksm_balloon_lent_bytes gauge
ksm_balloon_lent_bytes 61440000
# HELP ksm_balloon_ksmd_cpu_seconds_total CPU time ksmd has used since boot.
# TYPE ksm_balloon_ksmd_cpu_seconds_total counter
ksm_balloon_ksmd_cpu_seconds_total 1117.66
# HELP ksm_balloon_ksm_pages_scanned_total Pages ksmd has scanned since boot (pages_scanned).
# TYPE ksm_balloon_ksm_pages_scanned_total counter
ksm_balloon_ksm_pages_scanned_total 745532482
# HELP ksm_balloon_ksm_full_scans_total Full scans ksmd has completed since boot (full_scans).
# TYPE ksm_balloon_ksm_full_scans_total counter
ksm_balloon_ksm_full_scans_total 39
# HELP ksm_balloon_ksmd_cpu_ratio ksmd's CPU since the last pass, a fraction of one core.
# TYPE ksm_balloon_ksmd_cpu_ratio gauge
ksm_balloon_ksmd_cpu_ratio 0.25
# HELP ksm_balloon_savings_per_ksmd_cpu_bytes The savings (the metric in use) per ksmd CPU-second spent each second: bytes kept merged per core ksmd keeps busy.
# TYPE ksm_balloon_savings_per_ksmd_cpu_bytes gauge
ksm_balloon_savings_per_ksmd_cpu_bytes 266240000
# HELP ksm_balloon_ksm_managed 1 while ksm-balloon has KSM's knobs (--ksm manage, not stepped back), else 0.
# TYPE ksm_balloon_ksm_managed gauge
ksm_balloon_ksm_managed 1
# HELP ksm_balloon_ksm_stepped_back 1 when --ksm manage stepped back for another writer of KSM's knobs, else 0.
# TYPE ksm_balloon_ksm_stepped_back gauge
ksm_balloon_ksm_stepped_back 0
# HELP ksm_balloon_ksm_pages_to_scan KSM's pages_to_scan as the pass left it: pages ksmd scans per wake-up.
# TYPE ksm_balloon_ksm_pages_to_scan gauge
ksm_balloon_ksm_pages_to_scan 400
# HELP ksm_balloon_vm_floor_bytes Size the VM is never shrunk below.
# TYPE ksm_balloon_vm_floor_bytes gauge
ksm_balloon_vm_floor_bytes{domain="web\"1\"\\a\nb",uuid="6695eb01-f6a4-8304-79aa-97f2502e193f"} 167772160
# HELP ksm_balloon_vm_ceiling_bytes Size the VM is never grown past.
# TYPE ksm_balloon_vm_ceiling_bytes gauge
ksm_balloon_vm_ceiling_bytes{domain="web\"1\"\\a\nb",uuid="6695eb01-f6a4-8304-79aa-97f2502e193f"} 268435456
# HELP ksm_balloon_vm_current_bytes Balloon size the pass found.
# TYPE ksm_balloon_vm_current_bytes gauge
ksm_balloon_vm_current_bytes{domain="web\"1\"\\a\nb",uuid="6695eb01-f6a4-8304-79aa-97f2502e193f"} 167772160
# HELP ksm_balloon_vm_target_bytes Balloon size the pass aimed at.
# TYPE ksm_balloon_vm_target_bytes gauge
ksm_balloon_vm_target_bytes{domain="web\"1\"\\a\nb",uuid="6695eb01-f6a4-8304-79aa-97f2502e193f"} 229212160
# HELP ksm_balloon_vm_bonus_bytes Target above the floor: the VM's part of the pool.
# TYPE ksm_balloon_vm_bonus_bytes gauge
ksm_balloon_vm_bonus_bytes{domain="web\"1\"\\a\nb",uuid="6695eb01-f6a4-8304-79aa-97f2502e193f"} 61440000
# HELP ksm_balloon_vm_held 1 if the balloon was set by someone else and is left alone.
# TYPE ksm_balloon_vm_held gauge
ksm_balloon_vm_held{domain="web\"1\"\\a\nb",uuid="6695eb01-f6a4-8304-79aa-97f2502e193f"} 0
"#;
        let got = render(&small());
        if got != want {
            for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
                assert_eq!(g, w, "line {}", i + 1);
            }
            assert_eq!(got.lines().count(), want.lines().count());
        }
    }

    #[test]
    fn a_failed_pass_still_says_so() {
        // No host figures, no VMs: the pass gauges, the counters and the
        // (empty) per-VM families, so a dashboard sees the failure.
        let input = MetricsInput {
            pass: PassFigures {
                at: 5,
                duration_seconds: 0.5,
                success: false,
            },
            ..MetricsInput::default()
        };
        let text = render(&input);
        assert!(text.contains("\nksm_balloon_pass_success 0\n"));
        assert!(!text.contains("ksm_balloon_last_success_timestamp_seconds"));
        assert!(!text.contains("ksm_balloon_pool_bytes"));
        assert!(text.contains("# TYPE ksm_balloon_vm_target_bytes gauge\n"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn floats_and_big_sizes() {
        assert_eq!(float(0.0), "0");
        assert_eq!(float(1.5), "1.5");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        // u64::MAX KiB in bytes does not fit a u64: written exactly anyway.
        assert_eq!(bytes(u64::MAX), "18889465931478580853760");
    }

    #[test]
    fn savings_by_each_metric_the_kernel_has() {
        let mut k = KsmCounters {
            run: 1,
            pages_shared: 10,
            pages_sharing: 50,
            general_profit: Some(100 * 1024),
            ksm_zero_pages: Some(2),
            page_size: 4096,
            ..KsmCounters::default()
        };
        let names = |v: Vec<SavingsFigure>| -> Vec<(String, u64)> {
            v.into_iter().map(|s| (s.metric, s.kib)).collect()
        };
        assert_eq!(
            names(savings_by_metric(&k)),
            [
                ("profit".to_string(), 100),
                ("sharing".to_string(), 52 * 4),
                ("shared".to_string(), 40)
            ]
        );
        // An older kernel: no general_profit, so no profit series.
        k.general_profit = None;
        assert_eq!(savings_by_metric(&k).len(), 2);
    }

    #[test]
    fn written_atomically_with_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ksm-balloon.prom");
        write(&path, &small()).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), render(&small()));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // Rewritten: the new text replaces the old, nothing left beside it.
        write_atomically(&path, "x 1\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "x 1\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["ksm-balloon.prom"]);
    }

    #[test]
    fn a_stale_temporary_is_replaced_and_a_planted_link_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let tmp = dir
            .path()
            .join(format!(".m.prom.{}.tmp", std::process::id()));
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        write_atomically(&path, "a 1\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 1\n");
        assert!(fs::symlink_metadata(&tmp).is_err());
    }

    /// The pass logs a metrics failure with its causes
    /// ([`crate::errors::chain`]); the message also held its source, so
    /// the log said "No such file or directory (os error 2)" twice.
    #[test]
    fn a_metrics_write_failure_prints_its_cause_once_regression() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("m.prom");
        let e = write_atomically(&path, "a 1\n").unwrap_err();
        let tmp = dir
            .path()
            .join("missing-dir")
            .join(format!(".m.prom.{}.tmp", std::process::id()));
        assert_eq!(
            crate::errors::chain(&e),
            format!(
                "cannot write the metrics file {}: No such file or directory (os error 2)",
                tmp.display()
            )
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("m.prom");
        let e = write_atomically(&path, "a 1\n").unwrap_err();
        assert!(e.to_string().contains("missing-dir"), "{e}");
        assert!(matches!(e, MetricsError::Write { .. }));
        assert!(matches!(
            write_atomically(Path::new("/"), ""),
            Err(MetricsError::NoFileName(_))
        ));
        // A directory where the file should be: the rename fails, and the
        // temporary is cleaned up.
        let d = dir.path().join("adir.prom");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("x"), "").unwrap();
        assert!(write_atomically(&d, "a 1\n").is_err());
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["adir.prom"]);
    }
}
