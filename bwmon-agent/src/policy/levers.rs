//! The operator's levers on one slice, for its current period only: extra budget (a grant),
//! a ceiling on top of the policy (a limit), and starting its period afresh (a reset). Pure:
//! the grant and the limit are applied to the slice's limits at every sync and end with the
//! period they were given in; a reset is a new record.

use std::fmt;

use crate::{
    class::{PerClass, TrafficClass},
    policy::{ClassRecord, Limits, Record},
    time::{UnixSecs, calendar::Calendar},
    units::{BWMIN, BitsPerSec, Bytes},
};

/// What the operator changed on a slice for one period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Levers {
    /// The period they belong to (its start); in any other they are void.
    pub(crate) period_start: UnixSecs,
    /// Extra budget per class, added to the budget and to the threshold.
    pub(crate) grant: PerClass<Bytes>,
    /// Operator ceiling per class, on top of the policy's.
    pub(crate) limit: PerClass<Option<BitsPerSec>>,
}

/// One pull of a lever, as asked over the control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Lever {
    /// More budget for `class` in this period.
    Grant {
        /// The class.
        class: TrafficClass,
        /// How much more.
        amount: Bytes,
    },
    /// Hold `class` at or below `rate` until cleared (`None`) or the period ends.
    Limit {
        /// The class.
        class: TrafficClass,
        /// The ceiling; `None` clears it.
        rate: Option<BitsPerSec>,
    },
    /// Start the slice's period now.
    Reset,
}

/// Why a lever was not pulled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LeverError {
    /// A grant of nothing.
    #[error("a grant must be more than 0 bytes")]
    ZeroGrant,
    /// A limit below what HTB can hold.
    #[error("a limit must be at least {BWMIN} (got {0})")]
    LimitTooLow(BitsPerSec),
}

impl fmt::Display for Lever {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lever::Grant { class, amount } => write!(f, "grant {amount} ({})", class.name()),
            Lever::Limit {
                class,
                rate: Some(r),
            } => write!(f, "limit {r} ({})", class.name()),
            Lever::Limit { class, rate: None } => {
                write!(f, "clear the limit ({})", class.name())
            }
            Lever::Reset => write!(f, "reset the period"),
        }
    }
}

impl Levers {
    /// No lever pulled yet in the period starting at `period_start`.
    pub(crate) fn new(period_start: UnixSecs) -> Levers {
        Levers {
            period_start,
            ..Levers::default()
        }
    }

    /// Whether nothing is granted or limited.
    pub(crate) fn is_empty(&self) -> bool {
        self.grant.iter().all(|(_, g)| g.0 == 0) && self.limit.iter().all(|(_, l)| l.is_none())
    }

    /// Whether these levers count for `record` at `now`: only in the period they were given in,
    /// and only while that period has not expired (the sync that starts the next one drops
    /// them).
    pub(crate) fn in_force<C: Calendar>(&self, record: &Record, now: UnixSecs, period: C) -> bool {
        self.period_start == record.period_start && !record.expired(now, period)
    }

    /// `limits` with the grants added and the limits applied. A limit below the guaranteed
    /// rate lowers that too (HTB needs rate ≤ ceil).
    pub(crate) fn apply(&self, limits: &Limits) -> Limits {
        limits.map(|class, l| {
            let grant = self.grant.of(class).0;
            let mut l = l;
            l.max = Bytes(l.max.0.saturating_add(grant));
            l.thresh = Bytes(l.thresh.0.saturating_add(grant));
            if let Some(cap) = *self.limit.of(class) {
                l.max_rate = l.max_rate.min(cap);
                l.min_rate = l.min_rate.min(l.max_rate);
            }
            l
        })
    }

    /// These levers after `lever` (a grant or a limit; a reset is [`reset`]).
    ///
    /// # Errors
    /// A grant of zero bytes, a limit below bwmin.
    pub(crate) fn pull(mut self, lever: Lever) -> Result<Levers, LeverError> {
        match lever {
            Lever::Grant { class, amount } => {
                if amount.0 == 0 {
                    return Err(LeverError::ZeroGrant);
                }
                let g = self.grant.of_mut(class);
                *g = Bytes(g.0.saturating_add(amount.0));
            }
            Lever::Limit { class, rate } => {
                if let Some(r) = rate
                    && r < BWMIN
                {
                    return Err(LeverError::LimitTooLow(r));
                }
                *self.limit.of_mut(class) = rate;
            }
            Lever::Reset => return Ok(Levers::new(self.period_start)),
        }
        Ok(self)
    }
}

impl Limits {
    /// The limits in force for a slice whose limits are `self` before levers and whose record
    /// is `record`: with its `levers` applied when they are [in force](Levers::in_force).
    pub(crate) fn in_force<C: Calendar>(
        &self,
        levers: Option<&Levers>,
        record: &Record,
        now: UnixSecs,
        period: C,
    ) -> Limits {
        levers
            .filter(|lv| lv.in_force(record, now, period))
            .map_or(*self, |lv| lv.apply(self))
    }
}

/// `record` with its period started at `now`: nothing used, not noticed nor warned, the
/// counters' last values kept (what they count from now on is the new period's). The next
/// decision sets the ceilings.
pub(crate) fn reset(record: &Record, now: UnixSecs) -> Record {
    Record {
        period_start: now,
        classes: record.classes.map(|_, c| ClassRecord {
            used: Bytes(0),
            ..c
        }),
        emailed: false,
        warned: PerClass::default(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::policy::{Capping, decide, tests::limits};

    /// General bytes `n`, no exempt ones.
    fn general(n: u64) -> crate::policy::Counters {
        PerClass {
            general: n,
            exempt: 0,
        }
    }

    #[test]
    fn a_grant_lifts_a_capped_slice_and_the_arithmetic_uses_the_new_total() {
        const MIB: u64 = 1 << 20;
        let l = limits(1024 * 1024);
        let start = crate::policy::start(PerClass::default(), &l, 0);
        // 1 GiB budget: 900 MiB used at half time is past the threshold.
        let capped = decide(
            &start,
            general(900 * MIB),
            &l,
            43_200,
            86_400,
            Capping::Policy,
        );
        assert!(capped.record.capped(TrafficClass::General, &l));
        let lv = Levers::new(0)
            .pull(Lever::Grant {
                class: TrafficClass::General,
                amount: Bytes(10 << 30),
            })
            .unwrap();
        let more = lv.apply(&l);
        assert_eq!(more.general.max, Bytes(11 << 30));
        assert_eq!(more.exempt, l.exempt, "the other class is untouched");
        let lifted = decide(
            &capped.record,
            general(900 * MIB),
            &more,
            43_201,
            86_400,
            Capping::Policy,
        );
        assert!(!lifted.record.capped(TrafficClass::General, &more));
        // Past the new threshold, the rest of the new total is spread over what is left.
        let used = more.general.thresh.0 + 1;
        let late = decide(
            &lifted.record,
            general(used),
            &more,
            43_202,
            86_400,
            Capping::Policy,
        );
        let expect = (more.general.max.0 - used) * 8 / (86_400 - 43_202);
        assert_eq!(late.record.classes.general.ceil, BitsPerSec(expect));
    }

    #[test]
    fn a_limit_holds_the_ceiling_and_clears() {
        let l = limits(1024);
        let lv = Levers::new(0)
            .pull(Lever::Limit {
                class: TrafficClass::General,
                rate: Some(BitsPerSec(2_000_000)),
            })
            .unwrap();
        let held = lv.apply(&l);
        assert_eq!(held.general.max_rate, BitsPerSec(2_000_000));
        assert!(held.general.min_rate <= held.general.max_rate);
        let cleared = lv
            .pull(Lever::Limit {
                class: TrafficClass::General,
                rate: None,
            })
            .unwrap();
        assert!(cleared.is_empty());
        assert_eq!(cleared.apply(&l), l);
    }

    #[test]
    fn bad_pulls_are_refused() {
        let lv = Levers::new(0);
        let zero = Lever::Grant {
            class: TrafficClass::Exempt,
            amount: Bytes(0),
        };
        assert_eq!(lv.pull(zero), Err(LeverError::ZeroGrant));
        let low = Lever::Limit {
            class: TrafficClass::General,
            rate: Some(BitsPerSec(1)),
        };
        assert!(matches!(lv.pull(low), Err(LeverError::LimitTooLow(_))));
    }

    #[test]
    fn a_reset_starts_the_period_and_keeps_the_counters_baseline() {
        let l = limits(1024);
        let r = crate::policy::start(PerClass::from_fn(|_| 5_000), &l, 100);
        let d = decide(
            &r,
            PerClass::from_fn(|_| 9_000),
            &l,
            200,
            86_400,
            Capping::Policy,
        );
        let fresh = reset(&d.record, 300);
        assert_eq!(fresh.period_start, 300);
        assert_eq!(fresh.used(TrafficClass::General), Bytes(0));
        assert!(!fresh.emailed);
        // Only what is counted after the reset is the new period's.
        let next = decide(
            &fresh,
            PerClass::from_fn(|_| 9_500),
            &l,
            301,
            86_400,
            Capping::Policy,
        );
        assert_eq!(next.record.used(TrafficClass::General), Bytes(500));
    }

    #[test]
    fn levers_count_only_in_their_own_period_and_while_it_lasts() {
        let l = limits(1024);
        let record = crate::policy::start(PerClass::default(), &l, 1000);
        let lv = Levers::new(1000)
            .pull(Lever::Grant {
                class: TrafficClass::General,
                amount: Bytes(1 << 20),
            })
            .unwrap();
        let granted = l.general.max.0 + (1 << 20);
        assert_eq!(
            l.in_force(Some(&lv), &record, 1050, 100).general.max.0,
            granted
        );
        assert_eq!(
            l.in_force(Some(&lv), &record, 1100, 100),
            l,
            "the period expired"
        );
        let old = Levers {
            period_start: 900,
            ..lv
        };
        assert_eq!(
            l.in_force(Some(&old), &record, 1050, 100),
            l,
            "another period's"
        );
        assert_eq!(l.in_force(None, &record, 1050, 100), l);
    }

    proptest! {
        #[test]
        fn levers_never_loosen_a_limit_nor_shrink_a_budget(
            max_kbyte in 1u64..10_000_000,
            grant in 0u64..u64::MAX / 2,
            cap in 8_000u64..10_000_000_000,
        ) {
            let l = limits(max_kbyte);
            let mut lv = Levers::new(0);
            lv.grant.general = Bytes(grant);
            lv.limit.general = Some(BitsPerSec(cap));
            let a = lv.apply(&l);
            prop_assert!(a.general.max >= l.general.max);
            prop_assert!(a.general.thresh >= l.general.thresh);
            prop_assert!(a.general.max_rate <= l.general.max_rate);
            prop_assert!(a.general.max_rate <= BitsPerSec(cap));
            prop_assert!(a.general.min_rate <= a.general.max_rate);
        }
    }
}
