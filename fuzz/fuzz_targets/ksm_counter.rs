//! Fuzz target: one KSM sysfs counter file (`ksm::parse_counter`). No panic;
//! a value it accepts prints back to text it reads the same.
#![no_main]

use ksm_balloon::ksm::parse_counter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(v) = parse_counter(&text) {
        assert_eq!(parse_counter(&format!("{v}\n")), Some(v));
    }
});
