//! How a contended cap divides among the leaves that send, as HTB divides it: pure arithmetic,
//! no clock, no I/O.
//!
//! Each leaf first gets its guaranteed rate (`net_min_rate`, the leaf's HTB rate: HTB sends it
//! before anything borrowed); what is left of the cap is lent in proportion to the shares (HTB's
//! deficit round robin, by quanta of `share` × [`crate::htb::tree::QUANTUM_PER_SHARE`]), a leaf
//! never past its ceiling, and what a leaf held by its ceiling cannot take goes to the others:
//! weighted max-min fairness on what is above the guaranteed rates ("water-filling"). The
//! result is what each leaf gets while every one of them sends as much as it may — what it is
//! guaranteed now.

use crate::units::BitsPerSec;

/// What one sending leaf brings to the division of its class's cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    /// Its guaranteed rate (the leaf's HTB rate).
    pub(crate) min: BitsPerSec,
    /// Its ceiling in force (lowered when capped, or by the operator).
    pub(crate) ceil: BitsPerSec,
    /// Its share of what is borrowed.
    pub(crate) share: u32,
}

impl Claim {
    /// How much it may take above its guaranteed rate (a ceiling below it counts as the rate:
    /// HTB sends the guaranteed rate whatever the ceiling).
    fn room(&self) -> u64 {
        self.ceil.0.saturating_sub(self.min.0)
    }
}

/// Each claim's part of `cap`, in `claims`' order: its guaranteed rate, plus what is left of
/// the cap in proportion to its share, up to its ceiling, what a leaf at its ceiling cannot
/// take going to the others. The parts never add up to more than the cap unless the
/// guaranteed rates alone do (HTB sends those whatever the parent's ceiling: then each gets its
/// guaranteed rate, nothing more). Rounding is down, so a part is never more than its due.
pub(crate) fn divide(cap: BitsPerSec, claims: &[Claim]) -> Vec<BitsPerSec> {
    let mut parts: Vec<u64> = claims.iter().map(|c| c.min.0).collect();
    let guaranteed = parts.iter().fold(0u64, |sum, m| sum.saturating_add(*m));
    let mut spare = u128::from(cap.0.saturating_sub(guaranteed));
    // Those that take part in what is lent, the ones their ceiling holds first: room / share
    // ascending (compared as room_a × share_b < room_b × share_a, exactly).
    let mut lent: Vec<usize> = (0..claims.len())
        .filter(|i| claims[*i].share > 0 && claims[*i].room() > 0)
        .collect();
    lent.sort_by(|a, b| {
        let (ca, cb) = (&claims[*a], &claims[*b]);
        (u128::from(ca.room()) * u128::from(cb.share))
            .cmp(&(u128::from(cb.room()) * u128::from(ca.share)))
    });
    let mut shares: u128 = lent.iter().map(|i| u128::from(claims[*i].share)).sum();
    let mut rest = lent.as_slice();
    // Those whose room is below their part of what is left take their room; the others share
    // what remains after them.
    while let Some((&i, tail)) = rest.split_first() {
        let c = &claims[i];
        let room = u128::from(c.room());
        if room * shares > spare * u128::from(c.share) {
            break;
        }
        parts[i] = c.ceil.0;
        spare -= room;
        shares -= u128::from(c.share);
        rest = tail;
    }
    for &i in rest {
        let part = spare * u128::from(claims[i].share) / shares;
        // Below the room (checked above), so it fits.
        parts[i] = parts[i].saturating_add(u64::try_from(part).unwrap_or(u64::MAX));
    }
    parts.into_iter().map(BitsPerSec).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CAP: BitsPerSec = BitsPerSec(40_000_000);

    fn claim(min: u64, ceil: u64, share: u32) -> Claim {
        Claim {
            min: BitsPerSec(min),
            ceil: BitsPerSec(ceil),
            share,
        }
    }

    fn free(share: u32) -> Claim {
        claim(1000, CAP.0, share)
    }

    /// In kbit/s, rounded.
    fn kbit(parts: &[BitsPerSec]) -> Vec<u64> {
        parts.iter().map(|p| (p.0 + 500) / 1000).collect()
    }

    #[test]
    fn shares_divide_the_cap_above_the_guaranteed_rates() {
        // 1 : 3 of the 39,998 kbit/s left over the two 1 kbit/s guarantees.
        let parts = divide(CAP, &[free(1), free(3)]);
        assert_eq!(parts, [BitsPerSec(10_000_500), BitsPerSec(29_999_500)]);
        assert_eq!(
            kbit(&divide(CAP, &[free(1), free(1), free(2)])),
            [10_000, 10_000, 20_000]
        );
    }

    #[test]
    fn a_lone_leaf_gets_the_whole_cap() {
        assert_eq!(divide(CAP, &[free(1)]), [CAP]);
        assert_eq!(divide(CAP, &[]), []);
    }

    #[test]
    fn what_a_capped_leaf_cannot_take_goes_to_the_others_by_their_shares() {
        // The middle one is held at 4 mbit/s: the 36 left go 1 : 2.
        let parts = divide(
            CAP,
            &[free(1), claim(1000, 4_000_000, 5), claim(1000, CAP.0, 2)],
        );
        assert_eq!(
            parts,
            [
                BitsPerSec(12_000_333),
                BitsPerSec(4_000_000),
                BitsPerSec(23_999_666)
            ]
        );
    }

    #[test]
    fn a_guaranteed_rate_comes_first_and_the_rest_goes_by_shares() {
        // 10 mbit/s guaranteed, then 30 left (minus the other's 1 kbit/s) go 1 : 1.
        let parts = divide(CAP, &[claim(10_000_000, CAP.0, 1), free(1)]);
        assert_eq!(parts, [BitsPerSec(24_999_500), BitsPerSec(15_000_500)]);
    }

    #[test]
    fn guaranteed_rates_above_the_cap_are_each_kept_and_nothing_is_lent() {
        let big = claim(15_000_000, CAP.0, 1);
        assert_eq!(
            divide(CAP, &[big, big, big]),
            [BitsPerSec(15_000_000); 3],
            "HTB sends guaranteed rates whatever the parent's ceiling"
        );
    }

    #[test]
    fn a_ceiling_below_the_guaranteed_rate_keeps_the_rate() {
        let parts = divide(CAP, &[claim(5_000_000, 1_000_000, 1), free(1)]);
        assert_eq!(parts[0], BitsPerSec(5_000_000));
        assert_eq!(parts[1], BitsPerSec(35_000_000));
    }

    #[test]
    fn when_every_leaf_is_held_by_its_ceiling_the_cap_is_not_reached() {
        let parts = divide(CAP, &[claim(1000, 1_000_000, 1), claim(1000, 2_000_000, 9)]);
        assert_eq!(parts, [BitsPerSec(1_000_000), BitsPerSec(2_000_000)]);
    }

    fn claims() -> impl Strategy<Value = Vec<Claim>> {
        proptest::collection::vec(
            (1_000u64..20_000_000, 1_000u64..200_000_000, 0u32..20)
                .prop_map(|(min, ceil, share)| claim(min, ceil, share)),
            0..12,
        )
    }

    proptest! {
        #[test]
        fn parts_fit_the_cap_and_each_leaf_its_bounds(cap in 0u64..100_000_000, claims in claims()) {
            let parts = divide(BitsPerSec(cap), &claims);
            let guaranteed: u64 = claims.iter().map(|c| c.min.0).sum();
            let total: u64 = parts.iter().map(|p| p.0).sum();
            prop_assert!(total <= cap.max(guaranteed), "{total} > {cap}");
            for (c, p) in claims.iter().zip(&parts) {
                prop_assert!(*p >= c.min);
                prop_assert!(*p <= c.ceil.max(c.min));
            }
            // Work-conserving: the cap is used up (to rounding) unless every leaf that may
            // take more is at its ceiling.
            let open = claims.iter().zip(&parts).any(|(c, p)| c.share > 0 && *p < c.ceil);
            if open && guaranteed < cap {
                prop_assert!(total + claims.len() as u64 >= cap, "{total} of {cap}");
            }
        }

        #[test]
        fn unconstrained_leaves_get_parts_in_proportion_to_their_shares(
            shares in proptest::collection::vec(1u32..20, 1..12),
        ) {
            let claims: Vec<Claim> = shares.iter().map(|s| claim(0, CAP.0, *s)).collect();
            let parts = divide(CAP, &claims);
            let total: u64 = shares.iter().map(|s| u64::from(*s)).sum();
            for (s, p) in shares.iter().zip(&parts) {
                let due = CAP.0 * u64::from(*s) / total;
                prop_assert!(p.0.abs_diff(due) <= 1, "{} vs {due}", p.0);
            }
        }

        #[test]
        fn more_cap_never_gives_a_leaf_less(cap in 0u64..100_000_000, more in 0u64..10_000_000, claims in claims()) {
            let before = divide(BitsPerSec(cap), &claims);
            let after = divide(BitsPerSec(cap + more), &claims);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(a.0 + 1 >= b.0, "{} then {}", b.0, a.0);
                // Stable: no part moves by more than the cap did (to rounding).
                prop_assert!(a.0 <= b.0 + more + 1);
            }
        }

        #[test]
        fn another_sender_never_gives_the_others_more(cap in 0u64..100_000_000, claims in claims(), extra in claims()) {
            let before = divide(BitsPerSec(cap), &claims);
            let mut all = claims.clone();
            all.extend(extra.into_iter().take(1));
            let after = divide(BitsPerSec(cap), &all);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(a.0 <= b.0 + 1, "{} then {}", b.0, a.0);
            }
        }

        #[test]
        fn a_larger_share_never_gets_less(cap in 0u64..100_000_000, claims in claims(), which in 0usize..12, more in 1u32..10) {
            prop_assume!(!claims.is_empty());
            let i = which % claims.len();
            let before = divide(BitsPerSec(cap), &claims);
            let mut grown = claims.clone();
            grown[i].share += more;
            let after = divide(BitsPerSec(cap), &grown);
            prop_assert!(after[i].0 + 1 >= before[i].0);
        }
    }
}
