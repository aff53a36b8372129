//! The policy: KSM savings in, one balloon target per VM out.
//!
//! A pure function over plain structs: no libvirt, sysfs, files or clock in
//! here, so it is tested with tables and property tests (see the bottom of
//! this file and `tests/policy_props.rs`).
//!
//! The method (the paper): the memory KSM saved is a pool; the pool is split
//! among the managed VMs; each VM's target is its floor (the size it was
//! started with) plus its part, never above its ceiling (its boot-time
//! maximum). What a VM cannot take because it reaches its ceiling goes to the
//! others (water-filling).
//!
//! The loan rule (safe recall): the bonus is a loan. When the savings
//! shrink, a VM gives back only what it can give without harm: what it
//! leaves free, then what it uses as page cache (its `MemAvailable`, as the
//! guest reports it through the balloon's statistics), less a margin for
//! the guest's kernel and balloon driver. What its applications hold it
//! keeps while the host is above its reserve; that part of the pool is not
//! lent to the others. A guest whose statistics are missing or stale gives
//! back at most a bounded step per pass.
//!
//! The recall rule (above the reserve the host can wait): a VM gives back
//! in steps, each checked by the guest's own answer. A step is taken only
//! on figures the guest reported after the last shrink asked of it had
//! landed, and after the pass asked it for fresh ones, and at most
//! [`RECALL_FRESH_SECS`] old ([`GuestView::confirmed`],
//! [`GuestView::age_secs`]); on any other figures it gives nothing this
//! pass ([`Reason::Awaiting`]). A step is at most half of what the figures
//! say it can give (all of it when that is under [`RECALL_STEP_MIN_KIB`]),
//! and the margin it keeps grows with the figures' age
//! ([`GuestView::margin_at_age_kib`]). Being slow to recall costs the host
//! nothing above its reserve; being fast on old figures can kill a guest
//! whose applications grew since it last reported.
//!
//! The host guard: the total bonus handed out never exceeds what is already
//! handed out plus what the host has available above its reserve. Below the
//! reserve nothing grows and the bonuses shrink by exactly the shortfall
//! (whatever the deadband): first from what guests leave free, then from
//! their caches, and only then, in proportion to their bonuses, from their
//! applications' memory (the host wins; the plan names every guest squeezed).

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// How the pool is divided among the managed VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Every managed VM gets the same amount (the paper).
    Equal,
    /// Each VM gets an amount proportional to its floor (bigger VMs get more).
    Proportional,
    /// By I/O demand: a VM that keeps reading from disk with its memory
    /// full of cache gets more, an idle one little ([`VmView::demand`]).
    Demand,
    /// By contribution: each VM in proportion to what its own pages saved
    /// ([`VmView::contribution_kib`]); only the VMs' part of the savings is
    /// lent.
    Contribution,
    /// Contribution scaled by demand: what each VM earned, moved toward the
    /// VMs whose I/O it cuts.
    ContributionDemand,
}

impl Split {
    /// Every split, by the name the settings use.
    pub const ALL: [(&'static str, Split); 5] = [
        ("equal", Split::Equal),
        ("proportional", Split::Proportional),
        ("demand", Split::Demand),
        ("contribution", Split::Contribution),
        ("contribution-demand", Split::ContributionDemand),
    ];

    /// What the pass must observe and track for this split, beyond what
    /// every split uses: the one place that says it, so a new split is
    /// one variant here and the pass reads nothing it does not use.
    pub fn inputs(self) -> SplitInputs {
        SplitInputs {
            contribution: matches!(self, Split::Contribution | Split::ContributionDemand),
            demand: matches!(self, Split::Demand | Split::ContributionDemand),
        }
    }
}

/// What a split needs the pass to observe ([`Split::inputs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitInputs {
    /// Each VM's part of the savings, from the kernel's per-process KSM
    /// figures (`/proc`): read only for a split that weighs by it.
    pub contribution: bool,
    /// Each VM's I/O demand, tracked from pass to pass in its record
    /// ([`VmView::demand`]): tracked, reported and kept only for a split
    /// that weighs by it.
    pub demand: bool,
}

/// An idle VM's demand weight, and the unit of [`VmView::demand`]: one
/// MiB/s of disk reads under memory pressure counts as much as being there.
pub const DEMAND_BASE: u64 = 1000;

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Split::ALL
            .iter()
            .find(|(_, s)| s == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Split, String> {
        Split::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<&str> = Split::ALL.iter().map(|(n, _)| *n).collect();
                format!("'{s}' is not a split (one of: {})", names.join(", "))
            })
    }
}

/// The policy's settings, already validated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// The fraction of the savings handed out, 0.0 to 1.0.
    pub share: f64,
    /// How the pool is divided.
    pub split: Split,
    /// The host's MemAvailable below which nothing grows, in KiB.
    pub reserve_kib: u64,
    /// Targets closer than this to the current size are left alone, in KiB.
    pub deadband_kib: u64,
    /// At most this much growth per VM per pass (None: unlimited, the paper).
    pub max_grow_kib: Option<u64>,
    /// At most this much shrink per VM per pass, above the reserve (None:
    /// unlimited, the paper). Under the reserve the host wins.
    pub max_shrink_kib: Option<u64>,
    /// Under the reserve, at most this much of a VM's applications' memory
    /// is taken per pass (None: the whole shortfall at once).
    pub max_squeeze_kib: Option<u64>,
    /// The most a VM without fresh statistics gives back per pass above the
    /// reserve, in KiB (None: all of it, as the paper would).
    pub blind_step_kib: Option<u64>,
}

impl Policy {
    /// The defaults, defined once: the command line's defaults are these
    /// (`cli::Settings`, clap's `default_value_t`), as is
    /// [`Policy::default`]. The reserve here is 0; the pass resolves
    /// `--reserve` into it every pass (`pass::Settings::policy`).
    pub const DEFAULT: Policy = Policy {
        share: 1.0,
        split: Split::Demand,
        reserve_kib: 0,
        deadband_kib: DEFAULT_DEADBAND_KIB,
        max_grow_kib: None,
        max_shrink_kib: None,
        max_squeeze_kib: None,
        blind_step_kib: Some(DEFAULT_BLIND_STEP_KIB),
    };
}

impl Default for Policy {
    fn default() -> Self {
        Policy::DEFAULT
    }
}

/// The default deadband: 4 MiB.
pub const DEFAULT_DEADBAND_KIB: u64 = 4 * 1024;

/// The default step a VM without fresh statistics gives back per pass: 16 MiB.
pub const DEFAULT_BLIND_STEP_KIB: u64 = 16 * 1024;

/// The guest keeps at least this much of its `MemAvailable`: 16 MiB.
pub const GUEST_MARGIN_MIN_KIB: u64 = 16 * 1024;

/// ... or this percentage of its memory, whichever is more.
pub const GUEST_MARGIN_PERCENT: u64 = 5;

/// Figures older than this (seconds) are not acted on for a recall above
/// the reserve: the pass asks the guest for fresh ones instead (a short
/// statistics period while it recalls) and waits for them.
pub const RECALL_FRESH_SECS: u64 = 3;

/// A recall step is at most half of what the guest's figures say it can
/// give, but at least this much (or all of it, when it can give less):
/// 16 MiB, one blind step, so a recall ends in a few passes instead of
/// halving for ever.
pub const RECALL_STEP_MIN_KIB: u64 = 16 * 1024;

/// The margin a guest keeps grows by itself every this many seconds of the
/// figures' age: figures 10 s old keep twice the margin.
pub const MARGIN_AGE_SECS: u64 = 10;

/// The most a guest gives back in one recall step above the reserve, when
/// its figures say it can give `givable_kib` without harm.
pub fn recall_step_kib(givable_kib: u64) -> u64 {
    givable_kib.min((givable_kib / 2).max(RECALL_STEP_MIN_KIB))
}

/// A return to the floor is applied once the VM is more than this above it,
/// even inside the deadband, so "savings gone" really means "back at the floor".
pub const FLOOR_TOLERANCE_KIB: u64 = 1024;

/// What the host looks like this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HostView {
    /// KSM's savings by the chosen metric, in KiB: what has held over the
    /// holding window (lend only what holds), and for the contribution
    /// splits only the VMs' part.
    pub savings_kib: u64,
    /// KSM's counters are live: it is merging (`run` = 1), or it unmerged
    /// everything (`run` = 2, the counters cleared: the savings are gone).
    /// When it is stopped (`run` = 0) the counters are stale: nothing grows
    /// and the sizes are held (the guard may still shrink them).
    pub ksm_counters_live: bool,
    /// The host's MemAvailable, in KiB.
    pub available_kib: u64,
}

/// Why a VM takes no part in the split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmStatus {
    /// Running with a balloon: takes part.
    Managed,
    /// Its domain has no balloon device (`<memballoon model='none'/>`).
    NoBalloon,
    /// Paused, shutting down, or otherwise not running.
    NotRunning,
    /// Its metadata says `manage="no"`.
    OptedOut,
    /// Its balloon was set by someone else: left alone until released.
    HeldByHand,
    /// Its balloon moved away from what was asked, not yet for long enough
    /// to tell why: left alone this pass.
    Unsettled,
}

/// A guest's own memory figures, from its balloon driver's statistics
/// (fresh ones only). KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GuestView {
    /// Its `MemAvailable` (`balloon.usable`): what it can give without
    /// swapping or killing, free memory and reclaimable cache.
    pub usable_kib: u64,
    /// Its `MemFree` (`balloon.unused`): what it leaves free.
    pub unused_kib: u64,
    /// Its `MemTotal` (`balloon.available`).
    pub total_kib: u64,
    /// How old the figures are at this pass, seconds (the guest's
    /// `last-update` against the pass's clock; 0 when they look newer).
    pub age_secs: u64,
    /// The figures answer every ask: the guest reported them after the
    /// last shrink asked of it had landed and after the pass last asked it
    /// for fresh figures. Only confirmed figures, at most
    /// [`RECALL_FRESH_SECS`] old, let it give back above the reserve.
    pub confirmed: bool,
}

impl GuestView {
    /// Figures reported just now that answer every ask.
    pub fn now(usable_kib: u64, unused_kib: u64, total_kib: u64) -> GuestView {
        GuestView {
            usable_kib,
            unused_kib,
            total_kib,
            age_secs: 0,
            confirmed: true,
        }
    }

    /// The margin the guest keeps: the larger of [`GUEST_MARGIN_MIN_KIB`]
    /// and [`GUEST_MARGIN_PERCENT`] of its memory.
    pub fn margin_kib(&self) -> u64 {
        GUEST_MARGIN_MIN_KIB.max(self.total_kib / 100 * GUEST_MARGIN_PERCENT)
    }

    /// The margin, grown with the figures' age: one more margin every
    /// [`MARGIN_AGE_SECS`] (what the guest may have allocated since it
    /// reported is unknown; the older the figures, the less they are
    /// trusted).
    pub fn margin_at_age_kib(&self) -> u64 {
        let m = self.margin_kib();
        m.saturating_add(m.saturating_mul(self.age_secs) / MARGIN_AGE_SECS)
    }

    /// The figures may be acted on for a recall above the reserve.
    pub fn recall_ready(&self) -> bool {
        self.confirmed && self.age_secs <= RECALL_FRESH_SECS
    }
}

/// One VM as the policy sees it. Sizes in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VmView {
    /// Its floor: the size it was started with.
    pub floor_kib: u64,
    /// Its ceiling: its boot-time maximum.
    pub ceiling_kib: u64,
    /// The size its balloon is at, or on its way to (a target asked by an
    /// earlier pass that it has not reached yet).
    pub current_kib: u64,
    /// The size its balloon is at now.
    pub actual_kib: u64,
    /// Its own figures, when it reports fresh ones.
    pub guest: Option<GuestView>,
    /// Its weight in the split (the metadata's; 1 by default, 0 takes no
    /// part of the pool).
    pub weight: u32,
    /// Its I/O demand: disk reads while its memory is full, in thousandths
    /// of a MiB/s (smoothed); 0 when its memory is not full; `None` when
    /// unknown (no fresh statistics, or full memory without a disk rate
    /// yet): it then weighs as an idle VM ([`DEMAND_BASE`]), its floor and
    /// its base part, never as a measured reader.
    pub demand: Option<u64>,
    /// Its part of the host's savings (from the kernel's per-process
    /// figures), KiB; `None` when unknown: counted as an average VM.
    pub contribution_kib: Option<u64>,
    /// Whether it takes part.
    pub status: VmStatus,
}

impl VmView {
    /// A VM at rest (nothing in flight) without guest statistics.
    pub fn new(floor_kib: u64, ceiling_kib: u64, current_kib: u64, status: VmStatus) -> VmView {
        VmView {
            floor_kib,
            ceiling_kib,
            current_kib,
            actual_kib: current_kib,
            guest: None,
            weight: 1,
            demand: None,
            contribution_kib: None,
            status,
        }
    }

    /// The same VM with fresh guest statistics.
    pub fn with_guest(mut self, guest: GuestView) -> VmView {
        self.guest = Some(guest);
        self
    }
}

/// What to do with a VM this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Set the balloon to the target (it is larger).
    Grow,
    /// Set the balloon to the target (it is smaller).
    Shrink,
    /// Leave it: already at the target or within the deadband.
    Hold,
    /// Leave it: not managed (see the reason).
    Skip,
}

/// Why the target is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Floor plus its part of the pool.
    Share,
    /// Its part reached its ceiling; the rest went to the others.
    Ceiling,
    /// The host guard cut the pool or stopped growth.
    HostGuard,
    /// The host is under its reserve: squeezed into its applications' memory.
    Squeezed,
    /// It keeps what its applications hold: the savings no longer cover it.
    Kept,
    /// No fresh guest statistics: it gives back a bounded step per pass.
    BlindStep,
    /// Its figures are too old, or do not answer the last ask yet: it gives
    /// nothing back this pass and waits for fresh ones.
    Awaiting,
    /// It can give back all it keeps, in steps: one this pass, the next
    /// once its guest's fresh figures confirm it.
    RecallStep,
    /// KSM is not merging: sizes held.
    KsmStopped,
    /// A per-pass growth or shrink limit applied.
    StepLimit,
    /// Its size was outside [floor, ceiling]: brought back inside.
    OutOfBounds,
    /// Already at the target.
    Steady,
    /// Within the deadband of the target.
    Deadband,
    /// A target asked earlier is still on its way.
    InFlight,
    /// Its balloon does not reach what was asked: not asked again yet.
    Backoff,
    /// Floor equals ceiling: no headroom to give.
    NoHeadroom,
    /// No balloon device.
    NoBalloon,
    /// Not running.
    NotRunning,
    /// Its metadata says `manage="no"`.
    OptedOut,
    /// Its balloon was set by someone else: left alone until released.
    HeldByHand,
    /// Its balloon moved away from what was asked; left alone this pass.
    Unsettled,
    /// Floor above ceiling: the record is impossible.
    BadBounds,
    /// Its balloon's figures could not be read this pass.
    Unreadable,
    /// Not recorded by a hook: adopted once its balloon has settled.
    Adopting,
    /// Its QEMU did not answer libvirt in time: left alone this pass.
    Unresponsive,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Share => "floor plus its share of the savings",
            Reason::Ceiling => "its share reaches its ceiling",
            Reason::HostGuard => "host guard: MemAvailable near the reserve",
            Reason::Squeezed => "host under its reserve: squeezed into its applications' memory",
            Reason::Kept => "keeps what its applications hold (the savings no longer cover it)",
            Reason::BlindStep => "no fresh guest statistics: a bounded step per pass",
            Reason::Awaiting => {
                "keeps its loan until its guest reports fresh figures that answer the last ask"
            }
            Reason::RecallStep => {
                "gives its loan back in steps, each checked by its guest's figures"
            }
            Reason::KsmStopped => "KSM is not merging: sizes held",
            Reason::StepLimit => "per-pass step limit",
            Reason::OutOfBounds => "size was outside [floor, ceiling]",
            Reason::Steady => "at its target",
            Reason::Deadband => "within the deadband",
            Reason::InFlight => "an earlier target is still on its way",
            Reason::Backoff => "its balloon does not reach the target: asked again later",
            Reason::NoHeadroom => "floor equals ceiling: no headroom",
            Reason::NoBalloon => "no balloon device",
            Reason::NotRunning => "not running",
            Reason::OptedOut => "its metadata says manage=\"no\"",
            Reason::HeldByHand => "set by someone else: left alone until released",
            Reason::Unsettled => "its balloon moved away from what was asked: left alone this pass",
            Reason::BadBounds => "floor above ceiling",
            Reason::Unreadable => "its balloon could not be read this pass",
            Reason::Adopting => "no hook recorded it: adopted once its balloon settles",
            Reason::Unresponsive => "its QEMU does not answer: left alone until it does",
        })
    }
}

/// The decision for one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The policy's target in KiB (for Skip: the current size).
    pub target_kib: u64,
    /// What to do.
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// What it keeps above what the savings give it, because it cannot
    /// give it back without harm (safe recall), in KiB.
    pub kept_kib: u64,
    /// What the host guard takes from its applications' memory, in KiB.
    pub squeezed_kib: u64,
    /// What it could give back without harm this pass, in KiB.
    pub givable_kib: u64,
}

impl Decision {
    fn skip(vm: &VmView, reason: Reason) -> Decision {
        Decision {
            target_kib: vm.current_kib,
            action: Action::Skip,
            reason,
            kept_kib: 0,
            squeezed_kib: 0,
            givable_kib: 0,
        }
    }

    /// The size the VM has after this decision is applied.
    pub fn applied_kib(&self, current_kib: u64) -> u64 {
        match self.action {
            Action::Grow | Action::Shrink => self.target_kib,
            Action::Hold | Action::Skip => current_kib,
        }
    }

    /// True when the balloon is to be set.
    pub fn resizes(&self) -> bool {
        matches!(self.action, Action::Grow | Action::Shrink)
    }
}

/// The whole pass's plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Savings × share, in KiB.
    pub pool_kib: u64,
    /// What is handed out after the host guard, in KiB.
    pub budget_kib: u64,
    /// The bonuses the managed VMs hold now (above their floors), in KiB.
    pub bonus_now_kib: u64,
    /// MemAvailable is under the reserve: nothing grows.
    pub under_reserve: bool,
    /// How far under the reserve, in KiB (0 above it).
    pub shortfall_kib: u64,
    /// What the bonuses shrink by this pass, in KiB.
    pub recalled_kib: u64,
    /// What VMs keep that the savings no longer cover, in KiB.
    pub kept_kib: u64,
    /// What the guard takes from applications' memory, in KiB.
    pub squeezed_kib: u64,
    /// How many VMs take part in the split.
    pub managed: usize,
    /// One decision per input VM, in input order.
    pub decisions: Vec<Decision>,
}

/// Divides `pool` among slots with capacity `caps` and weights `weights`,
/// filling the smallest capacity-per-weight first so that what a slot cannot
/// take goes to the others. Each slot gets at most its cap; the total is at
/// most `pool`, and exactly `pool` when the caps allow it.
pub fn water_fill(pool: u64, caps: &[u64], weights: &[u64]) -> Vec<u64> {
    assert_eq!(caps.len(), weights.len());
    let weights: Vec<u128> = weights.iter().map(|&w| u128::from(w.max(1))).collect();
    let mut order: Vec<usize> = (0..caps.len()).collect();
    // Ascending cap/weight, compared without division.
    order.sort_by(|&a, &b| {
        (u128::from(caps[a]) * weights[b])
            .cmp(&(u128::from(caps[b]) * weights[a]))
            .then(a.cmp(&b))
    });
    let mut left = u128::from(pool);
    let mut weight_left: u128 = weights.iter().sum();
    let mut out = vec![0u64; caps.len()];
    for i in order {
        let fair = left * weights[i] / weight_left.max(1);
        let give = fair.min(u128::from(caps[i]));
        out[i] = give as u64;
        left -= give;
        weight_left -= weights[i];
    }
    out
}

/// One eligible VM while the plan is worked out. Sizes in KiB.
struct Slot {
    /// Index into the input.
    i: usize,
    floor: u64,
    headroom: u64,
    /// Its bonus now (current size, clamped into its bounds, above floor).
    bonus: u64,
    /// What it can give back without harm: the free part ...
    give_free: u64,
    /// ... and the page-cache part (for a VM without fresh statistics, the
    /// blind step).
    give_cache: u64,
    /// What it gives back at most this pass above the reserve: a recall
    /// step ([`recall_step_kib`]) on figures it may be acted on, nothing
    /// on others, the blind step without figures.
    step: u64,
    blind: bool,
    /// It has figures, but they are too old or predate an ask.
    awaiting: bool,
    weight: u64,
}

impl Slot {
    fn give(&self) -> u64 {
        self.give_free + self.give_cache
    }
}

fn slot(i: usize, vm: &VmView, policy: &Policy) -> Slot {
    let cur = vm.current_kib.clamp(vm.floor_kib, vm.ceiling_kib);
    let bonus = cur - vm.floor_kib;
    // A grow still on its way was never the guest's: handed back whole,
    // whatever its figures, with no margin and no recall step.
    let undelivered = vm.current_kib.saturating_sub(vm.actual_kib).min(bonus);
    let (give_free, give_cache, step, blind, ready) = match vm.guest {
        Some(g) => {
            // The figures describe the guest at the balloon's size now; the
            // plan starts from a target still on its way. A shrink on its
            // way takes its part of what the guest has available before
            // anything this pass asks for; a grow on its way brings free
            // memory the guest can hand straight back (asked for less now,
            // it simply never gets it).
            let (usable, unused) = if vm.current_kib >= vm.actual_kib {
                let more = vm.current_kib - vm.actual_kib;
                (g.usable_kib + more, g.unused_kib + more)
            } else {
                let less = vm.actual_kib - vm.current_kib;
                (
                    g.usable_kib.saturating_sub(less),
                    g.unused_kib.saturating_sub(less),
                )
            };
            // What it can give without harm (the host takes it at once
            // under the reserve) ...
            let margin = g.margin_kib();
            let harmless = usable.saturating_sub(margin);
            let free = unused.saturating_sub(margin).min(harmless);
            // ... and one recall step above the reserve: on figures it may
            // be acted on, at most half of what they allow from where its
            // balloon is, the margin grown with their age.
            let step = if g.recall_ready() {
                let at_actual = usable
                    .saturating_sub(undelivered)
                    .saturating_sub(g.margin_at_age_kib());
                undelivered + recall_step_kib(at_actual.min(bonus - undelivered))
            } else {
                // Nothing is taken on these figures (the decision holds),
                // but a dip of the savings within the deadband is no loan
                // kept: the split may count it as given back.
                undelivered + harmless.min(bonus - undelivered).min(policy.deadband_kib)
            };
            (free, harmless - free, step, false, g.recall_ready())
        }
        // A bounded step below the balloon's size now, not below a target
        // still on its way: a balloon that stops short is not asked for
        // another step every pass.
        None => {
            let blind = policy.blind_step_kib.map_or(u64::MAX, |step| {
                (vm.current_kib.saturating_add(step)).saturating_sub(vm.actual_kib)
            });
            (0, blind, blind, true, true)
        }
    };
    let give_free = give_free.min(bonus);
    let give_cache = give_cache.min(bonus - give_free);
    let step = step.min(bonus);
    Slot {
        i,
        floor: vm.floor_kib,
        headroom: vm.ceiling_kib - vm.floor_kib,
        bonus,
        give_free,
        give_cache,
        step,
        blind,
        awaiting: !blind && !ready,
        weight: 0,
    }
}

/// Each eligible VM's weight in the split: by the split, times its
/// metadata weight. A VM whose contribution is unknown counts as the
/// average of those known (an equal split when none is known).
///
/// A VM whose demand is unknown weighs as an idle one, [`DEMAND_BASE`]
/// (issue 20): an unknown is a VM that gives no evidence it would use more
/// memory (no fresh figures, or full memory and no disk rate yet); counted
/// as the average, as it once was, two such VMs beside one measured reader
/// weighed as much as it: the split was equal. It keeps its floor and its
/// base part, and its demand counts from the pass its figures show a rate.
/// When every demand is unknown the split is equal.
fn split_weights(split: Split, vms: &[&VmView]) -> Vec<u64> {
    let mean = |xs: Vec<u64>, default: u64| -> u64 {
        if xs.is_empty() {
            default
        } else {
            (xs.iter().map(|&x| u128::from(x)).sum::<u128>() / xs.len() as u128) as u64
        }
    };
    let demand: Vec<u64> = vms
        .iter()
        .map(|v| DEMAND_BASE.saturating_add(v.demand.unwrap_or(0)))
        .collect();
    let contribution: Vec<u64> = {
        let known: Vec<u64> = vms.iter().filter_map(|v| v.contribution_kib).collect();
        let any = !known.is_empty();
        let avg = mean(known, 1);
        vms.iter()
            .map(|v| {
                if any {
                    v.contribution_kib.unwrap_or(avg)
                } else {
                    1
                }
            })
            .collect()
    };
    vms.iter()
        .enumerate()
        .map(|(k, v)| {
            let w: u128 = match split {
                Split::Equal => 1,
                Split::Proportional => u128::from(v.floor_kib),
                Split::Demand => u128::from(demand[k]),
                Split::Contribution => u128::from(contribution[k]),
                Split::ContributionDemand => {
                    u128::from(contribution[k]) * u128::from(demand[k]) / u128::from(DEMAND_BASE)
                }
            };
            u64::try_from(w.saturating_mul(u128::from(v.weight))).unwrap_or(u64::MAX)
        })
        .collect()
}

/// The split with the loan rule: water-fill `budget`; a VM whose part
/// would take back more than it can give this pass (its recall step)
/// keeps its bonus less that step, and the rest of the budget is filled among the others, until no
/// VM is asked for more than it can give. Returns (bonus, its part of the
/// plain split) per slot: what it keeps is the difference.
fn split_with_loans(
    budget: u64,
    slots: &[Slot],
    caps: &[u64],
    under_reserve: bool,
) -> Vec<(u64, u64)> {
    // Under the reserve the host wins: what the guest's figures say it can
    // give, at once, not a recall step.
    let can = |s: &Slot| if under_reserve { s.give() } else { s.step };
    let weights: Vec<u64> = slots.iter().map(|s| s.weight).collect();
    let ideal = water_fill(budget, caps, &weights);
    let mut fixed: Vec<Option<u64>> = vec![None; slots.len()];
    loop {
        let open: Vec<usize> = (0..slots.len()).filter(|&k| fixed[k].is_none()).collect();
        let held: u64 = fixed.iter().flatten().sum();
        let alloc = water_fill(
            budget.saturating_sub(held),
            &open.iter().map(|&k| caps[k]).collect::<Vec<_>>(),
            &open.iter().map(|&k| weights[k]).collect::<Vec<_>>(),
        );
        let mut changed = false;
        for (j, &k) in open.iter().enumerate() {
            let s = &slots[k];
            if s.bonus > alloc[j] + can(s) {
                fixed[k] = Some(s.bonus - can(s));
                changed = true;
            }
        }
        if !changed {
            return (0..slots.len())
                .map(|k| {
                    let b = fixed[k].unwrap_or_else(|| {
                        alloc[open.iter().position(|&o| o == k).expect("open slot")]
                    });
                    (b, ideal[k])
                })
                .collect();
        }
    }
}

/// Takes up to `want` from `avail` (per slot), largest first (fewest
/// resizes); returns what was taken from each.
fn take_largest_first(want: u64, avail: &[u64]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..avail.len()).collect();
    order.sort_by(|&a, &b| avail[b].cmp(&avail[a]).then(a.cmp(&b)));
    let mut left = want;
    let mut out = vec![0; avail.len()];
    for k in order {
        let t = avail[k].min(left);
        out[k] = t;
        left -= t;
    }
    out
}

/// What the whole host is this pass, as each VM's decision needs it.
#[derive(Clone, Copy, Debug)]
struct Mode {
    /// KSM's counters can be trusted.
    live: bool,
    /// The host is under its reserve.
    under_reserve: bool,
    /// The guard cut the budget below the pool.
    guarded: bool,
}

/// Works out every VM's target. Pure: same input, same output. In order:
/// who takes part (`admit`), the pool and its split with the loan rule
/// (`split_pool`), under the reserve the guard (`guard`), then each VM's
/// decision (`decide`, its reason from `reason_for`).
pub fn plan(policy: &Policy, host: &HostView, vms: &[VmView]) -> Plan {
    let share = if policy.share.is_finite() {
        policy.share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (mut decisions, mut slots) = admit(policy, vms);
    {
        let eligible: Vec<&VmView> = slots.iter().map(|s| &vms[s.i]).collect();
        for (s, w) in slots.iter_mut().zip(split_weights(policy.split, &eligible)) {
            s.weight = w;
        }
    }
    let bonus_now: u64 = slots.iter().map(|s| s.bonus).sum();
    let pool = if host.ksm_counters_live {
        (host.savings_kib as f64 * share).floor() as u64
    } else {
        0
    };
    let room = i128::from(host.available_kib) - i128::from(policy.reserve_kib);
    let under_reserve = room < 0;
    let shortfall = if under_reserve { (-room) as u64 } else { 0 };
    let (budget, mut split) = split_pool(host, &slots, pool, bonus_now, room);
    let guarded = host.ksm_counters_live && budget < pool;
    let squeezed = if under_reserve {
        guard(policy, &slots, &mut split, shortfall.min(bonus_now))
    } else {
        vec![0u64; slots.len()]
    };
    let mode = Mode {
        live: host.ksm_counters_live,
        under_reserve,
        guarded,
    };
    for (k, s) in slots.iter().enumerate() {
        decisions[s.i] = Some(decide(policy, mode, s, &vms[s.i], split[k], squeezed[k]));
    }

    let decisions: Vec<Decision> = decisions
        .into_iter()
        .map(|d| d.expect("every VM has a decision"))
        .collect();
    let recalled_kib = slots
        .iter()
        .map(|s| {
            let d = &decisions[s.i];
            (s.floor + s.bonus).saturating_sub(d.applied_kib(vms[s.i].current_kib))
        })
        .sum();
    Plan {
        pool_kib: pool,
        budget_kib: budget,
        bonus_now_kib: bonus_now,
        under_reserve,
        shortfall_kib: shortfall,
        recalled_kib,
        kept_kib: decisions.iter().map(|d| d.kept_kib).sum(),
        squeezed_kib: decisions.iter().map(|d| d.squeezed_kib).sum(),
        managed: slots.len(),
        decisions,
    }
}

/// Who takes part: a decision (skip, and why) for every VM that does not,
/// a slot for every one that does.
fn admit(policy: &Policy, vms: &[VmView]) -> (Vec<Option<Decision>>, Vec<Slot>) {
    let mut decisions: Vec<Option<Decision>> = vec![None; vms.len()];
    let mut slots = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        decisions[i] = match vm.status {
            VmStatus::NoBalloon => Some(Decision::skip(vm, Reason::NoBalloon)),
            VmStatus::NotRunning => Some(Decision::skip(vm, Reason::NotRunning)),
            VmStatus::OptedOut => Some(Decision::skip(vm, Reason::OptedOut)),
            VmStatus::HeldByHand => Some(Decision::skip(vm, Reason::HeldByHand)),
            VmStatus::Unsettled => Some(Decision::skip(vm, Reason::Unsettled)),
            VmStatus::Managed if vm.floor_kib > vm.ceiling_kib => {
                Some(Decision::skip(vm, Reason::BadBounds))
            }
            VmStatus::Managed if vm.floor_kib == vm.ceiling_kib => {
                Some(Decision::skip(vm, Reason::NoHeadroom))
            }
            VmStatus::Managed => {
                slots.push(slot(i, vm, policy));
                None
            }
        };
    }

    (decisions, slots)
}

/// The budget (the pool, capped by the guard) and, per slot, (its bonus,
/// its part of the plain split): the split with the loan rule when KSM is
/// live, the sizes held when it is not. Under the reserve nothing grows,
/// so nothing is taken from one VM to grow another: the split is capped at
/// each VM's bonus now, and takes back only what the fallen savings no
/// longer cover.
fn split_pool(
    host: &HostView,
    slots: &[Slot],
    pool: u64,
    bonus_now: u64,
    room: i128,
) -> (u64, Vec<(u64, u64)>) {
    let under_reserve = room < 0;
    if host.ksm_counters_live {
        let guard_cap = (i128::from(bonus_now) + room.max(0)) as u64;
        let budget = pool.min(guard_cap);
        // A VM of weight 0 takes no part of the pool.
        let caps: Vec<u64> = slots
            .iter()
            .map(|s| match (s.weight, under_reserve) {
                (0, _) => 0,
                (_, true) => s.bonus,
                (_, false) => s.headroom,
            })
            .collect();
        (
            budget,
            split_with_loans(budget, slots, &caps, under_reserve),
        )
    } else {
        (
            bonus_now,
            slots.iter().map(|s| (s.bonus, s.bonus)).collect(),
        )
    }
}

/// Under the reserve: nothing grows, and the bonuses shrink by exactly
/// `required` (the shortfall, at most what is handed out) or by what the
/// split already takes back, if more. First what guests leave free, then
/// their caches (largest first), then their applications' memory, in
/// proportion to their bonuses. Returns what is squeezed from each slot's
/// applications.
fn guard(policy: &Policy, slots: &[Slot], split: &mut [(u64, u64)], required: u64) -> Vec<u64> {
    let mut squeezed = vec![0u64; slots.len()];
    for (k, s) in slots.iter().enumerate() {
        split[k].0 = split[k].0.min(s.bonus);
    }
    let recalled: u64 = slots
        .iter()
        .zip(split.iter())
        .map(|(s, b)| s.bonus - b.0)
        .sum();
    let mut left = required.saturating_sub(recalled);
    // First what guests leave free, then their caches (largest first),
    // then their applications' memory, in proportion to their bonuses.
    for class in [0, 1] {
        let avail: Vec<u64> = slots
            .iter()
            .zip(split.iter())
            .map(|(s, b)| {
                let given = s.bonus - b.0;
                let free_left = s.give_free.saturating_sub(given);
                let cache_left = s.give().saturating_sub(given.max(s.give_free));
                let a = if class == 0 { free_left } else { cache_left };
                a.min(b.0)
            })
            .collect();
        for (k, t) in take_largest_first(left, &avail).into_iter().enumerate() {
            split[k].0 -= t;
            left -= t;
        }
    }
    if left > 0 {
        let caps: Vec<u64> = split
            .iter()
            .map(|b| policy.max_squeeze_kib.map_or(b.0, |m| b.0.min(m)))
            .collect();
        let weights: Vec<u64> = split.iter().map(|b| b.0).collect();
        for (k, t) in water_fill(left, &caps, &weights).into_iter().enumerate() {
            split[k].0 -= t;
            squeezed[k] = t;
        }
    }
    squeezed
}

/// The reason a slot's target has before the step limits and the deadband.
fn reason_for(mode: Mode, s: &Slot, bonus: u64, ideal: u64, squeezed: u64) -> Reason {
    let kept = bonus.saturating_sub(ideal);
    let under_reserve = mode.under_reserve;
    if squeezed > 0 {
        Reason::Squeezed
    } else if !mode.live {
        Reason::KsmStopped
    } else if under_reserve && bonus < s.bonus {
        Reason::HostGuard
    } else if kept > 0 && s.blind {
        Reason::BlindStep
    } else if kept > 0 && s.awaiting && !under_reserve {
        Reason::Awaiting
    } else if kept > 0 && !under_reserve && s.give() >= s.bonus.saturating_sub(ideal) {
        Reason::RecallStep
    } else if kept > 0 {
        Reason::Kept
    } else if mode.guarded {
        Reason::HostGuard
    } else if bonus == s.headroom && s.headroom > 0 {
        Reason::Ceiling
    } else {
        Reason::Share
    }
}

/// One slot's decision: its target from its part of the split, the step
/// limits, its bounds, then the deadband and the recall rule's await.
fn decide(
    policy: &Policy,
    mode: Mode,
    s: &Slot,
    vm: &VmView,
    (bonus, ideal): (u64, u64),
    squeezed: u64,
) -> Decision {
    let under_reserve = mode.under_reserve;
    let kept = bonus.saturating_sub(ideal);
    let mut target = s.floor + bonus;
    let cur = s.floor + s.bonus;
    let mut reason = reason_for(mode, s, bonus, ideal, squeezed);
    if let Some(g) = policy.max_grow_kib {
        if target > vm.current_kib.saturating_add(g) {
            target = vm.current_kib.saturating_add(g);
            reason = Reason::StepLimit;
        }
    }
    if !under_reserve {
        if let Some(m) = policy.max_shrink_kib {
            if target.saturating_add(m) < vm.current_kib {
                target = vm.current_kib - m;
                reason = Reason::StepLimit;
            }
        }
    }
    // Bounds win over everything above.
    let target = target.clamp(vm.floor_kib, vm.ceiling_kib);
    let out_of_bounds = vm.current_kib != cur;
    let diff = target.abs_diff(vm.current_kib);
    let band = if target == vm.floor_kib {
        policy.deadband_kib.min(FLOOR_TOLERANCE_KIB)
    } else {
        policy.deadband_kib
    };
    // Under the reserve every shrink counts towards the shortfall: no
    // deadband holds one back.
    let exempt = under_reserve && target < vm.current_kib;
    let (action, reason) = if diff == 0 {
        let r = if kept > 0 || squeezed > 0 {
            reason
        } else {
            Reason::Steady
        };
        (Action::Hold, r)
    } else if out_of_bounds {
        let a = if target > vm.current_kib {
            Action::Grow
        } else {
            Action::Shrink
        };
        (a, Reason::OutOfBounds)
    } else if s.awaiting
        && !under_reserve
        && target < vm.actual_kib.min(vm.current_kib)
        && (kept > 0 || diff > band)
    {
        // figures that do not answer every ask: nothing is taken from
        // the guest this pass (a grow still on its way may go back)
        (Action::Hold, Reason::Awaiting)
    } else if diff <= band && !exempt {
        (Action::Hold, Reason::Deadband)
    } else if target > vm.current_kib {
        (Action::Grow, reason)
    } else {
        (Action::Shrink, reason)
    };
    // An awaited recall holds where the balloon is (or a grow on its
    // way is handed back): all of it is kept this pass.
    let (target, kept, action) = if reason == Reason::Awaiting && action == Action::Hold {
        let at = vm
            .current_kib
            .min(vm.actual_kib)
            .clamp(vm.floor_kib, vm.ceiling_kib);
        // a grow still on its way is handed back all the same
        let action = if at < vm.current_kib {
            Action::Shrink
        } else {
            Action::Hold
        };
        (at, (at - vm.floor_kib).saturating_sub(ideal), action)
    } else {
        (target, kept, action)
    };
    Decision {
        target_kib: target,
        action,
        reason,
        kept_kib: kept,
        squeezed_kib: squeezed,
        givable_kib: if under_reserve {
            s.give()
        } else if reason == Reason::Awaiting {
            0
        } else {
            s.step
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024;

    fn vm(floor: u64, ceiling: u64, current: u64) -> VmView {
        VmView::new(floor * MIB, ceiling * MIB, current * MIB, VmStatus::Managed)
    }

    /// A guest whose statistics say it has `usable` MiB available, `free`
    /// MiB of it free, of `total` MiB.
    fn guest(v: VmView, usable: u64, free: u64, total: u64) -> VmView {
        v.with_guest(GuestView::now(usable * MIB, free * MIB, total * MIB))
    }

    /// A guest that could give everything back.
    fn roomy(v: VmView) -> VmView {
        guest(v, 4096, 4096, 4096)
    }

    fn host(savings_mib: u64) -> HostView {
        HostView {
            savings_kib: savings_mib * MIB,
            ksm_counters_live: true,
            available_kib: 64 * 1024 * MIB,
        }
    }

    fn targets_mib(p: &Plan) -> Vec<u64> {
        p.decisions.iter().map(|d| d.target_kib / MIB).collect()
    }

    #[test]
    fn equal_split_table() {
        // (savings MiB, [(floor, ceiling, current)], expected targets MiB)
        type Row<'a> = (u64, &'a [(u64, u64, u64)], &'a [u64]);
        let table: &[Row] = &[
            (0, &[(160, 256, 160), (160, 256, 160)], &[160, 160]),
            (
                60,
                &[(160, 256, 160), (160, 256, 160), (160, 256, 160)],
                &[180, 180, 180],
            ),
            // the paper's sizes: 2 GB floor, 2.25 GB ceiling, three VMs
            (300, &[(2048, 2304, 2048); 3], &[2148, 2148, 2148]),
            // more savings than headroom: everyone at the ceiling
            (10_000, &[(160, 256, 160), (160, 256, 160)], &[256, 256]),
            // water-filling: the small one fills, the rest goes to the big one
            (120, &[(160, 180, 160), (160, 400, 160)], &[180, 260]),
            (
                90,
                &[(100, 110, 100), (100, 120, 100), (100, 500, 100)],
                &[110, 120, 160],
            ),
        ];
        for (savings, vms, want) in table {
            let vms: Vec<_> = vms.iter().map(|&(f, c, cur)| vm(f, c, cur)).collect();
            let p = plan(&Policy::default(), &host(*savings), &vms);
            assert_eq!(&targets_mib(&p), want, "savings {savings} vms {vms:?}");
        }
    }

    #[test]
    fn share_scales_the_pool() {
        let policy = Policy {
            share: 0.5,
            ..Policy::default()
        };
        let p = plan(&policy, &host(60), &[vm(100, 200, 100), vm(100, 200, 100)]);
        assert_eq!(p.pool_kib, 30 * MIB);
        assert_eq!(targets_mib(&p), [115, 115]);
    }

    #[test]
    fn proportional_split() {
        let policy = Policy {
            split: Split::Proportional,
            ..Policy::default()
        };
        let p = plan(
            &policy,
            &host(90),
            &[vm(100, 1000, 100), vm(200, 1000, 200)],
        );
        assert_eq!(targets_mib(&p), [130, 260]);
    }

    #[test]
    fn splits_by_name() {
        for (name, s) in Split::ALL {
            assert_eq!(name.parse::<Split>(), Ok(s));
            assert_eq!(s.to_string(), name);
        }
        assert!("fair".parse::<Split>().unwrap_err().contains("equal"));
    }

    #[test]
    fn shrinks_when_savings_fall_as_far_as_the_guest_can_give() {
        let vms = [roomy(vm(160, 256, 200)), roomy(vm(160, 256, 200))];
        // Their parts fell to 10 each; each gives back one recall step:
        // half of the 40 it could give.
        let p = plan(&Policy::default(), &host(20), &vms);
        assert_eq!(targets_mib(&p), [180, 180]);
        assert!(p.decisions.iter().all(|d| d.action == Action::Shrink));
        assert!(p.decisions.iter().all(|d| d.reason == Reason::RecallStep));
        // Savings gone: step by step to the floor, each step on figures
        // that answer the last one: 200 -> 180 -> 164 (at least 16) -> 160.
        let mut at = 200;
        let mut steps = vec![at];
        while at > 160 {
            let v = roomy(vm(160, 256, at));
            at = plan(&Policy::default(), &host(0), &[v]).decisions[0].target_kib / MIB;
            steps.push(at);
        }
        assert_eq!(steps, [200, 180, 164, 160]);
    }

    #[test]
    fn a_recall_waits_for_figures_that_answer_the_last_ask() {
        // Figures that do not answer the last ask, or older than
        // RECALL_FRESH_SECS: nothing given back above the reserve.
        let fresh = guest(vm(160, 320, 240), 200, 150, 200);
        for g in [
            GuestView {
                confirmed: false,
                ..fresh.guest.unwrap()
            },
            GuestView {
                age_secs: RECALL_FRESH_SECS + 1,
                ..fresh.guest.unwrap()
            },
        ] {
            let v = vm(160, 320, 240).with_guest(g);
            let d = plan(&Policy::default(), &host(0), &[v]).decisions[0];
            assert_eq!(
                (d.action, d.reason, d.target_kib),
                (Action::Hold, Reason::Awaiting, 240 * MIB)
            );
            assert_eq!((d.kept_kib, d.givable_kib), (80 * MIB, 0));
            // under the reserve the host wins all the same: what the
            // figures say the guest can give, at once
            let under = HostView {
                available_kib: 0,
                ..host(0)
            };
            let policy = Policy {
                reserve_kib: 40 * MIB,
                ..Policy::default()
            };
            let d = plan(&policy, &under, &[v]).decisions[0];
            assert_eq!((d.action, d.target_kib), (Action::Shrink, 160 * MIB));
        }
        // the same figures, fresh and confirmed: one step
        let d = plan(&Policy::default(), &host(0), &[fresh]).decisions[0];
        assert_eq!((d.action, d.target_kib), (Action::Shrink, 200 * MIB));
    }

    #[test]
    fn a_dip_of_the_savings_within_the_deadband_is_no_loan_kept_regression() {
        // 38-operator on the real stack: the savings dipped by a few KiB
        // between two passes, each guest's new part was 3 KiB under its
        // size, and guests whose figures did not answer the last ask were
        // reported keeping 3 KiB, reason awaiting (and set to a 1 s
        // statistics period): not a plain split. A dip inside the deadband
        // is held as one, whatever the figures.
        let g = GuestView {
            confirmed: false,
            ..GuestView::now(100 * MIB, 100 * MIB, 200 * MIB)
        };
        let vms = [
            vm(160, 320, 200).with_guest(g),
            vm(160, 320, 200).with_guest(g),
        ];
        let mut h = host(80);
        h.savings_kib -= 6;
        let p = plan(&Policy::default(), &h, &vms);
        for d in &p.decisions {
            assert_eq!(
                (d.action, d.reason, d.kept_kib),
                (Action::Hold, Reason::Deadband, 0)
            );
        }
        assert_eq!(p.kept_kib, 0);
    }

    #[test]
    fn the_margin_grows_with_the_figures_age() {
        let g = GuestView::now(100 * MIB, 100 * MIB, 200 * MIB);
        assert_eq!(g.margin_at_age_kib(), 16 * MIB);
        let old = |age_secs| GuestView { age_secs, ..g }.margin_at_age_kib();
        assert_eq!(old(3), 16 * MIB + 16 * MIB * 3 / 10);
        assert_eq!(old(10), 32 * MIB);
        // a 3 s old report of 50 MiB available: 50 - 20.8 = 29.2 givable,
        // a step of 16 (at least 16, half is less)
        let v = vm(160, 320, 240).with_guest(GuestView {
            age_secs: 3,
            ..GuestView::now(50 * MIB, 10 * MIB, 200 * MIB)
        });
        let d = plan(&Policy::default(), &host(0), &[v]).decisions[0];
        assert_eq!(d.target_kib, 224 * MIB);
        assert_eq!(d.givable_kib, 16 * MIB);
    }

    #[test]
    fn recall_steps_are_half_of_what_can_be_given_at_least_16_mib() {
        for (givable, step) in [
            (0, 0),
            (10, 10),
            (16, 16),
            (20, 16),
            (32, 16),
            (40, 20),
            (100, 50),
        ] {
            assert_eq!(recall_step_kib(givable * MIB), step * MIB, "{givable}");
        }
    }

    #[test]
    fn a_grow_on_its_way_is_handed_back_whole_even_on_figures_awaited() {
        // Asked for 240, still at 160, figures that predate the ask: the
        // 80 MiB the guest never got go back; nothing more is recalled.
        let mut v = vm(160, 320, 240).with_guest(GuestView {
            confirmed: false,
            ..GuestView::now(100 * MIB, 100 * MIB, 200 * MIB)
        });
        v.actual_kib = 160 * MIB;
        let d = plan(&Policy::default(), &host(0), &[v]).decisions[0];
        assert_eq!((d.action, d.target_kib), (Action::Shrink, 160 * MIB));
    }

    #[test]
    fn loan_rule_table() {
        // Savings gone (pool 0), host far above its reserve; one VM at
        // 240 MiB (floor 160), its guest reporting (usable, free, total).
        // Margin: max(16 MiB, 5 % of total).
        // (usable, free, total, expected target, kept, reason)
        type Row = (u64, u64, u64, u64, u64, Reason);
        // One recall step a pass: half of what it can give, at least 16.
        let table: &[Row] = &[
            // plenty available: the first of its steps back to the floor
            (200, 150, 200, 200, 40, Reason::RecallStep),
            // 50 available - 16 margin = 34 givable, a step of 17: its
            // applications hold 46 of its 80
            (50, 10, 200, 223, 63, Reason::Kept),
            // nothing above the margin: keeps it all, holds
            (16, 16, 200, 240, 80, Reason::Kept),
            // a big guest's margin is 5 % of its memory: 400 total -> 20,
            // 40 givable, a step of 20
            (60, 60, 400, 220, 60, Reason::Kept),
        ];
        for &(usable, free, total, want, kept, reason) in table {
            let v = guest(vm(160, 320, 240), usable, free, total);
            let p = plan(&Policy::default(), &host(0), &[v]);
            let d = p.decisions[0];
            assert_eq!(
                (d.target_kib / MIB, d.kept_kib / MIB, d.reason),
                (want, kept, reason),
                "usable {usable} free {free} total {total}"
            );
            assert!(d.target_kib >= v.floor_kib);
        }
    }

    #[test]
    fn what_one_vm_keeps_is_not_lent_to_the_others() {
        // a holds 80 MiB of bonus it cannot give; b is at its floor. The
        // pool fell to 40: a keeps 80, so b gets nothing rather than 20.
        let a = guest(vm(160, 320, 240), 16, 16, 200);
        let b = roomy(vm(160, 320, 160));
        let p = plan(&Policy::default(), &host(40), &[a, b]);
        assert_eq!(targets_mib(&p), [240, 160]);
        assert_eq!(p.kept_kib, 60 * MIB);
        // a bigger pool: a's equal part (60) is still under what it holds
        // (80), b gets the rest
        let p = plan(&Policy::default(), &host(120), &[a, b]);
        assert_eq!(targets_mib(&p), [240, 200]);
        assert_eq!(p.kept_kib, 20 * MIB);
        // once its part covers what it holds, it keeps nothing extra
        let p = plan(&Policy::default(), &host(160), &[a, b]);
        assert_eq!(targets_mib(&p), [240, 240]);
        assert_eq!(p.kept_kib, 0);
    }

    #[test]
    fn a_guest_without_fresh_statistics_gives_a_bounded_step() {
        let p = plan(&Policy::default(), &host(0), &[vm(160, 320, 240)]);
        let d = p.decisions[0];
        assert_eq!(d.target_kib, 224 * MIB);
        assert_eq!(d.reason, Reason::BlindStep);
        let policy = Policy {
            blind_step_kib: None,
            ..Policy::default()
        };
        assert_eq!(
            plan(&policy, &host(0), &[vm(160, 320, 240)]).decisions[0].target_kib,
            160 * MIB
        );
    }

    #[test]
    fn a_shrink_in_flight_counts_against_what_the_guest_can_give() {
        // Asked for 200 last pass, still at 240; the guest reports 60 MiB
        // available at 240: 40 of it goes to the shrink on its way, 16 is
        // the margin, 4 more can go.
        let mut v = guest(vm(160, 320, 200), 60, 60, 200);
        v.actual_kib = 240 * MIB;
        let p = plan(
            &Policy {
                deadband_kib: 0,
                ..Policy::default()
            },
            &host(0),
            &[v],
        );
        assert_eq!(p.decisions[0].target_kib, 196 * MIB);
    }

    #[test]
    fn a_grow_on_its_way_counts_as_memory_the_guest_can_give_back_regression() {
        // Asked for 240 last pass, still at 160; the guest, holding its
        // data, reports 20 MiB available at 160. The savings are gone: the
        // grow on its way is handed back whole. Before, only the 4 MiB above
        // the margin counted, and the guest was kept at 236 MiB with
        // nothing behind it.
        let mut v = guest(vm(160, 320, 240), 20, 20, 112);
        v.actual_kib = 160 * MIB;
        let p = plan(&Policy::default(), &host(0), &[v]);
        let d = p.decisions[0];
        assert_eq!((d.target_kib, d.kept_kib), (160 * MIB, 0));
        assert_eq!(d.action, Action::Shrink);
        // part of the way: at 200 of 240, 20 MiB available at 200; the 40
        // still to come and 4 of the 20 go back
        v.actual_kib = 200 * MIB;
        let d = plan(&Policy::default(), &host(0), &[v]).decisions[0];
        assert_eq!((d.target_kib, d.kept_kib), (196 * MIB, 36 * MIB));
    }

    #[test]
    fn floors_are_never_crossed() {
        // current below the floor (someone shrank it by hand): back to the floor
        let p = plan(&Policy::default(), &host(0), &[vm(160, 256, 100)]);
        assert_eq!(p.decisions[0].target_kib, 160 * MIB);
        assert_eq!(p.decisions[0].action, Action::Grow);
        assert_eq!(p.decisions[0].reason, Reason::OutOfBounds);
    }

    #[test]
    fn deadband_and_floor_snap() {
        let policy = Policy {
            deadband_kib: 8 * MIB,
            ..Policy::default()
        };
        // 5 MiB move: inside the 8 MiB deadband
        let p = plan(&policy, &host(30), &[roomy(vm(100, 200, 125))]);
        assert_eq!(p.decisions[0].action, Action::Hold);
        assert_eq!(p.decisions[0].reason, Reason::Deadband);
        // but a return to the floor from 3 MiB above it is applied
        let p = plan(&policy, &host(0), &[roomy(vm(100, 200, 103))]);
        assert_eq!(p.decisions[0].action, Action::Shrink);
        // and within the floor tolerance it is not
        let mut v = roomy(vm(100, 200, 100));
        v.current_kib += 512;
        v.actual_kib = v.current_kib;
        let p = plan(&policy, &host(0), &[v]);
        assert_eq!(p.decisions[0].action, Action::Hold);
    }

    #[test]
    fn steady_is_hold() {
        let p = plan(
            &Policy::default(),
            &host(40),
            &[vm(100, 200, 120), vm(100, 200, 120)],
        );
        assert!(p
            .decisions
            .iter()
            .all(|d| d.action == Action::Hold && d.reason == Reason::Steady));
    }

    fn short_host(savings: u64, available: u64) -> (Policy, HostView) {
        (
            Policy {
                reserve_kib: 1000 * MIB,
                ..Policy::default()
            },
            HostView {
                savings_kib: savings * MIB,
                ksm_counters_live: true,
                available_kib: available * MIB,
            },
        )
    }

    #[test]
    fn guard_under_reserve_shrinks_by_the_shortfall_and_never_grows() {
        // 900 MiB available, 1000 reserve: 100 MiB short. Bonuses 60+60+0.
        let (policy, h) = short_host(500, 900);
        let vms = [
            roomy(vm(100, 300, 160)),
            roomy(vm(100, 300, 160)),
            roomy(vm(100, 300, 100)),
        ];
        let p = plan(&policy, &h, &vms);
        assert!(p.under_reserve);
        assert_eq!(p.shortfall_kib, 100 * MIB);
        assert_eq!(p.recalled_kib, 100 * MIB);
        assert!(p.decisions.iter().all(|d| d.action != Action::Grow));
        assert_eq!(p.squeezed_kib, 0);
    }

    #[test]
    fn guard_shrinks_below_the_deadband_regression() {
        // Issue 11 bug (a): 20 VMs each 30 MiB above their floors, the host
        // 70 MiB under its reserve: each VM's part (3.5 MiB) is under the
        // 4 MiB deadband, and no VM was resized at all.
        let (policy, h) = short_host(600, 930);
        let vms = vec![roomy(vm(100, 300, 130)); 20];
        let p = plan(&policy, &h, &vms);
        let applied: u64 = vms
            .iter()
            .zip(&p.decisions)
            .map(|(v, d)| v.current_kib - d.applied_kib(v.current_kib))
            .sum();
        assert_eq!(applied, 70 * MIB);
    }

    #[test]
    fn guard_takes_back_the_shortfall_not_more_with_unequal_bonuses_regression() {
        // Issue 11 bug (b): bonuses 100/40/0 MiB, host 60 MiB short: the
        // guard took back 86.7 MiB, because the VM at its floor kept an
        // equal part of a budget it could not use.
        let (policy, h) = short_host(140, 940);
        let vms = [
            roomy(vm(100, 300, 200)),
            roomy(vm(100, 300, 140)),
            roomy(vm(100, 300, 100)),
        ];
        let p = plan(&policy, &h, &vms);
        assert_eq!(p.recalled_kib, 60 * MIB);
        assert_eq!(targets_mib(&p)[2], 100);
    }

    #[test]
    fn under_the_reserve_free_memory_goes_first_then_cache_then_applications() {
        // 30 MiB short. a has 20 MiB free above the margin, b 20 MiB of
        // cache: a gives its free 20, b 10 of its cache; nobody is squeezed.
        let (policy, h) = short_host(1000, 970);
        let a = guest(vm(100, 300, 200), 36, 36, 200);
        let b = guest(vm(100, 300, 200), 36, 0, 200);
        let p = plan(&policy, &h, &[a, b]);
        assert_eq!(targets_mib(&p), [180, 190]);
        assert_eq!(p.squeezed_kib, 0);
        // 80 MiB short: both give their 20, the last 40 are squeezed from
        // their applications in proportion to their bonuses (80 and 80)
        let (policy, h) = short_host(1000, 920);
        let p = plan(&policy, &h, &[a, b]);
        assert_eq!(targets_mib(&p), [160, 160]);
        assert_eq!(p.squeezed_kib, 40 * MIB);
        assert!(p.decisions.iter().all(|d| d.reason == Reason::Squeezed));
        // a per-pass squeeze limit holds the squeeze back
        let policy = Policy {
            max_squeeze_kib: Some(5 * MIB),
            ..policy
        };
        let p = plan(&policy, &h, &[a, b]);
        assert_eq!(targets_mib(&p), [175, 175]);
    }

    #[test]
    fn guard_above_reserve_caps_growth_at_the_room() {
        let (policy, mut h) = short_host(500, 1040);
        h.available_kib = 1040 * MIB;
        let p = plan(&policy, &h, &[vm(100, 300, 100), vm(100, 300, 100)]);
        assert!(!p.under_reserve);
        assert_eq!(p.budget_kib, 40 * MIB);
        assert_eq!(targets_mib(&p), [120, 120]);
        assert_eq!(p.decisions[0].reason, Reason::HostGuard);
    }

    #[test]
    fn ksm_stopped_holds() {
        let h = HostView {
            ksm_counters_live: false,
            ..host(500)
        };
        let p = plan(
            &Policy::default(),
            &h,
            &[vm(100, 300, 150), vm(100, 300, 100)],
        );
        assert_eq!(targets_mib(&p), [150, 100]);
        assert!(p.decisions.iter().all(|d| d.action == Action::Hold));
    }

    #[test]
    fn step_limits() {
        let policy = Policy {
            max_grow_kib: Some(10 * MIB),
            max_shrink_kib: Some(5 * MIB),
            deadband_kib: 0,
            ..Policy::default()
        };
        let p = plan(&policy, &host(100), &[vm(100, 300, 100)]);
        assert_eq!(p.decisions[0].target_kib, 110 * MIB);
        assert_eq!(p.decisions[0].reason, Reason::StepLimit);
        let p = plan(&policy, &host(0), &[roomy(vm(100, 300, 150))]);
        assert_eq!(p.decisions[0].target_kib, 145 * MIB);
    }

    #[test]
    fn skipped_vms_keep_their_size_and_take_no_share() {
        let mut nb = vm(100, 300, 100);
        nb.status = VmStatus::NoBalloon;
        let mut paused = vm(100, 300, 120);
        paused.status = VmStatus::NotRunning;
        let vms = [vm(100, 100, 100), nb, paused, vm(100, 300, 100)];
        let p = plan(&Policy::default(), &host(60), &vms);
        let d = &p.decisions;
        assert_eq!(
            (d[0].action, d[0].reason),
            (Action::Skip, Reason::NoHeadroom)
        );
        assert_eq!(
            (d[1].action, d[1].reason),
            (Action::Skip, Reason::NoBalloon)
        );
        assert_eq!(
            (d[2].action, d[2].reason),
            (Action::Skip, Reason::NotRunning)
        );
        assert_eq!(d[2].target_kib, 120 * MIB);
        assert_eq!(d[3].target_kib, 160 * MIB);
        assert_eq!(p.managed, 1);
    }

    #[test]
    fn weights_split_the_pool_and_zero_takes_no_part() {
        let mut a = roomy(vm(100, 500, 100));
        let mut b = roomy(vm(100, 500, 100));
        let mut c = roomy(vm(100, 500, 140));
        a.weight = 2;
        b.weight = 1;
        c.weight = 0;
        // c, at weight 0, gives back what it holds (it can), a recall
        // step a pass: 20 of its 40 this pass; what it still holds is not
        // lent to the others, who split the 70 left 2 : 1
        let p = plan(&Policy::default(), &host(90), &[a, b, c]);
        assert_eq!(targets_mib(&p), [146, 123, 120]);
        assert_eq!(p.decisions[2].action, Action::Shrink);
        // once c is back at its floor: 60 : 30
        c.current_kib = 100 * MIB;
        c.actual_kib = 100 * MIB;
        let p = plan(&Policy::default(), &host(90), &[a, b, c]);
        assert_eq!(targets_mib(&p), [160, 130, 100]);
    }

    #[test]
    fn demand_split_table() {
        // (demands, expected targets): 90 MiB over three VMs of 100..300
        type Row<'a> = (&'a [Option<u64>], &'a [u64]);
        let table: &[Row] = &[
            // nobody reads: equal
            (&[Some(0), Some(0), Some(0)], &[130, 130, 130]),
            // one reads 28 MiB/s with its memory full: 29 : 1 : 1
            (&[Some(28_000), Some(0), Some(0)], &[184, 102, 102]),
            // unknown weighs as idle (issue 20), never as the average of
            // the known (14, which gave 29 : 15 : 1)
            (&[Some(28_000), None, Some(0)], &[184, 102, 102]),
            // two unknowns beside one measured reader do not dilute it
            // (the average made this an equal split)
            (&[Some(28_000), None, None], &[184, 102, 102]),
            // nothing known: equal, never zero nor everything
            (&[None, None, None], &[130, 130, 130]),
        ];
        for (demands, want) in table {
            let vms: Vec<VmView> = demands
                .iter()
                .map(|&d| {
                    let mut v = roomy(vm(100, 300, 100));
                    v.demand = d;
                    v
                })
                .collect();
            let policy = Policy {
                split: Split::Demand,
                ..Policy::default()
            };
            let p = plan(&policy, &host(90), &vms);
            assert_eq!(&targets_mib(&p), want, "{demands:?}");
        }
    }

    #[test]
    fn contribution_split_and_its_combination_with_demand() {
        let mk = |c: Option<u64>, d: Option<u64>| {
            let mut v = roomy(vm(100, 300, 100));
            v.contribution_kib = c;
            v.demand = d;
            v
        };
        // contributions 60 : 30 : 0 MiB: the pool in proportion; the VM
        // that saved nothing gets nothing
        let vms = [
            mk(Some(60 * MIB), Some(0)),
            mk(Some(30 * MIB), Some(9000)),
            mk(Some(0), Some(0)),
        ];
        let policy = |split| Policy {
            split,
            ..Policy::default()
        };
        let p = plan(&policy(Split::Contribution), &host(90), &vms);
        assert_eq!(targets_mib(&p), [160, 130, 100]);
        // scaled by demand (1 : 10 : 1): 60 : 300 : 0
        let p = plan(&policy(Split::ContributionDemand), &host(90), &vms);
        assert_eq!(targets_mib(&p), [115, 175, 100]);
        // no contribution known at all: equal
        let vms = [mk(None, None), mk(None, None)];
        let p = plan(&policy(Split::Contribution), &host(90), &vms);
        assert_eq!(targets_mib(&p), [145, 145]);
    }

    #[test]
    fn opted_out_and_held_vms_are_left_alone() {
        let mut o = vm(100, 300, 150);
        o.status = VmStatus::OptedOut;
        let mut h = vm(100, 300, 120);
        h.status = VmStatus::HeldByHand;
        let p = plan(&Policy::default(), &host(0), &[o, h, vm(100, 300, 100)]);
        assert_eq!(p.decisions[0].reason, Reason::OptedOut);
        assert_eq!(p.decisions[1].reason, Reason::HeldByHand);
        assert!(p.decisions[..2].iter().all(|d| d.action == Action::Skip));
        assert_eq!(p.managed, 1);
    }

    #[test]
    fn water_fill_basics() {
        assert_eq!(water_fill(90, &[10, 20, 400], &[1, 1, 1]), [10, 20, 60]);
        assert_eq!(water_fill(0, &[10, 20], &[1, 1]), [0, 0]);
        assert_eq!(water_fill(100, &[], &[]), Vec::<u64>::new());
        assert_eq!(water_fill(10, &[100, 100, 100], &[1, 1, 1]), [3, 3, 4]);
    }
}
