use bwmon_common::{Counter, ROOT_XID};

use super::*;

/// What the plan tells: warnings, the cap, and the webhook's events.
mod notices;
use crate::{
    class::TrafficClass,
    htb::{ClassParams, tree},
    policy::Node,
    policy::received::Count,
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
        warn_at: Levels::default(),
        webhook: false,
    }
}

fn slice(name: &str, xid: u32) -> LiveSlice {
    LiveSlice {
        name: name.into(),
        xid,
        limits: limits(),
        capping: Capping::Policy,
        sources: Vec::new(),
        count: Default::default(),
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
    assert_eq!(p.new_notices[0].classes[0].ceil, expect);
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
    assert_eq!(w.leaf(ROOT_XID).params.quantum, tree::QUANTUM_PER_SHARE);
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
        earlier_epochs: vec![1],
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
    w.obs.snapshot.earlier_epochs = vec![7];
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
        earlier_epochs: vec![7],
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
    // Behind by less than one period (more is impossible: see the test of a year ahead).
    let p = w.sync(&live, 99_950);
    assert!(p.clock_behind);
    assert_eq!(line(&p, "alice").period_start, 100_000);
    assert_eq!(line(&p, "alice").bytes, 900 * 1024);
    let p = w.sync(&live, 100_001);
    assert!(!p.clock_behind);
    assert_eq!(line(&p, "alice").period_start, 100_000);
}

#[test]
fn a_period_begun_while_the_clock_was_a_year_ahead_ends_one_period_after_it_is_back() {
    let mut w = World::new(false);
    let live = [root(), slice("alice", 1001)];
    let year = 365 * 86_400;
    w.sync(&live, 100_000 + year);
    w.send(1001, 900 * 1024);
    assert!(line(&w.sync(&live, 100_001 + year), "alice").capped);
    let p = w.sync(&live, 100_000);
    assert!(!p.clock_behind, "not held for a year");
    assert!(
        p.events.iter().any(|e| matches!(e, Event::ClockJumped(who, j)
            if who.slice == "alice" && j.was == 100_000 + year && j.carried.general.0 == 900 * 1024)),
        "{:?}",
        p.events
    );
    let alice = line(&p, "alice");
    assert_eq!(alice.period_start, 100_000);
    assert_eq!(alice.bytes, 900 * 1024, "usage carried");
    assert!(!line(&w.sync(&live, 100_000 + PERIOD), "alice").capped);
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

#[test]
fn the_slices_that_send_divide_the_cap_by_shares_and_idle_ones_are_guaranteed_their_min_rate() {
    let mut w = World::new(false);
    let mut bob = slice("bob", 1002);
    bob.limits.general.share = 3;
    let live = [root(), slice("alice", 1001), bob, slice("carol", 1003)];
    w.sync(&live, 1000);
    w.send(1001, 1000);
    w.send(1002, 1000);
    let p = w.sync(&live, 1001);
    let guaranteed = |p: &Plan, name: &str| line(p, name).guaranteed_bps;
    // 100 mbit/s less the two senders' 1 kbit/s guarantees, 1 : 3, each plus its own.
    assert_eq!(guaranteed(&p, "alice"), 1000 + 99_998_000 / 4);
    assert_eq!(guaranteed(&p, "bob"), 1000 + 99_998_000 / 4 * 3);
    for idle in ["carol", "root", "default"] {
        assert_eq!(guaranteed(&p, idle), 1000, "{idle}");
    }
    assert_eq!(line(&p, "bob").cap_bps, NODE.node_cap.0);
    assert_eq!(line(&p, "bob").exempt_cap_bps, NODE.exempt_max.0);
    assert_eq!(
        line(&p, "bob").exempt_guaranteed_bps,
        1000,
        "no exempt traffic"
    );
    // Alone, bob is guaranteed the whole cap; unknown xids sending take their one share.
    w.send(1002, 1000);
    w.send(9999, 1000);
    let p = w.sync(&live, 1002);
    assert_eq!(guaranteed(&p, "alice"), 1000);
    assert_eq!(guaranteed(&p, "bob"), 1000 + 99_998_000 / 4 * 3);
    assert_eq!(guaranteed(&p, "default"), 1000 + 99_998_000 / 4);
}

#[test]
fn a_capped_sender_is_guaranteed_its_ceiling_and_the_others_the_rest() {
    let mut w = World::new(false);
    let live = [root(), slice("alice", 1001), slice("bob", 1002)];
    w.sync(&live, 1000);
    w.send(1001, 900 * 1024);
    w.send(1002, 1000);
    let p = w.sync(&live, 1050);
    let ceil = line(&p, "alice").ceil_bps;
    assert!(ceil < 1_000_000, "alice is capped: {ceil}");
    assert_eq!(line(&p, "alice").guaranteed_bps, ceil);
    assert_eq!(line(&p, "bob").guaranteed_bps, NODE.node_cap.0 - ceil);
}

impl World {
    fn receive(&mut self, xid: u32, bytes: u64) {
        let c = self.obs.snapshot.received.entry(xid).or_default();
        c.general.bytes += bytes;
        c.general.packets += 1;
    }
}

#[test]
fn under_count_both_downloads_are_charged_capped_and_policed_and_under_egress_only_shown() {
    let mut w = World::new(false);
    let both = LiveSlice {
        count: Count::Both,
        ..slice("alice", 1001)
    };
    let live = [root(), both, slice("bob", 1002)];
    w.receive(1001, 100);
    w.sync(&live, 1000);
    // 900,000 bytes each: past the 819,200-byte threshold of a 1000 KiB budget.
    w.receive(1001, 900_000);
    w.receive(1002, 900_000);
    w.send(1001, 1000);
    let p = w.sync(&live, 1001);
    let (alice, bob) = (line(&p, "alice"), line(&p, "bob"));
    assert_eq!(
        alice.received_bytes, 900_000,
        "what came before her period is not hers"
    );
    assert_eq!(alice.bytes, 901_000, "sent + received under both");
    assert!(alice.capped && alice.count == "both");
    assert_eq!(p.policers.get(&1001), Some(&BitsPerSec(alice.ceil_bps)));
    assert_eq!(
        (bob.received_bytes, bob.bytes),
        (900_000, 0),
        "egress: shown, not charged"
    );
    assert!(!bob.capped && !p.policers.contains_key(&1002));
    // The sent counters restart (a reboot): what she received stays charged, once.
    w.obs.snapshot.offered.clear();
    w.obs.snapshot.epoch += 1;
    w.receive(1001, 10);
    let p = w.sync(&live, 1002);
    assert_eq!(line(&p, "alice").bytes, 901_010);
    // The received counters restart: nothing is lost or charged twice.
    w.obs.snapshot.received.clear();
    w.obs.snapshot.received_epoch += 1;
    w.receive(1001, 5);
    let p = w.sync(&live, 1003);
    assert_eq!(line(&p, "alice").bytes, 901_015);
    assert_eq!(line(&p, "alice").received_bytes, 900_015);
}
