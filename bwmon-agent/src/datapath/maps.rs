//! Writing the maps the agent owns: xid → class ids, the exempt-destination tries and the
//! source-prefix tries. Every change is make-before-break: new entries are written before
//! stale ones are removed, so a packet never misses its class or prefix during the change.

use std::{collections::HashMap, io};

use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use bwmon_common::{ClassIds, names};
use ipnet::IpNet;

use super::{Datapath, DatapathError, error::Result};

impl Datapath {
    /// Makes the exempt-destination tries hold exactly `prefixes` (IPv4 and IPv6).
    ///
    /// # Errors
    /// A failed map update (e.g. more prefixes than the trie holds), naming the map.
    pub fn set_exempt(&mut self, prefixes: &[IpNet]) -> Result<()> {
        let values: Vec<(IpNet, u8)> = prefixes.iter().map(|p| (*p, 1u8)).collect();
        self.replace_trie(names::EXEMPT_V4, names::EXEMPT_V6, &values)
    }

    /// Makes the source-prefix tries hold exactly `sources` (prefix → xid), for
    /// `xid_source = "source"`.
    ///
    /// # Errors
    /// A failed map update, naming the map.
    pub fn set_sources(&mut self, sources: &[(IpNet, u32)]) -> Result<()> {
        self.replace_trie(names::SOURCE_V4, names::SOURCE_V6, sources)
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

    /// Makes the xid → class map equal to `classes`: entries are written before stale ones are
    /// removed, so a packet never misses its class during the change.
    ///
    /// # Errors
    /// A failed map update, naming the map.
    pub fn set_classes(&mut self, classes: &HashMap<u32, ClassIds>) -> Result<()> {
        let (map, err) = self.map_for_write(names::XID_CLASS)?;
        let mut map: BpfHashMap<&mut MapData, u32, ClassIds> =
            BpfHashMap::try_from(map).map_err(&err)?;
        for (xid, ids) in classes {
            if map.get(xid, 0).ok().as_ref() != Some(ids) {
                map.insert(xid, ids, 0).map_err(&err)?;
            }
        }
        let stale: Vec<u32> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !classes.contains_key(k))
            .collect();
        for xid in stale {
            map.remove(&xid).map_err(&err)?;
        }
        Ok(())
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

    /// A failed raw batch lookup, as a map error.
    pub(super) fn batch_err(&self, map: &'static str, source: io::Error) -> DatapathError {
        self.map_err(
            map,
            MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error: source,
            }),
        )
    }
}

/// The object has no map of this name (a build mismatch).
fn missing(name: &'static str) -> MapError {
    MapError::InvalidName {
        name: name.to_owned(),
    }
}
