//! Slice attributes (PlanetLab's rspec keys) as read from the config's `[defaults]` and the
//! slices file, in the units PlanetLab used: rates in kbit/s, volumes in KBytes of 1024.

use crate::units::{BitsPerSec, Bytes, KBytes, KbitPerSec, ParseError};

/// The attribute keys, in the order they are documented.
pub(crate) const KEYS: [&str; 10] = [
    "net_min_rate",
    "net_max_rate",
    "net_i2_min_rate",
    "net_i2_max_rate",
    "net_max_kbyte",
    "net_thresh_kbyte",
    "net_i2_max_kbyte",
    "net_i2_thresh_kbyte",
    "net_share",
    "net_i2_share",
];

/// Attributes given for a slice or as defaults; `None` where not given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Attributes {
    /// `net_min_rate`
    pub(crate) min_rate: Option<KbitPerSec>,
    /// `net_max_rate`
    pub(crate) max_rate: Option<KbitPerSec>,
    /// `net_i2_min_rate`
    pub(crate) i2_min_rate: Option<KbitPerSec>,
    /// `net_i2_max_rate`
    pub(crate) i2_max_rate: Option<KbitPerSec>,
    /// `net_max_kbyte`
    pub(crate) max_kbyte: Option<KBytes>,
    /// `net_thresh_kbyte`
    pub(crate) thresh_kbyte: Option<KBytes>,
    /// `net_i2_max_kbyte`
    pub(crate) i2_max_kbyte: Option<KBytes>,
    /// `net_i2_thresh_kbyte`
    pub(crate) i2_thresh_kbyte: Option<KBytes>,
    /// `net_share`
    pub(crate) share: Option<u32>,
    /// `net_i2_share`
    pub(crate) i2_share: Option<u32>,
}

/// Why an attribute's value cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub(crate) enum AttrError {
    /// A negative number.
    #[error("must not be negative, got {0}")]
    Negative(i64),
    /// A size or rate written as text that does not parse.
    #[error(transparent)]
    Text(#[from] ParseError),
    /// Neither a number nor text of its unit.
    #[error("must be a whole number ({unit}), got {got}")]
    NotANumber {
        /// The key's unit, as the message names it.
        unit: &'static str,
        /// The TOML type given.
        got: &'static str,
    },
    /// A share out of range.
    #[error("must be between 1 and 10000, got {0}")]
    Share(u64),
    /// Not an rspec key.
    #[error("unknown attribute; known ones are {}", KEYS.join(", "))]
    Unknown,
}

impl Attributes {
    /// Sets `key` to `value`; `Err` names what is wrong with it.
    ///
    /// # Errors
    /// An unknown key, or a value that is not a non-negative integer in range.
    pub(crate) fn set(&mut self, key: &str, value: &toml::Value) -> Result<(), AttrError> {
        let n = match value {
            toml::Value::Integer(n) if *n >= 0 => *n as u64,
            toml::Value::Integer(n) => return Err(AttrError::Negative(*n)),
            // Sizes and rates as people type them: "5GiB", "500MB", "10mbit".
            toml::Value::String(text) if key.ends_with("_kbyte") => {
                let bytes: Bytes = text.parse()?;
                bytes.0.div_ceil(1024)
            }
            toml::Value::String(text) if key.ends_with("_rate") => {
                let rate: BitsPerSec = text.parse()?;
                rate.0.div_ceil(1000)
            }
            other => {
                return Err(AttrError::NotANumber {
                    unit: unit_of(key),
                    got: other.type_str(),
                });
            }
        };
        let share = || {
            u32::try_from(n)
                .ok()
                .filter(|s| (1..=10_000).contains(s))
                .ok_or(AttrError::Share(n))
        };
        match key {
            "net_min_rate" => self.min_rate = Some(KbitPerSec(n)),
            "net_max_rate" => self.max_rate = Some(KbitPerSec(n)),
            "net_i2_min_rate" => self.i2_min_rate = Some(KbitPerSec(n)),
            "net_i2_max_rate" => self.i2_max_rate = Some(KbitPerSec(n)),
            "net_max_kbyte" => self.max_kbyte = Some(KBytes(n)),
            "net_thresh_kbyte" => self.thresh_kbyte = Some(KBytes(n)),
            "net_i2_max_kbyte" => self.i2_max_kbyte = Some(KBytes(n)),
            "net_i2_thresh_kbyte" => self.i2_thresh_kbyte = Some(KBytes(n)),
            "net_share" => self.share = Some(share()?),
            "net_i2_share" => self.i2_share = Some(share()?),
            _ => return Err(AttrError::Unknown),
        }
        Ok(())
    }

    /// The value of `key` when given, in its unit (kbit/s, KiB, a share).
    pub(crate) fn get(&self, key: &str) -> Option<u64> {
        match key {
            "net_min_rate" => self.min_rate.map(|r| r.0),
            "net_max_rate" => self.max_rate.map(|r| r.0),
            "net_i2_min_rate" => self.i2_min_rate.map(|r| r.0),
            "net_i2_max_rate" => self.i2_max_rate.map(|r| r.0),
            "net_max_kbyte" => self.max_kbyte.map(|k| k.0),
            "net_thresh_kbyte" => self.thresh_kbyte.map(|k| k.0),
            "net_i2_max_kbyte" => self.i2_max_kbyte.map(|k| k.0),
            "net_i2_thresh_kbyte" => self.i2_thresh_kbyte.map(|k| k.0),
            "net_share" => self.share.map(u64::from),
            "net_i2_share" => self.i2_share.map(u64::from),
            _ => None,
        }
    }

    /// These attributes, with `base` filling what is not given here.
    pub(crate) fn or(self, base: Attributes) -> Attributes {
        Attributes {
            min_rate: self.min_rate.or(base.min_rate),
            max_rate: self.max_rate.or(base.max_rate),
            i2_min_rate: self.i2_min_rate.or(base.i2_min_rate),
            i2_max_rate: self.i2_max_rate.or(base.i2_max_rate),
            max_kbyte: self.max_kbyte.or(base.max_kbyte),
            thresh_kbyte: self.thresh_kbyte.or(base.thresh_kbyte),
            i2_max_kbyte: self.i2_max_kbyte.or(base.i2_max_kbyte),
            i2_thresh_kbyte: self.i2_thresh_kbyte.or(base.i2_thresh_kbyte),
            share: self.share.or(base.share),
            i2_share: self.i2_share.or(base.i2_share),
        }
    }
}

fn unit_of(key: &str) -> &'static str {
    if key.ends_with("_rate") {
        "kbit/s, or a rate such as \"10mbit\""
    } else if key.ends_with("_kbyte") {
        "KBytes of 1024 bytes, or a size such as \"5GiB\""
    } else {
        "a share"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_sets_its_field_and_bad_values_say_why() {
        let mut a = Attributes::default();
        for (i, key) in KEYS.iter().enumerate() {
            a.set(key, &toml::Value::Integer(i as i64 + 1)).unwrap();
        }
        assert_eq!(a.min_rate, Some(KbitPerSec(1)));
        assert_eq!(a.i2_share, Some(10));
        for (i, key) in KEYS.iter().enumerate() {
            assert_eq!(a.get(key), Some(i as u64 + 1), "{key}");
        }
        assert_eq!(Attributes::default().get("net_max_rate"), None);
        let e = a.set("net_max_rate", &toml::Value::Boolean(true));
        assert!(e.unwrap_err().to_string().contains("kbit/s"));
        let text = |s: &str| toml::Value::String(s.into());
        a.set("net_max_rate", &text("1.5mbit")).unwrap();
        assert_eq!(a.max_rate, Some(KbitPerSec(1500)));
        a.set("net_max_kbyte", &text("5GiB")).unwrap();
        assert_eq!(a.max_kbyte, Some(KBytes(5 << 20)));
        a.set("net_i2_max_kbyte", &text("500MB")).unwrap();
        assert_eq!(
            a.i2_max_kbyte,
            Some(KBytes(488_282)),
            "rounded up to whole KiB"
        );
        let e = a
            .set("net_thresh_kbyte", &text("5 gigs"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'5 gigs'") && e.contains("GiB"), "{e}");
        assert!(a.set("net_share", &text("2")).is_err());
        assert!(a.set("net_share", &toml::Value::Integer(0)).is_err());
        assert!(a.set("net_max_kbyte", &toml::Value::Integer(-1)).is_err());
        assert!(
            a.set("net_bogus", &toml::Value::Integer(1))
                .unwrap_err()
                .to_string()
                .contains("unknown")
        );
    }

    #[test]
    fn given_attributes_win_over_defaults() {
        let mine = Attributes {
            share: Some(3),
            ..Default::default()
        };
        let base = Attributes {
            share: Some(1),
            max_kbyte: Some(KBytes(10)),
            ..Default::default()
        };
        let merged = mine.or(base);
        assert_eq!(
            (merged.share, merged.max_kbyte),
            (Some(3), Some(KBytes(10)))
        );
    }
}
