//! When periods start and end. Pure (the time zone is an input, the clock is not).
//!
//! `period_align = "none"` (the seed's way): a slice's first period starts when it is first
//! seen and every period lasts `period`. `"day"`: periods are the local days, starting at
//! `period_start_time`; `"month"`: the months, starting on `period_start_day` at 00:00 (the
//! month's last day when it is shorter). Local days are 23 or 25 hours long across a daylight
//! saving change and months 28 to 31 days: a period's end is computed from its start, never
//! added as a length. A local start time that does not exist that day (skipped by a DST change)
//! is read with the offset before the change (02:30 becomes 03:30); one that occurs twice is
//! the first.

use jiff::{
    Timestamp,
    civil::{Date, Time},
    tz::TimeZone,
};

use crate::time::UnixSecs;

/// How periods are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    /// From a slice's first sight, `period` long.
    None,
    /// Local days starting at this time.
    Day {
        /// Hour, 0–23.
        hour: i8,
        /// Minute, 0–59.
        minute: i8,
    },
    /// Months starting on this day (1–31; the month's last day when it is shorter), 00:00.
    Month {
        /// Day of the month.
        day: i8,
    },
}

/// Where periods start and end.
pub(crate) trait Calendar: Copy {
    /// The start of the period that a slice first seen (or whose period ended) at `now` is in.
    fn start_at(self, now: UnixSecs) -> UnixSecs;
    /// When the period that started at `start` ends (always after `start`).
    fn end(self, start: UnixSecs) -> UnixSecs;
}

/// A fixed length in seconds, from first sight (`period_align = "none"`).
impl Calendar for u64 {
    fn start_at(self, now: UnixSecs) -> UnixSecs {
        now
    }

    fn end(self, start: UnixSecs) -> UnixSecs {
        start.saturating_add(self.max(1))
    }
}

/// The periods of a configuration: alignment, length (for [`Align::None`]) and time zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Periods {
    /// The alignment.
    pub(crate) align: Align,
    /// Length in seconds when not aligned.
    pub(crate) length: u64,
    /// The zone local days and months are in.
    pub(crate) tz: TimeZone,
}

impl Periods {
    /// Periods of `length` seconds from first sight (the tests' calendar).
    #[cfg(test)]
    pub(crate) fn fixed(length: u64) -> Periods {
        Periods {
            align: Align::None,
            length,
            tz: TimeZone::UTC,
        }
    }

    /// A typical length, seconds (for wording: "per day").
    pub(crate) fn nominal_secs(&self) -> u64 {
        match self.align {
            Align::None => self.length,
            Align::Day { .. } => 86_400,
            Align::Month { .. } => 30 * 86_400,
        }
    }

    /// The instant of a local date and time (`None` out of range).
    fn instant(&self, date: Date, time: Time) -> Option<UnixSecs> {
        let zoned = date.to_datetime(time).to_zoned(self.tz.clone()).ok()?;
        u64::try_from(zoned.timestamp().as_second()).ok()
    }

    /// The local date of `at`.
    fn date_of(&self, at: UnixSecs) -> Option<Date> {
        let ts = Timestamp::from_second(i64::try_from(at).ok()?).ok()?;
        Some(ts.to_zoned(self.tz.clone()).date())
    }

    /// The start of the period on the local date `date` (a day, or the month it is in).
    fn boundary(&self, date: Date) -> Option<UnixSecs> {
        match self.align {
            Align::None => None,
            Align::Day { hour, minute } => self.instant(date, Time::new(hour, minute, 0, 0).ok()?),
            Align::Month { day } => {
                let first = date.first_of_month();
                let day = day.min(first.days_in_month());
                self.instant(
                    Date::new(first.year(), first.month(), day).ok()?,
                    Time::midnight(),
                )
            }
        }
    }

    /// The local date one period after `date`.
    fn next(&self, date: Date) -> Option<Date> {
        match self.align {
            Align::None => None,
            Align::Day { .. } => date.tomorrow().ok(),
            Align::Month { .. } => date.last_of_month().tomorrow().ok(),
        }
    }

    /// The local date one period before `date`.
    fn previous(&self, date: Date) -> Option<Date> {
        match self.align {
            Align::None => None,
            Align::Day { .. } => date.yesterday().ok(),
            Align::Month { .. } => date.first_of_month().yesterday().ok(),
        }
    }

    fn aligned_start(&self, now: UnixSecs) -> Option<UnixSecs> {
        let date = self.date_of(now)?;
        let here = self.boundary(date)?;
        if here <= now {
            Some(here)
        } else {
            self.boundary(self.previous(date)?)
        }
    }

    fn aligned_end(&self, start: UnixSecs) -> Option<UnixSecs> {
        let mut date = self.date_of(start)?;
        // At most two steps: the boundary of the start's own day or month may lie before it.
        for _ in 0..3 {
            let b = self.boundary(date)?;
            if b > start {
                return Some(b);
            }
            date = self.next(date)?;
        }
        None
    }
}

impl Calendar for &Periods {
    fn start_at(self, now: UnixSecs) -> UnixSecs {
        match self.align {
            Align::None => now,
            // Out of the zone database's range: from first sight, a nominal period long.
            _ => self.aligned_start(now).unwrap_or(now),
        }
    }

    fn end(self, start: UnixSecs) -> UnixSecs {
        match self.align {
            Align::None => self.length.end(start),
            _ => self
                .aligned_end(start)
                .unwrap_or_else(|| self.nominal_secs().end(start)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn at(tz: &TimeZone, text: &str) -> UnixSecs {
        let dt: jiff::civil::DateTime = text.parse().unwrap();
        dt.to_zoned(tz.clone()).unwrap().timestamp().as_second() as u64
    }

    fn days(align: Align, tz: &str) -> Periods {
        Periods {
            align,
            length: 86_400,
            tz: zone(tz),
        }
    }

    #[test]
    fn days_are_23_or_25_hours_across_daylight_saving_changes() {
        let p = days(Align::Day { hour: 0, minute: 0 }, "Europe/Berlin");
        let tz = &p.tz;
        // 2026-03-29: clocks go from 02:00 to 03:00.
        let s = (&p).start_at(at(tz, "2026-03-29T12:00"));
        assert_eq!(s, at(tz, "2026-03-29T00:00"));
        assert_eq!((&p).end(s) - s, 23 * 3600);
        // 2026-10-25: from 03:00 back to 02:00.
        let s = (&p).start_at(at(tz, "2026-10-25T23:59"));
        assert_eq!((&p).end(s) - s, 25 * 3600);
        // Before the start time of the day: yesterday's period.
        let p = days(
            Align::Day {
                hour: 6,
                minute: 30,
            },
            "Europe/Berlin",
        );
        let s = (&p).start_at(at(&p.tz, "2026-07-01T05:00"));
        assert_eq!(s, at(&p.tz, "2026-06-30T06:30"));
        assert_eq!((&p).end(s), at(&p.tz, "2026-07-01T06:30"));
        // A start time skipped by the change: 02:30 read with the offset before it, 03:30.
        let p = days(
            Align::Day {
                hour: 2,
                minute: 30,
            },
            "Europe/Berlin",
        );
        let s = (&p).start_at(at(&p.tz, "2026-03-29T12:00"));
        assert_eq!(s, at(&p.tz, "2026-03-29T03:30"));
    }

    #[test]
    fn months_start_on_the_billing_day_or_the_last_day_of_shorter_months() {
        let p = days(Align::Month { day: 31 }, "UTC");
        let tz = &p.tz;
        let s = (&p).start_at(at(tz, "2027-02-15T10:00"));
        assert_eq!(s, at(tz, "2027-01-31T00:00"));
        assert_eq!((&p).end(s), at(tz, "2027-02-28T00:00"));
        // A leap year's February ends on the 29th.
        let s = (&p).start_at(at(tz, "2028-03-01T00:00"));
        assert_eq!(s, at(tz, "2028-02-29T00:00"));
        assert_eq!((&p).end(s), at(tz, "2028-03-31T00:00"));
        let p = days(Align::Month { day: 1 }, "America/New_York");
        let s = (&p).start_at(at(&p.tz, "2026-12-31T23:59"));
        assert_eq!(s, at(&p.tz, "2026-12-01T00:00"));
        assert_eq!((&p).end(s), at(&p.tz, "2027-01-01T00:00"));
    }

    #[test]
    fn unaligned_periods_are_the_seeds() {
        let p = Periods::fixed(86_400);
        assert_eq!((&p).start_at(1000), 1000);
        assert_eq!((&p).end(1000), 87_400);
        assert_eq!(86_400u64.end(1000), 87_400);
    }

    proptest! {
        #[test]
        fn periods_tile_time_in_every_zone(
            now in 946_684_800u64..4_102_444_800,
            zone_index in 0usize..5,
            hour in 0i8..24,
            minute in 0i8..60,
            day in 1i8..32,
            monthly in any::<bool>(),
        ) {
            let names = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"];
            let align = if monthly { Align::Month { day } } else { Align::Day { hour, minute } };
            let p = days(align, names[zone_index]);
            let s = (&p).start_at(now);
            let e = (&p).end(s);
            prop_assert!(s <= now && now < e, "{s} <= {now} < {e}");
            prop_assert_eq!((&p).start_at(s), s, "a start is its own period's start");
            prop_assert_eq!((&p).start_at(e), e, "the next period starts where this one ends");
            let (lo, hi) = if monthly { (27 * 86_400, 32 * 86_400) } else { (22 * 3600, 26 * 3600) };
            prop_assert!((lo..=hi).contains(&(e - s)), "length {}", e - s);
        }
    }
}
