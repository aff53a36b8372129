//! Time bounds on libvirt calls. A call that reaches a guest's QEMU monitor
//! (its balloon and disk figures, a resize, a statistics period) waits for
//! as long as that QEMU takes to answer, and a QEMU that is stopped, stuck
//! in I/O or busy with a long monitor command never answers: libvirt has no
//! timeout on the monitor. So every such call runs on a worker thread and
//! the pass waits for it only until its deadline; a call that does not come
//! back by then is abandoned, never joined (its thread stays blocked in
//! libvirt until the QEMU answers or the process exits at the end of the
//! pass, and it owns its own references to the connection and the domain,
//! so nothing the pass frees is under it).
//!
//! The bounds (docs/DESIGN.md, "A pass has a deadline"): the unit's
//! `TimeoutStartSec` is 90 s and the pass lock waits at most 20 s
//! (`--lock-timeout`), so the pass's libvirt work has [`Bounds::budget`]
//! (30 s) from the connection on, each call at most its own bound within
//! it, and a call not started by the end of the budget is not made.

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a pass waits for libvirt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Opening the connection.
    pub connect: Duration,
    /// The bulk statistics call (every domain's figures in one round trip:
    /// a few ms for a few VMs, under a second for a thousand on a healthy
    /// host).
    pub bulk: Duration,
    /// The listing without the monitor (states and sizes) the pass falls
    /// back to when no bulk call came back within the budget.
    pub listing: Duration,
    /// One domain's call (a resize, a statistics period, a definition), and
    /// each bulk call after one that did not come back.
    pub per_domain: Duration,
    /// All of a pass's libvirt work, from the connection on.
    pub budget: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            connect: Duration::from_secs(10),
            bulk: Duration::from_secs(8),
            listing: Duration::from_secs(5),
            per_domain: Duration::from_secs(5),
            budget: Duration::from_secs(30),
        }
    }
}

/// Runs `f` on a worker thread and waits for its result until `deadline`.
/// `None`: it did not come back in time (or the deadline had passed
/// already, and it was not started); its thread is left to finish, or
/// block, on its own, and its result, if it ever comes, is dropped.
pub fn bounded<T, F>(deadline: Instant, name: &str, f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name(format!("kb-{name}"))
        .spawn(move || {
            // The receiver may be gone (the call timed out): nothing to do.
            let _ = tx.send(f());
        });
    if spawned.is_err() {
        return None;
    }
    // The JoinHandle is dropped: the thread is detached, never joined.
    rx.recv_timeout(left).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn a_call_that_answers_in_time_gives_its_result() {
        let d = Instant::now() + Duration::from_secs(5);
        assert_eq!(bounded(d, "t", || 7), Some(7));
    }

    #[test]
    fn a_call_that_never_answers_is_abandoned_at_its_deadline() {
        // A worker blocked for good (as in a call to a stopped QEMU): the
        // caller gets None at the deadline and goes on.
        let never = Arc::new(Barrier::new(2));
        let held = never.clone();
        let t0 = Instant::now();
        let r = bounded(t0 + Duration::from_millis(200), "stuck", move || {
            held.wait();
            1
        });
        let took = t0.elapsed();
        assert_eq!(r, None);
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // (the blocked thread is never joined; the barrier keeps it blocked
        // until the test process exits)
        std::mem::forget(never);
    }

    #[test]
    fn a_deadline_already_past_starts_nothing() {
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ran.clone();
        let out = bounded(Instant::now() - Duration::from_secs(1), "late", move || {
            r.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        assert_eq!(out, None);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
