//! ksm-balloon: measures what Linux KSM saved and hands it back to the
//! running libvirt guests through the virtio balloon.
//!
//! The library is the whole tool; `main.rs` only parses the command line and
//! dispatches. The pure parts (policy, parsers, state format) have no I/O;
//! sysfs, meminfo, the state file, libvirt and the clock sit at the edges
//! ([`ksm::read`], [`meminfo::read`], [`state::Store`], [`hypervisor`]).

pub mod admin;
pub mod attribution;
pub mod cli;
pub mod domxml;
pub mod errors;
pub mod governor;
pub mod hook;
pub mod hypervisor;
pub mod ksm;
pub mod ksmcost;
pub mod manual;
pub mod meminfo;
pub mod metadata;
pub mod metrics;
pub mod pass;
pub mod paths;
pub mod policy;
pub mod procksm;
pub mod render;
pub mod state;
pub mod sysconfig;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod units;
