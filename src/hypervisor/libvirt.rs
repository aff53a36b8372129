//! The real hypervisor: a libvirt connection. One bulk statistics call per
//! pass (`virConnectGetAllDomainStats` with the state, balloon and block
//! groups, `NOWAIT` so it never blocks on a domain libvirt is busy with,
//! such as one being started); one `virDomainSetMemoryFlags(...,
//! VIR_DOMAIN_AFFECT_LIVE)` per VM whose target moved.
//!
//! Every call that can reach a guest's QEMU monitor is bounded in time
//! ([`super::deadline`]): `NOWAIT` skips only a domain libvirt already
//! holds a job on, and a domain with no job still gets its monitor asked
//! for its balloon and disk figures, which a stopped QEMU never answers.
//! When the bulk call does not come back within its bound, it is
//! abandoned with its connection (calls queued behind an abandoned one on
//! the same connection were seen to hang too), and the pass asks again on
//! a fresh connection: the abandoned call holds the job of the domain it
//! waits for, so `NOWAIT` now reports that domain busy and goes past it.
//! Each try pins one more QEMU that does not answer; when the pass's
//! budget is spent first, the domains are listed without their monitors
//! (the state group, and `virDomainGetInfo`, which answers from what
//! libvirt keeps of QEMU's balloon events) and every running one is left
//! alone. A running domain a bulk call reports without the figures that
//! need its job (libvirt is busy with it: an earlier call, maybe an
//! earlier pass's, still waits for its QEMU) is unresponsive: a resize
//! would wait for that job as well.
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

use std::time::{Duration, Instant};

use super::deadline::{self, Bounds};
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
        unresponsive: None,
    }
}

/// A bulk record of the qemu driver (it has the balloon group) without the
/// figures libvirt reads only while it holds the domain's job
/// (`balloon.rss`, which it adds to every active domain's balloon group
/// once it has the job, balloon device or not): `NOWAIT` found the domain
/// busy. Pure.
pub fn busy(f: &HashMap<String, u64>) -> bool {
    f.contains_key("balloon.maximum") && !f.contains_key("balloon.rss")
}

/// The monitor-dependent groups: balloon (the guest's figures) and block.
const MONITOR_GROUPS: u32 = sys::VIR_DOMAIN_STATS_BALLOON | sys::VIR_DOMAIN_STATS_BLOCK;

/// One bulk call on `conn` (any thread). Its records, each with a
/// reference of its own to its domain.
fn bulk_call(conn: &Connect, stats: u32, flags: u32) -> Result<Vec<StatsRecord>, VirtError> {
    let mut ptr: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: a valid connection; libvirt allocates the record list and
    // stores it in `ptr`, which StatsList then owns.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), stats, &mut ptr, flags) };
    if n < 0 {
        return Err(VirtError::last_error());
    }
    take_records(ptr, n)
}

fn take_records(
    ptr: *mut sys::virDomainStatsRecordPtr,
    n: std::os::raw::c_int,
) -> Result<Vec<StatsRecord>, VirtError> {
    let list = StatsList {
        ptr,
        len: usize::try_from(n).unwrap_or(0),
    };
    let mut out = Vec::with_capacity(list.len);
    for rec in list.records() {
        // SAFETY: `rec.dom` is a valid domain the list holds a
        // reference to; taking our own lets the handle outlive the list.
        if unsafe { sys::virDomainRef(rec.dom) } < 0 {
            return Err(VirtError::last_error());
        }
        // SAFETY: we own the reference just taken; Domain frees it.
        let dom = unsafe { Domain::from_ptr(rec.dom) };
        out.push((dom, typed::numbers(params(rec))));
    }
    drop(list);
    Ok(out)
}

/// One domain's bulk statistics: its handle and its numeric fields.
type StatsRecord = (Domain, HashMap<String, u64>);

/// The real thing: a libvirt connection.
pub struct Libvirt {
    // Declared before `conn`: the domain handles are dropped first.
    /// Each listed domain: its name, its handle, and the connection
    /// generation the handle belongs to.
    handles: HashMap<String, (String, Domain, u32)>,
    uri: String,
    conn: Connect,
    /// Which connection `conn` is: 0 the first, one more each time a fresh
    /// one replaced a connection a call was abandoned on.
    generation: u32,
    /// A call on `conn` was abandoned (it did not come back in time): the
    /// next call opens a fresh connection rather than queue behind it.
    tainted: bool,
    /// The connections calls were abandoned on: never used again, never
    /// closed (a worker may still be blocked in a call on one).
    abandoned: Vec<Connect>,
    calls: CallCount,
    bounds: Bounds,
    /// The end of the pass's libvirt budget: no call runs past it.
    budget_end: Instant,
}

/// What a worker thread gives back: the call's result, libvirt's error
/// read on the thread that made the call (libvirt keeps it per thread).
type Answer<T> = Result<T, VirtError>;

impl Libvirt {
    /// Opens a connection to `uri`, within the default bounds.
    pub fn open(uri: &str) -> Result<Libvirt, HvError> {
        Libvirt::open_bounded(uri, Bounds::default())
    }

    /// Opens a connection to `uri`; every call made through it is bounded
    /// by `bounds`, the budget counted from now.
    pub fn open_bounded(uri: &str, bounds: Bounds) -> Result<Libvirt, HvError> {
        let started = Instant::now();
        let target = uri.to_string();
        let opened = deadline::bounded(started + bounds.connect, "connect", move || {
            Connect::open(Some(&target))
        });
        let conn = match opened {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Err(HvError::Connect {
                    uri: uri.to_string(),
                    source: message(&e),
                })
            }
            None => {
                return Err(HvError::Connect {
                    uri: uri.to_string(),
                    source: LibvirtMessage {
                        message: format!(
                            "libvirtd did not answer within {} s",
                            bounds.connect.as_secs()
                        ),
                    },
                })
            }
        };
        let mut lv = Libvirt::from_connect(uri, conn);
        lv.bounds = bounds;
        lv.budget_end = started + bounds.budget;
        Ok(lv)
    }

    /// Wraps an open connection (tests keep a clone of it to look at the
    /// domains afterwards: the test driver's state lives only as long as
    /// its connection), with the default bounds from now.
    pub fn from_connect(uri: &str, conn: Connect) -> Libvirt {
        let bounds = Bounds::default();
        Libvirt {
            handles: HashMap::new(),
            uri: uri.to_string(),
            conn,
            generation: 0,
            tainted: false,
            abandoned: Vec::new(),
            calls: CallCount::default(),
            bounds,
            budget_end: Instant::now() + bounds.budget,
        }
    }

    /// The same, with other bounds (tests).
    pub fn with_bounds(mut self, bounds: Bounds) -> Libvirt {
        self.bounds = bounds;
        self.budget_end = Instant::now() + bounds.budget;
        self
    }

    /// The connection, for tests that look at the domains themselves.
    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    /// The deadline of a call bounded by `own`, within the budget.
    fn deadline(&self, own: Duration) -> Instant {
        (Instant::now() + own).min(self.budget_end)
    }

    /// How long a call bounded by `own` waits at most now, seconds (for
    /// messages).
    fn secs(&self, own: Duration) -> u64 {
        self.deadline(own)
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
            .round() as u64
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

    /// Replaces a connection a call was abandoned on by a fresh one. (A
    /// call that never returns holds its connection's place in libvirtd,
    /// which handles a few calls of one connection at a time: calls queued
    /// behind it on the same connection would wait with it.)
    fn fresh(&mut self) -> Result<(), HvError> {
        if !self.tainted {
            return Ok(());
        }
        let target = self.uri.clone();
        let deadline = self.deadline(self.bounds.connect);
        let secs = self.secs(self.bounds.connect);
        match deadline::bounded(deadline, "reconnect", move || Connect::open(Some(&target))) {
            Some(Ok(c)) => {
                let old = std::mem::replace(&mut self.conn, c);
                self.abandoned.push(old);
                self.generation += 1;
                self.tainted = false;
                log::debug!(
                    "a call was abandoned on the libvirt connection: a fresh one for the rest of the pass"
                );
                Ok(())
            }
            Some(Err(e)) => Err(HvError::Connect {
                uri: self.uri.clone(),
                source: message(&e),
            }),
            None => Err(HvError::Connect {
                uri: self.uri.clone(),
                source: LibvirtMessage {
                    message: format!("libvirtd did not answer within {secs} s"),
                },
            }),
        }
    }

    /// Runs `f` on a domain's handle on a worker thread, bounded by the
    /// per-domain bound within the budget; on a fresh connection if a call
    /// was abandoned on the one the handle came from.
    fn on_domain<T, F>(&mut self, uuid: &str, call: &'static str, f: F) -> Result<T, HvError>
    where
        T: Send + 'static,
        F: FnOnce(&Domain) -> Answer<T> + Send + 'static,
    {
        if !self.handles.contains_key(uuid) {
            return Err(gone(uuid));
        }
        self.fresh()?;
        let secs = self.secs(self.bounds.per_domain);
        let deadline = self.deadline(self.bounds.per_domain);
        let (name, dom, generation) = self.handles[uuid].clone();
        let gen_now = self.generation;
        let conn = self.conn.clone();
        let u = uuid.to_string();
        let r = deadline::bounded(deadline, call, move || {
            // A handle of a connection given up: the same domain on this one.
            let dom = if generation == gen_now {
                dom
            } else {
                conn.lookup_domain_by_uuid_string(&u)?
            };
            f(&dom).map(|v| (v, dom))
        });
        match r {
            Some(Ok((v, dom))) => {
                if generation != gen_now {
                    self.handles.insert(uuid.to_string(), (name, dom, gen_now));
                }
                Ok(v)
            }
            Some(Err(e)) => Err(self.classify(call, &name, e)),
            None => {
                self.tainted = true;
                Err(HvError::Unresponsive { name, call, secs })
            }
        }
    }

    /// The bulk call, bounded by `own` within the budget; `None` when it
    /// did not come back in time (the connection is then given up).
    fn bulk(&mut self, own: Duration) -> Option<Result<Vec<StatsRecord>, HvError>> {
        if let Err(e) = self.fresh() {
            return Some(Err(e));
        }
        self.calls.bulk_stats += 1;
        let conn = self.conn.clone();
        let deadline = self.deadline(own);
        let r = deadline::bounded(deadline, "bulk-stats", move || {
            bulk_call(
                &conn,
                sys::VIR_DOMAIN_STATS_STATE | MONITOR_GROUPS,
                sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
                    | sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
            )
        });
        let Some(r) = r else {
            self.tainted = true;
            return None;
        };
        Some(r.map_err(|e| self.classify("virConnectGetAllDomainStats", "", e)))
    }

    /// The last resort when no bulk call came back within the budget:
    /// every active domain's state and balloon sizes without its monitor
    /// (the state group alone, and `virDomainGetInfo`, which answers from
    /// what libvirt holds: QEMU's balloon events), every running one marked
    /// as not answering.
    fn listing(&mut self, tries: u32) -> Result<Vec<StatsRecord>, HvError> {
        self.fresh()?;
        self.calls.bulk_stats += 1;
        let conn = self.conn.clone();
        // The listing gets its own bound even past the budget: without it
        // the pass knows nothing.
        let deadline = Instant::now() + self.bounds.listing;
        let listing =
            deadline::bounded(deadline, "listing", move || -> Answer<Vec<StatsRecord>> {
                let mut records = bulk_call(
                    &conn,
                    sys::VIR_DOMAIN_STATS_STATE,
                    sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
                )?;
                for (dom, f) in records.iter_mut() {
                    // A domain gone meanwhile is listed without sizes.
                    if let Ok(i) = dom.info() {
                        f.insert("balloon.current".into(), i.memory);
                        f.insert("balloon.maximum".into(), i.max_mem);
                    }
                }
                Ok(records)
            });
        let mut records = match listing {
            Some(r) => r.map_err(|e| self.classify("virConnectGetAllDomainStats", "", e))?,
            None => {
                self.tainted = true;
                return Err(HvError::Call {
                    call: "virConnectGetAllDomainStats",
                    source: LibvirtMessage {
                        message: format!(
                            "the bulk statistics call did not come back ({tries} tries), nor the list of domains within {} s",
                            self.bounds.listing.as_secs()
                        ),
                    },
                });
            }
        };
        self.calls.per_domain_info += u32::try_from(records.len()).unwrap_or(u32::MAX);
        for (_, f) in records.iter_mut() {
            f.insert(UNRESPONSIVE_UNREAD.into(), u64::from(tries));
        }
        Ok(records)
    }
}

/// The mark the last-resort listing puts among a record's numbers (never
/// a libvirt field name: those have no `!`): how many bulk calls did not
/// come back.
const UNRESPONSIVE_UNREAD: &str = "!unread-after-tries";

/// Why a running domain is unresponsive, from its record's numbers; `None`
/// when it answered. `tries`: how many bulk calls of the pass did not come
/// back before this record's. Pure.
pub fn unresponsive(f: &HashMap<String, u64>, tries: u32) -> Option<String> {
    if let Some(n) = f.get(UNRESPONSIVE_UNREAD) {
        return Some(format!(
            "no bulk statistics call came back within the pass's libvirt budget ({n} tries): its figures are unknown this pass"
        ));
    }
    if busy(f) {
        let after = if tries > 0 {
            format!(" (this pass's bulk statistics call did not come back {tries} time(s))")
        } else {
            String::new()
        };
        return Some(format!(
            "libvirt is busy with it: a call on it has not returned, so its QEMU does not seem to answer{after}"
        ));
    }
    None
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        // Every domain handle goes before the connection it belongs to.
        // A worker thread still blocked in a call holds its own references
        // to its domain and the connection: nothing here waits for it. A
        // connection a call was abandoned on is not closed at all (closing
        // is a call too); the process exits at the end of the pass.
        self.handles.clear();
        for c in self.abandoned.drain(..) {
            std::mem::forget(c);
        }
        if self.tainted {
            // One more reference, never given back: dropping `conn` then
            // only counts down, it never closes it.
            std::mem::forget(self.conn.clone());
        }
    }
}

impl Hypervisor for Libvirt {
    fn domains(&mut self) -> Result<Vec<LiveDomain>, HvError> {
        // The bulk call blocks on the first domain with no job whose QEMU
        // does not answer, and its abandoned call then holds that domain's
        // job in libvirtd: the next bulk call (NOWAIT, on a fresh
        // connection) reports it busy and goes past it. So each try pins
        // one more QEMU that does not answer, until one comes back or the
        // budget is spent.
        let mut tries = 0u32;
        let records = loop {
            let own = if tries == 0 {
                self.bounds.bulk
            } else {
                self.bounds.per_domain
            };
            let secs = self.secs(own);
            if secs == 0 {
                log::warn!(
                    "no bulk statistics call came back within the pass's libvirt budget ({tries} tries): listing the domains without their monitors; every running one is left alone this pass"
                );
                break self.listing(tries)?;
            }
            match self.bulk(own) {
                Some(r) => break r?,
                None => {
                    tries += 1;
                    log::warn!(
                        "the bulk statistics call did not come back within {secs} s (a QEMU that does not answer its monitor?): asking again on a fresh connection, past the domain it waits for"
                    );
                }
            }
        };
        let mut out = Vec::with_capacity(records.len());
        self.handles.clear();
        for (dom, mut f) in records {
            let name = dom.name().unwrap_or_default();
            let uuid = dom.uuid_string().unwrap_or_default().to_ascii_lowercase();
            let running = f.get("state.state") == Some(&u64::from(sys::VIR_DOMAIN_RUNNING));
            let why = if running {
                unresponsive(&f, tries)
            } else {
                None
            };
            if !(f.contains_key("balloon.current") && f.contains_key("balloon.maximum")) {
                // Drivers whose bulk call has no balloon group (the test
                // driver): one info call for this domain.
                self.calls.per_domain_info += 1;
                let d = dom.clone();
                let info =
                    deadline::bounded(self.deadline(self.bounds.per_domain), "info", move || {
                        d.info()
                    });
                match info {
                    Some(Ok(i)) => {
                        f.insert("balloon.current".into(), i.memory);
                        f.insert("balloon.maximum".into(), i.max_mem);
                    }
                    Some(Err(e)) => {
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
                    None => log::warn!(
                        "domain {name:?} did not answer virDomainGetInfo in time; its balloon is left alone this pass"
                    ),
                }
            }
            let mut d = read_record(name.clone(), uuid.clone(), &f);
            if let Some(why) = why {
                // What the call could not read is not the guest's: no
                // figures at all rather than half of them.
                d.guest = GuestStats::default();
                d.block_rd_bytes = None;
                d.unresponsive = Some(why);
            }
            out.push(d);
            self.handles.insert(uuid, (name, dom, self.generation));
        }
        Ok(out)
    }

    fn inactive_xml(&mut self, uuid: &str) -> Result<String, HvError> {
        self.calls.xml += 1;
        self.on_domain(uuid, "virDomainGetXMLDesc", |dom| {
            dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
        })
    }

    fn persistent(&mut self, uuid: &str) -> Result<bool, HvError> {
        // Part of fetching a definition to adopt a VM: counted with it.
        self.on_domain(uuid, "virDomainIsPersistent", |dom| dom.is_persistent())
    }

    fn set_memory(&mut self, uuid: &str, kib: u64) -> Result<(), HvError> {
        if !self.handles.contains_key(uuid) {
            return Err(gone(uuid));
        }
        self.calls.set_memory += 1;
        self.on_domain(uuid, "virDomainSetMemoryFlags", move |dom| {
            dom.set_memory_flags(kib, sys::VIR_DOMAIN_AFFECT_LIVE)
                .map(|_| ())
        })
    }

    fn set_stats_period(&mut self, uuid: &str, seconds: u32) -> Result<(), HvError> {
        if !self.handles.contains_key(uuid) {
            return Err(gone(uuid));
        }
        self.calls.stats_period += 1;
        let period = i32::try_from(seconds).unwrap_or(i32::MAX);
        self.on_domain(uuid, "virDomainSetMemoryStatsPeriod", move |dom| {
            dom.set_memory_stats_period(period, sys::VIR_DOMAIN_AFFECT_LIVE)
                .map(|_| ())
        })
    }

    fn metadata(&mut self, uuid: &str) -> Result<Option<String>, HvError> {
        if !self.handles.contains_key(uuid) {
            return Err(gone(uuid));
        }
        self.calls.metadata += 1;
        self.on_domain(uuid, "virDomainGetMetadata", |dom| {
            match dom.metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(crate::metadata::NAMESPACE),
                sys::VIR_DOMAIN_AFFECT_LIVE,
            ) {
                Ok(text) => Ok(Some(text)),
                Err(e)
                    if matches!(
                        e.code(),
                        virt::enumutil::Enum::Known(ErrorNumber::NoDomainMetadata)
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
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
    fn a_record_without_the_figures_of_its_job_is_a_busy_domain() {
        // Measured (libvirt 9.0): with the domain's job held by a call
        // that waits for a stopped QEMU, NOWAIT gives only the balloon's
        // sizes and the disks' names; a domain that answered has
        // balloon.rss, with a balloon device or without one.
        let busy_rec = numbers(&[
            ("state.state", 1),
            ("balloon.current", 163_840),
            ("balloon.maximum", 262_144),
            ("block.count", 1),
        ]);
        assert!(busy(&busy_rec));
        let why = unresponsive(&busy_rec, 0).unwrap();
        assert!(why.contains("busy"), "{why}");
        let why = unresponsive(&busy_rec, 1).unwrap();
        assert!(why.contains("did not come back 1 time"), "{why}");
        let no_balloon = numbers(&[
            ("state.state", 1),
            ("balloon.current", 262_144),
            ("balloon.maximum", 262_144),
            ("balloon.rss", 218_228),
        ]);
        assert!(!busy(&no_balloon));
        assert_eq!(unresponsive(&no_balloon, 0), None);
        // the test driver's bulk call has no balloon group: not busy
        assert!(!busy(&numbers(&[("state.state", 1)])));
        // the last resort's mark
        let mut unread = numbers(&[("state.state", 1), ("balloon.rss", 1)]);
        unread.insert(UNRESPONSIVE_UNREAD.into(), 5);
        let why = unresponsive(&unread, 5).unwrap();
        assert!(why.contains("5 tries"), "{why}");
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
