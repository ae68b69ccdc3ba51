//! Reading every counter at one instant: offered bytes per xid, the overflow slot, and bytes
//! dropped per HTB minor, summed over CPUs with batch lookups where the kernel has them.

use std::collections::BTreeMap;

use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use bwmon_common::{CLASS_ARRAY_XIDS, Counter, SEEN_CHUNK, SEEN_INCOMPLETE, XidCounters, names};

use super::{Datapath, batch, epoch, error::Result};
use crate::{class::PerClass, htb::Minor};

/// Kernel counters at one instant.
///
/// A slice is charged, per traffic class, what its xid offered minus what its class dropped:
/// see [`Snapshot::charged`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Bytes offered at the egress hook per xid (summed over CPUs), monotonic.
    pub offered: BTreeMap<u32, XidCounters>,
    /// Bytes of xids that found no room in the per-xid map.
    pub offered_overflow: XidCounters,
    /// Bytes dropped before leaving, per HTB minor of bwmon's `1:` tree (classes without drops
    /// are left out), monotonic.
    pub dropped: BTreeMap<Minor, Counter>,
    /// Which instance of the counters these are: it changes when they restart from zero (a
    /// reboot, or maps re-created after their pins were lost), never otherwise.
    pub epoch: u64,
    /// The epochs earlier bwmons computed for these same counters (with std's hasher, with and
    /// without the offered array: an xid's offered bytes are its array slot plus its hash
    /// entry): a state one of them saved goes on with these counters.
    pub earlier_epochs: Vec<u64>,
}

impl Snapshot {
    /// Whether these counters go on from those of `epoch` (a state's), rather than starting
    /// again from zero.
    pub fn continues(&self, epoch: u64) -> bool {
        epoch == self.epoch || self.earlier_epochs.contains(&epoch)
    }

    /// The bytes `xid` is charged when its leaves' drops count from `drop_base` on: the drop
    /// counters a reused minor had when the slice got it belong to its previous owner.
    pub fn charged_bytes(
        &self,
        xid: u32,
        leaves: PerClass<Option<Minor>>,
        drop_base: PerClass<u64>,
    ) -> PerClass<u64> {
        let offered = self.offered.get(&xid).copied().unwrap_or_default();
        let offered = PerClass {
            general: offered.general.bytes,
            exempt: offered.exempt.bytes,
        };
        offered.map(|class, bytes| {
            let dropped = leaves.of(class).map_or(0, |m| self.dropped_at(m).bytes);
            bytes.saturating_sub(dropped.saturating_sub(*drop_base.of(class)))
        })
    }

    /// Bytes and packets the leaf `minor` dropped.
    pub(crate) fn dropped_at(&self, minor: Minor) -> Counter {
        self.dropped.get(&minor).copied().unwrap_or_default()
    }
}

/// Slots of the arrays read through a seen map: xids below the class array's end, HTB minors.
const SLOTS: u32 = CLASS_ARRAY_XIDS;
const _: () = assert!(bwmon_common::MAX_MINORS == SLOTS);

/// Gaps of unseen slots shorter than this are read through: a few slots cost less than
/// another call.
const RUN_GAP: u32 = 64;

/// The runs `(start, len)` of slots to read for the seen bytes in `chunks`: every seen xid in
/// one, joined across short gaps.
pub(super) fn seen_runs(chunks: &[[u8; SEEN_CHUNK as usize]]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    let seen = chunks
        .iter()
        .flatten()
        .zip(0u32..)
        .filter(|(b, _)| **b != 0);
    for (_, xid) in seen {
        match runs.last_mut() {
            Some((start, len)) if xid - (*start + *len) < RUN_GAP => *len = xid - *start + 1,
            _ => runs.push((xid, 1)),
        }
    }
    runs
}

/// The map's data, for the raw batch lookup.
pub(super) fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::PerCpuHashMap(m)
        | Map::PerCpuArray(m)
        | Map::HashMap(m)
        | Map::Array(m)
        | Map::LpmTrie(m) => Some(m),
        _ => None,
    }
}

fn sum<V: aya::Pod + Default>(values: &PerCpuValues<V>, fold: impl Fn(V, V) -> V) -> V {
    values.iter().fold(V::default(), |acc, v| fold(acc, *v))
}

impl Datapath {
    /// The counters' instance: this boot and the kernel ids of the counter maps (ids are
    /// unique within a boot, and restart after one), hashed by [`epoch::epoch_hash`]; and what
    /// earlier bwmons computed for them ([`epoch::std_hasher_epoch`], with and without the
    /// offered array).
    fn counters_epoch(&self) -> Result<(u64, Vec<u64>)> {
        let ids = [
            self.map_id(names::OFFERED)?,
            self.map_id(names::DROPPED)?,
            self.map_id(names::OFFERED_ARRAY)?,
        ];
        let epoch = epoch::epoch_hash(&self.boot_id, &ids.map(|id| id.map(u64::from)));
        let earlier = vec![
            epoch::std_hasher_epoch(&self.boot_id, &ids),
            epoch::std_hasher_epoch(&self.boot_id, &ids[..2]),
        ];
        Ok((epoch, earlier))
    }

    /// Marks seen map `name` incomplete: made after its array had counted. Only before the
    /// programs that write it are attached: the chunk written here could undo a byte they set.
    pub(super) fn mark_seen_incomplete(&mut self, name: &'static str) -> Result<()> {
        let (map, err) = self.map_for_write(name)?;
        let mut map: Array<&mut MapData, [u8; SEEN_CHUNK as usize]> =
            Array::try_from(map).map_err(&err)?;
        let mut first = map.get(&0, 0).map_err(&err)?;
        first[0] = SEEN_INCOMPLETE;
        map.set(0, first, 0).map_err(&err)
    }

    /// The chunks of seen map `name`.
    fn seen_chunks(&self, name: &'static str) -> Result<Vec<[u8; SEEN_CHUNK as usize]>> {
        let err = |e| self.map_err(name, e);
        let map: Array<&MapData, [u8; SEEN_CHUNK as usize]> =
            Array::try_from(self.map(name)?).map_err(err)?;
        (0..SLOTS / SEEN_CHUNK)
            .map(|i| map.get(&i, 0).map_err(err))
            .collect()
    }

    /// The slots of per-CPU array `array` that seen map `seen` marks (every one when it is
    /// incomplete), summed over CPUs by `fold`; untouched slots left out.
    fn seen_slots<V: aya::Pod + Default + PartialEq>(
        &self,
        (array, seen): (&'static str, &'static str),
        nr_cpus: usize,
        fold: impl Fn(V, V) -> V + Copy,
    ) -> Result<Vec<(u32, V)>> {
        let chunks = self.seen_chunks(seen)?;
        let runs = if chunks.first().is_some_and(|c| c[0] == SEEN_INCOMPLETE) {
            vec![(0, SLOTS)]
        } else {
            seen_runs(&chunks)
        };
        let map = self.map(array)?;
        let mut out = Vec::new();
        for (start, len) in runs {
            let batched = match map_data(map) {
                Some(data) => batch::per_cpu_range(data.fd(), nr_cpus, start, len, fold)
                    .map_err(|e| self.batch_err(array, e))?,
                None => None,
            };
            let slots = match batched {
                Some(slots) => slots,
                None => {
                    let err = |e| self.map_err(array, e);
                    let map: PerCpuArray<&MapData, V> = PerCpuArray::try_from(map).map_err(err)?;
                    (start..start + len)
                        .map(|i| Ok((i, sum(&map.get(&i, 0).map_err(err)?, fold))))
                        .collect::<Result<Vec<_>>>()?
                }
            };
            out.extend(slots.into_iter().filter(|(_, v)| *v != V::default()));
        }
        Ok(out)
    }

    fn map_id(&self, name: &'static str) -> Result<Option<u32>> {
        Ok(map_data(self.map(name)?)
            .and_then(|m| m.info().ok())
            .map(|i| i.id()))
    }

    /// Reads every counter, summed over CPUs, with batch lookups where the kernel has them.
    ///
    /// # Errors
    /// A failed map read, naming the map.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| self.batch_err(names::OFFERED, e))?;
        let (epoch, earlier_epochs) = self.counters_epoch()?;
        let mut out = Snapshot {
            epoch,
            earlier_epochs,
            ..Snapshot::default()
        };

        // Drops first: every dropped packet was offered before it was dropped, so offered
        // bytes read afterwards include it and `offered − dropped` never dips between syncs
        // (a dip would read as the kernel's counters restarting). Only minors that dropped
        // are read (all of them when the seen map is incomplete).
        let dropped = self.seen_slots(
            (names::DROPPED, names::DROPPED_SEEN),
            nr_cpus,
            Counter::merged,
        )?;
        out.dropped.extend(
            dropped
                .into_iter()
                .filter(|(_, c)| c.packets != 0)
                .filter_map(|(minor, c)| Some((Minor(u16::try_from(minor).ok()?), c))),
        );
        let map = self.map(names::OFFERED)?;
        let offered = match map_data(map) {
            Some(data) => {
                batch::per_cpu_entries::<u32, XidCounters>(data.fd(), nr_cpus, XidCounters::merged)
                    .map_err(|e| self.batch_err(names::OFFERED, e))?
            }
            None => None,
        };
        match offered {
            Some(entries) => out.offered.extend(entries),
            None => {
                let err = |e| self.map_err(names::OFFERED, e);
                let map: PerCpuHashMap<&MapData, u32, XidCounters> =
                    PerCpuHashMap::try_from(map).map_err(err)?;
                for entry in map.iter() {
                    let (xid, values) = entry.map_err(err)?;
                    out.offered.insert(xid, sum(&values, XidCounters::merged));
                }
            }
        }

        // Xids below the array's end: the slots of those the classifier marked seen (all of
        // them when the seen map is incomplete), plus what an older bwmon
        // counted for them in the hash.
        let slots = self.seen_slots(
            (names::OFFERED_ARRAY, names::OFFERED_SEEN),
            nr_cpus,
            XidCounters::merged,
        )?;
        for (xid, c) in slots {
            if c != XidCounters::default() {
                let total = out.offered.entry(xid).or_default();
                *total = total.merged(c);
            }
        }

        let err = |e| self.map_err(names::OFFERED_OVERFLOW, e);
        let overflow: PerCpuArray<&MapData, XidCounters> =
            PerCpuArray::try_from(self.map(names::OFFERED_OVERFLOW)?).map_err(err)?;
        out.offered_overflow = sum(&overflow.get(&0, 0).map_err(err)?, XidCounters::merged);

        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(seen: &[u32]) -> Vec<[u8; SEEN_CHUNK as usize]> {
        let mut c = vec![[0u8; SEEN_CHUNK as usize]; (CLASS_ARRAY_XIDS / SEEN_CHUNK) as usize];
        for xid in seen {
            c[(xid / SEEN_CHUNK) as usize][(xid % SEEN_CHUNK) as usize] = 1;
        }
        c
    }

    #[test]
    fn seen_slots_are_read_in_runs_joined_across_short_gaps() {
        assert_eq!(seen_runs(&chunks(&[])), vec![]);
        assert_eq!(seen_runs(&chunks(&[0])), vec![(0, 1)]);
        assert_eq!(seen_runs(&chunks(&[65_535])), vec![(65_535, 1)]);
        // 1000 and 1063 are 62 apart (a gap of 62 unseen slots): one run; 1200 starts another.
        assert_eq!(
            seen_runs(&chunks(&[1000, 1063, 1200, 1201])),
            vec![(1000, 64), (1200, 2)]
        );
        // Across a chunk boundary.
        assert_eq!(seen_runs(&chunks(&[4095, 4096])), vec![(4095, 2)]);
        let all: Vec<u32> = (20_000..30_000).collect();
        assert_eq!(seen_runs(&chunks(&all)), vec![(20_000, 10_000)]);
        // Every seen xid is inside a run.
        let some = [3, 70, 4000, 4100, 40_000, 65_534];
        let runs = seen_runs(&chunks(&some));
        for xid in some {
            assert!(
                runs.iter().any(|(s, l)| (*s..s + l).contains(&xid)),
                "{xid}"
            );
        }
    }
}
