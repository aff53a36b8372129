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
    #[error("{}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ParseError,
    },
}

/// What is wrong with meminfo's text; each names the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A field we need is not followed by a number.
    #[error("{field} has no number: {text:?}")]
    NotANumber {
        /// `MemTotal` or `MemAvailable`.
        field: &'static str,
        /// What follows the colon (trimmed).
        text: String,
    },
    /// A field we need is in a unit other than kB.
    #[error("{field} has unknown unit {unit:?}")]
    UnknownUnit {
        /// `MemTotal` or `MemAvailable`.
        field: &'static str,
        /// The unit.
        unit: String,
    },
    /// No `MemTotal` line.
    #[error("no MemTotal line")]
    NoMemTotal,
    /// No `MemAvailable` line (a kernel older than 3.14).
    #[error("no MemAvailable line (Linux >= 3.14 has it)")]
    NoMemAvailable,
}

/// Parses meminfo text.
pub fn parse(text: &str) -> Result<MemInfo, ParseError> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let (field, slot) = match key.trim() {
            "MemTotal" => ("MemTotal", &mut total),
            "MemAvailable" => ("MemAvailable", &mut available),
            _ => continue,
        };
        let mut words = rest.split_whitespace();
        let value = words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or_else(|| ParseError::NotANumber {
                field,
                text: rest.trim().to_string(),
            })?;
        match words.next() {
            Some("kB") | None => {}
            Some(unit) => {
                return Err(ParseError::UnknownUnit {
                    field,
                    unit: unit.to_string(),
                })
            }
        }
        *slot = Some(value);
    }
    Ok(MemInfo {
        total_kib: total.ok_or(ParseError::NoMemTotal)?,
        available_kib: available.ok_or(ParseError::NoMemAvailable)?,
    })
}

/// Reads and parses `path` (normally `/proc/meminfo`).
pub fn read(path: &Path) -> Result<MemInfo, MemInfoError> {
    let text = std::fs::read_to_string(path).map_err(|source| MemInfoError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|source| MemInfoError::Malformed {
        path: path.to_path_buf(),
        source,
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
        assert_eq!(parse("MemTotal: 10 kB\n"), Err(ParseError::NoMemAvailable));
        assert_eq!(parse("MemAvailable: 10 kB\n"), Err(ParseError::NoMemTotal));
        assert_eq!(
            parse("MemTotal: x kB\nMemAvailable: 1 kB\n"),
            Err(ParseError::NotANumber {
                field: "MemTotal",
                text: "x kB".into()
            })
        );
        assert_eq!(
            parse("MemTotal: 1 MB\nMemAvailable: 1 kB\n"),
            Err(ParseError::UnknownUnit {
                field: "MemTotal",
                unit: "MB".into()
            })
        );
        assert_eq!(parse(""), Err(ParseError::NoMemTotal));
    }

    #[test]
    fn a_malformed_file_names_itself_then_the_field_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meminfo");
        std::fs::write(&path, "MemTotal: lots kB\nMemAvailable: 1 kB\n").unwrap();
        let e = read(&path).unwrap_err();
        assert_eq!(
            crate::errors::chain(&e),
            format!("{}: MemTotal has no number: \"lots kB\"", path.display())
        );
    }
}
