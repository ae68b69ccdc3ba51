//! The HTB tree in the sync: its fixed part installed, its classes listed, and a plan's
//! operations carried out in batches within the sync's time for tree work.

use tracing::info;

use super::{Kernel, Syncer, TREE_BATCH, TREE_BUDGET, Tree};
use crate::{
    error_kind::ErrorKind,
    htb::{ClassInfo, TreeSpec},
};

impl<K: Kernel, T: Tree> Syncer<K, T> {
    /// Installs the HTB tree's fixed part (at start: a foreign root qdisc is an error then).
    ///
    /// # Errors
    /// The tree cannot be installed.
    pub(crate) fn install_tree(&mut self) -> Result<bool, crate::htb::HtbError> {
        let spec = self.tree_spec();
        let created = self
            .tree
            .ensure_tree(&spec, self.config.take_over_root_qdisc)?
            .created;
        self.tree_created |= created;
        Ok(created)
    }

    /// The tree's fixed part for this config.
    pub(crate) fn tree_spec(&self) -> TreeSpec {
        self.config.tree_spec()
    }

    pub(super) fn list_tree(&mut self) -> Vec<ClassInfo> {
        match self.tree.list() {
            Ok(l) => l,
            Err(e) => {
                self.error(ErrorKind::Htb, "listing classes", &e);
                Vec::new()
            }
        }
    }

    /// Carries out `ops` (enforcement first, see [`crate::htb::tree::enforcement_first`]) in
    /// batches of [`TREE_BATCH`], until they are done, the sync's [`TREE_BUDGET`] is spent, or
    /// the daemon is stopping; returns how many leaves are left to create or change (the next
    /// syncs plan them again). A slice steered to a leaf not created yet is sent to the
    /// default leaf by HTB meanwhile, and counted all the same.
    pub(super) fn apply_tree(
        &mut self,
        ops: &[crate::htb::Op],
        started: std::time::Instant,
    ) -> u64 {
        let mut done = 0;
        let mut first_error = None;
        for batch in ops.chunks(TREE_BATCH) {
            if done > 0 && (self.is_stopping() || started.elapsed() >= TREE_BUDGET) {
                break;
            }
            if let Err(e) = self.tree.apply(batch) {
                first_error.get_or_insert(e);
            }
            done += batch.len();
        }
        if let Some(e) = first_error {
            self.error(ErrorKind::Htb, "applying class changes", &e);
        }
        let pending = ops[done..]
            .iter()
            .filter(|op| matches!(op, crate::htb::Op::Upsert(_)))
            .count() as u64;
        if pending > 0 {
            info!(
                applied = done,
                pending, "HTB: leaves left for the next syncs (capped slices' first)"
            );
        }
        pending
    }
}
