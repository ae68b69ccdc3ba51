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
    class::{PerClass, TrafficClass},
    policy::{
        Decision, Limits, Record,
        warnings::{self, Levels, Percent},
    },
    state::{Channels, ClassNote, Notice, NoticeKind},
    time::calendar::Calendar,
};

/// The cap's notice of one sync: its classes (each with the level crossed with it, if any)
/// and where it goes.
struct Cap {
    classes: Vec<ClassNote>,
    pending: Channels,
}

impl Draft<'_> {
    /// Tells what `who`'s decision `d` changed within its period (its record before was
    /// `before`, `warn` whether it may be warned at all): warnings first, then the cap, then a
    /// lift, each queued in the state, events logged. The levels told are kept in the slice's
    /// record.
    pub(super) fn tell(
        &mut self,
        who: &Who,
        before: &Record,
        d: &Decision,
        limits: &Limits,
        warn: bool,
    ) {
        let Some(s) = self.state.slices.get_mut(&who.xid) else {
            return;
        };
        let warn_at = if warn {
            self.settings.warn_at
        } else {
            Levels::default()
        };
        let crossed = PerClass::from_fn(|c| {
            warnings::crossed(
                warn_at,
                *s.record.warned.of(c),
                s.record.used(c),
                limits.of(c).max,
            )
        });
        for (c, level) in crossed.iter() {
            if let Some(p) = level {
                *s.record.warned.of_mut(c) = s.record.warned.of(c).with(*p);
            }
        }
        let record = s.record;
        let cap = self.cap(before, &record, d, limits, crossed);
        let told_with_cap = |c| {
            cap.as_ref()
                .is_some_and(|cap| cap.classes.iter().any(|n| n.class == c))
        };
        let warned: Vec<ClassNote> = (crossed.iter())
            .filter(|(c, level)| level.is_some() && !told_with_cap(*c))
            .map(|(c, level)| ClassNote {
                level: *level,
                ..ClassNote::of(&record, limits, c)
            })
            .collect();
        self.tell_levels(who, &record, warned);
        if let Some(cap) = cap {
            self.tell_cap(who, &record, d.notify, cap);
        }
        self.tell_lifted(who, before, &record, limits);
    }

    /// The cap's notice, if this sync tells one: the mail's once per period (the policy's
    /// `notify`: every capped class), and the webhook's also for a class capped again after a
    /// lift (the newly capped ones). A level `crossed` with the cap is told by it.
    fn cap(
        &self,
        before: &Record,
        record: &Record,
        d: &Decision,
        limits: &Limits,
        crossed: PerClass<Option<Percent>>,
    ) -> Option<Cap> {
        let hook = self.settings.webhook && !self.settings.dry_run;
        let capped = |c: &TrafficClass| record.capped(*c, limits);
        let newly = |c: &TrafficClass| capped(c) && !before.capped(*c, limits);
        let classes: Vec<ClassNote> = (TrafficClass::ALL.into_iter())
            .filter(|c| if d.notify { capped(c) } else { newly(c) })
            .map(|c| ClassNote {
                level: *crossed.of(c),
                ..ClassNote::of(record, limits, c)
            })
            .collect();
        let told = d.notify || (hook && !classes.is_empty());
        told.then_some(Cap {
            classes,
            pending: Channels {
                mail: d.notify,
                webhook: hook,
            },
        })
    }

    /// Warns `who` of the levels its classes crossed (`warned`): by mail and webhook; in a dry
    /// run, the log says it would.
    fn tell_levels(&mut self, who: &Who, record: &Record, warned: Vec<ClassNote>) {
        if warned.is_empty() {
            return;
        }
        if self.settings.dry_run {
            self.events.push(Event::WouldWarn(who.clone(), warned));
            return;
        }
        let events = warned.iter().map(|n| Event::Warned(who.clone(), *n));
        self.events.extend(events);
        let pending = Channels {
            mail: true,
            webhook: self.settings.webhook,
        };
        self.queue(who, record, NoticeKind::Warned, warned, pending);
    }

    /// Tells `who` of its `cap` (`mailed`: the mail's, once per period); in a dry run, the log
    /// says it would.
    fn tell_cap(&mut self, who: &Who, record: &Record, mailed: bool, cap: Cap) {
        let events = cap.classes.iter().map(|n| Event::Capped(who.clone(), *n));
        self.events.extend(events);
        if self.settings.dry_run {
            // Nothing is capped, so nobody is told it is: the log says who would be.
            if mailed {
                self.events
                    .push(Event::WouldNotify(who.clone(), cap.classes));
            }
            return;
        }
        self.queue(who, record, NoticeKind::Capped, cap.classes, cap.pending);
    }

    /// Tells the webhook of the classes whose cap was lifted within the period (a grant, a
    /// raised budget).
    fn tell_lifted(&mut self, who: &Who, before: &Record, record: &Record, limits: &Limits) {
        if !self.settings.webhook || self.settings.dry_run {
            return;
        }
        let lifted: Vec<ClassNote> = (TrafficClass::ALL.into_iter())
            .filter(|c| before.capped(*c, limits) && !record.capped(*c, limits))
            .map(|c| ClassNote::of(record, limits, c))
            .collect();
        if !lifted.is_empty() {
            let hook = Channels::WEBHOOK;
            self.queue(who, record, NoticeKind::Uncapped, lifted, hook);
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
