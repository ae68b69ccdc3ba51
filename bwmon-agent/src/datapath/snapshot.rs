//! Reading every counter at one instant: offered bytes per xid (its counter slot, its entry in
//! the hash of xids without one, and what an older layout or a slot taken back counted for
//! it), the overflow slot, and bytes dropped per HTB minor, summed over CPUs with batch
//! lookups where the kernel has them.

use std::collections::BTreeMap;

use bwmon_common::{Counter, Lineage, MAX_MINORS, XidCounters, names};

use super::{Datapath, bulk, epoch, error::Result};
use crate::{class::PerClass, htb::Minor};

/// Kernel counters at one instant.
///
/// A slice is charged, per traffic class, what its xid offered minus what its class dropped:
/// see [`Snapshot::charged_bytes`].
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
    /// Bytes received per xid (summed over CPUs), monotonic; split by the packet's source
    /// against the exempt prefixes. Policed bytes are not in them.
    pub received: BTreeMap<u32, XidCounters>,
    /// Received bytes of xids that found no room in the received map.
    pub received_overflow: XidCounters,
    /// Bytes and packets the download policers dropped (all slices).
    pub policed: Counter,
    /// The received counters' instance: like [`Snapshot::epoch`], for [`Snapshot::received`]
    /// alone (they came after the others, and a state saved before them goes on with those).
    pub received_epoch: u64,
    /// The epochs earlier bwmons computed for counters these go on from (the older layout's
    /// maps, whose final counts are part of these; with the stable hash and with std's): a
    /// state one of them saved goes on with these counters.
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

    /// The bytes `xid` received, per class.
    pub fn received_bytes(&self, xid: u32) -> PerClass<u64> {
        let r = self.received.get(&xid).copied().unwrap_or_default();
        PerClass {
            general: r.general.bytes,
            exempt: r.exempt.bytes,
        }
    }

    /// Bytes and packets the leaf `minor` dropped.
    pub(crate) fn dropped_at(&self, minor: Minor) -> Counter {
        self.dropped.get(&minor).copied().unwrap_or_default()
    }

    fn add_offered(&mut self, xid: u32, c: XidCounters) {
        if c != XidCounters::default() {
            let total = self.offered.entry(xid).or_default();
            *total = total.merged(c);
        }
    }

    fn add_dropped(&mut self, minor: u32, c: Counter) {
        if let (Ok(minor), true) = (u16::try_from(minor), c.packets != 0) {
            let total = self.dropped.entry(Minor(minor)).or_default();
            *total = total.merged(c);
        }
    }
}

impl Datapath {
    /// The older layout's epochs these counters go on from: while its maps are read, or once
    /// folded when every carried map is there.
    fn lineage(&self) -> Option<Lineage> {
        match (&self.older, &self.carried) {
            (Some(older), _) => Some(older.lineage()),
            (None, Some(carried)) => carried.lineage(),
            (None, None) => None,
        }
    }

    /// The counters' instance: this boot, the kernel ids of the maps that hold counts or say
    /// whose they are (ids are unique within a boot, and restart after one), and those of the
    /// older layout's maps they go on from, hashed by [`epoch::epoch_hash`].
    fn counters_epoch(&self) -> Result<u64> {
        let mut parts = Vec::new();
        for name in [
            names::XID_ARRAY,
            names::XID_HASH,
            names::SLOTS,
            names::UNSLOTTED,
            names::DROPS,
        ] {
            parts.push(self.map_id(name)?.map(u64::from));
        }
        let lineage = self.lineage();
        for id in lineage.map_or([0; 3], |l| [l.offered, l.dropped, l.offered_array]) {
            parts.push((id != 0).then_some(u64::from(id)));
        }
        Ok(epoch::epoch_hash(&self.boot_id, &parts))
    }

    pub(super) fn map_id(&self, name: &'static str) -> Result<Option<u32>> {
        Ok(bulk::map_data(self.map(name)?)
            .and_then(|m| m.info().ok())
            .map(|i| i.id()))
    }

    /// Reads every counter, summed over CPUs, with batch lookups where the kernel has them.
    ///
    /// # Errors
    /// A failed map read, naming the map.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let nr_cpus = self.nr_cpus()?;
        let mut out = Snapshot {
            epoch: self.counters_epoch()?,
            earlier_epochs: self
                .lineage()
                .map(|l| super::older::earlier_epochs(&self.boot_id, l))
                .unwrap_or_default(),
            ..Snapshot::default()
        };
        let older = match (&self.older, &self.carried) {
            (Some(older), _) => Some(older.counts(nr_cpus)),
            (None, Some(carried)) => Some(carried.counts()),
            (None, None) => None,
        }
        .transpose()
        .map_err(|e| self.map_err(e.map, e.source))?;

        // Drops first: every dropped packet was offered before it was dropped, so offered
        // bytes read afterwards include it and `offered − dropped` never dips between syncs
        // (a dip would read as the kernel's counters restarting). Only minors that dropped
        // are read (all of them when the seen map is incomplete).
        let seen = self.map(names::DROPS_SEEN)?;
        let runs = super::seen::runs_to_read(Some(seen), MAX_MINORS)
            .map_err(|e| self.map_err(names::DROPS_SEEN, e))?;
        let drops = bulk::array_runs(self.map(names::DROPS)?, &runs, 1, Counter::merged)
            .map_err(|e| self.map_err(names::DROPS, e))?;
        for (minor, c) in drops {
            out.add_dropped(minor, c);
        }
        if let Some((_, dropped)) = &older {
            for (minor, c) in dropped {
                out.add_dropped(*minor, *c);
            }
        }

        // Offered: the slots of the xids that have one (or had, until zeroed), the hash of
        // xids without one, what the agent kept of slots it took back, the older layout's.
        let slots = bulk::array_runs(
            self.map(names::SLOTS)?,
            &self.slots.counted_runs(),
            nr_cpus,
            XidCounters::merged,
        )
        .map_err(|e| self.map_err(names::SLOTS, e))?;
        let owners: BTreeMap<u32, u32> = self.slots.counted().collect();
        for (slot, c) in slots {
            if let Some(xid) = owners.get(&slot) {
                out.add_offered(*xid, c);
            }
        }
        let unslotted = bulk::hash_entries::<u32, XidCounters>(
            self.map(names::UNSLOTTED)?,
            nr_cpus,
            XidCounters::merged,
        )
        .map_err(|e| self.map_err(names::UNSLOTTED, e))?;
        for (xid, c) in unslotted {
            out.add_offered(xid, c);
        }
        for (xid, c) in self.slots.retired() {
            out.add_offered(*xid, *c);
        }
        if let Some((offered, _)) = &older {
            for (xid, c) in offered {
                out.add_offered(*xid, *c);
            }
        }

        let overflow = bulk::array_runs(
            self.map(names::OFFERED_OVERFLOW)?,
            &[(0, 1)],
            nr_cpus,
            XidCounters::merged,
        )
        .map_err(|e| self.map_err(names::OFFERED_OVERFLOW, e))?;
        out.offered_overflow = overflow.first().map(|(_, c)| *c).unwrap_or_default();
        (out.received, out.received_overflow, out.policed) = self.read_received(nr_cpus)?;
        out.received_epoch = self.received_epoch()?;
        Ok(out)
    }
}
