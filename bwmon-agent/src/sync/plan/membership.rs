//! Who is in this sync: the counters' restart, slices new and returning, departed and
//! forgotten; and what ends with a period (stale notices, levers).

use std::collections::HashSet;

use super::{Draft, Event, LiveSlice, Who, leaves::differs_from_default};
use crate::{
    class::PerClass,
    datapath::Snapshot,
    htb::{Minor, minors::Minors},
    policy::{self, received::Received},
    state::SliceState,
    time::calendar::Calendar,
};

/// The drop counters of `leaves` now: where a slice that gets them starts counting drops.
pub(super) fn drops_now(snap: &Snapshot, leaves: PerClass<Option<Minor>>) -> PerClass<u64> {
    leaves.map(|_, m| m.map_or(0, |m| snap.dropped_at(m).bytes))
}

/// The leaves a slice whose period starts again keeps from its `old` state: a class keeps its
/// leaf when it sent in the finished period or needs it anyway (`differs`); a leaf idle for a
/// whole period is given back to `minors`.
fn kept_leaves(
    old: Option<&SliceState>,
    differs: PerClass<bool>,
    minors: &mut Minors,
) -> PerClass<Option<Minor>> {
    let Some(old) = old else {
        return PerClass::default();
    };
    old.minors.map(|class, m| {
        let idle = old.record.used(class).0 == 0 && !differs.of(class);
        match m {
            Some(m) if idle => {
                minors.release(m);
                None
            }
            m => m,
        }
    })
}

impl Draft<'_> {
    /// When the kernel's counters restarted from zero, every record counts from zero on, drops
    /// too. Says whether they did.
    pub(super) fn restart_counters(&mut self) -> bool {
        let snap = self.snap;
        let restarted = self
            .state
            .counters_epoch
            .is_some_and(|e| !snap.continues(e));
        if restarted {
            self.events.push(Event::CountersRestarted);
            for (xid, s) in self.state.slices.iter_mut() {
                s.record = s.record.restarted();
                // The received part of the budget's counter goes on.
                if let Some(r) = self.state.received.get(xid) {
                    let base = r.restart_base();
                    for (class, b) in base.iter() {
                        s.record.classes.of_mut(class).last = *b;
                    }
                }
                s.drop_base = PerClass::default();
            }
        }
        self.state.counters_epoch = Some(snap.epoch);
        let received_restarted = self
            .state
            .received_epoch
            .is_some_and(|e| e != snap.received_epoch);
        if received_restarted {
            for r in self.state.received.values_mut() {
                *r = r.restarted();
            }
        }
        self.state.received_epoch = Some(snap.received_epoch);
        restarted
    }

    /// New slices start a period; returning ones continue theirs.
    pub(super) fn admit(&mut self, live: &[LiveSlice]) {
        let (now, periods) = (self.now, &self.settings.periods);
        for l in live {
            let xid = l.xid;
            if let Some(s) = self.state.slices.get_mut(&xid)
                && s.name == l.name
                && !s.record.expired(now, periods)
            {
                if s.departed {
                    s.departed = false;
                    self.events.push(Event::Returned(Who::of(&l.name, xid)));
                }
                continue;
            }
            // Its other leaves come when it needs them (the leaves stage).
            let differs = differs_from_default(&l.limits, &self.settings.tree);
            let leaves = kept_leaves(self.state.slices.get(&xid), differs, &mut self.minors);
            let drop_base = drops_now(self.snap, leaves);
            let sent = self.snap.charged_bytes(xid, leaves, drop_base);
            let start = periods.start_at(now);
            let received = match self.state.received.get(&xid) {
                Some(r) => r.new_period(start),
                None => Received::new(self.snap.received_bytes(xid), start),
            };
            let counters = received.budget_counters(sent);
            self.state.received.insert(xid, received);
            let record = policy::start(counters, &l.limits, start);
            let who = Who::of(&l.name, xid);
            let ended = self.state.slices.get(&xid).filter(|s| s.name == l.name);
            if let Some(ended) = ended.map(|s| s.record) {
                self.tell_new_period(&who, &ended, &record, &l.limits);
            }
            self.events.push(Event::NewSlice(who));
            self.state.slices.insert(
                xid,
                SliceState {
                    name: l.name.clone(),
                    record,
                    minors: leaves,
                    drop_base,
                    departed: false,
                },
            );
        }
    }

    /// Slices that left the slices file keep their record (and minors) until their period
    /// ends; then they are forgotten and their minors freed.
    pub(super) fn depart(&mut self, live: &HashSet<u32>) {
        let (now, periods) = (self.now, &self.settings.periods);
        let (events, minors) = (&mut self.events, &mut self.minors);
        self.state.slices.retain(|xid, s| {
            if live.contains(xid) {
                return true;
            }
            let who = Who::of(&s.name, *xid);
            if !s.departed {
                s.departed = true;
                events.push(Event::Departed(who.clone()));
            }
            // A departed slice whose period cannot be (the clock ran ahead) is not kept.
            if !s.record.expired(now, periods) && !s.record.impossible(now, periods) {
                return true;
            }
            for (_, m) in s.minors.iter() {
                if let Some(m) = m {
                    minors.release(*m);
                }
            }
            events.push(Event::Forgotten(who));
            false
        });
        let slices = &self.state.slices;
        self.state
            .received
            .retain(|xid, _| slices.contains_key(xid));
    }

    /// Notices whose period is over are no use to anyone.
    pub(super) fn drop_stale_notices(&mut self) {
        let (now, events) = (self.now, &mut self.events);
        self.state.notices.retain(|n| {
            let fresh = n.period_end > now;
            if !fresh {
                events.push(Event::StaleNotice(Who::of(&n.slice, n.xid)));
            }
            fresh
        });
    }

    /// Levers end with their period (and with their slice).
    pub(super) fn end_levers(&mut self) {
        let slices = &self.state.slices;
        self.state.levers.retain(|xid, lv| {
            slices
                .get(xid)
                .is_some_and(|s| s.record.period_start == lv.period_start && !lv.is_empty())
        });
    }
}
