//! The libvirt edge: one bulk statistics call per pass
//! (`virConnectGetAllDomainStats` with the state and balloon groups) and one
//! `virDomainSetMemoryFlags(..., VIR_DOMAIN_AFFECT_LIVE)` per VM whose target
//! moved. Behind the [`Hypervisor`] trait so the pass can be tested with
//! faults a real daemon will not produce on demand.
//!
//! The `virt` crate's `all_domain_stats` leaves the records' typed parameters
//! unread and leaks the records, so the bulk call is made here through
//! `virt::sys`, the records read and freed with `virDomainStatsRecordListFree`.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::raw::c_char;

use serde::Serialize;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

/// A running (or paused) domain as one bulk statistics call reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveDomain {
    /// The domain's UUID, lower case.
    pub uuid: String,
    /// The domain's name.
    pub name: String,
    /// Running (not paused, not shutting down).
    pub running: bool,
    /// The balloon's current size, in KiB.
    pub current_kib: u64,
    /// The domain's maximum (boot-time) memory, in KiB.
    pub maximum_kib: u64,
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
}

/// What can go wrong talking to the hypervisor.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// Could not connect at all.
    #[error("cannot connect to libvirt at {uri}: {message}")]
    Connect {
        /// The URI tried.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// The domain is gone (destroyed since the statistics were read).
    #[error("domain {name:?} no longer exists: {message}")]
    Gone {
        /// The domain.
        name: String,
        /// libvirt's message.
        message: String,
    },
    /// The domain refused (no balloon driver yet, shutting down, ...).
    #[error("domain {name:?} refused: {message}")]
    Refused {
        /// The domain.
        name: String,
        /// libvirt's message.
        message: String,
    },
    /// The connection to libvirtd was lost mid-pass.
    #[error("lost the connection to libvirt at {uri}: {message}")]
    Lost {
        /// The URI.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// Any other libvirt failure.
    #[error("libvirt call {call} failed: {message}")]
    Call {
        /// The call.
        call: &'static str,
        /// libvirt's message.
        message: String,
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
    /// driver allows (one for the qemu driver).
    fn domains(&mut self) -> Result<Vec<LiveDomain>, HvError>;
    /// The persistent (inactive) XML of a domain, for adopting it.
    fn inactive_xml(&mut self, uuid: &str) -> Result<String, HvError>;
    /// Sets a domain's balloon target (live only), in KiB.
    fn set_memory(&mut self, uuid: &str, kib: u64) -> Result<(), HvError>;
    /// The calls made so far.
    fn calls(&self) -> CallCount;
}

/// One domain's bulk statistics: its handle and its numeric fields.
type StatsRecord = (Domain, HashMap<String, u64>);

/// The real thing: a libvirt connection.
pub struct Libvirt {
    uri: String,
    conn: Connect,
    handles: HashMap<String, (String, Domain)>,
    calls: CallCount,
}

/// Silences libvirt's default error printer (we report errors ourselves).
pub fn quiet_libvirt() {
    virt::error::clear_error_callback();
}

fn typed_u64(p: &sys::virTypedParameter) -> Option<u64> {
    // SAFETY: the union member read is the one `type_` names.
    unsafe {
        match p.type_ as u32 {
            sys::VIR_TYPED_PARAM_INT => u64::try_from(p.value.i).ok(),
            sys::VIR_TYPED_PARAM_UINT => Some(u64::from(p.value.ui)),
            sys::VIR_TYPED_PARAM_LLONG => u64::try_from(p.value.l).ok(),
            sys::VIR_TYPED_PARAM_ULLONG => Some(p.value.ul),
            _ => None,
        }
    }
}

fn field_name(p: &sys::virTypedParameter) -> &str {
    // SAFETY: libvirt NUL-terminates the fixed-size field name.
    let c = unsafe { CStr::from_ptr(p.field.as_ptr() as *const c_char) };
    c.to_str().unwrap_or("")
}

impl Libvirt {
    /// Opens a connection to `uri`.
    pub fn open(uri: &str) -> Result<Libvirt, HvError> {
        let conn = Connect::open(Some(uri)).map_err(|e| HvError::Connect {
            uri: uri.to_string(),
            message: e.message().to_string(),
        })?;
        Ok(Libvirt {
            uri: uri.to_string(),
            conn,
            handles: HashMap::new(),
            calls: CallCount::default(),
        })
    }

    /// Wraps an open connection (tests keep a clone of it to look at the
    /// domains afterwards: the test driver's state lives only as long as
    /// its connection).
    pub fn from_connect(uri: &str, conn: Connect) -> Libvirt {
        Libvirt {
            uri: uri.to_string(),
            conn,
            handles: HashMap::new(),
            calls: CallCount::default(),
        }
    }

    /// The connection, for tests that look at the domains themselves.
    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    fn classify(&self, call: &'static str, name: &str, e: VirtError) -> HvError {
        let message = e.message().to_string();
        if !self.conn.is_alive().unwrap_or(false) {
            return HvError::Lost {
                uri: self.uri.clone(),
                message,
            };
        }
        use virt::enumutil::Enum;
        match e.code() {
            Enum::Known(ErrorNumber::NoDomain) => HvError::Gone {
                name: name.to_string(),
                message,
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
                message,
            },
            _ => HvError::Call { call, message },
        }
    }

    fn bulk(&mut self) -> Result<Vec<StatsRecord>, HvError> {
        let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
        self.calls.bulk_stats += 1;
        // SAFETY: a valid connection; libvirt allocates the record list.
        let n = unsafe {
            sys::virConnectGetAllDomainStats(
                self.conn.as_ptr(),
                sys::VIR_DOMAIN_STATS_STATE | sys::VIR_DOMAIN_STATS_BALLOON,
                &mut records,
                sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
            )
        };
        if n < 0 {
            let e = VirtError::last_error();
            return Err(self.classify("virConnectGetAllDomainStats", "", e));
        }
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            // SAFETY: libvirt returned `n` valid record pointers.
            let rec = unsafe { &**records.add(i) };
            // SAFETY: take our own reference; the list free drops libvirt's.
            let dom = unsafe {
                sys::virDomainRef(rec.dom);
                Domain::from_ptr(rec.dom)
            };
            let mut fields = HashMap::new();
            for j in 0..rec.nparams.max(0) as usize {
                // SAFETY: `nparams` valid parameters follow `params`.
                let p = unsafe { &*rec.params.add(j) };
                if let Some(v) = typed_u64(p) {
                    fields.insert(field_name(p).to_string(), v);
                }
            }
            out.push((dom, fields));
        }
        // SAFETY: the list came from virConnectGetAllDomainStats.
        unsafe { sys::virDomainStatsRecordListFree(records) };
        Ok(out)
    }
}

impl Hypervisor for Libvirt {
    fn domains(&mut self) -> Result<Vec<LiveDomain>, HvError> {
        let records = self.bulk()?;
        let mut out = Vec::with_capacity(records.len());
        self.handles.clear();
        for (dom, f) in records {
            let name = dom.name().unwrap_or_default();
            let uuid = dom.uuid_string().unwrap_or_default().to_ascii_lowercase();
            let running = f.get("state.state") == Some(&u64::from(sys::VIR_DOMAIN_RUNNING));
            let (current_kib, maximum_kib) =
                match (f.get("balloon.current"), f.get("balloon.maximum")) {
                    (Some(&c), Some(&m)) => (c, m),
                    _ => {
                        // Drivers whose bulk call has no balloon group (the test
                        // driver): one info call for this domain.
                        self.calls.per_domain_info += 1;
                        match dom.info() {
                            Ok(i) => (i.memory, i.max_mem),
                            Err(e) => {
                                let err = self.classify("virDomainGetInfo", &name, e);
                                if err.is_fatal() {
                                    return Err(err);
                                }
                                log::warn!("{err}; skipped this pass");
                                continue;
                            }
                        }
                    }
                };
            out.push(LiveDomain {
                uuid: uuid.clone(),
                name: name.clone(),
                running,
                current_kib,
                maximum_kib,
            });
            self.handles.insert(uuid, (name, dom));
        }
        Ok(out)
    }

    fn inactive_xml(&mut self, uuid: &str) -> Result<String, HvError> {
        let Some((name, dom)) = self.handles.get(uuid) else {
            return Err(HvError::Gone {
                name: uuid.to_string(),
                message: "not among the active domains".into(),
            });
        };
        self.calls.xml += 1;
        let r = dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE);
        let name = name.clone();
        r.map_err(|e| self.classify("virDomainGetXMLDesc", &name, e))
    }

    fn set_memory(&mut self, uuid: &str, kib: u64) -> Result<(), HvError> {
        let Some((name, dom)) = self.handles.get(uuid) else {
            return Err(HvError::Gone {
                name: uuid.to_string(),
                message: "not among the active domains".into(),
            });
        };
        self.calls.set_memory += 1;
        let r = dom.set_memory_flags(kib, sys::VIR_DOMAIN_AFFECT_LIVE);
        let name = name.clone();
        r.map_err(|e| self.classify("virDomainSetMemoryFlags", &name, e))
    }

    fn calls(&self) -> CallCount {
        self.calls
    }
}
