//! One sync, in three steps: **observe** (the tree, the attachment, the counters, the clock —
//! one snapshot), **plan** (pure, in [`plan`]: records, leaves, steering, notices, report),
//! **act** (carry the plan out on the kernel and the tree, log its events (`log`), then
//! persist). The [`Syncer`] owns the state between syncs, so it also answers the operator's
//! requests on a slice (`operator`). The kernel is reached through the two small traits of
//! [`kernel`], so the logic is tested without root (and for real in `tests/`).

mod cgroups;
pub(crate) mod kernel;
mod log;
mod operator;
pub(crate) mod plan;
mod report;
mod tree;

use std::collections::{HashMap, HashSet};

use bwmon_common::{ClassIds, ROOT_XID, XidSource};

use crate::units::BitsPerSec;
use ipnet::IpNet;
use tracing::{info, warn};

pub(crate) use kernel::{Attachment, Kernel, Tree};
pub(crate) use operator::PullOutcome;
use plan::{LiveSlice, Memory, Observation, Plan, Settings};

use crate::{
    cgroup::Hierarchy,
    config::Config,
    config::{
        patterns::PatternSpec,
        slices::{ROOT_NAME, SliceSpec},
    },
    error_kind::{ErrorCounts, ErrorKind},
    htb::minors::Minors,
    policy::rspec::Attributes,
    policy::{Capping, Limits, Node},
    serve::status::StatusReport,
    state::{Channel, Notice, NoticeId, State, StateFile},
    time::UnixSecs,
};

/// The root slice's share (bwlimit gave it 5).
const ROOT_SHARE: u32 = 5;
/// Changes sent to the tree at once: between batches a sync checks whether the daemon is
/// stopping and whether its time is up. Adding a class costs a few milliseconds once there are
/// 20,000 (the kernel walks them all), so a batch stays well under a second.
const TREE_BATCH: usize = 64;
/// How long one sync may spend changing the tree; what is left is done by the next syncs.
const TREE_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// What one sync produced.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The status to serve.
    pub(crate) report: StatusReport,
    /// Notices decided in this sync (also queued in the state), to deliver.
    pub(crate) new_notices: Vec<Notice>,
}

/// What was last written to the kernel's maps, so unchanged maps are not rewritten.
#[derive(Debug, Default)]
struct Pushed {
    classes: Option<HashMap<u32, ClassIds>>,
    policers: Option<HashMap<u32, BitsPerSec>>,
    sources: Option<Vec<(IpNet, u32)>>,
    exempt: bool,
    cgroups: Option<(HashMap<u64, u32>, u32)>,
}

/// The sync loop's memory between syncs: the one owner of the state.
pub(crate) struct Syncer<K, T> {
    config: Config,
    node: Node,
    kernel: K,
    tree: T,
    state: State,
    file: StateFile,
    minors: Minors,
    memory: Memory,
    slices: Vec<SliceSpec>,
    /// The slices file's `[[cgroups]]` tables.
    patterns: Vec<PatternSpec>,
    /// The cgroup v2 hierarchy, where the host has one.
    hierarchy: Option<Hierarchy>,
    /// The slices the patterns made at the last scan.
    found: Vec<SliceSpec>,
    /// The tenant cgroups' ids → xids and levels of the last scan, to write.
    cgroup_map: Option<(HashMap<u64, u32>, u32)>,
    pushed: Pushed,
    errors: ErrorCounts,
    last_report: StatusReport,
    /// The clock was behind a period start at the last sync (said once, not every sync).
    clock_behind: bool,
    /// The tree was (re)created since the last observation: its counters restarted.
    tree_created: bool,
    /// Notices decided outside a sync (a lever pulled), handed over with the next one's.
    told: Vec<Notice>,
    /// The daemon is stopping: a sync stops changing the tree between batches.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
    /// Saves of the state that failed in a row (said once per streak).
    failed_saves: u64,
}

impl<K: Kernel, T: Tree> Syncer<K, T> {
    /// A syncer starting from `state` (as loaded from `file`) with the slices of the last good
    /// slices file.
    pub(crate) fn new(
        config: Config,
        kernel: K,
        tree: T,
        file: StateFile,
        state: State,
        slices: Vec<SliceSpec>,
    ) -> Self {
        let minors = Minors::with_assigned(
            state
                .slices
                .values()
                .flat_map(|s| [s.minors.general, s.minors.exempt])
                .flatten(),
        );
        let node = config.node();
        Self {
            config,
            node,
            kernel,
            tree,
            state,
            file,
            minors,
            memory: Memory::default(),
            slices,
            patterns: Vec::new(),
            hierarchy: None,
            found: Vec::new(),
            cgroup_map: None,
            pushed: Pushed::default(),
            errors: ErrorCounts::new(),
            last_report: StatusReport::default(),
            clock_behind: false,
            tree_created: false,
            told: Vec::new(),
            stopping: None,
            failed_saves: 0,
        }
    }

    /// From now on a sync stops changing the tree between batches once `stopping` is true
    /// (SIGTERM): the rest is left for the next start.
    pub(crate) fn stop_on(&mut self, stopping: tokio::sync::watch::Receiver<bool>) {
        self.stopping = Some(stopping);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.as_ref().is_some_and(|s| *s.borrow())
    }

    /// The persisted accounting.
    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// Applies a reloaded configuration from the next sync on: caps, exempt prefixes (written
    /// again, make-before-break), defaults, dry run, take-over. Keys that need a restart are
    /// the caller's to refuse ([`Config::fixed_changes`]).
    pub(crate) fn set_config(&mut self, config: Config) {
        if config.exempt_prefixes != self.config.exempt_prefixes {
            self.pushed.exempt = false;
        }
        self.node = config.node();
        self.config = config;
    }

    /// The slices in force (root aside).
    pub(crate) fn slices(&self) -> &[SliceSpec] {
        &self.slices
    }

    /// Replaces the slices (a good new slices file).
    pub(crate) fn set_slices(&mut self, slices: Vec<SliceSpec>) {
        self.slices = slices;
    }

    /// Counts a failure of `kind` that was handled elsewhere (the slices file, delivery).
    pub(crate) fn count_error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_default() += 1;
    }

    /// The notice `id` was delivered on `channel`: forgotten there (and once delivered
    /// everywhere, dropped), and the state saved at once.
    pub(crate) fn delivered(&mut self, id: NoticeId, channel: Channel) {
        if self.state.delivered(id, channel) {
            self.file.mark_dirty();
            self.persist();
        }
    }

    /// Saves the state when it changed since the last good save; a failure is counted and
    /// retried at the next call. A streak of failures is said once, at its first, and its
    /// length when a save works again (not one warning per sync: 86,400 a day at 1 s).
    pub(crate) fn persist(&mut self) {
        match self.file.save_if_dirty(&self.state) {
            Ok(()) if self.failed_saves > 0 => {
                info!(
                    failed = self.failed_saves,
                    "the state is saved again, after {} failed attempts", self.failed_saves
                );
                self.failed_saves = 0;
            }
            Ok(()) => {}
            Err(e) => {
                self.failed_saves += 1;
                if self.failed_saves == 1 {
                    self.error(
                        ErrorKind::State,
                        "saving the state (said once until a save works)",
                        &e,
                    );
                } else {
                    self.count_error(ErrorKind::State);
                }
            }
        }
    }

    fn error(&mut self, kind: ErrorKind, what: &str, e: &(dyn std::error::Error + 'static)) {
        self.count_error(kind);
        let mut why = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            why.push_str(": ");
            why.push_str(&c.to_string());
            cause = c.source();
        }
        warn!(kind = kind.name(), error = %why, "{what}; retrying next interval");
    }

    /// A slice's limits before levers, from its own attributes ([`Limits::base`]).
    fn base_limits(&self, attrs: &Attributes) -> Limits {
        Limits::base(attrs, &self.config.defaults, &self.node)
    }

    /// Root and the slices of the file, with their limits resolved.
    fn live(&self) -> Vec<LiveSlice> {
        let root_attrs = Attributes {
            share: Some(ROOT_SHARE),
            i2_share: Some(ROOT_SHARE),
            ..Default::default()
        };
        let mut live = vec![LiveSlice {
            name: ROOT_NAME.into(),
            xid: ROOT_XID,
            limits: self.base_limits(&root_attrs),
            capping: Capping::Never,
            sources: Vec::new(),
            count: self.config.count,
        }];
        live.extend(self.slices.iter().chain(&self.found).map(|s| LiveSlice {
            name: s.name.clone(),
            xid: s.xid,
            limits: self.base_limits(&s.attrs),
            capping: Capping::Policy,
            sources: s.sources.clone(),
            count: s.count.unwrap_or(self.config.count),
        }));
        live
    }

    fn settings(&self) -> Settings {
        Settings {
            periods: self.config.periods.clone(),
            dry_run: self.config.dry_run,
            tree: self.tree_spec(),
            default_limits: self.base_limits(&Attributes::default()),
            source_prefixes: self.config.xid_source == XidSource::Source,
            warn_at: self.config.warn_at,
            webhook: self.config.webhook.is_some(),
        }
    }

    /// One sync at `now` (seconds since the epoch): observe, plan, act. Failing steps are
    /// logged, counted, and retried next time; one bad slice never stops the others.
    pub(crate) fn step(&mut self, now: UnixSecs) -> Outcome {
        let started = std::time::Instant::now();
        let Some(obs) = self.observe(now) else {
            return Outcome {
                report: self.last_report.clone(),
                new_notices: std::mem::take(&mut self.told),
            };
        };
        let plan = plan::plan(
            &self.state,
            &self.minors,
            &self.memory,
            &self.live(),
            &obs,
            &self.settings(),
        );
        let outcome = self.act(plan, now, started);
        let kept: HashSet<u32> = self.state.slices.keys().copied().collect();
        if let Err(e) = self.kernel.tend_counters(&obs.snapshot, &kept) {
            self.error(ErrorKind::Datapath, "tending the counter slots", &e);
        }
        outcome
    }

    /// The tree (installed if it vanished), the attachment, the counters. `None` when the
    /// counters cannot be read: nothing can be planned without them.
    fn observe(&mut self, now: UnixSecs) -> Option<Observation> {
        self.scan_cgroups();
        let spec = self.tree_spec();
        // The listing made while checking the tree serves the whole sync.
        let listed = match self
            .tree
            .ensure_tree(&spec, self.config.take_over_root_qdisc)
        {
            Ok(installed) => {
                self.tree_created |= installed.created;
                if installed.created {
                    info!(iface = %self.config.interface, "HTB tree (re)built; adding every slice");
                }
                installed.classes
            }
            Err(e) => {
                self.error(ErrorKind::Htb, "installing the HTB tree", &e);
                self.list_tree()
            }
        };
        match self.kernel.ensure_attached() {
            Ok(Attachment::InPlace) => {}
            Ok(Attachment::Reattached) => self.count_error(ErrorKind::Datapath),
            Ok(Attachment::Reloaded) => {
                // Fresh maps: every one of them is written again.
                self.pushed = Pushed::default();
                self.count_error(ErrorKind::Datapath);
            }
            Err(e) => self.error(ErrorKind::Datapath, "checking the datapath", &e),
        }
        match self.kernel.snapshot() {
            Ok(snapshot) => Some(Observation {
                now,
                snapshot,
                listed,
                tree_created: std::mem::take(&mut self.tree_created),
            }),
            Err(e) => {
                self.error(ErrorKind::Datapath, "reading the counters", &e);
                None
            }
        }
    }

    /// Carries `plan` out: the log, the maps, the tree; then persists and reports.
    fn act(&mut self, plan: Plan, now: UnixSecs, started: std::time::Instant) -> Outcome {
        self.log_events(&plan.events, plan.clock_behind, now);
        if !self.pushed.exempt {
            match self.kernel.set_exempt(&self.config.exempt_prefixes) {
                Ok(()) => self.pushed.exempt = true,
                Err(e) => self.error(ErrorKind::Datapath, "loading the exempt prefixes", &e),
            }
        }
        if self.pushed.classes.as_ref() != Some(&plan.steering) {
            match self.kernel.set_classes(&plan.steering) {
                Ok(()) => self.pushed.classes = Some(plan.steering),
                Err(e) => self.error(ErrorKind::Datapath, "updating xid classes", &e),
            }
        }
        if let Some(sources) = plan.sources
            && self.pushed.sources.as_ref() != Some(&sources)
        {
            match self.kernel.set_sources(&sources) {
                Ok(()) => self.pushed.sources = Some(sources),
                Err(e) => self.error(ErrorKind::Datapath, "updating source prefixes", &e),
            }
        }
        if let Some(map) = self.cgroup_map.take()
            && self.pushed.cgroups.as_ref() != Some(&map)
        {
            match self.kernel.set_cgroups(&map.0, map.1) {
                Ok(()) => self.pushed.cgroups = Some(map),
                Err(e) => self.error(ErrorKind::Datapath, "updating tenant cgroups", &e),
            }
        }
        if self.pushed.policers.as_ref() != Some(&plan.policers) {
            match self.kernel.set_policers(&plan.policers) {
                Ok(()) => self.pushed.policers = Some(plan.policers),
                Err(e) => self.error(ErrorKind::Datapath, "updating download policers", &e),
            }
        }
        let leaves_pending = self.apply_tree(&plan.tree_ops, started);

        let changed = plan.state != self.state;
        self.state = plan.state;
        self.minors = plan.minors;
        self.memory = plan.memory;
        if changed {
            self.file.mark_dirty();
        }
        self.persist();

        let cgroups: HashMap<u32, String> = self
            .cgroup_slices()
            .map(|(s, p)| (s.xid, p.to_string()))
            .collect();
        let mut rows = plan.rows;
        for row in &mut rows {
            row.cgroup = cgroups.get(&row.xid).cloned();
        }
        let report = StatusReport {
            now,
            period_secs: self.config.periods.nominal_secs(),
            interface: self.config.interface.clone(),
            dry_run: self.config.dry_run,
            slices: rows,
            last_sync_secs: started.elapsed().as_secs_f64(),
            errors: self.errors.clone(),
            warnings: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_memory_bytes: self.kernel.kernel_memory_bytes(),
            leaves_pending,
        };
        self.last_report = report.clone();
        let mut new_notices = std::mem::take(&mut self.told);
        new_notices.extend(plan.new_notices);
        Outcome {
            report,
            new_notices,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use bwmon_common::{Counter, XidCounters};

    use super::*;
    use crate::{
        cgroup::{self, Pattern},
        htb::{ClassInfo, TreeSpec},
    };
    use crate::{
        class::{PerClass, TrafficClass},
        datapath::{DatapathError, Snapshot},
        htb::{ClassParams, HtbError, Installed, Leaf, Minor, Op, tree},
        serve::status::SliceStatus,
        units::{BitsPerSec, KBytes},
    };

    /// A kernel whose counters the test sets.
    #[derive(Default)]
    struct FakeKernel {
        offered: BTreeMap<u32, XidCounters>,
        classes: HashMap<u32, ClassIds>,
        fail_snapshot: bool,
    }

    impl Kernel for FakeKernel {
        fn ensure_attached(&mut self) -> Result<Attachment, DatapathError> {
            Ok(Attachment::InPlace)
        }
        fn snapshot(&mut self) -> Result<Snapshot, DatapathError> {
            if self.fail_snapshot {
                return Err(DatapathError::MissingProgram { program: "fake" });
            }
            Ok(Snapshot {
                offered: self.offered.clone(),
                ..Default::default()
            })
        }
        fn set_classes(&mut self, classes: &HashMap<u32, ClassIds>) -> Result<(), DatapathError> {
            self.classes = classes.clone();
            Ok(())
        }
        fn set_exempt(&mut self, _: &[IpNet]) -> Result<(), DatapathError> {
            Ok(())
        }
        fn tend_counters(&mut self, _: &Snapshot, _: &HashSet<u32>) -> Result<(), DatapathError> {
            Ok(())
        }
        fn kernel_memory_bytes(&self) -> Option<u64> {
            None
        }
        fn set_sources(&mut self, _: &[(IpNet, u32)]) -> Result<(), DatapathError> {
            Ok(())
        }
        fn set_cgroups(&mut self, _: &HashMap<u64, u32>, _: u32) -> Result<(), DatapathError> {
            Ok(())
        }
        fn set_policers(&mut self, _: &HashMap<u32, BitsPerSec>) -> Result<(), DatapathError> {
            Ok(())
        }
    }

    /// An HTB tree in memory.
    #[derive(Default)]
    struct FakeTree {
        classes: BTreeMap<Minor, ClassInfo>,
        applied: Vec<Op>,
    }

    impl Tree for FakeTree {
        fn ensure_tree(&mut self, _: &TreeSpec, _: bool) -> Result<Installed, HtbError> {
            Ok(Installed {
                created: false,
                classes: self.classes.values().copied().collect(),
            })
        }
        fn list(&mut self) -> Result<Vec<ClassInfo>, HtbError> {
            Ok(self.classes.values().copied().collect())
        }
        fn apply(&mut self, ops: &[Op]) -> Result<(), HtbError> {
            for op in ops {
                self.applied.push(*op);
                match op {
                    Op::Upsert(l) => {
                        self.classes.insert(l.minor, ClassInfo::of_leaf(l));
                    }
                    Op::Remove(m) => {
                        self.classes.remove(m);
                    }
                }
            }
            Ok(())
        }
    }

    fn config() -> Config {
        let mut c = Config::parse(
            Path::new("/etc/bwmon/bwmon.toml"),
            "interface = \"eth0\"\nperiod = \"100s\"\ninterval = \"1s\"\nnode_cap = \"100mbit\"\n",
        )
        .unwrap();
        c.defaults.max_kbyte = Some(KBytes(1000));
        c
    }

    fn slice(name: &str, xid: u32) -> SliceSpec {
        SliceSpec {
            name: name.into(),
            xid,
            sources: vec![],
            count: None,
            attrs: Attributes::default(),
            cgroup: None,
        }
    }

    fn send(k: &mut FakeKernel, xid: u32, bytes: u64) {
        let c = k.offered.entry(xid).or_default();
        c.general = Counter {
            bytes: c.general.bytes + bytes,
            packets: c.general.packets + 1,
        };
    }

    /// A state file in a directory of its own, removed with the test's process.
    fn state_file() -> StateFile {
        let dir = tempfile::tempdir().unwrap().keep();
        StateFile::new(dir.join("state"))
    }

    fn syncer(slices: Vec<SliceSpec>) -> Syncer<FakeKernel, FakeTree> {
        Syncer::new(
            config(),
            FakeKernel::default(),
            FakeTree::default(),
            state_file(),
            State::default(),
            slices,
        )
    }

    /// A syncer of alice under `config`, saving its state to a file of its own (returned).
    fn alice_saved(config: Config) -> (Syncer<FakeKernel, FakeTree>, std::path::PathBuf) {
        let path = tempfile::tempdir().unwrap().keep().join("state");
        let s = Syncer::new(
            config,
            FakeKernel::default(),
            FakeTree::default(),
            StateFile::new(path.clone()),
            State::default(),
            vec![slice("alice", 1001)],
        );
        (s, path)
    }

    fn ids(leaves: PerClass<Option<Minor>>) -> ClassIds {
        tree::class_ids(leaves)
    }

    /// The minor of a slice's general leaf (it has one).
    fn general_leaf(s: &Syncer<FakeKernel, FakeTree>, xid: u32) -> Minor {
        s.state.slices[&xid].minors.general.expect("a general leaf")
    }

    fn row<'a>(o: &'a Outcome, name: &str) -> &'a SliceStatus {
        o.report.slices.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn new_slices_start_a_period_and_get_a_leaf_and_steering_once_they_send() {
        let mut s = syncer(vec![slice("alice", 1001)]);
        send(&mut s.kernel, 1001, 5000); // before bwmon knew it: not charged
        let before = s.state.clone();
        let o = s.step(1000);
        assert_ne!(s.state, before, "the state changed");
        let alice = &s.state.slices[&1001];
        assert_eq!(alice.record.period_start, 1000);
        assert_eq!(alice.record.classes.general.last, 5000);
        assert_eq!(alice.minors, PerClass::default(), "no leaf until it sends");
        assert!(
            !s.kernel.classes.contains_key(&1001),
            "default leaves meanwhile"
        );
        assert_eq!(row(&o, "alice").bytes, 0);
        assert_eq!(o.report.slices[0].name, "root");
        assert_eq!(o.report.slices[1].name, "default");
        send(&mut s.kernel, 1001, 100);
        let o = s.step(1001);
        let alice = &s.state.slices[&1001];
        assert!(alice.minors.general.is_some() && alice.minors.exempt.is_none());
        assert_eq!(s.kernel.classes[&1001], ids(alice.minors));
        assert!(s.tree.classes.contains_key(&general_leaf(&s, 1001)));
        assert_eq!(row(&o, "alice").bytes, 100);
    }

    #[test]
    fn a_slice_over_its_threshold_is_capped_and_noticed_once() {
        let mut s = syncer(vec![slice("alice", 1001)]);
        s.step(1000);
        send(&mut s.kernel, 1001, 900 * 1024);
        let o = s.step(1050);
        let alice = row(&o, "alice");
        assert!(alice.capped && alice.emailed);
        let expect = (1000 - 900) * 1024 * 8 / 50;
        assert_eq!(alice.ceil_bps, expect);
        let leaf = s.tree.classes[&general_leaf(&s, 1001)];
        assert_eq!(
            leaf.params.ceil,
            BitsPerSec(expect),
            "the lowered ceiling is applied"
        );
        assert_eq!(o.new_notices.len(), 1);
        assert_eq!(s.state.notices.len(), 1);
        let o = s.step(1051);
        assert_eq!(o.new_notices.len(), 0, "once per period");
        // Next period: back to the max rate.
        let o = s.step(1100);
        assert!(!row(&o, "alice").capped);
        assert_eq!(
            s.tree.classes[&general_leaf(&s, 1001)].params.ceil,
            BitsPerSec(100_000_000)
        );
    }

    #[test]
    fn an_unchanged_ceiling_is_not_touched() {
        let mut s = syncer(vec![slice("alice", 1001)]);
        s.step(1000);
        let applied = s.tree.applied.len();
        s.step(1001);
        assert_eq!(s.tree.applied.len(), applied, "nothing to change");
    }

    #[test]
    fn dry_run_accounts_but_never_lowers_a_ceiling_nor_mails() {
        let mut s = syncer(vec![slice("alice", 1001)]);
        s.config.dry_run = true;
        s.step(1000);
        send(&mut s.kernel, 1001, 2000 * 1024);
        let o = s.step(1010);
        assert!(row(&o, "alice").capped && o.new_notices.is_empty());
        assert_eq!(
            s.tree.classes[&general_leaf(&s, 1001)].params.ceil,
            BitsPerSec(100_000_000)
        );
    }

    #[test]
    fn root_is_accounted_and_never_capped() {
        let mut s = syncer(vec![]);
        s.step(1000);
        send(&mut s.kernel, ROOT_XID, 1 << 30);
        let o = s.step(1010);
        let root = row(&o, "root");
        assert_eq!(root.bytes, 1 << 30);
        assert!(!root.capped && o.new_notices.is_empty());
        let leaf = s.tree.classes[&general_leaf(&s, ROOT_XID)];
        assert_eq!(
            leaf.params.quantum,
            5 * tree::QUANTUM_PER_SHARE,
            "root has five shares"
        );
    }

    #[test]
    fn a_slice_that_leaves_and_returns_within_its_period_continues_it() {
        let mut s = syncer(vec![slice("alice", 1001)]);
        s.step(1000);
        send(&mut s.kernel, 1001, 850 * 1024);
        s.step(1010);
        let minors = s.state.slices[&1001].minors;
        s.set_slices(vec![]);
        s.step(1020);
        assert!(s.state.slices[&1001].departed);
        assert!(
            !s.tree.classes.contains_key(&minors.general.unwrap()),
            "its classes are removed"
        );
        assert!(
            !s.kernel.classes.contains_key(&1001),
            "its traffic goes to default"
        );
        s.set_slices(vec![slice("alice", 1001)]);
        let o = s.step(1030);
        let alice = row(&o, "alice");
        assert_eq!(alice.period_start, 1000, "no fresh budget");
        assert!(alice.capped, "still over its threshold");
        assert_eq!(s.state.slices[&1001].minors, minors);
        // Gone for good once its period ends.
        s.set_slices(vec![]);
        s.step(1040);
        s.step(1100);
        assert!(!s.state.slices.contains_key(&1001));
    }

    #[test]
    fn orphan_classes_are_removed() {
        let mut s = syncer(vec![]);
        s.step(1000);
        s.tree
            .apply(&[Op::Upsert(Leaf {
                minor: Minor(0x4444),
                class: TrafficClass::General,
                params: ClassParams {
                    rate: BitsPerSec(1000),
                    ceil: BitsPerSec(1000),
                    quantum: 1600,
                },
            })])
            .unwrap();
        s.step(1001);
        assert!(!s.tree.classes.contains_key(&Minor(0x4444)));
    }

    #[test]
    fn a_stopping_daemon_creates_one_batch_capped_slices_first_and_the_rest_is_pending() {
        let mut slices: Vec<SliceSpec> = (0..1000)
            .map(|i| {
                let mut s = slice(&format!("s{i}"), 10_000 + i);
                s.attrs.max_rate = Some(crate::units::KbitPerSec(50_000 + u64::from(i)));
                s
            })
            .collect();
        slices.push(slice("hog", 9_999));
        let mut s = syncer(slices);
        s.step(1000);
        // All 1,001 leaves are made in bounded batches within the budget (fast fake tree).
        assert_eq!(s.last_report.leaves_pending, 0);
        assert_eq!(
            s.tree.classes.len(),
            1002,
            "own ceilings, root's two; the hog has sent nothing"
        );
        // The tree is lost; the hog is capped meanwhile; SIGTERM has come.
        s.tree.classes.clear();
        send(&mut s.kernel, 9_999, 900 * 1024);
        let (stop, stopping) = tokio::sync::watch::channel(true);
        s.stop_on(stopping);
        let applied = s.tree.applied.len();
        let o = s.step(1001);
        assert!(row(&o, "hog").capped);
        let made: Vec<Op> = s.tree.applied[applied..].to_vec();
        assert_eq!(made.len(), TREE_BATCH, "one batch, then it stops");
        assert!(
            matches!(made[0], Op::Upsert(l) if l.minor == general_leaf(&s, 9_999)),
            "the capped slice's leaf first: {:?}",
            made[0]
        );
        assert_eq!(o.report.leaves_pending, 1003 - TREE_BATCH as u64);
        // The next syncs finish it.
        drop(stop);
        s.stopping = None;
        let o = s.step(1002);
        assert_eq!(o.report.leaves_pending, 0);
        assert_eq!(s.tree.classes.len(), 1003);
    }

    #[test]
    fn a_failing_save_is_said_once_per_streak() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the state's directory should be: every save fails.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        let path = blocker.join("state");
        let mut s = Syncer::new(
            config(),
            FakeKernel::default(),
            FakeTree::default(),
            StateFile::new(path.clone()),
            State::default(),
            vec![slice("alice", 1001)],
        );
        for t in 0..5 {
            send(&mut s.kernel, 1001, 100);
            s.step(1000 + t);
        }
        assert_eq!(s.failed_saves, 5);
        assert_eq!(s.errors[&ErrorKind::State], 5, "each failure is counted");
        std::fs::remove_file(&blocker).unwrap();
        std::fs::create_dir_all(&blocker).unwrap();
        send(&mut s.kernel, 1001, 100);
        s.step(1010);
        assert_eq!(s.failed_saves, 0, "the streak ends with a good save");
        assert!(path.exists());
    }

    #[test]
    fn a_failing_step_is_counted_and_the_next_one_recovers() {
        let mut s = syncer(vec![slice("alice", 1001)]);
        s.kernel.fail_snapshot = true;
        let before = s.state.clone();
        s.step(1000);
        assert_eq!(s.state, before, "nothing planned without counters");
        assert_eq!(s.errors[&ErrorKind::Datapath], 1);
        s.kernel.fail_snapshot = false;
        s.step(1001);
        assert_ne!(s.state, before, "the next step recovers");
    }

    #[test]
    fn restart_from_persisted_state_continues_every_period() {
        let mut s = syncer(vec![slice("alice", 1001)]);
        s.step(1000);
        send(&mut s.kernel, 1001, 100 * 1024);
        s.step(1010);
        let state = s.state.clone();
        let kernel = FakeKernel {
            offered: s.kernel.offered.clone(),
            ..Default::default()
        };
        let mut again = Syncer::new(
            config(),
            kernel,
            FakeTree::default(),
            state_file(),
            state,
            vec![slice("alice", 1001)],
        );
        let o = again.step(1020);
        assert_eq!(row(&o, "alice").period_start, 1000);
        assert_eq!(row(&o, "alice").bytes, 100 * 1024);
    }

    #[test]
    fn a_lever_request_asked_again_is_applied_once_also_after_a_restart() {
        use crate::{
            policy::levers::Lever, serve::slice_view::SliceRef, state::RequestId, units::Bytes,
        };
        let alice = SliceRef::Name("alice".into());
        let (mut s, path) = alice_saved(config());
        s.step(1000);
        let grant = Lever::Grant {
            class: TrafficClass::General,
            amount: Bytes(1 << 20),
        };
        let first = s.pull(RequestId(1), &alice, grant, 1001).unwrap();
        assert!(matches!(first, PullOutcome::Applied(_)), "{first:?}");
        let PullOutcome::Again(again) = s.pull(RequestId(1), &alice, grant, 1002).unwrap() else {
            panic!("applied twice");
        };
        assert_eq!(again.at, 1001);
        assert!(again.outcome.contains("alice: grant"), "{}", again.outcome);
        // The same id for another lever is refused; a new id is a new request.
        let limit = Lever::Limit {
            class: TrafficClass::General,
            rate: Some(BitsPerSec(2_000_000)),
        };
        assert!(matches!(
            s.pull(RequestId(1), &alice, limit, 1003),
            Err(operator::OperatorError::RequestIdReused(RequestId(1)))
        ));
        s.pull(RequestId(2), &alice, limit, 1003).unwrap();
        let o = s.step(1004);
        let line = row(&o, "alice");
        assert_eq!(line.max_kbyte, 1000 + 1024, "granted once");
        assert_eq!(line.granted_bytes, 1 << 20);
        assert_eq!(line.limit_bps, Some(2_000_000));
        // A restart from the saved state remembers the request.
        let saved = State::load(&path).unwrap().state;
        assert_eq!(saved.requests.len(), 2);
        let mut again = Syncer::new(
            config(),
            FakeKernel::default(),
            FakeTree::default(),
            state_file(),
            saved,
            vec![slice("alice", 1001)],
        );
        again.step(1005);
        let retried = again.pull(RequestId(1), &alice, grant, 1006).unwrap();
        assert!(matches!(retried, PullOutcome::Again(_)), "{retried:?}");
        let o = again.step(1007);
        assert_eq!(row(&o, "alice").max_kbyte, 1000 + 1024, "still once");
    }

    /// A benchmark's row for `cargo xtask bench`'s table: printed, and appended to the rows
    /// file it names in `BWMON_BENCH_ROWS` (the format of `tests/src/bench.rs`).
    fn bench_row(what: &str, value: f64, unit: &str, target: &str) {
        use std::io::Write as _;
        println!("  sync         {what:<52} {value:>12.2} {unit}");
        let Some(path) = std::env::var_os("BWMON_BENCH_ROWS") else {
            return;
        };
        let row = serde_json::json!({
            "group": "sync", "what": what, "value": value, "unit": unit,
            "ratio": null, "ratio_of": null, "target": target,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "{row}").unwrap();
    }

    /// Benchmark (cargo xtask bench): the steady state of a node with 10,000 slices that all
    /// have leaves, 1,000 of them sending every interval (shares 1 to 4): the class changes a
    /// sync makes (shares divide the cap by quanta, set once: none) and a sync's time.
    #[test]
    #[ignore = "benchmark: cargo xtask bench"]
    fn bench_sync_steady_state_with_1k_of_10k_slices_sending() {
        let slices: Vec<SliceSpec> = (0..10_000)
            .map(|i| {
                let mut s = slice(&format!("s{i}"), 10_000 + i);
                s.attrs.share = Some(1 + i % 4);
                s
            })
            .collect();
        let mut s = syncer(slices);
        s.step(1000);
        for i in 0..10_000 {
            send(&mut s.kernel, 10_000 + i, 1000);
        }
        s.step(1001);
        let mut changes = Vec::new();
        let mut times = Vec::new();
        for t in 0..10u32 {
            // A different thousand now and then: who sends changes, the leaves do not.
            let first = if t < 5 { 0 } else { 4000 };
            for i in first..first + 1000 {
                send(&mut s.kernel, 10_000 + i, 1000);
            }
            let applied = s.tree.applied.len();
            let started = std::time::Instant::now();
            s.step(1002 + u64::from(t));
            times.push(started.elapsed().as_secs_f64() * 1e3);
            changes.push(s.tree.applied.len() - applied);
        }
        times.sort_by(f64::total_cmp);
        let sending = s
            .last_report
            .slices
            .iter()
            .filter(|r| r.rate_bps > 0)
            .count();
        assert_eq!(sending, 1000);
        let most = changes.iter().max().copied().unwrap_or(0);
        bench_row(
            "class changes per sync, 1,000 of 10,000 slices sending",
            most as f64,
            "changes",
            "0",
        );
        bench_row(
            "sync time, 1,000 of 10,000 slices sending (median)",
            times[times.len() / 2],
            "ms",
            "≤ 100 ms",
        );
        assert_eq!(most, 0, "a steady state changes no class: {changes:?}");
    }

    #[test]
    fn a_lever_tells_the_webhook_with_the_next_sync_and_a_delivery_is_saved_at_once() {
        use crate::{
            config::Webhook,
            policy::levers::Lever,
            serve::slice_view::SliceRef,
            state::{NoticeKind, RequestId},
            units::Bytes,
        };
        let mut c = config();
        c.webhook = Some(Webhook {
            url: "http://127.0.0.1:9/hook".into(),
            secret_file: None,
            timeout: std::time::Duration::from_secs(2),
        });
        let (mut s, path) = alice_saved(c);
        s.step(1000);
        let grant = Lever::Grant {
            class: TrafficClass::General,
            amount: Bytes(1 << 20),
        };
        s.pull(RequestId(1), &SliceRef::Name("alice".into()), grant, 1001)
            .unwrap();
        let o = s.step(1002);
        assert_eq!(o.new_notices.len(), 1, "{:?}", o.new_notices);
        let n = &o.new_notices[0];
        assert!(matches!(&n.kind, NoticeKind::Lever(audit) if audit.contains("alice: grant")));
        assert_eq!(n.pending, crate::state::Channels::WEBHOOK);
        assert_eq!(n.classes[0].budget, Bytes(1000 * 1024 + (1 << 20)));
        assert_eq!(State::load(&path).unwrap().state.notices.len(), 1, "kept");
        s.delivered(n.id, Channel::Webhook);
        assert!(
            State::load(&path).unwrap().state.notices.is_empty(),
            "forgotten and saved"
        );
        assert!(s.step(1003).new_notices.is_empty(), "told once");
    }

    /// Benchmark (cargo xtask bench): one sync's own cost with 10,000 slices, kernel and tree
    /// faked (their real costs are measured by the datapath and HTB benchmarks).
    #[test]
    #[ignore = "benchmark: cargo xtask bench"]
    fn bench_sync_step_with_10k_slices() {
        let slices: Vec<SliceSpec> = (0..10_000)
            .map(|i| slice(&format!("s{i}"), 10_000 + i))
            .collect();
        let mut s = syncer(slices);
        for i in 0..10_000 {
            send(&mut s.kernel, 10_000 + i, 1000);
        }
        let t = std::time::Instant::now();
        s.step(1000);
        let first = t.elapsed();
        for i in 0..10_000 {
            send(&mut s.kernel, 10_000 + i, 1 << 20);
        }
        let t = std::time::Instant::now();
        let o = s.step(1001);
        let steady = t.elapsed();
        assert!(!o.new_notices.is_empty());
        let t = std::time::Instant::now();
        s.step(1002);
        let idle = t.elapsed();
        let bytes = s.state.encode().len();
        println!("sync step, 10,000 slices (fake kernel and tree):");
        println!(
            "  first (all new):            {:8.2} ms",
            first.as_secs_f64() * 1e3
        );
        println!(
            "  all capped at once:         {:8.2} ms",
            steady.as_secs_f64() * 1e3
        );
        println!(
            "  nothing changed:            {:8.2} ms",
            idle.as_secs_f64() * 1e3
        );
        println!("  state file: {bytes} bytes");
    }

    /// A pattern's cgroups become slices at the sync after they appear, and go when they go.
    /// Real cgroups under the v2 hierarchy (root only).
    #[test]
    #[ignore = "needs root and a cgroup v2 hierarchy (the lab tests in tests/tests/cgroups.rs)"]
    fn a_patterns_cgroups_come_and_go_as_slices() {
        let Some(h) = Hierarchy::locate() else {
            panic!("no cgroup v2 hierarchy");
        };
        let top = format!("bwmon-unit-{}", std::process::id());
        let dir = h.root.join(&top);
        std::fs::create_dir_all(dir.join("job-1")).unwrap();
        let mut s = syncer(vec![slice("alice", 1001)]);
        s.set_hierarchy(Some(h));
        s.set_patterns(vec![PatternSpec {
            pattern: Pattern::parse(&format!("/{top}/job-*")).unwrap(),
            attrs: Attributes::default(),
            count: Some(crate::policy::received::Count::Both),
        }]);
        let o = s.step(1000);
        let job = o.report.slices.iter().find(|r| r.name == "job-1").unwrap();
        assert_eq!(job.count, "both", "the pattern's count");
        assert_eq!(
            job.cgroup.as_deref(),
            Some(format!("/{top}/job-1").as_str())
        );
        std::fs::remove_dir(dir.join("job-1")).unwrap();
        let o = s.step(1001);
        assert!(o.report.slices.iter().all(|r| r.name != "job-1"));
        std::fs::remove_dir(&dir).unwrap();
    }

    /// Benchmark (cargo xtask bench): what scanning the hierarchy for a pattern adds to a
    /// sync, with 1,000 matching cgroups (real ones, under the v2 hierarchy: root only).
    #[test]
    #[ignore = "benchmark: cargo xtask bench"]
    fn bench_sync_with_1k_pattern_cgroups() {
        let Some(h) = Hierarchy::locate() else {
            panic!("no cgroup v2 hierarchy");
        };
        let top = format!("bwmon-bench-{}", std::process::id());
        let dir = h.root.join(&top);
        for i in 0..1000 {
            std::fs::create_dir_all(dir.join(format!("job-{i}"))).unwrap();
        }
        let time = |s: &mut Syncer<FakeKernel, FakeTree>, from: u64| {
            s.step(from);
            let mut runs: Vec<f64> = (1..=20)
                .map(|i| {
                    let t = std::time::Instant::now();
                    s.step(from + i);
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            runs[runs.len() / 2]
        };
        let mut plain = syncer(vec![]);
        let fixed: Vec<SliceSpec> = (0..1000)
            .map(|i| slice(&format!("job-{i}"), 0x8000_0000 + i))
            .collect();
        plain.set_slices(fixed);
        let without = time(&mut plain, 1000);
        let mut s = syncer(vec![]);
        s.set_hierarchy(Some(h.clone()));
        s.set_patterns(vec![PatternSpec {
            pattern: Pattern::parse(&format!("/{top}/job-*")).unwrap(),
            attrs: Attributes::default(),
            count: None,
        }]);
        let with = time(&mut s, 1000);
        let t = std::time::Instant::now();
        let found = cgroup::scan(
            &h,
            &[],
            &[&Pattern::parse(&format!("/{top}/job-*")).unwrap()],
        );
        let scan = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(found.found.len(), 1000);
        for i in 0..1000 {
            let _ = std::fs::remove_dir(dir.join(format!("job-{i}")));
        }
        let _ = std::fs::remove_dir(&dir);
        bench_row("sync, 1k slices of the slices file", without, "ms", "");
        bench_row(
            "sync, 1k slices found by a pattern (scan included)",
            with,
            "ms",
            "",
        );
        bench_row("  scan of 1k matching cgroups alone", scan, "ms", "");
    }
}
