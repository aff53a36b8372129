//! Fuzz target: the state file parser (`State::parse`). Any text: no panic;
//! what it accepts is valid (floor > 0, floor <= ceiling, keyed by uuid)
//! and survives a write and re-read unchanged.
#![no_main]

use ksm_balloon::state::State;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(state) = State::parse(text) {
        for (uuid, vm) in &state.vms {
            assert_eq!(uuid, &vm.uuid);
            assert!(vm.floor_kib > 0 && vm.floor_kib <= vm.ceiling_kib);
        }
        let again = State::parse(&state.to_json()).expect("own output parses");
        assert_eq!(again, state);
    }
});
