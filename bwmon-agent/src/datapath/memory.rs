//! The kernel memory bwmon's maps hold: as the kernel accounts it (`memlock` in each map fd's
//! fdinfo), and what the same maps come to on a host with another number of CPUs.
//!
//! The model follows the kernel's own accounting (`map_mem_usage`, 6.4+): arrays by capacity,
//! per-CPU values once per possible CPU, hashes that are not preallocated by the entries they
//! hold (plus a bucket per entry of capacity), tries by their entries. Kernels before 6.4
//! report an estimate from capacity instead (`max_entries × (key + value × CPUs)`): for the
//! hashes that are not preallocated that is an upper bound, not what they hold.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::Map;
use bwmon_common::{MAX_XIDS, names};

use super::{Datapath, OBJECT, batch, bulk, error::Result};

// `enum bpf_map_type` values the model knows.
const HASH: u32 = 1;
const ARRAY: u32 = 2;
const PERCPU_HASH: u32 = 5;
const PERCPU_ARRAY: u32 = 6;
const LPM_TRIE: u32 = 11;
const RINGBUF: u32 = 27;
const NO_PREALLOC: u32 = bwmon_common::BPF_F_NO_PREALLOC;
const PAGE: u64 = 4096;
/// A map's own struct (`struct bpf_array`, `struct bpf_htab`, …): a few hundred bytes.
const HEADER: u64 = 512;
/// `struct htab_elem` before its key.
const HTAB_ELEM: u64 = 48;
/// `struct lpm_trie_node` before its data.
const TRIE_NODE: u64 = 40;

/// One map as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// Its name.
    pub name: String,
    /// `enum bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key: u32,
    /// Value size in bytes.
    pub value: u32,
    /// Capacity.
    pub max_entries: u32,
    /// Flags (`BPF_F_NO_PREALLOC`).
    pub flags: u32,
    /// Entries held (hashes and tries); arrays hold their capacity.
    pub entries: u64,
}

fn round8(n: u32) -> u64 {
    u64::from(n).div_ceil(8) * 8
}

impl MapShape {
    /// Kernel memory of this map at `cpus` possible CPUs: (fixed part, part per CPU).
    pub fn bytes(&self) -> (u64, u64) {
        let max = u64::from(self.max_entries);
        let v8 = round8(self.value);
        match self.map_type {
            ARRAY => (HEADER + max * v8, 0),
            PERCPU_ARRAY => (HEADER + max * 8, max * v8),
            HASH | PERCPU_HASH => {
                let percpu = self.map_type == PERCPU_HASH;
                let buckets = max.next_power_of_two() * 16;
                let elem = HTAB_ELEM + round8(self.key) + if percpu { 8 } else { v8 };
                // HASHTAB_MAP_LOCK_COUNT ints per CPU.
                let locks = 8 * 4;
                if self.flags & NO_PREALLOC == 0 {
                    let per_cpu = if percpu {
                        locks + v8 * max
                    } else {
                        // An extra element per CPU, and a pointer to it.
                        locks + elem + 8
                    };
                    (HEADER + buckets + elem * max, per_cpu)
                } else {
                    let n = self.entries;
                    let mut fixed = HEADER + buckets + (elem + 8) * n;
                    let mut per_cpu = locks;
                    if percpu {
                        fixed += 16 * n;
                        per_cpu += v8 * n;
                    }
                    (fixed, per_cpu)
                }
            }
            LPM_TRIE => (
                HEADER
                    + (TRIE_NODE + u64::from(self.key.saturating_sub(4)) + u64::from(self.value))
                        * self.entries,
                0,
            ),
            // The data pages, and a few pages of positions and header.
            RINGBUF => (max.div_ceil(PAGE) * PAGE + 3 * PAGE, 0),
            _ => (HEADER + max * (u64::from(self.key) + v8), 0),
        }
    }

    /// Kernel memory at `cpus` possible CPUs.
    pub fn at(&self, cpus: u64) -> u64 {
        let (fixed, per_cpu) = self.bytes();
        fixed + per_cpu * cpus
    }
}

/// The maps' memory at some number of CPUs, and how it grows with more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// The maps.
    pub maps: Vec<MapShape>,
}

impl Footprint {
    /// Bytes that do not grow with CPUs.
    pub fn fixed(&self) -> u64 {
        self.maps.iter().map(|m| m.bytes().0).sum()
    }

    /// Bytes per possible CPU.
    pub fn per_cpu(&self) -> u64 {
        self.maps.iter().map(|m| m.bytes().1).sum()
    }

    /// Total bytes at `cpus` possible CPUs.
    pub fn at(&self, cpus: u64) -> u64 {
        self.fixed() + self.per_cpu() * cpus
    }

    /// The maps of the embedded eBPF object (every one bwmon loads) holding what `load`
    /// puts in them. `None` when the binary carries no object.
    pub(crate) fn estimate(load: &Load) -> Option<Footprint> {
        let obj = aya_obj::Object::parse(OBJECT).ok()?;
        let sending = u64::from(load.slices.min(MAX_XIDS));
        let maps = obj
            .maps
            .iter()
            .map(|(name, m)| {
                let entries = match name.as_str() {
                    // Each slice's first packets of a boot are counted there (until its slot).
                    names::UNSLOTTED => sending,
                    // Each slice that receives (downloads) has its counters there.
                    names::RECEIVED => sending,
                    names::XID_HASH => u64::from(load.high_xids.min(MAX_XIDS)),
                    names::EXEMPT_V4 | names::EXEMPT_V6 => u64::from(load.exempt_prefixes),
                    names::SOURCE_V4 | names::SOURCE_V6 => u64::from(load.source_prefixes),
                    _ => 0,
                };
                MapShape {
                    name: name.clone(),
                    map_type: m.map_type(),
                    key: m.key_size(),
                    value: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                    entries,
                }
            })
            .collect();
        Some(Footprint { maps })
    }
}

/// What a configuration puts in the maps, for [`Footprint::estimate`]: every slice assumed
/// to send at some time in a boot; prefixes counted in both families' tries (an upper bound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Load {
    /// Configured slices.
    pub slices: u32,
    /// Of them, those whose xid is at least [`bwmon_common::CLASS_ARRAY_XIDS`] (in the xid
    /// hash).
    pub high_xids: u32,
    /// Exempt prefixes.
    pub exempt_prefixes: u32,
    /// Source prefixes of all slices.
    pub source_prefixes: u32,
}

impl Load {
    /// What `slices` under `config` put in the maps.
    pub(crate) fn of(
        slices: &[crate::config::slices::SliceSpec],
        config: &crate::config::Config,
    ) -> Load {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Load {
            slices: count(slices.len()),
            high_xids: count(
                slices
                    .iter()
                    .filter(|s| s.xid >= bwmon_common::CLASS_ARRAY_XIDS)
                    .count(),
            ),
            exempt_prefixes: count(config.exempt_prefixes.len()),
            source_prefixes: count(slices.iter().map(|s| s.sources.len()).sum()),
        }
    }
}

/// What `bwmon check` says about the kernel memory the maps will take on this host: at its
/// possible CPUs, with `load`; `None` when the binary carries no object.
pub(crate) fn for_this_host(load: &Load) -> Option<String> {
    let footprint = Footprint::estimate(load)?;
    let cpus = aya::util::nr_cpus().ok()? as u64;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    Some(format!(
        "kernel memory of the maps on this host ({cpus} possible CPUs): about {:.1} MiB ({:.1} MiB + {:.0} KiB per CPU) with {} slices sending; kernels before 6.4 report more as memlock (capacity × CPUs for the hashes that are not preallocated)",
        mib(footprint.at(cpus)),
        mib(footprint.fixed()),
        footprint.per_cpu() as f64 / 1024.0,
        load.slices,
    ))
}

/// Whether the running kernel's `memlock` is what maps hold (`map_mem_usage`, 6.4+) rather
/// than an estimate from their capacity.
pub fn accounts_by_use() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 4, 0))
}

/// One map's kernel memory as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    /// The kernel's id of the map.
    pub id: u32,
    /// Its shape (for the model).
    pub shape: MapShape,
    /// `memlock` of its fd.
    pub memlock: u64,
}

impl MapMemory {
    /// One line: its name, its memlock, and what the model gives at `cpus` CPUs.
    pub fn line(&self, cpus: u64) -> String {
        format!(
            "{:<24} memlock {:>10} B, from its size {:>10} B",
            self.shape.name,
            self.memlock,
            self.shape.at(cpus)
        )
    }
}

/// A map fd's fdinfo (`/proc/PID/fdinfo/FD`): its id, shape (entries not counted) and
/// `memlock`; `None` when the fd is not a map's.
fn fdinfo(pid: &str, fd: i32) -> io::Result<Option<(u32, MapMemory)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let num = |name: &str| {
        field(name).and_then(|v| match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        })
    };
    let (Some(map_type), Some(id), Some(memlock)) =
        (num("map_type"), num("map_id"), num("memlock"))
    else {
        return Ok(None);
    };
    let small = |name: &str| num(name).and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    let shape = MapShape {
        name: String::new(),
        map_type: map_type as u32,
        key: small("key_size"),
        value: small("value_size"),
        max_entries: small("max_entries"),
        flags: small("map_flags"),
        entries: 0,
    };
    let id = id as u32;
    Ok(Some((id, MapMemory { id, shape, memlock })))
}

/// `memlock` of this process's map fd `fd`.
fn memlock(fd: i32) -> io::Result<u64> {
    fdinfo("self", fd)?
        .map(|(_, m)| m.memlock)
        .ok_or_else(|| io::Error::other(format!("fd {fd} is not a map")))
}

/// Every map process `pid` holds a file descriptor of (once each), with its name and the
/// entries of its hashes and tries counted: what a running `bwmon` holds, seen from outside.
///
/// # Errors
/// `/proc/PID/fd` cannot be read; a map that vanished meanwhile is left out.
pub fn of_process(pid: u32) -> io::Result<Vec<MapMemory>> {
    let pid = pid.to_string();
    let mut seen = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(Some((id, mut map))) = fdinfo(&pid, fd) {
            if seen.contains_key(&id) {
                continue;
            }
            if let Ok(data) = aya::maps::MapData::from_id(id) {
                if let Ok(info) = data.info() {
                    map.shape.name = info.name_as_str().unwrap_or("").to_owned();
                }
                if matches!(map.shape.map_type, HASH | PERCPU_HASH | LPM_TRIE) {
                    map.shape.entries = batch::count_keys(data.fd(), map.shape.key)?;
                }
            }
            seen.insert(id, map);
        }
    }
    Ok(seen.into_values().collect())
}

impl Datapath {
    /// Every map this datapath holds (its object's, the carried ones, an older layout's not
    /// yet folded), by name.
    fn all_maps(&self) -> Vec<(String, &Map)> {
        let mut maps: Vec<(String, &Map)> =
            self.ebpf.maps().map(|(n, m)| (n.to_owned(), m)).collect();
        if let Some(c) = &self.carried {
            maps.extend(c.maps().map(|(n, m)| (n.to_owned(), m)));
        }
        if let Some(o) = &self.older {
            maps.extend(o.maps().map(|(n, m)| (n.to_owned(), m)));
        }
        maps
    }

    /// Kernel memory of every map this datapath holds: as the kernel accounts it (`memlock`)
    /// where it accounts what maps hold (6.4+); from the maps' sizes and entries, as those
    /// kernels account them, where `memlock` is an estimate from capacity.
    ///
    /// # Errors
    /// An fdinfo or map info that cannot be read.
    pub fn kernel_memory_bytes(&self) -> Result<u64> {
        if !accounts_by_use() {
            let cpus = self.nr_cpus()? as u64;
            return Ok(self.kernel_memory()?.iter().map(|m| m.shape.at(cpus)).sum());
        }
        let mut total = 0;
        for (name, map) in self.all_maps() {
            if let Some(data) = bulk::map_data(map) {
                total += memlock(data.fd().as_fd().as_raw_fd())
                    .map_err(|e| self.fdinfo_err(&name, e))?;
            }
        }
        Ok(total)
    }

    /// Every map's memory as the kernel reports it, with its shape for the model (entries of
    /// hashes and tries counted: one syscall per key).
    ///
    /// # Errors
    /// An fdinfo or map info that cannot be read.
    pub fn kernel_memory(&self) -> Result<Vec<MapMemory>> {
        let mut out = Vec::new();
        for (name, map) in self.all_maps() {
            let Some(data) = bulk::map_data(map) else {
                continue;
            };
            let info = data.info().map_err(|e| self.map_err(names::SLOTS, e))?;
            let map_type = info.map_type().map(|t| t as u32).unwrap_or(0);
            let counted = matches!(map_type, HASH | PERCPU_HASH | LPM_TRIE);
            let shape = MapShape {
                name: name.clone(),
                map_type,
                key: info.key_size(),
                value: info.value_size(),
                max_entries: info.max_entries(),
                flags: info.map_flags(),
                entries: if counted {
                    batch::count_keys(data.fd(), info.key_size())
                        .map_err(|e| self.map_err(names::SLOTS, bulk::batch_error(e)))?
                } else {
                    0
                },
            };
            let memlock =
                memlock(data.fd().as_fd().as_raw_fd()).map_err(|e| self.fdinfo_err(&name, e))?;
            out.push(MapMemory {
                id: info.id(),
                shape,
                memlock,
            });
        }
        Ok(out)
    }

    fn fdinfo_err(&self, name: &str, source: io::Error) -> super::DatapathError {
        super::DatapathError::Fdinfo {
            iface: self.iface.clone(),
            map: name.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(map_type: u32, key: u32, value: u32, max: u32, flags: u32, entries: u64) -> MapShape {
        MapShape {
            name: String::new(),
            map_type,
            key,
            value,
            max_entries: max,
            flags,
            entries,
        }
    }

    #[test]
    fn per_cpu_values_are_counted_once_per_cpu_and_unpreallocated_hashes_by_entry() {
        // The older layout's offered array: 65,536 × 32 B per CPU.
        let array = shape(PERCPU_ARRAY, 4, 32, 65_536, 0, 0);
        assert_eq!(array.bytes().1, 2 << 20);
        // A preallocated per-CPU hash costs its capacity per CPU whatever it holds.
        let prealloc = shape(PERCPU_HASH, 4, 32, 65_536, 0, 3);
        assert!(prealloc.bytes().1 >= 2 << 20);
        // Not preallocated: a thousand entries, 32 KiB per CPU.
        let lazy = shape(PERCPU_HASH, 4, 32, 65_536, NO_PREALLOC, 1000);
        assert_eq!(lazy.bytes().1, 32_000 + 32);
        assert_eq!(lazy.at(128) - lazy.at(2), 126 * (32_000 + 32));
        // Shared arrays do not grow with CPUs.
        assert_eq!(
            shape(ARRAY, 4, 16, 65_536, 0, 0).bytes(),
            (HEADER + (1 << 20), 0)
        );
    }
}
