//! The real hypervisor: a libvirt connection. One bulk statistics call per
//! pass (`virConnectGetAllDomainStats` with the state, balloon and block
//! groups, `NOWAIT` so it never blocks on a domain libvirt is busy with,
//! such as one being started); one `virDomainSetMemoryFlags(...,
//! VIR_DOMAIN_AFFECT_LIVE)` per VM whose target moved.
//!
//! The bulk call is made through `virt::sys` (the crate's wrapper leaves
//! the records' typed parameters unread and leaks the records): the list is
//! held by `StatsList`, whose Drop frees it; each record's domain gets a
//! reference of its own ([`virDomainRef`](sys::virDomainRef), checked)
//! before the list goes.

use std::collections::HashMap;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

use super::typed;
use super::{CallCount, GuestStats, HvError, Hypervisor, LibvirtMessage, LiveDomain, Sizes};

/// Silences libvirt's default error printer (we report errors ourselves).
pub fn quiet_libvirt() {
    virt::error::clear_error_callback();
}

fn message(e: &VirtError) -> LibvirtMessage {
    LibvirtMessage {
        message: e.message().to_string(),
    }
}

/// The record list of one bulk call, freed when dropped.
struct StatsList {
    ptr: *mut sys::virDomainStatsRecordPtr,
    len: usize,
}

impl StatsList {
    /// The records, borrowed from the list.
    fn records(&self) -> impl Iterator<Item = &sys::virDomainStatsRecord> + '_ {
        (0..self.len).map(move |i| {
            // SAFETY: libvirt returned `len` valid, non-null record
            // pointers at `ptr`; they live as long as the list (self).
            unsafe { &**self.ptr.add(i) }
        })
    }
}

impl Drop for StatsList {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: the list came from virConnectGetAllDomainStats and is
            // freed once, here.
            unsafe { sys::virDomainStatsRecordListFree(self.ptr) };
        }
    }
}

/// The parameters of a record, as a slice.
fn params(rec: &sys::virDomainStatsRecord) -> &[sys::virTypedParameter] {
    let n = usize::try_from(rec.nparams).unwrap_or(0);
    if n == 0 || rec.params.is_null() {
        return &[];
    }
    // SAFETY: libvirt gives `nparams` valid parameters at `params`, owned
    // by the record (which outlives the returned borrow).
    unsafe { std::slice::from_raw_parts(rec.params, n) }
}

/// A domain's figures from its bulk-call numbers. Pure.
pub fn read_record(name: String, uuid: String, f: &HashMap<String, u64>) -> LiveDomain {
    let get = |k: &str| f.get(k).copied();
    let sizes = match (get("balloon.current"), get("balloon.maximum")) {
        (Some(c), Some(m)) => Some(Sizes {
            current_kib: c,
            maximum_kib: m,
        }),
        _ => None,
    };
    let blocks = get("block.count").unwrap_or(0);
    let block_rd_bytes = (blocks > 0)
        .then(|| {
            (0..blocks)
                .map(|i| get(&format!("block.{i}.rd.bytes")))
                .try_fold(0u64, |acc, v| v.map(|v| acc.saturating_add(v)))
        })
        .flatten();
    LiveDomain {
        uuid,
        name,
        running: get("state.state") == Some(u64::from(sys::VIR_DOMAIN_RUNNING)),
        sizes,
        guest: GuestStats {
            unused_kib: get("balloon.unused"),
            usable_kib: get("balloon.usable"),
            available_kib: get("balloon.available"),
            disk_caches_kib: get("balloon.disk_caches"),
            last_update: get("balloon.last-update"),
            swap_in_kib: get("balloon.swap_in"),
            swap_out_kib: get("balloon.swap_out"),
            major_fault: get("balloon.major_fault"),
            minor_fault: get("balloon.minor_fault"),
        },
        block_rd_bytes,
    }
}

/// One domain's bulk statistics: its handle and its numeric fields.
type StatsRecord = (Domain, HashMap<String, u64>);

/// The real thing: a libvirt connection.
pub struct Libvirt {
    // Declared before `conn`: the domain handles are dropped first.
    handles: HashMap<String, (String, Domain)>,
    uri: String,
    conn: Connect,
    calls: CallCount,
}

impl Libvirt {
    /// Opens a connection to `uri`.
    pub fn open(uri: &str) -> Result<Libvirt, HvError> {
        let conn = Connect::open(Some(uri)).map_err(|e| HvError::Connect {
            uri: uri.to_string(),
            source: message(&e),
        })?;
        Ok(Libvirt::from_connect(uri, conn))
    }

    /// Wraps an open connection (tests keep a clone of it to look at the
    /// domains afterwards: the test driver's state lives only as long as
    /// its connection).
    pub fn from_connect(uri: &str, conn: Connect) -> Libvirt {
        Libvirt {
            handles: HashMap::new(),
            uri: uri.to_string(),
            conn,
            calls: CallCount::default(),
        }
    }

    /// The connection, for tests that look at the domains themselves.
    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    fn classify(&self, call: &'static str, name: &str, e: VirtError) -> HvError {
        let source = message(&e);
        if !self.conn.is_alive().unwrap_or(false) {
            return HvError::Lost {
                uri: self.uri.clone(),
                source,
            };
        }
        use virt::enumutil::Enum;
        match e.code() {
            Enum::Known(ErrorNumber::NoDomain) => HvError::Gone {
                name: name.to_string(),
                source,
            },
            Enum::Known(ErrorNumber::OperationInvalid)
            | Enum::Known(ErrorNumber::OperationFailed)
            | Enum::Known(ErrorNumber::OperationUnsupported)
            | Enum::Known(ErrorNumber::NoSupport)
            | Enum::Known(ErrorNumber::ConfigUnsupported)
            | Enum::Known(ErrorNumber::InvalidArg)
            | Enum::Known(ErrorNumber::AgentUnresponsive)
            | Enum::Known(ErrorNumber::OperationTimeout)
            | Enum::Known(ErrorNumber::InternalError) => HvError::Refused {
                name: name.to_string(),
                source,
            },
            _ => HvError::Call { call, source },
        }
    }

    fn bulk(&mut self) -> Result<Vec<StatsRecord>, HvError> {
        let mut ptr: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
        self.calls.bulk_stats += 1;
        // SAFETY: a valid connection; libvirt allocates the record list and
        // stores it in `ptr`, which StatsList then owns.
        let n = unsafe {
            sys::virConnectGetAllDomainStats(
                self.conn.as_ptr(),
                sys::VIR_DOMAIN_STATS_STATE
                    | sys::VIR_DOMAIN_STATS_BALLOON
                    | sys::VIR_DOMAIN_STATS_BLOCK,
                &mut ptr,
                sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
                    | sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
            )
        };
        if n < 0 {
            let e = VirtError::last_error();
            return Err(self.classify("virConnectGetAllDomainStats", "", e));
        }
        let list = StatsList {
            ptr,
            len: usize::try_from(n).unwrap_or(0),
        };
        let mut out = Vec::with_capacity(list.len);
        for rec in list.records() {
            // SAFETY: `rec.dom` is a valid domain the list holds a
            // reference to; taking our own lets the handle outlive the list.
            if unsafe { sys::virDomainRef(rec.dom) } < 0 {
                let e = VirtError::last_error();
                return Err(self.classify("virDomainRef", "", e));
            }
            // SAFETY: we own the reference just taken; Domain frees it.
            let dom = unsafe { Domain::from_ptr(rec.dom) };
            out.push((dom, typed::numbers(params(rec))));
        }
        drop(list);
        Ok(out)
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        // Every domain handle goes before the connection it belongs to.
        self.handles.clear();
    }
}

impl Hypervisor for Libvirt {
    fn domains(&mut self) -> Result<Vec<LiveDomain>, HvError> {
        let records = self.bulk()?;
        let mut out = Vec::with_capacity(records.len());
        self.handles.clear();
        for (dom, mut f) in records {
            let name = dom.name().unwrap_or_default();
            let uuid = dom.uuid_string().unwrap_or_default().to_ascii_lowercase();
            if !(f.contains_key("balloon.current") && f.contains_key("balloon.maximum")) {
                // Drivers whose bulk call has no balloon group (the test
                // driver): one info call for this domain.
                self.calls.per_domain_info += 1;
                match dom.info() {
                    Ok(i) => {
                        f.insert("balloon.current".into(), i.memory);
                        f.insert("balloon.maximum".into(), i.max_mem);
                    }
                    Err(e) => {
                        let err = self.classify("virDomainGetInfo", &name, e);
                        if err.is_fatal() {
                            return Err(err);
                        }
                        // Listed without sizes: the pass keeps its record
                        // and leaves it alone this time.
                        log::warn!(
                            "{}; its balloon is left alone this pass",
                            crate::errors::chain(&err)
                        );
                    }
                }
            }
            out.push(read_record(name.clone(), uuid.clone(), &f));
            self.handles.insert(uuid, (name, dom));
        }
        Ok(out)
    }

    fn inactive_xml(&mut self, uuid: &str) -> Result<String, HvError> {
        let Some((name, dom)) = self.handles.get(uuid) else {
            return Err(gone(uuid));
        };
        self.calls.xml += 1;
        let r = dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE);
        let name = name.clone();
        r.map_err(|e| self.classify("virDomainGetXMLDesc", &name, e))
    }

    fn set_memory(&mut self, uuid: &str, kib: u64) -> Result<(), HvError> {
        let Some((name, dom)) = self.handles.get(uuid) else {
            return Err(gone(uuid));
        };
        self.calls.set_memory += 1;
        let r = dom.set_memory_flags(kib, sys::VIR_DOMAIN_AFFECT_LIVE);
        let name = name.clone();
        r.map_err(|e| self.classify("virDomainSetMemoryFlags", &name, e))
    }

    fn set_stats_period(&mut self, uuid: &str, seconds: u32) -> Result<(), HvError> {
        let Some((name, dom)) = self.handles.get(uuid) else {
            return Err(gone(uuid));
        };
        self.calls.stats_period += 1;
        let period = i32::try_from(seconds).unwrap_or(i32::MAX);
        let r = dom.set_memory_stats_period(period, sys::VIR_DOMAIN_AFFECT_LIVE);
        let name = name.clone();
        r.map_err(|e| self.classify("virDomainSetMemoryStatsPeriod", &name, e))
    }

    fn metadata(&mut self, uuid: &str) -> Result<Option<String>, HvError> {
        let Some((name, dom)) = self.handles.get(uuid) else {
            return Err(gone(uuid));
        };
        self.calls.metadata += 1;
        let r = dom.metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(crate::metadata::NAMESPACE),
            sys::VIR_DOMAIN_AFFECT_LIVE,
        );
        let name = name.clone();
        match r {
            Ok(text) => Ok(Some(text)),
            Err(e)
                if matches!(
                    e.code(),
                    virt::enumutil::Enum::Known(ErrorNumber::NoDomainMetadata)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.classify("virDomainGetMetadata", &name, e)),
        }
    }

    fn calls(&self) -> CallCount {
        self.calls
    }
}

fn gone(uuid: &str) -> HvError {
    HvError::Gone {
        name: uuid.to_string(),
        source: LibvirtMessage {
            message: "not among the active domains".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn a_qemu_record_with_guest_statistics_and_two_disks() {
        // The fields a qemu domain's bulk record holds (libvirt 9.0).
        let f = numbers(&[
            ("state.state", 1),
            ("state.reason", 1),
            ("balloon.current", 200_000),
            ("balloon.maximum", 262_144),
            ("balloon.swap_in", 0),
            ("balloon.swap_out", 0),
            ("balloon.major_fault", 12),
            ("balloon.minor_fault", 3456),
            ("balloon.unused", 90_000),
            ("balloon.available", 150_000),
            ("balloon.usable", 120_000),
            ("balloon.last-update", 1_800_000_000),
            ("balloon.disk_caches", 20_000),
            ("balloon.rss", 190_000),
            ("block.count", 2),
            ("block.0.rd.bytes", 1000),
            ("block.1.rd.bytes", 24),
        ]);
        let d = read_record("g1".into(), "u1".into(), &f);
        assert!(d.running);
        assert_eq!(
            d.sizes,
            Some(Sizes {
                current_kib: 200_000,
                maximum_kib: 262_144
            })
        );
        assert_eq!(d.guest.usable_kib, Some(120_000));
        assert_eq!(d.guest.unused_kib, Some(90_000));
        assert_eq!(d.guest.available_kib, Some(150_000));
        assert_eq!(d.guest.last_update, Some(1_800_000_000));
        assert_eq!(d.block_rd_bytes, Some(1024));
    }

    #[test]
    fn a_busy_or_paused_domain_without_guest_figures() {
        // NOWAIT on a domain libvirt is busy with (or no statistics period):
        // sizes only; paused while it starts (state 3).
        let f = numbers(&[
            ("state.state", 3),
            ("balloon.current", 262_144),
            ("balloon.maximum", 262_144),
            ("block.count", 1),
        ]);
        let d = read_record("g".into(), "u".into(), &f);
        assert!(!d.running);
        assert_eq!(d.guest, GuestStats::default());
        assert_eq!(d.block_rd_bytes, None, "a disk without its figure");
        let d = read_record("g".into(), "u".into(), &numbers(&[("state.state", 1)]));
        assert_eq!(d.sizes, None);
    }

    #[test]
    fn record_parameters_from_a_hand_built_array() {
        use super::typed::tests::param;
        let params = [
            param(b"state.state", sys::VIR_TYPED_PARAM_INT, 1),
            param(b"balloon.current", sys::VIR_TYPED_PARAM_ULLONG, 163_840),
            param(b"balloon.maximum", sys::VIR_TYPED_PARAM_ULLONG, 262_144),
        ];
        // SAFETY: an all-zero record is valid; it borrows `params` only for
        // the reads below and is never freed by libvirt.
        let mut rec: sys::virDomainStatsRecord = unsafe { std::mem::zeroed() };
        rec.params = params.as_ptr() as *mut sys::virTypedParameter;
        rec.nparams = params.len() as i32;
        let d = read_record("g".into(), "u".into(), &typed::numbers(super::params(&rec)));
        assert_eq!(d.sizes.map(|s| s.current_kib), Some(163_840));
        rec.nparams = 0;
        assert!(super::params(&rec).is_empty());
        rec.nparams = -1;
        assert!(super::params(&rec).is_empty());
    }
}
