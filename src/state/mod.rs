//! ksm-balloon's persistent state, in four parts that can each be read
//! alone:
//!
//! - [`model`]: the state file's format (pure: parse, validate, write);
//! - [`lock`]: the pass lock, `<state>.lock` (fs2 `flock`, bounded wait, the
//!   holder named on a timeout);
//! - [`store`]: the state file on disk: loading with recovery from a bad
//!   file, atomic saving, both only through [`store::Locked`], the proof
//!   that the lock is held;
//! - [`spool`]: the hook's records, `<state dir>/spool/`, dropped by atomic
//!   rename with no lock at all and folded into the state by the next pass.
//!
//! The protocol, and why it cannot deadlock with libvirt: libvirtd holds a
//! domain while it runs the hook, and a pass's libvirt calls wait for that
//! domain. So the hook must never wait for anything a pass holds: it takes
//! no lock and only writes a spool record. Passes (and the commands that
//! change the state) serialise on the pass lock for their whole run, so two
//! passes never both resize; the lock is held across libvirt calls, which
//! is safe because nothing libvirt waits for ever takes it.

pub mod lock;
pub mod model;
pub mod spool;
pub mod store;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use model::{
    Candidate, ClockMark, IoTrack, LastPass, ShapeError, Source, State, StateParseError, Stuck,
    VmRecord, CLOCK_STEP_TOLERANCE_SECS, MAX_STATE_BYTES, STATE_VERSION,
};
pub use store::{Loaded, Locked, Store};

/// What went wrong with the state directory or its files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The lock was held by someone else for too long.
    #[error("timed out after {waited:?} waiting for the lock {} (held by {holder})", .path.display())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// Who holds it, as far as can be known.
        holder: String,
    },
    /// The state directory is not ours alone.
    #[error("refusing to use the state directory {}: {why}; it must belong to the user running ksm-balloon and be writable by no one else (chmod 0700)", .path.display())]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A symbolic link sits where the lock file belongs.
    #[error("refusing to use {}: it is a symbolic link", .path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// An I/O failure on a named path.
    #[error("{action} {}", .path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// Builds the [`StoreError::Io`] for `action` on `path`.
pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// True when `path` is a symbolic link (not followed).
pub(crate) fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}
