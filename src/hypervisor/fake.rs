//! An in-memory hypervisor for the pass's unit tests (not a wrapper of
//! libvirt's test driver): domains with balloons that move when asked (or
//! stop short, as a guest that cannot give memory does), and the faults a
//! real daemon does not produce on demand: a domain whose figures cannot be
//! read, a resize refused, a domain gone, the connection lost after a given
//! number of resizes, a domain whose QEMU does not answer (what the real
//! edge reports once its calls' deadlines pass).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::{CallCount, GuestStats, HvError, Hypervisor, LibvirtMessage, LiveDomain, Sizes};

/// One fake domain.
#[derive(Clone, Debug)]
pub struct FakeDomain {
    /// What the bulk call reports.
    pub live: LiveDomain,
    /// Its persistent definition (for adoption); `None`: a transient domain
    /// (the definition is then its live XML, as libvirt gives it).
    pub xml: Option<String>,
    /// The smallest size its balloon reaches when asked for less (a guest
    /// that cannot give more); `None`: it reaches any target.
    pub lowest_kib: Option<u64>,
    /// ksm-balloon's metadata element in its live definition.
    pub metadata: Option<String>,
}

impl FakeDomain {
    /// A running domain of `current`/`maximum` KiB.
    pub fn new(name: &str, uuid: &str, current_kib: u64, maximum_kib: u64) -> FakeDomain {
        FakeDomain {
            live: LiveDomain {
                uuid: uuid.to_string(),
                name: name.to_string(),
                running: true,
                sizes: Some(Sizes {
                    current_kib,
                    maximum_kib,
                }),
                guest: GuestStats::default(),
                block_rd_bytes: None,
                unresponsive: None,
            },
            xml: None,
            lowest_kib: None,
            metadata: None,
        }
    }
}

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The domain refuses resizes.
    Refuse,
    /// The domain is gone by the time it is resized.
    Gone,
}

/// The fake hypervisor.
#[derive(Debug, Default)]
pub struct FakeHv {
    /// Domains by UUID.
    pub domains: BTreeMap<String, FakeDomain>,
    /// Domains whose sizes cannot be read this pass.
    pub unreadable: BTreeSet<String>,
    /// Domains whose QEMU does not answer: listed as unresponsive, their
    /// resizes and statistics periods time out (and change nothing).
    pub hung: BTreeSet<String>,
    /// Per-domain faults on resize.
    pub faults: BTreeMap<String, Fault>,
    /// The connection is lost after this many resizes succeeded.
    pub lost_after: Option<u32>,
    /// Every resize asked, in order: (uuid, KiB).
    pub resizes: Vec<(String, u64)>,
    /// Every statistics period set: (uuid, seconds).
    pub stats_periods: Vec<(String, u32)>,
    calls: CallCount,
}

fn msg(text: &str) -> LibvirtMessage {
    LibvirtMessage {
        message: text.to_string(),
    }
}

impl FakeHv {
    /// A fake hypervisor running `domains`.
    pub fn new(domains: impl IntoIterator<Item = FakeDomain>) -> FakeHv {
        FakeHv {
            domains: domains
                .into_iter()
                .map(|d| (d.live.uuid.clone(), d))
                .collect(),
            ..FakeHv::default()
        }
    }

    /// A domain's balloon size now.
    pub fn current(&self, uuid: &str) -> Option<u64> {
        self.domains
            .get(uuid)
            .and_then(|d| d.live.sizes)
            .map(|s| s.current_kib)
    }

    fn timeout(&self, uuid: &str, call: &'static str) -> HvError {
        HvError::Unresponsive {
            name: self
                .domains
                .get(uuid)
                .map_or(uuid.to_string(), |d| d.live.name.clone()),
            call,
            secs: 5,
        }
    }

    fn lost(&self) -> HvError {
        HvError::Lost {
            uri: "fake:///".into(),
            source: msg("the fake connection was closed"),
        }
    }
}

/// One [`FakeHv`] shared between a test and the pass it runs: a pass takes
/// its hypervisor by value, and the test keeps a clone to change the fake
/// between passes and look at it after.
#[derive(Clone)]
pub struct Shared(pub Rc<RefCell<FakeHv>>);

impl Hypervisor for Shared {
    fn domains(&mut self) -> Result<Vec<LiveDomain>, HvError> {
        self.0.borrow_mut().domains()
    }
    fn inactive_xml(&mut self, uuid: &str) -> Result<String, HvError> {
        self.0.borrow_mut().inactive_xml(uuid)
    }
    fn persistent(&mut self, uuid: &str) -> Result<bool, HvError> {
        self.0.borrow_mut().persistent(uuid)
    }
    fn set_memory(&mut self, uuid: &str, kib: u64) -> Result<(), HvError> {
        self.0.borrow_mut().set_memory(uuid, kib)
    }
    fn set_stats_period(&mut self, uuid: &str, seconds: u32) -> Result<(), HvError> {
        self.0.borrow_mut().set_stats_period(uuid, seconds)
    }
    fn metadata(&mut self, uuid: &str) -> Result<Option<String>, HvError> {
        self.0.borrow_mut().metadata(uuid)
    }
    fn calls(&self) -> CallCount {
        self.0.borrow().calls()
    }
}

impl Hypervisor for FakeHv {
    fn domains(&mut self) -> Result<Vec<LiveDomain>, HvError> {
        self.calls.bulk_stats += 1;
        Ok(self
            .domains
            .values()
            .map(|d| {
                let mut l = d.live.clone();
                if self.unreadable.contains(&l.uuid) {
                    l.sizes = None;
                }
                if self.hung.contains(&l.uuid) && l.running {
                    l.guest = GuestStats::default();
                    l.block_rd_bytes = None;
                    l.unresponsive = Some("its QEMU did not answer within 5 s".into());
                }
                l
            })
            .collect())
    }

    fn inactive_xml(&mut self, uuid: &str) -> Result<String, HvError> {
        self.calls.xml += 1;
        let d = self.domains.get(uuid).ok_or_else(|| HvError::Gone {
            name: uuid.to_string(),
            source: msg("no such domain"),
        })?;
        Ok(d.xml.clone().unwrap_or_else(|| {
            // A transient domain: libvirt gives its live definition, whose
            // <currentMemory> is the balloon's size now.
            let s = d.live.sizes.unwrap_or(Sizes {
                current_kib: 0,
                maximum_kib: 0,
            });
            format!(
                "<domain><name>{}</name><uuid>{}</uuid><memory>{}</memory><currentMemory>{}</currentMemory></domain>",
                d.live.name, d.live.uuid, s.maximum_kib, s.current_kib
            )
        }))
    }

    fn persistent(&mut self, uuid: &str) -> Result<bool, HvError> {
        let d = self.domains.get(uuid).ok_or_else(|| HvError::Gone {
            name: uuid.to_string(),
            source: msg("no such domain"),
        })?;
        Ok(d.xml.is_some())
    }

    fn set_memory(&mut self, uuid: &str, kib: u64) -> Result<(), HvError> {
        if self.lost_after == Some(self.calls.set_memory) {
            return Err(self.lost());
        }
        self.calls.set_memory += 1;
        if self.hung.contains(uuid) {
            return Err(self.timeout(uuid, "virDomainSetMemoryFlags"));
        }
        self.resizes.push((uuid.to_string(), kib));
        let d = self.domains.get_mut(uuid).ok_or_else(|| HvError::Gone {
            name: uuid.to_string(),
            source: msg("no such domain"),
        })?;
        match self.faults.get(uuid) {
            Some(Fault::Refuse) => {
                return Err(HvError::Refused {
                    name: d.live.name.clone(),
                    source: msg("the balloon driver is not loaded"),
                })
            }
            Some(Fault::Gone) => {
                return Err(HvError::Gone {
                    name: d.live.name.clone(),
                    source: msg("domain not found"),
                })
            }
            None => {}
        }
        if let Some(s) = d.live.sizes.as_mut() {
            s.current_kib = kib.max(d.lowest_kib.unwrap_or(0)).min(s.maximum_kib);
        }
        Ok(())
    }

    fn set_stats_period(&mut self, uuid: &str, seconds: u32) -> Result<(), HvError> {
        self.calls.stats_period += 1;
        if self.hung.contains(uuid) {
            return Err(self.timeout(uuid, "virDomainSetMemoryStatsPeriod"));
        }
        self.stats_periods.push((uuid.to_string(), seconds));
        Ok(())
    }

    fn metadata(&mut self, uuid: &str) -> Result<Option<String>, HvError> {
        self.calls.metadata += 1;
        let d = self.domains.get(uuid).ok_or_else(|| HvError::Gone {
            name: uuid.to_string(),
            source: msg("no such domain"),
        })?;
        Ok(d.metadata.clone())
    }

    fn calls(&self) -> CallCount {
        self.calls
    }
}
