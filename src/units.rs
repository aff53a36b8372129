//! Memory sizes: parsing the sizes operators type (`512M`, `1.5GiB`, `5%`)
//! and printing KiB figures for people.
//!
//! Everything inside ksm-balloon counts memory in KiB, as libvirt does.

use std::fmt;

/// Parses a size into KiB.
///
/// A bare number is KiB, as `virsh setmem` takes it. Suffixes are binary and
/// case-insensitive: `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`.
/// Fractions are allowed (`1.5G`); bytes round up to a whole KiB.
pub fn parse_size_kib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(format!("'{text}' does not start with a number"));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{num}' is not a number"))?;
    let bytes_per_unit: f64 = match unit.to_ascii_lowercase().as_str() {
        "b" | "bytes" => 1.0,
        "" | "k" | "kib" | "kb" => 1024.0,
        "m" | "mib" | "mb" => 1024.0 * 1024.0,
        "g" | "gib" | "gb" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" | "tb" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' (use B, K, M, G or T; a bare number is KiB)"
            ))
        }
    };
    let bytes = value * bytes_per_unit;
    if !bytes.is_finite() || bytes > (u64::MAX / 2) as f64 {
        return Err(format!("'{text}' is too large"));
    }
    Ok((bytes / 1024.0).ceil() as u64)
}

/// Converts a libvirt scaled integer to KiB, rounding up.
///
/// Units as libvirt documents them: `b`/`bytes`; `KB`, `MB`, `GB`, `TB`,
/// `PB`, `EB` are powers of 1000; `k`/`KiB`, `M`/`MiB`, ... powers of 1024.
/// The default unit is KiB.
pub fn scaled_to_kib(value: &str, unit: Option<&str>) -> Result<u64, String> {
    let v: u64 = value
        .trim()
        .parse()
        .map_err(|_| "not a whole non-negative number".to_string())?;
    let unit = unit.unwrap_or("KiB").trim();
    let bytes_per: u128 = match unit {
        "b" | "B" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1000u128.pow(2),
        "m" | "M" | "MiB" => 1 << 20,
        "GB" => 1000u128.pow(3),
        "g" | "G" | "GiB" => 1 << 30,
        "TB" => 1000u128.pow(4),
        "t" | "T" | "TiB" => 1 << 40,
        "PB" => 1000u128.pow(5),
        "p" | "P" | "PiB" => 1 << 50,
        "EB" => 1000u128.pow(6),
        "e" | "E" | "EiB" => 1 << 60,
        other => return Err(format!("unknown unit {other:?}")),
    };
    let bytes = u128::from(v) * bytes_per;
    let kib = bytes.div_ceil(1024);
    u64::try_from(kib).map_err(|_| "too large".to_string())
}

/// A size that is either absolute or a percentage of something (the host's
/// memory, for the reserve).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeOrPercent {
    /// An absolute size in KiB.
    Kib(u64),
    /// A percentage, 0 to 100.
    Percent(f64),
}

impl SizeOrPercent {
    /// Parses `5%` or any size [`parse_size_kib`] takes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("'{p}' is not a number"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{v}% is not between 0% and 100%"));
            }
            return Ok(Self::Percent(v));
        }
        parse_size_kib(t).map(Self::Kib)
    }

    /// Resolves to KiB given the whole (for a percentage).
    pub fn resolve(self, whole_kib: u64) -> u64 {
        match self {
            Self::Kib(k) => k,
            Self::Percent(p) => (whole_kib as f64 * p / 100.0).round() as u64,
        }
    }
}

impl fmt::Display for SizeOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kib(k) => write!(f, "{}", Kib(*k)),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A KiB figure that prints itself for people: `160.0 MiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kib(pub u64);

impl fmt::Display for Kib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.0 as f64;
        if self.0 < 1024 {
            write!(f, "{} KiB", self.0)
        } else if self.0 < 1024 * 1024 {
            write!(f, "{:.1} MiB", k / 1024.0)
        } else if self.0 < 1024 * 1024 * 1024 {
            write!(f, "{:.2} GiB", k / (1024.0 * 1024.0))
        } else {
            write!(f, "{:.2} TiB", k / (1024.0 * 1024.0 * 1024.0))
        }
    }
}

/// A signed KiB difference that prints with its sign: `+21.7 MiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KibDelta(pub i64);

impl fmt::Display for KibDelta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "+" };
        write!(f, "{sign}{}", Kib(self.0.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, kib) in [
            ("0", 0),
            ("1024", 1024),
            ("1K", 1),
            ("512M", 512 * 1024),
            ("512 MiB", 512 * 1024),
            ("1.5G", 1536 * 1024),
            ("1g", 1024 * 1024),
            ("1T", 1024 * 1024 * 1024),
            ("1b", 1),
            ("4096B", 4),
            ("4097B", 5),
        ] {
            assert_eq!(parse_size_kib(text), Ok(kib), "{text}");
        }
    }

    #[test]
    fn bad_sizes() {
        for text in ["", "M", "-1M", "1X", "1.2.3M", "1e400G", "abc"] {
            assert!(parse_size_kib(text).is_err(), "{text} should fail");
        }
    }

    #[test]
    fn percents() {
        assert_eq!(SizeOrPercent::parse("5%"), Ok(SizeOrPercent::Percent(5.0)));
        assert_eq!(SizeOrPercent::parse("1G"), Ok(SizeOrPercent::Kib(1 << 20)));
        assert!(SizeOrPercent::parse("101%").is_err());
        assert!(SizeOrPercent::parse("x%").is_err());
        assert_eq!(SizeOrPercent::Percent(5.0).resolve(1000), 50);
        assert_eq!(SizeOrPercent::Kib(7).resolve(1000), 7);
    }

    #[test]
    fn display() {
        assert_eq!(Kib(512).to_string(), "512 KiB");
        assert_eq!(Kib(163840).to_string(), "160.0 MiB");
        assert_eq!(Kib(3 << 20).to_string(), "3.00 GiB");
        assert_eq!(KibDelta(-2048).to_string(), "-2.0 MiB");
        assert_eq!(KibDelta(2048).to_string(), "+2.0 MiB");
    }
}
