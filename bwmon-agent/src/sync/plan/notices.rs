//! What a live slice's sync tells, and to which channels: warnings before the cap
//! ([`crate::policy::warnings`]), the cap — mailed once per period, as the seed did — and, for
//! the webhook alone, a class capped again after a lift, a cap lifted within the period, and
//! the new period of a slice that heard something in the one that ended. In a dry run nothing
//! is queued: the log says what would have been told.
//!
//! A level crossed in the same sync as its class's cap is told by the cap's notice (its class
//! carries the level) rather than by a warning of its own: one message for one moment, the cap
//! being the news; the level is said all the same, and not again.

use super::{Draft, Event, Who};
use crate::{
    class::TrafficClass,
    policy::{Decision, Limits, Record, warnings},
    state::{Channels, ClassNote, Notice, NoticeKind},
    time::calendar::Calendar,
};

impl Draft<'_> {
    /// Tells what `who`'s decision `d` changed within its period (its record before was
    /// `before`, `warn` whether it may be warned at all): each notice queued in the state,
    /// events logged. The levels told are kept in the slice's record.
    pub(super) fn tell(
        &mut self,
        who: &Who,
        before: &Record,
        d: &Decision,
        limits: &Limits,
        warn: bool,
    ) {
        let dry_run = self.settings.dry_run;
        let hook = self.settings.webhook && !dry_run;
        let Some(s) = self.state.slices.get_mut(&who.xid) else {
            return;
        };
        let record = &mut s.record;
        let warn_at = self.settings.warn_at;
        let crossed = TrafficClass::ALL.map(|c| {
            let level = warn.then(|| {
                warnings::crossed(
                    warn_at,
                    *record.warned.of(c),
                    record.used(c),
                    limits.of(c).max,
                )
            });
            (c, level.flatten())
        });
        for (c, level) in crossed {
            if let Some(p) = level {
                *record.warned.of_mut(c) = record.warned.of(c).with(p);
            }
        }
        let record = *record;
        let level = |c: TrafficClass| crossed.iter().find(|(k, _)| *k == c).and_then(|(_, l)| *l);
        let capped: Vec<TrafficClass> = TrafficClass::ALL
            .into_iter()
            .filter(|c| record.capped(*c, limits))
            .collect();
        let newly: Vec<TrafficClass> = capped
            .iter()
            .copied()
            .filter(|c| !before.capped(*c, limits))
            .collect();
        // The cap: mailed once per period (the policy's `notify`); the webhook also hears a
        // class capped again after a lift.
        let cap_told = d.notify || (hook && !newly.is_empty());
        let told_classes = if d.notify { &capped } else { &newly };
        let cap: Vec<ClassNote> = match cap_told {
            true => told_classes
                .iter()
                .map(|c| ClassNote {
                    level: level(*c),
                    ..ClassNote::of(&record, limits, *c)
                })
                .collect(),
            false => Vec::new(),
        };
        let warned: Vec<ClassNote> = crossed
            .iter()
            .filter(|(c, l)| l.is_some() && !cap.iter().any(|n| n.class == *c))
            .map(|(c, l)| ClassNote {
                level: *l,
                ..ClassNote::of(&record, limits, *c)
            })
            .collect();
        if !warned.is_empty() {
            match dry_run {
                true => self.events.push(Event::WouldWarn(who.clone(), warned)),
                false => {
                    let all = Channels {
                        mail: true,
                        webhook: self.settings.webhook,
                    };
                    self.events
                        .extend(warned.iter().map(|n| Event::Warned(who.clone(), *n)));
                    self.queue(who, &record, NoticeKind::Warned, warned, all);
                }
            }
        }
        if cap_told {
            self.events
                .extend(cap.iter().map(|n| Event::Capped(who.clone(), *n)));
            match dry_run {
                // Nothing is capped, so nobody is told it is: the log says who would be.
                true => self.events.push(Event::WouldNotify(who.clone(), cap)),
                false => {
                    let channels = Channels {
                        mail: d.notify,
                        webhook: hook,
                    };
                    self.queue(who, &record, NoticeKind::Capped, cap, channels);
                }
            }
        }
        let lifted: Vec<ClassNote> = TrafficClass::ALL
            .into_iter()
            .filter(|c| before.capped(*c, limits) && !record.capped(*c, limits))
            .map(|c| ClassNote::of(&record, limits, c))
            .collect();
        if hook && !lifted.is_empty() {
            self.queue(
                who,
                &record,
                NoticeKind::Uncapped,
                lifted,
                Channels::WEBHOOK,
            );
        }
    }

    /// Tells the webhook that `who`'s period ended and `record`'s began, when the slice heard
    /// something in the one that `ended` (a warning, the cap): each class with what it used
    /// then, its new budget under `limits` and its ceiling back at the max.
    pub(super) fn tell_new_period(
        &mut self,
        who: &Who,
        ended: &Record,
        record: &Record,
        limits: &Limits,
    ) {
        let heard = ended.emailed || ended.warned.iter().any(|(_, l)| !l.is_empty());
        if !heard || !self.settings.webhook || self.settings.dry_run {
            return;
        }
        let classes = TrafficClass::ALL
            .map(|c| ClassNote {
                used: ended.used(c),
                ..ClassNote::of(record, limits, c)
            })
            .to_vec();
        self.queue(
            who,
            record,
            NoticeKind::NewPeriod,
            classes,
            Channels::WEBHOOK,
        );
    }

    /// Queues a notice of `kind` about `who` (whose record is `record`) for `pending`.
    fn queue(
        &mut self,
        who: &Who,
        record: &Record,
        kind: NoticeKind,
        classes: Vec<ClassNote>,
        pending: Channels,
    ) {
        let start = record.period_start;
        let period = (start, self.settings.periods.end(start));
        let n = Notice::new(
            (&who.slice, who.xid),
            period,
            kind,
            classes,
            pending,
            self.now,
        );
        self.state.queue(n);
    }
}
