//! The counters of the layout before counter slots (per-CPU counters for every possible xid and
//! HTB minor: 2–8 MiB per CPU). A load that finds its maps pinned takes over from them: their
//! class ids are copied into the new xid maps before the new classifier is attached; their
//! counts are read beside the new ones while the old programs may still be finishing a run;
//! once the new classifier has been in place for [`QUIET`], their final counts are written
//! into frozen "carried" maps (sized by what they hold), and the old maps are unpinned.
//!
//! A crash anywhere in between loses and doubles nothing: the carried maps are pinned only
//! once complete (the offered one last), and while that pin is missing the old maps are what
//! is read; writing them again gives the same values.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError};
use aya_obj::generated::bpf_map_type;
use bwmon_common::{BPF_F_NO_PREALLOC, ClassIds, Counter, Lineage, XidCounters, legacy, names};
use tracing::info;

use super::{bulk, epoch, slots::QUIET};

/// What an older map failed at.
#[derive(Debug, thiserror::Error)]
#[error("map {map}")]
pub(super) struct OlderError {
    /// The map's name.
    pub map: &'static str,
    /// Cause.
    #[source]
    pub source: MapError,
}

fn on(map: &'static str) -> impl Fn(MapError) -> OlderError {
    move |source| OlderError { map, source }
}

/// Counts per xid (offered) and per HTB minor (dropped).
pub(super) type Counts = (BTreeMap<u32, XidCounters>, BTreeMap<u32, Counter>);

/// The older layout's counter maps, still pinned.
#[derive(Debug)]
pub(super) struct Older {
    maps: HashMap<&'static str, Map>,
    lineage: Lineage,
}

/// The pinned map `name` in `pin_dir`, as `kind`; `None` when not pinned.
fn pinned(
    pin_dir: &Path,
    name: &'static str,
    kind: fn(MapData) -> Map,
) -> Result<Option<Map>, OlderError> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    MapData::from_pin(&path)
        .map(|d| Some(kind(d)))
        .map_err(on(name))
}

fn map_id(map: Option<&Map>) -> Option<u32> {
    map.and_then(bulk::map_data)
        .and_then(|d| d.info().ok())
        .map(|i| i.id())
}

impl Older {
    /// Opens the older counter maps pinned in `pin_dir`; `None` when there are none.
    pub(super) fn open(pin_dir: &Path) -> Result<Option<Older>, OlderError> {
        let mut maps = HashMap::new();
        for (name, kind) in [
            (legacy::OFFERED, Map::PerCpuHashMap as fn(MapData) -> Map),
            (legacy::OFFERED_ARRAY, Map::PerCpuArray),
            (legacy::OFFERED_SEEN, Map::Array),
            (legacy::DROPPED, Map::PerCpuArray),
            (legacy::DROPPED_SEEN, Map::Array),
        ] {
            if let Some(map) = pinned(pin_dir, name, kind)? {
                maps.insert(name, map);
            }
        }
        let counts = [legacy::OFFERED, legacy::OFFERED_ARRAY, legacy::DROPPED];
        if !counts.iter().any(|n| maps.contains_key(n)) {
            return Ok(None);
        }
        let lineage = lineage(&maps);
        Ok(Some(Older { maps, lineage }))
    }

    /// The kernel ids of the older maps.
    pub(super) fn lineage(&self) -> Lineage {
        self.lineage
    }

    /// The maps, for their kernel memory.
    pub(super) fn maps(&self) -> impl Iterator<Item = (&'static str, &Map)> {
        self.maps.iter().map(|(n, m)| (*n, m))
    }

    /// What the older maps counted: offered per xid (hash entry plus array slot), dropped per
    /// minor (minors without a dropped packet left out).
    pub(super) fn counts(&self, nr_cpus: usize) -> Result<Counts, OlderError> {
        let mut offered: BTreeMap<u32, XidCounters> = BTreeMap::new();
        let mut dropped = BTreeMap::new();
        if let Some(map) = self.maps.get(legacy::DROPPED) {
            let seen = self.maps.get(legacy::DROPPED_SEEN);
            let runs = super::seen::runs_to_read(seen, legacy::ENTRIES)
                .map_err(on(legacy::DROPPED_SEEN))?;
            let slots = bulk::array_runs(map, &runs, nr_cpus, Counter::merged)
                .map_err(on(legacy::DROPPED))?;
            dropped.extend(slots.into_iter().filter(|(_, c)| c.packets != 0));
        }
        if let Some(map) = self.maps.get(legacy::OFFERED) {
            let entries = bulk::hash_entries::<u32, XidCounters>(map, nr_cpus, XidCounters::merged)
                .map_err(on(legacy::OFFERED))?;
            offered.extend(entries);
        }
        if let Some(map) = self.maps.get(legacy::OFFERED_ARRAY) {
            let seen = self.maps.get(legacy::OFFERED_SEEN);
            let runs = super::seen::runs_to_read(seen, legacy::ENTRIES)
                .map_err(on(legacy::OFFERED_SEEN))?;
            for (xid, c) in bulk::array_runs(map, &runs, nr_cpus, XidCounters::merged)
                .map_err(on(legacy::OFFERED_ARRAY))?
            {
                let total = offered.entry(xid).or_default();
                *total = total.merged(c);
            }
        }
        Ok((offered, dropped))
    }
}

/// The kernel ids of the older counter maps.
fn lineage(maps: &HashMap<&'static str, Map>) -> Lineage {
    let id = |name| map_id(maps.get(name)).unwrap_or(0);
    Lineage {
        offered: id(legacy::OFFERED),
        dropped: id(legacy::DROPPED),
        offered_array: id(legacy::OFFERED_ARRAY),
        _pad: 0,
    }
}

/// The epochs a bwmon of the older layout saved for its maps `lineage` in boot `boot_id`: the
/// last release's (FNV over the boot and the three maps' ids), and those std's hasher gave the
/// ones before it (with and without the offered array). Each needs the maps it was made of.
pub(super) fn earlier_epochs(boot_id: &str, lineage: Lineage) -> Vec<u64> {
    let some = |id: u32| (id != 0).then_some(id);
    let (Some(offered), Some(dropped)) = (some(lineage.offered), some(lineage.dropped)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(array) = some(lineage.offered_array) {
        let ids = [Some(offered), Some(dropped), Some(array)];
        out.push(epoch::epoch_hash(boot_id, &ids.map(|i| i.map(u64::from))));
        out.push(epoch::std_hasher_epoch(boot_id, &ids));
    }
    out.push(epoch::std_hasher_epoch(
        boot_id,
        &[Some(offered), Some(dropped)],
    ));
    out
}

/// The class ids the older layout kept (its hash, then its array where set), from its pins in
/// `pin_dir`.
pub(super) fn classes(pin_dir: &Path) -> Result<HashMap<u32, ClassIds>, OlderError> {
    let mut out = HashMap::new();
    if let Some(map) = pinned(pin_dir, legacy::XID_CLASS, Map::HashMap)? {
        out.extend(
            bulk::hash_entries::<u32, ClassIds>(&map, 1, |_, v| v)
                .map_err(on(legacy::XID_CLASS))?,
        );
    }
    if let Some(map) = pinned(pin_dir, legacy::XID_CLASS_ARRAY, Map::Array)? {
        let set = bulk::array_runs::<ClassIds>(&map, &[(0, legacy::ENTRIES)], 1, |_, v| v)
            .map_err(on(legacy::XID_CLASS_ARRAY))?;
        out.extend(set);
    }
    out.retain(|_, ids| *ids != ClassIds::NONE);
    Ok(out)
}

/// Removes the older layout's pins from `pin_dir` (the maps go when their last program
/// does).
pub(super) fn unpin(pin_dir: &Path) -> std::io::Result<()> {
    for name in legacy::ALL {
        match fs::remove_file(pin_dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Whether any older class map is pinned in `pin_dir`.
pub(super) fn has_class_pins(pin_dir: &Path) -> bool {
    [legacy::XID_CLASS, legacy::XID_CLASS_ARRAY]
        .iter()
        .any(|n| pin_dir.join(n).exists())
}

/// The frozen counts of an older layout: [`names::CARRIED`], [`names::CARRIED_DROPS`],
/// [`names::LINEAGE`].
#[derive(Debug)]
pub(super) struct Carried {
    offered: Map,
    drops: Option<Map>,
    lineage: Option<Lineage>,
}

/// The names of the carried maps, in the order they are pinned (the offered one, which says
/// the fold is complete, last).
pub(super) const CARRIED_PINS: [&str; 3] = [names::LINEAGE, names::CARRIED_DROPS, names::CARRIED];

fn create(
    name: &'static str,
    map_type: bpf_map_type,
    key: usize,
    value: usize,
    entries: usize,
    flags: u32,
) -> Result<MapData, OlderError> {
    let entries = u32::try_from(entries.max(1)).unwrap_or(u32::MAX);
    let obj =
        aya_obj::Map::new_from_params(map_type as u32, key as u32, value as u32, entries, flags);
    MapData::create(obj, name, None).map_err(on(name))
}

fn pin(data: &MapData, dir: &Path, name: &'static str) -> Result<(), OlderError> {
    let path: PathBuf = dir.join(name);
    let _ = fs::remove_file(&path);
    data.pin(&path).map_err(|e| OlderError {
        map: name,
        source: MapError::PinError {
            name: Some(name.to_owned()),
            error: e,
        },
    })
}

/// A hash (not preallocated, sized to fit) holding `entries`, named `name`.
fn frozen_hash<V: aya::Pod>(
    name: &'static str,
    entries: &BTreeMap<u32, V>,
) -> Result<Map, OlderError> {
    let mut map = Map::HashMap(create(
        name,
        bpf_map_type::BPF_MAP_TYPE_HASH,
        4,
        std::mem::size_of::<V>(),
        entries.len(),
        BPF_F_NO_PREALLOC,
    )?);
    let mut hash: BpfHashMap<&mut MapData, u32, V> =
        BpfHashMap::try_from(&mut map).map_err(on(name))?;
    for (key, value) in entries {
        hash.insert(key, value, 0).map_err(on(name))?;
    }
    Ok(map)
}

impl Carried {
    /// Opens the carried maps pinned in `pin_dir`; `None` unless the fold was complete.
    pub(super) fn open(pin_dir: &Path) -> Result<Option<Carried>, OlderError> {
        let Some(offered) = pinned(pin_dir, names::CARRIED, Map::HashMap)? else {
            return Ok(None);
        };
        let drops = pinned(pin_dir, names::CARRIED_DROPS, Map::HashMap)?;
        let lineage = match pinned(pin_dir, names::LINEAGE, Map::Array)? {
            Some(map) => {
                let array: Array<&MapData, Lineage> =
                    Array::try_from(&map).map_err(on(names::LINEAGE))?;
                Some(array.get(&0, 0).map_err(on(names::LINEAGE))?)
            }
            None => None,
        };
        Ok(Some(Carried {
            offered,
            drops,
            lineage,
        }))
    }

    /// Writes `counts` into new carried maps in `pin_dir` and pins them, the offered one last.
    pub(super) fn create(
        pin_dir: &Path,
        counts: &Counts,
        lineage: Lineage,
    ) -> Result<Carried, OlderError> {
        let (offered, dropped) = counts;
        let lineage_data = create(
            names::LINEAGE,
            bpf_map_type::BPF_MAP_TYPE_ARRAY,
            4,
            std::mem::size_of::<Lineage>(),
            1,
            0,
        )?;
        let mut lineage_map = Map::Array(lineage_data);
        Array::<&mut MapData, Lineage>::try_from(&mut lineage_map)
            .and_then(|mut a| a.set(0, lineage, 0))
            .map_err(on(names::LINEAGE))?;
        let drops = frozen_hash(names::CARRIED_DROPS, dropped)?;
        let carried = frozen_hash(names::CARRIED, offered)?;
        for (name, map) in [
            (names::LINEAGE, &lineage_map),
            (names::CARRIED_DROPS, &drops),
            (names::CARRIED, &carried),
        ] {
            let data = bulk::map_data(map).ok_or(OlderError {
                map: name,
                source: MapError::InvalidName {
                    name: name.to_owned(),
                },
            })?;
            pin(data, pin_dir, name)?;
        }
        Ok(Carried {
            offered: carried,
            drops: Some(drops),
            lineage: Some(lineage),
        })
    }

    /// The older maps' ids, when every carried map is there (a lost one is a restart).
    pub(super) fn lineage(&self) -> Option<Lineage> {
        self.lineage.filter(|_| self.drops.is_some())
    }

    /// The maps, for their kernel memory.
    pub(super) fn maps(&self) -> impl Iterator<Item = (&'static str, &Map)> {
        [
            (names::CARRIED, Some(&self.offered)),
            (names::CARRIED_DROPS, self.drops.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, m)| Some((n, m?)))
    }

    /// The carried counts.
    pub(super) fn counts(&self) -> Result<Counts, OlderError> {
        let offered = bulk::hash_entries::<u32, XidCounters>(&self.offered, 1, |_, v| v)
            .map_err(on(names::CARRIED))?
            .into_iter()
            .collect();
        let dropped = match &self.drops {
            Some(map) => bulk::hash_entries::<u32, Counter>(map, 1, |_, v| v)
                .map_err(on(names::CARRIED_DROPS))?
                .into_iter()
                .collect(),
            None => BTreeMap::new(),
        };
        Ok((offered, dropped))
    }
}

impl super::Datapath {
    /// Folds the older layout's counts into carried maps and unpins it, once the new
    /// classifier has been in place for [`QUIET`] (no old program still writing).
    pub(super) fn fold_older_layout(&mut self, now: std::time::Instant) -> super::Result<()> {
        let Some(older) = &self.older else {
            return Ok(());
        };
        if now.duration_since(self.takeover) < QUIET {
            return Ok(());
        }
        let iface = self.iface.clone();
        let err = |e: OlderError| super::DatapathError::Map {
            iface: iface.clone(),
            map: e.map,
            source: e.source,
        };
        let counts = older.counts(self.nr_cpus()?).map_err(err)?;
        let carried = Carried::create(&self.pin_dir, &counts, older.lineage()).map_err(err)?;
        unpin(&self.pin_dir).map_err(|source| super::DatapathError::PinDir {
            path: self.pin_dir.clone(),
            source,
        })?;
        info!(
            iface = %self.iface,
            xids = counts.0.len(),
            minors = counts.1.len(),
            "the older layout's counters are folded into the carried maps and unpinned"
        );
        self.older = None;
        self.carried = Some(carried);
        Ok(())
    }

    /// Makes the xid maps hold the class ids an older layout's class maps held (`older`), as
    /// well as the ones they hold already, so that its slices are steered as before until the
    /// first sync.
    pub(super) fn steer_as_the_older_layout(
        &mut self,
        older: HashMap<u32, ClassIds>,
    ) -> super::Result<()> {
        if older.is_empty() {
            return Ok(());
        }
        let mut classes: HashMap<u32, ClassIds> = self
            .entries
            .iter()
            .filter(|(_, e)| e.classes != ClassIds::NONE)
            .map(|(x, e)| (*x, e.classes))
            .collect();
        for (xid, ids) in older {
            classes.entry(xid).or_insert(ids);
        }
        self.set_classes(&classes)
    }
}
