//! Fuzz target: `/proc/meminfo` text (`meminfo::parse`). No panic; what it
//! accepts came from a MemTotal and a MemAvailable line.
#![no_main]

use ksm_balloon::meminfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if meminfo::parse(&text).is_ok() {
        assert!(text.contains("MemTotal") && text.contains("MemAvailable"));
    }
});
