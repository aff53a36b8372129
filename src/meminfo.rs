//! The host's `/proc/meminfo`: how much memory it has and how much is
//! available, for the host guard.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The two figures the policy needs, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_kib: u64,
    /// `MemAvailable`: what the kernel estimates it can hand out without swapping.
    pub available_kib: u64,
}

/// What went wrong reading meminfo.
#[derive(Debug, thiserror::Error)]
pub enum MemInfoError {
    /// The file could not be read.
    #[error("cannot read {}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line we need is missing or malformed.
    #[error("{}: {what}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Parses meminfo text. Errors name the field at fault.
pub fn parse(text: &str) -> Result<MemInfo, String> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key.trim() {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let mut words = rest.split_whitespace();
        let value = words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or_else(|| format!("{} has no number: {:?}", key.trim(), rest.trim()))?;
        match words.next() {
            Some("kB") | None => {}
            Some(unit) => return Err(format!("{} has unknown unit {unit:?}", key.trim())),
        }
        *slot = Some(value);
    }
    Ok(MemInfo {
        total_kib: total.ok_or("no MemTotal line")?,
        available_kib: available.ok_or("no MemAvailable line (Linux >= 3.14 has it)")?,
    })
}

/// Reads and parses `path` (normally `/proc/meminfo`).
pub fn read(path: &Path) -> Result<MemInfo, MemInfoError> {
    let text = std::fs::read_to_string(path).map_err(|source| MemInfoError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|what| MemInfoError::Malformed {
        path: path.to_path_buf(),
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_shape() {
        let text = "MemTotal:       24609424 kB\nMemFree:        23456789 kB\nMemAvailable:   23000000 kB\nBuffers:           12345 kB\nHugePages_Total:       0\n";
        assert_eq!(
            parse(text),
            Ok(MemInfo {
                total_kib: 24609424,
                available_kib: 23000000
            })
        );
    }

    #[test]
    fn missing_and_malformed() {
        assert!(parse("MemTotal: 10 kB\n")
            .unwrap_err()
            .contains("MemAvailable"));
        assert!(parse("MemAvailable: 10 kB\n")
            .unwrap_err()
            .contains("MemTotal"));
        assert!(parse("MemTotal: x kB\nMemAvailable: 1 kB\n")
            .unwrap_err()
            .contains("MemTotal"));
        assert!(parse("MemTotal: 1 MB\nMemAvailable: 1 kB\n")
            .unwrap_err()
            .contains("unit"));
        assert!(parse("").is_err());
    }
}
