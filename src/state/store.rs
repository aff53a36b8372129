//! The state file on disk. [`Store`] names the files; [`Store::lock`] takes
//! the pass lock and returns a [`Locked`], the only thing that can load or
//! save the state, so no code saves without holding the lock.
//!
//! Loading recovers from a bad file (moved aside to `<state>.bad-<time>`,
//! the newest [`KEEP_BAD_FILES`] kept, never a crash loop); saving is atomic
//! (temp file in the same directory, fsync, rename, fsync of the
//! directory). Symbolic links planted at the state or lock path are never
//! followed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::lock::{self, LockFile};
use super::model::{State, MAX_STATE_BYTES};
use super::spool;
use super::{io_err, is_symlink, StoreError};

/// How many `<state>.bad-*` files are kept for the operator; older ones go.
pub const KEEP_BAD_FILES: usize = 5;

/// Where the state lives: the file, its lock beside it, and the kernel's
/// lock table used to name a lock's holder.
#[derive(Clone, Debug)]
pub struct Store {
    path: PathBuf,
    lock_path: PathBuf,
    proc_locks: PathBuf,
}

/// The pass lock, held: loads and saves the state. Dropping it lets the
/// lock go.
#[derive(Debug)]
pub struct Locked<'a> {
    store: &'a Store,
    _lock: LockFile,
}

/// How a load went.
#[derive(Debug)]
pub enum Loaded {
    /// No state file yet.
    Fresh(State),
    /// Read and valid.
    Read(State),
    /// Read, with the VM records that could not be right dropped (one line
    /// each, naming the VM); the rest of the state kept.
    Repaired {
        /// The state, without those records.
        state: State,
        /// What was dropped, and why.
        dropped: Vec<String>,
    },
    /// Bad: moved aside to `moved_to`, starting empty.
    Recovered {
        /// An empty state to rebuild into.
        state: State,
        /// Where the bad file went.
        moved_to: PathBuf,
        /// What was wrong with it.
        problem: String,
    },
}

impl Loaded {
    /// The VM records dropped at load, one line each (see
    /// [`Loaded::Repaired`]).
    pub fn dropped(&self) -> &[String] {
        match self {
            Loaded::Repaired { dropped, .. } => dropped,
            _ => &[],
        }
    }

    /// The state, however it was had.
    pub fn into_state(self) -> State {
        match self {
            Loaded::Fresh(s)
            | Loaded::Read(s)
            | Loaded::Repaired { state: s, .. }
            | Loaded::Recovered { state: s, .. } => s,
        }
    }
}

/// Refuses a state directory that is not owned by the user running the
/// tool or that its group or others can write to: whoever can write there
/// can plant a state file whose floors are the VMs' maximums (every pass
/// would then grow them) or swap the file under a pass. Followed through
/// symbolic links: what counts is the directory the files land in.
fn check_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(dir).map_err(io_err("cannot inspect the state directory", dir))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let why = if m.uid() != euid {
        format!("it is owned by uid {}, not by uid {euid}", m.uid())
    } else if m.mode() & 0o022 != 0 {
        format!("it is writable by others (mode {:o})", m.mode() & 0o777)
    } else {
        return Ok(());
    };
    Err(StoreError::UnsafeDir {
        path: dir.to_path_buf(),
        why,
    })
}

enum ReadProblem {
    Bad(String),
    Io(io::Error),
}

impl Store {
    /// A store for the state file at `path`; the lock is `path` + `.lock`;
    /// a lock's holder is looked up in `/proc/locks`.
    pub fn new(path: PathBuf) -> Store {
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        Store {
            path,
            lock_path: PathBuf::from(lock),
            proc_locks: PathBuf::from("/proc/locks"),
        }
    }

    /// The same store, looking up a lock's holder in `proc_locks` (the
    /// kernel's table under `--root`).
    pub fn with_proc_locks(mut self, proc_locks: PathBuf) -> Store {
        self.proc_locks = proc_locks;
        self
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file's path.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// The hook's spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        spool::dir_of(&self.path)
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// Creates the state directory (0700) if it is missing; refuses one that
    /// others could write to or that belongs to another user.
    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        let dir = self.dir();
        if dir.is_dir() {
            return check_dir(dir);
        }
        // Parents get the usual modes; the directory the tool owns is 0700.
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                Err(io_err("cannot create the state directory", dir)(e))
            }
            _ => Ok(()),
        }
    }

    /// Takes the pass lock, waiting at most `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<Locked<'_>, StoreError> {
        self.ensure_dir()?;
        let lock = lock::acquire(&self.lock_path, timeout, &self.proc_locks)?;
        Ok(Locked {
            store: self,
            _lock: lock,
        })
    }

    /// Reads the state file's text; `Ok(None)` when there is none.
    fn read_text(&self) -> Result<Option<String>, ReadProblem> {
        // O_NONBLOCK: opening a FIFO planted at the path must not wait for
        // a writer (it would hang every pass); it has no effect on a
        // regular file.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&self.path);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(ReadProblem::Bad("it is a symbolic link".into()))
            }
            Err(e) => return Err(ReadProblem::Io(e)),
        };
        let kind = file.metadata().map_err(ReadProblem::Io)?.file_type();
        if !kind.is_file() {
            use std::os::unix::fs::FileTypeExt;
            let what = if kind.is_dir() {
                "a directory"
            } else if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a device"
            };
            return Err(ReadProblem::Bad(format!(
                "it is {what}, not a regular file"
            )));
        }
        let mut text = String::new();
        let mut limited = file.take(MAX_STATE_BYTES + 1);
        match limited.read_to_string(&mut text) {
            Ok(n) if n as u64 > MAX_STATE_BYTES => Err(ReadProblem::Bad(format!(
                "larger than {MAX_STATE_BYTES} bytes"
            ))),
            Ok(_) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Err(ReadProblem::Bad("not UTF-8 text".into()))
            }
            Err(e) => Err(ReadProblem::Io(e)),
        }
    }

    /// Loads the state without the lock and without changing anything on
    /// disk (for `status`, `plan`): a bad file reads as empty, with the
    /// problem returned.
    pub fn peek(&self) -> Result<(State, Option<String>), StoreError> {
        match self.read_text() {
            Ok(None) => Ok((State::default(), None)),
            Ok(Some(text)) => match State::parse(&text) {
                Ok(s) => Ok((s, None)),
                Err(e) => Ok((State::default(), Some(crate::errors::chain(&e)))),
            },
            Err(ReadProblem::Bad(why)) => Ok((State::default(), Some(why))),
            Err(ReadProblem::Io(e)) => Err(io_err("cannot read the state file", &self.path)(e)),
        }
    }

    /// Removes all but the newest [`KEEP_BAD_FILES`] `<state>.bad-*` files.
    fn prune_bad_files(&self) {
        let Some(name) = self.path.file_name() else {
            return;
        };
        let prefix = format!("{}.bad-", name.to_string_lossy());
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        let mut bad: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter_map(|e| {
                let m = e.path().symlink_metadata().ok()?;
                Some((m.modified().ok()?, e.path()))
            })
            .collect();
        if bad.len() <= KEEP_BAD_FILES {
            return;
        }
        // Newest first; the name breaks ties (same second: .bad-T, .bad-T.1).
        bad.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        for (_, p) in bad.into_iter().skip(KEEP_BAD_FILES) {
            if fs::remove_file(&p).is_err() {
                let _ = fs::remove_dir_all(&p);
            }
        }
    }

    /// Removes `<state>.tmp.<pid>` files: only the lock holder writes one,
    /// so with the lock held any that exists was left by a pass killed
    /// between writing it and renaming it into place.
    fn remove_stale_temp_files(&self) {
        let Some(name) = self.path.file_name() else {
            return;
        };
        let prefix = format!("{}.tmp.", name.to_string_lossy());
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            let stale = n
                .strip_prefix(&prefix)
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
            if stale {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

impl Locked<'_> {
    /// The store this lock is for.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Loads the state. A bad file is renamed to `<state>.bad-<now>` (kept
    /// for the operator) and an empty state returned to rebuild from libvirt.
    pub fn load(&self, now: u64) -> Result<Loaded, StoreError> {
        let store = self.store;
        let problem = match store.read_text() {
            Ok(None) => return Ok(Loaded::Fresh(State::default())),
            Ok(Some(text)) => match State::parse_checked(&text) {
                Ok((s, dropped)) if dropped.is_empty() => return Ok(Loaded::Read(s)),
                Ok((state, dropped)) => return Ok(Loaded::Repaired { state, dropped }),
                Err(e) => crate::errors::chain(&e),
            },
            Err(ReadProblem::Bad(why)) => why,
            Err(ReadProblem::Io(e)) => {
                return Err(io_err("cannot read the state file", &store.path)(e))
            }
        };
        let mut aside = store.path.clone().into_os_string();
        aside.push(format!(".bad-{now}"));
        let mut moved_to = PathBuf::from(&aside);
        let mut n = 1;
        while fs::symlink_metadata(&moved_to).is_ok() {
            moved_to = PathBuf::from(format!("{}.{n}", aside.to_string_lossy()));
            n += 1;
        }
        fs::rename(&store.path, &moved_to)
            .map_err(io_err("cannot move the bad state file aside", &store.path))?;
        store.prune_bad_files();
        Ok(Loaded::Recovered {
            state: State::default(),
            moved_to,
            problem,
        })
    }

    /// Writes the state atomically. On any failure the previous file is
    /// left untouched. A VM record that cannot be right is not written
    /// (logged, naming the VM): the next load would have to drop it.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let checked;
        let state = if state.vms.iter().any(|(k, v)| v.impossible(k).is_some()) {
            let mut s = state.clone();
            for d in s.drop_impossible() {
                log::error!("{d}: not saved");
            }
            checked = s;
            &checked
        } else {
            state
        };
        let store = self.store;
        store.ensure_dir()?;
        let mut tmp = store.path.clone().into_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = (|| {
            store.remove_stale_temp_files();
            // A stale temp file of a killed run with our pid: replace it.
            if is_symlink(&tmp) || tmp.exists() {
                fs::remove_file(&tmp).map_err(io_err("cannot remove stale temp file", &tmp))?;
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
                .map_err(io_err("cannot create", &tmp))?;
            f.write_all(state.to_json().as_bytes())
                .map_err(io_err("cannot write", &tmp))?;
            f.sync_all().map_err(io_err("cannot sync", &tmp))?;
            drop(f);
            fs::rename(&tmp, &store.path).map_err(io_err("cannot replace", &store.path))?;
            if let Ok(d) = File::open(store.dir()) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{Source, VmRecord};
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record(uuid: &str, floor: u64, ceiling: u64) -> VmRecord {
        VmRecord::new(
            format!("vm-{uuid}"),
            uuid.into(),
            floor,
            ceiling,
            true,
            Source::Hook,
            1,
        )
    }

    #[test]
    fn save_load_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("sub/state.json"));
        let lock = store.lock(Duration::from_secs(1)).unwrap();
        assert!(matches!(lock.load(1).unwrap(), Loaded::Fresh(_)));
        let mut s = State::default();
        s.vms.insert("u1".into(), record("u1", 100, 200));
        lock.save(&s).unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let lmode = fs::metadata(store.lock_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(lmode & 0o777, 0o600);
        match lock.load(2).unwrap() {
            Loaded::Read(r) => assert_eq!(r, s),
            other => panic!("{other:?}"),
        }
        fs::write(store.path(), "{not json").unwrap();
        match lock.load(3).unwrap() {
            Loaded::Recovered { moved_to, .. } => {
                assert_eq!(fs::read_to_string(&moved_to).unwrap(), "{not json");
                assert!(!store.path().exists());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_newest_bad_files_are_kept() {
        // A state file that goes bad again and again (a broken disk, a
        // tool writing over it) must not fill the directory with copies.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state.json"));
        let lock = store.lock(Duration::from_secs(1)).unwrap();
        for now in 0..(KEEP_BAD_FILES as u64 + 4) {
            fs::write(store.path(), format!("bad {now}")).unwrap();
            // distinct modification times, oldest first
            let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + now);
            File::options()
                .write(true)
                .open(store.path())
                .unwrap()
                .set_modified(t)
                .unwrap();
            assert!(matches!(lock.load(now).unwrap(), Loaded::Recovered { .. }));
        }
        let mut kept: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.json.bad-"))
            .collect();
        kept.sort();
        let want: Vec<String> = (4..(KEEP_BAD_FILES as u64 + 4))
            .map(|n| format!("state.json.bad-{n}"))
            .collect();
        assert_eq!(kept, want);
    }

    #[test]
    fn stale_temp_files_of_killed_passes_are_removed() {
        // The storm found one `state.json.tmp.<pid>` left behind for every
        // pass killed between writing its temp file and renaming it.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state.json"));
        let lock = store.lock(Duration::from_secs(1)).unwrap();
        for stale in ["state.json.tmp.1", "state.json.tmp.99999"] {
            fs::write(dir.path().join(stale), "half a state").unwrap();
        }
        // not ours to remove: other names
        fs::write(dir.path().join("state.json.tmp.x"), "keep").unwrap();
        fs::write(dir.path().join("other.tmp.1"), "keep").unwrap();
        lock.save(&State::default()).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "other.tmp.1",
                "state.json",
                "state.json.lock",
                "state.json.tmp.x"
            ]
        );
    }

    #[test]
    fn a_fifo_at_the_state_path_does_not_hang_and_is_moved_aside() {
        // Found by probing special files: opening a FIFO planted at the
        // state path waited for a writer forever, hanging run and status.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state.json"));
        let c = std::ffi::CString::new(store.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let peeker = store.clone();
        std::thread::spawn(move || {
            let _ = tx.send(peeker.peek().map_err(|e| e.to_string()));
        });
        let (state, problem) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("reading a FIFO at the state path hung")
            .unwrap();
        assert_eq!(state, State::default());
        assert!(problem.unwrap().contains("a FIFO"));
        let lock = store.lock(Duration::from_secs(1)).unwrap();
        match lock.load(5).unwrap() {
            Loaded::Recovered {
                moved_to, problem, ..
            } => {
                assert_eq!(problem, "it is a FIFO, not a regular file");
                assert!(fs::symlink_metadata(moved_to).is_ok());
            }
            other => panic!("{other:?}"),
        }
        assert!(!store.path().exists());
    }

    #[test]
    fn a_directory_at_the_state_path_is_moved_aside_not_a_failure_loop() {
        // Found by probing special files: every pass failed with "cannot
        // read the state file: Is a directory" and never got past it.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state.json"));
        fs::create_dir(store.path()).unwrap();
        let lock = store.lock(Duration::from_secs(1)).unwrap();
        assert!(matches!(lock.load(5).unwrap(), Loaded::Recovered { .. }));
        lock.save(&State::default()).unwrap();
        assert!(matches!(lock.load(6).unwrap(), Loaded::Read(_)));
    }

    #[test]
    fn symlinked_state_is_moved_aside_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, "do not touch").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("state.json")).unwrap();
        let store = Store::new(dir.path().join("state.json"));
        let lock = store.lock(Duration::from_secs(1)).unwrap();
        assert!(matches!(lock.load(9).unwrap(), Loaded::Recovered { .. }));
        lock.save(&State::default()).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "do not touch");
        assert!(!is_symlink(store.path()));
    }

    #[test]
    fn an_impossible_record_is_neither_saved_nor_costs_the_others_at_load_regression() {
        // Issue 18: a record with floor 0 was saved, and the next load
        // moved the whole file aside, every other VM's history with it.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state.json"));
        let lock = store.lock(Duration::from_secs(1)).unwrap();
        let mut s = State::default();
        s.vms.insert("u1".into(), record("u1", 100, 200));
        s.vms.insert("u2".into(), record("u2", 0, 200));
        lock.save(&s).unwrap();
        match lock.load(1).unwrap() {
            Loaded::Read(r) => assert_eq!(r.vms.keys().collect::<Vec<_>>(), ["u1"]),
            other => panic!("{other:?}"),
        }
        // written by an older build (or by hand): dropped at load, the
        // rest kept, the file not moved aside
        let text = s.to_json();
        fs::write(store.path(), &text).unwrap();
        match lock.load(2).unwrap() {
            Loaded::Repaired { state, dropped } => {
                assert_eq!(state.vms.keys().collect::<Vec<_>>(), ["u1"]);
                assert_eq!(dropped.len(), 1);
                assert!(dropped[0].contains("\"vm-u2\": floor is 0"), "{dropped:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read_to_string(store.path()).unwrap(), text);
        let aside = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".bad-")
            })
            .count();
        assert_eq!(aside, 0);
    }
}
