//! Typed readers of one TOML value, shared by the configuration and the slices file. Each reads
//! a value of its kind or reports, located as `path:line: key: message`, why it cannot; the
//! caller then keeps its default (the configuration) or skips the entry (the slices file).

use std::{ops::RangeInclusive, path::Path, path::PathBuf, time::Duration};

use ipnet::IpNet;
use toml_edit::{Item, TableLike, Value};

use crate::{
    config::problems::{Collector, plain_value},
    policy::rspec::Attributes,
    units::{BitsPerSec, ParseError, parse_duration},
};

/// A value that is not a usable rate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum RateError {
    /// A string that is not tc's rate notation.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A rate of zero: nothing would ever pass.
    #[error("must be above zero")]
    Zero,
    /// Neither a positive number nor a string.
    #[error("must be a rate: bit/s as a number, or a string like \"100mbit\"")]
    NotARate,
}

/// A rate: bit/s as a positive number, or tc's notation ("100mbit") as a string.
///
/// # Errors
/// Anything else, or a rate of zero.
pub(super) fn rate(v: &Value) -> Result<BitsPerSec, RateError> {
    match v {
        Value::Integer(i) if *i.value() > 0 => Ok(BitsPerSec(*i.value() as u64)),
        Value::String(s) => match s.value().parse::<BitsPerSec>()? {
            BitsPerSec(0) => Err(RateError::Zero),
            r => Ok(r),
        },
        _ => Err(RateError::NotARate),
    }
}

/// One key's value being read: what is wrong with it goes to the collector, under `key`.
pub(super) struct Field<'a, 'c> {
    /// Where problems go.
    pub(super) c: &'c mut Collector,
    /// The value.
    pub(super) item: &'a Item,
    /// Its key as reported ("node_cap", "slice[3].xid").
    pub(super) key: &'c str,
}

impl<'a, 'c> Field<'a, 'c> {
    /// `item`, the value of `key`, its problems reported to `c`.
    pub(super) fn new(c: &'c mut Collector, item: &'a Item, key: &'c str) -> Self {
        Field { c, item, key }
    }

    /// Reports `message` against this key.
    pub(super) fn problem(&mut self, message: impl Into<String>) {
        self.c.add(Some(self.item), self.key, message);
    }

    /// Reports `message` and reads nothing.
    fn refuse<T>(&mut self, message: impl Into<String>) -> Option<T> {
        self.problem(message);
        None
    }

    /// A string.
    pub(super) fn string(&mut self) -> Option<&'a str> {
        let item = self.item;
        item.as_str().or_else(|| self.refuse("must be a string"))
    }

    /// `true` or `false`.
    pub(super) fn boolean(&mut self) -> Option<bool> {
        let item = self.item;
        item.as_bool()
            .or_else(|| self.refuse("must be true or false"))
    }

    /// A path, taken from `base` when relative.
    pub(super) fn path(&mut self, base: &Path) -> Option<PathBuf> {
        self.string().map(|s| base.join(s))
    }

    /// A rate (see [`rate`]).
    pub(super) fn rate(&mut self) -> Option<BitsPerSec> {
        match self.item.as_value().map(rate) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => self.refuse(e.to_string()),
            None => self.refuse("must be a rate"),
        }
    }

    /// A duration: a number of seconds, or a string like "1d" (see [`parse_duration`]).
    pub(super) fn duration(&mut self) -> Option<Duration> {
        let parsed = match self.item.as_value() {
            Some(Value::Integer(i)) => parse_duration(&i.value().to_string()),
            Some(Value::String(s)) => parse_duration(s.value()),
            _ => return self.refuse("must be a duration like \"1d\" or \"90s\""),
        };
        match parsed {
            Ok(d) => Some(d),
            Err(e) => self.refuse(e.to_string()),
        }
    }

    /// A whole number in `range`; `message` says what is expected when it is not one.
    pub(super) fn integer(
        &mut self,
        range: RangeInclusive<i64>,
        message: impl FnOnce() -> String,
    ) -> Option<i64> {
        match self.item.as_integer() {
            Some(n) if range.contains(&n) => Some(n),
            _ => self.refuse(message()),
        }
    }

    /// A list of CIDR prefixes, each truncated to its network; every element that is not one
    /// is reported (`hint` shows the form) and left out.
    pub(super) fn cidrs(&mut self, hint: &str) -> Vec<IpNet> {
        let Some(list) = self.item.as_array() else {
            self.problem("must be a list of CIDR prefixes");
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in list.iter() {
            match v.as_str().map(str::parse::<IpNet>) {
                Some(Ok(net)) => out.push(net.trunc()),
                Some(Err(_)) | None => self.c.add_value(
                    v,
                    self.key,
                    // One line per problem, whatever the string held.
                    format!("{} is not a CIDR prefix{hint}", v.to_string().trim())
                        .replace('\n', " "),
                ),
            }
        }
        out
    }

    /// A table; `message` says what it should hold when it is not one.
    pub(super) fn table(&mut self, message: &str) -> Option<&'a dyn TableLike> {
        let item = self.item;
        item.as_table_like().or_else(|| self.refuse(message))
    }
}

/// Reads the slice attributes of table `t` into `into`, each key reported as `{prefix}{key}`;
/// the keys in `skip` are not attributes (a slice's `name`, `xid`, `sources`).
pub(super) fn attributes(
    c: &mut Collector,
    t: &dyn TableLike,
    prefix: &str,
    skip: &[&str],
    into: &mut Attributes,
) {
    for (k, v) in t.iter().filter(|(k, _)| !skip.contains(k)) {
        let key = format!("{prefix}{k}");
        match v.as_value() {
            Some(val) => {
                if let Err(e) = into.set(k, &plain_value(val)) {
                    c.add(Some(v), &key, e.to_string());
                }
            }
            None => c.add(Some(v), &key, "must be a value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_positive_numbers_or_tc_notation() {
        let v = |s: &str| s.parse::<Value>().unwrap();
        assert_eq!(rate(&v("2000")), Ok(BitsPerSec(2000)));
        assert_eq!(rate(&v("\"1.5mbit\"")), Ok(BitsPerSec(1_500_000)));
        assert_eq!(rate(&v("\"0kbit\"")), Err(RateError::Zero));
        assert_eq!(rate(&v("0")), Err(RateError::NotARate));
        assert_eq!(
            rate(&v("true")).unwrap_err().to_string(),
            "must be a rate: bit/s as a number, or a string like \"100mbit\""
        );
        assert!(
            rate(&v("\"fast\""))
                .unwrap_err()
                .to_string()
                .starts_with("invalid rate 'fast', which should be")
        );
    }
}
