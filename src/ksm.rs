//! The kernel's KSM counters under `/sys/kernel/mm/ksm/`, and the savings
//! they add up to.
//!
//! [`parse_counter`] is a pure parser of one file's text; [`read`] is the thin
//! wrapper that reads the directory. The kernel's meaning of each counter is in
//! its admin guide (`Documentation/admin-guide/mm/ksm.rst`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which counter stands for "what KSM saved".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// `profit` where the kernel has `general_profit`, else `sharing`.
    Auto,
    /// `general_profit`: what KSM saved net of its own metadata (Linux >= 6.4).
    Profit,
    /// `pages_sharing + ksm_zero_pages`: the kernel's own "how much saved".
    Sharing,
    /// `pages_shared`: the paper's literal choice (pages in use after merging).
    Shared,
}

impl Metric {
    /// Every metric, by the name the settings use.
    pub const ALL: [(&'static str, Metric); 4] = [
        ("auto", Metric::Auto),
        ("profit", Metric::Profit),
        ("sharing", Metric::Sharing),
        ("shared", Metric::Shared),
    ];
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Metric::ALL
            .iter()
            .find(|(_, m)| m == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Metric, String> {
        Metric::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                let names: Vec<&str> = Metric::ALL.iter().map(|(n, _)| *n).collect();
                format!("'{s}' is not a metric (one of: {})", names.join(", "))
            })
    }
}

/// One reading of the KSM directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsmCounters {
    /// `run`: 0 stopped, 1 merging, 2 unmerge everything.
    pub run: u64,
    /// `pages_shared`: shared pages in use.
    pub pages_shared: u64,
    /// `pages_sharing`: how many more sites share them, i.e. pages saved.
    pub pages_sharing: u64,
    /// `pages_unshared`: unique pages repeatedly checked for merging.
    pub pages_unshared: u64,
    /// `pages_volatile`: pages changing too fast to be placed in a tree.
    pub pages_volatile: u64,
    /// `full_scans`: how many times all mergeable areas have been scanned.
    pub full_scans: u64,
    /// `general_profit` in bytes, where the kernel has it (can be negative).
    pub general_profit: Option<i64>,
    /// `ksm_zero_pages`, where the kernel has it (with `use_zero_pages`).
    pub ksm_zero_pages: Option<u64>,
    /// `pages_scanned`: pages ksmd has scanned since boot, where the kernel
    /// has it (6.7+): what its CPU time bought.
    #[serde(default)]
    pub pages_scanned: Option<u64>,
    /// The host's page size in bytes, to turn page counts into KiB.
    pub page_size: u64,
}

/// What went wrong reading the KSM counters.
#[derive(Debug, thiserror::Error)]
pub enum KsmError {
    /// The directory is absent: the kernel was built without KSM.
    #[error("KSM is not available: {} does not exist (kernel built without CONFIG_KSM?)", .dir.display())]
    Missing {
        /// The directory looked for.
        dir: PathBuf,
    },
    /// A counter file could not be read.
    #[error("cannot read KSM counter {}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A counter file held something other than a number.
    #[error("KSM counter {} holds {:?}, not a number", .path.display(), .text)]
    NotANumber {
        /// The file.
        path: PathBuf,
        /// What it held (cut short).
        text: String,
    },
    /// The chosen metric needs a counter this kernel lacks.
    #[error("metric '{metric}' needs {} which this kernel does not have (Linux >= 6.4 has it); use --metric sharing or shared", .path.display())]
    MetricUnavailable {
        /// The metric asked for.
        metric: Metric,
        /// The missing file.
        path: PathBuf,
    },
}

/// Parses one counter file's text: a decimal integer and a newline.
pub fn parse_counter(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() || t.len() > 24 {
        return None;
    }
    t.parse().ok()
}

fn read_one(dir: &Path, name: &str, optional: bool) -> Result<Option<i64>, KsmError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            match parse_counter(&text) {
                Some(v) => Ok(Some(v)),
                None => Err(KsmError::NotANumber {
                    path,
                    text: text.chars().take(40).collect(),
                }),
            }
        }
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KsmError::Unreadable { path, source }),
    }
}

fn unsigned(dir: &Path, name: &str, v: i64) -> Result<u64, KsmError> {
    u64::try_from(v).map_err(|_| KsmError::NotANumber {
        path: dir.join(name),
        text: v.to_string(),
    })
}

/// Reads the counters from `dir` (normally `/sys/kernel/mm/ksm`).
pub fn read(dir: &Path, page_size: u64) -> Result<KsmCounters, KsmError> {
    if !dir.is_dir() {
        return Err(KsmError::Missing {
            dir: dir.to_path_buf(),
        });
    }
    let req = |name: &str| -> Result<u64, KsmError> {
        let v = read_one(dir, name, false)?.unwrap_or_default();
        unsigned(dir, name, v)
    };
    let ksm_zero_pages = match read_one(dir, "ksm_zero_pages", true)? {
        Some(v) => Some(unsigned(dir, "ksm_zero_pages", v)?),
        None => None,
    };
    let pages_scanned = match read_one(dir, "pages_scanned", true)? {
        Some(v) => Some(unsigned(dir, "pages_scanned", v)?),
        None => None,
    };
    Ok(KsmCounters {
        run: req("run")?,
        pages_shared: req("pages_shared")?,
        pages_sharing: req("pages_sharing")?,
        pages_unshared: req("pages_unshared")?,
        pages_volatile: req("pages_volatile")?,
        full_scans: req("full_scans")?,
        general_profit: read_one(dir, "general_profit", true)?,
        ksm_zero_pages,
        pages_scanned,
        page_size,
    })
}

/// The savings a metric reads off the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Savings {
    /// The metric actually used (`auto` resolved).
    pub metric: Metric,
    /// The savings in KiB (never negative).
    pub kib: u64,
}

impl KsmCounters {
    /// True when KSM is merging (`run` = 1).
    pub fn merging(&self) -> bool {
        self.run == 1
    }

    /// True when KSM has unmerged everything (`run` = 2): the kernel breaks
    /// every merged page before the write to `run` returns and clears the
    /// counters, so the savings are really gone.
    pub fn unmerged(&self) -> bool {
        self.run == 2
    }

    /// True when the counters say what KSM saves now: while it merges, and
    /// after it unmerged everything (they read zero, and that is the truth).
    /// With `run` = 0 merged pages stay merged but the counters stop moving:
    /// stale.
    pub fn counters_live(&self) -> bool {
        self.merging() || self.unmerged()
    }

    fn pages_kib(&self, pages: u64) -> u64 {
        pages.saturating_mul(self.page_size) / 1024
    }

    /// The savings by `metric`; `dir` only names the file in an error.
    pub fn savings(&self, metric: Metric, dir: &Path) -> Result<Savings, KsmError> {
        let resolved = match metric {
            Metric::Auto if self.general_profit.is_some() => Metric::Profit,
            Metric::Auto => Metric::Sharing,
            m => m,
        };
        let kib = match resolved {
            Metric::Profit => match self.general_profit {
                Some(bytes) => (bytes.max(0) as u64) / 1024,
                None => {
                    return Err(KsmError::MetricUnavailable {
                        metric,
                        path: dir.join("general_profit"),
                    })
                }
            },
            Metric::Sharing => {
                self.pages_kib(self.pages_sharing + self.ksm_zero_pages.unwrap_or(0))
            }
            Metric::Shared => self.pages_kib(self.pages_shared),
            Metric::Auto => unreachable!("resolved above"),
        };
        Ok(Savings {
            metric: resolved,
            kib,
        })
    }
}

/// The host's page size in bytes.
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> KsmCounters {
        KsmCounters {
            run: 1,
            pages_shared: 100,
            pages_sharing: 1000,
            pages_unshared: 5,
            pages_volatile: 7,
            full_scans: 3,
            general_profit: Some(3_000_000),
            ksm_zero_pages: Some(24),
            pages_scanned: Some(5_000_000),
            page_size: 4096,
        }
    }

    #[test]
    fn parse_counter_literals() {
        assert_eq!(parse_counter("0\n"), Some(0));
        assert_eq!(parse_counter("11700\n"), Some(11700));
        assert_eq!(parse_counter("-4096\n"), Some(-4096));
        assert_eq!(parse_counter("  42  "), Some(42));
        assert_eq!(parse_counter(""), None);
        assert_eq!(parse_counter("\n"), None);
        assert_eq!(parse_counter("abc\n"), None);
        assert_eq!(parse_counter("1 2\n"), None);
        assert_eq!(parse_counter("99999999999999999999999999\n"), None);
    }

    #[test]
    fn each_metric() {
        let c = counters();
        let d = Path::new("/sys/kernel/mm/ksm");
        assert_eq!(c.savings(Metric::Profit, d).unwrap().kib, 2929);
        assert_eq!(c.savings(Metric::Sharing, d).unwrap().kib, 1024 * 4);
        assert_eq!(c.savings(Metric::Shared, d).unwrap().kib, 400);
        assert_eq!(c.savings(Metric::Auto, d).unwrap().metric, Metric::Profit);
    }

    #[test]
    fn auto_falls_back_to_sharing_on_old_kernels() {
        let c = KsmCounters {
            general_profit: None,
            ksm_zero_pages: None,
            ..counters()
        };
        let d = Path::new("/k");
        let s = c.savings(Metric::Auto, d).unwrap();
        assert_eq!(s.metric, Metric::Sharing);
        assert_eq!(s.kib, 4000);
        let err = c.savings(Metric::Profit, d).unwrap_err().to_string();
        assert!(err.contains("/k/general_profit"), "{err}");
    }

    #[test]
    fn run_states() {
        let c = |run| KsmCounters { run, ..counters() };
        assert!(c(1).merging() && c(1).counters_live() && !c(1).unmerged());
        assert!(!c(0).merging() && !c(0).counters_live() && !c(0).unmerged());
        assert!(!c(2).merging() && c(2).counters_live() && c(2).unmerged());
    }

    #[test]
    fn negative_profit_is_no_savings() {
        let c = KsmCounters {
            general_profit: Some(-123456),
            ..counters()
        };
        assert_eq!(c.savings(Metric::Profit, Path::new("/")).unwrap().kib, 0);
    }
}
