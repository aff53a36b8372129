//! Golden tests of the per-process KSM readers and the attribution over fake
//! host roots, one test per case directory under `tests/fixtures/procksm/`:
//! - `root/`: `run/libvirt/qemu/<name>.pid`, `proc/<pid>/{stat,cmdline,comm,
//!   ksm_stat,ksm_merging_pages}` and `sys/kernel/mm/ksm/*`;
//! - `vms`: the managed VMs' names, one a line;
//! - `expected`: what the readers found for each VM, what every process
//!   read, and the attribution by each metric the kernel supports.
//!
//! The roots were generated to match how the kernel counts (see
//! src/attribution.rs); the QEMU command lines follow one libvirt 9.0 wrote.
//! `UPDATE_GOLDEN=1 cargo test --test procksm` rewrites `expected`; review
//! the diff before committing it.

#![allow(clippy::unwrap_used)] // a test helper that fails should panic

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use ksm_balloon::attribution::{attribute, HostFigures, ProcessFigures};
use ksm_balloon::cli::under_root;
use ksm_balloon::ksm::{self, Metric};
use ksm_balloon::procksm::{read_all, read_vm, ProcPaths};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/procksm")
        .join(case)
}

/// Everything the readers and the attribution say about a case, as text;
/// paths shown relative to the fake root.
fn report(case: &str) -> String {
    let dir = case_dir(case);
    let root = dir.join("root");
    let strip = |s: String| s.replace(&format!("{}/", root.display()), "/");
    let names = fs::read_to_string(dir.join("vms")).unwrap();
    let paths = ProcPaths::under(&root);
    let mut out = String::new();
    let mut figures = Vec::new();
    let mut attributed = Vec::new();
    let mut pids = BTreeSet::new();
    for name in names.lines() {
        match read_vm(&paths, name, None) {
            Ok(vm) => {
                writeln!(out, "vm {name}: pid {} {:?}", vm.pid, vm.stat).unwrap();
                pids.insert(vm.pid);
                match ProcessFigures::from_stat(&vm.stat) {
                    Some(f) => {
                        figures.push(f);
                        attributed.push(name);
                    }
                    None => writeln!(out, "  (no ksm_merging_pages: not attributed)").unwrap(),
                }
            }
            Err(why) => writeln!(out, "vm {name}: fallback: {}", strip(why.to_string())).unwrap(),
        }
    }
    let others = match read_all(&paths.proc_dir) {
        Ok(all) => {
            writeln!(
                out,
                "processes involved: {:?}, skipped {}",
                all.processes.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                all.skipped
            )
            .unwrap();
            Some(
                all.others(&pids)
                    .filter_map(ProcessFigures::from_stat)
                    .collect::<Vec<_>>(),
            )
        }
        Err(why) => {
            writeln!(out, "all processes: fallback: {}", strip(why.to_string())).unwrap();
            None
        }
    };
    let counters = ksm::read(&under_root(&root, Path::new("/sys/kernel/mm/ksm")), 4096).unwrap();
    let host = HostFigures::from_counters(&counters);
    for metric in [
        Metric::Auto,
        Metric::Profit,
        Metric::Sharing,
        Metric::Shared,
    ] {
        match attribute(&host, metric, &figures, others.as_deref()) {
            Ok(a) => {
                let parts: Vec<String> = attributed
                    .iter()
                    .zip(&a.vm_kib)
                    .map(|(n, k)| format!("{n} {k}"))
                    .collect();
                writeln!(
                    out,
                    "{metric} -> {}: host {} KiB = VMs {} + not VMs {} (other processes {:?}); parts: {}; weights {:?}",
                    a.metric,
                    a.host_kib,
                    a.vms_kib,
                    a.non_vm_kib,
                    a.others_kib,
                    parts.join(", "),
                    weights(&a.vm_kib)
                )
                .unwrap();
            }
            Err(e) => writeln!(out, "{metric}: {e}").unwrap(),
        }
    }
    out
}

/// The weight a contribution split gives each VM (`pass::rows`): its
/// part, a negative one (rmap items costing more than its merges save)
/// counting as none.
fn weights(vm_kib: &[i64]) -> Vec<u64> {
    vm_kib
        .iter()
        .map(|&k| u64::try_from(k).unwrap_or(0))
        .collect()
}

fn golden(case: &str) {
    let got = report(case);
    let path = case_dir(case).join("expected");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, &got).unwrap();
        return;
    }
    let want = fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        got,
        want,
        "case {case}: the report differs from {}",
        path.display()
    );
}

#[test]
fn several_vms() {
    golden("several-vms");
    // Beyond the golden text: by every metric the parts of all processes
    // add up to the host's savings, and the non-VM process's part is what
    // is not the VMs'.
    let root = case_dir("several-vms").join("root");
    let paths = ProcPaths::under(&root);
    let counters = ksm::read(&under_root(&root, Path::new("/sys/kernel/mm/ksm")), 4096).unwrap();
    let host = HostFigures::from_counters(&counters);
    let vms: Vec<ProcessFigures> = ["web1", "web2", "db"]
        .iter()
        .map(|n| ProcessFigures::from_stat(&read_vm(&paths, n, None).unwrap().stat).unwrap())
        .collect();
    let pids: BTreeSet<u32> = [1001, 1002, 1003].into();
    let all = read_all(&paths.proc_dir).unwrap();
    let others: Vec<ProcessFigures> = all
        .others(&pids)
        .filter_map(ProcessFigures::from_stat)
        .collect();
    assert_eq!(
        others.len(),
        1,
        "ksm-merger is the only other process involved"
    );
    for metric in [Metric::Profit, Metric::Sharing, Metric::Shared] {
        let a = attribute(&host, metric, &vms, Some(&others)).unwrap();
        let others_kib = a.others_kib.unwrap();
        // Each of the 4 parts is floored to a KiB on its own.
        assert!((a.non_vm_kib - others_kib).abs() <= 4, "{metric}: {a:?}");
        // The sharing pair each hold more than db, which shares only its kernel.
        assert!(
            a.vm_kib[0] > a.vm_kib[2] && a.vm_kib[1] > a.vm_kib[2],
            "{metric}: {a:?}"
        );
    }
}

#[test]
fn missing_ksm_stat() {
    golden("missing-ksm-stat");
}

#[test]
fn stale_pid_files() {
    golden("stale-pid-files");
}

#[test]
fn kernel_6_3_without_merging_pages_in_ksm_stat() {
    golden("kernel-6.3");
}

#[test]
fn kernel_5_15_without_per_process_figures() {
    golden("kernel-5.15");
}

#[test]
fn uuid_mismatch_is_refused() {
    let root = case_dir("several-vms").join("root");
    let paths = ProcPaths::under(&root);
    read_vm(&paths, "web1", Some("6F1C0B52-0000-4000-8000-000000000001")).unwrap();
    let e = read_vm(&paths, "web1", Some("6f1c0b52-0000-4000-8000-0000000000ff")).unwrap_err();
    assert!(
        e.to_string()
            .contains("not 6f1c0b52-0000-4000-8000-0000000000ff"),
        "{e}"
    );
}

/// A pid whose process is replaced between the two reads of its stat (the
/// QEMU exited and the pid went to a new process) is not trusted.
#[test]
fn pid_reused_mid_read_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let src = case_dir("several-vms").join("root");
    for rel in [
        "run/libvirt/qemu/web1.pid",
        "proc/1001/cmdline",
        "proc/1001/stat",
    ] {
        let to = root.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(src.join(rel), &to).unwrap();
    }
    // ksm_stat as a FIFO: reading it blocks until a writer comes, which lets
    // this test swap the stat file (a new start time) before the reader's
    // second look at it.
    let fifo = root.join("proc/1001/ksm_stat");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: c is a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let stat = root.join("proc/1001/stat");
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        let text = fs::read_to_string(&stat)
            .unwrap()
            .replace(" 1000 ", " 2000 ");
        // Opening a FIFO to write waits for its reader: from here on the
        // reader has read the stat once and checked the command line.
        let mut f = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        fs::write(&stat, text).unwrap();
        f.write_all(b"ksm_merging_pages 5\n").unwrap();
    });
    let e = read_vm(&ProcPaths::under(root), "web1", None).unwrap_err();
    writer.join().unwrap();
    assert!(
        e.to_string()
            .contains("changed while its figures were read"),
        "{e}"
    );
}
