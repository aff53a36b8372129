//! Prints, as JSON, each named VM's QEMU process, its KSM figures and its
//! attributed part of the host's savings, read once from a live host (or a
//! fake root): the attribution modules run on their own, before the pass
//! uses them. tests/realstack/attribution.sh runs it on real guests.
//!
//! Usage: cargo run --example attribution -- [--root DIR] [--metric M] NAME...

#![allow(clippy::unwrap_used)] // a measuring tool: a failure should say where

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ksm_balloon::attribution::{attribute, HostFigures, ProcessFigures};
use ksm_balloon::cli::under_root;
use ksm_balloon::ksm::{self, Metric};
use ksm_balloon::procksm::{read_all, read_vm, ProcPaths};
use serde_json::json;

fn main() {
    let mut root = PathBuf::from("/");
    let mut metric = Metric::Auto;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = PathBuf::from(args.next().expect("--root DIR")),
            "--metric" => {
                metric = match args.next().as_deref() {
                    Some("profit") => Metric::Profit,
                    Some("sharing") => Metric::Sharing,
                    Some("shared") => Metric::Shared,
                    Some("auto") => Metric::Auto,
                    m => panic!("--metric profit|sharing|shared|auto, not {m:?}"),
                }
            }
            _ => names.push(a),
        }
    }
    let counters = ksm::read(
        &under_root(&root, Path::new("/sys/kernel/mm/ksm")),
        ksm::host_page_size(),
    )
    .unwrap();
    let host = HostFigures::from_counters(&counters);
    let paths = ProcPaths::under(&root);
    let mut vms = Vec::new();
    let mut figures = Vec::new();
    let mut pids = BTreeSet::new();
    for name in &names {
        match read_vm(&paths, name, None) {
            Ok(vm) => {
                pids.insert(vm.pid);
                figures.push(ProcessFigures::from_stat(&vm.stat).unwrap());
                vms.push(json!({"name": name, "pid": vm.pid, "ksm_stat": vm.stat}));
            }
            Err(why) => vms.push(json!({"name": name, "fallback": why.to_string()})),
        }
    }
    let all = read_all(&paths.proc_dir).unwrap();
    let others: Vec<ProcessFigures> = all
        .others(&pids)
        .filter_map(ProcessFigures::from_stat)
        .collect();
    let a = attribute(&host, metric, &figures, Some(&others)).unwrap();
    // The weight a contribution split gives each VM (pass::rows): its
    // part, a negative one (rmap items costing more than its merges save)
    // counting as none.
    let weights: Vec<u64> = a
        .vm_kib
        .iter()
        .map(|&k| u64::try_from(k).unwrap_or(0))
        .collect();
    let mut k = 0;
    for vm in vms.iter_mut() {
        if vm.get("pid").is_some() {
            vm["attributed_kib"] = json!(a.vm_kib[k]);
            vm["weight"] = json!(weights[k]);
            k += 1;
        }
    }
    let out = json!({
        "host": host,
        "attribution": a,
        "vms": vms,
        "other_processes": all.others(&pids).count(),
        "skipped_processes": all.skipped,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
