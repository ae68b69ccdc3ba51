//! The plan of one sync: a pure function from what bwmon remembers, what it observed and what
//! the config says to everything the sync will do — new records, leaves to create, change and
//! remove, the xid → class steering, notices, the report, and the events to log. No clock, no
//! I/O: the kernel, the tree, the state file and the log only carry the plan out.

use std::collections::{HashMap, HashSet};

use bwmon_common::ClassIds;
use ipnet::IpNet;

use crate::{
    class::{PerClass, TrafficClass},
    config::slices::DEFAULT_NAME,
    datapath::Snapshot,
    htb::{
        ClassInfo, ClassParams, Leaf, Minor, Op, TreeSpec,
        minors::Minors,
        tree::{self, DEFAULT_LEAVES},
    },
    policy::{self, Capping, Counters, Limits},
    serve::status::SliceStatus,
    state::{CappedClass, Notice, SliceState, State},
    time::UnixSecs,
    time::calendar::{Calendar, Periods},
    units::BWMIN,
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
    /// Where periods start and end.
    pub periods: Periods,
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
    /// The tree was (re)created since the last sync: its counters restarted from zero.
    pub tree_created: bool,
}

/// What bwmon remembers between syncs, besides the persisted state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Each xid's counters at the previous sync, and when, for the rates in the report.
    pub previous: HashMap<u32, (Counters, UnixSecs)>,
    /// Every xid's offered bytes at the previous sync (and the overflow slot's, under
    /// [`OVERFLOW_KEY`]): the default pseudo-slice grows by what xids without a slice added.
    pub offered: HashMap<u32, Counters>,
}

/// The key of the overflow slot among [`Memory::offered`] (no xid can have it: it is
/// `(uid_t)-1`, which the slices file refuses).
const OVERFLOW_KEY: u32 = u32::MAX;

/// The slice an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    /// Its name.
    pub slice: String,
    /// Its xid.
    pub xid: u32,
}

impl Who {
    fn of(slice: &str, xid: u32) -> Who {
        Who {
            slice: slice.to_owned(),
            xid,
        }
    }
}

/// Something the log should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A slice seen for the first time (or after its record expired): its period starts.
    NewSlice(Who),
    /// A departed slice came back within its period and continues it.
    Returned(Who),
    /// A slice left the slices file; its record stays until its period ends.
    Departed(Who),
    /// A departed slice's period ended: forgotten, minors freed.
    Forgotten(Who),
    /// No minors are left for a slice's leaves.
    NoMinors(Who),
    /// A queued notice whose period is over was dropped.
    StaleNotice(Who),
    /// A slice's new period began: limits back to the max rates.
    NewPeriod(Who),
    /// A slice was capped (the class and its numbers) and a notice queued.
    Capped(Who, CappedClass),
    /// Dry run: the slice would have been capped and told so (nobody is mailed).
    WouldNotify(Who, Vec<CappedClass>),
    /// A class of the tree belongs to no slice and is removed.
    Orphan(Minor),
    /// The kernel's counters restarted from zero (reboot, lost pins): usage is carried.
    CountersRestarted,
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
    /// The clock is earlier than a slice's period start (periods held).
    pub clock_behind: bool,
}

/// The drop counters of `leaves` now: where a slice that gets them starts counting drops.
fn drops_now(snap: &Snapshot, leaves: PerClass<Option<Minor>>) -> PerClass<u64> {
    leaves.map(|_, m| m.map_or(0, |m| snap.dropped_at(m).bytes))
}

/// Whether a slice's class needs a leaf of its own even without traffic: its limits differ
/// from what the default leaf gives (guaranteed rate, ceiling, share).
pub fn differs_from_default(limits: &Limits, tree: &TreeSpec) -> PerClass<bool> {
    PerClass::from_fn(|c| {
        let l = limits.of(c);
        l.min_rate != BWMIN || l.max_rate != *tree.ceilings().of(c) || l.share != 1
    })
}

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

use super::report::row;

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
    let period = &settings.periods;
    let snap = &obs.snapshot;
    let mut next = state.clone();
    let mut minors = minors.clone();
    let mut memory = memory.clone();
    let mut events = Vec::new();

    // Counters that restarted from zero: every record counts from zero on, drops too.
    let restarted = next.counters_epoch.is_some_and(|e| !snap.continues(e));
    if restarted {
        events.push(Event::CountersRestarted);
        for s in next.slices.values_mut() {
            s.record = s.record.restarted();
            s.drop_base = PerClass::default();
        }
    }
    next.counters_epoch = Some(snap.epoch);

    // Membership: new slices start a period; returning ones continue theirs.
    for l in live {
        let xid = l.xid;
        if let Some(s) = next.slices.get_mut(&xid)
            && s.name == l.name
            && !s.record.expired(now, period)
        {
            if s.departed {
                s.departed = false;
                events.push(Event::Returned(Who::of(&l.name, xid)));
            }
            continue;
        }
        // Its leaves come when it needs them (below). A record that expired keeps a class's
        // leaf when the class sent in the finished period (or needs it anyway); a leaf idle
        // for a whole period is given back.
        let differs = differs_from_default(&l.limits, &settings.tree);
        let leaves = next.slices.get(&xid).map_or(PerClass::default(), |old| {
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
        });
        let drop_base = drops_now(snap, leaves);
        let counters = snap.charged_bytes(xid, leaves, drop_base);
        let record = policy::start(counters, &l.limits, period.start_at(now));
        events.push(Event::NewSlice(Who::of(&l.name, xid)));
        next.slices.insert(
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

    // Departed slices keep their record (and minors) until their period ends.
    let live_xids: HashSet<u32> = live.iter().map(|l| l.xid).collect();
    next.slices.retain(|xid, s| {
        if live_xids.contains(xid) {
            return true;
        }
        let who = Who::of(&s.name, *xid);
        if !s.departed {
            s.departed = true;
            events.push(Event::Departed(who.clone()));
        }
        if !s.record.expired(now, period) {
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

    let sources = settings.source_prefixes.then(|| {
        live.iter()
            .flat_map(|l| l.sources.iter().map(|p| (*p, l.xid)))
            .collect()
    });

    // Notices whose period is over are no use to anyone.
    next.notices.retain(|n| {
        let fresh = n.period_end > now;
        if !fresh {
            events.push(Event::StaleNotice(Who::of(&n.slice, n.xid)));
        }
        fresh
    });

    // Policy, leaves and report lines.
    let mut new_notices = Vec::new();
    let mut clock_behind = false;
    let mut rows = Vec::new();
    let mut leaves = Vec::new();
    // Steering: live slices' xids with a leaf of their own; the rest go to the default leaves.
    let mut steering: HashMap<u32, ClassIds> = HashMap::new();
    for l in live {
        let Some(s) = next.slices.get_mut(&l.xid) else {
            continue;
        };
        // Drop counters below the base restarted with the kernel's state: count from zero.
        let drops = drops_now(snap, s.minors);
        s.drop_base = s
            .drop_base
            .map(|c, base| if *drops.of(c) < base { 0 } else { base });
        let counters = snap.charged_bytes(l.xid, s.minors, s.drop_base);
        // The operator's grant and limit count in the period they were given in.
        let levers = next.levers.get(&l.xid).filter(|lv| {
            lv.period_start == s.record.period_start && !s.record.expired(now, period)
        });
        let limits = levers.map_or(l.limits, |lv| lv.apply(&l.limits));
        let d = policy::decide(&s.record, counters, &limits, now, period, l.capping);
        s.record = d.record;
        clock_behind |= d.clock_behind;
        if d.reset {
            events.push(Event::NewPeriod(Who::of(&l.name, l.xid)));
        }
        if d.notify {
            let who = Who::of(&l.name, l.xid);
            let capped: Vec<CappedClass> = TrafficClass::ALL
                .into_iter()
                .filter(|c| d.record.capped(*c, &limits))
                .map(|class| CappedClass {
                    class,
                    used: d.record.used(class),
                    ceil: d.record.classes.of(class).ceil,
                    budget: limits.of(class).max,
                })
                .collect();
            events.extend(capped.iter().map(|c| Event::Capped(who.clone(), *c)));
            if settings.dry_run {
                // Nothing is capped, so nobody is told it is: the log says who would be.
                events.push(Event::WouldNotify(who, capped));
            } else {
                let notice = Notice {
                    slice: l.name.clone(),
                    xid: l.xid,
                    period_start: d.record.period_start,
                    period_end: period.end(d.record.period_start),
                    capped,
                    decided_at: now,
                    attempts: 0,
                    next_attempt: now,
                };
                next.notices.push(notice.clone());
                new_notices.push(notice);
            }
        }
        // Classes on demand: a class gets its leaf when it has sent in this period or its
        // limits differ from the default leaf's, and keeps it until a whole period passes idle.
        let differs = differs_from_default(&limits, &settings.tree);
        for class in TrafficClass::ALL {
            let needs = *differs.of(class) || s.record.used(class).0 > 0;
            if needs && s.minors.of(class).is_none() {
                match minors.allocate() {
                    Some(m) => {
                        *s.minors.of_mut(class) = Some(m);
                        *s.drop_base.of_mut(class) = snap.dropped_at(m).bytes;
                    }
                    None => events.push(Event::NoMinors(Who::of(&l.name, l.xid))),
                }
            }
            let Some(minor) = *s.minors.of(class) else {
                continue;
            };
            let lim = limits.of(class);
            // Dry run accounts and reports the lowered ceiling, and applies none.
            let ceil = if settings.dry_run {
                lim.max_rate
            } else {
                s.record.classes.of(class).ceil
            };
            leaves.push(Leaf {
                minor,
                class,
                params: ClassParams::with_shares(lim.min_rate, ceil, lim.share),
            });
        }
        if s.minors.iter().any(|(_, m)| m.is_some()) {
            steering.insert(l.xid, tree::class_ids(s.minors));
        }
        let dropped = drops.general.saturating_sub(s.drop_base.general)
            + drops.exempt.saturating_sub(s.drop_base.exempt);
        let mut line = row(
            &mut memory,
            &l.name,
            l.xid,
            &s.record,
            counters,
            &limits,
            now,
        );
        line.dropped_bytes = dropped;
        line.period_end = period.end(s.record.period_start);
        line.classes = s
            .minors
            .iter()
            .filter_map(|(_, m)| m.map(|m| m.to_string()))
            .collect();
        rows.push(line);
    }

    // Levers end with their period (and with their slice).
    let slices = &next.slices;
    next.levers.retain(|xid, lv| {
        slices
            .get(xid)
            .is_some_and(|s| s.record.period_start == lv.period_start && !lv.is_empty())
    });

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

    // The default pseudo-slice: what xids without a slice offered, counted by the classifier
    // like any xid's (not read from HTB, whose counters restart with the tree); never capped.
    let (growth, offered_now) = default_growth(&memory, snap, &live_xids, restarted);
    memory.offered = offered_now;
    let limits = &settings.default_limits;
    let default_record = match state.default {
        Some(r) => {
            // `last` at zero: the growth is what is new.
            let mut d = policy::decide(&r.restarted(), growth, limits, now, period, Capping::Never);
            d.record.emailed = false;
            d.record
        }
        None => policy::start(Counters::default(), limits, period.start_at(now)),
    };
    // Its rate in the report comes from what it used (it has no counter of its own).
    let default_counters = default_record.classes.map(|_, c| c.used.0);
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
    default_row.period_end = period.end(default_record.period_start);
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
        clock_behind,
    }
}

#[cfg(test)]
mod tests {
    use bwmon_common::{Counter, ROOT_XID};

    use super::*;
    use crate::{
        policy::Node,
        policy::rspec::Attributes,
        units::{BitsPerSec, Bytes, KBytes},
    };

    const NODE: Node = Node {
        node_cap: BitsPerSec(100_000_000),
        exempt_max: BitsPerSec(1_000_000_000),
    };
    const PERIOD: u64 = 100;

    fn limits() -> Limits {
        Limits::resolve(
            &Attributes {
                max_kbyte: Some(KBytes(1000)),
                ..Default::default()
            },
            &NODE,
        )
    }

    fn settings(dry_run: bool) -> Settings {
        Settings {
            periods: Periods::fixed(PERIOD),
            dry_run,
            tree: TreeSpec {
                node_cap: NODE.node_cap,
                exempt_max: NODE.exempt_max,
            },
            default_limits: limits(),
            source_prefixes: false,
        }
    }

    fn slice(name: &str, xid: u32) -> LiveSlice {
        LiveSlice {
            name: name.into(),
            xid,
            limits: limits(),
            capping: Capping::Policy,
            sources: Vec::new(),
        }
    }

    fn root() -> LiveSlice {
        LiveSlice {
            capping: Capping::Never,
            ..slice("root", ROOT_XID)
        }
    }

    /// A world the tests drive: what bwmon remembers, the kernel's counters and tree.
    struct World {
        state: State,
        minors: Minors,
        memory: Memory,
        obs: Observation,
        settings: Settings,
    }

    impl World {
        fn new(dry_run: bool) -> World {
            World {
                state: State::default(),
                minors: Minors::default(),
                memory: Memory::default(),
                obs: Observation::default(),
                settings: settings(dry_run),
            }
        }

        fn send(&mut self, xid: u32, bytes: u64) {
            let c = self.obs.snapshot.offered.entry(xid).or_default();
            c.general.bytes += bytes;
            c.general.packets += 1;
        }

        /// Plans at `now`, then carries the plan out the way `act` does on a perfect tree.
        fn sync(&mut self, live: &[LiveSlice], now: UnixSecs) -> Plan {
            self.obs.now = now;
            let p = plan(
                &self.state,
                &self.minors,
                &self.memory,
                live,
                &self.obs,
                &self.settings,
            );
            for op in &p.tree_ops {
                match op {
                    Op::Upsert(l) => {
                        self.obs.listed.retain(|c| c.minor != l.minor);
                        self.obs.listed.push(ClassInfo::of_leaf(l));
                    }
                    Op::Remove(m) => self.obs.listed.retain(|c| c.minor != *m),
                }
            }
            self.state = p.state.clone();
            self.minors = p.minors.clone();
            self.memory = p.memory.clone();
            p
        }

        fn leaf(&self, xid: u32) -> &ClassInfo {
            let m = self.state.slices[&xid]
                .minors
                .general
                .expect("a general leaf");
            self.obs.listed.iter().find(|c| c.minor == m).unwrap()
        }
    }

    fn line<'a>(p: &'a Plan, name: &str) -> &'a SliceStatus {
        p.rows.iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn aligned_periods_start_at_the_calendar_boundary_and_end_at_the_next() {
        let mut w = World::new(false);
        w.settings.periods = Periods {
            align: crate::time::calendar::Align::Day { hour: 0, minute: 0 },
            length: 0,
            tz: jiff::tz::TimeZone::UTC,
        };
        let day = 86_400;
        let live = [root(), slice("alice", 1001)];
        // First seen at 15:00 on day 20,000: her period is that day.
        let p = w.sync(&live, 20_000 * day + 15 * 3600);
        assert_eq!(p.state.slices[&1001].record.period_start, 20_000 * day);
        assert_eq!(line(&p, "alice").period_end, 20_001 * day);
        w.send(1001, 5000);
        let p = w.sync(&live, 20_001 * day - 1);
        assert_eq!(line(&p, "alice").bytes, 5000);
        // At midnight the next day's period starts, with nothing used.
        let p = w.sync(&live, 20_001 * day + 5);
        assert_eq!(line(&p, "alice").period_start, 20_001 * day);
        assert_eq!(line(&p, "alice").bytes, 0);
        assert_eq!(line(&p, "alice").period_end, 20_002 * day);
    }

    #[test]
    fn a_new_slice_starts_a_period_from_its_current_counter_and_gets_leaves_on_demand() {
        let mut w = World::new(false);
        w.send(1001, 5000);
        let live = [root(), slice("alice", 1001)];
        let p = w.sync(&live, 1000);
        let alice = &p.state.slices[&1001];
        assert_eq!(alice.record.period_start, 1000);
        assert_eq!(alice.record.classes.general.last, 5000);
        assert_eq!(alice.record.used(TrafficClass::General), Bytes(0));
        assert!(
            p.tree_ops.is_empty(),
            "no leaf for anybody idle: {:?}",
            p.tree_ops
        );
        assert!(p.steering.is_empty(), "default leaves meanwhile");
        assert!(p.events.contains(&Event::NewSlice(Who::of("alice", 1001))));
        let names: Vec<&str> = p.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["root", "default", "alice"]);
        // She sends: a general leaf, steered; no exempt leaf without exempt traffic.
        w.send(1001, 100);
        let p = w.sync(&live, 1001);
        let alice = &p.state.slices[&1001];
        assert!(alice.minors.general.is_some() && alice.minors.exempt.is_none());
        assert_eq!(p.steering[&1001], tree::class_ids(alice.minors));
        assert_eq!(p.tree_ops.len(), 1, "{:?}", p.tree_ops);
        // A slice whose limits differ from the default leaf's has its leaves from the start.
        let mut fast = slice("fast", 1002);
        fast.limits.general.share = 3;
        let p = w.sync(&[root(), slice("alice", 1001), fast], 1002);
        assert!(p.state.slices[&1002].minors.general.is_some());
        assert!(p.state.slices[&1002].minors.exempt.is_none());
    }

    #[test]
    fn an_unchanged_ceiling_plans_no_write() {
        let mut w = World::new(false);
        let live = [root(), slice("alice", 1001)];
        w.sync(&live, 1000);
        w.send(1001, 1000);
        w.sync(&live, 1001);
        w.send(1001, 1000);
        let p = w.sync(&live, 1002);
        assert!(p.tree_ops.is_empty(), "{:?}", p.tree_ops);
    }

    #[test]
    fn a_slice_over_its_threshold_gets_a_lower_leaf_and_one_notice() {
        let mut w = World::new(false);
        let live = [root(), slice("alice", 1001)];
        w.sync(&live, 1000);
        w.send(1001, 900 * 1024);
        let p = w.sync(&live, 1050);
        let expect = BitsPerSec((1000 - 900) * 1024 * 8 / 50);
        assert_eq!(w.leaf(1001).params.ceil, expect);
        assert_eq!(p.new_notices.len(), 1);
        assert_eq!(p.new_notices[0].capped[0].ceil, expect);
        assert!(line(&p, "alice").capped);
        let p = w.sync(&live, 1051);
        assert!(p.new_notices.is_empty(), "one notice per period");
    }

    #[test]
    fn root_and_default_are_accounted_and_never_capped() {
        let mut w = World::new(false);
        let live = [root()];
        w.sync(&live, 1000);
        w.send(ROOT_XID, 1 << 30);
        // An xid without a slice: the default pseudo-slice's, counted by the classifier.
        w.send(9999, 1 << 30);
        let p = w.sync(&live, 1010);
        let (root_line, default_line) = (line(&p, "root"), line(&p, "default"));
        assert_eq!(root_line.bytes, 1 << 30);
        assert_eq!(default_line.bytes, 1 << 30);
        assert!(!root_line.capped && !default_line.capped && !default_line.emailed);
        assert!(p.new_notices.is_empty());
        assert_eq!(w.leaf(ROOT_XID).params.ceil, NODE.node_cap);
        assert_eq!(w.leaf(ROOT_XID).params.quantum, 1600);
    }

    #[test]
    fn an_xid_a_snapshot_left_out_adds_only_what_is_new_when_it_comes_back() {
        let mut w = World::new(false);
        let live = [root()];
        w.sync(&live, 1000);
        w.send(9999, 100 << 20);
        assert_eq!(line(&w.sync(&live, 1010), "default").bytes, 100 << 20);
        // Not read this time (not marked seen in a fresh seen map): nothing new, nothing lost.
        let kept = w.obs.snapshot.offered.remove(&9999).unwrap();
        assert_eq!(line(&w.sync(&live, 1020), "default").bytes, 100 << 20);
        w.obs.snapshot.offered.insert(9999, kept);
        w.send(9999, 50 << 20);
        assert_eq!(line(&w.sync(&live, 1030), "default").bytes, 150 << 20);
    }

    #[test]
    fn dry_run_reports_the_cap_but_plans_the_max_rate_and_mails_nobody() {
        let mut w = World::new(true);
        let live = [root(), slice("alice", 1001)];
        w.sync(&live, 1000);
        w.send(1001, 2000 * 1024);
        let p = w.sync(&live, 1010);
        assert!(line(&p, "alice").capped);
        assert!(p.new_notices.is_empty() && p.state.notices.is_empty());
        let would: Vec<_> = p
            .events
            .iter()
            .filter(|e| matches!(e, Event::WouldNotify(..)))
            .collect();
        assert_eq!(would.len(), 1, "{:?}", p.events);
        assert_eq!(w.leaf(1001).params.ceil, NODE.node_cap);
        let p = w.sync(&live, 1011);
        assert!(
            !p.events.iter().any(|e| matches!(e, Event::WouldNotify(..))),
            "said once per period"
        );
    }

    #[test]
    fn a_slice_that_leaves_and_returns_within_its_period_continues_it() {
        let mut w = World::new(false);
        let with = [root(), slice("alice", 1001)];
        let without = [root()];
        w.sync(&with, 1000);
        w.send(1001, 850 * 1024);
        w.sync(&with, 1010);
        let minors = w.state.slices[&1001].minors;
        let p = w.sync(&without, 1020);
        assert!(p.state.slices[&1001].departed);
        assert!(
            !p.steering.contains_key(&1001),
            "its traffic goes to default"
        );
        let general = minors.general.unwrap();
        assert!(p.tree_ops.contains(&Op::Remove(general)));
        assert!(p.events.contains(&Event::Orphan(general)));
        let p = w.sync(&with, 1030);
        assert!(p.events.contains(&Event::Returned(Who::of("alice", 1001))));
        assert_eq!(line(&p, "alice").period_start, 1000, "no fresh budget");
        assert!(line(&p, "alice").capped);
        assert_eq!(p.state.slices[&1001].minors, minors);
        w.sync(&without, 1040);
        let p = w.sync(&without, 1100);
        assert!(
            !p.state.slices.contains_key(&1001),
            "forgotten at period end"
        );
        assert!(p.events.contains(&Event::Forgotten(Who::of("alice", 1001))));
        assert_eq!(
            p.minors.available(),
            Minors::default().available(),
            "its minor freed"
        );
    }

    #[test]
    fn classes_nobody_owns_are_removed_and_the_fixed_ones_kept() {
        let mut w = World::new(false);
        w.sync(&[root()], 1000);
        w.obs.listed.push(ClassInfo::created(
            Minor(0x4444),
            Some(tree::GENERAL_PARENT),
            ClassParams::with_shares(BitsPerSec(1000), BitsPerSec(1000), 1),
        ));
        for f in w.settings.tree.fixed_classes() {
            w.obs
                .listed
                .push(ClassInfo::created(f.minor, f.parent, f.params));
        }
        let p = w.sync(&[root()], 1001);
        assert_eq!(p.tree_ops, [Op::Remove(Minor(0x4444))]);
    }

    #[test]
    fn drops_are_charged_back_to_the_slice_whose_leaf_dropped_them() {
        let mut w = World::new(false);
        let live = [root(), slice("alice", 1001)];
        w.sync(&live, 1000);
        w.send(1001, 10_000);
        w.sync(&live, 1001);
        let leaf = w.leaf(1001).minor;
        // 10,000 more, of which her leaf dropped 4,000.
        w.send(1001, 10_000);
        w.obs.snapshot.dropped.insert(
            leaf,
            Counter {
                bytes: 4000,
                packets: 3,
            },
        );
        let p = w.sync(&live, 1002);
        assert_eq!(line(&p, "alice").bytes, 16_000);
        assert_eq!(line(&p, "alice").dropped_bytes, 4000);
    }

    #[test]
    fn no_minors_left_is_an_event_and_the_slice_goes_to_default() {
        let mut w = World::new(false);
        w.minors = Minors::with_assigned((0x100..=0xffff).map(Minor));
        w.sync(&[slice("alice", 1001)], 1000);
        w.send(1001, 1000);
        let p = w.sync(&[slice("alice", 1001)], 1001);
        assert_eq!(line(&p, "alice").bytes, 1000, "counted all the same");
        assert!(p.events.contains(&Event::NoMinors(Who::of("alice", 1001))));
        assert!(p.steering.is_empty());
    }

    #[test]
    fn a_new_slice_on_a_reused_minor_is_charged_exactly_what_it_sent() {
        let mut w = World::new(false);
        let bob = [root(), slice("bob", 1002)];
        w.sync(&bob, 1000);
        w.send(1002, 10);
        w.sync(&bob, 1001);
        let leaves = w.state.slices[&1002].minors;
        let general = leaves.general.expect("bob sent: a leaf");
        // bob sends 50,000 more; his leaf drops 30,000 of them.
        w.send(1002, 50_000);
        w.obs.snapshot.dropped.insert(
            general,
            Counter {
                bytes: 30_000,
                packets: 20,
            },
        );
        w.sync(&bob, 1010);
        assert_eq!(line(&w.sync(&bob, 1011), "bob").bytes, 20_010);
        // bob leaves and is forgotten at his period's end; carol gets his minors.
        w.sync(&[root()], 1020);
        w.sync(&[root()], 1100);
        let carol = [root(), slice("carol", 1003)];
        w.sync(&carol, 1101);
        w.send(1003, 12_345);
        let p = w.sync(&carol, 1102);
        assert_eq!(w.state.slices[&1003].minors, leaves, "bob's minor reused");
        assert_eq!(line(&p, "carol").bytes, 12_345, "bob's drops are not hers");
        assert_eq!(line(&p, "carol").dropped_bytes, 0);
        // Her own drops are subtracted: of 1,000 more bytes, 345 were dropped.
        w.send(1003, 1000);
        w.obs.snapshot.dropped.insert(
            general,
            Counter {
                bytes: 30_000 + 345,
                packets: 21,
            },
        );
        let p = w.sync(&carol, 1103);
        assert_eq!(line(&p, "carol").bytes, 13_000);
    }

    #[test]
    fn counters_lost_with_the_kernel_state_carry_usage_instead_of_a_fresh_budget() {
        let mut w = World::new(false);
        let live = [root(), slice("alice", 1001)];
        w.sync(&live, 1000);
        w.send(1001, 700 * 1024);
        w.sync(&live, 1010);
        // Reboot: the kernel's counters start again from zero (a new epoch), the tree is new.
        w.obs.snapshot = Snapshot {
            epoch: 1,
            epoch_before_array: 1,
            ..Snapshot::default()
        };
        w.obs.listed.clear();
        w.obs.tree_created = true;
        w.send(1001, 200 * 1024);
        let p = w.sync(&live, 1020);
        let alice = line(&p, "alice");
        assert_eq!(alice.period_start, 1000, "same period");
        assert_eq!(alice.bytes, 900 * 1024, "700 KiB before, 200 KiB after");
        assert!(alice.capped, "900 KiB is over the 800 KiB threshold");
        assert!(
            !p.events.iter().any(|e| matches!(e, Event::NewPeriod(_))),
            "{:?}",
            p.events
        );
        assert!(p.events.contains(&Event::CountersRestarted));
    }

    #[test]
    fn a_state_saved_before_the_offered_array_goes_on_with_the_same_counters() {
        // An older bwmon saved epoch 7 (its formula had no array); the new one reads the same
        // counters (the array empty, the hash as it was) under epoch 8.
        let mut w = World::new(false);
        let live = [root(), slice("alice", 1001)];
        w.obs.snapshot.epoch = 7;
        w.obs.snapshot.epoch_before_array = 7;
        w.sync(&live, 1000);
        w.send(1001, 700 * 1024);
        w.sync(&live, 1010);
        w.obs.snapshot.epoch = 8;
        w.send(1001, 50 * 1024);
        let p = w.sync(&live, 1020);
        assert_eq!(
            line(&p, "alice").bytes,
            750 * 1024,
            "charged once, not twice"
        );
        assert!(!p.events.contains(&Event::CountersRestarted));
        // From then on the new epoch is the one that goes on; a lost array is a restart.
        w.send(1001, 10 * 1024);
        assert_eq!(line(&w.sync(&live, 1030), "alice").bytes, 760 * 1024);
        w.obs.snapshot = Snapshot {
            epoch: 9,
            epoch_before_array: 7,
            ..Snapshot::default()
        };
        w.send(1001, 5 * 1024);
        let p = w.sync(&live, 1040);
        assert!(p.events.contains(&Event::CountersRestarted));
        assert_eq!(line(&p, "alice").bytes, 765 * 1024);
    }

    #[test]
    fn a_clock_behind_the_period_start_holds_every_period() {
        let mut w = World::new(false);
        let live = [root(), slice("alice", 1001)];
        w.sync(&live, 100_000);
        w.send(1001, 900 * 1024);
        let p = w.sync(&live, 50_000);
        assert!(p.clock_behind);
        assert_eq!(line(&p, "alice").period_start, 100_000);
        assert_eq!(line(&p, "alice").bytes, 900 * 1024);
        let p = w.sync(&live, 100_001);
        assert!(!p.clock_behind);
        assert_eq!(line(&p, "alice").period_start, 100_000);
    }

    #[test]
    fn a_leaf_idle_for_a_whole_period_is_given_back() {
        let mut w = World::new(false);
        let live = [root(), slice("alice", 1001)];
        w.sync(&live, 1000);
        w.send(1001, 1000);
        w.sync(&live, 1001);
        assert!(w.state.slices[&1001].minors.general.is_some());
        // A new period: she sent in the last one, so she keeps it.
        let p = w.sync(&live, 1100);
        assert!(p.state.slices[&1001].minors.general.is_some(), "kept");
        // A whole period idle: given back, removed from the tree.
        let p = w.sync(&live, 1200);
        assert!(p.state.slices[&1001].minors.general.is_none());
        assert!(p.tree_ops.iter().any(|o| matches!(o, Op::Remove(_))));
        assert!(!p.steering.contains_key(&1001));
    }
}
