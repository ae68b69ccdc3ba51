//! The default pseudo-slice: what xids without a slice offered, counted by the classifier like
//! any xid's (not read from HTB, whose counters restart with the tree); accounted and shown,
//! never capped.

use std::collections::{HashMap, HashSet};

use super::{Draft, Memory, OVERFLOW_KEY};
use crate::{
    class::{PerClass, TrafficClass},
    config::slices::DEFAULT_NAME,
    datapath::Snapshot,
    htb::tree::{DEFAULT_LEAF_SHARES, DEFAULT_LEAVES},
    policy::{self, Capping, Counters, Record, shares::Claim},
    serve::status::SliceStatus,
    sync::report,
    time::calendar::Calendar,
    units::{BWMIN, Bytes},
};

/// The xid the default pseudo-slice's line shows (no slice can have it).
pub(crate) const DEFAULT_XID: u32 = u32::MAX;

/// What `xids` other than live slices' offered since the previous sync (the default
/// pseudo-slice's traffic, counted by the classifier like every xid's), and the counters to
/// remember for the next one.
fn default_growth(
    memory: &Memory,
    snap: &Snapshot,
    live: &HashSet<u32>,
    restarted: bool,
) -> (Counters, HashMap<u32, Counters>) {
    let mut now: HashMap<u32, Counters> = snap
        .offered
        .iter()
        .map(|(xid, c)| {
            let bytes = PerClass {
                general: c.general.bytes,
                exempt: c.exempt.bytes,
            };
            (*xid, bytes)
        })
        .collect();
    let overflow = snap.offered_overflow;
    now.insert(
        OVERFLOW_KEY,
        PerClass {
            general: overflow.general.bytes,
            exempt: overflow.exempt.bytes,
        },
    );
    let mut growth = Counters::default();
    for (xid, c) in &now {
        if live.contains(xid) {
            continue;
        }
        // After the counters restarted, all of them is new. At the first sync of a daemon the
        // previous values are unknown: nothing is new (what came before was charged before).
        // Otherwise an xid not seen at the previous sync started since, from zero.
        let before = if restarted {
            Counters::default()
        } else if memory.offered.is_empty() {
            *c
        } else {
            memory.offered.get(xid).copied().unwrap_or_default()
        };
        for class in TrafficClass::ALL {
            let (n, b) = (*c.of(class), *before.of(class));
            *growth.of_mut(class) += n.saturating_sub(b);
        }
    }
    // An xid this snapshot left out (the agent reads the slots of xids the classifier marked
    // seen) keeps its counters: when it comes back, only what is new counts.
    if !restarted {
        for (xid, c) in &memory.offered {
            now.entry(*xid).or_insert(*c);
        }
    }
    (growth, now)
}

impl Draft<'_> {
    /// The default pseudo-slice's record after this sync, grown from `before` by what xids
    /// outside `live` offered (counted from zero when the counters `restarted`); its line, and
    /// what its leaves claim of each cap.
    pub(super) fn default_slice(
        &mut self,
        before: Option<Record>,
        live: &HashSet<u32>,
        restarted: bool,
    ) -> (SliceStatus, PerClass<Claim>) {
        let (now, periods) = (self.now, &self.settings.periods);
        let (growth, offered_now) = default_growth(&self.memory, self.snap, live, restarted);
        self.memory.offered = offered_now;
        let limits = &self.settings.default_limits;
        let record = match before {
            Some(r) => {
                // `last` at zero: the growth is what is new.
                let restarted = r.restarted();
                let mut d =
                    policy::decide(&restarted, growth, limits, now, periods, Capping::Never);
                d.record.emailed = false;
                d.record
            }
            None => policy::start(Counters::default(), limits, periods.start_at(now)),
        };
        self.state.default = Some(record);
        // Its rate in the report comes from what it used (it has no counter of its own).
        let used = record.classes.map(|_, c| c.used.0);
        let rate = self.memory.measure(DEFAULT_XID, used, now);
        let tree = &self.settings.tree;
        // Its leaves' parameters (`TreeSpec::default_leaves`).
        let claims = tree.ceilings().map(|_, ceil| Claim {
            min: BWMIN,
            ceil,
            share: DEFAULT_LEAF_SHARES,
        });
        let line = report::Line {
            name: DEFAULT_NAME,
            xid: DEFAULT_XID,
            record: &record,
            period_end: periods.end(record.period_start),
            limits,
            levers: None,
            rate,
            dropped: Bytes(0),
            leaves: DEFAULT_LEAVES.iter().map(|(_, m)| m.to_string()).collect(),
            caps: tree.ceilings(),
            // Received bytes are told per slice; the default pseudo-slice is egress only.
            received: PerClass::default(),
            count: crate::policy::received::Count::Egress,
        }
        .status();
        (line, claims)
    }
}
