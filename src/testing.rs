//! What the tests share that the tool does not ship: writers of the host
//! files a pass reads, for the pass's unit tests (`src/pass/tests.rs`) and
//! the multi-pass scenarios (`tests/scenarios.rs`). Only with the
//! `testing` feature (the tests get it; see `Cargo.toml`), like
//! `hypervisor::fake`.

use std::fs;
use std::io;
use std::path::Path;

use crate::ksm::KsmCounters;

/// KSM merging (`run` = 1) with `saved_kib` saved by `general_profit`,
/// every page count 0 and one full scan done.
pub fn ksm_saving(saved_kib: u64) -> KsmCounters {
    KsmCounters {
        run: 1,
        full_scans: 1,
        general_profit: Some(i64::try_from(saved_kib.saturating_mul(1024)).unwrap_or(i64::MAX)),
        ..KsmCounters::default()
    }
}

/// Writes `k` into `dir` as the kernel's `/sys/kernel/mm/ksm/` shows it:
/// one file per counter, a number and a newline; `general_profit`,
/// `ksm_zero_pages` and `pages_scanned` only where set, as on a kernel that has them
/// (`page_size` is not a file).
pub fn write_ksm(dir: &Path, k: &KsmCounters) -> io::Result<()> {
    let mut files = vec![
        ("run", k.run.to_string()),
        ("pages_shared", k.pages_shared.to_string()),
        ("pages_sharing", k.pages_sharing.to_string()),
        ("pages_unshared", k.pages_unshared.to_string()),
        ("pages_volatile", k.pages_volatile.to_string()),
        ("full_scans", k.full_scans.to_string()),
    ];
    if let Some(p) = k.general_profit {
        files.push(("general_profit", p.to_string()));
    }
    if let Some(z) = k.ksm_zero_pages {
        files.push(("ksm_zero_pages", z.to_string()));
    }
    if let Some(n) = k.pages_scanned {
        files.push(("pages_scanned", n.to_string()));
    }
    for (f, v) in files {
        fs::write(dir.join(f), format!("{v}\n"))?;
    }
    Ok(())
}
