//! Dense counter slots. The classifier counts an xid's bytes in the slot of the per-CPU slot
//! array its entry names (found with its leaves in one lookup), or, without a slot, in a hash
//! that takes memory only for the xids seen. The agent gives slots to the xids that send, so
//! the counters' memory follows what is counted, not the id space.
//!
//! The assignment lives in the pinned xid maps themselves: a restarted agent reads it back
//! (a lost pin is a new epoch anyway). An xid's offered bytes are its slot plus its hash entry,
//! so giving it a slot loses and doubles nothing. A slot is taken back only from an xid
//! without a record (whose counters may go down: only the default pseudo-slice's growth reads
//! them) that has been idle for a while; the bytes it held are kept here, beside the
//! counters, for as long as the agent runs. A slot taken back is read a last time and zeroed
//! only after [`QUIET`], when no classifier run that found it in the xid's entry can still be
//! writing, and only then given again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use aya::maps::{PerCpuArray, PerCpuValues};
use bwmon_common::{COUNTER_SLOTS, ClassIds, XidCounters, XidEntry, names};

use super::{Datapath, Snapshot, bulk, error::Result};

/// How long after a slot was taken from an xid it is read a last time, zeroed and given
/// again: no classifier run that found it in the xid's entry is still writing by then (runs
/// take microseconds; the agent's syncs are seconds apart).
pub const QUIET: Duration = Duration::from_secs(2);

/// How long an xid without a record or leaves keeps its slot without sending (the default of
/// [`super::DatapathOptions::slot_idle`]).
pub const IDLE: Duration = Duration::from_secs(600);

/// A slot taken from an xid, not yet zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Drain {
    /// The slot.
    pub slot: u32,
    /// The xid it was taken from in this process: its bytes are still the xid's. `None`: found
    /// with counts and no xid at load (taken by an earlier agent).
    pub from: Option<u32>,
    /// When it was taken.
    pub since: Instant,
}

/// When an xid's counters last moved.
#[derive(Clone, Copy, Debug)]
struct Activity {
    total: XidCounters,
    changed: Instant,
}

/// Which xid counts in which slot, which slots are free, and what the agent keeps of slots
/// it took back.
#[derive(Debug, Default)]
pub(super) struct Slots {
    owner: BTreeMap<u32, u32>,
    by_xid: HashMap<u32, u32>,
    free: BTreeSet<u32>,
    draining: Vec<Drain>,
    activity: HashMap<u32, Activity>,
    observed: bool,
    retired: HashMap<u32, XidCounters>,
}

impl Slots {
    /// The slots as the kernel has them: `assigned` (xid, slot) from the xid maps, and `dirty`,
    /// the slots holding counts. Returns the xids whose slot cannot be theirs (out of range, or
    /// another xid's): their entries must lose it.
    pub(super) fn new(
        assigned: impl IntoIterator<Item = (u32, u32)>,
        dirty: &BTreeSet<u32>,
        now: Instant,
    ) -> (Slots, Vec<u32>) {
        let mut slots = Slots::default();
        let mut invalid = Vec::new();
        for (xid, slot) in assigned {
            if slot == 0 || slot >= COUNTER_SLOTS || slots.owner.contains_key(&slot) {
                invalid.push(xid);
                continue;
            }
            slots.owner.insert(slot, xid);
            slots.by_xid.insert(xid, slot);
        }
        for slot in 1..COUNTER_SLOTS {
            if slots.owner.contains_key(&slot) {
                continue;
            }
            if dirty.contains(&slot) {
                slots.draining.push(Drain {
                    slot,
                    from: None,
                    since: now,
                });
            } else {
                slots.free.insert(slot);
            }
        }
        (slots, invalid)
    }

    /// The xid's slot.
    pub(super) fn of(&self, xid: u32) -> Option<u32> {
        self.by_xid.get(&xid).copied()
    }

    /// Gives `xid` the lowest free slot (its own if it has one); `None` when none is free.
    pub(super) fn give(&mut self, xid: u32) -> Option<u32> {
        if let Some(slot) = self.of(xid) {
            return Some(slot);
        }
        let slot = self.free.pop_first()?;
        self.owner.insert(slot, xid);
        self.by_xid.insert(xid, slot);
        Some(slot)
    }

    /// Takes `xid`'s slot back at `now` (its entry no longer names it).
    pub(super) fn take(&mut self, xid: u32, now: Instant) {
        if let Some(slot) = self.by_xid.remove(&xid) {
            self.owner.remove(&slot);
            self.draining.push(Drain {
                slot,
                from: Some(xid),
                since: now,
            });
        }
    }

    /// The slots taken at least [`QUIET`] before `now`.
    pub(super) fn due(&self, now: Instant) -> Vec<Drain> {
        self.draining
            .iter()
            .filter(|d| now.duration_since(d.since) >= QUIET)
            .copied()
            .collect()
    }

    /// Slot `slot` was read a last time (`last`: what it held) and zeroed: its bytes stay its
    /// xid's, and it is free.
    pub(super) fn drained(&mut self, slot: u32, last: XidCounters) {
        let Some(at) = self.draining.iter().position(|d| d.slot == slot) else {
            return;
        };
        let d = self.draining.swap_remove(at);
        if let Some(xid) = d.from {
            let kept = self.retired.entry(xid).or_default();
            *kept = kept.merged(last);
        }
        self.free.insert(slot);
    }

    /// Every slot whose counts are an xid's: the assigned ones, and those taken from an xid
    /// and not yet zeroed.
    pub(super) fn counted(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let taken = self
            .draining
            .iter()
            .filter_map(|d| d.from.map(|xid| (d.slot, xid)));
        self.owner.iter().map(|(s, x)| (*s, *x)).chain(taken)
    }

    /// Runs `(start, len)` of [`Slots::counted`] slots, for batch reads.
    pub(super) fn counted_runs(&self) -> Vec<(u32, u32)> {
        let mut slots: Vec<u32> = self.counted().map(|(s, _)| s).collect();
        slots.sort_unstable();
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for slot in slots {
            match runs.last_mut() {
                Some((start, len)) if *start + *len == slot => *len += 1,
                _ => runs.push((slot, 1)),
            }
        }
        runs
    }

    /// Bytes of slots taken back from xids and zeroed, per xid: still theirs.
    pub(super) fn retired(&self) -> &HashMap<u32, XidCounters> {
        &self.retired
    }

    /// Every (xid, slot) assigned.
    pub(super) fn assigned(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.by_xid.iter().map(|(x, s)| (*x, *s))
    }

    /// Notes the xids' counters at `now`; returns the xids that sent since the last call (at
    /// the first call nothing is known to have moved).
    pub(super) fn observe<'a>(
        &mut self,
        totals: impl IntoIterator<Item = (&'a u32, &'a XidCounters)>,
        now: Instant,
    ) -> Vec<u32> {
        let mut moved = Vec::new();
        for (xid, total) in totals {
            match self.activity.get_mut(xid) {
                Some(a) if a.total == *total => {}
                Some(a) => {
                    *a = Activity {
                        total: *total,
                        changed: now,
                    };
                    moved.push(*xid);
                }
                None => {
                    self.activity.insert(
                        *xid,
                        Activity {
                            total: *total,
                            changed: now,
                        },
                    );
                    if self.observed {
                        moved.push(*xid);
                    }
                }
            }
        }
        self.observed = true;
        moved
    }

    /// Whether `xid`'s counters have not moved for `idle` (as far as [`Slots::observe`] saw).
    pub(super) fn idle(&self, xid: u32, now: Instant, idle: Duration) -> bool {
        self.activity
            .get(&xid)
            .is_none_or(|a| now.duration_since(a.changed) >= idle)
    }

    /// Free slots.
    #[cfg(test)]
    pub(super) fn free(&self) -> usize {
        self.free.len()
    }
}

impl Datapath {
    /// Gives counter slots to the xids that sent without one since the last call (those with a
    /// record first, then by xid), takes them back from idle xids without a record and
    /// without leaves, zeroes slots taken back a while ago, and folds an older layout's
    /// counters in once the new classifier has taken over. `snapshot` is this sync's; `kept`
    /// the xids with a record (their counters must never go down).
    ///
    /// # Errors
    /// A map that cannot be read or written, naming it.
    pub fn tend_counters(&mut self, snapshot: &Snapshot, kept: &HashSet<u32>) -> Result<()> {
        let now = Instant::now();
        self.fold_older_layout(now)?;
        for d in self.slots.due(now) {
            let last = match d.from {
                Some(_) => self.read_slot(d.slot)?,
                None => XidCounters::default(),
            };
            self.zero_slot(d.slot)?;
            self.slots.drained(d.slot, last);
        }

        let moved = self.slots.observe(&snapshot.offered, now);
        let mut want = self.entries.clone();
        let mut promote: Vec<u32> = moved
            .into_iter()
            .filter(|x| self.slots.of(*x).is_none())
            .collect();
        promote.sort_unstable_by_key(|x| (!kept.contains(x), *x));
        let mut promoted = HashSet::new();
        for xid in promote {
            let Some(slot) = self.slots.give(xid) else {
                break;
            };
            want.entry(xid).or_insert(XidEntry::EMPTY).slot = slot;
            promoted.insert(xid);
        }
        let idle: Vec<u32> = self
            .slots
            .assigned()
            .map(|(x, _)| x)
            .filter(|x| {
                !kept.contains(x)
                    && !promoted.contains(x)
                    && want.get(x).is_none_or(|e| e.classes == ClassIds::NONE)
                    && self.slots.idle(*x, now, self.opts.slot_idle)
            })
            .collect();
        for xid in &idle {
            if let Some(e) = want.get_mut(xid) {
                e.slot = 0;
            }
        }
        want.retain(|_, e| *e != XidEntry::EMPTY);
        self.write_entries(&want)?;
        // From now on no new classifier run finds these slots.
        let now = Instant::now();
        for xid in idle {
            self.slots.take(xid, now);
        }
        Ok(())
    }

    /// Slot `slot`'s counters, summed over CPUs.
    fn read_slot(&self, slot: u32) -> Result<XidCounters> {
        let nr_cpus = self.nr_cpus()?;
        let map = self.map(names::SLOTS)?;
        let values = bulk::array_runs(map, &[(slot, 1)], nr_cpus, XidCounters::merged)
            .map_err(|e| self.map_err(names::SLOTS, e))?;
        Ok(values.first().map(|(_, v)| *v).unwrap_or_default())
    }

    fn zero_slot(&mut self, slot: u32) -> Result<()> {
        let nr_cpus = self.nr_cpus()?;
        let (map, err) = self.map_for_write(names::SLOTS)?;
        let mut array: PerCpuArray<&mut aya::maps::MapData, XidCounters> =
            PerCpuArray::try_from(map).map_err(&err)?;
        let zeros = PerCpuValues::try_from(vec![XidCounters::default(); nr_cpus])
            .map_err(|e| err(aya::maps::MapError::IoError(e)))?;
        array.set(slot, zeros, 0).map_err(&err)
    }
}

#[cfg(test)]
mod tests {
    use bwmon_common::Counter;

    use super::*;

    fn bytes(n: u64) -> XidCounters {
        XidCounters {
            general: Counter {
                bytes: n,
                packets: 1,
            },
            ..XidCounters::default()
        }
    }

    #[test]
    fn slots_are_given_lowest_first_and_once_per_xid() {
        let now = Instant::now();
        let (mut s, invalid) = Slots::new([(7, 3)], &BTreeSet::new(), now);
        assert!(invalid.is_empty());
        assert_eq!(s.of(7), Some(3));
        assert_eq!(s.give(100), Some(1));
        assert_eq!(s.give(101), Some(2));
        assert_eq!(s.give(100), Some(1), "already its own");
        assert_eq!(s.give(102), Some(4));
        assert_eq!(s.counted_runs(), vec![(1, 4)]);
        assert_eq!(s.free(), COUNTER_SLOTS as usize - 1 - 4);
    }

    #[test]
    fn a_slot_the_kernel_cannot_have_given_is_refused() {
        let now = Instant::now();
        let (s, invalid) = Slots::new(
            [(1, 0), (2, COUNTER_SLOTS), (3, 5), (4, 5)],
            &BTreeSet::new(),
            now,
        );
        assert_eq!(s.of(3), Some(5));
        let mut invalid = invalid;
        invalid.sort_unstable();
        assert_eq!(invalid, vec![1, 2, 4]);
    }

    #[test]
    fn a_slot_taken_back_stays_its_xids_until_zeroed_then_is_given_again() {
        let t0 = Instant::now();
        let (mut s, _) = Slots::new([], &BTreeSet::new(), t0);
        assert_eq!(s.give(42), Some(1));
        s.take(42, t0);
        assert_eq!(s.of(42), None);
        // Still counted as 42's while it drains, and not given to anyone.
        assert_eq!(s.counted().collect::<Vec<_>>(), vec![(1, 42)]);
        assert_eq!(s.give(43), Some(2));
        assert!(s.due(t0 + QUIET / 2).is_empty());
        let due = s.due(t0 + QUIET);
        assert_eq!(due.len(), 1);
        s.drained(1, bytes(500));
        assert_eq!(s.retired()[&42], bytes(500));
        assert_eq!(s.counted().collect::<Vec<_>>(), vec![(2, 43)]);
        assert_eq!(s.give(44), Some(1), "free again");
        // Taken and drained twice: the bytes add up.
        s.take(44, t0);
        s.drained(1, bytes(1));
        s.give(42);
        s.take(42, t0);
        s.drained(s.due(t0 + QUIET)[0].slot, bytes(20));
        assert_eq!(s.retired()[&42].general.bytes, 520);
    }

    #[test]
    fn slots_with_counts_and_no_xid_at_load_are_zeroed_before_they_are_given() {
        let t0 = Instant::now();
        let dirty = BTreeSet::from([1, 2]);
        let (mut s, _) = Slots::new([(9, 3)], &dirty, t0);
        assert_eq!(s.give(10), Some(4));
        assert_eq!(s.counted().count(), 2, "nobody's bytes are not counted");
        let due = s.due(t0 + QUIET);
        assert_eq!(due.iter().map(|d| d.from).collect::<Vec<_>>(), [None, None]);
        for d in due {
            s.drained(d.slot, XidCounters::default());
        }
        assert!(s.retired().is_empty());
        assert_eq!(s.give(11), Some(1));
    }

    #[test]
    fn xids_that_moved_are_told_from_the_second_look_on_and_idle_ones_after_a_while() {
        let t0 = Instant::now();
        let (mut s, _) = Slots::new([], &BTreeSet::new(), t0);
        let first = BTreeMap::from([(1, bytes(10)), (2, bytes(20))]);
        assert!(
            s.observe(&first, t0).is_empty(),
            "nothing known at the first look"
        );
        let second = BTreeMap::from([(1, bytes(10)), (2, bytes(25)), (3, bytes(1))]);
        let mut moved = s.observe(&second, t0 + QUIET);
        moved.sort_unstable();
        assert_eq!(moved, vec![2, 3]);
        assert!(!s.idle(1, t0 + IDLE / 2, IDLE));
        assert!(s.idle(1, t0 + IDLE, IDLE));
        assert!(!s.idle(2, t0 + IDLE, IDLE), "moved later");
        assert!(s.idle(99, t0, IDLE), "never seen");
    }
}
