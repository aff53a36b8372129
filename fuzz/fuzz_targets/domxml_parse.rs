//! Fuzz target: the hook's domain XML parser (`domxml::parse`) and the
//! libvirt size units it uses. Any text: no panic, no hang; what it accepts
//! has a name, a lower-case uuid and sizes in KiB.
#![no_main]

use ksm_balloon::domxml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = domxml::parse(&text) {
        assert!(!d.name.is_empty());
        assert!(!d.uuid.is_empty());
        assert_eq!(d.uuid, d.uuid.to_ascii_lowercase());
    }
    // the same bytes as "value\nunit" for the unit converter
    let mut parts = text.splitn(2, '\n');
    let value = parts.next().unwrap_or("");
    let _ = domxml::scaled_to_kib(value, parts.next());
});
