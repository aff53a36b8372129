//! The hook's spool: one small JSON file per hook call that matters,
//! dropped into `<state dir>/spool/` by atomic rename, and folded into the
//! state by the next pass, which then removes it.
//!
//! Why a spool and not the state file: the hook runs while libvirtd holds
//! the domain it starts, and a pass's libvirt calls wait for that domain; a
//! hook that waited for the pass's lock would close the cycle. Dropping a
//! file needs no lock, costs well under a millisecond, and a record is
//! never lost or overwritten by a pass's save: the pass removes a record
//! only after the state that holds it is on disk.
//!
//! A record is written to a temporary file in the state directory (outside
//! the spool, so the systemd path unit that watches the spool for files
//! never sees a half-written one) and renamed into the spool. No fsync: the
//! records describe running VMs, which a host crash ends anyway.
//!
//! **Order.** A record's name is `<boot id>-<CLOCK_BOOTTIME ns, 20
//! digits>-<pid>.json`: a clock that only goes forward within a boot, so a
//! wall clock stepped back (NTP, an operator) cannot fold a VM's `stopped`
//! before its `prepare`. Records of an earlier boot (the timer was off
//! across a reboot) fold before this boot's; names of an older build
//! (`<wall-clock ns>-<pid>.json`) before those. See [`list`].
//!
//! **Bounds.** The hook adds no record to a spool that already holds
//! [`MAX_RECORDS`] entries (it logs that it did not, and the VM is adopted
//! by the next pass instead); a pass reads one record at a time and saves
//! the state every [`FOLD_BATCH`] records, oldest first. An entry a pass
//! cannot fold or cannot remove goes to [`quarantine_dir`], outside the
//! spool, so the path unit that watches the spool never starts passes back
//! to back for it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The spool's format version.
pub const SPOOL_VERSION: u32 = 1;

/// The largest record read back (the hook caps the XML at 4 MiB).
pub const MAX_RECORD_BYTES: u64 = 8 << 20;

/// Temporary files of hooks killed mid-write are removed after this long.
pub const STALE_TEMP_SECS: u64 = 60;

/// The most entries the spool holds: the hook adds no record past it. A
/// VM's life is about five records, so this is some 400 VM starts and
/// stops with no pass (the timer off for weeks on a busy host); a domain's
/// XML is typically 5-10 KB, so some 20 MB.
pub const MAX_RECORDS: usize = 2048;

/// A pass saves the state after folding this many records, then removes
/// them: a pass killed in a long drain keeps what it folded, and its
/// memory holds one record at a time.
pub const FOLD_BATCH: usize = 256;

/// How many entries the quarantine keeps; older ones go.
pub const KEEP_QUARANTINED: usize = 64;

const TEMP_PREFIX: &str = ".spool-";

/// The boot id of a host whose `/proc/sys/kernel/random/boot_id` cannot be
/// read.
pub const UNKNOWN_BOOT: &str = "00000000000000000000000000000000";

/// One hook call, as the hook saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    /// The format version ([`SPOOL_VERSION`]).
    pub v: u32,
    /// The domain name libvirt passed as the first argument.
    pub domain: String,
    /// The operation (`prepare`, `start`, `started`, `stopped`, ...).
    pub operation: String,
    /// The sub-operation (`begin`, `end`, `-`).
    pub sub_op: String,
    /// When the hook ran (seconds since the epoch).
    pub at: u64,
    /// The domain XML libvirt gave on stdin; `None` when it could not be
    /// read or was larger than the hook takes.
    pub xml: Option<String>,
    /// Why there is no XML, when there is none.
    #[serde(default)]
    pub xml_problem: Option<String>,
}

/// The spool directory of a state file: `spool/` beside it.
pub fn dir_of(state_path: &Path) -> PathBuf {
    state_path.parent().unwrap_or(Path::new("/")).join("spool")
}

/// Where a pass moves the spool entries it cannot fold or remove:
/// `spool.quarantine/` beside the state (outside the spool, which the path
/// unit watches).
pub fn quarantine_dir(state_path: &Path) -> PathBuf {
    state_path
        .parent()
        .unwrap_or(Path::new("/"))
        .join("spool.quarantine")
}

/// When a record was dropped, by clocks the wall clock cannot reorder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// This boot's id (32 lowercase hex digits).
    pub boot_id: String,
    /// `CLOCK_BOOTTIME`, nanoseconds: only goes forward within a boot
    /// (suspended time included).
    pub boottime_ns: u64,
}

/// This boot's id, from `/proc/sys/kernel/random/boot_id`, as 32 lowercase
/// hex digits; [`UNKNOWN_BOOT`] if it cannot be read.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|t| t.trim().replace('-', "").to_ascii_lowercase())
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| UNKNOWN_BOOT.to_string())
}

impl Stamp {
    /// Now: this boot's id and `CLOCK_BOOTTIME`.
    pub fn now() -> Stamp {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec to write into.
        let ok = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0;
        let boottime_ns = if ok {
            u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec).unwrap_or(0)
        } else {
            0
        };
        Stamp {
            boot_id: boot_id(),
            boottime_ns,
        }
    }

    fn name(&self, pid: u32) -> String {
        format!("{}-{:020}-{pid}.json", self.boot_id, self.boottime_ns)
    }
}

/// Where a record's name puts it in the fold order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    /// An older build's `<wall-clock ns, 20 digits>-<pid>.json`.
    Legacy(u128, u32),
    /// `<boot id>-<boottime ns, 20 digits>-<pid>.json`.
    Boot(String, u64, u32),
}

fn digits(s: &str, len: Option<usize>) -> bool {
    !s.is_empty() && len.map_or(true, |n| s.len() == n) && s.bytes().all(|b| b.is_ascii_digit())
}

fn key_of(name: &str) -> Option<Key> {
    let stem = name.strip_suffix(".json")?;
    let parts: Vec<&str> = stem.split('-').collect();
    match parts[..] {
        [nanos, pid] if digits(nanos, Some(20)) && digits(pid, None) => {
            Some(Key::Legacy(nanos.parse().ok()?, pid.parse().ok()?))
        }
        [boot, ns, pid]
            if boot.len() == 32
                && boot
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && digits(ns, Some(20))
                && digits(pid, None) =>
        {
            Some(Key::Boot(
                boot.to_string(),
                ns.parse().ok()?,
                pid.parse().ok()?,
            ))
        }
        _ => None,
    }
}

/// When the record at `path` was dropped, on the wall clock a pass read
/// as `wall` with `now`: a record of this boot is dated by its boot clock
/// (its name), so a step of the wall clock between the hook and the pass
/// does not move it. `None` for a record of another boot or of an older
/// build, or one from after `now`: its own `at` stands.
pub fn dated(path: &Path, now: &Stamp, wall: u64) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    match key_of(name)? {
        Key::Boot(boot, ns, _)
            if boot == now.boot_id && boot != UNKNOWN_BOOT && ns <= now.boottime_ns =>
        {
            let ago = (now.boottime_ns - ns + 500_000_000) / 1_000_000_000;
            Some(wall.saturating_sub(ago))
        }
        _ => None,
    }
}

/// True for a name the hook gives a record (this build's or an older
/// one's).
pub fn is_record_name(name: &str) -> bool {
    key_of(name).is_some()
}

/// Refuses a directory that is not owned by us or that others can write:
/// whoever can drop records there can make the pass record any floor.
pub fn check_private(dir: &Path) -> io::Result<()> {
    let m = fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if m.uid() != euid || m.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {} with mode {:o}; it must be owned by uid {euid} and writable by no one else",
                dir.display(),
                m.uid(),
                m.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_private(dir),
        Err(e) => Err(e),
    }
}

/// Drops `record` into the spool of `state_path` (the hook's side; no lock),
/// named by [`Stamp::now`]. See [`drop_record_stamped`].
pub fn drop_record(state_path: &Path, record: &HookRecord) -> io::Result<PathBuf> {
    drop_record_stamped(state_path, record, &Stamp::now())
}

/// Drops `record` into the spool of `state_path`, named by `stamp`.
/// Creates the state directory (0700, parents as usual) and the spool
/// (0700) when missing; refuses either when it is not private, and adds
/// nothing to a spool that holds [`MAX_RECORDS`] entries already. Returns
/// the record's path.
pub fn drop_record_stamped(
    state_path: &Path,
    record: &HookRecord,
    stamp: &Stamp,
) -> io::Result<PathBuf> {
    let state_dir = state_path.parent().unwrap_or(Path::new("/"));
    if !state_dir.is_dir() {
        if let Some(parent) = state_dir.parent() {
            fs::create_dir_all(parent)?;
        }
    }
    ensure_private_dir(state_dir)?;
    let spool = dir_of(state_path);
    ensure_private_dir(&spool)?;
    // Counted only as far as the cap: a spool of a few records (the usual
    // case) costs one short directory read.
    if fs::read_dir(&spool)?.take(MAX_RECORDS).count() >= MAX_RECORDS {
        return Err(io::Error::other(format!(
            "the spool holds {MAX_RECORDS} entries, its limit: no pass has folded them (is ksm-balloon.timer running?)"
        )));
    }
    let name = stamp.name(std::process::id());
    let tmp = state_dir.join(format!("{TEMP_PREFIX}{name}.tmp"));
    let text = serde_json::to_vec(record).map_err(io::Error::other)?;
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(&text)?;
        drop(f);
        fs::rename(&tmp, spool.join(&name))
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(spool.join(name))
}

/// One file found in the spool.
#[derive(Debug)]
pub struct Entry {
    /// Its path.
    pub path: PathBuf,
    /// The record, or why it is not one.
    pub record: Result<HookRecord, String>,
}

/// Reads one spooled record (at most [`MAX_RECORD_BYTES`]), never through
/// a symbolic link and never waiting on a FIFO.
pub fn read_record(path: &Path) -> Result<HookRecord, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!("larger than {MAX_RECORD_BYTES} bytes"));
    }
    parse(&text)
}

/// Parses a record's text. Pure.
pub fn parse(text: &str) -> Result<HookRecord, String> {
    let r: HookRecord =
        serde_json::from_str(text).map_err(|e| format!("not a hook record: {e}"))?;
    if r.v != SPOOL_VERSION {
        return Err(format!(
            "record version {} is not supported (this build reads {SPOOL_VERSION})",
            r.v
        ));
    }
    Ok(r)
}

/// What the spool holds, by name only (nothing read yet).
#[derive(Debug, Default)]
pub struct Listing {
    /// The records, in the order they fold.
    pub records: Vec<PathBuf>,
    /// Anything else (not a name the hook gives): for the quarantine.
    pub strays: Vec<PathBuf>,
}

/// The entries of the spool of `state_path`, records in the order they
/// fold; `current_boot` is this boot's id ([`boot_id`]). Within a boot,
/// by boot time; records of other boots (the timer was off across a
/// reboot) come first, a boot before another when its oldest record's
/// modification time is older; an older build's names first of all. A
/// missing spool is an empty one.
pub fn list(state_path: &Path, current_boot: &str) -> io::Result<Listing> {
    let spool = dir_of(state_path);
    let entries = match fs::read_dir(&spool) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Listing::default()),
        Err(e) => return Err(e),
    };
    let mut out = Listing::default();
    let mut keyed: Vec<(Key, PathBuf)> = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        match key_of(&name) {
            Some(k) => keyed.push((k, e.path())),
            None => out.strays.push(e.path()),
        }
    }
    out.strays.sort();
    // Each other boot placed by its oldest record's modification time.
    let mut boot_age: BTreeMap<String, (SystemTime, PathBuf)> = BTreeMap::new();
    for (k, p) in &keyed {
        if let Key::Boot(b, ..) = k {
            if b != current_boot {
                let t = fs::symlink_metadata(p)
                    .and_then(|m| m.modified())
                    .unwrap_or(UNIX_EPOCH);
                let slot = boot_age.entry(b.clone()).or_insert((t, p.clone()));
                if t < slot.0 {
                    *slot = (t, p.clone());
                }
            }
        }
    }
    let rank = |k: &Key| -> (u8, Option<SystemTime>) {
        match k {
            Key::Legacy(..) => (0, None),
            Key::Boot(b, ..) if b != current_boot => (1, boot_age.get(b).map(|a| a.0)),
            Key::Boot(..) => (2, None),
        }
    };
    keyed.sort_by(|(a, _), (b, _)| {
        rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
            (Key::Legacy(x, p), Key::Legacy(y, q)) => (x, p).cmp(&(y, q)),
            (Key::Boot(ba, x, p), Key::Boot(bb, y, q)) => (ba, x, p).cmp(&(bb, y, q)),
            _ => Ordering::Equal,
        })
    });
    out.records = keyed.into_iter().map(|(_, p)| p).collect();
    Ok(out)
}

/// Every file in the spool of `state_path`, read: anything that is not a
/// record first, as an error entry, then the records in the order they
/// fold ([`list`], this boot). All in memory at once: for tests and
/// tools; a pass reads one record at a time.
pub fn read_all(state_path: &Path) -> io::Result<Vec<Entry>> {
    let l = list(state_path, &boot_id())?;
    let strays = l.strays.into_iter().map(|path| Entry {
        path,
        record: Err("not a name the hook gives its records".into()),
    });
    let records = l.records.into_iter().map(|path| Entry {
        record: read_record(&path),
        path,
    });
    Ok(strays.chain(records).collect())
}

/// Removes one spool entry: a file, or a directory planted there (with
/// what it holds; the spool is private, so only its owner put it there).
pub fn remove_entry(path: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(path)?;
    if m.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Removes spool entries the caller has folded (and saved) or given up on.
pub fn remove(entries: &[Entry]) {
    for e in entries {
        let _ = remove_entry(&e.path);
    }
}

/// Moves a spool entry to the quarantine ([`quarantine_dir`], created
/// 0700), as `<its name>.<now>`; the newest [`KEEP_QUARANTINED`] entries
/// are kept. Returns where it went.
pub fn quarantine(state_path: &Path, path: &Path, now: u64) -> io::Result<PathBuf> {
    let q = quarantine_dir(state_path);
    ensure_private_dir(&q)?;
    let name = path
        .file_name()
        .map_or_else(|| "entry".into(), |n| n.to_string_lossy().into_owned());
    let mut to = q.join(format!("{name}.{now}"));
    let mut n = 1;
    while fs::symlink_metadata(&to).is_ok() {
        to = q.join(format!("{name}.{now}.{n}"));
        n += 1;
    }
    fs::rename(path, &to)?;
    prune_quarantine(&q);
    Ok(to)
}

fn prune_quarantine(q: &Path) {
    let Ok(entries) = fs::read_dir(q) else {
        return;
    };
    let mut all: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let m = e.path().symlink_metadata().ok()?;
            Some((m.modified().ok()?, e.path()))
        })
        .collect();
    if all.len() <= KEEP_QUARANTINED {
        return;
    }
    all.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    for (_, p) in all.into_iter().skip(KEEP_QUARANTINED) {
        let _ = remove_entry(&p);
    }
}

/// Removes temporary files of hooks killed between writing a record and
/// renaming it, once they are older than [`STALE_TEMP_SECS`].
pub fn remove_stale_temps(state_path: &Path, now: u64) {
    let state_dir = state_path.parent().unwrap_or(Path::new("/"));
    let Ok(entries) = fs::read_dir(state_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(TEMP_PREFIX) && name.ends_with(".tmp")) {
            continue;
        }
        let old = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .is_some_and(|t| now.saturating_sub(t.as_secs()) >= STALE_TEMP_SECS);
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record(op: &str) -> HookRecord {
        HookRecord {
            v: SPOOL_VERSION,
            domain: "g1".into(),
            operation: op.into(),
            sub_op: "begin".into(),
            at: 7,
            xml: Some("<domain/>".into()),
            xml_problem: None,
        }
    }

    const BOOT: &str = "0123456789abcdef0123456789abcdef";
    const EARLIER_BOOT: &str = "fedcba9876543210fedcba9876543210";

    fn stamp(boot: &str, ns: u64) -> Stamp {
        Stamp {
            boot_id: boot.into(),
            boottime_ns: ns,
        }
    }

    fn at(op: &str, domain: &str, wall: u64) -> HookRecord {
        HookRecord {
            domain: domain.into(),
            at: wall,
            ..record(op)
        }
    }

    fn ops(state: &Path, boot: &str) -> Vec<(String, String)> {
        list(state, boot)
            .unwrap()
            .records
            .iter()
            .map(|p| {
                let r = read_record(p).unwrap();
                (r.domain, r.operation)
            })
            .collect()
    }

    #[test]
    fn this_builds_names_and_an_older_builds_are_records() {
        assert!(is_record_name(
            "0123456789abcdef0123456789abcdef-00000000012345678901-42.json"
        ));
        assert!(!is_record_name(
            "0123456789ABCDEF0123456789abcdef-00000000012345678901-42.json"
        ));
        assert!(!is_record_name(
            "0123456789abcdef0123456789abcde-00000000012345678901-42.json"
        ));
        assert!(!is_record_name(
            "0123456789abcdef0123456789abcdef-12345678901-42.json"
        ));
        assert_eq!(
            stamp(BOOT, 7).name(42),
            format!("{BOOT}-00000000000000000007-42.json")
        );
        assert!(is_record_name(&stamp(BOOT, 7).name(42)));
        assert_eq!(boot_id().len(), 32);
    }

    #[test]
    fn records_fold_in_boot_time_order_whichever_way_the_wall_clock_steps_regression() {
        // Issue 18: records were named by the wall clock. Stepped back
        // between a VM's stop and its next start, the new prepare sorted
        // before the old stop: the running VM was forgotten, then adopted.
        for step in [-3600i64, 3600] {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state.json");
            let wall = |t: i64| (1_800_000_000 + t) as u64;
            let drop = |r: HookRecord, ns| {
                drop_record_stamped(&state, &r, &stamp(BOOT, ns)).unwrap();
            };
            drop(at("prepare", "g1", wall(0)), 100);
            drop(at("stopped", "g1", wall(60)), 200);
            // the wall clock steps (back, then forward, by an hour)
            drop(at("prepare", "g1", wall(60 + step)), 300);
            drop(at("started", "g1", wall(61 + step)), 400);
            assert_eq!(
                ops(&state, BOOT),
                [
                    ("g1".to_string(), "prepare".to_string()),
                    ("g1".into(), "stopped".into()),
                    ("g1".into(), "prepare".into()),
                    ("g1".into(), "started".into()),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn an_earlier_boots_records_fold_first_and_an_older_builds_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        // this boot's clock is far behind the earlier boot's
        drop_record_stamped(&state, &at("prepare", "now", 1), &stamp(BOOT, 5)).unwrap();
        let old = drop_record_stamped(
            &state,
            &at("stopped", "then", 1),
            &stamp(EARLIER_BOOT, 9_000_000),
        )
        .unwrap();
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(t)
            .unwrap();
        fs::write(
            dir_of(&state).join("00000001700000000123-42.json"),
            serde_json::to_vec(&at("prepare", "legacy", 1)).unwrap(),
        )
        .unwrap();
        let got: Vec<String> = ops(&state, BOOT).into_iter().map(|(d, _)| d).collect();
        assert_eq!(got, ["legacy", "then", "now"]);
    }

    #[test]
    fn the_hook_adds_nothing_to_a_full_spool_regression() {
        // Issue 18: the spool had no bound: a host whose timer was off for
        // weeks piled up records until a pass could not drain them.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        drop_record(&state, &record("prepare")).unwrap();
        let spool = dir_of(&state);
        for i in 1..MAX_RECORDS {
            fs::write(spool.join(format!("{BOOT}-{i:020}-1.json")), "{}").unwrap();
        }
        let err = drop_record(&state, &record("prepare")).unwrap_err();
        assert!(err.to_string().contains("its limit"), "{err}");
        assert_eq!(fs::read_dir(&spool).unwrap().count(), MAX_RECORDS);
        // nothing left behind in the state directory either
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["spool"]);
    }

    #[test]
    fn quarantine_moves_files_and_directories_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let spool = dir_of(&state);
        fs::create_dir_all(spool.join("a-directory/inside")).unwrap();
        fs::write(spool.join("junk"), "x").unwrap();
        let a = quarantine(&state, &spool.join("a-directory"), 5).unwrap();
        let b = quarantine(&state, &spool.join("junk"), 5).unwrap();
        assert!(a.join("inside").is_dir() && b.is_file());
        assert_eq!(fs::read_dir(&spool).unwrap().count(), 0);
        let q = quarantine_dir(&state);
        let mode = fs::metadata(&q).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for i in 0..KEEP_QUARANTINED + 3 {
            let p = spool.join("junk");
            fs::write(&p, "x").unwrap();
            quarantine(&state, &p, 6 + i as u64).unwrap();
        }
        assert_eq!(fs::read_dir(&q).unwrap().count(), KEEP_QUARANTINED);
    }

    #[test]
    fn names() {
        assert!(is_record_name("00000001700000000123-42.json"));
        assert!(!is_record_name("1700000000123-42.json"));
        assert!(!is_record_name("00000001700000000123-.json"));
        assert!(!is_record_name("00000001700000000123-42.json.tmp"));
        assert!(!is_record_name(".spool-00000001700000000123-42.json.tmp"));
        assert!(!is_record_name("x"));
    }

    #[test]
    fn dropped_records_read_back_in_order_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lib/ksm-balloon/state.json");
        let a = drop_record(&state, &record("prepare")).unwrap();
        let b = drop_record(&state, &record("started")).unwrap();
        assert!(a < b, "{a:?} {b:?}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(state.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir_of(&state)), 0o700);
        assert_eq!(mode(&a), 0o600);
        let got = read_all(&state).unwrap();
        let ops: Vec<_> = got
            .iter()
            .map(|e| e.record.as_ref().unwrap().operation.clone())
            .collect();
        assert_eq!(ops, ["prepare", "started"]);
        // no temporary file is left in the state directory
        let left: Vec<_> = fs::read_dir(state.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["spool"]);
        remove(&got);
        assert!(read_all(&state).unwrap().is_empty());
    }

    #[test]
    fn strays_and_bad_records_are_reported_for_removal() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        drop_record(&state, &record("prepare")).unwrap();
        let spool = dir_of(&state);
        fs::write(spool.join("README"), "hello").unwrap();
        fs::write(spool.join("00000000000000000001-1.json"), "{garbage").unwrap();
        let got = read_all(&state).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got[0].record.as_ref().unwrap_err().contains("not a name"));
        assert!(got[1]
            .record
            .as_ref()
            .unwrap_err()
            .contains("not a hook record"));
        assert_eq!(got[2].record.as_ref().unwrap().operation, "prepare");
        remove(&got);
        assert_eq!(fs::read_dir(&spool).unwrap().count(), 0);
    }

    #[test]
    fn a_spool_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        fs::create_dir(dir_of(&state)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(dir_of(&state), fs::Permissions::from_mode(0o777)).unwrap();
        let err = drop_record(&state, &record("prepare")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    }

    #[test]
    fn newer_record_versions_are_refused() {
        let mut r = serde_json::to_value(record("prepare")).unwrap();
        r["v"] = 2.into();
        assert!(parse(&r.to_string()).unwrap_err().contains("version 2"));
    }

    #[test]
    fn stale_temps_go_fresh_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let tmp = dir.path().join(".spool-00000000000000000001-1.json.tmp");
        fs::write(&tmp, "half").unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        remove_stale_temps(&state, now);
        assert!(tmp.exists());
        remove_stale_temps(&state, now + STALE_TEMP_SECS + 1);
        assert!(!tmp.exists());
    }
}
