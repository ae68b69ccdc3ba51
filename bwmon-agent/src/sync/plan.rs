//! The plan of one sync: a pure function from what bwmon remembers, what it observed and what
//! the config says to everything the sync will do — new records, leaves to create, change and
//! remove, the xid → class steering, notices, the report, and the events to log. No clock, no
//! I/O: the kernel, the tree, the state file and the log only carry the plan out.

use std::collections::{HashMap, HashSet};

use bwmon_common::ClassIds;
use ipnet::IpNet;

use crate::{
    class::{PerClass, TrafficClass},
    datapath::Snapshot,
    htb::{
        ClassInfo, ClassParams, Leaf, Minor, Op, TreeSpec,
        minors::Minors,
        tree::{self, DEFAULT_LEAVES},
    },
    policy::{self, Capping, Counters, Limits, Record, UnixSecs},
    slices::DEFAULT_NAME,
    state::{CappedClass, Notice, SliceState, State},
    status::SliceStatus,
    units::Bytes,
};

/// The xid the default pseudo-slice's line shows (no slice can have it).
pub const DEFAULT_XID: u32 = u32::MAX;

/// A slice that is in force this sync: root, or one of the slices file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSlice {
    /// Name.
    pub name: String,
    /// xid.
    pub xid: u32,
    /// Its limits, resolved against the node.
    pub limits: Limits,
    /// Whether the policy may cap it (root: never).
    pub capping: Capping,
    /// Source prefixes (for `xid_source = "source"`).
    pub sources: Vec<IpNet>,
}

/// What the config decides for a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Length of a period, seconds.
    pub period_secs: u64,
    /// Account, report and notify, but leave every leaf at its max rate.
    pub dry_run: bool,
    /// The tree's fixed part.
    pub tree: TreeSpec,
    /// The default pseudo-slice's limits (the config's `[defaults]`).
    pub default_limits: Limits,
    /// Whether source prefixes steer xids (`xid_source = "source"`).
    pub source_prefixes: bool,
}

/// What one sync saw, at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// When (seconds since the epoch).
    pub now: UnixSecs,
    /// The kernel's counters.
    pub snapshot: Snapshot,
    /// The tree's classes with their counters.
    pub listed: Vec<ClassInfo>,
}

/// What bwmon remembers between syncs, besides the persisted state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Each xid's counters at the previous sync, and when, for the rates in the report.
    pub previous: HashMap<u32, (Counters, UnixSecs)>,
}

/// Something the log should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A slice seen for the first time (or after its record expired): its period starts.
    NewSlice {
        /// Name.
        slice: String,
        /// xid.
        xid: u32,
    },
    /// A departed slice came back within its period and continues it.
    Returned {
        /// Name.
        slice: String,
        /// xid.
        xid: u32,
    },
    /// A slice left the slices file; its record stays until its period ends.
    Departed {
        /// Name.
        slice: String,
        /// xid.
        xid: u32,
    },
    /// A departed slice's period ended: forgotten, minors freed.
    Forgotten {
        /// Name.
        slice: String,
        /// xid.
        xid: u32,
    },
    /// No minors are left for a slice's leaves.
    NoMinors {
        /// Name.
        slice: String,
        /// xid.
        xid: u32,
    },
    /// A queued notice whose period is over was dropped.
    StaleNotice {
        /// Name.
        slice: String,
        /// xid.
        xid: u32,
    },
    /// A slice's new period began: limits back to the max rates.
    NewPeriod {
        /// Name.
        slice: String,
        /// xid.
        xid: u32,
    },
    /// A slice was capped and a notice queued.
    Capped {
        /// Name.
        slice: String,
        /// xid.
        xid: u32,
        /// The class and its numbers.
        capped: CappedClass,
    },
    /// A class of the tree belongs to no slice and is removed.
    Orphan(Minor),
}

/// Everything one sync will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The state after this sync.
    pub state: State,
    /// The minor allocator after this sync.
    pub minors: Minors,
    /// What the plan remembers for the next one.
    pub memory: Memory,
    /// xid → class ids for the classifier.
    pub steering: HashMap<u32, ClassIds>,
    /// Source prefix → xid, when source prefixes steer.
    pub sources: Option<Vec<(IpNet, u32)>>,
    /// Changes to the tree: missing or different leaves, orphans.
    pub tree_ops: Vec<Op>,
    /// Notices decided in this sync (also queued in `state`).
    pub new_notices: Vec<Notice>,
    /// The report's lines: root, default, then the slices in file order.
    pub rows: Vec<SliceStatus>,
    /// What to log.
    pub events: Vec<Event>,
}

/// A slice's charged counters: bytes it offered minus bytes its leaves dropped.
fn charged(snap: &Snapshot, xid: u32, leaves: PerClass<Minor>) -> Counters {
    snap.charged(xid, leaves).map(|_, c| c.bytes)
}

/// Plans one sync.
pub fn plan(
    state: &State,
    minors: &Minors,
    memory: &Memory,
    live: &[LiveSlice],
    obs: &Observation,
    settings: &Settings,
) -> Plan {
    let now = obs.now;
    let period = settings.period_secs;
    let snap = &obs.snapshot;
    let mut next = state.clone();
    let mut minors = minors.clone();
    let mut memory = memory.clone();
    let mut events = Vec::new();

    // Membership: new slices start a period; returning ones continue theirs.
    for l in live {
        let (slice, xid) = (l.name.clone(), l.xid);
        if let Some(s) = next.slices.get_mut(&xid)
            && s.name == l.name
            && !s.record.expired(now, period)
        {
            if s.departed {
                s.departed = false;
                events.push(Event::Returned { slice, xid });
            }
            continue;
        }
        let leaves = match next.slices.get(&xid) {
            Some(old) => Some(old.minors),
            None => minors.allocate_pair(),
        };
        let Some(leaves) = leaves else {
            events.push(Event::NoMinors { slice, xid });
            continue;
        };
        let record = policy::start(charged(snap, xid, leaves), &l.limits, now);
        events.push(Event::NewSlice {
            slice: slice.clone(),
            xid,
        });
        next.slices.insert(
            xid,
            SliceState {
                name: slice,
                record,
                minors: leaves,
                departed: false,
            },
        );
    }

    // Departed slices keep their record (and minors) until their period ends.
    let live_xids: HashSet<u32> = live.iter().map(|l| l.xid).collect();
    next.slices.retain(|xid, s| {
        if live_xids.contains(xid) {
            return true;
        }
        let (slice, xid) = (s.name.clone(), *xid);
        if !s.departed {
            s.departed = true;
            events.push(Event::Departed {
                slice: slice.clone(),
                xid,
            });
        }
        if !s.record.expired(now, period) {
            return true;
        }
        minors.release(s.minors.general);
        minors.release(s.minors.exempt);
        events.push(Event::Forgotten { slice, xid });
        false
    });

    // Steering: live slices' xids to their leaves.
    let steering: HashMap<u32, ClassIds> = live
        .iter()
        .filter_map(|l| {
            let s = next.slices.get(&l.xid)?;
            Some((l.xid, tree::class_ids(s.minors)))
        })
        .collect();
    let sources = settings.source_prefixes.then(|| {
        live.iter()
            .flat_map(|l| l.sources.iter().map(|p| (*p, l.xid)))
            .collect()
    });

    // Notices whose period is over are no use to anyone.
    next.notices.retain(|n| {
        let fresh = n.period_end > now;
        if !fresh {
            events.push(Event::StaleNotice {
                slice: n.slice.clone(),
                xid: n.xid,
            });
        }
        fresh
    });

    // Policy, leaves and report lines.
    let mut new_notices = Vec::new();
    let mut rows = Vec::new();
    let mut leaves = Vec::new();
    for l in live {
        let Some(s) = next.slices.get_mut(&l.xid) else {
            continue;
        };
        let counters = charged(snap, l.xid, s.minors);
        let d = policy::decide(&s.record, counters, &l.limits, now, period, l.capping);
        s.record = d.record;
        if d.reset {
            events.push(Event::NewPeriod {
                slice: l.name.clone(),
                xid: l.xid,
            });
        }
        if d.notify {
            let capped: Vec<CappedClass> = TrafficClass::ALL
                .into_iter()
                .filter(|c| d.record.capped(*c, &l.limits))
                .map(|class| CappedClass {
                    class,
                    used: d.record.used(class, *counters.of(class)),
                    ceil: d.record.classes.of(class).ceil,
                    budget: l.limits.of(class).max,
                })
                .collect();
            events.extend(capped.iter().map(|c| Event::Capped {
                slice: l.name.clone(),
                xid: l.xid,
                capped: *c,
            }));
            let notice = Notice {
                slice: l.name.clone(),
                xid: l.xid,
                period_start: d.record.period_start,
                period_end: d.record.period_start + period,
                capped,
                decided_at: now,
                attempts: 0,
                next_attempt: now,
            };
            next.notices.push(notice.clone());
            new_notices.push(notice);
        }
        for class in TrafficClass::ALL {
            let lim = l.limits.of(class);
            // Dry run accounts and reports the lowered ceiling, and applies none.
            let ceil = if settings.dry_run {
                lim.max_rate
            } else {
                s.record.classes.of(class).ceil
            };
            leaves.push(Leaf {
                minor: *s.minors.of(class),
                class,
                params: ClassParams::with_shares(lim.min_rate, ceil, lim.share),
            });
        }
        let dropped = s
            .minors
            .iter()
            .map(|(_, m)| snap.dropped_at(*m).bytes)
            .sum();
        let mut line = row(
            &mut memory,
            &l.name,
            l.xid,
            &s.record,
            counters,
            &l.limits,
            now,
        );
        line.dropped_bytes = dropped;
        line.classes = s.minors.iter().map(|(_, m)| m.to_string()).collect();
        rows.push(line);
    }

    // HTB: add what is missing, change what differs, remove orphans.
    let by_minor: HashMap<Minor, &ClassInfo> = obs.listed.iter().map(|c| (c.minor, c)).collect();
    let mut tree_ops: Vec<Op> = leaves
        .iter()
        .filter(|leaf| !by_minor.get(&leaf.minor).is_some_and(|c| c.is(leaf)))
        .map(|leaf| Op::Upsert(*leaf))
        .collect();
    let wanted: HashSet<Minor> = leaves.iter().map(|l| l.minor).collect();
    for minor in tree::orphans(&obs.listed, &wanted) {
        events.push(Event::Orphan(minor));
        tree_ops.push(Op::Remove(minor));
    }

    // The default pseudo-slice: what HTB sent for xids without a slice; never capped.
    let default_counters = DEFAULT_LEAVES.map(|_, m| by_minor.get(&m).map_or(0, |c| c.bytes));
    let limits = &settings.default_limits;
    let default_record = match state.default {
        Some(r) => {
            let mut d = policy::decide(&r, default_counters, limits, now, period, Capping::Never);
            d.record.emailed = false;
            d.record
        }
        None => policy::start(default_counters, limits, now),
    };
    next.default = Some(default_record);
    let mut default_row = row(
        &mut memory,
        DEFAULT_NAME,
        DEFAULT_XID,
        &default_record,
        default_counters,
        limits,
        now,
    );
    default_row.classes = DEFAULT_LEAVES.iter().map(|(_, m)| m.to_string()).collect();
    rows.insert(1.min(rows.len()), default_row);

    Plan {
        state: next,
        minors,
        memory,
        steering,
        sources,
        tree_ops,
        new_notices,
        rows,
        events,
    }
}

/// A status line; `memory` remembers counters between syncs for the rate.
fn row(
    memory: &mut Memory,
    name: &str,
    xid: u32,
    r: &Record,
    counters: Counters,
    limits: &Limits,
    now: UnixSecs,
) -> SliceStatus {
    let rate = match memory.previous.insert(xid, (counters, now)) {
        Some((prev, at)) if now > at => {
            PerClass::from_fn(|c| counters.of(c).saturating_sub(*prev.of(c)) * 8 / (now - at))
        }
        _ => PerClass::default(),
    };
    let kb = |b: Bytes| b.0 / 1024;
    let used = PerClass::from_fn(|c| r.used(c, *counters.of(c)).0);
    SliceStatus {
        name: name.to_owned(),
        xid,
        period_start: r.period_start,
        bytes: used.general,
        exempt_bytes: used.exempt,
        ceil_bps: r.classes.general.ceil.0,
        exempt_ceil_bps: r.classes.exempt.ceil.0,
        max_kbyte: kb(limits.general.max),
        thresh_kbyte: kb(limits.general.thresh),
        i2_max_kbyte: kb(limits.exempt.max),
        i2_thresh_kbyte: kb(limits.exempt.thresh),
        capped: r.capped(TrafficClass::General, limits),
        exempt_capped: r.capped(TrafficClass::Exempt, limits),
        emailed: r.emailed,
        max_rate_bps: limits.general.max_rate.0,
        i2_max_rate_bps: limits.exempt.max_rate.0,
        dropped_bytes: 0,
        rate_bps: rate.general,
        exempt_rate_bps: rate.exempt,
        classes: Vec::new(),
    }
}
