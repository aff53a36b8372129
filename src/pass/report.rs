//! The report: the machine-readable record of what a pass saw and did
//! (`run --json`, `plan --json`, `status --json`), a pass's figures and
//! one [`VmReport`] per active domain. Every test and benchmark reads what
//! a pass did from it, never from the log.

use serde::Serialize;

use crate::hypervisor::{CallCount, GuestStats};
use crate::ksm::{KsmCounters, Metric};
use crate::meminfo::MemInfo;
use crate::policy::{Action, Policy, Reason};
use crate::state::{Source, Stuck};

/// A VM's own KSM figures (from its QEMU's `/proc/<pid>/ksm_stat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VmKsm {
    /// Its QEMU's pid.
    pub pid: u32,
    /// `ksm_merging_pages`: its pages KSM merged.
    pub merging_pages: u64,
    /// Its part of the host's savings by the metric in use, KiB.
    pub attributed_kib: i64,
}

/// Whose savings: the VMs' part and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AttributionReport {
    /// The host's savings by the metric in use, KiB.
    pub host_kib: i64,
    /// The VMs' parts together, KiB.
    pub vms_kib: i64,
    /// The rest: other processes, and pages no live process accounts for.
    pub non_vm_kib: i64,
    /// What the other processes' own figures add up to, KiB.
    pub others_kib: Option<i64>,
}

/// One active domain in a report.
#[derive(Clone, Debug, Serialize)]
pub struct VmReport {
    /// Domain name.
    pub name: String,
    /// Domain UUID.
    pub uuid: String,
    /// Managed (recorded), as opposed to waiting to be adopted.
    pub managed: bool,
    /// Floor, KiB.
    pub floor_kib: u64,
    /// Ceiling, KiB (the smaller of the recorded and the live maximum).
    pub ceiling_kib: u64,
    /// Balloon size before this pass, KiB.
    pub current_kib: u64,
    /// A target an earlier pass asked for that the balloon is still on its
    /// way to, KiB.
    pub pending_kib: Option<u64>,
    /// The policy's target, KiB.
    pub target_kib: u64,
    /// What the pass does (or would do).
    pub action: Action,
    /// Why.
    pub reason: Reason,
    /// Its bonus (target above floor) as a fraction of what is handed out.
    pub share_of_pool: f64,
    /// What it keeps that the savings no longer cover (its applications
    /// hold it), KiB.
    pub kept_kib: u64,
    /// What the host guard takes from its applications' memory, KiB.
    pub squeezed_kib: u64,
    /// What it could give back without harm, KiB.
    pub givable_kib: u64,
    /// Its guest's own figures, as the bulk call reported them.
    pub guest: GuestStats,
    /// Those figures are recent enough to go by.
    pub guest_stats_fresh: bool,
    /// How old the figures the decision used were, seconds (`None`: no
    /// fresh figures; a recall step above the reserve waits for figures
    /// at most [`crate::policy::RECALL_FRESH_SECS`] old).
    pub figures_age_secs: Option<u64>,
    /// Those figures answer every ask: reported after the last shrink
    /// landed and after the pass asked for fresh ones (`None`: no fresh
    /// figures).
    pub figures_confirmed: Option<bool>,
    /// Its balloon deflates on guest OOM (`<memballoon autodeflate='on'>`):
    /// the guest's own net against a recall it cannot pay (`None`: not
    /// known, a VM not recorded yet).
    pub autodeflate: Option<bool>,
    /// Its balloon does not reach the last target (back-off).
    pub stuck: Option<Stuck>,
    /// Its balloon was set by someone else and is left alone since then.
    pub held_by_hand: Option<crate::manual::Held>,
    /// Its metadata's `manage` (false: never resized).
    pub manage: bool,
    /// Its weight in the split (its metadata's).
    pub weight: u32,
    /// Its I/O demand (demand splits): thousandths of a MiB/s of disk
    /// reads while its memory was full, smoothed; `None` when unknown.
    pub demand: Option<u64>,
    /// Its own KSM figures (contribution splits).
    pub ksm: Option<VmKsm>,
    /// Its part of the VMs' savings, 0 to 1 (contribution splits).
    pub contribution_share: Option<f64>,
    /// Why its own KSM figures could not be had (contribution splits).
    pub ksm_problem: Option<String>,
    /// How it came to be managed.
    pub source: Option<Source>,
    /// Adopted by this pass (no hook had recorded it).
    pub adopted: bool,
    /// When its balloon was last set by ksm-balloon (seconds since the epoch).
    pub last_change_at: Option<u64>,
    /// The error that made the resize fail, if it did.
    pub error: Option<String>,
}

/// What a pass saw and did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// When (seconds since the epoch).
    pub at: u64,
    /// Nothing was applied.
    pub dry_run: bool,
    /// The KSM counters.
    pub ksm: KsmCounters,
    /// The metric used.
    pub metric: Metric,
    /// The savings, KiB.
    pub savings_kib: u64,
    /// What the pool is taken from, KiB: the savings that held over the
    /// holding window (for the contribution splits, the VMs' part of them).
    pub lendable_kib: u64,
    /// Whose savings (contribution splits).
    pub attribution: Option<AttributionReport>,
    /// Why there is no attribution this pass (contribution splits).
    pub attribution_problem: Option<String>,
    /// The holding window, seconds.
    pub policy_window_secs: u64,
    /// Savings × share, KiB.
    pub pool_kib: u64,
    /// What was handed out after the host guard, KiB.
    pub budget_kib: u64,
    /// The host.
    pub host: MemInfo,
    /// The reserve, KiB.
    pub reserve_kib: u64,
    /// The host is under its reserve.
    pub under_reserve: bool,
    /// How far under, KiB.
    pub shortfall_kib: u64,
    /// What the bonuses shrink by this pass, KiB.
    pub recalled_kib: u64,
    /// What VMs keep that the savings no longer cover, KiB.
    pub kept_kib: u64,
    /// What the guard takes from applications' memory, KiB.
    pub squeezed_kib: u64,
    /// The policy used.
    pub policy: Policy,
    /// Every active domain.
    pub vms: Vec<VmReport>,
    /// Hook records folded into the state by this pass.
    pub hook_records: usize,
    /// Resize calls that succeeded.
    pub resized: u32,
    /// Resize calls that failed (VM vanished or refused).
    pub failed: u32,
    /// libvirt calls made.
    pub calls: CallCount,
    /// Counters across passes, as this pass leaves them.
    pub counters: crate::metrics::Counters,
    /// A problem with the state file, if there was one.
    pub state_problem: Option<String>,
}
