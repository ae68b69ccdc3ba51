//! Received bytes (downloads): what each slice received in its period, and what of it its
//! budget is charged under `count = "both"`. Pure arithmetic, like the rest of the policy.
//!
//! The policy itself is unchanged: it carries one monotonic counter per class into a record.
//! Under `count = "both"` that counter is the slice's sent bytes plus [`Received::charged`], a
//! running total (persisted, never lowered) of the received bytes counted while the slice was
//! under `both`. Switching a slice between `egress` and `both` therefore never makes the
//! counter jump or dip: `charged` only grows while `both` is in force. When the sent counters
//! restart from zero the record counts from `charged` on (see [`Received::restart_base`]);
//! when the received ones restart, only `last` goes back to zero.

use crate::{class::PerClass, policy::Counters, time::UnixSecs, units::Bytes};

/// Which bytes a slice's budget covers (`count`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Count {
    /// What it sends (PlanetLab's rule; the default).
    #[default]
    Egress,
    /// What it sends plus what it receives.
    Both,
}

impl Count {
    /// Its config spelling.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Count::Egress => "egress",
            Count::Both => "both",
        }
    }

    /// Parses the config spelling.
    pub(crate) fn parse(s: &str) -> Option<Count> {
        match s {
            "egress" => Some(Count::Egress),
            "both" => Some(Count::Both),
            _ => None,
        }
    }
}

/// One slice's received bytes (persisted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Received {
    /// The period [`Received::used`] belongs to (its record's start).
    pub(crate) period_start: UnixSecs,
    /// Bytes received in that period, per class (by the packet's source).
    pub(crate) used: PerClass<Bytes>,
    /// The received counters at the last sync.
    pub(crate) last: PerClass<u64>,
    /// Received bytes charged to the budget so far (under `both`), ever growing: added to
    /// the sent counters the policy carries.
    pub(crate) charged: PerClass<u64>,
}

impl Received {
    /// A slice first seen now, with received counters `counters`: nothing of what they hold
    /// is its this period.
    pub(crate) fn new(counters: Counters, period_start: UnixSecs) -> Received {
        Received {
            period_start,
            last: counters,
            ..Received::default()
        }
    }

    /// Carries the received counters `counters` in under `count`: what they grew by is
    /// received in this period, and charged under `both`.
    pub(crate) fn carried(mut self, counters: Counters, count: Count) -> Received {
        for (class, now) in counters.iter() {
            let last = self.last.of_mut(class);
            // Below the last value only after a restart, which resets `last` first; a dip
            // otherwise adds nothing and keeps the higher value.
            let grew = now.saturating_sub(*last);
            *last = (*last).max(*now);
            let used = self.used.of_mut(class);
            *used = Bytes(used.0.saturating_add(grew));
            if count == Count::Both {
                let charged = self.charged.of_mut(class);
                *charged = charged.saturating_add(grew);
            }
        }
        self
    }

    /// The counters the policy carries for a slice whose sent counters are `sent`.
    pub(crate) fn budget_counters(&self, sent: Counters) -> Counters {
        sent.map(|c, s| s.saturating_add(*self.charged.of(c)))
    }

    /// Where a record counts from when the sent counters restart from zero: the received part
    /// of its counters goes on.
    pub(crate) fn restart_base(&self) -> Counters {
        self.charged
    }

    /// The received counters restarted from zero: everything they count from now on is new.
    pub(crate) fn restarted(self) -> Received {
        Received {
            last: PerClass::default(),
            ..self
        }
    }

    /// A new period starting at `start`: nothing received in it yet.
    pub(crate) fn new_period(self, start: UnixSecs) -> Received {
        Received {
            period_start: start,
            used: PerClass::default(),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(general: u64, exempt: u64) -> Counters {
        PerClass { general, exempt }
    }

    #[test]
    fn received_bytes_are_carried_and_charged_only_under_both() {
        let r = Received::new(c(1000, 50), 100);
        let r = r.carried(c(1600, 50), Count::Egress);
        assert_eq!(
            r.used,
            PerClass {
                general: Bytes(600),
                exempt: Bytes(0)
            }
        );
        assert_eq!(r.charged, c(0, 0), "egress: not charged");
        assert_eq!(r.budget_counters(c(10, 10)), c(10, 10));
        let r = r.carried(c(2000, 80), Count::Both);
        assert_eq!(
            r.used,
            PerClass {
                general: Bytes(1000),
                exempt: Bytes(30)
            }
        );
        assert_eq!(r.charged, c(400, 30));
        assert_eq!(r.budget_counters(c(10, 10)), c(410, 40));
    }

    #[test]
    fn switching_count_never_makes_the_budget_counter_dip_or_jump() {
        let mut r = Received::new(c(0, 0), 0);
        let mut sent = 0;
        let mut last_budget = 0;
        for (i, count) in [Count::Both, Count::Egress, Count::Both, Count::Egress]
            .into_iter()
            .enumerate()
        {
            let step = 1000 * (i as u64 + 1);
            sent += 10;
            r = r.carried(c(step, 0), count);
            let budget = r.budget_counters(c(sent, 0)).general;
            assert!(budget >= last_budget, "never dips");
            // What it grew by is the sent bytes plus, under both, this step's received bytes.
            let received_now = if count == Count::Both { 1000 } else { 0 };
            assert_eq!(budget - last_budget, 10 + received_now);
            last_budget = budget;
        }
    }

    #[test]
    fn a_restart_of_the_received_counters_counts_from_zero_and_a_new_period_keeps_the_charge() {
        let r = Received::new(c(0, 0), 0).carried(c(500, 0), Count::Both);
        let r = r.restarted().carried(c(200, 0), Count::Both);
        assert_eq!(r.used.general, Bytes(700));
        assert_eq!(r.charged.general, 700);
        let r = r.new_period(86_400);
        assert_eq!((r.period_start, r.used.general), (86_400, Bytes(0)));
        assert_eq!(
            r.restart_base(),
            c(700, 0),
            "the charge goes on: the counter must not dip"
        );
    }
}
