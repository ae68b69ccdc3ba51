//! Writing the maps the agent owns: xid → leaves and counter slot, the exempt-destination
//! tries and the source-prefix tries. Every change is make-before-break: new entries are written before
//! stale ones are removed, so a packet never misses its class or prefix during the change.

use std::collections::HashMap;

use aya::maps::{Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use bwmon_common::{
    CLASS_ARRAY_XIDS, ClassIds, EXEMPT_FILTER_WORDS, XidEntry, exempt_filter_bit_v4,
    exempt_filter_bit_v6, names,
};
use ipnet::IpNet;

use super::{Datapath, DatapathError, bulk, error::Result};

impl Datapath {
    /// Makes the exempt-destination tries hold exactly `prefixes` (IPv4 and IPv6).
    ///
    /// # Errors
    /// A failed map update (e.g. more prefixes than the trie holds), naming the map.
    pub fn set_exempt(&mut self, prefixes: &[IpNet]) -> Result<()> {
        let values: Vec<(IpNet, u8)> = prefixes.iter().map(|p| (*p, 1u8)).collect();
        // The filter covers the old and the new prefixes while the tries change, so no
        // destination in both sets is missed; then only the new ones.
        let new = exempt_filter(prefixes);
        let old = self.read_filter()?;
        let both: Vec<u64> = old.iter().zip(&new).map(|(o, n)| o | n).collect();
        self.write_filter(&old, &both)?;
        self.replace_trie(names::EXEMPT_V4, names::EXEMPT_V6, &values)?;
        self.write_filter(&both, &new)
    }

    /// Adds to the exempt filter every prefix the exempt tries hold.
    ///
    /// # Errors
    /// A map that cannot be read or written, naming it.
    pub(super) fn cover_tries_in_filter(&mut self) -> Result<()> {
        let mut nets: Vec<IpNet> = Vec::new();
        let name = names::EXEMPT_V4;
        let v4: LpmTrie<&MapData, [u8; 4], u8> =
            LpmTrie::try_from(self.map(name)?).map_err(|e| self.map_err(name, e))?;
        for key in v4.keys() {
            let key = key.map_err(|e| self.map_err(name, e))?;
            let net = ipnet::Ipv4Net::new(key.data().into(), key.prefix_len() as u8);
            nets.extend(net.ok().map(IpNet::V4));
        }
        let name = names::EXEMPT_V6;
        let v6: LpmTrie<&MapData, [u8; 16], u8> =
            LpmTrie::try_from(self.map(name)?).map_err(|e| self.map_err(name, e))?;
        for key in v6.keys() {
            let key = key.map_err(|e| self.map_err(name, e))?;
            let net = ipnet::Ipv6Net::new(key.data().into(), key.prefix_len() as u8);
            nets.extend(net.ok().map(IpNet::V6));
        }
        let old = self.read_filter()?;
        let both: Vec<u64> = old
            .iter()
            .zip(exempt_filter(&nets))
            .map(|(o, n)| o | n)
            .collect();
        self.write_filter(&old, &both)
    }

    fn read_filter(&self) -> Result<Vec<u64>> {
        let name = names::EXEMPT_FILTER;
        let map: Array<&MapData, u64> =
            Array::try_from(self.map(name)?).map_err(|e| self.map_err(name, e))?;
        (0..EXEMPT_FILTER_WORDS)
            .map(|i| map.get(&i, 0).map_err(|e| self.map_err(name, e)))
            .collect()
    }

    /// Writes the words of `new` that differ from `old`.
    fn write_filter(&mut self, old: &[u64], new: &[u64]) -> Result<()> {
        let (map, err) = self.map_for_write(names::EXEMPT_FILTER)?;
        let mut map: Array<&mut MapData, u64> = Array::try_from(map).map_err(&err)?;
        for (i, (o, n)) in (0u32..).zip(old.iter().zip(new)) {
            if o != n {
                map.set(i, n, 0).map_err(&err)?;
            }
        }
        Ok(())
    }

    /// Makes the source-prefix tries hold exactly `sources` (prefix → xid), for
    /// `xid_source = "source"`.
    ///
    /// # Errors
    /// A failed map update, naming the map.
    pub fn set_sources(&mut self, sources: &[(IpNet, u32)]) -> Result<()> {
        self.replace_trie(names::SOURCE_V4, names::SOURCE_V6, sources)
    }

    /// Makes the tenant cgroups' map hold exactly `ids` (cgroup id → xid) and the classifier
    /// look at the levels `levels` (bit `L`: some tenant cgroup at level `L`; 0: none, the
    /// classifier reads no socket's cgroup). Make-before-break: the levels of the old and the
    /// new set, the new entries, the removals, then only the new levels.
    ///
    /// # Errors
    /// A failed map update, naming the map.
    pub fn set_cgroups(&mut self, ids: &HashMap<u64, u32>, levels: u32) -> Result<()> {
        let name = names::CGROUP_LEVELS;
        let old_levels = {
            let map: Array<&MapData, u32> =
                Array::try_from(self.map(name)?).map_err(|e| self.map_err(name, e))?;
            map.get(&0, 0).map_err(|e| self.map_err(name, e))?
        };
        self.write_levels(old_levels | levels)?;
        let (map, err) = self.map_for_write(names::CGROUP_XIDS)?;
        let mut hash: BpfHashMap<&mut MapData, u64, u32> =
            BpfHashMap::try_from(map).map_err(&err)?;
        for (id, xid) in ids {
            if hash.get(id, 0).ok() != Some(*xid) {
                hash.insert(id, xid, 0).map_err(&err)?;
            }
        }
        let stale: Vec<u64> = hash
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !ids.contains_key(k))
            .collect();
        for id in stale {
            match hash.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(err(e)),
            }
        }
        self.write_levels(levels)
    }

    fn write_levels(&mut self, levels: u32) -> Result<()> {
        let (map, err) = self.map_for_write(names::CGROUP_LEVELS)?;
        let mut array: Array<&mut MapData, u32> = Array::try_from(map).map_err(&err)?;
        array.set(0, levels, 0).map_err(&err)
    }

    fn replace_trie<V: aya::Pod + PartialEq>(
        &mut self,
        v4: &'static str,
        v6: &'static str,
        entries: &[(IpNet, V)],
    ) -> Result<()> {
        let mut want4: HashMap<([u8; 4], u32), V> = HashMap::new();
        let mut want6: HashMap<([u8; 16], u32), V> = HashMap::new();
        for (net, value) in entries {
            match net.trunc() {
                IpNet::V4(n) => {
                    want4.insert((n.addr().octets(), u32::from(n.prefix_len())), *value)
                }
                IpNet::V6(n) => {
                    want6.insert((n.addr().octets(), u32::from(n.prefix_len())), *value)
                }
            };
        }
        self.sync_trie(v4, &want4)?;
        self.sync_trie(v6, &want6)
    }

    /// Inserts what is missing or changed first, then removes what is no longer wanted: a
    /// lookup for a prefix in both the old and the new set never misses.
    fn sync_trie<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod + PartialEq>(
        &mut self,
        name: &'static str,
        want: &HashMap<(K, u32), V>,
    ) -> Result<()> {
        let (map, err) = self.map_for_write(name)?;
        let mut trie: LpmTrie<&mut MapData, K, V> = LpmTrie::try_from(map).map_err(&err)?;
        for ((data, len), value) in want {
            let key = Key::new(*len, *data);
            if trie.get(&key, 0).ok().as_ref() != Some(value) {
                trie.insert(&key, value, 0).map_err(&err)?;
            }
        }
        let stale: Vec<Key<K>> = trie
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want.contains_key(&(k.data(), k.prefix_len())))
            .collect();
        for key in stale {
            trie.remove(&key).map_err(&err)?;
        }
        Ok(())
    }

    /// Makes the xids' leaves those of `classes` (xids without an entry there have the default
    /// leaves), and gives each of them a counter slot if it has none and one is free: a slice
    /// with leaves sends. Entries are written before stale ones are removed, so a packet never
    /// misses its class during the change; an xid keeps its slot when it loses its leaves.
    ///
    /// # Errors
    /// A failed map update, naming the map.
    pub fn set_classes(&mut self, classes: &HashMap<u32, ClassIds>) -> Result<()> {
        let mut want: HashMap<u32, XidEntry> = self
            .entries
            .iter()
            .filter(|(_, e)| e.slot != 0)
            .map(|(xid, e)| (*xid, XidEntry::EMPTY.with_slot(e.slot)))
            .collect();
        let mut xids: Vec<u32> = classes.keys().copied().collect();
        xids.sort_unstable();
        for xid in xids {
            let slot = self.slots.give(xid).unwrap_or(0);
            want.insert(
                xid,
                XidEntry {
                    classes: classes[&xid],
                    ..XidEntry::EMPTY.with_slot(slot)
                },
            );
        }
        want.retain(|_, e| *e != XidEntry::EMPTY);
        self.write_entries(&want)
    }

    /// Makes the xid maps hold exactly `want` (xids below [`CLASS_ARRAY_XIDS`] in the array,
    /// the rest in the hash): new and changed entries first, then the removals.
    pub(super) fn write_entries(&mut self, want: &HashMap<u32, XidEntry>) -> Result<()> {
        let in_array = |xid: u32| xid < CLASS_ARRAY_XIDS;
        let changed: Vec<(u32, XidEntry)> = want
            .iter()
            .filter(|(xid, e)| self.entries.get(xid) != Some(e))
            .map(|(x, e)| (*x, *e))
            .collect();
        let stale: Vec<u32> = self
            .entries
            .keys()
            .filter(|x| !want.contains_key(x))
            .copied()
            .collect();
        for (xid, entry) in changed {
            if in_array(xid) {
                let (map, err) = self.map_for_write(names::XID_ARRAY)?;
                let mut array: Array<&mut MapData, XidEntry> =
                    Array::try_from(map).map_err(&err)?;
                array.set(xid, entry, 0).map_err(&err)?;
            } else {
                let (map, err) = self.map_for_write(names::XID_HASH)?;
                let mut hash: BpfHashMap<&mut MapData, u32, XidEntry> =
                    BpfHashMap::try_from(map).map_err(&err)?;
                hash.insert(xid, entry, 0).map_err(&err)?;
            }
            self.entries.insert(xid, entry);
        }
        for xid in stale {
            if in_array(xid) {
                let (map, err) = self.map_for_write(names::XID_ARRAY)?;
                let mut array: Array<&mut MapData, XidEntry> =
                    Array::try_from(map).map_err(&err)?;
                array.set(xid, XidEntry::EMPTY, 0).map_err(&err)?;
            } else {
                let (map, err) = self.map_for_write(names::XID_HASH)?;
                let mut hash: BpfHashMap<&mut MapData, u32, XidEntry> =
                    BpfHashMap::try_from(map).map_err(&err)?;
                match hash.remove(&xid) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(err(e)),
                }
            }
            self.entries.remove(&xid);
        }
        Ok(())
    }

    /// The xid maps' entries as the kernel has them (a restarted agent's starting point).
    pub(super) fn read_entries(&self) -> Result<HashMap<u32, XidEntry>> {
        let name = names::XID_ARRAY;
        let mut out: HashMap<u32, XidEntry> =
            bulk::array_runs::<XidEntry>(self.map(name)?, &[(0, CLASS_ARRAY_XIDS)], 1, |_, v| v)
                .map_err(|e| self.map_err(name, e))?
                .into_iter()
                .collect();
        let name = names::XID_HASH;
        out.extend(
            bulk::hash_entries::<u32, XidEntry>(self.map(name)?, 1, |_, v| v)
                .map_err(|e| self.map_err(name, e))?,
        );
        out.retain(|_, e| *e != XidEntry::EMPTY);
        Ok(out)
    }

    /// A map to read.
    pub(super) fn map(&self, name: &'static str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| self.map_err(name, missing(name)))
    }

    /// A map to write to, and how to name its errors.
    pub(super) fn map_for_write(
        &mut self,
        name: &'static str,
    ) -> Result<(&mut Map, impl Fn(MapError) -> DatapathError + use<>)> {
        let iface = self.iface.clone();
        let err = move |source| DatapathError::Map {
            iface: iface.clone(),
            map: name,
            source,
        };
        match self.ebpf.map_mut(name) {
            Some(map) => Ok((map, err)),
            None => Err(err(missing(name))),
        }
    }

    pub(super) fn map_err(&self, map: &'static str, source: MapError) -> DatapathError {
        DatapathError::Map {
            iface: self.iface.clone(),
            map,
            source,
        }
    }
}

/// The object has no map of this name (a build mismatch).
fn missing(name: &'static str) -> MapError {
    MapError::InvalidName {
        name: name.to_owned(),
    }
}

/// The exempt filter's words for `prefixes`: the bit of every leading octet (IPv4) or leading
/// 16 bits (IPv6) some prefix covers.
pub(crate) fn exempt_filter(prefixes: &[IpNet]) -> Vec<u64> {
    let mut words = vec![0u64; EXEMPT_FILTER_WORDS as usize];
    let mut set = |(word, bit): (u32, u64)| words[word as usize] |= bit;
    for net in prefixes {
        match net.trunc() {
            IpNet::V4(n) => {
                let first = n.addr().octets()[0];
                let span = 1u16 << (8 - n.prefix_len().min(8));
                for lead in u16::from(first)..u16::from(first) + span {
                    set(exempt_filter_bit_v4(lead as u8));
                }
            }
            IpNet::V6(n) => {
                let o = n.addr().octets();
                let first = u32::from(u16::from_be_bytes([o[0], o[1]]));
                let span = 1u32 << (16 - n.prefix_len().min(16));
                for lead in first..first + span {
                    set(exempt_filter_bit_v6(lead as u16));
                }
            }
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(prefixes: &[&str]) -> usize {
        let nets: Vec<IpNet> = prefixes.iter().map(|p| p.parse().unwrap()).collect();
        exempt_filter(&nets)
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum()
    }

    fn covered_v4(prefixes: &[&str], first: u8) -> bool {
        let nets: Vec<IpNet> = prefixes.iter().map(|p| p.parse().unwrap()).collect();
        let (word, bit) = exempt_filter_bit_v4(first);
        exempt_filter(&nets)[word as usize] & bit != 0
    }

    #[test]
    fn the_filter_covers_every_leading_octet_a_prefix_can_match() {
        assert_eq!(bits(&[]), 0);
        assert_eq!(bits(&["10.1.2.0/24", "10.200.0.0/16"]), 1);
        assert!(covered_v4(&["10.1.2.0/24"], 10) && !covered_v4(&["10.1.2.0/24"], 11));
        // Shorter than the filter's 8 bits: every octet under it.
        assert_eq!(bits(&["192.0.0.0/7"]), 2);
        assert!(covered_v4(&["192.0.0.0/7"], 193) && !covered_v4(&["192.0.0.0/7"], 194));
        // Host bits past the length do not matter.
        assert!(covered_v4(&["11.7.7.7/7"], 10) && covered_v4(&["11.7.7.7/7"], 11));
        assert_eq!(bits(&["0.0.0.0/0"]), 256);
        assert_eq!(bits(&["::/0"]), 65_536);
        assert_eq!(bits(&["2001:db8::/32", "2001:db8:1::/48"]), 1);
        assert_eq!(bits(&["2000::/3"]), 8192);
        let nets: Vec<IpNet> = vec!["fd00:212:7::/64".parse().unwrap()];
        let (word, bit) = exempt_filter_bit_v6(0xfd00);
        assert_ne!(exempt_filter(&nets)[word as usize] & bit, 0);
        let (word, bit) = exempt_filter_bit_v6(0xfd01);
        assert_eq!(exempt_filter(&nets)[word as usize] & bit, 0);
    }
}
