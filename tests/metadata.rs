//! The metadata parser on libvirt's own output: tests/fixtures/metadata/
//! holds what libvirt 9.0 wrote after each `virsh metadata` example of
//! docs/METADATA.md (captured, and checked to still match, by
//! tests/metadata/virsh-examples.sh on a real libvirtd).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use ksm_balloon::metadata::{self, Bounds, Effective, VmSettings};

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metadata")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const MIB: u64 = 1024;
const BOUNDS: Bounds = Bounds {
    current_memory_kib: 160 * MIB,
    memory_kib: 256 * MIB,
};

fn settings(name: &str) -> VmSettings {
    let p = metadata::parse(&fixture(name));
    assert_eq!(p.problems, vec![], "{name}");
    p.settings
}

#[test]
fn example_1_weight_floor_and_ceiling_live_and_config() {
    let want = VmSettings {
        weight: 2,
        floor_kib: Some(192 * MIB),
        ceiling_kib: Some(240 * MIB),
        ..VmSettings::default()
    };
    for f in ["01-live.xml", "01-config.xml"] {
        assert_eq!(settings(f), want, "{f}");
        let (eff, problems) = settings(f).resolve(BOUNDS);
        assert_eq!(problems, vec![]);
        assert_eq!(
            eff,
            Effective {
                manage: true,
                weight: 2,
                floor_kib: 192 * MIB,
                ceiling_kib: 240 * MIB
            }
        );
    }
}

#[test]
fn example_2_what_virsh_metadata_shows_reads_the_same() {
    // virsh prints the element with its namespace taken off.
    let shown = fixture("02-shown.txt");
    assert!(shown.starts_with("<vm "), "{shown}");
    let p = metadata::parse_element(&shown);
    assert_eq!(p.problems, vec![]);
    assert!(p.present);
    assert_eq!(p.settings, settings("02-live.xml"));
    // Read as a document on its own, it is not ours (no namespace).
    assert!(!metadata::parse(&shown).present);
}

#[test]
fn example_3_weight_zero() {
    for f in ["03-live.xml", "03-config.xml"] {
        assert_eq!(
            settings(f),
            VmSettings {
                weight: 0,
                ..VmSettings::default()
            },
            "{f}"
        );
    }
}

#[test]
fn example_4_manage_no_on_the_live_vm_only() {
    assert!(!settings("04-live.xml").manage);
    // --set replaced the whole element: the weight went back to 1.
    assert_eq!(settings("04-live.xml").weight, 1);
    // The persistent definition kept example 3's element.
    assert_eq!(settings("04-config.xml").weight, 0);
    assert!(settings("04-config.xml").manage);
}

#[test]
fn example_5_removed() {
    for f in ["05-live.xml", "05-config.xml"] {
        let p = metadata::parse(&fixture(f));
        assert!(!p.present, "{f}");
        assert_eq!(p.settings, VmSettings::default());
    }
}

#[test]
fn hook_xml_without_metadata_gives_the_defaults_and_no_problem() {
    // The XML a real libvirtd gave the hook (tests/fixtures/hook-xml): no
    // <metadata> at all, so nothing to report.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hook-xml");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let p = metadata::parse(&text);
        assert!(!p.present);
        assert_eq!(p.problems, vec![]);
        assert_eq!(p.settings, VmSettings::default());
        n += 1;
    }
    assert!(n >= 5);
}
