//! The two seams through which a sync reaches the kernel: the datapath's maps and counters,
//! and the HTB tree. The daemon uses the real ones; unit tests use fakes.

use std::collections::{HashMap, HashSet};

use bwmon_common::ClassIds;

use crate::units::BitsPerSec;
use ipnet::IpNet;

use crate::{
    datapath::{Datapath, DatapathError, Snapshot},
    htb::{ClassInfo, Htb, HtbError, Installed, Op, TreeSpec},
};

/// What [`Kernel::ensure_attached`] had to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attachment {
    /// Everything was in place.
    InPlace,
    /// The classifier no longer reached the interface (re-created) and was attached again.
    Reattached,
    /// Pins were lost: the datapath was loaded again, with empty maps to fill.
    Reloaded,
}

/// The counters and maps in the kernel.
pub(crate) trait Kernel {
    /// Loads the datapath again if its pins were lost, attaches again if the interface was
    /// re-created; says which.
    ///
    /// # Errors
    /// The interface is missing, or loading or attaching fails.
    fn ensure_attached(&mut self) -> Result<Attachment, DatapathError>;
    /// All counters.
    ///
    /// # Errors
    /// A map cannot be read.
    fn snapshot(&mut self) -> Result<Snapshot, DatapathError>;
    /// xid → class ids.
    ///
    /// # Errors
    /// A map update fails.
    fn set_classes(&mut self, classes: &HashMap<u32, ClassIds>) -> Result<(), DatapathError>;
    /// Exempt prefixes.
    ///
    /// # Errors
    /// A map update fails.
    fn set_exempt(&mut self, prefixes: &[IpNet]) -> Result<(), DatapathError>;
    /// Source prefixes → xid.
    ///
    /// # Errors
    /// A map update fails.
    fn set_sources(&mut self, sources: &[(IpNet, u32)]) -> Result<(), DatapathError>;
    /// Tenant cgroup id → xid, and the levels where tenant cgroups are (a bit each).
    ///
    /// # Errors
    /// A map update fails.
    fn set_cgroups(&mut self, ids: &HashMap<u64, u32>, levels: u32) -> Result<(), DatapathError>;
    /// After a sync that read `snapshot`: counter slots for the xids that send, back from idle
    /// ones without a record (`kept`: the xids with one), an older layout folded in.
    ///
    /// # Errors
    /// A map cannot be read or written.
    fn tend_counters(
        &mut self,
        snapshot: &Snapshot,
        kept: &HashSet<u32>,
    ) -> Result<(), DatapathError>;
    /// Kernel memory of the maps, when it can be read.
    fn kernel_memory_bytes(&self) -> Option<u64>;
    /// xid → the ceiling its downloads are policed at (capped slices, operator limits).
    ///
    /// # Errors
    /// A map update fails.
    fn set_policers(&mut self, ceilings: &HashMap<u32, BitsPerSec>) -> Result<(), DatapathError>;
}

/// The HTB tree.
pub(crate) trait Tree {
    /// Installs the fixed part; says whether it was (re)created and lists the classes.
    ///
    /// # Errors
    /// A foreign root qdisc (unless `take_over`), or a kernel refusal.
    fn ensure_tree(&mut self, spec: &TreeSpec, take_over: bool) -> Result<Installed, HtbError>;
    /// Every class with rates and counters.
    ///
    /// # Errors
    /// Netlink failures.
    fn list(&mut self) -> Result<Vec<ClassInfo>, HtbError>;
    /// Carries out `ops`.
    ///
    /// # Errors
    /// A kernel refusal, naming the operation and class.
    fn apply(&mut self, ops: &[Op]) -> Result<(), HtbError>;
}

impl Kernel for Datapath {
    fn ensure_attached(&mut self) -> Result<Attachment, DatapathError> {
        if self.ensure_pinned()? {
            return Ok(Attachment::Reloaded);
        }
        Ok(match Datapath::ensure_attached(self)? {
            true => Attachment::Reattached,
            false => Attachment::InPlace,
        })
    }
    fn snapshot(&mut self) -> Result<Snapshot, DatapathError> {
        Datapath::snapshot(self)
    }
    fn set_classes(&mut self, classes: &HashMap<u32, ClassIds>) -> Result<(), DatapathError> {
        Datapath::set_classes(self, classes)
    }
    fn set_exempt(&mut self, prefixes: &[IpNet]) -> Result<(), DatapathError> {
        Datapath::set_exempt(self, prefixes)
    }
    fn set_sources(&mut self, sources: &[(IpNet, u32)]) -> Result<(), DatapathError> {
        Datapath::set_sources(self, sources)
    }
    fn set_cgroups(&mut self, ids: &HashMap<u64, u32>, levels: u32) -> Result<(), DatapathError> {
        Datapath::set_cgroups(self, ids, levels)
    }
    fn tend_counters(
        &mut self,
        snapshot: &Snapshot,
        kept: &HashSet<u32>,
    ) -> Result<(), DatapathError> {
        Datapath::tend_counters(self, snapshot, kept)
    }
    fn kernel_memory_bytes(&self) -> Option<u64> {
        Datapath::kernel_memory_bytes(self).ok()
    }
    fn set_policers(&mut self, ceilings: &HashMap<u32, BitsPerSec>) -> Result<(), DatapathError> {
        Datapath::set_policers(self, ceilings)
    }
}

impl Tree for Htb {
    fn ensure_tree(&mut self, spec: &TreeSpec, take_over: bool) -> Result<Installed, HtbError> {
        Htb::ensure_tree(self, spec, take_over)
    }
    fn list(&mut self) -> Result<Vec<ClassInfo>, HtbError> {
        Htb::list(self)
    }
    fn apply(&mut self, ops: &[Op]) -> Result<(), HtbError> {
        Htb::apply(self, ops)
    }
}
