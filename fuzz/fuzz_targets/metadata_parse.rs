//! Fuzz target: the per-VM metadata parser (`metadata::parse`,
//! `metadata::parse_element`) and the bounds check. Any text: no panic, no
//! hang; the weight stays within its range and what `resolve` returns lies
//! within the bounds, whatever the metadata said.
#![no_main]

use ksm_balloon::metadata::{self, Bounds, MAX_WEIGHT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Bounds from the first bytes, so they vary too.
    let n = |i: usize| u64::from(*data.get(i).unwrap_or(&0)) << 12;
    let bounds = Bounds {
        current_memory_kib: n(0),
        memory_kib: n(0) + n(1),
    };
    for parsed in [metadata::parse(&text), metadata::parse_element(&text)] {
        let s = parsed.settings;
        assert!(s.weight <= MAX_WEIGHT);
        let (e, _) = s.resolve(bounds);
        assert!(bounds.current_memory_kib <= e.floor_kib);
        assert!(e.floor_kib <= e.ceiling_kib);
        assert!(e.ceiling_kib <= bounds.memory_kib);
        assert_eq!((e.manage, e.weight), (s.manage, s.weight));
    }
});
