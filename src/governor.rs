//! The KSM governor (`--ksm manage`, issue 21): which of KSM's knobs
//! (`run`, `pages_to_scan`; `advisor_max_cpu` under the kernel's advisor)
//! a pass writes, and why, from what the pass
//! measured; when it steps back for another writer; what it restores when
//! the operator goes back to `--ksm observe`.
//!
//! [`govern`] is pure: plain figures in, a [`Decision`] (the writes, a
//! one-line reason) and the governor's next [`Memory`] out. The pass reads
//! the knobs ([`Knobs::read`]), calls it in its plan, writes what it says
//! after the balloons ([`write()`]), and keeps the memory in the state. The
//! rule, on one screen, is in docs/DESIGN.md ("The KSM governor").

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Whether ksm-balloon touches KSM's knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Reads KSM, writes nothing (the default; ksm-balloon before issue 21).
    Observe,
    /// Owns `run` and the scan rate while no one else writes them.
    Manage,
}

impl Mode {
    /// Every mode, by the name the settings use.
    pub const ALL: [(&'static str, Mode); 2] =
        [("observe", Mode::Observe), ("manage", Mode::Manage)];
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Observe => "observe",
            Mode::Manage => "manage",
        })
    }
}

/// The governor's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// `--ksm`.
    pub mode: Mode,
    /// `--ksm-max-cpu`: ksmd's CPU budget, percent of one core.
    pub max_cpu_percent: f64,
}

impl Settings {
    /// The defaults: observe; a budget of a tenth of one core.
    pub const DEFAULT: Settings = Settings {
        mode: Mode::Observe,
        max_cpu_percent: 10.0,
    };
}

/// The fewest pages per wake-up the governor sets (ksmtuned's `KSM_NPAGES_MIN`).
pub const PAGES_MIN: u64 = 64;
/// The most (ksmtuned's `KSM_NPAGES_MAX`).
pub const PAGES_MAX: u64 = 1250;
/// A raise adds this many pages per wake-up (ksmtuned's `KSM_NPAGES_BOOST`).
pub const PAGES_BOOST: u64 = 300;
/// The savings are "flat" only over a window of at least this many full
/// scans: KSM puts a page in its unstable tree (where its twin can find
/// it) only once the page's checksum is unchanged since the scan before
/// (mm/ksm.c, `cmp_and_merge_page`), so data that was there all along
/// merges on the second scan at the earliest. On the real stack, one full
/// scan was judged flat and the rate lowered just before the guests' data
/// merged (39-ksm-governor's first run: 100, 75, then 281).
pub const FLAT_AFTER_SCANS: u64 = 2;
/// The savings "grew" over a window when they grew by at least this many
/// thousandths of what was scanned in it (1: a page merged per 1000
/// scanned).
pub const MIN_YIELD_PER_MILLE: u64 = 1;

/// KSM's knobs as read (or to be written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knobs {
    /// `run`: 0 stopped, 1 merging, 2 unmerge all.
    pub run: u64,
    /// `pages_to_scan`: pages per wake-up.
    pub pages_to_scan: u64,
    /// `sleep_millisecs`: between wake-ups.
    pub sleep_millisecs: u64,
    /// `advisor_max_cpu` (6.8+): the advisor's CPU budget, percent of one
    /// core; `None` on a kernel without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advisor_max_cpu: Option<u64>,
}

/// What the pass read of the knobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Found {
    /// The three knobs.
    pub knobs: Knobs,
    /// `advisor_mode` is `scan-time` (6.8+): the kernel sets
    /// `pages_to_scan` itself and refuses a write to it.
    pub advisor: bool,
    /// `smart_scan` (6.7+), where the kernel has it: shown, never written.
    pub smart_scan: Option<u64>,
}

impl Knobs {
    /// Reads the knobs under `dir`; `Err` names what is missing (a kernel
    /// without KSM's knobs, or a fake root without them).
    pub fn read(dir: &Path) -> Result<Found, String> {
        let one = |name: &str| -> Result<String, String> {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| format!("cannot read {}: {e}", dir.join(name).display()))
        };
        let num = |name: &str| -> Result<u64, String> {
            let t = one(name)?;
            t.trim()
                .parse()
                .map_err(|_| format!("{} holds {:?}", dir.join(name).display(), t.trim()))
        };
        let knobs = Knobs {
            run: num("run")?,
            pages_to_scan: num("pages_to_scan")?,
            sleep_millisecs: num("sleep_millisecs")?,
            advisor_max_cpu: num("advisor_max_cpu").ok(),
        };
        // "[none] scan-time": the bracketed one is in use
        let advisor = one("advisor_mode").is_ok_and(|t| t.contains("[scan-time]"));
        Ok(Found {
            knobs,
            advisor,
            smart_scan: num("smart_scan").ok(),
        })
    }
}

/// Writes `value` to the knob `name` under `dir`.
pub fn write(dir: &Path, name: &str, value: u64) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n"))
        .map_err(|e| format!("cannot write {value} to {}: {e}", path.display()))
}

/// Writes each of `writes` under `dir`, in order, each logged with
/// `reason`; a write that fails keeps its error (`KnobWrite::error`),
/// logged, and the others go on. What a pass writes after the balloons and
/// what `ksm-balloon ksm-restore` writes both go through here.
pub fn write_all(dir: &Path, writes: &mut [KnobWrite], reason: &str) {
    for w in writes {
        match write(dir, w.knob, w.to) {
            Ok(()) => log::info!("KSM {}: {} -> {} ({reason})", w.knob, w.from, w.to),
            Err(e) => {
                log::warn!("KSM {}: {e}", w.knob);
                w.error = Some(e);
            }
        }
    }
}

/// Where the yield is measured from: the counters when the scan rate or
/// `run` last changed (or the governor took over).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowMark {
    /// When (seconds since the epoch).
    pub at: u64,
    /// The savings then, KiB.
    pub savings_kib: u64,
    /// `pages_scanned` then, where the kernel has it.
    pub pages_scanned: Option<u64>,
    /// `full_scans` then.
    pub full_scans: u64,
}

/// Another writer changed a knob: since when, which, what we left, what
/// was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SteppedBack {
    /// When the pass found it (seconds since the epoch).
    pub since: u64,
    /// The knob's name.
    pub knob: String,
    /// What ksm-balloon had left it at.
    pub wrote: u64,
    /// What it held instead.
    pub found: u64,
}

/// What the state keeps for the governor while `manage` has the knobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// When `manage` took over.
    pub since: u64,
    /// The knobs as the operator had them then: restored by `observe`.
    pub operator: Knobs,
    /// The knobs as ksm-balloon left them after its last pass (what it
    /// wrote, or found and kept): any other value is another writer's.
    pub left: Knobs,
    /// `pages_to_scan` was the kernel advisor's, not ours, when we left
    /// it: not compared.
    #[serde(default)]
    pub advisor: bool,
    /// Set once another writer was seen: nothing is written after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stepped_back: Option<SteppedBack>,
    /// Where the yield is measured from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<WindowMark>,
    /// The boot the knobs were left in (`/proc/sys/kernel/random/boot_id`):
    /// after a reboot they are the kernel's and the boot's, not another
    /// writer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

impl Memory {
    /// Moves every instant by `delta` seconds (a step of the wall clock).
    pub fn shift_instants(&mut self, delta: i64) {
        let sh = |t: &mut u64| *t = crate::state::model::shifted(*t, delta);
        let Memory {
            since,
            operator: _,
            left: _,
            advisor: _,
            stepped_back,
            mark,
            boot_id: _,
        } = self;
        sh(since);
        if let Some(SteppedBack {
            since,
            knob: _,
            wrote: _,
            found: _,
        }) = stepped_back
        {
            sh(since);
        }
        if let Some(WindowMark {
            at,
            savings_kib: _,
            pages_scanned: _,
            full_scans: _,
        }) = mark
        {
            sh(at);
        }
    }
}

/// What one pass measured, as the rule needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// Now (seconds since the epoch).
    pub now: u64,
    /// The knobs as read, or why they could not be.
    pub found: Result<Found, String>,
    /// Managed VMs with headroom (ceiling above floor): the ones a loan can
    /// reach.
    pub headroom_vms: usize,
    /// The savings, KiB (the pass's metric).
    pub savings_kib: u64,
    /// The host's page size, KiB.
    pub page_kib: u64,
    /// `pages_scanned`, where the kernel has it (6.7+).
    pub pages_scanned: Option<u64>,
    /// `full_scans`.
    pub full_scans: u64,
    /// ksmd's CPU since the last pass, percent of one core (`None`: not
    /// measured).
    pub cpu_percent: Option<f64>,
    /// This boot's id, where known.
    pub boot_id: Option<String>,
    /// The least growth of the savings, KiB, the rate rule counts as
    /// growth: the policy's deadband, the least change a loan acts on. A
    /// few hundred KiB merged among pages that change is noise the
    /// balloons never see (the rate rule, `scan_rate`).
    pub min_gain_kib: u64,
}

/// What the governor did, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Observe: nothing touched.
    Observe,
    /// Manage, nothing to change (or nothing that can be).
    Hold,
    /// Manage, knobs written.
    Write,
    /// Another writer was found this pass: stepped back.
    StepBack,
    /// Stepped back at an earlier pass: writes nothing.
    SteppedBack,
    /// Back to observe: the operator's knobs restored.
    Restore,
}

/// One knob to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KnobWrite {
    /// The knob's file name.
    pub knob: &'static str,
    /// What it held.
    pub from: u64,
    /// What it is to hold.
    pub to: u64,
    /// Why the write failed, if it did (set by the pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The governor's decision for one pass: the report's `ksm_governor`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// `--ksm`.
    pub mode: Mode,
    /// `--ksm-max-cpu`.
    pub max_cpu_percent: f64,
    /// What it did.
    pub action: Action,
    /// Why, in one line.
    pub reason: String,
    /// The knobs as this pass read them.
    pub found: Option<Found>,
    /// The knobs written (or, in a dry run, to be).
    pub writes: Vec<KnobWrite>,
    /// Stepped back for another writer: since when, and what it saw.
    pub stepped_back: Option<SteppedBack>,
    /// The operator's knobs, kept to restore, while `manage` has them.
    pub operator: Option<Knobs>,
}

impl Decision {
    /// `manage` has KSM's knobs: not observing, not stepped back.
    pub fn managing(&self) -> bool {
        self.mode == Mode::Manage && self.stepped_back.is_none() && self.found.is_some()
    }

    /// `pages_to_scan` as the pass leaves it: written (when the write
    /// succeeded), else as found.
    pub fn pages_to_scan_left(&self) -> Option<u64> {
        let found = self.found.as_ref()?.knobs.pages_to_scan;
        Some(
            self.writes
                .iter()
                .find(|w| w.knob == "pages_to_scan" && w.error.is_none())
                .map_or(found, |w| w.to),
        )
    }
}

/// [`govern`]'s answer: the decision and what the state keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The decision (the report's).
    pub decision: Decision,
    /// The governor's memory after this pass (`None`: not managing).
    pub memory: Option<Memory>,
    /// A line worth logging, once (a step back, a take-over, a restore).
    pub log: Option<String>,
}

/// Each knob of `a` and `b` by name, where both have it and differ;
/// never `pages_to_scan` under the advisor (the kernel's, not ours).
fn differ(a: &Knobs, b: &Knobs, advisor: bool) -> impl Iterator<Item = (&'static str, u64, u64)> {
    let named = |k: &Knobs| {
        [
            ("run", Some(k.run)),
            ("pages_to_scan", Some(k.pages_to_scan)),
            ("sleep_millisecs", Some(k.sleep_millisecs)),
            ("advisor_max_cpu", k.advisor_max_cpu),
        ]
    };
    named(a)
        .into_iter()
        .zip(named(b))
        .filter_map(|((name, x), (_, y))| Some((name, x?, y?)))
        .filter(move |(name, x, y)| x != y && !(advisor && *name == "pages_to_scan"))
}

/// The first knob of `found` that differs from what we `left`, if any.
fn other_writer(left: &Knobs, advisor: bool, found: &Knobs) -> Option<(&'static str, u64, u64)> {
    differ(left, found, advisor).next()
}

/// The writes that take `found` to `to` (none where they agree).
fn writes(found: &Found, to: &Knobs) -> Vec<KnobWrite> {
    differ(&found.knobs, to, found.advisor)
        .map(|(knob, from, to)| KnobWrite {
            knob,
            from,
            to,
            error: None,
        })
        .collect()
}

/// The scan rate's rule while KSM merges: the new `pages_to_scan`, why,
/// and whether the window since `mark` was judged (a new window starts)
/// or is still being measured (it goes on).
fn scan_rate(
    i: &Input,
    budget: f64,
    p: u64,
    sleep_ms: u64,
    mark: &WindowMark,
) -> (u64, String, bool) {
    let clamped = p.clamp(PAGES_MIN, PAGES_MAX);
    if clamped != p {
        return (
            clamped,
            format!("pages_to_scan {p} is outside the governor's range [{PAGES_MIN}, {PAGES_MAX}]"),
            true,
        );
    }
    if let Some(cpu) = i.cpu_percent.filter(|c| *c > budget) {
        let to = (p / 2).max(PAGES_MIN);
        return (
            to,
            format!("ksmd used {cpu:.1}% of a core, over the budget {budget}%: scan slower"),
            true,
        );
    }
    // What the window since the mark scanned, and what the savings did.
    let secs = i.now.saturating_sub(mark.at);
    let scanned = match (mark.pages_scanned, i.pages_scanned) {
        (Some(a), Some(b)) if b >= a => b - a,
        // before 6.7: what the knobs let ksmd scan at most
        _ => p.saturating_mul(secs.saturating_mul(1000)) / sleep_ms.max(1),
    };
    let gained = i.savings_kib.saturating_sub(mark.savings_kib);
    let scanned_kib = scanned.saturating_mul(i.page_kib);
    // growth: a page merged per 1000 scanned, and enough to lend (the
    // recorded benchmark's quiet phase raised the rate on 340 KiB and
    // 737 KiB merged in a pass while nothing new was written)
    let grew = scanned > 0
        && gained >= i.min_gain_kib
        && gained.saturating_mul(1000) >= scanned_kib.saturating_mul(MIN_YIELD_PER_MILLE);
    let full = i.full_scans.saturating_sub(mark.full_scans);
    match i.cpu_percent {
        Some(cpu) if grew => {
            // more scanning, as far as ksmd's CPU (taken to grow with the
            // rate) stays in the budget
            let cap = if cpu > 0.0 {
                ((p as f64) * budget / cpu) as u64
            } else {
                PAGES_MAX
            };
            let to = (p + PAGES_BOOST).min(PAGES_MAX).min(cap).max(p);
            let why = format!(
                "savings grew {gained} KiB over {scanned} pages scanned in {secs} s; ksmd at {cpu:.1}% of a core, budget {budget}%"
            );
            if to > p {
                (to, format!("{why}: scan faster"), true)
            } else {
                (
                    p,
                    format!("{why}: at the most the range or the budget allows"),
                    true,
                )
            }
        }
        _ if !grew && full >= FLAT_AFTER_SCANS => {
            let to = (p * 3 / 4).max(PAGES_MIN);
            let under = if gained > 0 && gained < i.min_gain_kib {
                format!(", under the {} KiB deadband", i.min_gain_kib)
            } else {
                String::new()
            };
            (
                to,
                format!(
                    "savings flat ({gained} KiB more{under}) over {full} full scan(s) in {secs} s: scan slower"
                ),
                true,
            )
        }
        None => (p, "ksmd's CPU not measured yet: rate held".into(), false),
        _ => (
            p,
            format!("measuring: savings {gained} KiB more over {scanned} pages scanned in {secs} s, {full} of {FLAT_AFTER_SCANS} full scans"),
            false,
        ),
    }
}

/// What giving KSM's knobs back does: the writes (none where they agree)
/// and why, in one line. See [`give_back`].
#[derive(Clone, Debug, PartialEq)]
pub struct GiveBack {
    /// [`Action::Restore`] when the operator's knobs are written back,
    /// [`Action::Observe`] when KSM is left as it is.
    pub action: Action,
    /// The knobs to write (none when KSM is left as it is).
    pub writes: Vec<KnobWrite>,
    /// Why, in one line.
    pub reason: String,
}

/// Gives KSM's knobs back as the operator had them before `manage` took
/// them over (`m.operator`), from the knobs as `found`: the one rule both
/// a pass with `--ksm observe` ([`govern`]) and `ksm-balloon ksm-restore`
/// (the package's uninstall, [`crate::admin::ksm_restore`]) follow.
/// Nothing is written when `manage` had stepped back for another writer,
/// or when a knob holds anything but what ksm-balloon left it at (another
/// writer has KSM since: restoring over it would fight that writer), nor
/// when the host rebooted since ksm-balloon left them (`boot_id`, this
/// boot's, differs from the memory's: they are the kernel's and the
/// boot's, whatever the operator's boot sets); a `run` of 2 (unmerge
/// everything) is given back as 0, since ksm-balloon never unmerges.
/// Either way the governor's memory is done with.
pub fn give_back(m: &Memory, found: &Found, boot_id: Option<&str>) -> GiveBack {
    let left_alone = |reason: String| GiveBack {
        action: Action::Observe,
        writes: Vec::new(),
        reason,
    };
    if m.stepped_back.is_some() {
        return left_alone("manage had stepped back for another writer; KSM left as it is".into());
    }
    if matches!((m.boot_id.as_deref(), boot_id), (Some(a), Some(b)) if a != b) {
        return left_alone(
            "the host rebooted since ksm-balloon set KSM's knobs: they are the boot's, left as they are"
                .into(),
        );
    }
    if let Some((knob, left, now)) = other_writer(&m.left, m.advisor, &found.knobs) {
        return left_alone(format!(
            "{knob} is {now}, not the {left} ksm-balloon left: another writer has KSM, left as it is"
        ));
    }
    let to = Knobs {
        run: if m.operator.run == 2 {
            0
        } else {
            m.operator.run
        },
        ..m.operator
    };
    GiveBack {
        action: Action::Restore,
        writes: writes(found, &to),
        reason: format!(
            "KSM's knobs restored to the operator's (run {}, pages_to_scan {}, sleep_millisecs {})",
            to.run, to.pages_to_scan, to.sleep_millisecs
        ),
    }
}

/// The memory after [`give_back`]'s writes: `None` (done with) once every
/// write succeeded; else kept, each knob at what ksm-balloon now left it
/// at (the operator's value where the write succeeded, what was found
/// where it failed), so that another try takes the knobs it wrote back for
/// its own, not for another writer's, and writes the rest.
pub fn after_give_back(m: Memory, found: &Found, writes: &[KnobWrite]) -> Option<Memory> {
    if writes.iter().all(|w| w.error.is_none()) {
        return None;
    }
    let mut left = found.knobs;
    for w in writes.iter().filter(|w| w.error.is_none()) {
        match w.knob {
            "run" => left.run = w.to,
            "pages_to_scan" => left.pages_to_scan = w.to,
            "advisor_max_cpu" => left.advisor_max_cpu = Some(w.to),
            _ => left.sleep_millisecs = w.to,
        }
    }
    Some(Memory { left, ..m })
}

/// The rule: from what one pass measured, the budget and the governor's
/// memory, what to write and why (see docs/DESIGN.md, "The KSM governor").
pub fn govern(settings: &Settings, i: &Input, prev: Option<&Memory>) -> Outcome {
    let budget = settings.max_cpu_percent;
    let found = i.found.as_ref().ok().cloned();
    let mut d = Decision {
        mode: settings.mode,
        max_cpu_percent: budget,
        action: Action::Observe,
        reason: String::new(),
        found: found.clone(),
        writes: Vec::new(),
        stepped_back: prev.and_then(|m| m.stepped_back.clone()),
        operator: prev.map(|m| m.operator),
    };
    let out = |d: Decision, memory: Option<Memory>, log: Option<String>| Outcome {
        decision: d,
        memory,
        log,
    };
    let logged = |d: Decision, memory: Option<Memory>| {
        let line = d.reason.clone();
        out(d, memory, Some(line))
    };
    // Unreadable knobs: nothing written, the memory kept for a pass that
    // can read them (a restore of observe waits for it too).
    let f = match &i.found {
        Err(why) => {
            d.action = if settings.mode == Mode::Manage {
                Action::Hold
            } else {
                Action::Observe
            };
            d.reason = format!("KSM's knobs cannot be read ({why}): nothing written");
            return out(d, prev.cloned(), None);
        }
        Ok(f) => f.clone(),
    };
    let mark_now = WindowMark {
        at: i.now,
        savings_kib: i.savings_kib,
        pages_scanned: i.pages_scanned,
        full_scans: i.full_scans,
    };
    if settings.mode == Mode::Observe {
        let Some(m) = prev else {
            d.reason = "observe: ksm-balloon reads KSM and writes none of its knobs".into();
            return out(d, None, None);
        };
        d.operator = None;
        let back = give_back(m, &f, i.boot_id.as_deref());
        d.action = back.action;
        d.writes = back.writes;
        d.reason = format!("observe: {}", back.reason);
        return logged(d, None);
    }
    // manage; after a reboot the knobs are the boot's (the kernel's
    // defaults, what the boot set): taken over anew, not another writer's
    let rebooted = prev.is_some_and(|m| {
        m.stepped_back.is_none() && matches!((&m.boot_id, &i.boot_id), (Some(a), Some(b)) if a != b)
    });
    let (mut m, took_over) = match prev.filter(|_| !rebooted) {
        Some(m) => (m.clone(), false),
        None => (
            Memory {
                since: i.now,
                operator: f.knobs,
                left: f.knobs,
                advisor: f.advisor,
                stepped_back: None,
                mark: Some(mark_now),
                boot_id: None,
            },
            true,
        ),
    };
    if let Some(s) = &m.stepped_back {
        d.action = Action::SteppedBack;
        d.reason = format!(
            "manage, stepped back for another writer: {} is {}, ksm-balloon left it at {}; nothing written until --ksm observe and manage again",
            s.knob, s.found, s.wrote
        );
        return out(d, Some(m), None);
    }
    if let Some((knob, left, now)) = other_writer(&m.left, m.advisor, &f.knobs) {
        let s = SteppedBack {
            since: i.now,
            knob: knob.into(),
            wrote: left,
            found: now,
        };
        d.action = Action::StepBack;
        d.reason = format!(
            "manage, stepped back: {knob} is {now}, ksm-balloon left it at {left}; another writer (ksmtuned, an operator) has KSM, so ksm-balloon writes nothing more until --ksm observe and manage again"
        );
        d.stepped_back = Some(s.clone());
        m.stepped_back = Some(s);
        return logged(d, Some(m));
    }
    let k = f.knobs;
    let mut to = k;
    let mut reasons = Vec::new();
    if i.headroom_vms == 0 {
        to.run = 0;
        reasons.push(
            "no managed VM with headroom: KSM stopped (merged pages stay merged)".to_string(),
        );
    } else {
        to.run = 1;
        if k.run != 1 {
            reasons.push(format!(
                "{} managed VM(s) with headroom: KSM merging",
                i.headroom_vms
            ));
        }
    }
    let mark = match m.mark {
        Some(w) if w.at <= i.now && w.full_scans <= i.full_scans => w,
        _ => mark_now,
    };
    let mut judged = false;
    if to.run == 1 && k.run == 1 {
        if f.advisor {
            // the advisor's budget is ours
            to.advisor_max_cpu = k
                .advisor_max_cpu
                .map(|_| (budget.round() as u64).clamp(1, 100));
            reasons.push(format!(
                "the kernel's advisor (advisor_mode scan-time) sets the scan rate, within advisor_max_cpu {}%",
                to.advisor_max_cpu.map_or("unknown".into(), |c| c.to_string())
            ));
        } else {
            let (p, why, j) = scan_rate(i, budget, k.pages_to_scan, k.sleep_millisecs, &mark);
            to.pages_to_scan = p;
            judged = j;
            reasons.push(why);
        }
    }
    d.writes = writes(&f, &to);
    d.action = if d.writes.is_empty() {
        Action::Hold
    } else {
        Action::Write
    };
    d.reason = format!("manage: {}", reasons.join("; "));
    // A window judged, or a knob changed, starts a new one; one still
    // being measured (no full scan yet, no verdict) goes on.
    m.mark = Some(if d.writes.is_empty() && !judged {
        mark
    } else {
        mark_now
    });
    m.left = Knobs {
        pages_to_scan: if f.advisor {
            k.pages_to_scan
        } else {
            to.pages_to_scan
        },
        ..to
    };
    m.advisor = f.advisor;
    m.boot_id.clone_from(&i.boot_id);
    d.operator = Some(m.operator);
    let log = took_over.then(|| {
        format!(
            "manage: ksm-balloon takes KSM's knobs over{} (found run {}, pages_to_scan {}, sleep_millisecs {}; restored by --ksm observe)",
            if rebooted { " anew after a reboot" } else { "" },
            k.run, k.pages_to_scan, k.sleep_millisecs
        )
    });
    out(d, Some(m), log)
}

/// The memory after the pass's writes: a knob whose write failed holds
/// what was found, and that is what ksm-balloon left it at.
pub fn after_writes(mut memory: Option<Memory>, writes: &[KnobWrite]) -> Option<Memory> {
    if let Some(m) = &mut memory {
        for w in writes.iter().filter(|w| w.error.is_some()) {
            match w.knob {
                "run" => m.left.run = w.from,
                "pages_to_scan" => m.left.pages_to_scan = w.from,
                "advisor_max_cpu" => m.left.advisor_max_cpu = Some(w.from),
                _ => m.left.sleep_millisecs = w.from,
            }
        }
    }
    memory
}

#[cfg(test)]
mod tests;
