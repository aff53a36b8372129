//! The state file's format: which VMs ksm-balloon manages, with their floors
//! and ceilings, what it last asked of each balloon, and what the last pass
//! did. Pure: [`State::parse`] validates a file's text, [`State::to_json`]
//! writes it; no I/O here (the store is [`super::store`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The format version this build reads and writes. Fields added since
/// version 1 all have defaults, so a version-1 file of an older build reads
/// as it is, and an older build ignores the fields it does not know.
pub const STATE_VERSION: u32 = 1;

/// The largest state file read (a host with thousands of VMs fits easily).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// How a VM came to be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// By the hook, from the XML libvirt gave at `prepare` or `start`.
    Hook,
    /// By the hook at `reconnect`, `attach`, `restore` or `migrate`, with no
    /// floor known before: the XML's current size was taken. Written by
    /// older builds only (still read): such a VM is now left to the
    /// adoption rule, since that size may be a booting balloon's.
    HookLive,
    /// By a pass that found it running but unrecorded.
    Adopted,
}

/// A balloon that does not reach what was asked of it: not asked again for
/// the same thing until `retry_at` (exponential back-off) or until the
/// target moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stuck {
    /// When the pass first found it short of its target.
    pub since: u64,
    /// The size it stays at, KiB.
    pub at_kib: u64,
    /// The next time the same target may be asked again.
    pub retry_at: u64,
    /// How many times it was asked and did not get there.
    pub tries: u32,
}

/// One managed VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The domain's name.
    pub name: String,
    /// The domain's UUID (the key).
    pub uuid: String,
    /// The size it was started with: never shrunk below, in KiB.
    pub floor_kib: u64,
    /// Its boot-time maximum: never grown past, in KiB.
    pub ceiling_kib: u64,
    /// Whether it has a balloon device.
    pub balloon: bool,
    /// How it was recorded.
    pub source: Source,
    /// When it was recorded (seconds since the epoch).
    pub recorded_at: u64,
    /// The last target asked of its balloon, in KiB.
    #[serde(default)]
    pub last_target_kib: Option<u64>,
    /// When that target was asked (seconds since the epoch).
    #[serde(default)]
    pub last_change_at: Option<u64>,
    /// The balloon's size when that target was asked, in KiB: a balloon
    /// between the two is on its way.
    #[serde(default)]
    pub asked_from_kib: Option<u64>,
    /// Set when its balloon does not reach the last target.
    #[serde(default)]
    pub stuck: Option<Stuck>,
    /// What it keeps above its target because it cannot give it back
    /// (safe recall), as last logged, in KiB; 0 outside such an episode.
    #[serde(default)]
    pub kept_kib: u64,
    /// The pass turned the guest's memory statistics on (once per VM).
    #[serde(default)]
    pub stats_period_set: bool,
    /// When the pass set the guest's short recall statistics period (it
    /// asked for fresh figures): a recall step above the reserve is taken
    /// only on figures reported after this. `None` outside a recall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall_stats_at: Option<u64>,
    /// ksm-balloon's metadata of the VM, as read at its start, its
    /// adoption or the last `reload` (manage, weight, floor, ceiling).
    #[serde(default)]
    pub settings: crate::metadata::VmSettings,
    /// The floor and ceiling its definition gives, before the metadata's:
    /// what `reload` checks new metadata against. KiB.
    #[serde(default)]
    pub defined: Option<(u64, u64)>,
    /// Its balloon deflates on guest OOM (`autodeflate='on'`).
    #[serde(default)]
    pub autodeflate: bool,
    /// What the manual-change detector remembers of its balloon.
    #[serde(default)]
    pub manual: Option<crate::manual::History>,
    /// Its disk reads at the last pass, for the demand split.
    #[serde(default)]
    pub io: Option<IoTrack>,
    /// Since when its QEMU does not answer libvirt in time (seconds since
    /// the epoch); `None` while it answers (and absent from the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresponsive_since: Option<u64>,
}

/// A VM's disk reads as the last pass saw them, its demand then, and its
/// live demand (what it holds a part of once its reads stop:
/// [`crate::pass::rows::track_io`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoTrack {
    /// When (seconds since the epoch).
    pub at: u64,
    /// Bytes read from all its disks since it started.
    pub rd_bytes: u64,
    /// Its demand at that pass, in thousandths of a MiB/s (0 when
    /// unknown). The next pass does not use it; it stays in the file so a
    /// state written by this version still loads in the one before, which
    /// requires it.
    pub demand: u64,
    /// Its live demand: the highest read rate of at least
    /// [`crate::pass::rows::READS_STOPPED`] measured since its memory
    /// became full, thousandths of a MiB/s; 0 once its memory is not full.
    /// (Earlier versions kept the last such rate, not the highest;
    /// each reads the other's file.) Absent from
    /// the files of versions before it (0: nothing held until it reads
    /// again).
    #[serde(default)]
    pub live: u64,
}

impl VmRecord {
    /// Moves every instant of the record by `delta` seconds (see
    /// [`State::shift_instants`]).
    pub fn shift_instants(&mut self, delta: i64) {
        let sh = |t: &mut u64| *t = shifted(*t, delta);
        let VmRecord {
            name: _,
            uuid: _,
            floor_kib: _,
            ceiling_kib: _,
            balloon: _,
            source: _,
            recorded_at,
            last_target_kib: _,
            last_change_at,
            asked_from_kib: _,
            stuck,
            kept_kib: _,
            stats_period_set: _,
            recall_stats_at,
            settings: _,
            defined: _,
            autodeflate: _,
            manual,
            io,
            unresponsive_since,
        } = self;
        sh(recorded_at);
        last_change_at.iter_mut().for_each(sh);
        if let Some(Stuck {
            since,
            at_kib: _,
            retry_at,
            tries: _,
        }) = stuck
        {
            sh(since);
            sh(retry_at);
        }
        recall_stats_at.iter_mut().for_each(sh);
        if let Some(h) = manual {
            h.shift_instants(delta);
        }
        if let Some(IoTrack {
            at,
            rd_bytes: _,
            demand: _,
            live: _,
        }) = io
        {
            sh(at);
        }
        unresponsive_since.iter_mut().for_each(sh);
    }

    /// A new record with nothing asked yet.
    pub fn new(
        name: String,
        uuid: String,
        floor_kib: u64,
        ceiling_kib: u64,
        balloon: bool,
        source: Source,
        recorded_at: u64,
    ) -> VmRecord {
        VmRecord {
            name,
            uuid,
            floor_kib,
            ceiling_kib,
            balloon,
            source,
            recorded_at,
            last_target_kib: None,
            last_change_at: None,
            asked_from_kib: None,
            stuck: None,
            kept_kib: 0,
            stats_period_set: false,
            recall_stats_at: None,
            settings: crate::metadata::VmSettings::default(),
            defined: None,
            autodeflate: false,
            manual: None,
            io: None,
            unresponsive_since: None,
        }
    }

    /// The operator handed the VM back at `current_kib` (`release`, or its
    /// metadata turning `manage` on again): that size is where it starts
    /// from. What ksm-balloon asked of the balloon before is void (it was
    /// moved off it on purpose), so it is no longer awaited, and a balloon
    /// away from it is not a guest that cannot reach it.
    pub fn handed_back(&mut self, now: u64, current_kib: u64) {
        self.manual = Some(crate::manual::History::adopted(now, current_kib));
        self.last_target_kib = None;
        self.asked_from_kib = None;
        self.stuck = None;
    }

    /// Why this record, stored under `key`, cannot be right; `None` when
    /// it can. Checked for each record at load, at the save and for each
    /// record the hook's spool brings.
    pub fn impossible(&self, key: &str) -> Option<String> {
        if key != self.uuid {
            Some(format!(
                "stored under key {key:?} but its uuid is {:?}",
                self.uuid
            ))
        } else if self.uuid.is_empty() {
            Some("its uuid is empty".into())
        } else if self.floor_kib == 0 {
            Some("floor is 0".into())
        } else if self.floor_kib > self.ceiling_kib {
            Some(format!(
                "floor {} KiB is above ceiling {} KiB",
                self.floor_kib, self.ceiling_kib
            ))
        } else {
            None
        }
    }

    /// The floor and ceiling its definition gives (before the metadata's).
    pub fn defined_bounds(&self) -> crate::metadata::Bounds {
        let (f, c) = self.defined.unwrap_or((self.floor_kib, self.ceiling_kib));
        crate::metadata::Bounds {
            current_memory_kib: f,
            memory_kib: c,
        }
    }

    /// Applies `settings` (checked against the definition's bounds): the
    /// floor and ceiling become the metadata's where it sets valid ones.
    /// Returns what was wrong with them.
    pub fn apply_settings(
        &mut self,
        settings: crate::metadata::VmSettings,
    ) -> Vec<crate::metadata::Problem> {
        let (eff, problems) = settings.resolve(self.defined_bounds());
        self.floor_kib = eff.floor_kib;
        self.ceiling_kib = eff.ceiling_kib;
        self.settings = settings;
        problems
    }
}

/// A running domain no hook recorded, seen by a pass but not adopted yet:
/// a VM still starting has not inflated its balloon to its configured size,
/// and adopting it now would take a size its balloon driver has not
/// finished reaching for its floor (`crate::pass::plan`, the adoption
/// rule).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The domain's name.
    pub name: String,
    /// When a pass first saw it.
    pub first_seen: u64,
    /// Its balloon's size at the last pass that saw it, KiB: a balloon
    /// that moved since is still on its way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_kib: Option<u64>,
}

/// What the last pass saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPass {
    /// When it ran (seconds since the epoch).
    pub at: u64,
    /// The metric used.
    pub metric: String,
    /// The savings, in KiB.
    pub savings_kib: u64,
    /// The pool (savings × share), in KiB.
    pub pool_kib: u64,
    /// What was handed out after the host guard, in KiB.
    pub budget_kib: u64,
    /// The host's MemAvailable, in KiB.
    pub available_kib: u64,
    /// Resize calls made.
    pub resized: u32,
    /// VMs skipped because libvirt refused or they vanished.
    pub failed: u32,
}

/// The whole state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The format version.
    pub version: u32,
    /// Managed VMs by UUID.
    pub vms: BTreeMap<String, VmRecord>,
    /// Running domains not recorded yet, by UUID (see [`Candidate`]).
    #[serde(default)]
    pub candidates: BTreeMap<String, Candidate>,
    /// Counters kept across passes (for the metrics file).
    #[serde(default)]
    pub counters: crate::metrics::Counters,
    /// The savings the passes of the holding window saw: (time, KiB).
    #[serde(default)]
    pub savings_seen: Vec<(u64, u64)>,
    /// The last pass, if any.
    #[serde(default)]
    pub last_pass: Option<LastPass>,
    /// The wall clock and this boot's monotonic clock, read together by
    /// the pass that saved the state: the next pass tells from them
    /// whether the wall clock stepped in between ([`ClockMark::step`]).
    /// Absent from files of older builds (and of tests that inject no
    /// boot clock): no step is then known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockMark>,
    /// ksmd's CPU time and KSM's scan counters as the last pass read them,
    /// for the next pass's cost rates ([`crate::ksmcost`]); absent before
    /// the first pass that found ksmd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ksm_cost: Option<crate::ksmcost::Mark>,
    /// The KSM governor's memory while `--ksm manage` has KSM's knobs
    /// (the operator's knobs to restore, what it left them at, whether it
    /// stepped back); absent under `observe` ([`crate::governor`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ksm_governor: Option<crate::governor::Memory>,
}

/// The wall clock and `CLOCK_BOOTTIME`, read together by one pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockMark {
    /// The wall clock (seconds since the epoch).
    pub wall: u64,
    /// The boot these readings are of (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// `CLOCK_BOOTTIME`, nanoseconds: only goes forward within a boot,
    /// suspended time included, whatever the wall clock does.
    pub boottime_ns: u64,
}

/// A step of the wall clock smaller than this (seconds) is not one: the
/// two clocks are read a few microseconds apart, but `wall` is whole
/// seconds, and NTP slews small offsets anyway.
pub const CLOCK_STEP_TOLERANCE_SECS: i64 = 2;

impl ClockMark {
    /// How far the wall clock stepped between `earlier` and `self`, in
    /// seconds (positive: forward): the wall time elapsed less the boot
    /// time elapsed. `None` when it did not step (within
    /// [`CLOCK_STEP_TOLERANCE_SECS`]), or when the two readings are of
    /// different boots: across a reboot `CLOCK_BOOTTIME` started over and
    /// says nothing of the time the host was off, so intervals across it
    /// are the wall clock's, as before.
    pub fn step(&self, earlier: &ClockMark) -> Option<i64> {
        if self.boot_id != earlier.boot_id || self.boot_id == crate::state::spool::UNKNOWN_BOOT {
            return None;
        }
        let wall = i128::from(self.wall) - i128::from(earlier.wall);
        // Rounded to whole seconds, as the wall clock is.
        let boot_ns = i128::from(self.boottime_ns) - i128::from(earlier.boottime_ns);
        let boot = (boot_ns + 500_000_000).div_euclid(1_000_000_000);
        let delta = i64::try_from(wall - boot).ok()?;
        (delta.abs() > CLOCK_STEP_TOLERANCE_SECS).then_some(delta)
    }
}

/// `t` moved by `delta` seconds (never below 0).
pub fn shifted(t: u64, delta: i64) -> u64 {
    t.saturating_add_signed(delta)
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            vms: BTreeMap::new(),
            candidates: BTreeMap::new(),
            counters: crate::metrics::Counters::default(),
            savings_seen: Vec::new(),
            last_pass: None,
            clock: None,
            ksm_cost: None,
            ksm_governor: None,
        }
    }
}

/// Why a state file's text was rejected. Printed with its cause
/// ([`crate::errors::chain`]): "not a valid state document: EOF while
/// parsing ...".
#[derive(Debug, thiserror::Error)]
pub enum StateParseError {
    /// Empty file.
    #[error("the file is empty")]
    Empty,
    /// Not JSON, or JSON that is not a state document.
    #[error("not a valid state document")]
    Syntax(#[source] serde_json::Error),
    /// JSON whose `vms` is missing or not a map of records.
    #[error("not a valid state document")]
    Shape(#[source] ShapeError),
    /// Written by a newer ksm-balloon.
    #[error("format version {found} is not supported (this build reads version {STATE_VERSION})")]
    Version {
        /// The version in the file.
        found: u32,
    },
}

/// What is wrong with the `vms` of a state document.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    /// No `vms` at all.
    #[error("missing field `vms`")]
    NoVms,
    /// `vms` is not an object.
    #[error("\"vms\" is {0}, not an object")]
    VmsNotAMap(&'static str),
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl State {
    /// Moves every instant the state holds by `delta` seconds: the wall
    /// clock stepped by `delta` since they were taken, and each is kept
    /// at the same distance from now on the clock that did not step
    /// (`CLOCK_BOOTTIME`), so every interval measured from them (the
    /// back-off, the holding window, the settle and move times, the
    /// figures' freshness against the last ask, the demand's read rate,
    /// the starting grace, the adoption rule's wait) runs as if the wall
    /// clock had not stepped. Every struct is taken apart field by field
    /// with no `..`, so a field added to any of them does not compile
    /// until it is sorted here as an instant or not.
    pub fn shift_instants(&mut self, delta: i64) {
        let sh = |t: &mut u64| *t = shifted(*t, delta);
        let State {
            version: _,
            vms,
            candidates,
            counters,
            savings_seen,
            last_pass,
            clock: _,
            ksm_cost,
            ksm_governor,
        } = self;
        for vm in vms.values_mut() {
            vm.shift_instants(delta);
        }
        for c in candidates.values_mut() {
            let Candidate {
                name: _,
                first_seen,
                last_kib: _,
            } = c;
            sh(first_seen);
        }
        let crate::metrics::Counters {
            resizes: _,
            resize_failures: _,
            last_success_at,
        } = counters;
        last_success_at.iter_mut().for_each(sh);
        for (at, _kib) in savings_seen.iter_mut() {
            sh(at);
        }
        if let Some(LastPass {
            at,
            metric: _,
            savings_kib: _,
            pool_kib: _,
            budget_kib: _,
            available_kib: _,
            resized: _,
            failed: _,
        }) = last_pass
        {
            sh(at);
        }
        if let Some(crate::ksmcost::Mark {
            at,
            pid: _,
            start_time: _,
            cpu_ticks: _,
            pages_scanned: _,
            full_scans: _,
        }) = ksm_cost
        {
            sh(at);
        }
        if let Some(g) = ksm_governor {
            g.shift_instants(delta);
        }
    }

    /// Parses a state file's text, dropping the VM records that cannot be
    /// right (see [`State::parse_checked`]).
    pub fn parse(text: &str) -> Result<State, StateParseError> {
        State::parse_checked(text).map(|(s, _)| s)
    }

    /// Parses and validates a state file's text. A VM record that cannot
    /// be right (not a record, floor 0, floor above ceiling, stored under
    /// another UUID) is dropped, and named in the lines returned; the rest
    /// of the state stays: one bad record must not cost every VM its hold
    /// by hand, back-off and history. Only a file that is not a state
    /// document at all (or of another version) is an error.
    pub fn parse_checked(text: &str) -> Result<(State, Vec<String>), StateParseError> {
        if text.trim().is_empty() {
            return Err(StateParseError::Empty);
        }
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let syntax = StateParseError::Syntax;
        let probe: Probe = serde_json::from_str(text).map_err(syntax)?;
        if probe.version != STATE_VERSION {
            return Err(StateParseError::Version {
                found: probe.version,
            });
        }
        let mut doc: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(syntax)?;
        let vms = match doc.insert("vms".into(), serde_json::Value::Object(Default::default())) {
            Some(serde_json::Value::Object(vms)) => vms,
            Some(other) => {
                return Err(StateParseError::Shape(ShapeError::VmsNotAMap(json_kind(
                    &other,
                ))))
            }
            None => return Err(StateParseError::Shape(ShapeError::NoVms)),
        };
        let mut state: State =
            serde_json::from_value(serde_json::Value::Object(doc)).map_err(syntax)?;
        let mut dropped = Vec::new();
        for (key, value) in vms {
            let name = value
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or(key.as_str())
                .to_string();
            let why = match serde_json::from_value::<VmRecord>(value) {
                Ok(vm) => match vm.impossible(&key) {
                    None => {
                        state.vms.insert(key, vm);
                        continue;
                    }
                    Some(why) => why,
                },
                Err(e) => format!("not a VM record: {e}"),
            };
            dropped.push(format!("impossible record for VM {name:?}: {why}"));
        }
        Ok((state, dropped))
    }

    /// Drops the VM records that cannot be right, returning a line naming
    /// each (for the log).
    pub fn drop_impossible(&mut self) -> Vec<String> {
        let mut dropped = Vec::new();
        self.vms.retain(|key, vm| match vm.impossible(key) {
            None => true,
            Some(why) => {
                dropped.push(format!("impossible record for VM {:?}: {why}", vm.name));
                false
            }
        });
        dropped
    }

    /// The state as the file's text.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("state always serialises");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn round_trip() {
        let mut s = State::default();
        let mut r = record("u1", 100, 200);
        r.stuck = Some(Stuck {
            since: 3,
            at_kib: 150,
            retry_at: 63,
            tries: 1,
        });
        s.vms.insert("u1".into(), r);
        s.candidates.insert(
            "u2".into(),
            Candidate {
                name: "starting".into(),
                first_seen: 4,
                last_kib: Some(262_144),
            },
        );
        s.last_pass = Some(LastPass {
            at: 5,
            metric: "profit".into(),
            ..LastPass::default()
        });
        assert_eq!(State::parse(&s.to_json()).unwrap(), s);
    }

    /// A state with every field set, instants at `t` and beyond, every
    /// other number below [`TIME`].
    fn every_field_set(t: u64) -> State {
        let mut r = record("u1", 100, 200);
        r.recorded_at = t;
        r.last_target_kib = Some(150);
        r.last_change_at = Some(t + 1);
        r.asked_from_kib = Some(160);
        r.stuck = Some(Stuck {
            since: t + 2,
            at_kib: 155,
            retry_at: t + 3,
            tries: 2,
        });
        r.kept_kib = 5;
        r.stats_period_set = true;
        r.recall_stats_at = Some(t + 4);
        r.settings = crate::metadata::VmSettings {
            manage: true,
            weight: 3,
            floor_kib: Some(110),
            ceiling_kib: Some(190),
        };
        r.defined = Some((100, 200));
        r.autodeflate = true;
        r.manual = Some(crate::manual::History {
            asked_kib: 150,
            asked_at: t + 5,
            from_kib: 160,
            reached_at: Some(t + 6),
            last_kib: Some(151),
            away_since: Some(t + 7),
            held: Some(crate::manual::Held {
                since: t + 8,
                size_kib: 152,
            }),
        });
        r.io = Some(IoTrack {
            at: t + 9,
            rd_bytes: 1 << 20,
            demand: 7,
            live: 8,
        });
        r.unresponsive_since = Some(t + 10);
        let mut s = State::default();
        s.vms.insert("u1".into(), r);
        s.candidates.insert(
            "u2".into(),
            Candidate {
                name: "c".into(),
                first_seen: t + 11,
                last_kib: Some(170),
            },
        );
        s.counters = crate::metrics::Counters {
            resizes: 8,
            resize_failures: 9,
            last_success_at: Some(t + 12),
        };
        s.savings_seen = vec![(t + 13, 300), (t + 14, 310)];
        s.last_pass = Some(LastPass {
            at: t + 15,
            metric: "profit".into(),
            savings_kib: 1,
            pool_kib: 2,
            budget_kib: 3,
            available_kib: 4,
            resized: 5,
            failed: 6,
        });
        // The mark is no instant of the state's but the clock it is on
        // (replaced, not shifted): small numbers, so it must not move.
        s.clock = Some(ClockMark {
            wall: 42,
            boot_id: "b".into(),
            boottime_ns: 43,
        });
        s
    }

    /// Every number of a JSON document, with its path.
    fn numbers(v: &serde_json::Value, path: String, out: &mut Vec<(String, u64)>) {
        match v {
            serde_json::Value::Number(n) => out.push((path, n.as_u64().unwrap_or(0))),
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    numbers(x, format!("{path}[{i}]"), out);
                }
            }
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    numbers(x, format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }

    const TIME: u64 = 1_000_000_000;

    #[test]
    fn every_instant_in_the_state_is_shifted_and_nothing_else() {
        // The fixture sets every field, so a field added to the state
        // shows up in the file: as an instant (at TIME or after) it must
        // move with the step, as anything else it must not. A field added
        // and left at its default here fails the count of fields below.
        let t = TIME + 1000;
        let mut s = every_field_set(t);
        let before: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        s.shift_instants(-3600);
        let after: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        let (mut b, mut a) = (Vec::new(), Vec::new());
        numbers(&before, String::new(), &mut b);
        numbers(&after, String::new(), &mut a);
        assert_eq!(b.len(), a.len());
        let mut instants = 0;
        for ((path, was), (_, is)) in b.iter().zip(&a) {
            if *was >= TIME {
                instants += 1;
                assert_eq!(*is, was - 3600, "{path} is an instant: it must move");
            } else {
                assert_eq!(is, was, "{path} is no instant: it must stay");
            }
        }
        // 16 instants (the history's two readings among them), and every
        // field of every struct of the file present in the fixture
        assert_eq!(instants, 16, "{b:?}");
        assert_eq!(
            b.len(),
            49,
            "a field was added: set it in every_field_set, and shift it if it is an instant: {b:?}"
        );
        // forward, and never below 0
        let mut s = every_field_set(t);
        s.shift_instants(60);
        assert_eq!(s.vms["u1"].stuck.unwrap().retry_at, t + 63);
        s.shift_instants(-(t as i64) - 100);
        assert_eq!(s.vms["u1"].recorded_at, 0);
    }

    #[test]
    fn a_version_1_file_of_the_first_release_still_reads() {
        // Written by the first release, before the ask, back-off and
        // candidate fields existed: an upgrade must not lose the floors.
        let text = r#"{"version":1,"vms":{"u":{"name":"n","uuid":"u","floor_kib":100,"ceiling_kib":200,"balloon":true,"source":"hook","recorded_at":7,"last_target_kib":150,"last_change_at":9}},"last_pass":null}"#;
        let s = State::parse(text).unwrap();
        let r = &s.vms["u"];
        assert_eq!(
            (r.floor_kib, r.last_target_kib, r.stuck),
            (100, Some(150), None)
        );
        assert!(s.candidates.is_empty());
    }

    #[test]
    fn an_io_track_written_before_the_hold_still_reads() {
        // Written while the demand decayed with a half-life: no `live`.
        // It reads with nothing held; and what this version writes keeps
        // `demand`, which the version before requires.
        let text = r#"{"version":1,"vms":{"u":{"name":"n","uuid":"u","floor_kib":100,"ceiling_kib":200,"balloon":true,"source":"hook","recorded_at":7,"io":{"at":9,"rd_bytes":1048576,"demand":5000}}}}"#;
        let s = State::parse(text).unwrap();
        assert_eq!(
            s.vms["u"].io,
            Some(IoTrack {
                at: 9,
                rd_bytes: 1 << 20,
                demand: 5000,
                live: 0,
            })
        );
        let back: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(back["vms"]["u"]["io"]["demand"], 5000);
    }

    #[test]
    fn rejects() {
        assert!(matches!(State::parse(""), Err(StateParseError::Empty)));
        assert!(matches!(State::parse("  \n"), Err(StateParseError::Empty)));
        assert!(matches!(State::parse("{"), Err(StateParseError::Syntax(_))));
        assert!(matches!(
            State::parse("[]"),
            Err(StateParseError::Syntax(_))
        ));
        assert!(matches!(
            State::parse(r#"{"version": 2, "vms": {}}"#),
            Err(StateParseError::Version { found: 2 })
        ));
        assert!(matches!(
            State::parse(r#"{"version": 1}"#),
            Err(StateParseError::Shape(ShapeError::NoVms))
        ));
        // printed with its cause, once
        let e = State::parse("{\"version\": 1, \"vms\": {\"tru").unwrap_err();
        assert_eq!(
            crate::errors::chain(&e),
            "not a valid state document: EOF while parsing a string at line 1 column 27"
        );
    }

    #[test]
    fn an_impossible_record_is_dropped_and_the_rest_kept_regression() {
        // Issue 18: one impossible record (a hook record with floor 0,
        // saved) made the next load move the whole file aside: every hold
        // by hand, back-off and history of every VM was lost.
        let mut good = record("good", 100, 200);
        good.stuck = Some(Stuck {
            since: 3,
            at_kib: 150,
            retry_at: 63,
            tries: 1,
        });
        good.manual = Some(crate::manual::History::adopted(5, 150));
        for (bad_key, bad, why) in [
            ("u1", record("u1", 300, 200), "above ceiling"),
            ("other", record("u1", 100, 200), "stored under key"),
            ("u1", record("u1", 0, 200), "floor is 0"),
        ] {
            let mut s = State::default();
            s.vms.insert("good".into(), good.clone());
            s.vms.insert(bad_key.into(), bad);
            s.savings_seen = vec![(1, 2)];
            let (got, dropped) = State::parse_checked(&s.to_json()).unwrap();
            assert_eq!(got.vms.keys().collect::<Vec<_>>(), ["good"], "{why}");
            assert_eq!(got.vms["good"], good);
            assert_eq!(got.savings_seen, [(1, 2)]);
            assert_eq!(dropped.len(), 1);
            assert!(dropped[0].contains(why), "{dropped:?}");
            assert!(dropped[0].contains("\"vm-u1\""), "{dropped:?}");
            // and the same records are dropped before a save
            let mut again = s.clone();
            assert_eq!(again.drop_impossible().len(), 1);
            assert_eq!(again.vms.len(), 1);
        }
        // negative sizes are not sizes; a record that is not one at all
        let text = r#"{"version":1,"vms":{"u":{"name":"n","uuid":"u","floor_kib":-1,"ceiling_kib":2,"balloon":true,"source":"hook","recorded_at":0},"v":"junk","w":{"name":"w","uuid":"w","floor_kib":1,"ceiling_kib":2,"balloon":true,"source":"hook","recorded_at":0}}}"#;
        let (got, dropped) = State::parse_checked(text).unwrap();
        assert_eq!(got.vms.keys().collect::<Vec<_>>(), ["w"]);
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert!(
            dropped[0].contains("VM \"n\": not a VM record"),
            "{dropped:?}"
        );
        // a "vms" that is not a map is a file that cannot be read
        let e = State::parse(r#"{"version":1,"vms":[]}"#).unwrap_err();
        assert!(matches!(
            e,
            StateParseError::Shape(ShapeError::VmsNotAMap("an array"))
        ));
        assert_eq!(
            crate::errors::chain(&e),
            "not a valid state document: \"vms\" is an array, not an object"
        );
    }
}
