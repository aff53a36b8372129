//! Lend only what holds (issue 13): the synthetic savings trace of
//! `examples/replay` through the pure policy, with and without the holding
//! window. The window must cut the resizes (peaks lent and recalled a pass
//! later) while lending nearly as much, and the host guard must hold in
//! both, with room to spare and with a reserve that binds.
#![allow(clippy::unwrap_used)]

#[path = "../examples/replay/sim.rs"]
mod sim;

use ksm_balloon::policy::Policy;

fn guests() -> Vec<(u64, u64)> {
    vec![(160 << 10, 256 << 10); 3]
}

#[test]
fn the_window_cuts_resizes_and_lends_nearly_as_much() {
    let trace = sim::synthetic(1, 3600, 10);
    let policy = Policy::default();
    let without = sim::replay(&trace, &guests(), &policy, 0);
    let with = sim::replay(&trace, &guests(), &policy, 60);
    assert!(
        with.resizes * 4 <= without.resizes,
        "window 60 s: {with:?}; none: {without:?}"
    );
    assert!(
        with.lent_kib_seconds * 10 >= without.lent_kib_seconds * 9,
        "window 60 s: {with:?}; none: {without:?}"
    );
    assert_eq!((with.guard_breaches, without.guard_breaches), (0, 0));
}

#[test]
fn the_guard_holds_with_a_binding_reserve_either_way() {
    let trace = sim::synthetic(7, 3600, 10);
    // 2 GiB available, 1950 MiB reserved: at most about 98 MiB to lend
    let policy = Policy {
        reserve_kib: 1950 << 10,
        ..Policy::default()
    };
    for window in [0, 60] {
        let o = sim::replay(&trace, &guests(), &policy, window);
        assert_eq!(o.guard_breaches, 0, "window {window}: {o:?}");
        assert!(o.min_headroom_kib >= 0, "window {window}: {o:?}");
        assert!(o.max_lent_kib <= 98 << 10, "window {window}: {o:?}");
    }
}

#[test]
fn traces_parse_and_bad_lines_are_named() {
    let t = sim::parse_csv("t,savings_kib,available_kib\n# a comment\n0,100,2000\n10,120,2000\n")
        .unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].savings_kib, 120);
    assert!(sim::parse_csv("0,1\n").unwrap_err().contains("line 1"));
    assert!(sim::parse_csv("0,x,1\n").unwrap_err().contains("\"x\""));
}
