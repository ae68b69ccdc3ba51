//! One live slice's sync: what it is charged, the policy's decision under the limits in force
//! (the operator's levers included), what it tells (`notices`), its leaves and its report
//! line.

use super::{
    Draft, Event, LiveSlice, SliceOutputs, Who, leaves, leaves::differs_from_default,
    membership::drops_now,
};
use crate::{
    class::PerClass,
    datapath::Snapshot,
    htb::tree,
    policy::{self, Capping, received::Received},
    state::SliceState,
    sync::report,
    time::calendar::Calendar,
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

impl Draft<'_> {
    /// Plans the live slice `l` (admitted by the membership stage) into `out`.
    pub(super) fn slice(&mut self, l: &LiveSlice, out: &mut SliceOutputs) {
        let (now, periods, settings) = (self.now, &self.settings.periods, self.settings);
        let Some(s) = self.state.slices.get_mut(&l.xid) else {
            return;
        };
        let drops = rebase_drops(s, self.snap);
        let received = self.state.received.entry(l.xid).or_insert_with(|| {
            Received::new(self.snap.received_bytes(l.xid), s.record.period_start)
        });
        *received = received.carried(self.snap.received_bytes(l.xid), l.count);
        let sent = self.snap.charged_bytes(l.xid, s.minors, s.drop_base);
        let counters = received.budget_counters(sent);
        let limits = l
            .limits
            .in_force(self.state.levers.get(&l.xid), &s.record, now, periods);
        let d = policy::decide(&s.record, counters, &limits, now, periods, l.capping);
        let before = std::mem::replace(&mut s.record, d.record);
        if received.period_start != s.record.period_start {
            *received = received.new_period(s.record.period_start);
        }
        out.clock_behind |= d.clock_behind;
        let who = Who::of(&l.name, l.xid);
        if d.reset {
            self.events.push(Event::NewPeriod(who.clone()));
        }
        if let Some(jump) = d.jumped {
            self.events.push(Event::ClockJumped(who.clone(), jump));
        }
        let warn = l.capping == Capping::Policy;
        self.tell(&who, &before, &d, &limits, warn);
        let Some(s) = self.state.slices.get_mut(&l.xid) else {
            return;
        };

        let needs = differs_from_default(&limits, &settings.tree)
            .map(|c, differs| differs || s.record.used(c).0 > 0);
        let short = leaves::grow(s, needs, &mut self.minors, self.snap);
        self.events
            .extend((0..short).map(|_| Event::NoMinors(who.clone())));
        let claims = leaves::claims(s, &limits, settings.dry_run);
        let caps = settings.tree.ceilings();
        out.urgent
            .extend(leaves::urgency(s, &limits, &l.limits, claims, caps));
        out.leaves.extend(leaves::of_slice(s, claims));
        out.claims.insert(l.xid, claims);
        // Downloads are held to the general ceiling when it is below the slice's own max rate.
        if claims.general.ceil < l.limits.general.max_rate {
            out.policers.insert(l.xid, claims.general.ceil);
        }
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
                received: self
                    .state
                    .received
                    .get(&l.xid)
                    .map(|r| r.used)
                    .unwrap_or_default(),
                count: l.count,
            }
            .status(),
        );
    }
}
