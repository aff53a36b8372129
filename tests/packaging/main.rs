//! The packaged documents against the clap definition (src/cli.rs), so they
//! cannot drift from the program:
//! - man/ksm-balloon.8 names every flag and every command, its header carries
//!   the crate's version, and every setting's entry holds the line
//!   `Default: VALUE; environment: VARIABLE.` with clap's default and variable;
//! - packaging/sysconfig (installed as /etc/sysconfig/ksm-balloon) lists every
//!   setting's variable, commented out, at clap's default, and no other;
//! - packaging/ksm-balloon.spec carries the crate's version;
//! - the RPM's `%preun` and the .deb's `prerm` give KSM's knobs back
//!   (`ksm-balloon ksm-restore`) on removal only, never failing it, and the
//!   command they call is one the program has.
//!
//! An integration test (Cargo finds tests/*/main.rs), so it also runs in the
//! RPM's %check against the files in the source tarball.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use ksm_balloon::cli::Cli;

/// The log-level variable is read by main.rs (env_logger), not by clap.
const LOG_VAR: (&str, &str) = ("KSM_BALLOON_LOG", "info");

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A setting as clap defines it.
#[derive(Debug)]
struct Setting {
    long: String,
    env: String,
    default: String,
}

fn settings() -> Vec<Setting> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    for a in cmd.get_arguments() {
        let Some(env) = a.get_env() else { continue };
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        // A setting is either off by default (no default: an optional
        // path) or has exactly one.
        assert!(
            defaults.len() <= 1,
            "setting {:?} has {defaults:?} defaults",
            a.get_id()
        );
        out.push(Setting {
            long: a
                .get_long()
                .expect("every setting has a long flag")
                .to_string(),
            env: env.to_string_lossy().into_owned(),
            default: defaults.first().cloned().unwrap_or_default(),
        });
    }
    assert!(
        out.len() >= 10,
        "only {} settings found in the clap definition",
        out.len()
    );
    out
}

/// Every long flag of the command and its subcommands (help and version too).
fn all_long_flags() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if let Some(l) = a.get_long() {
                out.insert(l.to_string());
            }
        }
        for sub in cmd.get_subcommands() {
            if !sub.is_hide_set() {
                walk(sub, out);
            }
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = BTreeSet::new();
    walk(&cmd, &mut out);
    out
}

/// The roff source reduced to its text: font changes dropped, escapes for
/// the minus sign and quotes resolved.
fn man_text() -> String {
    read("man/ksm-balloon.8")
        .replace("\\-", "-")
        .replace("\\(aq", "'")
        .replace("\\(dq", "\"")
        .replace("\\&", "")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
}

/// The lines of the `.TP` entry whose tag line has the token `--long`.
fn man_entry<'a>(lines: &[&'a str], long: &str) -> Vec<&'a str> {
    let flag = format!("--{long}");
    let tag = lines
        .iter()
        .enumerate()
        .position(|(i, l)| {
            i > 0
                && lines[i - 1] == ".TP"
                && l.starts_with(".B")
                && l.split(|c: char| c.is_whitespace() || c == ',' || c == '"')
                    .any(|t| t == flag)
        })
        .unwrap_or_else(|| panic!("man page: no .TP entry for {flag}"));
    lines[tag..]
        .iter()
        .skip(1)
        .take_while(|l| !(l.starts_with(".TP") || l.starts_with(".SH") || l.starts_with(".SS")))
        .copied()
        .collect()
}

#[test]
fn man_page_names_every_flag() {
    let text = man_text();
    let missing: Vec<_> = all_long_flags()
        .into_iter()
        .filter(|l| !text.contains(&format!("--{l}")))
        .collect();
    assert!(
        missing.is_empty(),
        "flags missing from man/ksm-balloon.8: {missing:?}"
    );
}

#[test]
fn man_page_gives_every_setting_its_variable_and_default() {
    let text = man_text();
    let lines: Vec<&str> = text.lines().collect();
    for s in settings() {
        let want = if s.default.is_empty() {
            format!("Not set by default; environment: {}.", s.env)
        } else {
            format!("Default: {}; environment: {}.", s.default, s.env)
        };
        let entry = man_entry(&lines, &s.long);
        assert!(
            entry.contains(&want.as_str()),
            "man page entry for --{} lacks the line {want:?}; it reads:\n{}",
            s.long,
            entry.join("\n")
        );
    }
    assert!(
        text.contains(LOG_VAR.0),
        "man page does not describe {}",
        LOG_VAR.0
    );
}

#[test]
fn man_page_has_every_command_and_the_version() {
    let text = man_text();
    let lines: Vec<&str> = text.lines().collect();
    for sub in Cli::command().get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        let tag = format!(".B {}", sub.get_name());
        assert!(
            lines.windows(2).any(|w| w[0] == ".TP" && w[1] == tag),
            "man page has no COMMANDS entry for {}",
            sub.get_name()
        );
    }
    let th = lines
        .iter()
        .find(|l| l.starts_with(".TH "))
        .expect(".TH line");
    let want = format!("\"ksm-balloon {}\"", env!("CARGO_PKG_VERSION"));
    assert!(th.contains(&want), "man page header {th:?} lacks {want}");
}

#[test]
fn sysconfig_lists_every_setting_at_its_default() {
    let text = read("packaging/sysconfig");
    let lines: Vec<&str> = text.lines().collect();
    let mut expected: Vec<(String, String)> =
        settings().into_iter().map(|s| (s.env, s.default)).collect();
    expected.push((LOG_VAR.0.to_string(), LOG_VAR.1.to_string()));
    for (env, default) in &expected {
        let want = format!("#{env}={default}");
        let n = lines.iter().filter(|l| **l == want).count();
        assert_eq!(
            n, 1,
            "packaging/sysconfig must hold the line {want:?} once (found {n})"
        );
    }
    // Nothing set (every line is a comment or blank), and no variable the
    // program does not read.
    for l in &lines {
        assert!(
            l.is_empty() || l.starts_with('#'),
            "packaging/sysconfig sets {l:?}: every setting must stay commented at its default"
        );
    }
    let known: BTreeSet<&str> = expected.iter().map(|(e, _)| e.as_str()).collect();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("KSM_BALLOON_") && !word.ends_with('_') {
            assert!(
                known.contains(word),
                "packaging/sysconfig names {word}, which nothing reads"
            );
        }
    }
}

#[test]
fn the_log_variable_default_is_main_rs_own() {
    let main = read("src/main.rs");
    let want = format!("filter_or(\"{}\", \"{}\")", LOG_VAR.0, LOG_VAR.1);
    assert!(
        main.contains(&want),
        "src/main.rs no longer reads {want}: update LOG_VAR, the sysconfig and the man page"
    );
}

#[test]
fn spec_version_is_the_crate_version() {
    let spec = read("packaging/ksm-balloon.spec");
    let version = spec
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .expect("Version: line in the spec")
        .trim();
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "packaging/ksm-balloon.spec Version"
    );
}

/// The lines of the spec's scriptlet `name` (`%preun`), up to the next
/// section.
fn spec_section(spec: &str, name: &str) -> Vec<String> {
    let lines: Vec<&str> = spec.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == name)
        .unwrap_or_else(|| panic!("the spec has no {name}"));
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.starts_with('%') || l.starts_with("%systemd") || l.starts_with("%{"))
        .map(|l| l.to_string())
        .collect()
}

/// Checks a scriptlet's lines: the `ksm-restore` call sits in the block
/// of `guard` (removal, not upgrade) and a failure of it is caught (`||`)
/// and printed, so it never fails the removal.
fn restores_knobs_on_removal_only(what: &str, lines: &[String], guard: &str) {
    let call = lines
        .iter()
        .position(|l| l.contains("/ksm-balloon ksm-restore"))
        .unwrap_or_else(|| panic!("{what} does not run ksm-balloon ksm-restore"));
    let opened = lines[..call]
        .iter()
        .rposition(|l| l.trim_start().starts_with("if "))
        .unwrap_or_else(|| panic!("{what}: ksm-restore is run unconditionally"));
    assert!(
        lines[opened].contains(guard) && !lines[opened..call].iter().any(|l| l.trim() == "fi"),
        "{what}: ksm-restore is not under {guard:?} (removal only): {:?}",
        &lines[opened..=call]
    );
    let tail = lines[call..].join("\n");
    assert!(
        lines[call].trim_end().ends_with("||") || lines[call].trim_end().ends_with("|| \\"),
        "{what}: a failure of ksm-restore would fail the removal: {:?}",
        lines[call]
    );
    assert!(
        tail.contains("echo ") && tail.contains(">&2"),
        "{what}: a failure of ksm-restore is not printed"
    );
}

#[test]
fn uninstalling_gives_ksm_back_to_the_operator_never_on_upgrade() {
    // Issue 21: under --ksm manage, removing the package left KSM as the
    // last pass set it.
    let spec = read("packaging/ksm-balloon.spec");
    let preun = spec_section(&spec, "%preun");
    restores_knobs_on_removal_only("the spec's %preun", &preun, "[ $1 -eq 0 ]");
    // after the units are stopped: no pass starts after the restore
    let stop = preun
        .iter()
        .position(|l| l.starts_with("%systemd_preun"))
        .expect("%systemd_preun in %preun");
    let call = preun
        .iter()
        .position(|l| l.contains("/ksm-balloon ksm-restore"))
        .unwrap();
    assert!(stop < call, "%preun restores KSM before it stops the timer");
    let prerm = read("debian/ksm-balloon.prerm");
    let lines: Vec<String> = prerm.lines().map(String::from).collect();
    restores_knobs_on_removal_only("debian/ksm-balloon.prerm", &lines, "[ \"$1\" = remove ]");
    let debhelper = lines.iter().position(|l| l == "#DEBHELPER#").unwrap();
    let call = lines
        .iter()
        .position(|l| l.contains("/ksm-balloon ksm-restore"))
        .unwrap();
    assert!(
        debhelper < call,
        "prerm restores KSM before debhelper's snippet stops the units"
    );
    // and the command is the program's own
    assert!(Cli::command()
        .get_subcommands()
        .any(|c| c.get_name() == "ksm-restore"));
}
