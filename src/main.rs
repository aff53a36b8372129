//! The ksm-balloon binary: parse the command line into a mode, dispatch,
//! print the whole error chain. Exit codes: 0 done, 1 runtime failure,
//! 2 bad usage.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use ksm_balloon::cli::{Cli, Command, Config};
use ksm_balloon::hypervisor::{self, Hypervisor, Libvirt};
use ksm_balloon::{hook, pass, render};

fn init_logging() {
    let env = env_logger::Env::default()
        .filter_or("KSM_BALLOON_LOG", "info")
        .write_style("KSM_BALLOON_LOG_STYLE");
    let mut b = env_logger::Builder::from_env(env);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // journald stamps the time itself.
        b.format(|f, rec| writeln!(f, "<{}>{}", syslog_level(rec.level()), rec.args()));
    } else {
        b.format_timestamp_secs().format_target(false);
    }
    b.init();
}

/// Sets, from the settings file (`KSM_BALLOON_CONFIG`, default
/// [`ksm_balloon::sysconfig::DEFAULT_PATH`]), each `KSM_BALLOON_*` variable
/// the environment leaves unset ([`ksm_balloon::sysconfig::unset_in`]): a
/// command run by hand (`status`, `release`, `run`, ...) then works on the
/// state and settings the service does, which systemd gives it from the
/// same file (`EnvironmentFile=-`); the hook reads it the same way. Runs
/// before the command line is parsed and before any thread starts. A
/// missing file is no settings, as for systemd; a file that cannot be read
/// or that systemd would refuse is named in the returned line, logged once
/// logging is set up.
fn settings_from_file() -> Option<String> {
    use ksm_balloon::sysconfig;
    let env = |k: &str| std::env::var(k).ok();
    let path = env("KSM_BALLOON_CONFIG")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| sysconfig::DEFAULT_PATH.into());
    let file = match std::fs::read(&path) {
        Ok(bytes) => match sysconfig::parse_bytes(&bytes) {
            Ok(file) => file,
            Err(why) => {
                return Some(format!(
                    "{path}: {why}; systemd ignores the whole file, and so does this command"
                ))
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => return Some(format!("cannot read the settings file {path}: {e}")),
    };
    for (k, v) in sysconfig::unset_in(&file, env) {
        std::env::set_var(k, v);
    }
    None
}

fn syslog_level(l: log::Level) -> u8 {
    match l {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

fn open(cfg: &Config) -> impl FnMut() -> anyhow::Result<Box<dyn Hypervisor>> + '_ {
    move || {
        hypervisor::quiet_libvirt();
        Ok(Box::new(Libvirt::open(&cfg.settings.connect)?) as Box<dyn Hypervisor>)
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn json(report: &pass::Report) -> anyhow::Result<()> {
    print(&(serde_json::to_string_pretty(report)? + "\n"))
}

fn run(command: Command, cfg: &Config) -> anyhow::Result<()> {
    match command {
        Command::Run {
            dry_run: false,
            json: j,
        } => {
            let report = pass::run(
                &cfg.paths,
                &cfg.pass,
                cfg.settings.lock_timeout,
                &mut open(cfg),
                pass::Now::system(),
            )?;
            if j {
                json(&report)?;
            }
        }
        Command::Run {
            dry_run: true,
            json: j,
        }
        | Command::Plan { json: j } => {
            let report = pass::dry_run(&cfg.paths, &cfg.pass, &mut open(cfg), pass::Now::system())?;
            if j {
                json(&report)?;
            } else {
                print(&render::plan(&report))?;
            }
        }
        Command::Status { json: j } => {
            let report = pass::dry_run(&cfg.paths, &cfg.pass, &mut open(cfg), pass::Now::system())?;
            if j {
                json(&report)?;
            } else {
                print(&render::status(&report))?;
            }
        }
        Command::Release { vms } => {
            let lines = ksm_balloon::admin::release(
                &cfg.paths,
                cfg.settings.lock_timeout,
                &vms,
                pass::Now::system(),
            )?;
            print(&(lines.join("\n") + "\n"))?;
        }
        Command::Reload { vms } => {
            let lines = ksm_balloon::admin::reload(
                &cfg.paths,
                cfg.settings.lock_timeout,
                &mut open(cfg),
                &vms,
                pass::Now::system(),
            )?;
            print(&(lines.join("\n") + "\n"))?;
        }
        Command::KsmRestore => {
            let line = ksm_balloon::admin::ksm_restore(
                &cfg.paths,
                cfg.settings.lock_timeout,
                pass::Now::system(),
            )?;
            print(&(line + "\n"))?;
        }
        // Refused in main(): the hook's own command lines are answered
        // before clap, and clap gets only those with other settings.
        Command::Hook { .. } => {}
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ksm-balloon", &mut buf);
            print(&String::from_utf8_lossy(&buf))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // The hook is answered before the command line is parsed: it reads only
    // the settings it needs, so a setting only a pass uses (an invalid
    // KSM_BALLOON_RESERVE, say) can never stop a VM from starting.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Flags before or right after `hook` are only --root and --state, and
    // are honoured; any other is refused (exit 2), never ignored.
    match ksm_balloon::cli::hook_command_line(&args) {
        Some(Ok((flags, rest))) => {
            hook::entry_with(&rest, io::stdin().lock(), &flags);
            return ExitCode::SUCCESS;
        }
        Some(Err(why)) => {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            eprintln!("error: {why}");
            return ExitCode::from(2);
        }
        None => {}
    }
    // A command run by hand sees the settings file as the service does.
    let settings_problem = settings_from_file();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Command::Hook { .. } = cli.command {
        // Settings other than --root and --state given for the hook
        // (hook_command_line() took every other hook command line):
        // refused, not ignored.
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        eprintln!(
            "error: the hook takes no setting on the command line but --root and --state; the others come from the settings file and the environment"
        );
        return ExitCode::from(2);
    }
    init_logging();
    if let Some(why) = settings_problem {
        log::warn!("{why}");
    }
    let cfg = match cli.settings.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cli.command, &cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}
