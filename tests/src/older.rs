//! The pinned maps of the layout before counter slots, made by hand with the names, kinds and
//! sizes that release pinned, for tests of a new load taking over from it.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use bwmon_common::{ClassIds, Counter, XidCounters, legacy};

/// That layout's maps, pinned in one pin directory.
pub struct OlderLayout {
    dir: PathBuf,
}

fn open(dir: &Path, name: &str, kind: fn(MapData) -> Map) -> Map {
    kind(MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn per_cpu<V: aya::Pod + Default + Clone>(value: V) -> PerCpuValues<V> {
    let cpus = aya::util::nr_cpus().unwrap();
    let mut values = vec![V::default(); cpus];
    values[0] = value;
    PerCpuValues::try_from(values).unwrap()
}

fn seen(dir: &Path, name: &str, slot: u32) {
    let mut map = open(dir, name, Map::Array);
    let mut seen: Array<&mut MapData, [u8; 4096]> = Array::try_from(&mut map).unwrap();
    let mut chunk = seen.get(&(slot / 4096), 0).unwrap();
    chunk[(slot % 4096) as usize] = 1;
    seen.set(slot / 4096, chunk, 0).unwrap();
}

impl OlderLayout {
    /// Pins the layout's maps in `dir`: the last release's (`with_array`: the offered array,
    /// the seen maps and the class array too), or the one before it (offered hash, drop array,
    /// class hash).
    pub fn pin(dir: &Path, with_array: bool) -> OlderLayout {
        std::fs::create_dir_all(dir).unwrap();
        let n = legacy::ENTRIES;
        PerCpuHashMap::<MapData, u32, XidCounters>::create(n, 0)
            .unwrap()
            .pin(dir.join(legacy::OFFERED))
            .unwrap();
        PerCpuArray::<MapData, Counter>::create(n, 0)
            .unwrap()
            .pin(dir.join(legacy::DROPPED))
            .unwrap();
        HashMap::<MapData, u32, ClassIds>::create(n, 0)
            .unwrap()
            .pin(dir.join(legacy::XID_CLASS))
            .unwrap();
        if with_array {
            PerCpuArray::<MapData, XidCounters>::create(n, 0)
                .unwrap()
                .pin(dir.join(legacy::OFFERED_ARRAY))
                .unwrap();
            for name in [legacy::OFFERED_SEEN, legacy::DROPPED_SEEN] {
                Array::<MapData, [u8; 4096]>::create(n / 4096, 0)
                    .unwrap()
                    .pin(dir.join(name))
                    .unwrap();
            }
            Array::<MapData, ClassIds>::create(n, 0)
                .unwrap()
                .pin(dir.join(legacy::XID_CLASS_ARRAY))
                .unwrap();
        }
        OlderLayout {
            dir: dir.to_owned(),
        }
    }

    /// Counts `c` for `xid` in the offered hash (on CPU 0).
    pub fn count_in_hash(&self, xid: u32, c: XidCounters) {
        let mut map = open(&self.dir, legacy::OFFERED, Map::PerCpuHashMap);
        let mut hash: PerCpuHashMap<&mut MapData, u32, XidCounters> =
            PerCpuHashMap::try_from(&mut map).unwrap();
        hash.insert(xid, per_cpu(c), 0).unwrap();
    }

    /// Counts `c` for `xid` in the offered array (on CPU 0) and marks it seen.
    pub fn count_in_array(&self, xid: u32, c: XidCounters) {
        let mut map = open(&self.dir, legacy::OFFERED_ARRAY, Map::PerCpuArray);
        let mut array: PerCpuArray<&mut MapData, XidCounters> =
            PerCpuArray::try_from(&mut map).unwrap();
        array.set(xid, per_cpu(c), 0).unwrap();
        seen(&self.dir, legacy::OFFERED_SEEN, xid);
    }

    /// Counts `c` dropped at `minor` (on CPU 0), marked seen when there is a seen map.
    pub fn count_dropped(&self, minor: u32, c: Counter) {
        let mut map = open(&self.dir, legacy::DROPPED, Map::PerCpuArray);
        let mut array: PerCpuArray<&mut MapData, Counter> =
            PerCpuArray::try_from(&mut map).unwrap();
        array.set(minor, per_cpu(c), 0).unwrap();
        if self.dir.join(legacy::DROPPED_SEEN).exists() {
            seen(&self.dir, legacy::DROPPED_SEEN, minor);
        }
    }

    /// Gives `xid` leaves in the class hash.
    pub fn steer(&self, xid: u32, ids: ClassIds) {
        let mut map = open(&self.dir, legacy::XID_CLASS, Map::HashMap);
        let mut hash: HashMap<&mut MapData, u32, ClassIds> = HashMap::try_from(&mut map).unwrap();
        hash.insert(xid, ids, 0).unwrap();
    }

    /// The counters' epochs a state saved by that layout's releases may carry: this boot's id
    /// and the kernel ids of its offered hash, drop array and (when it had one) offered array,
    /// hashed as the last release did (FNV) and as the ones before it did (std's hasher).
    pub fn epochs(&self) -> Vec<u64> {
        use bwmon_agent::datapath::epoch::{epoch_hash, std_hasher_epoch};
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let boot_id = boot_id.trim();
        let id = |name: &str| {
            let path = self.dir.join(name);
            path.exists()
                .then(|| MapData::from_pin(&path).unwrap().info().unwrap().id())
        };
        let two = [id(legacy::OFFERED), id(legacy::DROPPED)];
        let mut out = vec![std_hasher_epoch(boot_id, &two)];
        if let Some(array) = id(legacy::OFFERED_ARRAY) {
            let three = [two[0], two[1], Some(array)];
            out.push(std_hasher_epoch(boot_id, &three));
            out.push(epoch_hash(boot_id, &three.map(|i| i.map(u64::from))));
        }
        out
    }

    /// Whether any of the layout's maps is still pinned.
    pub fn any_pinned(&self) -> bool {
        legacy::ALL.iter().any(|n| self.dir.join(n).exists())
    }
}
