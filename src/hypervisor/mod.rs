//! The libvirt edge, behind the [`Hypervisor`] trait: one bulk statistics
//! call per pass for every domain's balloon, its guest's own memory figures
//! and its disk reads; one resize per VM whose target moved; the few other
//! calls a pass may need (a definition to adopt a VM, turning a guest's
//! statistics on). [`Libvirt`] is the real thing ([`libvirt`]); `fake` is
//! an in-memory hypervisor for the pass's unit tests, with the faults a
//! real daemon does not produce on demand (only with the `testing`
//! feature, which the tests get: never in the shipped binary).

pub mod deadline;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod libvirt;
pub mod typed;

use serde::Serialize;

pub use libvirt::{quiet_libvirt, Libvirt};

/// A domain's balloon sizes, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sizes {
    /// The balloon's current size.
    pub current_kib: u64,
    /// The domain's maximum (boot-time) memory.
    pub maximum_kib: u64,
}

/// A guest's own memory figures, as its balloon driver reports them (the
/// bulk call's balloon group). Each is absent when the guest does not
/// report it: no statistics period set, an old driver, or a domain libvirt
/// was busy with (the call does not wait for it). Sizes in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestStats {
    /// `balloon.unused`: the guest's MemFree.
    pub unused_kib: Option<u64>,
    /// `balloon.usable`: the guest's MemAvailable.
    pub usable_kib: Option<u64>,
    /// `balloon.available`: the guest's MemTotal.
    pub available_kib: Option<u64>,
    /// `balloon.disk_caches`: its page cache (tmpfs included).
    pub disk_caches_kib: Option<u64>,
    /// `balloon.last-update`: when the guest last reported (seconds since
    /// the epoch, the host's clock).
    pub last_update: Option<u64>,
    /// `balloon.swap_in`: swapped in since boot.
    pub swap_in_kib: Option<u64>,
    /// `balloon.swap_out`: swapped out since boot.
    pub swap_out_kib: Option<u64>,
    /// `balloon.major_fault`: major page faults since boot.
    pub major_fault: Option<u64>,
    /// `balloon.minor_fault`: minor page faults since boot.
    pub minor_fault: Option<u64>,
}

/// A running (or paused) domain as one bulk statistics call reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveDomain {
    /// The domain's UUID, lower case.
    pub uuid: String,
    /// The domain's name.
    pub name: String,
    /// Running (not paused, not starting, not shutting down).
    pub running: bool,
    /// Its balloon sizes; `None` when they could not be read this pass.
    pub sizes: Option<Sizes>,
    /// Its guest's own figures.
    pub guest: GuestStats,
    /// Bytes read from all its disks since it started (`block.<n>.rd.bytes`).
    pub block_rd_bytes: Option<u64>,
    /// Why its monitor-dependent figures could not be had this pass: its
    /// QEMU did not answer in time, or libvirt is still busy with it (a call
    /// on it has not returned). `None`: it answered. Such a VM is left alone
    /// this pass (a call on it would wait too) and its record kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresponsive: Option<String>,
}

/// How many libvirt calls of each kind a run made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallCount {
    /// Bulk statistics calls.
    pub bulk_stats: u32,
    /// Per-domain info calls (only for a driver whose bulk call lacks balloon fields).
    pub per_domain_info: u32,
    /// Domain XML fetches (only to adopt a VM no hook recorded).
    pub xml: u32,
    /// Balloon resize calls.
    pub set_memory: u32,
    /// Statistics-period calls (once per VM that lacked guest statistics).
    pub stats_period: u32,
    /// Metadata reads (`reload` only).
    pub metadata: u32,
}

/// libvirt's own error, as a source of an [`HvError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LibvirtMessage {
    /// libvirt's message.
    pub message: String,
}

/// What can go wrong talking to the hypervisor.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// Could not connect at all.
    #[error("cannot connect to libvirt at {uri}")]
    Connect {
        /// The URI tried.
        uri: String,
        /// libvirt's error.
        #[source]
        source: LibvirtMessage,
    },
    /// The domain is gone (destroyed since the statistics were read).
    #[error("domain {name:?} no longer exists")]
    Gone {
        /// The domain.
        name: String,
        /// libvirt's error.
        #[source]
        source: LibvirtMessage,
    },
    /// The domain refused (no balloon driver yet, shutting down, ...).
    #[error("domain {name:?} refused")]
    Refused {
        /// The domain.
        name: String,
        /// libvirt's error.
        #[source]
        source: LibvirtMessage,
    },
    /// The connection to libvirtd was lost mid-pass.
    #[error("lost the connection to libvirt at {uri}")]
    Lost {
        /// The URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: LibvirtMessage,
    },
    /// The call did not come back within its bound: the domain's QEMU does
    /// not answer (stopped, stuck in I/O, a long monitor command), or
    /// libvirt is busy with it. The call is abandoned; only this domain is
    /// affected.
    #[error("domain {name:?} did not answer {call} within {secs} s")]
    Unresponsive {
        /// The domain.
        name: String,
        /// The call.
        call: &'static str,
        /// The bound waited, seconds.
        secs: u64,
    },
    /// Any other libvirt failure.
    #[error("libvirt call {call} failed")]
    Call {
        /// The call.
        call: &'static str,
        /// libvirt's error.
        #[source]
        source: LibvirtMessage,
    },
}

impl HvError {
    /// True when this error ends the pass (the connection is unusable);
    /// false when only one domain is affected.
    pub fn is_fatal(&self) -> bool {
        matches!(self, HvError::Connect { .. } | HvError::Lost { .. })
    }
}

/// What a pass needs from the hypervisor.
pub trait Hypervisor {
    /// Every active domain with its balloon figures, in as few calls as the
    /// driver allows (one for the qemu driver), never waiting for a domain
    /// libvirt is busy with.
    /// A domain whose QEMU does not answer in time is listed with
    /// [`LiveDomain::unresponsive`] set, and the others all the same.
    fn domains(&mut self) -> Result<Vec<LiveDomain>, HvError>;
    /// The persistent (inactive) XML of a domain, for adopting it (for a
    /// transient domain, libvirt gives its live definition).
    fn inactive_xml(&mut self, uuid: &str) -> Result<String, HvError>;
    /// Whether a domain has a persistent definition (a transient one has
    /// none: its `<currentMemory>` is the balloon's size of the moment, not
    /// the size it booted with). Only asked for a domain to adopt.
    fn persistent(&mut self, uuid: &str) -> Result<bool, HvError>;
    /// Sets a domain's balloon target (live only), in KiB.
    fn set_memory(&mut self, uuid: &str, kib: u64) -> Result<(), HvError>;
    /// Turns on (live only) the guest's balloon statistics every `seconds`.
    fn set_stats_period(&mut self, uuid: &str, seconds: u32) -> Result<(), HvError>;
    /// ksm-balloon's metadata element of a running domain (its live
    /// definition), `None` when it has none. Only `reload` asks for it.
    fn metadata(&mut self, uuid: &str) -> Result<Option<String>, HvError>;
    /// The calls made so far.
    fn calls(&self) -> CallCount;
}
