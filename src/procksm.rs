//! Per-process KSM figures: `/proc/<pid>/ksm_stat`, and which process is
//! each managed VM's QEMU, from libvirt's pid file checked against `/proc`.
//!
//! Pure parsers ([`parse_ksm_stat`], [`parse_pid_file`], [`parse_proc_stat`],
//! [`parse_cmdline`], [`qemu_domain`], [`check_qemu`]) and thin readers over
//! them ([`read_vm`], [`read_all`]). Every path is under `--root`: the readers
//! take the `/proc` and `/run/libvirt/qemu` directories resolved by the caller
//! ([`ProcPaths::under`]).
//!
//! What the kernel prints (fs/proc/base.c, `proc_pid_ksm_stat`), one field a
//! line, each since the Linux version noted on [`KsmStat`]'s fields. A kernel
//! without a field simply does not print it, so every field is optional here
//! and a missing one is an older kernel, never an error. Nothing here fails a
//! pass: a VM whose figures cannot be had gets a [`Fallback`] that says why,
//! for the caller to log once and leave that VM out of the attribution.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::paths::under_root;

/// One `/proc/<pid>/ksm_stat`, as far as this kernel prints it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KsmStat {
    /// `ksm_rmap_items` (Linux 6.1): rmap items KSM allocated for this
    /// process's scanned pages, merged or not.
    pub rmap_items: Option<u64>,
    /// `ksm_zero_pages` (Linux 6.5): empty pages KSM mapped to the kernel's
    /// zero page (with `use_zero_pages`); each is a whole page saved.
    pub zero_pages: Option<u64>,
    /// `ksm_merging_pages` (in `ksm_stat` since Linux 6.4; its own file
    /// `/proc/<pid>/ksm_merging_pages` since 5.19): how many of this
    /// process's pages map a KSM page, not counting zero pages.
    pub merging_pages: Option<u64>,
    /// `ksm_process_profit` (Linux 6.4), bytes: `(merging + zero) * page
    /// size - rmap_items * sizeof(rmap_item)`; can be negative.
    pub process_profit: Option<i64>,
    /// `ksm_merge_any` (Linux 6.14): KSM enabled for the whole process
    /// (`prctl(PR_SET_MEMORY_MERGE)`).
    pub merge_any: Option<bool>,
    /// `ksm_mergeable` (Linux 6.14): some area of the process is mergeable
    /// now (`madvise(MADV_MERGEABLE)` or merge-any).
    pub mergeable: Option<bool>,
}

impl KsmStat {
    /// True when the file printed nothing: the process has no address
    /// space (a kernel thread, or a process exiting).
    pub fn is_empty(&self) -> bool {
        *self == KsmStat::default()
    }

    /// True when the process holds any KSM page, zero page or rmap item:
    /// the processes worth listing.
    pub fn involved(&self) -> bool {
        self.rmap_items.unwrap_or(0) > 0
            || self.zero_pages.unwrap_or(0) > 0
            || self.merging_pages.unwrap_or(0) > 0
    }
}

/// Parses the text of `/proc/<pid>/ksm_stat`. Lines are `key value` or
/// `key: value`; unknown keys (a newer kernel's) are ignored; an empty text
/// is an empty [`KsmStat`]. The error names the field at fault.
pub fn parse_ksm_stat(text: &str) -> Result<KsmStat, String> {
    let mut s = KsmStat::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k.trim_end_matches(':'), v.trim()),
            None => (line.trim_end_matches(':'), ""),
        };
        let int = || -> Result<i64, String> {
            value
                .parse::<i64>()
                .map_err(|_| format!("{key} holds {value:?}, not a number"))
        };
        // A count the kernel prints signed (%ld) may dip below zero for an
        // instant while ksmd and a fault race; it means none.
        let count = || int().map(|v| u64::try_from(v).unwrap_or(0));
        let flag = || match value {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => Err(format!("{key} holds {value:?}, not yes or no")),
        };
        match key {
            "ksm_rmap_items" => s.rmap_items = Some(count()?),
            "ksm_zero_pages" => s.zero_pages = Some(count()?),
            "ksm_merging_pages" => s.merging_pages = Some(count()?),
            "ksm_process_profit" => s.process_profit = Some(int()?),
            "ksm_merge_any" => s.merge_any = Some(flag()?),
            "ksm_mergeable" => s.mergeable = Some(flag()?),
            _ => {}
        }
    }
    Ok(s)
}

/// Parses a pid file: a decimal pid above 1, optionally with a newline.
pub fn parse_pid_file(text: &str) -> Option<u32> {
    let t = text.trim();
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok().filter(|&p| p > 1)
}

/// What `/proc/<pid>/stat` says about a process instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The command name (field 2, without its parentheses).
    pub comm: String,
    /// The state letter (field 3): `Z` is a zombie, `X` dead.
    pub state: char,
    /// When it started, in clock ticks after boot (field 22): with the pid,
    /// it names one process instance, so a pid reused meanwhile shows.
    pub start_time: u64,
    /// Its parent's pid (field 4): 2, `kthreadd`, for a kernel thread.
    pub ppid: u32,
    /// The CPU time it has used, user and system (fields 14 and 15), in
    /// clock ticks (`USER_HZ`, [`clock_ticks_per_sec`]).
    pub cpu_ticks: u64,
}

/// The unit of `/proc/<pid>/stat`'s times: `USER_HZ` (100 on x86 and
/// arm64), as `sysconf(_SC_CLK_TCK)` says.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// Parses `/proc/<pid>/stat`. The command name may hold spaces and
/// parentheses, so the fields after it are found from its last `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state), so field N is rest[N - 3].
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    let state = rest.first()?.chars().next()?;
    Some(ProcStat {
        comm,
        state,
        start_time: field(22)?,
        ppid: u32::try_from(field(4)?).ok()?,
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
    })
}

/// Splits `/proc/<pid>/cmdline` (arguments ended by NUL bytes).
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The domain a QEMU command line says it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QemuDomain {
    /// From `-name guest=NAME,...` (or the older `-name NAME`).
    pub name: Option<String>,
    /// From `-uuid UUID`.
    pub uuid: Option<String>,
}

/// Splits a QEMU option string at its commas, a doubled comma standing for
/// a comma inside a value (how libvirt writes a domain name with commas).
fn qemu_opts(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' && chars.peek() == Some(&',') {
            chars.next();
            cur.push(',');
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Reads `-name` and `-uuid` off a QEMU command line. Both `-opt value`
/// and `--opt value` count, as QEMU takes either.
pub fn qemu_domain(args: &[String]) -> QemuDomain {
    let mut d = QemuDomain::default();
    let mut i = 1;
    while i < args.len() {
        let opt = args[i]
            .strip_prefix('-')
            .map(|o| o.strip_prefix('-').unwrap_or(o));
        let value = args.get(i + 1);
        match (opt, value) {
            (Some("name"), Some(v)) => {
                d.name = qemu_opts(v).into_iter().enumerate().find_map(|(k, o)| {
                    match o.split_once('=') {
                        Some(("guest", n)) => Some(n.to_string()),
                        // The first field may be the bare name.
                        None if k == 0 => Some(o),
                        _ => None,
                    }
                });
                i += 2;
            }
            (Some("uuid"), Some(v)) => {
                d.uuid = Some(v.to_ascii_lowercase());
                i += 2;
            }
            _ => i += 1,
        }
    }
    d
}

/// Why a VM's per-process figures could not be had. Never fails a pass:
/// the caller logs it and leaves the VM out of the attribution.
#[derive(Debug, thiserror::Error)]
pub enum Fallback {
    /// libvirt's pid file is absent: the VM is not running under this
    /// libvirtd (or not yet, or libvirt keeps its runtime files elsewhere).
    #[error("no QEMU pid file {}", .path.display())]
    NoPidFile {
        /// The file looked for.
        path: PathBuf,
    },
    /// The pid file holds something other than a pid.
    #[error("QEMU pid file {} holds {:?}, not a pid", .path.display(), .text)]
    BadPidFile {
        /// The file.
        path: PathBuf,
        /// What it held (cut short).
        text: String,
    },
    /// No live process has that pid (a stale pid file).
    #[error("pid {pid} from {} is not a live process (stale pid file)", .path.display())]
    PidGone {
        /// The pid.
        pid: u32,
        /// The pid file.
        path: PathBuf,
    },
    /// The pid belongs to a process that is not QEMU (a reused pid).
    #[error("pid {pid} from {} is {comm:?}, not QEMU (stale pid file, pid reused)", .path.display())]
    NotQemu {
        /// The pid.
        pid: u32,
        /// The pid file.
        path: PathBuf,
        /// The process's command name.
        comm: String,
    },
    /// The pid is a QEMU running another domain (or one that says none).
    #[error("pid {pid} from {} runs domain {found:?}, not {want:?} (stale pid file)", .path.display())]
    OtherDomain {
        /// The pid.
        pid: u32,
        /// The pid file.
        path: PathBuf,
        /// The domain asked for.
        want: String,
        /// What its command line names (None: no `-name`).
        found: Option<String>,
    },
    /// The QEMU of that name runs another UUID: the name was reused by a
    /// domain this record is not about.
    #[error("pid {pid} runs {name:?} with UUID {found}, not {want}")]
    OtherUuid {
        /// The pid.
        pid: u32,
        /// The domain name.
        name: String,
        /// The UUID asked for.
        want: String,
        /// The one on its command line.
        found: String,
    },
    /// The process changed under the reader (it exited, and perhaps its pid
    /// went to another process, between two reads).
    #[error("pid {pid} changed while its figures were read")]
    Raced {
        /// The pid.
        pid: u32,
    },
    /// No `/proc/<pid>/ksm_stat` with `ksm_merging_pages`, nor the older
    /// `/proc/<pid>/ksm_merging_pages`: a kernel before 5.19 (or one built
    /// without KSM) when no process has them.
    #[error("no per-process KSM figures: {} missing or without ksm_merging_pages (Linux 6.1 has the file, 6.4 prints ksm_merging_pages in it)", .path.display())]
    NoPerProcessKsm {
        /// The file looked for.
        path: PathBuf,
    },
    /// A file exists but could not be read (permissions, or the process
    /// went away mid-read).
    #[error("cannot read {}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file held something this reader does not understand.
    #[error("{}: {what}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Where the per-process readers look, resolved under `--root`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcPaths {
    /// `<root>/proc`.
    pub proc_dir: PathBuf,
    /// `<root>/run/libvirt/qemu`: libvirt's `<name>.pid` files (the qemu
    /// driver's system instance).
    pub qemu_run_dir: PathBuf,
}

impl ProcPaths {
    /// The host's paths under `root` (`/` on a real host).
    pub fn under(root: &Path) -> ProcPaths {
        ProcPaths {
            proc_dir: under_root(root, Path::new("/proc")),
            qemu_run_dir: under_root(root, Path::new("/run/libvirt/qemu")),
        }
    }
}

/// A VM's QEMU process and its figures, read once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmProcess {
    /// QEMU's pid.
    pub pid: u32,
    /// Its `ksm_stat` (with `ksm_merging_pages` from the separate file on
    /// kernels 5.19-6.3, whose `ksm_stat` lacks it).
    pub stat: KsmStat,
}

/// Checks that a process is QEMU running domain `name` (and `uuid`, when
/// the caller knows it). `path` only names the pid file in errors.
pub fn check_qemu(
    path: &Path,
    pid: u32,
    stat: &ProcStat,
    args: &[String],
    name: &str,
    uuid: Option<&str>,
) -> Result<(), Fallback> {
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return Err(Fallback::PidGone {
            pid,
            path: path.to_path_buf(),
        });
    }
    let exe = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or("");
    if !exe.starts_with("qemu") && !stat.comm.starts_with("qemu") {
        return Err(Fallback::NotQemu {
            pid,
            path: path.to_path_buf(),
            comm: stat.comm.clone(),
        });
    }
    let d = qemu_domain(args);
    if d.name.as_deref() != Some(name) {
        return Err(Fallback::OtherDomain {
            pid,
            path: path.to_path_buf(),
            want: name.to_string(),
            found: d.name,
        });
    }
    if let (Some(want), Some(found)) = (uuid, d.uuid) {
        if !want.eq_ignore_ascii_case(&found) {
            return Err(Fallback::OtherUuid {
                pid,
                name: name.to_string(),
                want: want.to_string(),
                found,
            });
        }
    }
    Ok(())
}

fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, Fallback> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Fallback::Unreadable {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_stat_file(path: &Path, pid: u32) -> Result<Option<ProcStat>, Fallback> {
    match read_bytes(path)? {
        None => Ok(None),
        Some(b) => match parse_proc_stat(&String::from_utf8_lossy(&b)) {
            Some(s) => Ok(Some(s)),
            None => Err(Fallback::Malformed {
                path: path.to_path_buf(),
                what: format!("pid {pid}: not a stat line"),
            }),
        },
    }
}

/// Reads one process's `ksm_stat`; `Ok(None)` when the file is absent.
/// Where `ksm_stat` lacks `ksm_merging_pages` (Linux 6.1-6.3), the separate
/// `/proc/<pid>/ksm_merging_pages` (5.19) fills it in.
pub fn read_ksm_stat(proc_dir: &Path, pid: u32) -> Result<Option<KsmStat>, Fallback> {
    let dir = proc_dir.join(pid.to_string());
    let path = dir.join("ksm_stat");
    let file = read_bytes(&path)?;
    let mut stat = match &file {
        Some(b) => parse_ksm_stat(&String::from_utf8_lossy(b))
            .map_err(|what| Fallback::Malformed { path, what })?,
        None => KsmStat::default(),
    };
    if stat.merging_pages.is_none() {
        let path = dir.join("ksm_merging_pages");
        match read_bytes(&path)? {
            Some(b) => {
                let text = String::from_utf8_lossy(&b);
                let t = text.trim();
                // Empty: the process has no address space.
                if !t.is_empty() {
                    stat.merging_pages = Some(t.parse().map_err(|_| Fallback::Malformed {
                        path,
                        what: format!("holds {t:?}, not a number"),
                    })?);
                }
            }
            None if file.is_none() => return Ok(None),
            None => {}
        }
    }
    Ok(Some(stat))
}

/// Finds domain `name`'s QEMU through libvirt's pid file and reads its
/// figures. The pid is trusted only when it is a live process, that process
/// is QEMU, and its command line names this domain (and `uuid`, when
/// given); `/proc/<pid>/stat` is read before and after, and a changed start
/// time (the process exited, its pid reused) discards the figures.
pub fn read_vm(paths: &ProcPaths, name: &str, uuid: Option<&str>) -> Result<VmProcess, Fallback> {
    let (pid, dir, before) = live_qemu(paths, name, uuid)?;
    let stat = read_ksm_stat(&paths.proc_dir, pid)?;
    let after = read_stat_file(&dir.join("stat"), pid)?;
    if after.map(|a| a.start_time) != Some(before.start_time) {
        return Err(Fallback::Raced { pid });
    }
    match stat {
        Some(stat) if stat.merging_pages.is_some() => Ok(VmProcess { pid, stat }),
        _ => Err(Fallback::NoPerProcessKsm {
            path: dir.join("ksm_stat"),
        }),
    }
}

/// The pid in domain `name`'s pid file, trusted only once
/// [`check_qemu`] says it is this domain's live QEMU; with its
/// `/proc/<pid>` directory and its stat as read for that check.
fn live_qemu(
    paths: &ProcPaths,
    name: &str,
    uuid: Option<&str>,
) -> Result<(u32, PathBuf, ProcStat), Fallback> {
    let pid_path = paths.qemu_run_dir.join(format!("{name}.pid"));
    let text = match read_bytes(&pid_path)? {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => return Err(Fallback::NoPidFile { path: pid_path }),
    };
    let pid = parse_pid_file(&text).ok_or_else(|| Fallback::BadPidFile {
        path: pid_path.clone(),
        text: text.chars().take(40).collect(),
    })?;
    let dir = paths.proc_dir.join(pid.to_string());
    let gone = || Fallback::PidGone {
        pid,
        path: pid_path.clone(),
    };
    let stat = read_stat_file(&dir.join("stat"), pid)?.ok_or_else(gone)?;
    let args = parse_cmdline(&read_bytes(&dir.join("cmdline"))?.ok_or_else(gone)?);
    check_qemu(&pid_path, pid, &stat, &args, name, uuid)?;
    Ok((pid, dir, stat))
}

/// Parses `/proc/uptime`: seconds since boot (its first field).
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|u: &f64| u.is_finite() && *u >= 0.0)
}

/// How long domain `name`'s QEMU has been running, whole seconds: its
/// start time in `/proc/<pid>/stat` (clock ticks after boot) against
/// `/proc/uptime`. The pid is trusted as by [`read_vm`] (live, QEMU, this
/// domain); a process started less than a second ago is 0 s old.
pub fn qemu_age_secs(paths: &ProcPaths, name: &str, uuid: Option<&str>) -> Result<u64, Fallback> {
    let (_, _, stat) = live_qemu(paths, name, uuid)?;
    let uptime_path = paths.proc_dir.join("uptime");
    let uptime = read_bytes(&uptime_path)?
        .and_then(|b| parse_uptime(&String::from_utf8_lossy(&b)))
        .ok_or_else(|| Fallback::Malformed {
            path: uptime_path,
            what: "not seconds since boot".into(),
        })?;
    Ok(age_secs(uptime, stat.start_time, clock_ticks()))
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`).
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// A process's age from the uptime and its start time in `ticks`. Pure.
pub fn age_secs(uptime_secs: f64, start_ticks: u64, ticks: u64) -> u64 {
    let started = start_ticks as f64 / ticks.max(1) as f64;
    (uptime_secs - started).max(0.0) as u64
}

/// Every process's figures, for what processes other than the VMs saved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AllProcesses {
    /// Processes involved with KSM (any rmap item, KSM page or zero page),
    /// by pid, ascending.
    pub processes: Vec<(u32, KsmStat)>,
    /// Processes whose figures could not be read (exited mid-walk, or
    /// unreadable): left out.
    pub skipped: usize,
}

impl AllProcesses {
    /// The processes whose pid is not in `pids` (the VMs').
    pub fn others<'a>(&'a self, pids: &'a BTreeSet<u32>) -> impl Iterator<Item = &'a KsmStat> {
        self.processes
            .iter()
            .filter(move |(p, _)| !pids.contains(p))
            .map(|(_, s)| s)
    }
}

/// Reads `ksm_stat` of every process under `proc_dir`. A process that
/// exits mid-walk or cannot be read is skipped and counted; a kernel with no
/// per-process file at all, or an unreadable `/proc`, is a [`Fallback`].
pub fn read_all(proc_dir: &Path) -> Result<AllProcesses, Fallback> {
    let entries = std::fs::read_dir(proc_dir).map_err(|source| Fallback::Unreadable {
        path: proc_dir.to_path_buf(),
        source,
    })?;
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    pids.sort_unstable();
    let mut out = AllProcesses::default();
    let mut seen_file = false;
    for pid in pids {
        match read_ksm_stat(proc_dir, pid) {
            Ok(Some(s)) => {
                seen_file = true;
                if s.involved() {
                    out.processes.push((pid, s));
                }
            }
            // Absent: the process exited between the listing and the read,
            // or this kernel has no such file (decided below).
            Ok(None) => {}
            Err(_) => {
                seen_file = true;
                out.skipped += 1;
            }
        }
    }
    if !seen_file {
        return Err(Fallback::NoPerProcessKsm {
            path: proc_dir.join("<pid>/ksm_stat"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qemus_age_from_its_start_time_and_the_uptime() {
        assert_eq!(parse_uptime("12345.67 40000.00\n"), Some(12345.67));
        assert_eq!(parse_uptime("x"), None);
        assert_eq!(parse_uptime("-1 0"), None);
        // started 1000.00 s after boot (100 ticks a second), now 1012.5 s
        assert_eq!(age_secs(1012.5, 100_000, 100), 12);
        // a clock that reads a start after now: 0, never negative
        assert_eq!(age_secs(999.0, 100_000, 100), 0);
    }

    // Copied from this machine (Linux 6.18) while a madvise'd process ran.
    const KSM_STAT_6_18: &str = "ksm_rmap_items 4096\nksm_zero_pages 0\nksm_merging_pages 4096\nksm_process_profit 16515072\nksm_merge_any: no\nksm_mergeable: yes\n";

    #[test]
    fn ksm_stat_of_a_current_kernel() {
        let s = parse_ksm_stat(KSM_STAT_6_18).unwrap();
        assert_eq!(
            s,
            KsmStat {
                rmap_items: Some(4096),
                zero_pages: Some(0),
                merging_pages: Some(4096),
                process_profit: Some(16515072),
                merge_any: Some(false),
                mergeable: Some(true),
            }
        );
        assert!(s.involved() && !s.is_empty());
    }

    #[test]
    fn ksm_stat_of_older_kernels_lacks_fields() {
        // 6.1-6.3: only the rmap items.
        let s = parse_ksm_stat("ksm_rmap_items 12\n").unwrap();
        assert_eq!(s.rmap_items, Some(12));
        assert_eq!(s.merging_pages, None);
        assert_eq!(s.process_profit, None);
        // 6.4: no zero pages, no flags.
        let s = parse_ksm_stat("ksm_rmap_items 5\nksm_merging_pages 3\nksm_process_profit -8\n")
            .unwrap();
        assert_eq!(s.zero_pages, None);
        assert_eq!(s.process_profit, Some(-8));
        assert_eq!(s.merge_any, None);
    }

    #[test]
    fn ksm_stat_empty_is_no_address_space() {
        let s = parse_ksm_stat("").unwrap();
        assert!(s.is_empty() && !s.involved());
    }

    #[test]
    fn ksm_stat_ignores_unknown_fields_and_clamps_negative_counts() {
        let s = parse_ksm_stat("ksm_pages_sharing 7\nksm_zero_pages -1\nksm_merging_pages 2\n")
            .unwrap();
        assert_eq!(s.zero_pages, Some(0));
        assert_eq!(s.merging_pages, Some(2));
    }

    #[test]
    fn ksm_stat_errors_name_the_field() {
        let e = parse_ksm_stat("ksm_merging_pages lots\n").unwrap_err();
        assert!(e.contains("ksm_merging_pages") && e.contains("lots"), "{e}");
        let e = parse_ksm_stat("ksm_merge_any: maybe\n").unwrap_err();
        assert!(e.contains("ksm_merge_any"), "{e}");
        let e = parse_ksm_stat("ksm_rmap_items\n").unwrap_err();
        assert!(e.contains("ksm_rmap_items"), "{e}");
    }

    #[test]
    fn pid_files() {
        assert_eq!(parse_pid_file("4242\n"), Some(4242));
        assert_eq!(parse_pid_file("4242"), Some(4242));
        assert_eq!(parse_pid_file(""), None);
        assert_eq!(parse_pid_file("0\n"), None);
        assert_eq!(parse_pid_file("1\n"), None);
        assert_eq!(parse_pid_file("-5\n"), None);
        assert_eq!(parse_pid_file("12 34\n"), None);
        assert_eq!(parse_pid_file("99999999999\n"), None);
    }

    #[test]
    fn proc_stat_with_awkward_comm() {
        let text = "4242 (qemu-system-x86) S 1 4241 4241 0 -1 4194624 1 0 0 0 10 5 0 0 20 0 5 0 987654 300000000 50000 ...";
        let s = parse_proc_stat(text).unwrap();
        assert_eq!(s.comm, "qemu-system-x86");
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_time, 987654);
        assert_eq!((s.ppid, s.cpu_ticks), (1, 15));
        // ksmd on this machine's 6.18 kernel: a kernel thread (parent
        // kthreadd), all of its time system time
        let text = "39 (ksmd) S 2 0 0 0 -1 2097216 36 0 0 0 0 111766 0 0 25 5 1 0 28 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0";
        let s = parse_proc_stat(text).unwrap();
        assert_eq!(
            (s.comm.as_str(), s.ppid, s.cpu_ticks, s.start_time),
            ("ksmd", 2, 111766, 28)
        );
        let text = "77 (a) b (c)) Z 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        let s = parse_proc_stat(text).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.state, 'Z');
        assert_eq!(s.start_time, 55);
        assert_eq!(parse_proc_stat("77 (x) S 1"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    fn args(s: &str) -> Vec<String> {
        parse_cmdline(s.replace(' ', "\0").as_bytes())
    }

    #[test]
    fn cmdline_splits_at_nul() {
        assert_eq!(parse_cmdline(b"a\0b c\0\0d\0"), vec!["a", "b c", "", "d"]);
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn domain_from_libvirt_style_command_line() {
        let a = args("/usr/bin/qemu-system-x86_64 -name guest=kbrs-g1,debug-threads=on -S -uuid 0F6C2D2E-1111-2222-3333-444455556666 -m 256");
        let d = qemu_domain(&a);
        assert_eq!(d.name.as_deref(), Some("kbrs-g1"));
        assert_eq!(
            d.uuid.as_deref(),
            Some("0f6c2d2e-1111-2222-3333-444455556666")
        );
    }

    #[test]
    fn domain_name_with_commas_and_older_forms() {
        let d = qemu_domain(&args("qemu -name guest=a,,b,debug-threads=on"));
        assert_eq!(d.name.as_deref(), Some("a,b"));
        let d = qemu_domain(&args("qemu --name plain"));
        assert_eq!(d.name.as_deref(), Some("plain"));
        let d = qemu_domain(&args("qemu -name process=x,guest=late"));
        assert_eq!(d.name.as_deref(), Some("late"));
        assert_eq!(qemu_domain(&args("qemu -m 1")), QemuDomain::default());
        // A trailing -name without a value names nothing.
        assert_eq!(qemu_domain(&args("qemu -name")).name, None);
    }

    fn st(comm: &str, state: char) -> ProcStat {
        ProcStat {
            comm: comm.into(),
            state,
            start_time: 1,
            ppid: 1,
            cpu_ticks: 0,
        }
    }

    #[test]
    fn check_qemu_accepts_only_the_domain_s_live_qemu() {
        let p = Path::new("/run/libvirt/qemu/vm1.pid");
        let a = args("/usr/bin/qemu-system-x86_64 -name guest=vm1 -uuid aa-bb");
        check_qemu(p, 9, &st("qemu-system-x86", 'S'), &a, "vm1", None).unwrap();
        check_qemu(p, 9, &st("qemu-system-x86", 'R'), &a, "vm1", Some("AA-BB")).unwrap();
        let e = check_qemu(p, 9, &st("qemu-system-x86", 'Z'), &a, "vm1", None).unwrap_err();
        assert!(matches!(e, Fallback::PidGone { pid: 9, .. }), "{e}");
        let bash = args("/bin/bash -c sleep");
        let e = check_qemu(p, 9, &st("bash", 'S'), &bash, "vm1", None).unwrap_err();
        assert!(matches!(e, Fallback::NotQemu { .. }), "{e}");
        assert!(e.to_string().contains("bash") && e.to_string().contains("vm1.pid"));
        let e = check_qemu(p, 9, &st("qemu-system-x86", 'S'), &a, "vm2", None).unwrap_err();
        assert!(matches!(e, Fallback::OtherDomain { .. }), "{e}");
        let e = check_qemu(p, 9, &st("qemu-system-x86", 'S'), &a, "vm1", Some("cc")).unwrap_err();
        assert!(matches!(e, Fallback::OtherUuid { .. }), "{e}");
        // A wrapper-named binary still counts when the kernel's comm says QEMU.
        let kvm = args("/usr/bin/kvm -name guest=vm1");
        check_qemu(p, 9, &st("qemu-kvm", 'S'), &kvm, "vm1", None).unwrap();
    }
}
