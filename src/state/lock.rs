//! The pass lock: an exclusive `flock` on `<state>.lock`, waited for at most
//! a bounded time, its holder's pid written into it and named, from the
//! kernel's `/proc/locks` (under `--root`), when a waiter gives up.
//!
//! Who takes it: a pass, for its whole run, and the commands that change
//! the state. Never the hook (see [`super`] for why).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use fs2::FileExt;

use super::{io_err, StoreError};

/// Holds the exclusive lock until dropped.
#[derive(Debug)]
pub struct LockFile {
    file: File,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

/// Waits at most `timeout` for the exclusive lock on `file`, blocked in
/// flock(2) on a helper thread so the kernel wakes the waiter the moment the
/// holder lets go (a poller with growing pauses starves behind a stream of
/// newcomers). On a timeout the helper stays blocked and lets the lock go at
/// once should it still get it.
fn wait_for_lock(file: &File, timeout: Duration) -> io::Result<()> {
    let waiter = file.try_clone()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("state-lock-wait".into())
        .spawn(move || {
            let got = waiter.lock_exclusive();
            let got_it = got.is_ok();
            if tx.send(got).is_err() && got_it {
                // Nobody waits any more: let it go.
                let _ = FileExt::unlock(&waiter);
            }
        })?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "lock wait timed out",
        )),
    }
}

/// The pid holding an exclusive `flock` on the file with `dev`/`ino`, from
/// the text of `/proc/locks` (the kernel's own record: right even while the
/// holder is still writing its pid into the file). Pure.
pub fn flock_holder_in(locks: &str, dev_major: u32, dev_minor: u32, ino: u64) -> Option<u32> {
    let want = format!("{dev_major:02x}:{dev_minor:02x}:{ino}");
    // "1: FLOCK  ADVISORY  WRITE 4242 fe:00:9805825 0 EOF"; a waiter's line
    // has "->" after the number and so never matches.
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 6 && f[1] == "FLOCK" && f[3] == "WRITE" && f[5] == want)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

fn flock_holder(file: &File, proc_locks: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().ok()?;
    let locks = fs::read_to_string(proc_locks).ok()?;
    flock_holder_in(&locks, libc::major(m.dev()), libc::minor(m.dev()), m.ino())
}

/// The pid the holder wrote into the lock file, where /proc/locks is not
/// there to say: its first line. A holder writes its pid over the old one
/// and then cuts the file to length, so a shorter pid read before the cut
/// (or left by a holder killed between the two) is followed by the old
/// one's tail ("4242\n12\n").
fn pid_in(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Takes the exclusive lock on `path` (created 0600, never through a
/// symbolic link), waiting at most `timeout`. `proc_locks` is the kernel's
/// lock table, read only to name the holder on a timeout.
pub fn acquire(path: &Path, timeout: Duration, proc_locks: &Path) -> Result<LockFile, StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                StoreError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("cannot open the lock file", path)(e)
            }
        })?;
    let start = Instant::now();
    match file.try_lock_exclusive() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
            if let Err(e) = wait_for_lock(&file, timeout) {
                if e.kind() != io::ErrorKind::TimedOut {
                    return Err(io_err("cannot lock", path)(e));
                }
                let holder = match flock_holder(&file, proc_locks).or_else(|| pid_in(&mut file)) {
                    Some(pid) => format!("pid {pid}"),
                    None => "an unknown process".to_string(),
                };
                return Err(StoreError::LockTimeout {
                    path: path.to_path_buf(),
                    waited: start.elapsed(),
                    holder,
                });
            }
        }
        Err(e) => return Err(io_err("cannot lock", path)(e)),
    }
    // Ours now: say who holds it, for whoever waits next. Written over the
    // old pid and then cut to length, so the file is never empty while a
    // waiter may read it.
    let pid = format!("{}\n", std::process::id());
    let _ = file.rewind();
    if file.write_all(pid.as_bytes()).is_ok() {
        let _ = file.set_len(pid.len() as u64);
    }
    Ok(LockFile { file })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_LOCKS: &str = "/proc/locks";

    fn lock(path: &Path, timeout: Duration) -> Result<LockFile, StoreError> {
        acquire(path, timeout, Path::new(PROC_LOCKS))
    }

    #[test]
    fn holder_from_the_kernels_table() {
        let table = "1: POSIX  ADVISORY  WRITE 77 fe:00:12 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 fe:00:9805825 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4243 fe:00:9805825 0 EOF\n";
        assert_eq!(flock_holder_in(table, 0xfe, 0, 9805825), Some(4242));
        assert_eq!(flock_holder_in(table, 0xfe, 0, 12), None);
        assert_eq!(flock_holder_in("", 0xfe, 0, 1), None);
    }

    #[test]
    fn lock_times_out_naming_file_and_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json.lock");
        let _held = lock(&path, Duration::from_secs(1)).unwrap();
        // A second open file description contends even in the same process.
        let err = lock(&path, Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(err.contains("state.json.lock"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn lock_timeout_names_holder_even_before_it_wrote_its_pid() {
        // The storm found waiters saying "held by an unknown process": they
        // read the lock file while its holder had truncated it and not yet
        // written its pid. Here the holder has written nothing at all.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json.lock");
        let holder = File::create(&path).unwrap();
        holder.try_lock_exclusive().unwrap();
        assert_eq!(fs::read(&path).unwrap().len(), 0);
        let err = lock(&path, Duration::from_millis(30))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("(held by pid {})", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_shorter_pid_written_over_a_longer_one_is_read_before_the_cut_regression() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json.lock");
        fs::write(&path, "4242\n12\n").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(pid_in(&mut f), Some(4242));
        fs::write(&path, "").unwrap();
        assert_eq!(pid_in(&mut f), None);
    }

    #[test]
    fn lock_file_holds_only_the_latest_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json.lock");
        fs::write(&path, "123456789012\n").unwrap();
        drop(lock(&path, Duration::from_secs(1)).unwrap());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
    }

    #[test]
    fn lock_waiter_is_not_starved_by_a_busy_holder() {
        // The storm found hooks timing out after 5 s behind 56 concurrent
        // calls: a waiter polling with pauses up to 100 ms almost never
        // caught the lock free. A waiter blocked in flock(2) is queued by
        // the kernel and woken at the release; /proc/locks shows such a
        // waiter as a blocked ("->") request on the lock file, a poller
        // never. (A timing-free check: it does not race the holder.)
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json.lock");
        let held = lock(&path, Duration::from_secs(1)).unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        let p = path.clone();
        let waiter = std::thread::spawn(move || lock(&p, Duration::from_secs(20)));
        let deadline = Instant::now() + Duration::from_secs(10);
        let blocked = loop {
            let locks = fs::read_to_string(PROC_LOCKS).unwrap();
            let found = locks.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&"->")
                    && f.get(2) == Some(&"FLOCK")
                    && f.get(6)
                        .and_then(|d| d.rsplit(':').next())
                        .and_then(|i| i.parse::<u64>().ok())
                        == Some(ino)
            });
            if found || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(held);
        waiter.join().unwrap().unwrap();
        assert!(blocked, "the waiter never blocked in flock(2) on the lock");
    }

    #[test]
    fn symlinked_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let path = dir.path().join("state.json.lock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = lock(&path, Duration::from_millis(10)).unwrap_err();
        assert!(matches!(err, StoreError::Symlink { .. }), "{err}");
        assert!(!target.exists());
    }
}
