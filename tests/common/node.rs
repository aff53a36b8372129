//! The one generator of libvirt test-driver node XML (`test:///path/node.xml`):
//! a host with the domains a test or benchmark wants running. The Rust tests
//! use it through `tests/common`; scripts (bench/pass_cost.py) through the
//! `testdriver-node` example, which includes this file.
//!
//! Only `std` and serde: the example and every test crate compile it alike.

use serde::Deserialize;

/// One domain: listed by the test driver (running) or only told to the hook.
#[derive(Clone, Debug, Deserialize)]
pub struct Dom {
    pub name: String,
    pub uuid: String,
    pub memory_kib: u64,
    pub current_kib: u64,
    /// With a virtio balloon (the test driver's default); `false` writes
    /// `<memballoon model='none'/>`.
    #[serde(default = "yes")]
    pub balloon: bool,
}

fn yes() -> bool {
    true
}

impl Dom {
    /// A domain with a 160 MiB floor and a 256 MiB ceiling, the uuid built from `n`.
    pub fn numbered(prefix: &str, n: u32) -> Dom {
        Dom {
            name: format!("{prefix}{n:03}"),
            uuid: format!("{:08x}-0000-4000-8000-{:012x}", n, n),
            memory_kib: 256 * 1024,
            current_kib: 160 * 1024,
            balloon: true,
        }
    }

    /// The `<domain>` element (test-driver flavour, also fine for the hook).
    pub fn xml(&self) -> String {
        format!(
            "<domain type='test'>\n  <name>{}</name>\n  <uuid>{}</uuid>\n  <memory unit='KiB'>{}</memory>\n  <currentMemory unit='KiB'>{}</currentMemory>\n  <vcpu>1</vcpu><os><type>hvm</type></os>\n{}</domain>\n",
            xml_escape(&self.name),
            xml_escape(&self.uuid),
            self.memory_kib,
            self.current_kib,
            if self.balloon {
                ""
            } else {
                "  <devices><memballoon model='none'/></devices>\n"
            }
        )
    }
}

/// Escapes text for an XML element or attribute.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A test-driver node document with `doms` running.
pub fn node_xml(doms: &[Dom]) -> String {
    let mut s = String::from("<node>\n  <cpu><mhz>2000</mhz><model>i686</model><active>2</active><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads></cpu>\n  <memory>25165824</memory>\n");
    for d in doms {
        s.push_str(&d.xml());
    }
    s.push_str("</node>\n");
    s
}
