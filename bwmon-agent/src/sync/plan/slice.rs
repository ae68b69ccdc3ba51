//! One live slice's sync: what it is charged, the policy's decision under the limits in force
//! (the operator's levers included), its notice, its leaves and its report line.

use super::{
    Draft, Event, LiveSlice, SliceOutputs, Who, leaves, leaves::differs_from_default,
    membership::drops_now,
};
use crate::{
    class::{PerClass, TrafficClass},
    datapath::Snapshot,
    htb::tree,
    policy::{self, Decision, Limits},
    state::{CappedClass, Notice, SliceState},
    sync::report,
    time::{UnixSecs, calendar::Calendar},
    units::Bytes,
};

/// The drop counters of `s`'s leaves now; a base above them restarted with the kernel's state
/// and counts from zero again.
fn rebase_drops(s: &mut SliceState, snap: &Snapshot) -> PerClass<u64> {
    let drops = drops_now(snap, s.minors);
    s.drop_base = s
        .drop_base
        .map(|c, base| if *drops.of(c) < base { 0 } else { base });
    drops
}

/// What a decision that notifies `who` says: the capped classes as events, and the notice to
/// queue — none in a dry run, where the log says who would have been told.
fn notice<C: Calendar>(
    who: &Who,
    d: &Decision,
    limits: &Limits,
    periods: C,
    now: UnixSecs,
    dry_run: bool,
) -> (Vec<Event>, Option<Notice>) {
    let capped: Vec<CappedClass> = TrafficClass::ALL
        .into_iter()
        .filter(|c| d.record.capped(*c, limits))
        .map(|class| CappedClass {
            class,
            used: d.record.used(class),
            ceil: d.record.classes.of(class).ceil,
            budget: limits.of(class).max,
        })
        .collect();
    let mut events: Vec<Event> = capped
        .iter()
        .map(|c| Event::Capped(who.clone(), *c))
        .collect();
    if dry_run {
        // Nothing is capped, so nobody is told it is: the log says who would be.
        events.push(Event::WouldNotify(who.clone(), capped));
        return (events, None);
    }
    let notice = Notice {
        slice: who.slice.clone(),
        xid: who.xid,
        period_start: d.record.period_start,
        period_end: periods.end(d.record.period_start),
        capped,
        decided_at: now,
        attempts: 0,
        next_attempt: now,
    };
    (events, Some(notice))
}

impl Draft<'_> {
    /// Plans the live slice `l` (admitted by the membership stage) into `out`.
    pub(super) fn slice(&mut self, l: &LiveSlice, out: &mut SliceOutputs) {
        let (now, periods, settings) = (self.now, &self.settings.periods, self.settings);
        let Some(s) = self.state.slices.get_mut(&l.xid) else {
            return;
        };
        let drops = rebase_drops(s, self.snap);
        let counters = self.snap.charged_bytes(l.xid, s.minors, s.drop_base);
        let limits = l
            .limits
            .in_force(self.state.levers.get(&l.xid), &s.record, now, periods);
        let d = policy::decide(&s.record, counters, &limits, now, periods, l.capping);
        s.record = d.record;
        out.clock_behind |= d.clock_behind;
        let who = Who::of(&l.name, l.xid);
        if d.reset {
            self.events.push(Event::NewPeriod(who.clone()));
        }
        if d.notify {
            let (events, notice) = notice(&who, &d, &limits, periods, now, settings.dry_run);
            self.events.extend(events);
            if let Some(n) = notice {
                self.state.notices.push(n.clone());
                out.new_notices.push(n);
            }
        }

        let needs = differs_from_default(&limits, &settings.tree)
            .map(|c, differs| differs || s.record.used(c).0 > 0);
        let short = leaves::grow(s, needs, &mut self.minors, self.snap);
        self.events
            .extend((0..short).map(|_| Event::NoMinors(who.clone())));
        let claims = leaves::claims(s, &limits, settings.dry_run);
        out.leaves.extend(leaves::of_slice(s, claims));
        out.claims.insert(l.xid, claims);
        if s.minors.iter().any(|(_, m)| m.is_some()) {
            out.steering.insert(l.xid, tree::class_ids(s.minors));
        }

        let dropped = drops.general.saturating_sub(s.drop_base.general)
            + drops.exempt.saturating_sub(s.drop_base.exempt);
        let rate = self.memory.measure(l.xid, counters, now);
        out.rows.push(
            report::Line {
                name: &l.name,
                xid: l.xid,
                record: &s.record,
                period_end: periods.end(s.record.period_start),
                limits: &limits,
                levers: (self.state.levers.get(&l.xid))
                    .filter(|lv| lv.in_force(&s.record, now, periods)),
                rate,
                dropped: Bytes(dropped),
                leaves: s
                    .minors
                    .iter()
                    .filter_map(|(_, m)| m.map(|m| m.to_string()))
                    .collect(),
                caps: settings.tree.ceilings(),
            }
            .status(),
        );
    }
}
