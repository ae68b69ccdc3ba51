//! Warnings before the cap (`warn_at`): levels of a class's budget, in whole percent, each said
//! at most once per period and in rising order. Pure, like the rest of the policy: which level
//! a class crosses is a function of what it used, its budget in force (grants included) and
//! the levels it was already warned of in the period (kept in its [`Record`](super::Record),
//! cleared with the period).
//!
//! Only a level *above* every level already said is said: a grant that raises the budget
//! lowers the share used, and a level crossed before the grant stays said (it is not said
//! again when the share climbs back to it); a level added by a reload below one already said
//! is not said in this period. Several levels crossed at once are said as the highest one: it
//! tells the most, and the lower ones are then behind the slice.

use std::{fmt, str::FromStr};

use crate::units::Bytes;

/// A warning level: a whole percentage of a budget, 1 to 100.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub(crate) struct Percent(u8);

/// A level that is not a whole percentage from 1 to 100.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a level like \"80%\" (a whole percentage of the budget, 1% to 100%)")]
pub(crate) struct PercentError(pub(crate) String);

impl Percent {
    /// `p` %, when it is from 1 to 100.
    pub(crate) fn new(p: u8) -> Option<Percent> {
        (1..=100).contains(&p).then_some(Percent(p))
    }

    /// The number of percent.
    pub(crate) const fn get(self) -> u8 {
        self.0
    }

    /// Whether `used` has reached this share of `budget` (a budget of nothing has no shares).
    pub(crate) fn reached(self, used: Bytes, budget: Bytes) -> bool {
        budget.0 > 0 && u128::from(used.0) * 100 >= u128::from(budget.0) * u128::from(self.0)
    }
}

impl FromStr for Percent {
    type Err = PercentError;

    /// "80%" (spaces around the number allowed: "80 %").
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refuse = || PercentError(s.to_owned());
        let digits = s.trim().strip_suffix('%').ok_or_else(refuse)?.trim_end();
        let n: u8 = digits.parse().map_err(|_| refuse())?;
        Percent::new(n).ok_or_else(refuse)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} %", self.0)
    }
}

/// A set of levels: `warn_at`, or the levels a class was warned of in a period. One bit per
/// percent, so a record stays `Copy` and a few bytes on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct Levels(u128);

impl Levels {
    /// These levels and `p`.
    pub(crate) const fn with(self, p: Percent) -> Levels {
        Levels(self.0 | 1 << p.0)
    }

    /// Whether `p` is one of them.
    pub(crate) const fn contains(self, p: Percent) -> bool {
        self.0 & 1 << p.0 != 0
    }

    /// Whether there are none.
    pub(crate) const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The levels, lowest first.
    pub(crate) fn iter(self) -> impl Iterator<Item = Percent> {
        (1..=100u8).map(Percent).filter(move |p| self.contains(*p))
    }

    /// The highest level, if any.
    pub(crate) fn highest(self) -> Option<Percent> {
        self.iter().last()
    }

    /// The levels as numbers of percent, lowest first (for the documents bwmon prints).
    pub(crate) fn percents(self) -> Vec<u8> {
        self.iter().map(Percent::get).collect()
    }
}

impl FromIterator<Percent> for Levels {
    fn from_iter<I: IntoIterator<Item = Percent>>(iter: I) -> Self {
        iter.into_iter().fold(Levels::default(), Levels::with)
    }
}

impl fmt::Display for Levels {
    /// "80 %, 95 %", or "none".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let said: Vec<String> = self.iter().map(|p| p.to_string()).collect();
        f.write_str(&said.join(", "))
    }
}

/// The level a class crosses now: the highest of `warn_at` that `used` has reached of
/// `budget`, when it is above every level already `warned` in this period.
pub(crate) fn crossed(
    warn_at: Levels,
    warned: Levels,
    used: Bytes,
    budget: Bytes,
) -> Option<Percent> {
    let reached = warn_at.iter().filter(|p| p.reached(used, budget)).last()?;
    match warned.highest() {
        Some(said) if said >= reached => None,
        _ => Some(reached),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn levels(ps: &[u8]) -> Levels {
        ps.iter().map(|p| Percent::new(*p).unwrap()).collect()
    }

    #[test]
    fn levels_are_whole_percentages_from_1_to_100_and_errors_quote_the_input() {
        assert_eq!("80%".parse(), Ok(Percent(80)));
        assert_eq!(" 95 % ".parse(), Ok(Percent(95)));
        assert_eq!("100%".parse(), Ok(Percent(100)));
        for bad in ["0%", "101%", "80", "80.5%", "-5%", "%", "eighty%"] {
            let e = bad.parse::<Percent>().unwrap_err();
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn a_set_of_levels_lists_them_lowest_first() {
        let l = levels(&[95, 1, 80, 100]);
        assert_eq!(l.percents(), [1, 80, 95, 100]);
        assert_eq!(l.highest(), Some(Percent(100)));
        assert_eq!(l.to_string(), "1 %, 80 %, 95 %, 100 %");
        assert_eq!(Levels::default().to_string(), "none");
        assert!(Levels::default().highest().is_none());
    }

    #[test]
    fn the_highest_level_reached_is_said_once_and_never_one_below_it() {
        let warn_at = levels(&[50, 80, 95]);
        let budget = Bytes(1000);
        assert_eq!(
            crossed(warn_at, Levels::default(), Bytes(499), budget),
            None
        );
        assert_eq!(
            crossed(warn_at, Levels::default(), Bytes(500), budget),
            Some(Percent(50))
        );
        // 50 and 80 at once: 80.
        assert_eq!(
            crossed(warn_at, Levels::default(), Bytes(900), budget),
            Some(Percent(80))
        );
        let said = levels(&[80]);
        assert_eq!(crossed(warn_at, said, Bytes(900), budget), None);
        assert_eq!(
            crossed(warn_at, said, Bytes(950), budget),
            Some(Percent(95))
        );
        // A grant doubled the budget: 80 % of it again is not said again.
        assert_eq!(crossed(warn_at, said, Bytes(1600), Bytes(2000)), None);
        assert_eq!(
            crossed(warn_at, said, Bytes(1900), Bytes(2000)),
            Some(Percent(95))
        );
        // No budget, no share of it.
        assert_eq!(
            crossed(warn_at, Levels::default(), Bytes(5), Bytes(0)),
            None
        );
    }

    proptest! {
        #[test]
        fn within_a_period_each_level_is_said_at_most_once_and_in_rising_order(
            warn in proptest::collection::vec(1u8..=100, 0..6),
            steps in proptest::collection::vec((0u64..400, 0u64..300), 1..60),
        ) {
            // Use that grows and a budget that grants raise, step by step.
            let warn_at = levels(&warn);
            let (mut used, mut budget, mut warned) = (0u64, 1000u64, Levels::default());
            let mut said = Vec::new();
            for (sent, grant) in steps {
                used += sent;
                budget += if grant > 250 { grant } else { 0 };
                if let Some(p) = crossed(warn_at, warned, Bytes(used), Bytes(budget)) {
                    prop_assert!(warn_at.contains(p));
                    prop_assert!(p.reached(Bytes(used), Bytes(budget)));
                    prop_assert!(!warned.contains(p), "said twice: {p}");
                    prop_assert!(said.last().is_none_or(|l: &Percent| *l < p), "{said:?} then {p}");
                    warned = warned.with(p);
                    said.push(p);
                }
            }
        }
    }
}
