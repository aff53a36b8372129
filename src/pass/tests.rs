//! The pass through the in-memory hypervisor ([`crate::hypervisor::fake`]):
//! adoption, a VM that vanished, a fatal error in the middle of the
//! resizes, a domain whose figures cannot be read, what was asked and is
//! still on its way, a balloon that does not reach its target, guest
//! statistics turned on once; the operator's commands (`release`,
//! `reload`, `ksm-restore`) between passes. Each test runs whole passes
//! (`run`, with a fake /sys and /proc under a temporary root) and reads
//! what they did from the report and the state.

use std::cell::RefCell;
use std::fs;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use super::rows::DemandBasis;
use super::*;
use crate::hypervisor::fake::{FakeDomain, FakeHv, Fault, Shared};
use crate::hypervisor::{CallCount, GuestStats, HvError, LiveDomain};
use crate::policy::{Action, Reason, Split};
use crate::units::SizeOrPercent;

const MIB: u64 = 1024;
const T0: u64 = 1_800_000_000;

/// A fake host: KSM counters and meminfo under a temporary root.
struct Host {
    dir: tempfile::TempDir,
    paths: Paths,
    settings: Settings,
    hv: Shared,
}

impl Host {
    fn new(domains: Vec<FakeDomain>) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path(), Path::new("/var/lib/ksm-balloon/state.json"));
        fs::create_dir_all(&paths.ksm_dir).unwrap();
        fs::create_dir_all(paths.meminfo.parent().unwrap()).unwrap();
        let h = Host {
            dir,
            paths,
            settings: Settings {
                reserve: SizeOrPercent::Kib(0),
                ..Settings::default()
            },
            hv: Shared(Rc::new(RefCell::new(FakeHv::new(domains)))),
        };
        h.ksm(1, 0);
        h.meminfo(24 << 20, 23 << 20);
        h
    }

    /// KSM `run` and savings (general_profit), MiB.
    fn ksm(&self, run: u64, savings_mib: u64) {
        let k = crate::ksm::KsmCounters {
            run,
            ..crate::testing::ksm_saving(savings_mib * MIB)
        };
        crate::testing::write_ksm(&self.paths.ksm_dir, &k).unwrap();
    }

    fn meminfo(&self, total_kib: u64, available_kib: u64) {
        fs::write(
            &self.paths.meminfo,
            format!("MemTotal: {total_kib} kB\nMemFree: 1 kB\nMemAvailable: {available_kib} kB\n"),
        )
        .unwrap();
    }

    fn run(&self, now: u64) -> anyhow::Result<Report> {
        let hv = self.hv.clone();
        let mut open = move || Ok(Box::new(hv.clone()) as Box<dyn Hypervisor>);
        self.run_with(&mut open, now)
    }

    /// A pass on this host's paths and settings, through `open`.
    fn run_with(&self, open: &mut Opener<'_>, now: impl Into<Now>) -> anyhow::Result<Report> {
        run(
            &self.paths,
            &self.settings,
            Duration::from_secs(5),
            open,
            now,
        )
    }

    fn state(&self) -> State {
        State::parse(&fs::read_to_string(&self.paths.state).unwrap()).unwrap()
    }

    fn fake(&self) -> std::cell::RefMut<'_, FakeHv> {
        self.hv.0.borrow_mut()
    }

    /// Records `d` as the hook does at `prepare`, with `floor` MiB.
    fn hook_prepare(&self, d: &FakeDomain, floor_mib: u64, at: u64) {
        self.hook_call(d, "prepare", floor_mib, at);
    }

    /// Calls the hook for `d` at `operation`, its XML's `<currentMemory>`
    /// `current_mib`.
    fn hook_call(&self, d: &FakeDomain, operation: &str, current_mib: u64, at: u64) {
        let s = d.live.sizes.unwrap();
        let xml = format!(
            "<domain><name>{}</name><uuid>{}</uuid><memory>{}</memory><currentMemory>{}</currentMemory></domain>",
            d.live.name, d.live.uuid, s.maximum_kib, current_mib * MIB
        );
        let r = crate::hook::run(
            &self.paths.state,
            &d.live.name,
            operation,
            "begin",
            xml.as_bytes(),
            at,
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }
}

fn dom(n: u32, current_mib: u64, max_mib: u64) -> FakeDomain {
    FakeDomain::new(
        &format!("vm{n}"),
        &format!("0000000{n}-0000-4000-8000-000000000000"),
        current_mib * MIB,
        max_mib * MIB,
    )
}

/// `d` with a persistent definition booting at `floor_mib`.
fn defined(mut d: FakeDomain, floor_mib: u64) -> FakeDomain {
    let s = d.live.sizes.unwrap();
    d.xml = Some(format!(
        "<domain><name>{}</name><uuid>{}</uuid><memory>{}</memory><currentMemory>{}</currentMemory></domain>",
        d.live.name, d.live.uuid, s.maximum_kib, floor_mib * MIB
    ));
    d
}

/// Fresh statistics saying the guest has `usable` MiB available.
fn stats(usable_mib: u64, now: u64) -> GuestStats {
    GuestStats {
        usable_kib: Some(usable_mib * MIB),
        unused_kib: Some(usable_mib * MIB),
        available_kib: Some(256 * MIB),
        last_update: Some(now),
        ..GuestStats::default()
    }
}

fn vm<'a>(r: &'a Report, name: &str) -> &'a VmReport {
    r.vms.iter().find(|v| v.name == name).unwrap()
}

#[test]
fn a_defined_vm_is_adopted_at_once_with_its_definitions_floor() {
    let h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    h.ksm(1, 60);
    let r = h.run(T0).unwrap();
    let v = vm(&r, "vm1");
    assert!(v.adopted && v.managed);
    assert_eq!((v.floor_kib, v.ceiling_kib), (160 * MIB, 256 * MIB));
    assert_eq!(v.target_kib, 220 * MIB);
    assert_eq!(
        h.fake().current("00000001-0000-4000-8000-000000000000"),
        Some(220 * MIB)
    );
    assert_eq!(r.resized, 1);
}

#[test]
fn a_transient_vm_at_its_maximum_is_not_adopted_with_it_as_floor_regression() {
    // Issue 10: a pass adopted a VM that was still starting, with its live
    // size (its maximum: the balloon driver had not inflated yet) as its
    // floor: floor = ceiling, never managed. Now it waits as a candidate
    // while its balloon may still be settling.
    let h = Host::new(vec![dom(1, 256, 256)]);
    h.ksm(1, 60);
    let r = h.run(T0).unwrap();
    let v = vm(&r, "vm1");
    assert!(!v.managed);
    assert_eq!((v.action, v.reason), (Action::Skip, Reason::Adopting));
    assert!(h.state().candidates.contains_key(&v.uuid));
    // the guest's driver inflates to its configured 160 MiB
    h.fake()
        .domains
        .values_mut()
        .for_each(|d| d.live.sizes.as_mut().unwrap().current_kib = 160 * MIB);
    // (no /proc for its QEMU here: it counts as booting since first seen)
    for t in (10..reconcile::ADOPT_BOOT_SECS).step_by(10) {
        let r = h.run(T0 + t).unwrap();
        assert_eq!(vm(&r, "vm1").reason, Reason::Adopting, "t={t}");
    }
    let r = h.run(T0 + reconcile::ADOPT_BOOT_SECS).unwrap();
    let v = vm(&r, "vm1");
    assert!(v.adopted);
    assert_eq!((v.floor_kib, v.target_kib), (160 * MIB, 220 * MIB));
    assert!(h.state().candidates.is_empty());
}

#[test]
fn a_vm_that_stays_at_its_maximum_is_adopted_without_headroom_after_settling() {
    let h = Host::new(vec![dom(1, 256, 256)]);
    h.run(T0).unwrap();
    let r = h.run(T0 + reconcile::ADOPT_BOOT_SECS).unwrap();
    assert!(!vm(&r, "vm1").managed, "at its maximum it waits longer");
    let r = h.run(T0 + reconcile::ADOPT_AT_MAXIMUM_SECS).unwrap();
    let v = vm(&r, "vm1");
    assert!(v.adopted);
    assert_eq!((v.action, v.reason), (Action::Skip, Reason::NoHeadroom));
}

#[test]
fn a_booting_vm_at_its_maximum_is_not_recalled_from_it_regression() {
    // Issue 18, found by the chaos soak: the first pass after a VM start
    // saw its balloon still at the maximum (its driver had not inflated it
    // to the boot size yet), took the 96 MiB above its floor for a loan
    // and "recalled" it in a blind step, asking 240 MiB: a target above
    // the one QEMU held (the boot size), lending the booting guest memory
    // that no savings covered. Now, nothing asked yet, the balloon is on
    // its way to the boot size and the plan starts from there.
    let d = dom(1, 256, 256);
    let uuid = d.live.uuid.clone();
    let mut h = Host::new(vec![d.clone()]);
    h.settings.hold_window_secs = 0;
    h.hook_prepare(&d, 160, T0);
    h.ksm(1, 0);
    let r = h.run(T0 + 5).unwrap();
    let v = vm(&r, "vm1");
    assert!(v.managed);
    assert_eq!((v.action, v.target_kib), (Action::Hold, 160 * MIB), "{v:?}");
    assert_eq!(r.resized, 0);
    assert_eq!(h.fake().current(&uuid), Some(256 * MIB), "no ask");
    // with savings, it is lent to from its boot size: a grow above it
    h.ksm(1, 60);
    let r = h.run(T0 + 10).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!((v.action, v.target_kib), (Action::Grow, 220 * MIB), "{v:?}");
    assert_eq!(h.fake().current(&uuid), Some(220 * MIB));
    // and a VM whose balloon has not moved from the maximum long after its
    // start is no longer taken for a booting one: its balloon is where it is
    let d2 = dom(2, 256, 256);
    h.fake().domains.insert(d2.live.uuid.clone(), d2.clone());
    h.hook_prepare(&d2, 160, T0 + 10);
    h.ksm(1, 0);
    let r = h.run(T0 + 10 + rows::BOOT_INFLATE_SECS).unwrap();
    let v = vm(&r, "vm2");
    assert_eq!(v.action, Action::Shrink, "{v:?}");
}

#[test]
fn a_vm_that_vanished_is_forgotten_after_the_starting_grace() {
    let h = Host::new(vec![]);
    let d = dom(1, 160, 256);
    h.hook_prepare(&d, 160, T0);
    // not running yet: still starting
    let r = h.run(T0 + 5).unwrap();
    assert_eq!(r.hook_records, 1);
    assert!(h.state().vms.contains_key(&d.live.uuid));
    let r = h.run(T0 + reconcile::STARTING_GRACE_SECS + 1).unwrap();
    assert!(r.vms.is_empty());
    assert!(h.state().vms.is_empty());
}

#[test]
fn a_fatal_error_in_the_middle_of_the_resizes_keeps_what_was_done() {
    // Untested before issue 12: the connection is lost after the first of
    // three resizes. The pass fails (exit 1), but the resize that was made
    // is recorded (so the next pass knows what was asked) and the state is
    // saved.
    let doms: Vec<_> = (1..=3).map(|n| defined(dom(n, 160, 256), 160)).collect();
    let h = Host::new(doms);
    h.ksm(1, 90);
    h.fake().lost_after = Some(1);
    let err = h.run(T0).unwrap_err();
    assert!(
        format!("{err:#}").contains("lost the connection"),
        "{err:#}"
    );
    let s = h.state();
    // the resize made is recorded, and so is the one the connection was
    // lost on (libvirt may have made it: issue 18); the third, never
    // tried, is not
    let asked: Vec<_> = s.vms.values().map(|r| r.last_target_kib).collect();
    assert_eq!(asked, [Some(190 * MIB), Some(190 * MIB), None]);
    assert_eq!(s.vms.len(), 3, "every adoption is kept");
    // the next pass, connection back, does the third; the second, short
    // of the target it may have been asked, is asked again after the
    // back-off, and is never taken for a balloon set by hand
    h.fake().lost_after = None;
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(r.resized, 1);
    let mut t = T0 + 10;
    while t < T0 + 10 + rows::SETTLE_SECS + adjust::BACKOFF_FIRST_SECS + 10 {
        t += 10;
        let r = h.run(t).unwrap();
        assert!(vm(&r, "vm2").held_by_hand.is_none(), "{t}");
    }
    assert_eq!(
        h.fake().current("00000002-0000-4000-8000-000000000000"),
        Some(190 * MIB)
    );
}

#[test]
fn a_domain_whose_figures_cannot_be_read_keeps_its_record_regression() {
    // Issue 12: when one domain's info call failed, the domain was left out
    // of the list, forgotten, and re-adopted next pass with its live size
    // (bonus included) as its floor.
    let h = Host::new(vec![
        defined(dom(1, 160, 256), 160),
        defined(dom(2, 160, 256), 160),
    ]);
    h.ksm(1, 60);
    h.run(T0).unwrap();
    let uuid = "00000001-0000-4000-8000-000000000000".to_string();
    assert_eq!(h.fake().current(&uuid), Some(190 * MIB));
    h.fake().unreadable.insert(uuid.clone());
    let r = h.run(T0 + reconcile::STARTING_GRACE_SECS * 2).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!((v.action, v.reason), (Action::Skip, Reason::Unreadable));
    assert_eq!(h.state().vms[&uuid].floor_kib, 160 * MIB);
    h.fake().unreadable.clear();
    let r = h.run(T0 + reconcile::STARTING_GRACE_SECS * 2 + 10).unwrap();
    let v = vm(&r, "vm1");
    assert!(!v.adopted);
    assert_eq!(v.floor_kib, 160 * MIB);
}

#[test]
fn a_pass_right_after_another_judges_by_what_was_asked_regression() {
    // Issue 11: a pass right after another found KSM unmerged, planned the
    // floors, saw the balloons still at 160 MiB (on their way to the 200
    // the first pass asked for), made no call, and left the guests at 200.
    let d = defined(dom(1, 160, 256), 160);
    let h = Host::new(vec![d]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 40);
    let r = h.run(T0).unwrap();
    assert_eq!(vm(&r, "vm1").target_kib, 200 * MIB);
    // pretend the balloon has not moved yet
    h.fake()
        .domains
        .get_mut(uuid)
        .unwrap()
        .live
        .sizes
        .as_mut()
        .unwrap()
        .current_kib = 160 * MIB;
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(100, T0 + 1);
    h.ksm(2, 0);
    let r = h.run(T0 + 1).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!(v.pending_kib, Some(200 * MIB));
    assert_eq!((v.action, v.target_kib), (Action::Shrink, 160 * MIB));
    assert_eq!(h.state().vms[uuid].last_target_kib, Some(160 * MIB));
}

#[test]
fn a_pass_right_after_a_recall_does_not_ask_for_the_same_memory_twice_regression() {
    // A guest at 240 MiB reports 60 MiB available; the savings vanish. The
    // first pass recalls what it can give (60 - the 16 MiB margin = 44).
    // A second pass a second later, before the guest reports again, saw
    // the same 60 MiB "available" and recalled 44 more: 28 MiB past what
    // the guest had, into its applications' memory.
    let d = defined(dom(1, 160, 320), 160);
    let h = Host::new(vec![d]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 80);
    h.run(T0).unwrap();
    assert_eq!(h.fake().current(uuid), Some(240 * MIB));
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(60, T0 + 9);
    h.ksm(2, 0);
    // the recall starts by asking for fresh figures (issue 23)
    let r = h.run(T0 + 10).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!((v.action, v.reason), (Action::Hold, Reason::Awaiting));
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(60, T0 + 12);
    let r = h.run(T0 + 12).unwrap();
    let v = vm(&r, "vm1");
    // 60 - 16 = 44 givable, a step of 22
    assert_eq!((v.target_kib, v.kept_kib), (218 * MIB, 58 * MIB));
    assert_eq!(h.fake().current(uuid), Some(218 * MIB));
    // the same figures (taken at T0 + 12, before the recall) a second later
    let r = h.run(T0 + 13).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!(
        (v.action, v.reason, v.target_kib),
        (Action::Hold, Reason::Awaiting, 218 * MIB)
    );
    assert_eq!(r.resized, 0);
    assert_eq!(h.fake().current(uuid), Some(218 * MIB));
    // once the guest reports at its new size, that is what counts
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(16, T0 + 19);
    let r = h.run(T0 + 20).unwrap();
    assert_eq!(vm(&r, "vm1").target_kib, 218 * MIB);
    assert_eq!(vm(&r, "vm1").reason, Reason::Kept);
}

#[test]
fn a_recall_on_figures_older_than_the_guests_application_kills_no_one_regression() {
    // Issue 23 (32-loans, scenario 1): g2's last report (every 10 s)
    // predated its application's 40 MiB write; the pass saw 79.5 MiB
    // available, took 62 MiB at once, and the guest panicked. Now the
    // first pass asks for fresh figures and takes nothing; the next takes
    // one step on figures that show the application.
    let d = defined(dom(1, 160, 320), 160);
    let h = Host::new(vec![d]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 124);
    h.run(T0).unwrap();
    assert_eq!(h.fake().current(uuid), Some(284 * MIB));
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(80, T0 + 2);
    // its application writes 40 MiB at T0 + 3; KSM unmerges
    h.ksm(2, 0);
    let r = h.run(T0 + 4).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!((v.action, v.reason), (Action::Hold, Reason::Awaiting));
    assert_eq!(v.figures_age_secs, Some(2));
    assert_eq!(
        h.fake().stats_periods.last(),
        Some(&(uuid.to_string(), asks::RECALL_STATS_PERIOD_SECS))
    );
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(40, T0 + 6);
    let r = h.run(T0 + 7).unwrap();
    let v = vm(&r, "vm1");
    // 40 - 16 = 24 givable: a step of 16, never the 62 of before
    assert_eq!((v.action, v.target_kib), (Action::Shrink, 268 * MIB));
    assert_eq!(v.figures_age_secs, Some(1));
}

#[test]
fn a_balloon_that_does_not_reach_its_target_is_not_asked_again_every_pass() {
    // Issue 11: a guest that cannot give the memory back was asked for the
    // same resize every pass, for ever.
    let mut d = defined(dom(1, 160, 320), 160);
    d.lowest_kib = Some(230 * MIB);
    let h = Host::new(vec![d]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 100);
    h.run(T0).unwrap();
    assert_eq!(h.fake().current(uuid), Some(260 * MIB));
    // the savings fall; the guest reports plenty available, yet its
    // balloon stops at 230
    h.ksm(1, 60);
    let fresh = |t| {
        h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(200, t);
    };
    fresh(T0 + 8);
    // the recall asks for fresh figures first (issue 23)
    assert_eq!(h.run(T0 + 8).unwrap().resized, 0);
    fresh(T0 + 10);
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(vm(&r, "vm1").target_kib, 220 * MIB);
    assert_eq!(h.fake().current(uuid), Some(230 * MIB));
    let mut calls = Vec::new();
    for t in [30, 40, 50, 60] {
        fresh(T0 + t);
        let r = h.run(T0 + t).unwrap();
        calls.push(r.calls.set_memory);
        assert!(r.resized == 0, "asked again at +{t}s");
    }
    let st = h.state().vms[uuid].stuck.expect("stuck noticed");
    assert_eq!((st.at_kib, st.tries), (230 * MIB, 1));
    // after the back-off it is asked once more, then backs off longer
    let retry = st.retry_at;
    fresh(retry);
    assert_eq!(h.run(retry).unwrap().resized, 1);
    fresh(retry + rows::SETTLE_SECS);
    assert_eq!(h.run(retry + rows::SETTLE_SECS).unwrap().resized, 0);
    let st = h.state().vms[uuid].stuck.unwrap();
    assert_eq!(st.tries, 2);
    assert_eq!(st.retry_at, retry + adjust::backoff_secs(2));
}

#[test]
fn guest_statistics_are_turned_on_once_for_a_guest_without_them() {
    let h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    h.run(T0).unwrap();
    h.run(T0 + 10).unwrap();
    assert_eq!(
        h.fake().stats_periods,
        [("00000001-0000-4000-8000-000000000000".to_string(), 5)]
    );
    // never with the setting at 0
    let mut h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    h.settings.guest_stats_period = 0;
    h.run(T0).unwrap();
    assert!(h.fake().stats_periods.is_empty());
}

#[test]
fn a_guest_whose_only_report_is_from_its_boot_gets_statistics_turned_on_regression() {
    // On the real stack a guest without a statistics period still reports
    // once, when its balloon driver starts: libvirt then gives its figures
    // with that last-update for ever. The pass turned statistics on only
    // for a guest with no last-update at all, so never for a real one.
    let mut d = defined(dom(1, 160, 256), 160);
    d.live.guest = stats(200, T0 - 300);
    let h = Host::new(vec![d]);
    let r = h.run(T0).unwrap();
    assert!(!vm(&r, "vm1").guest_stats_fresh);
    assert_eq!(r.calls.stats_period, 1);
    assert_eq!(
        h.fake().stats_periods,
        [("00000001-0000-4000-8000-000000000000".to_string(), 5)]
    );
    // once per VM
    h.run(T0 + 10).unwrap();
    assert_eq!(h.fake().stats_periods.len(), 1);
    // a guest whose figures are fresh is left as it is
    let mut d = defined(dom(1, 160, 256), 160);
    d.live.guest = stats(200, T0 - 2);
    let h = Host::new(vec![d]);
    assert_eq!(h.run(T0).unwrap().calls.stats_period, 0);
}

#[test]
fn a_refused_resize_is_reported_and_the_others_go_on() {
    let h = Host::new(vec![
        defined(dom(1, 160, 256), 160),
        defined(dom(2, 160, 256), 160),
    ]);
    h.fake()
        .faults
        .insert("00000001-0000-4000-8000-000000000000".into(), Fault::Refuse);
    h.ksm(1, 60);
    let r = h.run(T0).unwrap();
    assert_eq!((r.resized, r.failed), (1, 1));
    assert!(vm(&r, "vm1").error.as_ref().unwrap().contains("refused"));
    assert_eq!(
        h.state().vms["00000001-0000-4000-8000-000000000000"].last_target_kib,
        None
    );
}

#[test]
fn dry_run_changes_nothing_and_sees_spooled_records() {
    let h = Host::new(vec![dom(1, 256, 256)]);
    let d = dom(1, 256, 256);
    h.hook_prepare(&d, 160, T0);
    let hv = h.hv.clone();
    let mut open = move || Ok(Box::new(hv.clone()) as Box<dyn Hypervisor>);
    let r = dry_run(&h.paths, &h.settings, &mut open, T0 + 1).unwrap();
    assert!(r.dry_run);
    assert_eq!(r.hook_records, 1);
    assert_eq!(vm(&r, "vm1").floor_kib, 160 * MIB);
    assert!(!h.paths.state.exists());
    assert_eq!(h.fake().resizes, []);
    drop(h.dir);
}

/// `d` defined with ksm-balloon's metadata element `meta` (its inner XML).
fn with_metadata(d: FakeDomain, floor_mib: u64, meta: &str) -> FakeDomain {
    let mut d = defined(d, floor_mib);
    let xml = d.xml.take().unwrap().replace(
        "</domain>",
        &format!(
            "<metadata><ksm-balloon:vm xmlns:ksm-balloon='{}' {meta}</metadata></domain>",
            crate::metadata::NAMESPACE
        ),
    );
    d.xml = Some(xml);
    d
}

#[test]
fn metadata_opts_out_and_weighs_the_split() {
    let h = Host::new(vec![
        with_metadata(dom(1, 160, 320), 160, "manage='no'/>"),
        with_metadata(dom(2, 160, 320), 160, "weight='2'/>"),
        defined(dom(3, 160, 320), 160),
    ]);
    h.ksm(1, 90);
    let r = h.run(T0).unwrap();
    let (a, b, c) = (vm(&r, "vm1"), vm(&r, "vm2"), vm(&r, "vm3"));
    assert_eq!((a.action, a.reason), (Action::Skip, Reason::OptedOut));
    assert!(!a.manage);
    assert_eq!(b.weight, 2);
    assert_eq!(b.target_kib - b.floor_kib, 60 * MIB);
    assert_eq!(c.target_kib - c.floor_kib, 30 * MIB);
    assert_eq!(
        h.fake().current("00000001-0000-4000-8000-000000000000"),
        Some(160 * MIB)
    );
}

#[test]
fn metadata_floor_and_ceiling_apply_and_bad_values_are_ignored() {
    let h = Host::new(vec![
        with_metadata(dom(1, 160, 320), 160, "><ksm-balloon:floor unit='MiB'>200</ksm-balloon:floor><ksm-balloon:ceiling unit='MiB'>240</ksm-balloon:ceiling></ksm-balloon:vm>"),
        with_metadata(dom(2, 160, 320), 160, "weight='lots'><ksm-balloon:floor unit='MiB'>999</ksm-balloon:floor></ksm-balloon:vm>"),
    ]);
    h.ksm(1, 500);
    let r = h.run(T0).unwrap();
    let (a, b) = (vm(&r, "vm1"), vm(&r, "vm2"));
    assert_eq!(
        (a.floor_kib, a.ceiling_kib, a.target_kib),
        (200 * MIB, 240 * MIB, 240 * MIB)
    );
    // both bad values fall back to the defaults: weight 1, floor 160
    assert_eq!((b.floor_kib, b.weight), (160 * MIB, 1));
}

#[test]
fn a_balloon_set_by_hand_is_left_alone_until_released() {
    let h = Host::new(vec![
        defined(dom(1, 160, 320), 160),
        defined(dom(2, 160, 320), 160),
    ]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 80);
    h.run(T0).unwrap();
    assert_eq!(h.fake().current(uuid), Some(200 * MIB));
    h.run(T0 + 10).unwrap();
    // the operator: virsh setmem vm1 280M
    h.fake().set_memory(uuid, 280 * MIB).unwrap();
    let r = h.run(T0 + 20).unwrap();
    assert_eq!(
        vm(&r, "vm1").reason,
        Reason::Unsettled,
        "seen once: not yet sure"
    );
    let r = h.run(T0 + 30).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!((v.action, v.reason), (Action::Skip, Reason::HeldByHand));
    assert_eq!(v.held_by_hand.map(|h| h.size_kib), Some(280 * MIB));
    // the other VM is managed as before (the pool is its alone while vm1
    // is held), and vm1 stays where it was set
    assert_eq!(vm(&r, "vm2").target_kib, 240 * MIB);
    for t in [40, 50, 60] {
        h.run(T0 + t).unwrap();
    }
    assert_eq!(h.fake().current(uuid), Some(280 * MIB));
    let lines =
        crate::admin::release(&h.paths, Duration::from_secs(5), &["vm1".into()], T0 + 65).unwrap();
    assert!(lines[0].contains("released at 280.0 MiB"), "{lines:?}");
    // managed again: it gives back its hand-set bonus, 16 MiB a pass as a
    // guest without statistics does
    let r = h.run(T0 + 70).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!(
        (v.action, v.reason, v.target_kib),
        (Action::Shrink, Reason::BlindStep, 264 * MIB)
    );
    assert!(v.held_by_hand.is_none());
    // releasing what is not held says so; an unknown name is an error
    let lines =
        crate::admin::release(&h.paths, Duration::from_secs(5), &["vm2".into()], T0 + 75).unwrap();
    assert!(lines[0].contains("not held by hand"), "{lines:?}");
    assert!(
        crate::admin::release(&h.paths, Duration::from_secs(5), &["nope".into()], T0 + 75).is_err()
    );
}

#[test]
fn a_vm_handed_back_is_resized_at_once_not_backed_off_from_its_old_target_regression() {
    // Seen on the real stack (tests/realstack/operator.sh): released at
    // its hand-set 224 MiB with its share unchanged, a VM was held there
    // for a minute ("backoff"): the target it had been asked for before
    // the operator's setmem was still its last target, so the balloon
    // looked like a guest that cannot reach it. Likewise a VM handed back
    // by its metadata (manage no, then yes) after a setmem meanwhile.
    let h = Host::new(vec![
        defined(dom(1, 160, 320), 160),
        defined(dom(2, 160, 320), 160),
    ]);
    let (u1, u2) = (
        "00000001-0000-4000-8000-000000000000",
        "00000002-0000-4000-8000-000000000000",
    );
    let fresh = |t| {
        for u in [u1, u2] {
            h.fake().domains.get_mut(u).unwrap().live.guest = stats(100, t);
        }
    };
    h.ksm(1, 80);
    fresh(T0);
    h.run(T0).unwrap();
    assert_eq!(h.fake().current(u1), Some(200 * MIB));
    // virsh setmem vm1 280M; two passes to hold it, then release
    h.fake().set_memory(u1, 280 * MIB).unwrap();
    for t in [20, 30] {
        fresh(T0 + t);
        h.run(T0 + t).unwrap();
    }
    crate::admin::release(&h.paths, Duration::from_secs(5), &["vm1".into()], T0 + 35).unwrap();
    fresh(T0 + 40);
    // not backed off: the recall starts (issue 23: with a pass that asks
    // for fresh figures), then its first step (half of the 84 it can give)
    let r = h.run(T0 + 40).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!((v.action, v.reason), (Action::Hold, Reason::Awaiting));
    fresh(T0 + 42);
    let r = h.run(T0 + 42).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!(
        (v.action, v.reason, v.target_kib),
        (Action::Shrink, Reason::RecallStep, 238 * MIB)
    );
    assert_eq!(h.fake().current(u1), Some(238 * MIB));

    // manage no (reload), setmem meanwhile, manage yes (reload)
    let hv = h.hv.clone();
    let mut open = move || Ok(Box::new(hv.clone()) as Box<dyn Hypervisor>);
    h.fake().domains.get_mut(u1).unwrap().metadata = Some("<vm manage='no'/>".into());
    crate::admin::reload(&h.paths, Duration::from_secs(5), &mut open, &[], T0 + 45).unwrap();
    h.fake().set_memory(u1, 280 * MIB).unwrap();
    fresh(T0 + 50);
    assert_eq!(vm(&h.run(T0 + 50).unwrap(), "vm1").reason, Reason::OptedOut);
    h.fake().domains.get_mut(u1).unwrap().metadata = None;
    crate::admin::reload(&h.paths, Duration::from_secs(5), &mut open, &[], T0 + 55).unwrap();
    fresh(T0 + 60);
    let r = h.run(T0 + 60).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!(
        (v.action, v.reason, v.target_kib),
        (Action::Shrink, Reason::RecallStep, 238 * MIB)
    );
}

#[test]
fn reload_reads_the_live_metadata_once_per_vm() {
    let h = Host::new(vec![
        defined(dom(1, 160, 320), 160),
        defined(dom(2, 160, 320), 160),
    ]);
    h.ksm(1, 60);
    h.run(T0).unwrap();
    let before = h.fake().calls();
    assert_eq!(before.metadata, 0, "a pass never reads metadata");
    // virsh metadata --live vm1 ... manage='no'
    h.fake()
        .domains
        .get_mut("00000001-0000-4000-8000-000000000000")
        .unwrap()
        .metadata = Some("<vm manage='no'/>".into());
    let hv = h.hv.clone();
    let mut open = move || Ok(Box::new(hv.clone()) as Box<dyn Hypervisor>);
    let lines =
        crate::admin::reload(&h.paths, Duration::from_secs(5), &mut open, &[], T0 + 5).unwrap();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].contains("manage no"), "{lines:?}");
    assert_eq!(h.fake().calls().metadata, 2);
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(vm(&r, "vm1").reason, Reason::OptedOut);
    assert_eq!(
        vm(&r, "vm2").target_kib,
        220 * MIB,
        "the whole pool goes to vm2"
    );
}

#[test]
fn every_pass_writes_the_metrics_file_success_or_not() {
    let mut h = Host::new(vec![defined(dom(1, 160, 320), 160)]);
    let file = h.dir.path().join("textfile/ksm-balloon.prom");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    h.paths.metrics_file = Some(file.clone());
    h.ksm(1, 40);
    h.run(T0).unwrap();
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains("ksm_balloon_pass_success 1"), "{text}");
    assert!(text.contains("ksm_balloon_resizes_total 1"), "{text}");
    assert!(
        text.contains("ksm_balloon_vm_target_bytes{domain=\"vm1\""),
        "{text}"
    );
    // KSM gone: the pass fails, the file says so and keeps the counters
    fs::remove_dir_all(&h.paths.ksm_dir).unwrap();
    assert!(h.run(T0 + 10).is_err());
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains("ksm_balloon_pass_success 0"), "{text}");
    assert!(text.contains("ksm_balloon_resizes_total 1"), "{text}");
    assert!(
        text.contains(&format!("ksm_balloon_last_success_timestamp_seconds {T0}")),
        "{text}"
    );
}

impl Host {
    /// A fake QEMU for `d` in the fake /proc (pid file, stat, cmdline,
    /// ksm_stat with `merging` pages and `profit` bytes).
    fn qemu(&self, d: &FakeDomain, pid: u32, merging: u64, profit: i64) {
        let root = self.dir.path();
        let run = root.join("run/libvirt/qemu");
        fs::create_dir_all(&run).unwrap();
        fs::write(run.join(format!("{}.pid", d.live.name)), format!("{pid}\n")).unwrap();
        self.process(
            pid,
            "qemu-system-x86",
            &[
                "/usr/bin/qemu-system-x86_64".to_string(),
                "-name".into(),
                format!("guest={},debug-threads=on", d.live.name),
                "-uuid".into(),
                d.live.uuid.clone(),
            ],
            merging,
            profit,
        );
    }

    /// A fake process in the fake /proc.
    fn process(&self, pid: u32, comm: &str, args: &[String], merging: u64, profit: i64) {
        let dir = self.paths.procs.proc_dir.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        let fields = vec!["0"; 19].join(" ");
        fs::write(
            dir.join("stat"),
            format!("{pid} ({comm}) S {fields} 4242 0\n"),
        )
        .unwrap();
        let mut cmd: Vec<u8> = Vec::new();
        for a in args {
            cmd.extend(a.as_bytes());
            cmd.push(0);
        }
        fs::write(dir.join("cmdline"), cmd).unwrap();
        fs::write(
            dir.join("ksm_stat"),
            format!("ksm_rmap_items {merging}\nksm_zero_pages 0\nksm_merging_pages {merging}\nksm_process_profit {profit}\n"),
        )
        .unwrap();
    }

    /// KSM counters as three processes merging 16000, 16000 and 8000 pages
    /// (plus `other` pages of a host process) would leave them.
    fn ksm_counters(&self, shared: u64, sharing: u64, profit: i64) {
        let k = crate::ksm::KsmCounters {
            pages_shared: shared,
            pages_sharing: sharing,
            full_scans: 3,
            general_profit: Some(profit),
            ..crate::testing::ksm_saving(0)
        };
        crate::testing::write_ksm(&self.paths.ksm_dir, &k).unwrap();
    }
}

#[test]
fn contribution_lends_each_vm_what_its_pages_saved_and_not_the_hosts() {
    let doms: Vec<_> = (1..=3).map(|n| defined(dom(n, 160, 320), 160)).collect();
    let mut h = Host::new(doms.clone());
    h.settings.policy.split = Split::Contribution;
    h.settings.hold_window_secs = 0;
    // 40000 merging pages in VMs + 2000 in a host process; each KSM page
    // mapped twice: shared 21000, sharing 21000 (r = 1/2)
    let page = 4096i64;
    h.qemu(&doms[0], 101, 16_000, 16_000 * page);
    h.qemu(&doms[1], 102, 16_000, 16_000 * page);
    h.qemu(&doms[2], 103, 8_000, 8_000 * page);
    h.process(
        200,
        "ksm-merger",
        &["/usr/local/bin/ksm-merger".into()],
        2_000,
        2_000 * page,
    );
    h.ksm_counters(21_000, 21_000, 21_000 * page);
    let r = h.run(T0).unwrap();
    let a = r.attribution.expect("an attribution");
    // each merging page saved half a page: 20000 pages for the VMs, 1000
    // for the host process, which is not lent
    assert_eq!(
        (a.host_kib, a.vms_kib, a.non_vm_kib),
        (84_000, 80_000, 4_000)
    );
    assert_eq!(r.lendable_kib, 80_000);
    let part = |n: &str| vm(&r, n).target_kib - 160 * MIB;
    assert_eq!(
        (part("vm1"), part("vm2"), part("vm3")),
        (32_000, 32_000, 16_000)
    );
    assert_eq!(vm(&r, "vm3").contribution_share, Some(0.2));
    assert_eq!(vm(&r, "vm1").ksm.map(|k| k.merging_pages), Some(16_000));
    // under equal, the host process's savings are lent too (the paper)
    let mut h2 = Host::new(doms.clone());
    h2.settings.hold_window_secs = 0;
    h2.ksm_counters(21_000, 21_000, 21_000 * page);
    let r = h2.run(T0).unwrap();
    assert_eq!(r.lendable_kib, 84_000);
    assert!(r.attribution.is_none());
    // a kernel without per-process figures: equal, with the reason said
    let mut h3 = Host::new(doms);
    h3.settings.policy.split = Split::Contribution;
    h3.ksm_counters(21_000, 21_000, 21_000 * page);
    let r = h3.run(T0).unwrap();
    assert!(r.attribution.is_none());
    assert!(r.attribution_problem.is_some(), "{r:?}");
    assert_eq!(vm(&r, "vm1").target_kib, vm(&r, "vm3").target_kib);
}

#[test]
fn demand_lends_the_pool_to_the_vm_that_reads_with_its_memory_full() {
    let doms: Vec<_> = (1..=3).map(|n| defined(dom(n, 160, 320), 160)).collect();
    let mut h = Host::new(doms);
    h.settings.policy.split = Split::Demand;
    h.settings.hold_window_secs = 0;
    h.ksm(1, 90);
    let set = |h: &Host, t: u64, busy_read: u64| {
        for (n, d) in h.fake().domains.values_mut().enumerate() {
            let busy = n == 0;
            d.live.guest = GuestStats {
                usable_kib: Some(100 * MIB),
                unused_kib: Some(if busy { 4 } else { 90 } * MIB),
                available_kib: Some(190 * MIB),
                last_update: Some(t),
                ..GuestStats::default()
            };
            d.live.block_rd_bytes = Some(if busy { busy_read } else { 1 << 20 });
        }
    };
    set(&h, T0, 0);
    let r = h.run(T0).unwrap();
    // no rate yet: unknown demand, an equal split
    assert_eq!(vm(&r, "vm1").target_kib, vm(&r, "vm2").target_kib);
    // status says why vm1's demand is unknown and what it weighs
    let line = crate::render::status(&r);
    assert!(
        line.contains("demand unknown (memory full, first disk reading): weighs as an idle VM"),
        "{line}"
    );
    // vm1 read 280 MiB in 10 s with 4 MiB free: 28 MiB/s
    set(&h, T0 + 10, 280 << 20);
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(vm(&r, "vm1").demand, Some(28_000));
    assert_eq!(vm(&r, "vm2").demand, Some(0));
    // the idle ones give their loans back in recall steps (issue 23): the
    // pass asked for fresh figures; two more passes, reading on
    set(&h, T0 + 20, 560 << 20);
    h.run(T0 + 20).unwrap();
    set(&h, T0 + 30, 840 << 20);
    let r = h.run(T0 + 30).unwrap();
    let bonus = |n: &str| vm(&r, n).target_kib - 160 * MIB;
    assert!(
        bonus("vm1") > 8 * bonus("vm2"),
        "{} {}",
        bonus("vm1"),
        bonus("vm2")
    );
}

/// Three VMs (floor 160, ceiling 320 MiB) sharing 90 MiB by demand.
fn demand_host() -> Host {
    let doms: Vec<_> = (1..=3).map(|n| defined(dom(n, 160, 320), 160)).collect();
    let mut h = Host::new(doms);
    h.settings.policy.split = Split::Demand;
    h.settings.hold_window_secs = 0;
    h.ksm(1, 90);
    h
}

/// Sets, for a pass at `t`, each guest's free memory (MiB, of 190; usable
/// 100) and its disk reads since boot (MiB).
fn set_reads(h: &Host, t: u64, vms: [(u64, u64); 3]) {
    for (d, (free_mib, read_mib)) in h.fake().domains.values_mut().zip(vms) {
        d.live.guest = GuestStats {
            usable_kib: Some(100 * MIB),
            unused_kib: Some(free_mib * MIB),
            available_kib: Some(190 * MIB),
            last_update: Some(t),
            ..GuestStats::default()
        };
        d.live.block_rd_bytes = Some(read_mib << 20);
    }
}

/// Each VM's bonus (target above its floor) and what it kept, MiB.
fn bonuses(r: &Report) -> Vec<(u64, u64)> {
    r.vms
        .iter()
        .map(|v| ((v.target_kib - 160 * MIB) / MIB, v.kept_kib / MIB))
        .collect()
}

#[test]
fn a_new_reader_takes_the_pool_within_three_passes_regression() {
    // Issue 20: the pool took 14-23 passes to follow a new reader: the
    // old reader's demand only halved every 60 s. Now the old reader,
    // whose reads stopped with its memory full, holds a quarter of its
    // demand, and the new one at the same rate outweighs it 4:1 from the
    // pass its reads show a rate (its track ran on while it was idle).
    let h = demand_host();
    // vm1 reads 28 MiB/s with its memory full, vm2 and vm3 are idle
    let mut t = T0;
    let (mut r1, mut r2) = (0, 0);
    for _ in 0..6 {
        r1 += 280;
        set_reads(&h, t, [(4, r1), (90, r2), (90, 0)]);
        h.run(t).unwrap();
        t += 10;
    }
    // vm1 stops (its cache stays full); vm2 reads as vm1 did, memory full
    let mut seen = Vec::new();
    for pass in 1..=3 {
        r2 += 280;
        set_reads(&h, t, [(4, r1), (4, r2), (90, 0)]);
        let r = h.run(t).unwrap();
        t += 10;
        let (v1, v2) = (vm(&r, "vm1"), vm(&r, "vm2"));
        seen.push((pass, v1.demand, v2.demand, bonuses(&r)));
        if pass == 1 {
            assert_eq!(
                (v1.demand, v2.demand),
                (Some(7_000), Some(28_000)),
                "{seen:?}"
            );
            assert_eq!(v1.demand_basis, Some(DemandBasis::Held));
        }
    }
    // by the third pass the pool is split by the new weights (29 000,
    // 8 000, 1 000: vm2 68.7 MiB, vm1 18.9), less what the loan rule has
    // vm1 keep of vm2's part this pass (its report's `kept_kib`); the
    // half-life gave vm2 barely more than vm1 by then
    let b = &seen[2].3;
    assert!(
        b[1].0 + b[0].1 >= 65 && b[0].0 <= 21,
        "(pass, demands, (bonus, kept) per VM): {seen:?}"
    );
}

#[test]
fn a_reader_whose_working_set_fits_keeps_its_loan_while_its_memory_is_full_regression() {
    // Issue 20: once a reader was lent enough to cache its working set,
    // its reads stopped, its demand decayed, and the pool drifted back to
    // equal (recalling the cache that had stopped the reads). With no
    // other reader it keeps its loan while its memory stays full, however
    // long: a quarter of its demand outweighs two idle guests.
    let h = demand_host();
    let (mut t, mut r1) = (T0, 0);
    for _ in 0..6 {
        set_reads(&h, t, [(4, r1), (90, 0), (90, 0)]);
        h.run(t).unwrap();
        t += 10;
        r1 += 280;
    }
    let lent = bonuses(&h.run(t).unwrap())[0].0;
    // reads stop for ten minutes, its memory full of its cache
    let mut kept = Vec::new();
    let mut last = None;
    for _ in 0..60 {
        t += 10;
        set_reads(&h, t, [(4, r1), (90, 0), (90, 0)]);
        let r = h.run(t).unwrap();
        kept.push(bonuses(&r)[0].0);
        last = Some(r);
    }
    let r = last.unwrap();
    assert_eq!(vm(&r, "vm1").demand_basis, Some(DemandBasis::Held));
    // it gives back what a quarter of its weight does not cover (84 of
    // the 90 MiB at 28 MiB/s, 72 held: weights 8 000, 1 000, 1 000) and
    // keeps that for good: no drift back to equal (30 each)
    assert!(lent >= 80, "lent {lent}");
    assert!(
        kept[5..].iter().all(|&k| k == kept[5] && k >= 70),
        "lent {lent}, then {kept:?}"
    );
    // status says why it weighs what it does
    let line = crate::render::status(&r);
    assert!(
        line.contains("memory full, reads stopped: holds a quarter of its highest demand"),
        "{line}"
    );
}

/// Passes every 10 s from `from` for `n` passes; per pass (resizes, the
/// target, the balloon's size before it) in MiB.
fn tick(h: &Host, from: u64, n: u64) -> Vec<(u32, u64, u64)> {
    (1..=n)
        .map(|i| {
            let r = h.run(from + 10 * i).unwrap();
            let v = vm(&r, "vm1");
            (r.resized, v.target_kib / MIB, v.current_kib / MIB)
        })
        .collect()
}

#[test]
fn a_blind_guest_whose_balloon_stops_short_is_not_asked_a_step_further_every_pass_regression() {
    // Issue 11: a guest without statistics gives back a bounded step per
    // pass. Its balloon stopped at 230 MiB (the guest could give no more);
    // every pass then stepped 16 MiB further from the target still "on its
    // way", down to the floor within a minute, and started over: 25
    // resizes in 5 minutes, each asking past what the guest had given.
    let mut d = defined(dom(1, 160, 320), 160);
    d.lowest_kib = Some(230 * MIB);
    let mut h = Host::new(vec![d]);
    h.settings.guest_stats_period = 0;
    h.ksm(1, 100);
    h.run(T0).unwrap();
    h.ksm(2, 0);
    let passes = tick(&h, T0, 30);
    for (i, &(_, target, balloon)) in passes.iter().enumerate() {
        assert!(
            target + 16 >= balloon,
            "pass {i}: asked {target} MiB of a balloon at {balloon}: {passes:?}"
        );
    }
    // after the first passes, only the back-off's retries ask again
    let late: u32 = passes[5..].iter().map(|p| p.0).sum();
    assert!(late <= 3, "{passes:?}");
}

#[test]
fn the_back_off_doubles_with_passes_every_10_s_regression() {
    // A balloon that does not reach its target is asked again after 60 s,
    // then 120, 240 ... But the pass right after a retry (the timer's, 10 s
    // later) saw the retry on its way and forgot the VM was stuck: the
    // back-off started over at 60 s every time, a retry every 80 s for ever.
    let mut d = defined(dom(1, 160, 320), 160);
    d.lowest_kib = Some(230 * MIB);
    let h = Host::new(vec![d]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 100);
    h.run(T0).unwrap();
    // the savings fall; the guest says it can give plenty, yet its balloon
    // stops at 230 (short of 220: within one recall step of 260)
    h.ksm(1, 60);
    let mut asked = Vec::new();
    for i in 1..=90u64 {
        let t = T0 + 10 * i;
        h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(200, t);
        let r = h.run(t).unwrap();
        if r.resized > 0 {
            asked.push(10 * i);
        }
    }
    let gaps: Vec<u64> = asked.windows(2).map(|w| w[1] - w[0]).collect();
    // asked at 20 s (the pass at 10 s asked for fresh figures), found
    // short at 40, retried 60 s later, then 120 and 240 s after each retry
    assert_eq!(asked[0], 20, "asked at {asked:?}");
    assert_eq!(gaps, [80, 120, 240], "asked at {asked:?}");
    let st = h.state().vms[uuid].stuck.unwrap();
    assert_eq!((st.tries, st.retry_at), (4, T0 + 460 + 480));
}

#[test]
fn a_balloon_jittering_short_of_its_target_is_not_asked_again_regression() {
    // Seen on the real stack: a guest without statistics, its memory full,
    // autodeflate='on'. Its balloon gave 3.7 MiB of a 16 MiB blind step and
    // stopped, then jittered by 1 MiB (deflate on OOM, inflate again). The
    // next target, a step below where the balloon stood, moved with it:
    // 3.7 MiB off the target asked, then 4.7, past the 4 MiB deadband, and
    // that counted as a new ask: the back-off started over.
    let edge = 260 * MIB - 3789; // 3.7 MiB below where it was asked from
    let mut d = defined(dom(1, 160, 320), 160);
    d.lowest_kib = Some(edge);
    let mut h = Host::new(vec![d]);
    h.settings.guest_stats_period = 0;
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 100);
    h.run(T0).unwrap();
    d_current(&h, uuid, 260 * MIB);
    h.ksm(2, 0);
    let mut asked = Vec::new();
    for i in 1..=20u64 {
        if i > 1 {
            // at the edge of the guest's memory: 1 MiB up, 1 MiB down
            d_current(&h, uuid, edge - (i % 2) * MIB);
        }
        if h.run(T0 + 10 * i).unwrap().resized > 0 {
            asked.push(i);
        }
    }
    // the step, then only the back-off's retries (60 s, then 120 s on)
    assert_eq!(asked, [1, 9], "asked at passes {asked:?}");
}

#[test]
fn a_balloon_deflated_on_oom_is_not_taken_for_an_operator_on_a_stale_boot_report_regression() {
    // Seen in CI (32-loans, scenario 5): a guest without a statistics
    // period, autodeflate='on', its memory full. A blind step stopped short,
    // then the balloon deflated on OOM a little above where it was asked
    // from. The guest's only report, from its boot, said it had plenty
    // usable: the detector took the deflate for an operator's setmem and
    // held the VM by hand for good.
    let mut d = dom(1, 160, 320);
    d.xml = Some(format!(
        "<domain><name>vm1</name><uuid>{}</uuid><memory>{}</memory><currentMemory>{}</currentMemory><devices><memballoon model='virtio' autodeflate='on'/></devices></domain>",
        d.live.uuid,
        320 * MIB,
        160 * MIB
    ));
    d.live.guest = stats(250, T0 - 100); // its boot report
    let edge = 260 * MIB - 3789;
    d.lowest_kib = Some(edge);
    let mut h = Host::new(vec![d]);
    h.settings.guest_stats_period = 0;
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 100);
    h.run(T0).unwrap();
    d_current(&h, uuid, 260 * MIB);
    h.ksm(2, 0);
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(vm(&r, "vm1").reason, Reason::BlindStep);
    for i in 2..=8u64 {
        // deflated on OOM: 3 MiB above where it was asked from, jittering
        d_current(&h, uuid, 263 * MIB - (i % 2) * MIB);
        let r = h.run(T0 + 10 * i).unwrap();
        let v = vm(&r, "vm1");
        assert_ne!(v.reason, Reason::HeldByHand, "pass {i}");
        assert_ne!(v.reason, Reason::Unsettled, "pass {i}");
    }
    let held = h.state().vms[uuid].manual.and_then(|m| m.held);
    assert_eq!(held, None);
}

fn d_current(h: &Host, uuid: &str, kib: u64) {
    h.fake()
        .domains
        .get_mut(uuid)
        .unwrap()
        .live
        .sizes
        .as_mut()
        .unwrap()
        .current_kib = kib;
}

#[test]
fn asks_no_less_is_direction_aware() {
    // short of a shrink to 200 at 230: 202 is the same, 190 more, 220 less
    assert!(adjust::asks_no_less(
        202 * MIB,
        200 * MIB,
        230 * MIB,
        4 * MIB
    ));
    assert!(adjust::asks_no_less(
        190 * MIB,
        200 * MIB,
        230 * MIB,
        4 * MIB
    ));
    assert!(!adjust::asks_no_less(
        220 * MIB,
        200 * MIB,
        230 * MIB,
        4 * MIB
    ));
    // short of a grow to 260 at 230: 258 the same, 270 more, 240 less
    assert!(adjust::asks_no_less(
        258 * MIB,
        260 * MIB,
        230 * MIB,
        4 * MIB
    ));
    assert!(adjust::asks_no_less(
        270 * MIB,
        260 * MIB,
        230 * MIB,
        4 * MIB
    ));
    assert!(!adjust::asks_no_less(
        240 * MIB,
        260 * MIB,
        230 * MIB,
        4 * MIB
    ));
}

#[test]
fn a_shrink_the_guest_cannot_give_is_withdrawn_regression() {
    // A guest asked for 200 MiB stopped at 230 (its applications grew
    // meanwhile); its figures now say it has nothing more to give. The
    // pass held, but the 200 asked stayed in the guest, whose balloon
    // driver went on taking every page it freed, for as long as it ran.
    let mut d = defined(dom(1, 160, 320), 160);
    d.lowest_kib = Some(230 * MIB);
    let h = Host::new(vec![d]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 80);
    h.run(T0).unwrap();
    assert_eq!(h.fake().current(uuid), Some(240 * MIB));
    h.ksm(1, 40);
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(60, T0 + 9);
    // the recall asks for fresh figures, then takes a step of 22
    assert_eq!(h.run(T0 + 10).unwrap().resized, 0);
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(60, T0 + 12);
    let r = h.run(T0 + 12).unwrap();
    assert_eq!(vm(&r, "vm1").target_kib, 218 * MIB);
    assert_eq!(h.fake().current(uuid), Some(230 * MIB));
    // it has 16 MiB left, its margin: nothing to give
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(16, T0 + 33);
    let r = h.run(T0 + 34).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!((v.action, v.target_kib), (Action::Grow, 230 * MIB));
    assert_eq!(r.resized, 1);
    assert_eq!(h.state().vms[uuid].last_target_kib, Some(230 * MIB));
    // and then it is left alone
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(16, T0 + 43);
    assert_eq!(h.run(T0 + 44).unwrap().resized, 0);
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(16, T0 + 63);
    assert_eq!(h.run(T0 + 64).unwrap().resized, 0);
}

#[test]
fn a_vm_adopted_while_its_balloon_inflates_to_its_boot_size_is_not_held_by_hand_regression() {
    // Seen in tests/realstack/demand.sh (no hook, VMs adopted): the first
    // pass came while a guest's balloon driver had not yet inflated it from
    // its 256 MiB maximum to the 160 MiB it boots with (libvirt said 255).
    // Adopted there, the detector took 255 for the size asked; the balloon
    // then reached 160 by itself and the VM was held "by hand" for good,
    // out of the pool.
    let mut h = Host::new(vec![
        defined(dom(1, 255, 256), 160),
        defined(dom(2, 160, 256), 160),
    ]);
    // the savings of the moment (no holding window), as the test had them
    h.settings.hold_window_secs = 0;
    let u1 = "00000001-0000-4000-8000-000000000000";
    // no savings yet: vm1, at 255 on its way to its boot size, is asked
    // nothing (the plan starts from its boot size: issue 18's chaos soak)
    h.ksm(1, 0);
    let r = h.run(T0).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!((v.floor_kib, v.action), (160 * MIB, Action::Hold));
    assert_eq!(r.resized, 0);
    h.ksm(1, 200);
    // the guest's driver loads and inflates the balloon to its boot size
    h.fake()
        .domains
        .get_mut(u1)
        .unwrap()
        .live
        .sizes
        .as_mut()
        .unwrap()
        .current_kib = 160 * MIB;
    for t in [10, 20, 30] {
        let r = h.run(T0 + t).unwrap();
        let v = vm(&r, "vm1");
        assert!(v.held_by_hand.is_none(), "pass at +{t}: {v:?}");
        assert!(
            !matches!(v.reason, Reason::HeldByHand | Reason::Unsettled),
            "pass at +{t}: {v:?}"
        );
    }
    // and it gets its share like the other
    let c1 = h.fake().current(u1).unwrap();
    let c2 = h
        .fake()
        .current("00000002-0000-4000-8000-000000000000")
        .unwrap();
    assert_eq!(c1, c2);
    assert!(c1 > 160 * MIB);
}

/// The fake, with something happening to the host right after the bulk
/// statistics call and right before each resize.
struct Tapped {
    hv: Shared,
    after_stats: Box<dyn FnMut(&Shared)>,
    before_resize: Box<dyn FnMut()>,
}

impl Tapped {
    /// The QEMU of one VM (by UUID) stops right after the bulk statistics
    /// call: every later call on it times out.
    fn stops_after_stats(hv: Shared, uuid: String) -> Tapped {
        Tapped {
            hv,
            after_stats: Box::new(move |hv: &Shared| {
                hv.0.borrow_mut().hung.insert(uuid.clone());
            }),
            before_resize: Box::new(|| {}),
        }
    }
}

impl Hypervisor for Tapped {
    fn domains(&mut self) -> Result<Vec<LiveDomain>, HvError> {
        let d = self.hv.domains();
        (self.after_stats)(&self.hv);
        d
    }
    fn inactive_xml(&mut self, uuid: &str) -> Result<String, HvError> {
        self.hv.inactive_xml(uuid)
    }
    fn persistent(&mut self, uuid: &str) -> Result<bool, HvError> {
        self.hv.persistent(uuid)
    }
    fn set_memory(&mut self, uuid: &str, kib: u64) -> Result<(), HvError> {
        (self.before_resize)();
        self.hv.set_memory(uuid, kib)
    }
    fn set_stats_period(&mut self, uuid: &str, seconds: u32) -> Result<(), HvError> {
        self.hv.set_stats_period(uuid, seconds)
    }
    fn metadata(&mut self, uuid: &str) -> Result<Option<String>, HvError> {
        self.hv.metadata(uuid)
    }
    fn calls(&self) -> CallCount {
        self.hv.calls()
    }
}

/// A statistics period that times out (the QEMU stopped after the bulk
/// call) is not taken for the guest's refusal: it is not recorded as set,
/// and the VM does not answer since that pass (in the state and the
/// report); once it answers the period is asked again.
#[test]
fn a_statistics_period_that_times_out_is_asked_again_once_the_qemu_answers() {
    let d = defined(dom(1, 160, 256), 160);
    let u = d.live.uuid.clone();
    let h = Host::new(vec![d]);
    let hv = h.hv.clone();
    let stopping = u.clone();
    let mut open = move || {
        Ok(
            Box::new(Tapped::stops_after_stats(hv.clone(), stopping.clone()))
                as Box<dyn Hypervisor>,
        )
    };
    let r = h.run_with(&mut open, T0).unwrap();
    assert_eq!(vm(&r, "vm1").unresponsive_since, Some(T0));
    assert!(h.fake().stats_periods.is_empty(), "timed out, not set");
    let rec = &h.state().vms[&u];
    assert_eq!(rec.unresponsive_since, Some(T0));
    assert!(!rec.stats_period_set);
    h.fake().hung.clear();
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(vm(&r, "vm1").unresponsive_since, None);
    assert_eq!(h.fake().stats_periods, [(u.clone(), 5)]);
    assert!(h.state().vms[&u].stats_period_set);
}

/// Issue 18: three VMs grown on the savings, then one VM's QEMU stops
/// answering while the savings vanish. The pass must not wait for it: the
/// two others come down to their floors in that very pass, the stopped one
/// is left alone (its record kept, never forgotten nor re-adopted), named
/// in the report with since when; once it answers it is managed again at
/// the next pass, and never taken for a balloon set by hand.
#[test]
fn a_vm_whose_qemu_does_not_answer_is_skipped_and_the_others_resized_regression() {
    let doms: Vec<_> = (1..=3).map(|n| defined(dom(n, 160, 256), 160)).collect();
    let stuck = doms[1].live.uuid.clone();
    let mut h = Host::new(doms);
    h.settings.hold_window_secs = 0;
    h.settings.policy.blind_step_kib = None;
    h.ksm(1, 90);
    let r = h.run(T0).unwrap();
    assert_eq!(r.resized, 3);
    assert!(r.vms.iter().all(|v| v.target_kib == 190 * MIB));
    // vm2's QEMU stops; the savings vanish
    h.fake().hung.insert(stuck.clone());
    h.ksm(2, 0);
    let r = h.run(T0 + 10).unwrap();
    let v2 = vm(&r, "vm2");
    assert_eq!((v2.action, v2.reason), (Action::Skip, Reason::Unresponsive));
    assert!(v2.managed, "its record is kept");
    assert!(v2.unresponsive.is_some());
    assert_eq!(v2.unresponsive_since, Some(T0 + 10));
    assert_eq!(v2.held_by_hand, None);
    for n in ["vm1", "vm3"] {
        let v = vm(&r, n);
        assert_eq!((v.action, v.target_kib), (Action::Shrink, 160 * MIB), "{n}");
    }
    assert_eq!(r.resized, 2, "the two others in the same pass");
    assert_eq!(h.fake().current(&stuck), Some(190 * MIB));
    let s = h.state();
    assert_eq!(s.vms[&stuck].unresponsive_since, Some(T0 + 10));
    assert!(s.vms[&stuck].manual.unwrap().held.is_none());
    // still stopped: still skipped, since the same time
    let r = h.run(T0 + 20).unwrap();
    assert_eq!(vm(&r, "vm2").reason, Reason::Unresponsive);
    assert_eq!(vm(&r, "vm2").unresponsive_since, Some(T0 + 10));
    assert_eq!(r.resized, 0);
    let text = crate::render::status(&r);
    assert!(text.contains("not answering since"), "{text}");
    // it answers again: managed at once, back to its floor, not by hand
    h.fake().hung.clear();
    let r = h.run(T0 + 30).unwrap();
    let v2 = vm(&r, "vm2");
    assert_eq!((v2.action, v2.target_kib), (Action::Shrink, 160 * MIB));
    assert_eq!(
        (v2.unresponsive.as_deref(), v2.unresponsive_since),
        (None, None)
    );
    assert_eq!(v2.held_by_hand, None);
    assert_eq!(h.fake().current(&stuck), Some(160 * MIB));
    assert_eq!(h.state().vms[&stuck].unresponsive_since, None);
    let r = h.run(T0 + 40).unwrap();
    assert!(r
        .vms
        .iter()
        .all(|v| v.held_by_hand.is_none() && v.action == Action::Hold));
}

/// A QEMU that stops between the statistics and its resize: the resize
/// times out (the edge abandons it), the others are made, and the resize
/// counts as asked: libvirt may still make it once the QEMU answers, and
/// the balloon reaching it then is ksm-balloon's, not an operator's.
#[test]
fn a_resize_that_times_out_counts_as_asked_and_the_others_go_on() {
    let doms: Vec<_> = (1..=3).map(|n| defined(dom(n, 160, 256), 160)).collect();
    let (u1, u2) = (doms[0].live.uuid.clone(), doms[1].live.uuid.clone());
    let mut h = Host::new(doms);
    h.settings.hold_window_secs = 0;
    h.settings.policy.blind_step_kib = None;
    h.ksm(1, 90);
    h.run(T0).unwrap();
    // vm1 stops answering after its statistics were read: only its resize
    // (and whatever comes after it for vm1) times out
    h.ksm(2, 0);
    let hv = h.hv.clone();
    let u = u1.clone();
    let mut open = move || {
        Ok(Box::new(Tapped::stops_after_stats(hv.clone(), u.clone())) as Box<dyn Hypervisor>)
    };
    let r = h.run_with(&mut open, T0 + 10).unwrap();
    assert_eq!((r.resized, r.failed), (2, 1));
    let v1 = vm(&r, "vm1");
    assert!(
        v1.error.as_deref().unwrap_or("").contains("did not answer"),
        "{v1:?}"
    );
    assert_eq!(v1.unresponsive_since, Some(T0 + 10));
    let s = h.state();
    assert_eq!(s.vms[&u1].last_target_kib, Some(160 * MIB), "asked");
    assert_eq!(s.vms[&u1].unresponsive_since, Some(T0 + 10));
    assert_eq!(s.vms[&u2].last_target_kib, Some(160 * MIB));
    // the QEMU answers and libvirt makes the abandoned resize: the balloon
    // at 160 is what was asked, not someone else's
    h.fake().hung.clear();
    d_current(&h, &u1, 160 * MIB);
    for t in [20, 30] {
        let r = h.run(T0 + t).unwrap();
        let v1 = vm(&r, "vm1");
        assert_eq!(v1.held_by_hand, None, "t={t}");
        assert_eq!(v1.unresponsive_since, None, "t={t}");
        assert_eq!(v1.action, Action::Hold, "t={t}");
    }
}

/// A VM no hook recorded whose QEMU does not answer is not adopted (its
/// sizes may be stale): it waits as a candidate until it answers.
#[test]
fn an_unrecorded_vm_that_does_not_answer_is_not_adopted() {
    let d = defined(dom(1, 200, 256), 160);
    let u = d.live.uuid.clone();
    let h = Host::new(vec![d]);
    h.fake().hung.insert(u.clone());
    let r = h.run(T0).unwrap();
    let v = vm(&r, "vm1");
    assert!(!v.managed && !v.adopted);
    assert_eq!(v.reason, Reason::Unresponsive);
    assert_eq!(r.calls.xml, 0, "no definition fetched for it");
    h.fake().hung.clear();
    let r = h.run(T0 + 10).unwrap();
    assert!(vm(&r, "vm1").adopted);
    assert_eq!(vm(&r, "vm1").floor_kib, 160 * MIB);
}

impl Host {
    /// A fake QEMU for `d` started `age` seconds before the fake
    /// `/proc/uptime` says now (`uptime`).
    fn qemu_aged(&self, d: &FakeDomain, pid: u32, uptime: u64, age: u64) {
        self.qemu(d, pid, 0, 0);
        let dir = self.paths.procs.proc_dir.join(pid.to_string());
        let start_ticks = (uptime - age) * 100;
        let fields = vec!["0"; 18].join(" ");
        fs::write(
            dir.join("stat"),
            format!("{pid} (qemu-system-x86) S {fields} {start_ticks} 0\n"),
        )
        .unwrap();
        self.uptime(uptime);
    }

    fn uptime(&self, secs: u64) {
        fs::write(
            self.paths.procs.proc_dir.join("uptime"),
            format!("{secs}.00 0.00\n"),
        )
        .unwrap();
    }
}

/// Issue 18: a transient guest (no persistent definition: its definition's
/// <currentMemory> is its balloon's size of the moment) caught by a pass
/// 1 MiB into its balloon driver's inflation from 256 MiB to its 160 MiB
/// boot size. It was adopted with floor 255 MiB, then its balloon reaching
/// 160 by itself was "set by someone else (ksm-balloon asked for 255)" and
/// the VM left alone for good. Now a transient domain is adopted only once
/// its QEMU has run ADOPT_BOOT_SECS and its balloon stayed put between two
/// passes: with its boot size as its floor, never held by hand, and lent
/// to.
#[test]
fn a_transient_vm_caught_while_its_balloon_inflates_is_adopted_at_its_boot_size_regression() {
    let d = dom(1, 255, 256);
    let u = d.live.uuid.clone();
    let h = Host::new(vec![d.clone()]);
    h.ksm(1, 60);
    let up = 1000;
    h.qemu_aged(&d, 4242, up, 3);
    let r = h.run(T0).unwrap();
    let v = vm(&r, "vm1");
    assert!(!v.managed, "not adopted 3 s after its QEMU started: {v:?}");
    assert_eq!(v.reason, Reason::Adopting);
    // its driver reaches the boot size; passes every 10 s
    d_current(&h, &u, 160 * MIB);
    let mut adopted_at = None;
    for t in (10..=90).step_by(10) {
        h.uptime(up + t);
        let r = h.run(T0 + t).unwrap();
        let v = vm(&r, "vm1");
        assert!(v.held_by_hand.is_none(), "t={t}: {v:?}");
        assert!(
            !matches!(v.reason, Reason::HeldByHand | Reason::Unsettled),
            "t={t}: {v:?}"
        );
        if v.adopted {
            assert_eq!(adopted_at, None);
            adopted_at = Some(t);
            assert_eq!(
                (v.floor_kib, v.ceiling_kib),
                (160 * MIB, 256 * MIB),
                "t={t}"
            );
        }
    }
    // adopted once its QEMU had run ADOPT_BOOT_SECS (3 + 60 s: t = 60)
    assert_eq!(adopted_at, Some(reconcile::ADOPT_BOOT_SECS));
    let rec = &h.state().vms[&u];
    assert_eq!(
        (rec.floor_kib, rec.source),
        (160 * MIB, crate::state::Source::Adopted)
    );
    assert!(rec.manual.unwrap().held.is_none());
    // and lent to: 60 MiB of savings, one VM
    assert_eq!(h.fake().current(&u), Some(220 * MIB));
}

/// CI of bbdec68 (37-chaos): a VM started on a full spool, met by the
/// hook only at libvirtd's restart (`reconnect`) while it booted, its
/// balloon still at its maximum, was recorded with that as its floor. Now
/// the reconnect leaves it to the adoption rule: adopted at the size its
/// driver settles at.
#[test]
fn a_booting_vm_first_met_at_a_reconnect_is_adopted_at_its_boot_size_regression() {
    let d = dom(1, 256, 256);
    let u = d.live.uuid.clone();
    let h = Host::new(vec![d.clone()]);
    h.ksm(1, 60);
    let up = 1000;
    h.qemu_aged(&d, 4242, up, 5);
    h.hook_call(&d, "reconnect", 256, T0);
    let r = h.run(T0).unwrap();
    let v = vm(&r, "vm1");
    assert!(!v.managed, "recorded at its maximum: {v:?}");
    assert_eq!(v.reason, Reason::Adopting);
    assert!(h.state().vms.is_empty());
    d_current(&h, &u, 144 * MIB);
    for t in (10..=90).step_by(10) {
        h.uptime(up + t);
        h.run(T0 + t).unwrap();
    }
    let rec = &h.state().vms[&u];
    assert_eq!(
        (rec.floor_kib, rec.ceiling_kib, rec.source),
        (144 * MIB, 256 * MIB, crate::state::Source::Adopted)
    );
}

/// A transient domain whose balloon is still moving is not adopted, old
/// QEMU or not: the size of the moment is no floor.
#[test]
fn a_transient_vm_whose_balloon_moves_is_not_adopted_until_it_stays_put() {
    let d = dom(1, 250, 256);
    let u = d.live.uuid.clone();
    let h = Host::new(vec![d.clone()]);
    h.qemu_aged(&d, 4242, 5000, 600);
    for (t, size) in [(0, 250), (10, 230), (20, 200), (30, 170)] {
        d_current(&h, &u, size * MIB);
        h.uptime(5000 + t);
        let r = h.run(T0 + t).unwrap();
        assert!(!vm(&r, "vm1").managed, "t={t}");
    }
    h.uptime(5040);
    let r = h.run(T0 + 40).unwrap();
    assert!(vm(&r, "vm1").adopted);
    assert_eq!(vm(&r, "vm1").floor_kib, 170 * MIB);
}

/// A transient domain found running long after its boot (the state file
/// was lost, its balloon grown by an earlier pass): its boot size cannot be
/// known. The safe side for the guest: its size now is its floor, so a
/// bonus it may hold is never recalled (the host keeps lending it).
#[test]
fn a_transient_vm_found_long_after_its_boot_takes_its_size_as_floor() {
    let d = dom(1, 200, 256);
    let h = Host::new(vec![d.clone()]);
    h.qemu_aged(&d, 4242, 90_000, 86_400);
    let r = h.run(T0).unwrap();
    assert!(
        !vm(&r, "vm1").managed,
        "seen once: not known to stay put yet"
    );
    h.uptime(90_010);
    let r = h.run(T0 + 10).unwrap();
    let v = vm(&r, "vm1");
    assert!(v.adopted);
    assert_eq!(v.floor_kib, 200 * MIB);
    assert_eq!(v.held_by_hand, None);
}

#[test]
fn the_adoption_rule() {
    use reconcile::{adoption, Adoption::*, ADOPT_AT_MAXIMUM_SECS as M, ADOPT_BOOT_SECS as B};
    let m = MIB;
    let x = 256 * m;
    // persistent: at once, whatever its balloon does
    assert_eq!(adoption(false, 255 * m, x, None, Some(1), 0), Defined);
    // transient: seen once, or moving, or young: wait
    assert_eq!(adoption(true, 160 * m, x, None, Some(B + 5), 0), Wait);
    assert_eq!(
        adoption(true, 160 * m, x, Some(255 * m), Some(B + 5), 10),
        Wait
    );
    assert_eq!(
        adoption(true, 160 * m, x, Some(160 * m), Some(B - 1), 10),
        Wait
    );
    // jitter within STEADY_KIB is staying put
    assert_eq!(
        adoption(true, 160 * m, x, Some(160 * m + 512), Some(B), 10),
        Booted
    );
    // still at its maximum: its driver may not be loaded yet; longer
    assert_eq!(adoption(true, x, x, Some(x), Some(B + 100), 110), Wait);
    assert_eq!(adoption(true, x - 512, x, Some(x), Some(M - 1), 110), Wait);
    assert_eq!(adoption(true, x, x, Some(x), Some(M), 110), Booted);
    // no /proc: the time since the first sighting counts instead
    assert_eq!(adoption(true, 160 * m, x, Some(160 * m), None, B - 1), Wait);
    assert_eq!(
        adoption(true, 160 * m, x, Some(160 * m), None, B),
        FloorUnknown
    );
    // its QEMU was already old at the first sighting: boot size unknown
    assert_eq!(
        adoption(true, 200 * m, x, Some(200 * m), Some(B + 100), 10),
        FloorUnknown
    );
}

#[test]
fn a_recall_asks_for_fresh_figures_once_and_sets_the_period_back_when_it_is_over() {
    // Issue 23: the first pass of a recall sets the short period (and
    // records when), the passes of the recall set nothing more, and the
    // pass that finds it over sets --guest-stats-period back.
    let d = defined(dom(1, 160, 320), 160);
    let h = Host::new(vec![d]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    let fresh = |usable, t| h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(usable, t);
    h.ksm(1, 40);
    fresh(200, T0);
    h.run(T0).unwrap();
    assert_eq!(h.fake().current(uuid), Some(200 * MIB));
    assert!(h.fake().stats_periods.is_empty());
    assert_eq!(h.state().vms[uuid].recall_stats_at, None);
    h.ksm(2, 0);
    let mut periods = Vec::new();
    let mut sizes = Vec::new();
    for i in 1..=8u64 {
        let t = T0 + 10 * i;
        fresh(200, t - 1);
        let r = h.run(t).unwrap();
        periods.push(r.calls.stats_period);
        sizes.push(h.fake().current(uuid).unwrap() / MIB);
    }
    // asked once (the recall's start), set back once (its end)
    assert_eq!(
        h.fake().stats_periods,
        [
            (uuid.to_string(), asks::RECALL_STATS_PERIOD_SECS),
            (uuid.to_string(), Settings::default().guest_stats_period)
        ],
        "calls per pass {periods:?}, sizes {sizes:?}"
    );
    // nothing taken on the pass that asked; then steps: 40 -> 20 -> 4 -> 0
    assert_eq!(sizes[..5], [200, 180, 164, 160, 160], "{sizes:?}");
    assert_eq!(h.state().vms[uuid].recall_stats_at, None);
    // never with the setting at 0: the recall then waits for figures at
    // most RECALL_FRESH_SECS old, and takes the same steps
    let mut h = Host::new(vec![defined(dom(1, 160, 320), 160)]);
    h.settings.guest_stats_period = 0;
    h.ksm(1, 40);
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(200, T0);
    h.run(T0).unwrap();
    h.ksm(2, 0);
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(200, T0 + 6);
    assert_eq!(h.run(T0 + 10).unwrap().resized, 0, "figures 4 s old");
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(200, T0 + 19);
    assert_eq!(h.run(T0 + 20).unwrap().resized, 1);
    assert!(h.fake().stats_periods.is_empty());
}

/// The fake hypervisor, killed right after the first resize it makes: the
/// panic unwinds out of the pass as a SIGKILL would end it, before the
/// pass's last save.
struct KilledAfterResize(Shared);

impl Hypervisor for KilledAfterResize {
    fn domains(&mut self) -> Result<Vec<LiveDomain>, HvError> {
        self.0.domains()
    }
    fn inactive_xml(&mut self, uuid: &str) -> Result<String, HvError> {
        self.0.inactive_xml(uuid)
    }
    fn persistent(&mut self, uuid: &str) -> Result<bool, HvError> {
        self.0.persistent(uuid)
    }
    fn set_memory(&mut self, uuid: &str, kib: u64) -> Result<(), HvError> {
        self.0.set_memory(uuid, kib)?;
        panic!("the pass is killed right after a resize (a test's doing)");
    }
    fn set_stats_period(&mut self, uuid: &str, seconds: u32) -> Result<(), HvError> {
        self.0.set_stats_period(uuid, seconds)
    }
    fn metadata(&mut self, uuid: &str) -> Result<Option<String>, HvError> {
        self.0.metadata(uuid)
    }
    fn calls(&self) -> CallCount {
        self.0.calls()
    }
}

impl Host {
    /// A pass killed right after its first resize.
    fn run_killed_after_resize(&self, now: u64) {
        let hv = self.hv.clone();
        let mut open = move || Ok(Box::new(KilledAfterResize(hv.clone())) as Box<dyn Hypervisor>);
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_with(&mut open, now)
        }));
        assert!(killed.is_err(), "the pass was not killed");
    }

    fn set_current(&self, uuid: &str, kib: u64) {
        self.fake()
            .domains
            .get_mut(uuid)
            .unwrap()
            .live
            .sizes
            .as_mut()
            .unwrap()
            .current_kib = kib;
    }
}

#[test]
fn a_pass_killed_between_a_resize_and_its_save_never_takes_its_own_ask_for_a_hand_regression() {
    // Issue 18: resizes were made before the state was saved. A pass
    // killed in between (the unit's timeout, an OOM kill) left balloons at
    // sizes the state never asked for, and the manual-change detector held
    // those VMs "set by hand" until they restarted or were released. Now
    // every ask is saved before it is made.
    let mut h = Host::new(vec![
        defined(dom(1, 160, 256), 160),
        defined(dom(2, 160, 256), 160),
    ]);
    h.settings.hold_window_secs = 0;
    let (u1, u2) = (
        "00000001-0000-4000-8000-000000000000",
        "00000002-0000-4000-8000-000000000000",
    );
    // adopted at their floors, which they have reached
    h.run(T0).unwrap();
    h.run(T0 + 10).unwrap();
    // savings: 190 MiB each; killed right after vm1's resize
    h.ksm(1, 60);
    h.run_killed_after_resize(T0 + 20);
    assert_eq!(h.fake().resizes, [(u1.to_string(), 190 * MIB)]);
    // vm1's balloon stops part way (175 MiB, as on the test driver in the
    // issue); vm2 was never asked
    h.set_current(u1, 175 * MIB);
    assert_eq!(h.fake().current(u2), Some(160 * MIB));
    let mut t = T0 + 20;
    while t < T0 + 20 + rows::SETTLE_SECS + adjust::BACKOFF_FIRST_SECS + 20 {
        t += 10;
        let r = h.run(t).unwrap();
        for name in ["vm1", "vm2"] {
            let v = vm(&r, name);
            assert!(v.held_by_hand.is_none(), "+{}s {name}: {v:?}", t - T0);
            assert_ne!(v.reason, Reason::Unsettled, "+{}s {name}", t - T0);
        }
    }
    // both were asked again after the back-off, and got there
    assert_eq!(h.fake().current(u1), Some(190 * MIB));
    assert_eq!(h.fake().current(u2), Some(190 * MIB));
}

#[test]
fn a_pass_that_cannot_record_its_resizes_makes_none() {
    // Issue 18: the state is saved before the resizes; when that save
    // fails (a full disk), no balloon is moved behind the state's back.
    let mut h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    h.settings.hold_window_secs = 0;
    h.run(T0).unwrap();
    // every save fails: a directory (not empty) where this process's
    // temporary state file goes
    let mut tmp = h.paths.state.clone().into_os_string();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    fs::create_dir_all(tmp.join("x")).unwrap();
    h.ksm(1, 30);
    let err = h.run(T0 + 10).unwrap_err();
    assert!(format!("{err:#}").contains("none was made"), "{err:#}");
    assert_eq!(h.fake().resizes, []);
    assert_eq!(h.state().vms.values().next().unwrap().last_target_kib, None);
    fs::remove_dir_all(&tmp).unwrap();
    assert_eq!(h.run(T0 + 20).unwrap().resized, 1);
}

#[test]
fn a_hook_record_with_floor_0_costs_no_other_vm_its_history_regression() {
    // Issue 18: a hook record with floor 0 was folded and saved; the next
    // load moved the whole state file aside, and every VM was adopted
    // anew: holds by hand, back-offs and histories lost.
    let h = Host::new(vec![
        defined(dom(1, 160, 256), 160),
        defined(dom(2, 160, 256), 160),
    ]);
    h.ksm(1, 60);
    h.run(T0).unwrap();
    let before = h.state().vms["00000001-0000-4000-8000-000000000000"].clone();
    let d2 = defined(dom(2, 160, 256), 160);
    h.hook_prepare(&d2, 0, T0 + 5);
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(r.state_problem, None);
    let r = h.run(T0 + 20).unwrap();
    assert_eq!(r.state_problem, None, "the state file was moved aside");
    assert!(!vm(&r, "vm1").adopted && !vm(&r, "vm2").adopted);
    let s = h.state();
    assert_eq!(
        s.vms["00000001-0000-4000-8000-000000000000"].recorded_at,
        before.recorded_at
    );
    assert_eq!(
        s.vms["00000002-0000-4000-8000-000000000000"].floor_kib,
        160 * MIB
    );
}

#[test]
fn what_a_pass_cannot_fold_goes_to_the_quarantine_and_the_spool_empties_regression() {
    // Issue 18: a directory in the spool that was not empty was logged
    // "removed" every pass and stayed; with the path unit
    // (DirectoryNotEmpty, no start limit) it started passes back to back
    // for ever. Now what a pass cannot fold is moved out of the spool.
    let h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    let d = dom(1, 160, 256);
    h.hook_prepare(&d, 160, T0);
    let spool_dir = spool::dir_of(&h.paths.state);
    fs::create_dir_all(spool_dir.join("a-directory/with-a-file")).unwrap();
    fs::write(spool_dir.join("junk"), "not a record").unwrap();
    let bad = format!("{}-{:020}-1.json", spool::UNKNOWN_BOOT, 1);
    fs::write(spool_dir.join(&bad), "{garbage").unwrap();
    let r = h.run(T0 + 1).unwrap();
    assert_eq!(r.hook_records, 1);
    assert!(h.state().vms.contains_key(&d.live.uuid));
    assert_eq!(fs::read_dir(&spool_dir).unwrap().count(), 0);
    let mut q: Vec<String> = fs::read_dir(spool::quarantine_dir(&h.paths.state))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    q.sort();
    assert_eq!(
        q,
        [
            format!("{bad}.{}", T0 + 1),
            format!("a-directory.{}", T0 + 1),
            format!("junk.{}", T0 + 1)
        ]
    );
    // the next pass finds nothing to do
    assert_eq!(h.run(T0 + 2).unwrap().hook_records, 0);
}

#[test]
fn a_long_spool_is_folded_oldest_first_in_batches() {
    // Issue 18: a pass read the whole spool into memory at once. Now it
    // reads one record at a time and saves every FOLD_BATCH records.
    let h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    let d = dom(1, 160, 256);
    let n = 2 * spool::FOLD_BATCH + 7;
    for i in 0..n as u64 {
        h.hook_prepare(&d, 160 + (i % 3), T0 + i);
    }
    let r = h.run(T0 + n as u64).unwrap();
    assert_eq!(r.hook_records, n);
    assert_eq!(
        fs::read_dir(spool::dir_of(&h.paths.state)).unwrap().count(),
        0
    );
    // the last record is the one that holds
    let last = 160 + ((n as u64 - 1) % 3);
    assert_eq!(h.state().vms[&d.live.uuid].floor_kib, last * MIB);
}

#[test]
fn the_state_file_stays_the_same_size_over_a_day_of_passes_regression() {
    // Issue 18: the holding window's history grew one entry per pass: a
    // one-day window meant some 370 KB rewritten and fsynced every pass.
    // A day of passes (every 60 s, to keep the test short: the history
    // grew per pass whatever the interval), savings rising in steps for
    // 400 passes and falling back (the worst case: every rise is a
    // reading to keep).
    let mut h = Host::new(vec![defined(dom(1, 160, 512), 160)]);
    h.settings.hold_window_secs = 86_400;
    let mut exact: Vec<(u64, u64)> = Vec::new();
    let mut sizes = Vec::new();
    for i in 0..1440u64 {
        let now = T0 + 60 * i;
        let savings = 50 + (i % 400) / 2;
        h.ksm(1, savings);
        let r = h.run(now).unwrap();
        // never lends more than held over the whole window
        exact.retain(|&(at, _)| now - at < 86_400);
        exact.push((now, savings * MIB));
        let held = exact.iter().map(|&(_, k)| k).min().unwrap();
        assert!(r.lendable_kib <= held, "pass {i}");
        sizes.push(fs::metadata(&h.paths.state).unwrap().len());
    }
    let s = h.state();
    assert!(
        s.savings_seen.len() <= HOLD_MAX_ENTRIES,
        "{}",
        s.savings_seen.len()
    );
    let settled = sizes[HOLD_MAX_ENTRIES * 5];
    let most = *sizes.iter().max().unwrap();
    assert!(most <= settled + 512, "from {settled} to {most} bytes");
}

/// The boot id of the clock-step tests' host.
const BOOT: &str = "0123456789abcdef0123456789abcdef";

impl Host {
    /// A pass `boot` seconds after T0 by the boot's monotonic clock, with
    /// the wall clock `step` seconds off it (stepped back when negative).
    fn run_at(&self, boot: u64, step: i64) -> anyhow::Result<Report> {
        let hv = self.hv.clone();
        let mut open = move || Ok(Box::new(hv.clone()) as Box<dyn Hypervisor>);
        self.run_with(
            &mut open,
            Now {
                wall: wall(boot, step),
                boot: Some(crate::state::spool::Stamp {
                    boot_id: BOOT.into(),
                    boottime_ns: (1000 + boot) * 1_000_000_000,
                }),
            },
        )
    }
}

/// The wall clock at `boot` seconds after T0, stepped by `step`.
fn wall(boot: u64, step: i64) -> u64 {
    (T0 + boot).saturating_add_signed(step)
}

/// The pass at `boot` seconds (by the boot clock) is the first whose wall
/// clock is stepped: by `by` seconds from then on.
fn stepped(boot: u64, from: u64, by: i64) -> i64 {
    if boot >= from {
        by
    } else {
        0
    }
}

#[test]
fn a_back_off_runs_its_time_whichever_way_the_wall_clock_steps_regression() {
    // Issue 18: the back-off is `now < retry_at` on the wall clock. Stepped
    // back an hour, a balloon short of its target was not asked again for
    // an hour more than its back-off; stepped forward, it was asked again
    // at once. By the boot clock it is asked again after its 60 s, as if
    // the wall clock had not stepped.
    let mut runs = Vec::new();
    for by in [0, -3600, 3600] {
        let mut d = defined(dom(1, 160, 320), 160);
        d.lowest_kib = Some(230 * MIB);
        let h = Host::new(vec![d]);
        let uuid = "00000001-0000-4000-8000-000000000000";
        h.ksm(1, 100);
        h.run_at(0, 0).unwrap();
        h.ksm(1, 60);
        let mut asked = Vec::new();
        for b in (10..=250).step_by(10) {
            // the clock steps during the back-off
            let s = stepped(b, 60, by);
            // the guest's QEMU stamps its figures with the wall clock
            h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(200, wall(b, s) - 1);
            let r = h.run_at(b, s).unwrap();
            assert_eq!(
                r.clock_step_secs,
                (b == 60 && by != 0).then_some(by),
                "+{b}s"
            );
            if r.resized > 0 {
                asked.push(b);
            }
        }
        let st = h.state().vms[uuid].stuck.unwrap();
        // the state's times are on the stepped clock
        runs.push((asked, st.tries, st.retry_at as i64 - T0 as i64 - by));
    }
    // asked at 20 (10 asked for fresh figures), found short at 40, asked
    // again 60 s later, then 120 s after that, the next in 240 s
    assert_eq!(runs[0], (vec![20, 100, 220], 3, 220 + 240));
    assert_eq!(runs[1], runs[0], "stepped back");
    assert_eq!(runs[2], runs[0], "stepped forward");
}

#[test]
fn the_holding_window_holds_a_rise_and_a_dip_its_time_whichever_way_the_wall_clock_steps_regression(
) {
    // Issue 18: the holding window dropped readings from "the future" after
    // a step back, and every reading after a step forward: a rise was lent
    // at once, a dip forgotten at once. By the boot clock each holds the
    // window (60 s), as if the wall clock had not stepped.
    let mut runs = Vec::new();
    for by in [0, -3600, 3600] {
        let h = Host::new(vec![defined(dom(1, 160, 320), 160)]);
        let mut lendable = Vec::new();
        for b in (0..=150).step_by(10) {
            // 100 MiB, a rise to 150 at 10, a dip to 50 at 80, 150 again
            // at 90; the clock steps while the rise is held
            let savings = match b {
                0 => 100,
                80 => 50,
                _ => 150,
            };
            h.ksm(1, savings);
            let r = h.run_at(b, stepped(b, 30, by)).unwrap();
            lendable.push(r.lendable_kib / MIB);
        }
        runs.push(lendable);
    }
    assert_eq!(
        runs[0],
        [
            100, 100, 100, 100, 100, 100, // the rise held for the window
            150, 150, // lent at 60, once the reading of 0 left it
            50,  // the dip followed at once at 80, and held its 60 s
            50, 50, 50, 50, 50, //
            150, 150 // lent again at 140
        ]
    );
    assert_eq!(runs[1], runs[0], "stepped back");
    assert_eq!(runs[2], runs[0], "stepped forward");
}

#[test]
fn a_recall_after_the_wall_clock_steps_is_neither_frozen_nor_larger_than_the_figures_allow_regression(
) {
    // Issue 18: after a step back, figures a guest reported after the step
    // looked older than the asks made before it: they did not answer the
    // recall's ask for fresh figures, nor came after its last shrink had
    // landed (the recall froze for an hour), and they looked older than
    // the last grow, whose size was added to what the guest could give (a
    // recall step too large). With the asks moved by the step, the recall
    // goes on as without it; a step back costs it one pass, since the pass
    // that finds it cannot tell which side of it its figures are from.
    let baseline = |period: u32| -> [u64; 6] {
        if period > 0 {
            // 10 asks for fresh figures; then half of 80 - 16 each pass,
            // the margin growing with the figures' age
            [260, 228, 197, 178, 162, 160]
        } else {
            [228, 197, 178, 162, 160, 160]
        }
    };
    for (by, period, at) in [
        (0, 5, 20),
        (0, 0, 10),
        (-3600, 5, 20),
        (-3600, 0, 10),
        (3600, 5, 20),
        (3600, 0, 10),
    ] {
        let mut h = Host::new(vec![defined(dom(1, 160, 320), 160)]);
        h.settings.guest_stats_period = period;
        let uuid = "00000001-0000-4000-8000-000000000000";
        h.ksm(1, 100);
        h.run_at(0, 0).unwrap();
        assert_eq!(h.fake().current(uuid), Some(260 * MIB));
        // KSM unmerges: the loan is recalled; the guest has 80 MiB
        // available whatever its balloon does, and reports every second
        h.ksm(2, 0);
        let mut sizes = Vec::new();
        for b in (10..=60).step_by(10) {
            let s = stepped(b, at, by);
            h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(80, wall(b, s) - 1);
            h.run_at(b, s).unwrap();
            sizes.push(h.fake().current(uuid).unwrap() / MIB);
        }
        let mut want = baseline(period).to_vec();
        if by < 0 {
            // the pass that finds the step back waits
            let k = (at / 10 - 1) as usize;
            want.insert(k, if k == 0 { 260 } else { want[k - 1] });
            want.truncate(6);
        }
        assert_eq!(sizes, want, "stepped by {by} at {at}, period {period}");
    }
}

#[test]
fn the_demand_and_its_hold_run_whichever_way_the_wall_clock_steps_regression() {
    // Issue 18: the demand's rate (and then its decay) was taken over the
    // wall time between passes. Stepped back, the rate was unknown;
    // stepped forward, the reads were spread over the hour. The rate runs
    // by the boot clock, and what a stopped reader holds does not move
    // with time at all.
    for by in [-3600, 3600] {
        let mut h = Host::new(vec![defined(dom(1, 160, 320), 160)]);
        h.settings.policy.split = Split::Demand;
        let uuid = "00000001-0000-4000-8000-000000000000";
        let mut demand = Vec::new();
        for (b, read_mib) in [(0, 0), (10, 100), (20, 300), (80, 300), (140, 300)] {
            let s = stepped(b, 20, by);
            {
                let mut f = h.fake();
                let d = f.domains.get_mut(uuid).unwrap();
                d.live.guest = GuestStats {
                    unused_kib: Some(4 * MIB),
                    ..stats(100, wall(b, s))
                };
                d.live.block_rd_bytes = Some(read_mib << 20);
            }
            let r = h.run_at(b, s).unwrap();
            demand.push(vm(&r, "vm1").demand);
        }
        // 10 MiB/s, 20 MiB/s across the step, then a quarter held
        assert_eq!(
            demand,
            [None, Some(10_000), Some(20_000), Some(5_000), Some(5_000)],
            "stepped by {by}"
        );
    }
}

#[test]
fn a_report_from_before_a_step_back_is_never_fresher_than_now_regression() {
    // Issue 18: a guest's figures keep the stamp its QEMU gave them. After
    // the wall clock stepped back an hour, a report from before the step
    // was stamped in the future: its age was 0, and it counted as fresh
    // for an hour, whatever the guest did since.
    let h = Host::new(vec![defined(dom(1, 160, 320), 160)]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 100);
    // the guest reports once, at 8, and never again
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(80, T0 + 8);
    let r = h.run_at(10, 0).unwrap();
    assert_eq!(vm(&r, "vm1").figures_age_secs, Some(2));
    // the pass that finds the step knows how old the report is
    let r = h.run_at(20, -3600).unwrap();
    assert_eq!(r.clock_step_secs, Some(-3600));
    let v = vm(&r, "vm1");
    assert_eq!((v.guest_stats_fresh, v.figures_age_secs), (true, Some(12)));
    // a later pass cannot tell: stale, never of age 0
    let r = h.run_at(30, -3600).unwrap();
    let v = vm(&r, "vm1");
    assert_eq!((v.guest_stats_fresh, v.figures_age_secs), (false, None));
}

#[test]
fn a_vm_not_managed_yet_reports_its_figures_stale_after_a_step_back_regression() {
    // The report's `guest_stats_fresh` of a domain the policy did not see
    // (booting, adopting) took the raw stamp: after the wall clock stepped
    // back, a report from before the step read as of age 0, fresh, while a
    // managed VM's same figures were stale.
    let h = Host::new(vec![dom(1, 256, 256)]);
    let uuid = "00000001-0000-4000-8000-000000000000";
    h.ksm(1, 100);
    h.fake().domains.get_mut(uuid).unwrap().live.guest = stats(80, T0 + 8);
    let r = h.run_at(10, 0).unwrap();
    let v = vm(&r, "vm1");
    assert!(!v.managed);
    assert!(v.guest_stats_fresh);
    // the pass that finds the step dates the report exactly: still fresh
    let r = h.run_at(20, -3600).unwrap();
    assert!(vm(&r, "vm1").guest_stats_fresh);
    // a later pass cannot date it: stale, as a managed VM's
    let r = h.run_at(30, -3600).unwrap();
    let v = vm(&r, "vm1");
    assert!(!v.managed);
    assert!(!v.guest_stats_fresh);
}

#[test]
fn a_hook_record_spooled_before_a_step_is_dated_by_the_boot_clock() {
    // A record keeps the wall clock its hook read; folded after the clock
    // stepped back an hour, a VM's record was an hour "in the future" (its
    // 120 s starting grace lasted an hour). Its name carries the boot
    // clock: it is dated by that.
    let d = dom(1, 160, 320);
    let h = Host::new(vec![d.clone()]);
    let s = d.live.sizes.unwrap();
    let xml = format!(
        "<domain><name>{}</name><uuid>{}</uuid><memory>{}</memory><currentMemory>{}</currentMemory></domain>",
        d.live.name, d.live.uuid, s.maximum_kib, 160 * MIB
    );
    h.run_at(0, 0).unwrap();
    // the hook runs at +5, before the step
    let stamp = crate::state::spool::Stamp {
        boot_id: BOOT.into(),
        boottime_ns: 1005 * 1_000_000_000,
    };
    let record = crate::state::spool::HookRecord {
        v: crate::state::spool::SPOOL_VERSION,
        domain: d.live.name.clone(),
        operation: "prepare".into(),
        sub_op: "begin".into(),
        at: wall(5, 0),
        xml: Some(xml),
        xml_problem: None,
    };
    crate::state::spool::drop_record_stamped(&h.paths.state, &record, &stamp).unwrap();
    let r = h.run_at(10, -3600).unwrap();
    assert_eq!(r.hook_records, 1);
    assert_eq!(h.state().vms[&d.live.uuid].recorded_at, wall(5, -3600));
    // a record of another boot keeps its own time
    let other = crate::state::spool::Stamp {
        boot_id: "fedcba9876543210fedcba9876543210".into(),
        ..stamp
    };
    crate::state::spool::drop_record_stamped(
        &h.paths.state,
        &crate::state::spool::HookRecord {
            operation: "stopped".into(),
            sub_op: "end".into(),
            xml: None,
            ..record.clone()
        },
        &other,
    )
    .unwrap();
    let path = h.paths.state.parent().unwrap().join("spool");
    let names: Vec<_> = fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names.len(), 1);
    let now = crate::state::spool::Stamp {
        boot_id: BOOT.into(),
        boottime_ns: 1020 * 1_000_000_000,
    };
    assert_eq!(crate::state::spool::dated(&names[0], &now, 7), None);
}

#[test]
fn each_pass_measures_ksmd_s_cpu_against_the_last_and_status_says_it() {
    // Issue 21: ksmd's CPU since the last pass (its /proc/<pid>/stat,
    // kept in the state), the pages it scanned, the full scans, and the
    // savings and loans per ksmd CPU-second.
    let doms: Vec<_> = (1..=2).map(|n| defined(dom(n, 160, 320), 160)).collect();
    let mut h = Host::new(doms);
    h.settings.hold_window_secs = 0;
    let ksmd = |h: &Host, ticks: u64, scanned: u64, full: u64| {
        let dir = h.paths.procs.proc_dir.join("39");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("stat"),
            format!("39 (ksmd) S 2 0 0 0 -1 2097216 36 0 0 0 0 {ticks} 0 0 25 5 1 0 28 0 0"),
        )
        .unwrap();
        let k = crate::ksm::KsmCounters {
            pages_scanned: Some(scanned),
            full_scans: full,
            ..crate::testing::ksm_saving(100 * MIB)
        };
        crate::testing::write_ksm(&h.paths.ksm_dir, &k).unwrap();
    };
    ksmd(&h, 10_000, 1_000_000, 7);
    let r = h.run(T0).unwrap();
    let c = &r.ksm_cost;
    assert_eq!((c.ksmd_cpu_secs, c.interval_secs), (Some(100.0), None));
    assert_eq!(c.savings_kib, 100 * MIB);
    assert_eq!(c.lent_kib, 100 * MIB, "the first pass lends it all");
    assert_eq!(h.state().ksm_cost.map(|m| m.cpu_ticks), Some(10_000));
    // 10 s later: 100 ticks (1 s of CPU: 10 %), 300 000 pages, 2 full scans
    ksmd(&h, 10_100, 1_300_000, 9);
    let r = h.run(T0 + 10).unwrap();
    let c = &r.ksm_cost;
    assert_eq!(c.interval_secs, Some(10));
    assert_eq!(c.ksmd_cpu_percent, Some(10.0));
    assert_eq!(c.pages_scanned_per_sec, Some(30_000.0));
    assert_eq!(c.full_scans, Some(2));
    assert_eq!(c.savings_mib_per_cpu_sec, Some(1000.0));
    let line = crate::render::status(&r);
    assert!(
        line.contains("KSM cost: ksmd 10.0% of a core over the last 10 s, 30000 pages/s scanned, 2 full scans; lent 100.0 MiB of the savings 100.0 MiB; per ksmd CPU-second each second: 1000 MiB saved, 1000 MiB lent"),
        "{line}"
    );
    // ksmd gone (a kernel without KSM): the report says why, the mark goes
    fs::remove_dir_all(h.paths.procs.proc_dir.join("39")).unwrap();
    let r = h.run(T0 + 20).unwrap();
    assert!(
        r.ksm_cost
            .problem
            .as_deref()
            .unwrap_or("")
            .contains("no ksmd"),
        "{:?}",
        r.ksm_cost
    );
    assert!(crate::render::status(&r).contains("KSM cost: unknown (no ksmd"));
    assert_eq!(h.state().ksm_cost, None);
}

/// One VM under `--ksm manage`, KSM's knobs (run, pages_to_scan,
/// sleep_millisecs) as the operator had them; no pass run yet.
fn managed_host((run, pages, sleep): (u64, u64, u64)) -> Host {
    let mut h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    h.settings.governor.mode = crate::governor::Mode::Manage;
    knobs(&h, run, pages, sleep);
    h
}

/// KSM's knobs in the fake sysfs, as the kernel shows them.
fn knobs(h: &Host, run: u64, pages: u64, sleep_ms: u64) {
    for (f, v) in [
        ("run", run),
        ("pages_to_scan", pages),
        ("sleep_millisecs", sleep_ms),
    ] {
        fs::write(h.paths.ksm_dir.join(f), format!("{v}\n")).unwrap();
    }
    fs::write(h.paths.ksm_dir.join("advisor_mode"), "[none] scan-time\n").unwrap();
}

fn knob(h: &Host, name: &str) -> u64 {
    fs::read_to_string(h.paths.ksm_dir.join(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Every file of the fake KSM directory, bytes.
fn ksm_files(h: &Host) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(&h.paths.ksm_dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn observe_never_writes_a_ksm_file() {
    // Issue 21: --ksm observe (the default) touches nothing in
    // /sys/kernel/mm/ksm, whatever the VMs and KSM's state.
    let h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    assert_eq!(h.settings.governor.mode, crate::governor::Mode::Observe);
    for (t, run) in [(0, 0), (10, 1), (20, 2)] {
        knobs(&h, run, 5000, 20);
        let before = ksm_files(&h);
        let r = h.run(T0 + t).unwrap();
        assert_eq!(ksm_files(&h), before, "run={run}");
        assert_eq!(r.ksm_governor.action, crate::governor::Action::Observe);
        assert!(r.ksm_governor.writes.is_empty());
    }
    assert_eq!(h.state().ksm_governor, None);
    assert!(crate::render::status(&h.run(T0 + 30).unwrap())
        .contains("ksm: observe (run 2, pages_to_scan 5000, sleep_millisecs 20)"));
}

#[test]
fn manage_turns_ksm_on_with_headroom_and_off_without_after_the_balloons() {
    let h = managed_host((0, 100, 20));
    let r = h.run(T0).unwrap();
    assert_eq!(knob(&h, "run"), 1, "{:?}", r.ksm_governor);
    assert_eq!(r.ksm_governor.action, crate::governor::Action::Write);
    // the balloons were planned from the stale counters (run was 0): held
    assert_eq!(vm(&r, "vm1").target_kib, 160 * MIB);
    let g = h.state().ksm_governor.unwrap();
    assert_eq!((g.operator.run, g.left.run), (0, 1));
    // the VM goes: no managed VM with headroom, KSM stopped, never unmerged
    h.fake().domains.clear();
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(knob(&h, "run"), 0, "{:?}", r.ksm_governor);
    assert!(r
        .ksm_governor
        .reason
        .contains("no managed VM with headroom"));
    assert_eq!(knob(&h, "pages_to_scan"), 100);
    // nothing changes: nothing written
    let before = ksm_files(&h);
    let r = h.run(T0 + 20).unwrap();
    assert_eq!(r.ksm_governor.action, crate::governor::Action::Hold);
    assert_eq!(ksm_files(&h), before);
}

#[test]
fn another_writer_makes_manage_step_back_and_write_nothing_after() {
    let mut h = managed_host((1, 500, 20));
    h.run(T0).unwrap();
    // ksmtuned, or an operator: echo 300 > pages_to_scan
    fs::write(h.paths.ksm_dir.join("pages_to_scan"), "300\n").unwrap();
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(r.ksm_governor.action, crate::governor::Action::StepBack);
    let s = r.ksm_governor.stepped_back.clone().unwrap();
    assert_eq!(
        (s.knob.as_str(), s.wrote, s.found, s.since),
        ("pages_to_scan", 500, 300, T0 + 10)
    );
    let line = crate::render::status(&r);
    assert!(
        line.contains("ksm: manage, stepped back since 2027-01-15 08:00:10: pages_to_scan is 300, ksm-balloon left it at 500"),
        "{line}"
    );
    // nothing written after it, whatever happens: the VM goes (run would be 0)
    h.fake().domains.clear();
    let before = ksm_files(&h);
    for t in [20, 30] {
        let r = h.run(T0 + t).unwrap();
        assert_eq!(r.ksm_governor.action, crate::governor::Action::SteppedBack);
        assert_eq!(
            r.ksm_governor.stepped_back.as_ref().unwrap().since,
            T0 + 10,
            "said once, kept"
        );
    }
    assert_eq!(ksm_files(&h), before);
    // observe then forgets it and touches nothing; manage again takes over anew
    h.settings.governor.mode = crate::governor::Mode::Observe;
    h.run(T0 + 40).unwrap();
    assert_eq!(ksm_files(&h), before);
    assert_eq!(h.state().ksm_governor, None);
    h.settings.governor.mode = crate::governor::Mode::Manage;
    h.run(T0 + 50).unwrap();
    assert_eq!(h.state().ksm_governor.unwrap().operator.pages_to_scan, 300);
}

#[test]
fn back_to_observe_restores_what_the_operator_had() {
    // the operator's rate, outside the governor's range, and KSM stopped
    let mut h = managed_host((0, 5000, 50));
    h.run(T0).unwrap();
    h.run(T0 + 10).unwrap();
    assert_eq!((knob(&h, "run"), knob(&h, "pages_to_scan")), (1, 1250));
    h.settings.governor.mode = crate::governor::Mode::Observe;
    let r = h.run(T0 + 20).unwrap();
    assert_eq!(r.ksm_governor.action, crate::governor::Action::Restore);
    assert_eq!(
        (
            knob(&h, "run"),
            knob(&h, "pages_to_scan"),
            knob(&h, "sleep_millisecs")
        ),
        (0, 5000, 50)
    );
    assert_eq!(h.state().ksm_governor, None);
    // and observe after it touches nothing
    let before = ksm_files(&h);
    h.run(T0 + 30).unwrap();
    assert_eq!(ksm_files(&h), before);
}

#[test]
fn a_restore_whose_write_fails_keeps_the_memory_for_the_next_pass_regression() {
    // Back to observe, the restore's write of one knob failed, and the pass
    // dropped the governor's memory all the same: the operator's value of
    // that knob was lost, and no later pass or ksm-restore could give it
    // back.
    let mut h = managed_host((0, 5000, 50));
    h.settings.hold_window_secs = 0;
    h.ksm(0, 60);
    h.run(T0).unwrap();
    h.run(T0 + 10).unwrap();
    assert_eq!((knob(&h, "run"), knob(&h, "pages_to_scan")), (1, 1250));
    h.settings.governor.mode = crate::governor::Mode::Observe;
    // more savings: the observe pass resizes, and pages_to_scan turns into
    // a directory right before, after the pass read it
    h.ksm(1, 80);
    let knob_path = h.paths.ksm_dir.join("pages_to_scan");
    let mut open = knob_breaks_before_resize(&h, "pages_to_scan");
    let r = h.run_with(&mut open, T0 + 20).unwrap();
    assert_eq!(r.resized, 1);
    assert_eq!(r.ksm_governor.action, crate::governor::Action::Restore);
    let failed: Vec<_> = r
        .ksm_governor
        .writes
        .iter()
        .filter(|w| w.error.is_some())
        .map(|w| w.knob)
        .collect();
    assert_eq!(failed, ["pages_to_scan"]);
    assert_eq!(knob(&h, "run"), 0);
    // kept: the operator's knobs, and what ksm-balloon left each at
    let m = h.state().ksm_governor.expect("the memory is kept");
    assert_eq!((m.operator.run, m.operator.pages_to_scan), (0, 5000));
    assert_eq!((m.left.run, m.left.pages_to_scan), (0, 1250));
    // the knob is writable again: the next pass finishes the restore
    fs::remove_dir(&knob_path).unwrap();
    fs::write(&knob_path, "1250\n").unwrap();
    let r = h.run(T0 + 30).unwrap();
    assert_eq!(r.ksm_governor.action, crate::governor::Action::Restore);
    assert_eq!(knob_values(&h), (0, 5000, 50));
    assert_eq!(h.state().ksm_governor, None);
}

fn ksm_restore(h: &Host, now: u64) -> anyhow::Result<String> {
    crate::admin::ksm_restore(&h.paths, Duration::from_secs(5), now)
}

#[test]
fn ksm_restore_after_a_reboot_leaves_the_boots_knobs_and_says_so_regression() {
    // The uninstall after a reboot: the knobs are the boot's (the kernel's
    // defaults here), not another writer's; they stay, and the line says why.
    let h = managed_host((0, 5000, 50));
    h.run_at(0, 0).unwrap();
    h.run_at(10, 0).unwrap();
    assert_eq!(
        h.state().ksm_governor.unwrap().boot_id.as_deref(),
        Some(BOOT)
    );
    knobs(&h, 0, 100, 20);
    let line = crate::admin::ksm_restore(
        &h.paths,
        Duration::from_secs(5),
        Now {
            wall: T0 + 100,
            boot: Some(crate::state::spool::Stamp {
                boot_id: "fedcba9876543210fedcba9876543210".into(),
                boottime_ns: 30_000_000_000,
            }),
        },
    )
    .unwrap();
    assert!(line.contains("the host rebooted"), "{line}");
    assert_eq!(knob_values(&h), (0, 100, 20));
    assert_eq!(h.state().ksm_governor, None);
}

fn knob_values(h: &Host) -> (u64, u64, u64) {
    (
        knob(h, "run"),
        knob(h, "pages_to_scan"),
        knob(h, "sleep_millisecs"),
    )
}

#[test]
fn ksm_restore_after_manage_gives_the_operator_its_knobs_back_and_forgets_them() {
    // Issue 21: uninstalling (the packages' scriptlets run ksm-restore)
    // leaves KSM as the operator had it, not as the last manage pass did.
    let h = managed_host((0, 5000, 50));
    h.run(T0).unwrap();
    h.run(T0 + 10).unwrap();
    assert_eq!(knob_values(&h), (1, 1250, 50));
    let line = ksm_restore(&h, T0 + 15).unwrap();
    assert_eq!(knob_values(&h), (0, 5000, 50), "{line}");
    assert!(
        line.contains("restored to the operator's (run 0, pages_to_scan 5000, sleep_millisecs 50)")
            && line.contains("run 1 -> 0, pages_to_scan 1250 -> 5000"),
        "{line}"
    );
    assert_eq!(h.state().ksm_governor, None);
    // once given back, there is nothing more to restore
    let before = ksm_files(&h);
    let line = ksm_restore(&h, T0 + 16).unwrap();
    assert!(line.contains("nothing to restore"), "{line}");
    assert_eq!(ksm_files(&h), before);
}

#[test]
fn ksm_restore_with_nothing_to_restore_writes_nothing_and_creates_nothing() {
    let h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    knobs(&h, 1, 5000, 20);
    let before = ksm_files(&h);
    // no pass ever ran: no state directory, and none made by uninstalling
    let line = ksm_restore(&h, T0).unwrap();
    assert!(line.contains("nothing to restore"), "{line}");
    assert!(!h.paths.state.parent().unwrap().exists());
    // observe passes only: a state without the governor's memory
    h.run(T0 + 10).unwrap();
    let line = ksm_restore(&h, T0 + 20).unwrap();
    assert!(line.contains("nothing to restore"), "{line}");
    assert_eq!(ksm_files(&h), before);
}

#[test]
fn ksm_restore_after_a_step_back_leaves_the_other_writers_knobs_and_drops_the_memory() {
    // The choice (docs/DESIGN.md, "The KSM governor"): manage stepped back
    // because another writer (ksmtuned, an operator) has KSM; the knobs
    // are that writer's now, and writing the operator's old ones over
    // them would fight it. Left as they are; only the memory goes.
    let h = managed_host((0, 500, 20));
    h.run(T0).unwrap();
    assert_eq!(knob(&h, "run"), 1);
    fs::write(h.paths.ksm_dir.join("pages_to_scan"), "300\n").unwrap();
    let r = h.run(T0 + 10).unwrap();
    assert_eq!(r.ksm_governor.action, crate::governor::Action::StepBack);
    let before = ksm_files(&h);
    let line = ksm_restore(&h, T0 + 20).unwrap();
    assert!(line.contains("stepped back for another writer"), "{line}");
    assert_eq!(ksm_files(&h), before, "the other writer's knobs stay");
    assert_eq!(knob_values(&h), (1, 300, 20));
    assert_eq!(h.state().ksm_governor, None);
}

#[test]
fn ksm_restore_leaves_a_knob_another_writer_changed_since_the_last_pass() {
    // No pass saw the other writer yet: ksm-restore sees it itself, by
    // the same rule, and leaves KSM to it.
    let h = managed_host((0, 500, 20));
    h.run(T0).unwrap();
    fs::write(h.paths.ksm_dir.join("sleep_millisecs"), "200\n").unwrap();
    let before = ksm_files(&h);
    let line = ksm_restore(&h, T0 + 5).unwrap();
    assert!(
        line.contains("sleep_millisecs is 200, not the 20 ksm-balloon left"),
        "{line}"
    );
    assert_eq!(ksm_files(&h), before);
    assert_eq!(h.state().ksm_governor, None);
}

#[test]
fn ksm_restore_with_unreadable_knobs_fails_naming_the_file_and_keeps_the_memory() {
    let h = managed_host((0, 500, 20));
    h.run(T0).unwrap();
    let gone = h.paths.ksm_dir.join("pages_to_scan");
    fs::remove_file(&gone).unwrap();
    let err = format!("{:#}", ksm_restore(&h, T0 + 5).unwrap_err());
    assert!(
        err.contains(&format!("cannot read {}", gone.display()))
            && err.contains("run 0, pages_to_scan 500, sleep_millisecs 20"),
        "{err}"
    );
    assert_eq!(knob(&h, "run"), 1, "nothing written");
    // kept for another try, which gives them back once they can be read
    assert_eq!(h.state().ksm_governor.unwrap().operator.run, 0);
    fs::write(&gone, "500\n").unwrap();
    ksm_restore(&h, T0 + 6).unwrap();
    assert_eq!(knob_values(&h), (0, 500, 20));
    assert_eq!(h.state().ksm_governor, None);
}

#[test]
fn ksm_restore_waits_for_the_pass_lock_and_names_it_on_a_timeout() {
    let h = managed_host((0, 500, 20));
    h.run(T0).unwrap();
    let store = h.paths.store();
    let held = store.lock(Duration::from_secs(5)).unwrap();
    let err = crate::admin::ksm_restore(&h.paths, Duration::from_millis(100), T0 + 5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("waiting for the lock") && err.contains("state.json.lock"),
        "{err}"
    );
    assert_eq!(knob(&h, "run"), 1, "nothing written without the lock");
    drop(held);
    ksm_restore(&h, T0 + 6).unwrap();
    assert_eq!(knob(&h, "run"), 0);
}

/// An opener of `h`'s fake whose resizes first put a directory where
/// KSM's `knob` was: the pass has read the knob, and writing it after the
/// balloons fails.
fn knob_breaks_before_resize(
    h: &Host,
    knob: &str,
) -> impl FnMut() -> anyhow::Result<Box<dyn Hypervisor>> {
    let hv = h.hv.clone();
    let knob_path = h.paths.ksm_dir.join(knob);
    move || {
        let knob_path = knob_path.clone();
        let breaks = Tapped {
            hv: hv.clone(),
            after_stats: Box::new(|_: &Shared| {}),
            before_resize: Box::new(move || {
                let _ = fs::remove_file(&knob_path);
                fs::create_dir_all(&knob_path).unwrap();
            }),
        };
        Ok(Box::new(breaks) as Box<dyn Hypervisor>)
    }
}

#[test]
fn a_knob_that_cannot_be_written_is_reported_and_never_stops_the_balloons() {
    let mut h = Host::new(vec![defined(dom(1, 160, 256), 160)]);
    h.settings.governor.mode = crate::governor::Mode::Manage;
    h.settings.hold_window_secs = 0;
    h.ksm(1, 60);
    // an operator's rate above the range: the governor brings it to 1250
    knobs(&h, 1, 5000, 20);
    // the resize puts a directory where pages_to_scan was: the pass read
    // it, and its write after the balloons fails
    let mut open = knob_breaks_before_resize(&h, "pages_to_scan");
    let r = h.run_with(&mut open, T0).unwrap();
    assert_eq!(r.resized, 1, "the balloon first");
    assert_eq!(vm(&r, "vm1").target_kib, 220 * MIB);
    let w = &r.ksm_governor.writes;
    assert_eq!((w.len(), w[0].knob, w[0].to), (1, "pages_to_scan", 1250));
    let err = w[0].error.as_deref().unwrap();
    assert!(
        err.contains("cannot write 1250 to") && err.contains("pages_to_scan"),
        "{err}"
    );
    assert!(crate::render::status(&r).contains("pages_to_scan 5000 -> 1250 FAILED: cannot write"));
    // what it left is what it found: its own failed write is no other writer
    assert_eq!(h.state().ksm_governor.unwrap().left.pages_to_scan, 5000);
}
