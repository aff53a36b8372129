//! Passes against libvirt's test driver on one connection (its state lives
//! only that long): a steady state makes no resize call, reads stay one bulk
//! call whatever the number of domains, and a shrink of the savings shrinks
//! the targets in the next pass.

#![allow(clippy::unwrap_used)] // a test helper that fails should panic

use std::fs;
use std::path::Path;

use clap::Parser;
use ksm_balloon::cli::{Cli, Config};
use ksm_balloon::hypervisor::{Hypervisor, Libvirt};
use ksm_balloon::pass::{self, Report};
use virt::connect::Connect;

mod common;
use common::{node_xml, Dom};

struct Rig {
    dir: tempfile::TempDir,
    uri: String,
    conn: Connect,
}

impl Rig {
    fn new(n: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root");
        for sub in ["sys/kernel/mm/ksm", "proc"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
            for f in fs::read_dir(fixtures.join(sub)).unwrap() {
                let f = f.unwrap();
                fs::copy(f.path(), dir.path().join(sub).join(f.file_name())).unwrap();
            }
        }
        let node = dir.path().join("node.xml");
        let doms: Vec<Dom> = (0..n as u32).map(|i| Dom::numbered("vm-", i)).collect();
        fs::write(&node, node_xml(&doms)).unwrap();
        let uri = format!("test://{}", node.display());
        ksm_balloon::hypervisor::quiet_libvirt();
        let conn = Connect::open(Some(&uri)).unwrap();
        Rig { dir, uri, conn }
    }

    fn profit_mib(&self, mib: u64) {
        let p = self.dir.path().join("sys/kernel/mm/ksm/general_profit");
        fs::write(p, format!("{}\n", mib << 20)).unwrap();
    }

    fn config(&self) -> Config {
        let root = self.dir.path().display().to_string();
        let cli = Cli::try_parse_from([
            "ksm-balloon",
            "--root",
            &root,
            "--connect",
            &self.uri,
            // the test driver reports no guest statistics; these tests are
            // about the split, not the loan rule
            "--blind-step",
            "unlimited",
            "run",
        ])
        .unwrap();
        cli.settings.validate().unwrap()
    }

    fn pass(&self, now: u64) -> Report {
        let mut open = || -> anyhow::Result<Box<dyn Hypervisor>> {
            Ok(Box::new(Libvirt::from_connect(
                &self.uri,
                self.conn.clone(),
            )))
        };
        let cfg = self.config();
        pass::run(
            &cfg.paths,
            &cfg.pass,
            cfg.settings.lock_timeout,
            &mut open,
            now,
        )
        .unwrap()
    }

    fn sizes(&self) -> Vec<u64> {
        let mut v: Vec<(String, u64)> = self
            .conn
            .list_all_domains(0)
            .unwrap()
            .iter()
            .map(|d| (d.name().unwrap(), d.info().unwrap().memory))
            .collect();
        v.sort();
        v.into_iter().map(|(_, m)| m).collect()
    }
}

#[test]
fn steady_savings_make_no_resize_calls() {
    let rig = Rig::new(3);
    rig.profit_mib(90);
    let first = rig.pass(1_800_000_000);
    assert_eq!(first.calls.set_memory, 3);
    assert_eq!(rig.sizes(), [194560; 3]);
    for i in 1..=5 {
        let again = rig.pass(1_800_000_000 + 10 * i);
        assert_eq!(
            again.calls.set_memory, 0,
            "pass {i} resized at steady savings"
        );
        assert_eq!(again.calls.bulk_stats, 1);
    }
    // a drift inside the deadband (4 MiB over 3 VMs is 1.3 MiB each): still nothing
    rig.profit_mib(94);
    assert_eq!(rig.pass(1_800_000_100).calls.set_memory, 0);
    assert_eq!(rig.sizes(), [194560; 3]);
}

#[test]
fn falling_savings_shrink_in_the_next_pass() {
    let rig = Rig::new(3);
    rig.profit_mib(90);
    rig.pass(1_800_000_000);
    rig.profit_mib(30);
    let r = rig.pass(1_800_000_010);
    assert_eq!(r.resized, 3);
    assert_eq!(rig.sizes(), [174080; 3]);
    rig.profit_mib(0);
    rig.pass(1_800_000_020);
    assert_eq!(rig.sizes(), [163840; 3]);
}

#[test]
fn one_bulk_call_for_many_domains() {
    let rig = Rig::new(200);
    rig.profit_mib(2000);
    let r = rig.pass(1_800_000_000);
    assert_eq!(r.calls.bulk_stats, 1);
    assert_eq!(r.calls.set_memory, 200);
    // 2000 MiB over 200 VMs: 10 MiB each
    assert!(rig.sizes().iter().all(|&s| s == 163840 + 10240));
    let steady = rig.pass(1_800_000_010);
    assert_eq!(steady.calls.bulk_stats, 1);
    assert_eq!(steady.calls.set_memory, 0);
    assert_eq!(steady.calls.xml, 0, "adoption is once, not every pass");
}

#[test]
fn unmerge_everything_returns_every_vm_to_its_floor() {
    let rig = Rig::new(3);
    rig.profit_mib(90);
    rig.pass(1_800_000_000);
    assert_eq!(rig.sizes(), [194560; 3]);
    // `echo 2 > run`: the kernel unmerges every page before the write
    // returns and clears the counters. The savings are gone for real (unlike
    // run = 0, where merged pages stay merged), so the bonuses must go too.
    let ksm = rig.dir.path().join("sys/kernel/mm/ksm");
    fs::write(ksm.join("run"), "2\n").unwrap();
    for f in [
        "general_profit",
        "pages_shared",
        "pages_sharing",
        "ksm_zero_pages",
    ] {
        fs::write(ksm.join(f), "0\n").unwrap();
    }
    let r = rig.pass(1_800_000_010);
    assert_eq!(r.resized, 3);
    assert_eq!(rig.sizes(), [163840; 3]);
}
