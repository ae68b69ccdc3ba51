//! Quantities with their units in the type, so kbit and bit, KByte and byte cannot be mixed
//! (the old bwmon did, for years). Parsing accepts tc's notation and says what it expected.

use std::{fmt, str::FromStr};

/// A rate in bits per second.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct BitsPerSec(pub u64);

/// A volume in bytes.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub(crate) struct Bytes(pub(crate) u64);

/// A volume in KBytes of 1024 bytes (PlanetLab's `*_kbyte` attributes).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub(crate) struct KBytes(pub(crate) u64);

/// A rate in kbit/s of 1000 bit/s (PlanetLab's `*_rate` attributes).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub(crate) struct KbitPerSec(pub(crate) u64);

impl KBytes {
    /// In bytes (saturating: no KByte count overflows silently).
    pub(crate) const fn bytes(self) -> Bytes {
        Bytes(self.0.saturating_mul(1024))
    }
}

impl KbitPerSec {
    /// In bit/s.
    pub(crate) const fn bits(self) -> BitsPerSec {
        BitsPerSec(self.0.saturating_mul(1000))
    }
}

/// The smallest rate bwmon ever sets (bwlimit's `bwmin`).
pub(crate) const BWMIN: BitsPerSec = BitsPerSec(1000);

impl BitsPerSec {
    /// In bytes per second, rounded down (what tc's rate specs carry).
    pub(crate) const fn bytes_per_sec(self) -> u64 {
        self.0 / 8
    }
}

/// A quantity that did not parse, with the text and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} '{text}', which should be {expected}")]
pub struct ParseError {
    /// What was being parsed ("rate", "duration").
    pub(crate) what: &'static str,
    /// The text as given.
    pub(crate) text: String,
    /// The expected form, with an example.
    pub(crate) expected: &'static str,
}

/// "1.5 GiB" → (1.5, "gib"): a non-negative decimal number, then a unit in lower case.
fn number_and_unit(text: &str) -> Option<(f64, String)> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 {
        return None;
    }
    Some((num.parse().ok()?, unit.trim().to_owned()))
}

/// `x` rounded, when it is a whole number a `u64` holds.
fn whole(x: f64) -> Option<u64> {
    let x = x.round();
    (x.is_finite() && x >= 0.0 && x < u64::MAX as f64).then_some(x as u64)
}

const RATE_FORM: &str = "a number with a tc unit: bit, kbit, mbit, gbit, tbit, or bps, kbps, mbps, gbps (bytes/s), or kibit, mibit, gibit (e.g. '1.5mbit', '100kbit', '1gbit')";

impl FromStr for BitsPerSec {
    type Err = ParseError;

    /// Parses tc's rate notation: "1.5mbit", "100kbit", "1gbit", "8000bit", "10mbps"
    /// (bytes/s), "1mibit" (binary); a bare number is bit/s.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError {
            what: "rate",
            text: s.to_owned(),
            expected: RATE_FORM,
        };
        let (value, unit) = number_and_unit(s).ok_or_else(err)?;
        let mult: f64 = match unit.as_str() {
            "" | "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "tbit" => 1e12,
            "kibit" => 1024.0,
            "mibit" => 1024.0 * 1024.0,
            "gibit" => 1024.0 * 1024.0 * 1024.0,
            "tibit" => 1024.0f64.powi(4),
            "bps" => 8.0,
            "kbps" => 8e3,
            "mbps" => 8e6,
            "gbps" => 8e9,
            "tbps" => 8e12,
            _ => return Err(err()),
        };
        whole(value * mult).map(BitsPerSec).ok_or_else(err)
    }
}

impl fmt::Display for BitsPerSec {
    /// tc's style: the largest unit that keeps the number at least 1, up to one decimal
    /// ("1.5mbit", "100kbit", "1gbit", "999bit").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0 as f64;
        let (scaled, unit) = if v >= 1e12 {
            (v / 1e12, "tbit")
        } else if v >= 1e9 {
            (v / 1e9, "gbit")
        } else if v >= 1e6 {
            (v / 1e6, "mbit")
        } else if v >= 1e3 {
            (v / 1e3, "kbit")
        } else {
            return write!(f, "{}bit", self.0);
        };
        let rounded = (scaled * 10.0).round() / 10.0;
        if rounded.fract() == 0.0 {
            write!(f, "{rounded:.0}{unit}")
        } else {
            write!(f, "{rounded:.1}{unit}")
        }
    }
}

impl fmt::Display for Bytes {
    /// Binary units, as budgets are: "5.4 GiB", "12.0 MiB", "3.0 KiB", "512 bytes".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0 as f64;
        let k = 1024.0;
        if v >= k * k * k * k {
            write!(f, "{:.1} TiB", v / (k * k * k * k))
        } else if v >= k * k * k {
            write!(f, "{:.1} GiB", v / (k * k * k))
        } else if v >= k * k {
            write!(f, "{:.1} MiB", v / (k * k))
        } else if v >= k {
            write!(f, "{:.1} KiB", v / k)
        } else {
            write!(f, "{} bytes", self.0)
        }
    }
}

const SIZE_FORM: &str = "a number with a unit: B, KiB, MiB, GiB, TiB (binary) or kB, MB, GB, TB (decimal) (e.g. '5GiB', '500MB', '1.5 TiB')";

impl FromStr for Bytes {
    type Err = ParseError;

    /// Parses a size as people type it: "5GiB", "500MB", "1.5 TiB", "4096B".
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError {
            what: "size",
            text: s.to_owned(),
            expected: SIZE_FORM,
        };
        let (value, unit) = number_and_unit(s).ok_or_else(err)?;
        let mult: f64 = match unit.as_str() {
            "b" => 1.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            "kib" => 1024.0,
            "mib" => 1024.0f64.powi(2),
            "gib" => 1024.0f64.powi(3),
            "tib" => 1024.0f64.powi(4),
            // A bare number would be ambiguous beside the KiB integers of the slices file.
            _ => return Err(err()),
        };
        whole(value * mult).map(Bytes).ok_or_else(err)
    }
}

const DURATION_FORM: &str =
    "a number of seconds of at least 1 with a unit s, m, h, d or w (e.g. '1d', '90s', '1.5h')";

/// Parses "1d", "90s", "1.5h", "10m" or a bare number of seconds (at least one second, at
/// most 366 days).
///
/// # Errors
/// Anything else, quoting the text and the expected form.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, ParseError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = match unit.trim() {
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 7.0 * 86_400.0,
        _ => f64::NAN,
    };
    let secs: f64 = num.parse().unwrap_or(f64::NAN) * mult;
    if !secs.is_finite() || !(1.0..=366.0 * 86_400.0).contains(&secs) {
        return Err(ParseError {
            what: "duration",
            text: text.to_owned(),
            expected: DURATION_FORM,
        });
    }
    Ok(std::time::Duration::from_secs(secs.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc_rates_parse_to_bits_per_second() {
        for (text, bits) in [
            ("1.5mbit", 1_500_000),
            ("100kbit", 100_000),
            ("1gbit", 1_000_000_000),
            ("8000", 8000),
            ("8000bit", 8000),
            ("10mbps", 80_000_000),
            ("1mibit", 1_048_576),
            ("40Gbit", 40_000_000_000),
            (" 2 mbit ", 2_000_000),
        ] {
            assert_eq!(text.parse::<BitsPerSec>(), Ok(BitsPerSec(bits)), "{text}");
        }
    }

    #[test]
    fn bad_rates_name_the_text_and_the_expected_form() {
        for bad in [
            "",
            "mbit",
            "1.2.3mbit",
            "10 furlongs",
            "-5kbit",
            "1e400gbit",
        ] {
            let err = bad.parse::<BitsPerSec>().unwrap_err();
            assert_eq!(err.text, bad);
            assert!(err.to_string().contains("which should be"), "{err}");
        }
    }

    #[test]
    fn rates_print_like_tc() {
        for (bits, text) in [
            (1_500_000, "1.5mbit"),
            (100_000, "100kbit"),
            (1_000_000_000, "1gbit"),
            (999, "999bit"),
            (34_400_000_000, "34.4gbit"),
        ] {
            assert_eq!(BitsPerSec(bits).to_string(), text);
        }
    }

    #[test]
    fn bytes_print_like_the_seed() {
        // The default budget, 5,662,310 KiB.
        assert_eq!(Bytes(5_662_310 * 1024).to_string(), "5.4 GiB");
        assert_eq!(Bytes(12 << 20).to_string(), "12.0 MiB");
        assert_eq!(Bytes(3_072).to_string(), "3.0 KiB");
        assert_eq!(Bytes(512).to_string(), "512 bytes");
        assert_eq!(Bytes(3 << 40).to_string(), "3.0 TiB");
    }

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        let b = |s: &str| s.parse::<Bytes>().map(|b| b.0);
        assert_eq!(b("5GiB"), Ok(5 << 30));
        assert_eq!(b("500MB"), Ok(500_000_000));
        assert_eq!(b("1.5 KiB"), Ok(1536));
        assert_eq!(b("4096B"), Ok(4096));
        assert_eq!(b(" 2 tib "), Ok(2 << 40));
        for bad in [
            "",
            "5",
            "GiB",
            "-1GiB",
            "1.2.3MB",
            "5 gigs",
            "1e3MB",
            "99999999999TiB",
        ] {
            let e = b(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("'{bad}'")), "{bad}: {e}");
        }
    }

    #[test]
    fn planetlab_units_convert_without_overflow() {
        assert_eq!(KBytes(5_662_310).bytes(), Bytes(5_798_205_440));
        assert_eq!(KbitPerSec(1500).bits(), BitsPerSec(1_500_000));
        assert_eq!(KBytes(u64::MAX).bytes(), Bytes(u64::MAX));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            parse_duration("1d"),
            Ok(std::time::Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("1.5h"),
            Ok(std::time::Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("40"), Ok(std::time::Duration::from_secs(40)));
        for bad in ["", "0s", "1y", "-1d", "d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("soon").unwrap_err().to_string(),
            "invalid duration 'soon', which should be a number of seconds of at least 1 with a unit s, m, h, d or w (e.g. '1d', '90s', '1.5h')"
        );
    }
}
