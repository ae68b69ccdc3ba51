//! Leaf minors for slices: allocated, not derived from the xid (so any 32-bit xid fits), and
//! remembered by the caller's state so a slice keeps its classes across restarts.

use std::collections::BTreeSet;

use super::tree::{FIRST_LEAF_MINOR, Minor};

const FIRST: u16 = FIRST_LEAF_MINOR.0;

/// The minors in use, and which are free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Minors {
    /// Lowest minor never handed out.
    next: u32,
    /// Minors below `next` that are free again.
    freed: BTreeSet<u16>,
}

impl Default for Minors {
    fn default() -> Self {
        Self::with_assigned([])
    }
}

impl Minors {
    /// An allocator that knows `assigned` minors are taken.
    pub(crate) fn with_assigned(assigned: impl IntoIterator<Item = Minor>) -> Self {
        let used: BTreeSet<u16> = assigned
            .into_iter()
            .map(|m| m.0)
            .filter(|m| *m >= FIRST)
            .collect();
        let next = used
            .last()
            .map(|m| u32::from(*m) + 1)
            .unwrap_or(u32::from(FIRST));
        let freed = (FIRST..next.min(0x1_0000) as u16)
            .filter(|m| !used.contains(m))
            .collect();
        Self { next, freed }
    }

    /// The lowest free minor, or `None` when all 65,280 are taken.
    pub(crate) fn allocate(&mut self) -> Option<Minor> {
        if let Some(m) = self.freed.pop_first() {
            return Some(Minor(m));
        }
        if self.next > 0xffff {
            return None;
        }
        let m = self.next as u16;
        self.next += 1;
        Some(Minor(m))
    }

    /// Gives `minor` back.
    pub(crate) fn release(&mut self, minor: Minor) {
        if minor.0 >= FIRST && u32::from(minor.0) < self.next {
            self.freed.insert(minor.0);
        }
    }

    /// How many more minors can be handed out.
    pub(crate) fn available(&self) -> usize {
        self.freed.len() + (0x1_0000 - self.next.min(0x1_0000)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minors(range: impl IntoIterator<Item = u16>) -> impl Iterator<Item = Minor> {
        range.into_iter().map(Minor)
    }

    #[test]
    fn thirty_thousand_slices_fit_with_two_leaves_each() {
        let mut m = Minors::default();
        let mut seen = BTreeSet::new();
        for _ in 0..30_000 * 2 {
            let minor = m.allocate().expect("room for 30,000 slices");
            assert!(minor >= FIRST_LEAF_MINOR);
            assert!(seen.insert(minor), "minor {minor} handed out twice");
        }
        assert_eq!(m.available(), 65_280 - 60_000);
    }

    #[test]
    fn exhaustion_is_reported_not_wrapped() {
        let mut m = Minors::with_assigned(minors(FIRST..=0xffff));
        assert_eq!(m.allocate(), None);
        m.release(Minor(0x1234));
        assert_eq!(m.allocate(), Some(Minor(0x1234)));
        assert_eq!(m.allocate(), None);
    }

    #[test]
    fn restart_keeps_assignments_and_reuses_gaps() {
        let mut m = Minors::with_assigned(minors([0x100, 0x101, 0x105, 0x2, 0x10]));
        let got: Vec<u16> = (0..5).map(|_| m.allocate().unwrap().0).collect();
        assert_eq!(got, vec![0x102, 0x103, 0x104, 0x106, 0x107]);
        m.release(Minor(0x100));
        m.release(Minor(0x5)); // not a leaf minor: ignored
        assert_eq!(m.allocate(), Some(Minor(0x100)));
    }
}
