//! The plan of one sync: a pure function from what bwmon remembers, what it observed and what
//! the config says to everything the sync will do — new records, leaves to create, change and
//! remove, the xid → class steering, notices, the report, and the events to log. No clock, no
//! I/O: the kernel, the tree, the state file and the log only carry the plan out.
//!
//! [`plan`] runs in named stages, each in a file of its own: the counters' restart and the
//! slices' membership (`membership`: new, returning, departed, forgotten), each live slice's
//! policy decision and report line (`slice`), what it tells and to which channels (`notices`:
//! warnings, the cap, its lift, a new period), its leaves and steering (`leaves`, the
//! tree's diff in [`crate::htb::tree::diff_leaves`]), the default pseudo-slice
//! (`default_slice`), and what each class is guaranteed of its cap now (`guarantees`).

mod default_slice;
mod guarantees;
mod leaves;
mod membership;
mod notices;
mod slice;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use bwmon_common::ClassIds;
use default_slice::DEFAULT_XID;
use ipnet::IpNet;
pub(crate) use leaves::differs_from_default;

use crate::{
    class::PerClass,
    datapath::Snapshot,
    htb::{
        ClassInfo, Leaf, Minor, Op, TreeSpec,
        minors::Minors,
        tree::{self, Urgency},
    },
    policy::{
        Capping, ClockJump, Counters, Limits, received::Count, shares::Claim, warnings::Levels,
    },
    serve::status::SliceStatus,
    state::{ClassNote, Notice, State},
    time::UnixSecs,
    time::calendar::Periods,
    units::BitsPerSec,
};

/// A slice that is in force this sync: root, or one of the slices file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LiveSlice {
    /// Name.
    pub(crate) name: String,
    /// xid.
    pub(crate) xid: u32,
    /// Its limits, resolved against the node.
    pub(crate) limits: Limits,
    /// Whether the policy may cap it (root: never).
    pub(crate) capping: Capping,
    /// Source prefixes (for `xid_source = "source"`).
    pub(crate) sources: Vec<IpNet>,
    /// Which bytes its budget covers (`count`).
    pub(crate) count: Count,
}

/// What the config decides for a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Where periods start and end.
    pub(crate) periods: Periods,
    /// Account, report and notify, but leave every leaf at its max rate.
    pub(crate) dry_run: bool,
    /// The tree's fixed part.
    pub(crate) tree: TreeSpec,
    /// The default pseudo-slice's limits (the config's `[defaults]`).
    pub(crate) default_limits: Limits,
    /// Whether source prefixes steer xids (`xid_source = "source"`).
    pub(crate) source_prefixes: bool,
    /// The levels of each budget a slice is warned of (`warn_at`).
    pub(crate) warn_at: Levels,
    /// Whether notices go to a webhook too (`[webhook]`).
    pub(crate) webhook: bool,
}

/// What one sync saw, at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Observation {
    /// When (seconds since the epoch).
    pub(crate) now: UnixSecs,
    /// The kernel's counters.
    pub(crate) snapshot: Snapshot,
    /// The tree's classes with their counters.
    pub(crate) listed: Vec<ClassInfo>,
    /// The tree was (re)created since the last sync: its counters restarted from zero.
    pub(crate) tree_created: bool,
}

/// What bwmon remembers between syncs, besides the persisted state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// Each xid's counters at the previous sync, and when, for the rates in the report.
    pub(crate) previous: HashMap<u32, (Counters, UnixSecs)>,
    /// Every xid's offered bytes at the previous sync (and the overflow slot's, under
    /// [`OVERFLOW_KEY`]): the default pseudo-slice grows by what xids without a slice added.
    pub(crate) offered: HashMap<u32, Counters>,
}

/// The key of the overflow slot among [`Memory::offered`] (no xid can have it: it is
/// `(uid_t)-1`, which the slices file refuses).
const OVERFLOW_KEY: u32 = u32::MAX;

/// The slice an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Who {
    /// Its name.
    pub(crate) slice: String,
    /// Its xid.
    pub(crate) xid: u32,
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
pub(crate) enum Event {
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
    Capped(Who, ClassNote),
    /// Dry run: the slice would have been capped and told so (nobody is mailed).
    WouldNotify(Who, Vec<ClassNote>),
    /// A class used a level of its budget (`warn_at`) and a warning was queued.
    Warned(Who, ClassNote),
    /// Dry run: the slice would have been warned (nobody is told).
    WouldWarn(Who, Vec<ClassNote>),
    /// A class of the tree belongs to no slice and is removed.
    Orphan(Minor),
    /// The kernel's counters restarted from zero (reboot, lost pins): usage is carried.
    CountersRestarted,
    /// A slice's period started more than one period after the clock: a new one starts now,
    /// with the usage carried.
    ClockJumped(Who, ClockJump),
}

/// Everything one sync will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The state after this sync.
    pub(crate) state: State,
    /// The minor allocator after this sync.
    pub(crate) minors: Minors,
    /// What the plan remembers for the next one.
    pub(crate) memory: Memory,
    /// xid → class ids for the classifier.
    pub(crate) steering: HashMap<u32, ClassIds>,
    /// xid → the ceiling its (general) downloads are policed at: the slices held below their
    /// max rate (capped, or under an operator's limit).
    pub(crate) policers: HashMap<u32, BitsPerSec>,
    /// Source prefix → xid, when source prefixes steer.
    pub(crate) sources: Option<Vec<(IpNet, u32)>>,
    /// Changes to the tree: missing or different leaves, orphans, enforcement first
    /// ([`tree::enforcement_first`]).
    pub(crate) tree_ops: Vec<Op>,
    /// Notices decided in this sync (also queued in `state`).
    pub(crate) new_notices: Vec<Notice>,
    /// The report's lines: root, default, then the slices in file order.
    pub(crate) rows: Vec<SliceStatus>,
    /// What to log.
    pub(crate) events: Vec<Event>,
    /// The clock is earlier than a slice's period start (periods held).
    pub(crate) clock_behind: bool,
}

/// The average rate of each class between the `previous` counters (and when they were read)
/// and `counters` at `now`; zero without an earlier reading or time between the two.
fn rate(
    previous: Option<&(Counters, UnixSecs)>,
    counters: Counters,
    now: UnixSecs,
) -> PerClass<BitsPerSec> {
    match previous {
        Some((prev, at)) if now > *at => PerClass::from_fn(|c| {
            BitsPerSec(counters.of(c).saturating_sub(*prev.of(c)) * 8 / (now - at))
        }),
        _ => PerClass::default(),
    }
}

impl Memory {
    /// The rate of `xid` since the previous sync ([`rate`]); `counters` are remembered for the
    /// next one.
    fn measure(&mut self, xid: u32, counters: Counters, now: UnixSecs) -> PerClass<BitsPerSec> {
        let rate = rate(self.previous.get(&xid), counters, now);
        self.previous.insert(xid, (counters, now));
        rate
    }
}

/// A plan under way: what the stages read, and what they carry forward to the next.
struct Draft<'a> {
    now: UnixSecs,
    snap: &'a Snapshot,
    settings: &'a Settings,
    /// The state after this sync, so far.
    state: State,
    minors: Minors,
    memory: Memory,
    events: Vec<Event>,
}

/// What the live slices' stages produce besides the state.
#[derive(Default)]
struct SliceOutputs {
    /// Their report lines, in the file's order.
    rows: Vec<SliceStatus>,
    /// Their leaves as the tree should have them.
    leaves: Vec<Leaf>,
    /// xid → class ids of those with a leaf of their own.
    steering: HashMap<u32, ClassIds>,
    /// xid → download ceiling of those held below their max rate.
    policers: HashMap<u32, BitsPerSec>,
    /// xid → what each class claims of its cap (the default pseudo-slice's too).
    claims: HashMap<u32, PerClass<Claim>>,
    /// The leaves that enforce a ceiling: created first.
    urgent: HashMap<Minor, Urgency>,
    clock_behind: bool,
}

/// Plans one sync.
pub(crate) fn plan(
    state: &State,
    minors: &Minors,
    memory: &Memory,
    live: &[LiveSlice],
    obs: &Observation,
    settings: &Settings,
) -> Plan {
    let mut draft = Draft {
        now: obs.now,
        snap: &obs.snapshot,
        settings,
        state: state.clone(),
        minors: minors.clone(),
        memory: memory.clone(),
        events: Vec::new(),
    };
    let live_xids: HashSet<u32> = live.iter().map(|l| l.xid).collect();
    let restarted = draft.restart_counters();
    draft.admit(live);
    draft.depart(&live_xids);
    draft.drop_stale_notices();
    let mut out = SliceOutputs::default();
    for l in live {
        draft.slice(l, &mut out);
    }
    draft.end_levers();
    let tree_ops = tree::enforcement_first(
        draft.tree_ops(&obs.listed, &out.leaves),
        &obs.listed,
        &out.urgent,
    );
    let (default_row, default_claims) = draft.default_slice(state.default, &live_xids, restarted);
    out.rows.insert(1.min(out.rows.len()), default_row);
    out.claims.insert(DEFAULT_XID, default_claims);
    guarantees::guarantee(&mut out.rows, &out.claims, settings.tree.ceilings());
    let sources = settings.source_prefixes.then(|| {
        live.iter()
            .flat_map(|l| l.sources.iter().map(|p| (*p, l.xid)))
            .collect()
    });
    // Queued by this plan: the ids after the last one given before it.
    let new_notices = (draft.state.notices.iter())
        .filter(|n| n.id >= state.next_notice)
        .cloned()
        .collect();
    Plan {
        state: draft.state,
        minors: draft.minors,
        memory: draft.memory,
        steering: out.steering,
        policers: out.policers,
        sources,
        tree_ops,
        new_notices,
        rows: out.rows,
        events: draft.events,
        clock_behind: out.clock_behind,
    }
}
