//! The command line: modes and settings, every setting also read from a
//! `KSM_BALLOON_*` environment variable so the systemd unit can take them
//! from an `EnvironmentFile`.
//!
//! Two stages, as cloud-hypervisor does it: clap parses each value (and names
//! the flag and value at fault, exit 2), then [`Settings::validate`] resolves
//! paths under `--root` and checks what one flag alone cannot.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::governor::Mode as GovernorMode;
use crate::ksm::Metric;
use crate::pass;
use crate::policy::{Policy, Split};
use crate::units::{parse_size_kib, SizeOrPercent};

/// Hands the memory Linux KSM saves back to libvirt guests through the virtio balloon.
#[derive(Debug, Parser)]
#[command(name = "ksm-balloon", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// Settings shared by every mode.
    #[command(flatten)]
    pub settings: Settings,
    /// The mode.
    #[command(subcommand)]
    pub command: Command,
}

/// The modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One pass: read KSM, work out every VM's target, apply, save state, exit.
    Run {
        /// Print what the pass would do, and why, without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Print the pass's report as JSON on stdout: what it saw and did
        /// (with --dry-run: what it would do).
        #[arg(long)]
        json: bool,
    },
    /// Print what the next pass would do, and why, without changing anything.
    Plan {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show managed VMs, their floors, targets and sizes, and the KSM figures.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hand VMs whose balloon was set by hand back to ksm-balloon.
    ///
    /// A VM whose balloon someone else set (`virsh setmem`) is left alone
    /// until it restarts or is released: its size now becomes where
    /// ksm-balloon starts from.
    Release {
        /// Names (or UUIDs) of the VMs.
        #[arg(required = true)]
        vms: Vec<String>,
    },
    /// Re-read VMs' ksm-balloon metadata from libvirt (after
    /// `virsh metadata --live`); every managed VM when none is named.
    Reload {
        /// Names (or UUIDs) of the VMs.
        vms: Vec<String>,
    },
    /// Give KSM's knobs back as the operator had them before `--ksm manage`
    /// took them over.
    ///
    /// Under the pass lock; writes `run`, `pages_to_scan`,
    /// `sleep_millisecs` (and `advisor_max_cpu`) back while ksm-balloon
    /// holds them, leaves them as
    /// they are if it had stepped back for another writer or another writer
    /// changed one since, and forgets them. Nothing to restore is not an
    /// error. The packages run it when they are uninstalled. Never connects
    /// to libvirt.
    KsmRestore,
    /// The libvirt qemu hook: `hook <domain> <operation> <sub-op> <extra>`, domain XML on stdin.
    ///
    /// Records a VM's floor and ceiling when it starts and forgets it when it
    /// stops. Never connects to libvirt; always exits 0 once its arguments
    /// parse, so it never blocks a VM start. Of the settings it takes only
    /// --root and --state on the command line (before or right after
    /// `hook`); any other is refused (exit 2).
    Hook {
        /// The domain's name.
        domain: String,
        /// The operation (prepare, start, started, stopped, release, reconnect, ...).
        operation: String,
        /// The sub-operation (begin, end, -).
        #[arg(default_value = "-")]
        sub_op: String,
        /// Extra argument (unused by the qemu hook: -).
        #[arg(default_value = "-")]
        extra: String,
    },
    /// Print shell completions for ksm-balloon.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A fraction or a percent (the share of the savings handed out, ksmd's
/// CPU budget), printed as the settings file writes it (`1.0`, not `1`):
/// clap shows a default by its `Display`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Share(pub f64);

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

fn parse_share(s: &str) -> Result<Share, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is not between 0 and 1"));
    }
    Ok(Share(v))
}

/// A size in KiB, printed as the command line takes it: the largest
/// binary suffix that divides it (`4M`, `16M`; a bare number is KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.0;
        match ["T", "G", "M"]
            .iter()
            .zip([1u64 << 30, 1 << 20, 1 << 10])
            .find(|(_, unit)| k > 0 && k % unit == 0)
        {
            Some((suffix, unit)) => write!(f, "{}{suffix}", k / unit),
            None => write!(f, "{k}"),
        }
    }
}

fn parse_size(s: &str) -> Result<Size, String> {
    parse_size_kib(s).map(Size)
}

/// A value parser for one of `all`'s names: clap lists them in the help
/// and the completions, and names the flag and the value at fault.
fn one_of<T: Copy + Send + Sync + 'static>(
    all: &'static [(&'static str, T)],
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(all.iter().map(|(n, _)| *n)).map(move |s| {
        all.iter()
            .find(|(n, _)| *n == s)
            .map_or(all[0].1, |(_, v)| *v)
    })
}

fn parse_max_cpu(s: &str) -> Result<Share, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!(
            "{v} is not a percent of one core above 0, up to 100"
        ));
    }
    Ok(Share(v))
}

fn parse_window(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of seconds"))?;
    if v > 86_400 {
        return Err(format!("{v} is more than a day"));
    }
    Ok(v)
}

fn parse_period(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of seconds"))?;
    if v > 3600 {
        return Err(format!("{v} is more than 3600 seconds"));
    }
    Ok(v)
}

/// A per-pass step limit in KiB; `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("unlimited"),
            Some(k) => write!(f, "{}", Size(k)),
        }
    }
}

fn parse_limit(s: &str) -> Result<Limit, String> {
    match s.trim() {
        "unlimited" | "none" | "off" => Ok(Limit(None)),
        other => match parse_size_kib(other)? {
            0 => Err("0 would stop every change; use 'unlimited' for no limit".into()),
            v => Ok(Limit(Some(v))),
        },
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.0..=3600.0).contains(&v) {
        return Err(format!("{v} is not between 0 and 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Every setting.
#[derive(Clone, Debug, Args)]
pub struct Settings {
    /// libvirt URI to manage.
    #[arg(
        long,
        global = true,
        env = "KSM_BALLOON_CONNECT",
        default_value = "qemu:///system"
    )]
    pub connect: String,

    /// Prefix for every host path read or written (/sys, /proc, the state); for tests.
    #[arg(long, global = true, env = "KSM_BALLOON_ROOT", default_value = "/")]
    pub root: PathBuf,

    /// The state file (under --root); its lock is the same path plus ".lock".
    #[arg(
        long,
        global = true,
        env = "KSM_BALLOON_STATE",
        default_value = crate::sysconfig::DEFAULT_STATE
    )]
    pub state: PathBuf,

    /// Which KSM counter is the savings: profit (general_profit), sharing
    /// (pages_sharing + ksm_zero_pages), shared (pages_shared, the paper's), or
    /// auto (profit where the kernel has it, else sharing).
    #[arg(long, global = true, env = "KSM_BALLOON_METRIC", default_value_t = pass::Settings::DEFAULT.metric, value_parser = one_of(&Metric::ALL))]
    pub metric: Metric,

    /// Fraction of the savings handed out to the VMs, 0 to 1.
    #[arg(long, global = true, env = "KSM_BALLOON_SHARE", default_value_t = Share(Policy::DEFAULT.share), value_parser = parse_share)]
    pub share: Share,

    /// How the pool is divided: equal (the paper), proportional (to each
    /// VM's floor), demand (to its disk reads while its memory is full),
    /// contribution (to what its own pages saved), or contribution-demand
    /// (what its pages saved, scaled by its demand).
    #[arg(long, global = true, env = "KSM_BALLOON_SPLIT", default_value_t = Policy::DEFAULT.split, value_parser = one_of(&Split::ALL))]
    pub split: Split,

    /// Host MemAvailable to keep free: below it nothing grows and bonuses
    /// shrink. A size (512M, 2G) or a percentage of MemTotal (5%).
    #[arg(long, global = true, env = "KSM_BALLOON_RESERVE", default_value_t = pass::Settings::DEFAULT.reserve, value_parser = SizeOrPercent::parse)]
    pub reserve: SizeOrPercent,

    /// Leave a VM alone when its target is this close to its size (a size; bare numbers are KiB).
    #[arg(long, global = true, env = "KSM_BALLOON_DEADBAND", default_value_t = Size(Policy::DEFAULT.deadband_kib), value_parser = parse_size)]
    pub deadband: Size,

    /// Most a VM grows in one pass: a size, or "unlimited" (the paper).
    #[arg(long, global = true, env = "KSM_BALLOON_MAX_GROW", default_value_t = Limit(Policy::DEFAULT.max_grow_kib), value_parser = parse_limit)]
    pub max_grow: Limit,

    /// Most a VM shrinks in one pass while the host is above its reserve:
    /// a size, or "unlimited" (the paper).
    #[arg(long, global = true, env = "KSM_BALLOON_MAX_SHRINK", default_value_t = Limit(Policy::DEFAULT.max_shrink_kib), value_parser = parse_limit)]
    pub max_shrink: Limit,

    /// Under the reserve, most of a VM's applications' memory taken in one
    /// pass: a size, or "unlimited" (the host's whole shortfall at once).
    #[arg(long, global = true, env = "KSM_BALLOON_MAX_SQUEEZE", default_value_t = Limit(Policy::DEFAULT.max_squeeze_kib), value_parser = parse_limit)]
    pub max_squeeze: Limit,

    /// Most a VM without fresh guest statistics gives back in one pass: a
    /// size, or "unlimited" (all of it at once, as the paper would).
    #[arg(long, global = true, env = "KSM_BALLOON_BLIND_STEP", default_value_t = Limit(Policy::DEFAULT.blind_step_kib), value_parser = parse_limit)]
    pub blind_step: Limit,

    /// Seconds between a guest's memory statistics, turned on (live only)
    /// for a managed VM that reports none; 0 leaves guests alone.
    #[arg(long, global = true, env = "KSM_BALLOON_GUEST_STATS_PERIOD", default_value_t = pass::Settings::DEFAULT.guest_stats_period, value_parser = parse_period)]
    pub guest_stats_period: u32,

    /// Lend only the savings that held this long: the smallest the passes
    /// of that window saw (seconds; 0 lends the savings of the moment, as
    /// the paper). A fall is followed at once.
    #[arg(long, global = true, env = "KSM_BALLOON_HOLD_WINDOW", default_value_t = pass::Settings::DEFAULT.hold_window_secs, value_parser = parse_window)]
    pub hold_window: u64,

    /// What ksm-balloon does with KSM's knobs: observe (reads KSM, writes
    /// nothing) or manage (turns KSM on while managed VMs have headroom and
    /// off when none has, and scans only as hard as the savings grow,
    /// within --ksm-max-cpu; steps back if another writer changes a knob;
    /// back to observe restores the knobs it found).
    #[arg(long, global = true, env = "KSM_BALLOON_KSM", default_value_t = pass::Settings::DEFAULT.governor.mode, value_parser = one_of(&GovernorMode::ALL))]
    pub ksm: GovernorMode,

    /// Under --ksm manage, ksmd's CPU budget: percent of one core; over
    /// it, the scan rate is halved, and it is never raised past it (under
    /// the kernel's advisor, it is the advisor's advisor_max_cpu).
    #[arg(long, global = true, env = "KSM_BALLOON_KSM_MAX_CPU", default_value_t = Share(pass::Settings::DEFAULT.governor.max_cpu_percent), value_parser = parse_max_cpu)]
    pub ksm_max_cpu: Share,

    /// A Prometheus text file every pass writes (atomically), e.g. in
    /// node_exporter's textfile-collector directory; none by default.
    #[arg(long, global = true, env = "KSM_BALLOON_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,

    /// Seconds a pass waits for the state lock before giving up (exit 1).
    #[arg(long, global = true, env = "KSM_BALLOON_LOCK_TIMEOUT", default_value = "20", value_parser = parse_seconds)]
    pub lock_timeout: Duration,
}

/// A setting that parsed but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid value '{value}' for '--{flag}': {why}")]
pub struct UsageError {
    /// The flag.
    pub flag: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub why: String,
}

/// Settings resolved and checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// The settings as given.
    pub settings: Settings,
    /// Every path, under `--root`.
    pub paths: pass::Paths,
    /// What a pass needs of the settings.
    pub pass: pass::Settings,
}

pub use crate::paths::under_root;

impl Settings {
    /// The second stage: checks and resolves.
    pub fn validate(self) -> Result<Config, UsageError> {
        if !self.root.is_absolute() {
            return Err(UsageError {
                flag: "root",
                value: self.root.display().to_string(),
                why: "must be an absolute path".into(),
            });
        }
        if !self.root.is_dir() {
            return Err(UsageError {
                flag: "root",
                value: self.root.display().to_string(),
                why: "is not a directory".into(),
            });
        }
        if !self.state.is_absolute() || self.state.file_name().is_none() {
            return Err(UsageError {
                flag: "state",
                value: self.state.display().to_string(),
                why: "must be an absolute path to a file".into(),
            });
        }
        if let Some(m) = &self.metrics_file {
            if !m.is_absolute() || m.file_name().is_none() {
                return Err(UsageError {
                    flag: "metrics-file",
                    value: m.display().to_string(),
                    why: "must be an absolute path to a file".into(),
                });
            }
        }
        if self.connect.trim().is_empty() {
            return Err(UsageError {
                flag: "connect",
                value: self.connect.clone(),
                why: "must be a libvirt URI such as qemu:///system".into(),
            });
        }
        Ok(Config {
            paths: pass::Paths {
                metrics_file: self
                    .metrics_file
                    .as_deref()
                    .map(|m| under_root(&self.root, m)),
                ..pass::Paths::under(&self.root, &self.state)
            },
            pass: pass::Settings {
                metric: self.metric,
                reserve: self.reserve,
                policy: Policy {
                    share: self.share.0,
                    split: self.split,
                    deadband_kib: self.deadband.0,
                    max_grow_kib: self.max_grow.0,
                    max_shrink_kib: self.max_shrink.0,
                    max_squeeze_kib: self.max_squeeze.0,
                    blind_step_kib: self.blind_step.0,
                    // resolved against MemTotal every pass (`reserve`)
                    reserve_kib: 0,
                },
                guest_stats_period: self.guest_stats_period,
                hold_window_secs: self.hold_window,
                governor: crate::governor::Settings {
                    mode: self.ksm,
                    max_cpu_percent: self.ksm_max_cpu.0,
                },
            },
            settings: self,
        })
    }
}

/// The only settings the hook takes on the command line (it reads the
/// rest, like them, from the settings file and the environment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookFlags {
    /// `--root`.
    pub root: Option<String>,
    /// `--state`.
    pub state: Option<String>,
}

/// `ksm-balloon [--root DIR] [--state FILE] hook [--root DIR] [--state
/// FILE] <domain> <operation> ...`: the hook's flags and libvirt's
/// arguments, answered before clap parses anything (so a setting only a
/// pass uses, even an invalid one, never stops the hook). `None` when the
/// command line is not the hook's, or is left to clap (a bare `hook`, or
/// other settings before it: clap parses those, and `main` refuses them
/// for the hook). `Err` (exit 2) names a flag the hook does not take, or
/// a value of `--root` or `--state` it cannot use: a flag that is
/// accepted must be honoured. After `hook`, flags are looked for only
/// before the domain: whatever follows it is libvirt's, verbatim.
pub fn hook_command_line(args: &[String]) -> Option<Result<(HookFlags, Vec<String>), String>> {
    let mut flags = HookFlags::default();
    let mut i = 0;
    // One `--root`/`--state` flag at `args[i]` into `flags`: how many
    // tokens it took, 0 if it is not one.
    let take = |flags: &mut HookFlags, i: usize| -> usize {
        let a = args[i].as_str();
        for (name, slot) in [("--root", &mut flags.root), ("--state", &mut flags.state)] {
            if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                *slot = Some(v.to_string());
                return 1;
            }
            if a == name {
                if let Some(v) = args.get(i + 1) {
                    *slot = Some(v.clone());
                    return 2;
                }
            }
        }
        0
    };
    loop {
        match args.get(i).map(String::as_str) {
            Some("hook") => break,
            Some(_) => match take(&mut flags, i) {
                0 => return None,
                n => i += n,
            },
            None => return None,
        }
    }
    i += 1;
    while let Some(a) = args.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') {
            break;
        }
        if matches!(a.as_str(), "-h" | "--help" | "-V" | "--version") {
            // clap's own: the hook's help
            return None;
        }
        match take(&mut flags, i) {
            0 => {
                return Some(Err(format!(
                    "'{a}' is not a flag the hook takes: it takes only --root and --state"
                )))
            }
            n => i += n,
        }
    }
    if i >= args.len() {
        return None;
    }
    if let Some(r) = &flags.root {
        let p = std::path::Path::new(r);
        if !p.is_absolute() || !p.is_dir() {
            return Some(Err(UsageError {
                flag: "root",
                value: r.clone(),
                why: "must be an absolute path to a directory".into(),
            }
            .to_string()));
        }
    }
    if let Some(s) = &flags.state {
        let p = std::path::Path::new(s);
        if !p.is_absolute() || p.file_name().is_none() {
            return Some(Err(UsageError {
                flag: "state",
                value: s.clone(),
                why: "must be an absolute path to a file".into(),
            }
            .to_string()));
        }
    }
    Some(Ok((flags, args[i..].to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn hook_line(args: &[&str]) -> Option<Result<(HookFlags, Vec<String>), String>> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        hook_command_line(&args)
    }

    #[test]
    fn the_hooks_command_lines() {
        let root = std::env::temp_dir().display().to_string();
        let libvirts = ["vm", "prepare", "begin", "-"].map(String::from).to_vec();
        // as libvirt runs it: everything after `hook` verbatim
        assert_eq!(
            hook_line(&["hook", "vm", "prepare", "begin", "-"]),
            Some(Ok((HookFlags::default(), libvirts.clone())))
        );
        assert_eq!(
            hook_line(&["hook", "vm", "--root", "x"])
                .unwrap()
                .unwrap()
                .1,
            ["vm", "--root", "x"]
        );
        // --root and --state, before or right after `hook`, both spellings
        let want = HookFlags {
            root: Some(root.clone()),
            state: Some("/s/state.json".into()),
        };
        for line in [
            vec!["--root", &root, "--state", "/s/state.json", "hook"],
            vec!["hook", "--root", &root, "--state=/s/state.json"],
            vec![
                "--state=/s/state.json",
                "hook",
                &format!("--root={root}"),
                "--",
            ],
        ] {
            let mut line = line.clone();
            line.extend(["vm", "prepare", "begin", "-"]);
            assert_eq!(
                hook_line(&line),
                Some(Ok((want.clone(), libvirts.clone()))),
                "{line:?}"
            );
        }
        // left to clap: not the hook, a bare hook, other settings before it
        assert_eq!(hook_line(&["run"]), None);
        assert_eq!(hook_line(&["--root", &root, "run"]), None);
        assert_eq!(hook_line(&["hook"]), None);
        assert_eq!(hook_line(&["--share", "1", "hook", "vm", "prepare"]), None);
        assert_eq!(hook_line(&["hook", "--help"]), None);
        assert_eq!(hook_line(&["--root", &root, "hook", "-h"]), None);
        // refused
        for line in [
            vec!["hook", "--share", "1", "vm", "prepare"],
            vec!["hook", "-v", "vm", "prepare"],
            vec!["--root", "relative", "hook", "vm", "prepare"],
            vec!["hook", "--state", "s.json", "vm", "prepare"],
        ] {
            assert!(matches!(hook_line(&line), Some(Err(_))), "{line:?}");
        }
    }

    #[test]
    fn the_split_help_names_every_split_regression() {
        // Issue 22: --help said "equal (the paper) or proportional to each
        // VM's floor" while five splits existed. The sentence itself (not
        // clap's list of possible values) must name each, as a word.
        let cmd = Cli::command();
        let help = cmd
            .get_arguments()
            .find(|a| a.get_id() == "split")
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap();
        let words: Vec<&str> = help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .collect();
        for (name, _) in Split::ALL {
            assert!(words.contains(&name), "--split's help lacks {name}: {help}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_parse() {
        let cli = Cli::try_parse_from(["ksm-balloon", "run"]).unwrap();
        let s = cli.settings;
        assert_eq!(s.connect, "qemu:///system");
        assert_eq!(s.metric, Metric::Auto);
        assert_eq!(s.share, Share(1.0));
        assert_eq!(s.split, Split::Demand);
        assert_eq!(s.reserve, SizeOrPercent::Percent(5.0));
        assert_eq!(s.deadband, Size(4096));
        assert_eq!(s.max_grow, Limit(None));
        assert_eq!(s.max_shrink, Limit(None));
        assert_eq!(s.lock_timeout, Duration::from_secs(20));
        assert_eq!(s.max_squeeze, Limit(None));
        assert_eq!(s.blind_step, Limit(Some(16384)));
        assert_eq!(s.guest_stats_period, 5);
        assert_eq!(s.ksm, GovernorMode::Observe);
        assert_eq!(s.ksm_max_cpu, Share(10.0));
        // the pass gets the same defaults the library has
        let cfg = s.validate().unwrap();
        assert_eq!(cfg.pass, pass::Settings::default());
    }

    #[test]
    fn flags_after_the_mode_and_limits_parse() {
        let cli = Cli::try_parse_from([
            "ksm-balloon",
            "plan",
            "--max-grow",
            "64M",
            "--max-shrink",
            "unlimited",
            "--share",
            "0.5",
        ])
        .unwrap();
        assert_eq!(cli.settings.max_grow, Limit(Some(65536)));
        assert_eq!(cli.settings.share, Share(0.5));
    }

    #[test]
    fn the_ksm_governors_settings_reach_the_pass() {
        let cli = Cli::try_parse_from([
            "ksm-balloon",
            "run",
            "--ksm",
            "manage",
            "--ksm-max-cpu",
            "25",
        ])
        .unwrap();
        let g = cli.settings.validate().unwrap().pass.governor;
        assert_eq!((g.mode, g.max_cpu_percent), (GovernorMode::Manage, 25.0));
        assert!(Cli::try_parse_from(["ksm-balloon", "run", "--ksm", "tune"]).is_err());
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_share("0.5"), Ok(Share(0.5)));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("NaN").is_err());
        assert_eq!(parse_limit("unlimited"), Ok(Limit(None)));
        assert_eq!(parse_limit("64M"), Ok(Limit(Some(65536))));
        assert!(parse_limit("0").is_err());
        assert_eq!(parse_seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_seconds("20s"), Ok(Duration::from_secs(20)));
        assert!(parse_seconds("-1").is_err());
        // a default is shown as its Display, which must parse back
        for (k, text) in [
            (4096, "4M"),
            (16384, "16M"),
            (1536, "1536"),
            (1 << 20, "1G"),
        ] {
            assert_eq!(Size(k).to_string(), text);
            assert_eq!(parse_size(text), Ok(Size(k)));
        }
        assert_eq!(Limit(None).to_string(), "unlimited");
        assert_eq!(parse_max_cpu("25"), Ok(Share(25.0)));
        assert_eq!(parse_max_cpu("2.5%"), Ok(Share(2.5)));
        for bad in ["0", "-1", "101", "NaN", "x"] {
            assert!(parse_max_cpu(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_max_cpu(&Share(10.0).to_string()), Ok(Share(10.0)));
        assert_eq!(Share(1.0).to_string(), "1.0");
    }
}
