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
//! never sees a half-written one) and renamed into the spool. Names sort in
//! the order the hooks ran: `<nanoseconds since the epoch, 20 digits>-<pid>.json`.
//! No fsync: the records describe running VMs, which a host crash ends anyway.

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

const TEMP_PREFIX: &str = ".spool-";

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

/// True for a name the hook gives a record.
pub fn is_record_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".json") else {
        return false;
    };
    let Some((nanos, pid)) = stem.split_once('-') else {
        return false;
    };
    nanos.len() == 20
        && nanos.bytes().all(|b| b.is_ascii_digit())
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
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

/// Drops `record` into the spool of `state_path` (the hook's side; no lock).
/// Creates the state directory (0700, parents as usual) and the spool
/// (0700) when missing; refuses either when it is not private. Returns the
/// record's path.
pub fn drop_record(state_path: &Path, record: &HookRecord) -> io::Result<PathBuf> {
    let state_dir = state_path.parent().unwrap_or(Path::new("/"));
    if !state_dir.is_dir() {
        if let Some(parent) = state_dir.parent() {
            fs::create_dir_all(parent)?;
        }
    }
    ensure_private_dir(state_dir)?;
    let spool = dir_of(state_path);
    ensure_private_dir(&spool)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{nanos:020}-{}.json", std::process::id());
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

fn read_one(path: &Path) -> Result<HookRecord, String> {
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

/// Every file in the spool of `state_path`, records in the order the hooks
/// ran; anything else the spool holds comes first, as an error entry, so
/// the caller can log and remove it (a file left there would keep the
/// systemd path unit starting passes). A missing spool is an empty one.
pub fn read_all(state_path: &Path) -> io::Result<Vec<Entry>> {
    let spool = dir_of(state_path);
    let entries = match fs::read_dir(&spool) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    let mut strays = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_record_name(&name) {
            records.push((name, e.path()));
        } else {
            strays.push(Entry {
                path: e.path(),
                record: Err("not a name the hook gives its records".into()),
            });
        }
    }
    records.sort();
    strays.extend(records.into_iter().map(|(_, path)| Entry {
        record: read_one(&path),
        path,
    }));
    Ok(strays)
}

/// Removes spool entries the caller has folded (and saved) or given up on.
/// A directory planted in the spool is removed only when empty.
pub fn remove(entries: &[Entry]) {
    for e in entries {
        if fs::remove_file(&e.path).is_err() {
            let _ = fs::remove_dir(&e.path);
        }
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
