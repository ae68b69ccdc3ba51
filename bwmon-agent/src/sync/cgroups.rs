//! Tenant cgroups in the sync: the patterns and the hierarchy it scans, the slices the scan
//! finds, and the cgroup id → xid map the classifier reads.

use std::collections::{HashMap, HashSet};

use bwmon_common::ROOT_XID;

use super::{Kernel, Syncer, Tree};
use crate::{
    cgroup::{self, CgroupPath, Hierarchy, Pattern, Tenants},
    config::{patterns::PatternSpec, slices::SliceSpec},
};

impl<K: Kernel, T: Tree> Syncer<K, T> {
    /// Replaces the `[[cgroups]]` patterns (a good new slices file).
    pub(crate) fn set_patterns(&mut self, patterns: Vec<PatternSpec>) {
        self.patterns = patterns;
    }

    /// Scans `hierarchy` for tenant cgroups at every sync from now on.
    pub(crate) fn set_hierarchy(&mut self, hierarchy: Option<Hierarchy>) {
        self.hierarchy = hierarchy;
    }

    /// The slices in force that are cgroups: the file's and those patterns found, with their
    /// paths.
    pub(crate) fn cgroup_slices(&self) -> impl Iterator<Item = (&SliceSpec, &CgroupPath)> {
        (self.slices.iter().chain(&self.found)).filter_map(|s| Some((s, s.cgroup.as_ref()?)))
    }

    /// Reads the hierarchy: the cgroups the slices name and those the patterns match become
    /// this sync's pattern slices and the map the classifier reads. A host without cgroup
    /// slices is not scanned and its map stays empty (the classifier then reads no cgroup).
    pub(super) fn scan_cgroups(&mut self) {
        let named: Vec<&CgroupPath> = self
            .slices
            .iter()
            .filter_map(|s| s.cgroup.as_ref())
            .collect();
        let tenants = match &self.hierarchy {
            Some(h) if !named.is_empty() || !self.patterns.is_empty() => {
                let patterns: Vec<&Pattern> = self.patterns.iter().map(|p| &p.pattern).collect();
                cgroup::scan(h, &named, &patterns)
            }
            _ => Tenants::default(),
        };
        let names: HashSet<&str> = self.slices.iter().map(|s| s.name.as_str()).collect();
        let taken: HashSet<u32> = self
            .slices
            .iter()
            .map(|s| s.xid)
            .chain([ROOT_XID])
            .collect();
        let paths: Vec<CgroupPath> = tenants.found.iter().map(|(_, p)| p.clone()).collect();
        let xids = cgroup::path::assign_xids(&paths, &taken);
        let mut found_names: HashSet<String> = HashSet::new();
        self.found = tenants
            .found
            .iter()
            .zip(xids)
            .filter_map(|((i, path), xid)| {
                let name = cgroup::path::slice_name(path);
                // A name a slice of the file has (or an earlier match) stays that slice's.
                if names.contains(name.as_str()) || !found_names.insert(name.clone()) {
                    return None;
                }
                Some(SliceSpec {
                    name,
                    xid,
                    sources: Vec::new(),
                    count: self.patterns[*i].count,
                    attrs: self.patterns[*i].attrs,
                    cgroup: Some(path.clone()),
                })
            })
            .collect();
        let map: HashMap<u64, u32> = self
            .cgroup_slices()
            .filter_map(|(s, path)| Some((*tenants.ids.get(path)?, s.xid)))
            .collect();
        self.cgroup_map = Some((map, tenants.levels()));
    }
}
