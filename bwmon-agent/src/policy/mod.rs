//! The budget policy: pure arithmetic on counters and time (no clock, no I/O), the seed's rules
//! with its unit bugs fixed. General and exempt traffic are decided alike, independently.
//!
//! Every sync, for each slice and class: usage is **carried** — the record keeps what the
//! slice used this period and the last counter seen, and adds `counter − last` when the counter
//! grew. When the kernel's counters restarted from zero (reboot, lost pins, teardown: the
//! caller knows, see [`Record::restarted`]) all of the counter is new; a reboot loses at most
//! what was sent since the last sync. A counter a little below the last one without a restart
//! is a packet charged at one sync and dropped before the next: nothing is added until the
//! counter passes the last value again. Only the end of the
//! period is a **reset** (new period, `used = 0`, ceilings back to the max rates, `emailed`
//! and the warnings said cleared); a clock earlier than the period start holds the period, it
//! never resets it — up to one period: a start later than `now` + its period's length is
//! impossible (the clock ran ahead when the period began, and came back), and such a record
//! starts a new period at once, carrying its usage (see [`ClockJump`]). A cap therefore outlasts
//! a clock set right by at most the hold (one period) and the period that follows it. A
//! period's end is computed from its start by the calendar, never stored, so it cannot lie
//! beyond its length.
//! Otherwise an **update**: once `used ≥ thresh` the ceiling becomes `(max − used) × 8 /
//! (period − elapsed)` bit/s, never below the min rate nor bwmin, never above the max rate. A
//! slice capped in a period is noticed exactly once in that period, whichever class tripped.

pub(crate) mod levers;
pub(crate) mod received;
pub(crate) mod rspec;
pub(crate) mod shares;
pub(crate) mod warnings;
use crate::{
    class::{PerClass, TrafficClass},
    policy::{rspec::Attributes, warnings::Levels},
    time::{UnixSecs, calendar::Calendar},
    units::{BWMIN, BitsPerSec, Bytes, KBytes, KbitPerSec},
};

/// The seed's default volume per period: 5.4 GiB.
pub(crate) const DEFAULT_MAX_KBYTE: KBytes = KBytes(5_662_310);
/// The seed's default exempt volume per period: 16.4 GiB.
pub(crate) const DEFAULT_I2_MAX_KBYTE: KBytes = KBytes(17_196_646);

/// The node's limits, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    /// Ceiling of all general traffic.
    pub(crate) node_cap: BitsPerSec,
    /// Ceiling of all exempt traffic.
    pub(crate) exempt_max: BitsPerSec,
}

/// One class's resolved limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ClassLimits {
    /// Guaranteed rate (HTB rate).
    pub(crate) min_rate: BitsPerSec,
    /// Ceiling when not capped.
    pub(crate) max_rate: BitsPerSec,
    /// Volume per period.
    pub(crate) max: Bytes,
    /// Volume after which the ceiling is lowered.
    pub(crate) thresh: Bytes,
    /// HTB share (the leaf's quantum is proportional to it).
    pub(crate) share: u32,
}

/// A slice's resolved limits for both classes.
pub(crate) type Limits = PerClass<ClassLimits>;

impl Limits {
    /// A slice's limits before the operator's levers: its own attributes over the config's
    /// `[defaults]`, resolved against the node. Every reader of a slice's limits starts here.
    pub(crate) fn base(attrs: &Attributes, defaults: &Attributes, node: &Node) -> Limits {
        Limits::resolve(&attrs.or(*defaults), node)
    }

    /// Resolves attributes (already merged with the config's defaults) against the node:
    /// defaults of the seed, `net_min_rate` clamped to 25 % of the node cap, then
    /// bwmin ≤ min ≤ max ≤ cap (exempt: ≤ exempt max); thresholds default to 80 % of the max
    /// and never exceed it.
    pub(crate) fn resolve(a: &Attributes, node: &Node) -> Limits {
        let clamp_rates = |min: BitsPerSec, max: BitsPerSec, cap: BitsPerSec| {
            let max = max.min(cap).max(BWMIN);
            let min = min.max(BWMIN).min(max);
            (min, max)
        };
        let quarter_cap = BitsPerSec(node.node_cap.0 / 4);
        let (g_min, g_max) = clamp_rates(
            a.min_rate
                .map(KbitPerSec::bits)
                .unwrap_or(BWMIN)
                .min(quarter_cap),
            a.max_rate.map(KbitPerSec::bits).unwrap_or(node.node_cap),
            node.node_cap,
        );
        let (e_min, e_max) = clamp_rates(
            a.i2_min_rate.map(KbitPerSec::bits).unwrap_or(BWMIN),
            a.i2_max_rate
                .map(KbitPerSec::bits)
                .unwrap_or(node.exempt_max),
            node.exempt_max,
        );
        let volume = |max: Option<KBytes>, thresh: Option<KBytes>, default: KBytes| {
            let max = max.unwrap_or(default);
            let thresh = thresh.unwrap_or(KBytes(max.0 / 5 * 4 + max.0 % 5 * 4 / 5));
            (max.bytes(), thresh.min(max).bytes())
        };
        let (g_vol, g_thresh) = volume(a.max_kbyte, a.thresh_kbyte, DEFAULT_MAX_KBYTE);
        let (e_vol, e_thresh) = volume(a.i2_max_kbyte, a.i2_thresh_kbyte, DEFAULT_I2_MAX_KBYTE);
        PerClass {
            general: ClassLimits {
                min_rate: g_min,
                max_rate: g_max,
                max: g_vol,
                thresh: g_thresh,
                share: a.share.unwrap_or(1),
            },
            exempt: ClassLimits {
                min_rate: e_min,
                max_rate: e_max,
                max: e_vol,
                thresh: e_thresh,
                share: a.i2_share.unwrap_or(1),
            },
        }
    }
}

/// A class's accounting within the current period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ClassRecord {
    /// Bytes charged in this period so far.
    pub(crate) used: Bytes,
    /// The counter's value at the last sync.
    pub(crate) last: u64,
    /// The ceiling in force.
    pub(crate) ceil: BitsPerSec,
}

impl ClassRecord {
    /// The record with `counter` carried into it: what the counter grew by since the last
    /// sync is added. A counter below the last one (a packet charged, then dropped) adds
    /// nothing and leaves `last`, so those bytes are not charged twice.
    pub(crate) fn carried(self, counter: u64) -> ClassRecord {
        if counter < self.last {
            return self;
        }
        ClassRecord {
            used: Bytes(self.used.0.saturating_add(counter - self.last)),
            last: counter,
            ceil: self.ceil,
        }
    }
}

/// A slice's accounting within the current period (persisted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    /// When the period began.
    pub(crate) period_start: UnixSecs,
    /// Per traffic class.
    pub(crate) classes: PerClass<ClassRecord>,
    /// A notice was sent (or queued) for this period.
    pub(crate) emailed: bool,
    /// The warning levels said in this period, per class (see [`warnings`]).
    pub(crate) warned: PerClass<Levels>,
}

impl Record {
    /// Bytes used in this period by `class` (as of the sync that made this record).
    pub(crate) fn used(&self, class: TrafficClass) -> Bytes {
        self.classes.of(class).used
    }

    /// Whether this record's period cannot be at `now`: it starts more than its own length
    /// after `now` (a clock that ran ahead when it began).
    pub(crate) fn impossible<C: Calendar>(&self, now: UnixSecs, period: C) -> bool {
        let length = period.end(self.period_start) - self.period_start;
        self.period_start > now.saturating_add(length)
    }

    /// Whether this record's period is over at `now`.
    pub(crate) fn expired<C: Calendar>(&self, now: UnixSecs, period: C) -> bool {
        now >= period.end(self.period_start)
    }

    /// The record after the kernel's counters restarted from zero: everything they count from
    /// now on is new to this period.
    pub(crate) fn restarted(mut self) -> Record {
        for class in TrafficClass::ALL {
            self.classes.of_mut(class).last = 0;
        }
        self
    }

    /// Whether `class`'s ceiling is below its max rate.
    pub(crate) fn capped(&self, class: TrafficClass, limits: &Limits) -> bool {
        self.classes.of(class).ceil < limits.of(class).max_rate
    }
}

/// The counters of a slice's two classes (monotonic bytes charged).
pub(crate) type Counters = PerClass<u64>;

/// Whether the policy may lower a slice's ceilings. Root and the default pseudo-slice are
/// accounted and shown, never capped: that is an input of the decision, not undone after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Capping {
    /// The seed's rules: capped past the threshold, noticed once per period.
    Policy,
    /// Ceilings stay at the max rates; never noticed.
    Never,
}

/// What the policy decided for one slice at one sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The record to keep.
    pub(crate) record: Record,
    /// A new period began.
    pub(crate) reset: bool,
    /// The clock is earlier than the period's start: the period is held, not reset.
    pub(crate) clock_behind: bool,
    /// Send the slice its notice for this period now.
    pub(crate) notify: bool,
    /// The record's period was impossible and a new one started now, its usage carried.
    pub(crate) jumped: Option<ClockJump>,
}

/// A period whose start was more than one period after the clock ([`Record::impossible`]),
/// replaced by one that starts now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClockJump {
    /// The impossible start.
    pub(crate) was: UnixSecs,
    /// The new period's start.
    pub(crate) now: UnixSecs,
    /// The usage carried into the new period.
    pub(crate) carried: PerClass<Bytes>,
}

/// Starts a slice's first period (a new slice, or one whose record expired).
pub(crate) fn start(counters: Counters, limits: &Limits, now: UnixSecs) -> Record {
    Record {
        period_start: now,
        classes: PerClass::from_fn(|c| ClassRecord {
            used: Bytes(0),
            last: *counters.of(c),
            ceil: limits.of(c).max_rate,
        }),
        emailed: false,
        warned: PerClass::default(),
    }
}

/// The ceiling for one class that has used `used` of its budget `elapsed` seconds into a
/// period of `period_secs`.
pub(crate) fn ceiling(
    limits: &ClassLimits,
    used: Bytes,
    elapsed: u64,
    period_secs: u64,
) -> BitsPerSec {
    if used < limits.thresh {
        return limits.max_rate;
    }
    let left = limits.max.0.saturating_sub(used.0);
    // At least one second remains: no division by zero in the period's last second.
    let remaining = period_secs.saturating_sub(elapsed).max(1);
    let rate = u128::from(left) * 8 / u128::from(remaining);
    let rate = BitsPerSec(u64::try_from(rate).unwrap_or(u64::MAX));
    rate.min(limits.max_rate).max(limits.min_rate).max(BWMIN)
}

/// One sync's decision for a slice: reset or update, both classes, and whether to notify.
pub(crate) fn decide<C: Calendar>(
    record: &Record,
    counters: Counters,
    limits: &Limits,
    now: UnixSecs,
    period: C,
    capping: Capping,
) -> Decision {
    // A start the clock cannot have been at: a new period from now, with the usage so far
    // (no fresh budget), never held for as long as the clock had run ahead.
    let jumped = record.impossible(now, period).then(|| ClockJump {
        was: record.period_start,
        now: period.start_at(now),
        carried: PerClass::from_fn(|c| record.classes.of(c).carried(*counters.of(c)).used),
    });
    let rebased;
    let record = match jumped {
        Some(j) => {
            rebased = Record {
                period_start: j.now,
                ..*record
            };
            &rebased
        }
        None => record,
    };
    if record.expired(now, period) {
        return Decision {
            record: start(counters, limits, period.start_at(now)),
            reset: true,
            clock_behind: false,
            notify: false,
            jumped: None,
        };
    }
    // A clock behind the period start holds the period: no time has elapsed in it.
    let clock_behind = now < record.period_start;
    let elapsed = now.saturating_sub(record.period_start);
    // This period's own length: a calendar day or month may be shorter or longer than others.
    let length = period.end(record.period_start) - record.period_start;
    let mut next = *record;
    for class in TrafficClass::ALL {
        let l = limits.of(class);
        let r = record.classes.of(class).carried(*counters.of(class));
        let ceil = match capping {
            Capping::Policy => ceiling(l, r.used, elapsed, length),
            Capping::Never => l.max_rate,
        };
        *next.classes.of_mut(class) = ClassRecord { ceil, ..r };
    }
    let capped = TrafficClass::ALL.iter().any(|c| next.capped(*c, limits));
    let notify = capped && !record.emailed;
    next.emailed |= notify;
    Decision {
        record: next,
        reset: false,
        clock_behind,
        notify,
        jumped,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A node for the tests of the policy and of what builds on it.
    pub(crate) const NODE: Node = Node {
        node_cap: BitsPerSec(100_000_000),
        exempt_max: BitsPerSec(1_000_000_000),
    };

    /// Default limits on [`NODE`] with a budget of `max_kbyte` per class.
    pub(crate) fn limits(max_kbyte: u64) -> Limits {
        Limits::resolve(
            &Attributes {
                max_kbyte: Some(KBytes(max_kbyte)),
                i2_max_kbyte: Some(KBytes(max_kbyte)),
                ..Default::default()
            },
            &NODE,
        )
    }

    #[test]
    fn defaults_are_the_seeds() {
        let l = Limits::resolve(&Attributes::default(), &NODE);
        assert_eq!(l.general.max, Bytes(5_662_310 * 1024));
        assert_eq!(l.general.thresh, Bytes(4_529_848 * 1024));
        assert_eq!(l.exempt.max, Bytes(17_196_646 * 1024));
        assert_eq!(l.general.max_rate, NODE.node_cap);
        assert_eq!(l.exempt.max_rate, NODE.exempt_max);
        assert_eq!((l.general.min_rate, l.exempt.min_rate), (BWMIN, BWMIN));
        assert_eq!((l.general.share, l.exempt.share), (1, 1));
    }

    #[test]
    fn min_rate_is_clamped_to_a_quarter_of_the_node_cap() {
        let a = Attributes {
            min_rate: Some(KbitPerSec(90_000)),
            ..Default::default()
        };
        assert_eq!(
            Limits::resolve(&a, &NODE).general.min_rate,
            BitsPerSec(25_000_000)
        );
    }

    #[test]
    fn rates_are_ordered_bwmin_min_max_cap() {
        let a = Attributes {
            min_rate: Some(KbitPerSec(0)),
            max_rate: Some(KbitPerSec(500_000)),
            i2_min_rate: Some(KbitPerSec(2_000_000)),
            i2_max_rate: Some(KbitPerSec(0)),
            ..Default::default()
        };
        let l = Limits::resolve(&a, &NODE);
        assert_eq!(l.general.min_rate, BWMIN);
        assert_eq!(
            l.general.max_rate, NODE.node_cap,
            "max above the cap is the cap"
        );
        assert_eq!(l.exempt.max_rate, BWMIN, "max 0 is bwmin");
        assert_eq!(l.exempt.min_rate, BWMIN, "min never above max");
    }

    #[test]
    fn threshold_never_exceeds_the_max() {
        let a = Attributes {
            max_kbyte: Some(KBytes(100)),
            thresh_kbyte: Some(KBytes(500)),
            ..Default::default()
        };
        assert_eq!(Limits::resolve(&a, &NODE).general.thresh, Bytes(100 * 1024));
    }

    #[test]
    fn below_threshold_the_ceiling_is_the_max_rate() {
        let l = limits(1000);
        let r = start(Counters::default(), &l, 1000);
        let d = decide(
            &r,
            Counters {
                general: 1000,
                exempt: 0,
            },
            &l,
            2000,
            86_400,
            Capping::Policy,
        );
        assert_eq!(d.record.classes.general.ceil, l.general.max_rate);
        assert!(!d.notify && !d.reset);
    }

    #[test]
    fn over_threshold_the_rest_of_the_budget_is_spread_over_the_rest_of_the_period() {
        let l = limits(1_000_000); // 1,024,000,000 bytes, thresh 819,200,000
        let r = start(Counters::default(), &l, 0);
        let used = 900_000_000;
        let d = decide(
            &r,
            Counters {
                general: used,
                exempt: 0,
            },
            &l,
            43_200,
            86_400,
            Capping::Policy,
        );
        let expect = (1_024_000_000u64 - used) * 8 / 43_200;
        assert_eq!(d.record.classes.general.ceil, BitsPerSec(expect));
        assert_eq!(
            d.record.classes.exempt.ceil, l.exempt.max_rate,
            "exempt is decided on its own"
        );
        assert!(d.notify && d.record.emailed);
    }

    #[test]
    fn the_last_second_divides_by_one_not_zero() {
        let l = limits(1000);
        let r = start(Counters::default(), &l, 0);
        let d = decide(
            &r,
            Counters {
                general: 900_000,
                exempt: 0,
            },
            &l,
            86_399,
            86_400,
            Capping::Policy,
        );
        assert_eq!(
            d.record.classes.general.ceil,
            BitsPerSec((1_024_000 - 900_000) * 8)
        );
    }

    #[test]
    fn over_budget_the_ceiling_is_the_min_rate() {
        let mut a = Attributes {
            max_kbyte: Some(KBytes(10)),
            min_rate: Some(KbitPerSec(64)),
            ..Default::default()
        };
        a.i2_max_kbyte = Some(KBytes(10));
        let l = Limits::resolve(&a, &NODE);
        let r = start(Counters::default(), &l, 0);
        let d = decide(
            &r,
            Counters {
                general: 1 << 30,
                exempt: 0,
            },
            &l,
            10,
            86_400,
            Capping::Policy,
        );
        assert_eq!(d.record.classes.general.ceil, BitsPerSec(64_000));
    }

    #[test]
    fn one_notice_per_period_even_when_both_classes_trip_at_once() {
        let l = limits(10);
        let r = start(Counters::default(), &l, 0);
        let both = Counters {
            general: 1 << 20,
            exempt: 1 << 20,
        };
        let d1 = decide(&r, both, &l, 10, 100, Capping::Policy);
        assert!(d1.notify);
        let d2 = decide(&d1.record, both, &l, 20, 100, Capping::Policy);
        assert!(!d2.notify, "already noticed this period");
        // Next period: the record resets, and the next trip notifies again.
        let d3 = decide(&d2.record, both, &l, 100, 100, Capping::Policy);
        assert!(d3.reset && !d3.record.emailed);
        assert_eq!(
            d3.record.classes.general.ceil, l.general.max_rate,
            "reset restores max"
        );
        let d4 = decide(
            &d3.record,
            Counters {
                general: both.general * 3,
                exempt: both.exempt,
            },
            &l,
            110,
            100,
            Capping::Policy,
        );
        assert!(d4.notify);
    }

    #[test]
    fn a_counter_a_little_below_the_last_adds_nothing_until_it_passes_it() {
        let l = limits(10_000);
        let r = start(Counters::default(), &l, 0);
        let at = |r: &Record, general: u64, now: u64| {
            decide(
                r,
                Counters { general, exempt: 0 },
                &l,
                now,
                100,
                Capping::Policy,
            )
        };
        let d = at(&r, 5000, 1);
        let d = at(&d.record, 4800, 2);
        assert!(!d.reset);
        assert_eq!(d.record.used(TrafficClass::General), Bytes(5000));
        let d = at(&d.record, 5100, 3);
        assert_eq!(d.record.used(TrafficClass::General), Bytes(5100));
    }

    #[test]
    fn counters_that_restarted_are_carried_not_a_new_period() {
        // The kernel's counters restarted (reboot, lost pins): 5000 and 1000 were used, the
        // counters now read 10 and 7000.
        let l = limits(10_000);
        let r = start(
            Counters {
                general: 5000,
                exempt: 5000,
            },
            &l,
            0,
        );
        let mid = decide(
            &r,
            Counters {
                general: 10_000,
                exempt: 6000,
            },
            &l,
            5,
            100,
            Capping::Policy,
        );
        let d = decide(
            &mid.record.restarted(),
            Counters {
                general: 10,
                exempt: 7000,
            },
            &l,
            10,
            100,
            Capping::Policy,
        );
        assert!(!d.reset);
        assert_eq!(d.record.period_start, 0);
        assert_eq!(d.record.used(TrafficClass::General), Bytes(5000 + 10));
        assert_eq!(d.record.used(TrafficClass::Exempt), Bytes(1000 + 7000));
        assert_eq!(d.record.classes.general.last, 10);
    }

    #[test]
    fn a_clock_before_the_period_start_holds_the_period_and_its_usage() {
        let l = limits(10);
        let r = start(Counters::default(), &l, 1000);
        let d = decide(
            &r,
            Counters {
                general: 9 * 1024,
                exempt: 0,
            },
            &l,
            950,
            100,
            Capping::Policy,
        );
        assert!(!d.reset && d.clock_behind && d.jumped.is_none());
        assert_eq!(d.record.period_start, 1000);
        assert_eq!(d.record.used(TrafficClass::General), Bytes(9 * 1024));
        assert!(
            d.record.capped(TrafficClass::General, &l),
            "over its threshold"
        );
    }

    #[test]
    fn a_period_start_more_than_a_period_ahead_starts_a_new_period_now_with_its_usage() {
        let l = limits(10);
        let sent = Counters {
            general: 9 * 1024,
            exempt: 0,
        };
        // Begun while the clock was a year ahead; capped in it.
        let year = 365 * 86_400;
        let r = start(Counters::default(), &l, 1000 + year);
        let d = decide(&r, sent, &l, 1000 + year, 3600, Capping::Policy);
        assert!(d.record.capped(TrafficClass::General, &l));
        let back = decide(&d.record, sent, &l, 1000, 3600, Capping::Policy);
        assert_eq!(
            back.jumped,
            Some(ClockJump {
                was: 1000 + year,
                now: 1000,
                carried: PerClass {
                    general: Bytes(9 * 1024),
                    exempt: Bytes(0)
                },
            })
        );
        assert!(!back.clock_behind && !back.reset);
        assert_eq!(back.record.period_start, 1000);
        assert_eq!(
            back.record.used(TrafficClass::General),
            Bytes(9 * 1024),
            "usage carried"
        );
        assert!(!back.notify, "told once already");
        // That period ends one period later, not a year later.
        let later = decide(&back.record, sent, &l, 4600, 3600, Capping::Policy);
        assert!(later.reset && !later.record.capped(TrafficClass::General, &l));
    }

    proptest! {
        /// Whatever the clock said before it was set right at `right`, no period is held past
        /// one period length after that, and no cap outlasts the hold and the period after it
        /// (the slice sends nothing once the clock is right).
        #[test]
        fn no_clock_readings_hold_a_period_past_one_period_after_the_clock_is_right(
            length in 60u64..200_000,
            wrong in proptest::collection::vec((0u64..4_000_000_000, 0u64..20_000), 1..12),
            step in 1u64..5_000,
        ) {
            let l = limits(10);
            let right = 2_000_000_000u64;
            let mut sent = 0u64;
            let mut r = start(Counters::default(), &l, wrong[0].0);
            for (at, bytes) in &wrong {
                sent += bytes;
                r = decide(&r, Counters { general: sent, exempt: 0 }, &l, *at, length, Capping::Policy).record;
            }
            let mut now = right;
            while now < right + 2 * length + step {
                let d = decide(&r, Counters { general: sent, exempt: 0 }, &l, now, length, Capping::Policy);
                if now >= right + length {
                    prop_assert!(!d.clock_behind, "held at {} after the clock is right", now - right);
                    prop_assert!(d.record.period_start <= now);
                }
                if now >= right + 2 * length {
                    prop_assert!(!d.record.capped(TrafficClass::General, &l), "capped {} after the clock is right", now - right);
                }
                r = d.record;
                now += step;
            }
        }

        #[test]
        fn ceiling_stays_within_min_and_max(
            max_kbyte in 1u64..10_000_000,
            min_kbit in 0u64..200_000,
            max_kbit in 0u64..2_000_000,
            used in 0u64..20_000_000_000,
            elapsed in 0u64..200_000,
            period in 1u64..200_000,
        ) {
            let a = Attributes {
                max_kbyte: Some(KBytes(max_kbyte)),
                min_rate: Some(KbitPerSec(min_kbit)),
                max_rate: Some(KbitPerSec(max_kbit)),
                ..Default::default()
            };
            let l = Limits::resolve(&a, &NODE);
            let c = ceiling(&l.general, Bytes(used), elapsed, period);
            prop_assert!(c >= l.general.min_rate.max(BWMIN));
            prop_assert!(c <= l.general.max_rate);
        }

        #[test]
        fn a_slice_sending_at_its_ceiling_never_exceeds_its_budget(
            max_kbyte in 1_000u64..1_000_000,
            period in 100u64..10_000,
            interval in 1u64..50,
        ) {
            // Node fast enough that the formula, not the max rate, limits the slice; min rate
            // at bwmin (a min rate above the fair share is allowed to overrun, by design).
            let node = Node { node_cap: BitsPerSec(u64::MAX / 16), exempt_max: BitsPerSec(u64::MAX / 16) };
            let a = Attributes { max_kbyte: Some(KBytes(max_kbyte)), ..Default::default() };
            let l = Limits::resolve(&a, &node);
            let budget = l.general.max.0;
            let mut record = start(Counters::default(), &l, 0);
            let mut counter = 0u64;
            let mut now = 0;
            while now + interval <= period {
                let d = decide(&record, Counters { general: counter, exempt: 0 }, &l, now, period, Capping::Policy);
                record = d.record;
                // Send flat out at the ceiling for one interval (bwmin is 125 bytes/s of slack).
                let ceil = record.classes.general.ceil.0;
                let sent = if ceil >= l.general.max_rate.0 {
                    // Uncapped: the slice may send anything up to its threshold within this
                    // interval; model the worst case that lands exactly at the threshold.
                    l.general.thresh.0.saturating_sub(counter)
                } else {
                    ceil / 8 * interval
                };
                counter += sent;
                now += interval;
            }
            // bwmin over the whole period is the only slack the formula leaves.
            prop_assert!(counter <= budget + BWMIN.0 / 8 * period, "used {counter} of {budget}");
        }

        #[test]
        fn used_never_decreases_within_a_period(
            readings in proptest::collection::vec((0u64..1u64 << 40, any::<bool>()), 1..40),
            clock in proptest::collection::vec(0u64..200, 1..40),
        ) {
            // Counters that grow, or restart from zero (`true`), at times that may jump back
            // before the period start, never past its end.
            let l = limits(1000);
            let mut record = start(Counters::default(), &l, 1000);
            let mut counter = 0u64;
            for (i, (step, restart)) in readings.iter().enumerate() {
                let before = (record.used(TrafficClass::General), record.period_start);
                if *restart {
                    counter = step % 1000;
                    record = record.restarted();
                } else {
                    counter = counter.saturating_add(*step);
                }
                let now = 900 + clock[i % clock.len()];
                let d = decide(&record, Counters { general: counter, exempt: 0 }, &l, now, 86_400, Capping::Policy);
                prop_assert!(!d.reset);
                prop_assert_eq!(d.record.period_start, before.1);
                prop_assert!(d.record.used(TrafficClass::General) >= before.0);
                record = d.record;
            }
        }

        #[test]
        fn reset_restores_the_max_rates(
            g in 0u64..1u64 << 40, e in 0u64..1u64 << 40, start_at in 0u64..1_000_000, period in 1u64..100_000,
        ) {
            let l = limits(1000);
            let mut r = start(Counters::default(), &l, start_at);
            r.classes.general.ceil = BWMIN;
            r.classes.exempt.ceil = BWMIN;
            r.emailed = true;
            let d = decide(&r, Counters { general: g, exempt: e }, &l, start_at + period, period, Capping::Policy);
            prop_assert!(d.reset);
            prop_assert_eq!(d.record.classes.general.ceil, l.general.max_rate);
            prop_assert_eq!(d.record.classes.exempt.ceil, l.exempt.max_rate);
            prop_assert!(!d.record.emailed);
            prop_assert_eq!((d.record.classes.general.last, d.record.classes.exempt.last), (g, e));
            prop_assert_eq!(d.record.used(TrafficClass::General), Bytes(0));
        }
    }
}
