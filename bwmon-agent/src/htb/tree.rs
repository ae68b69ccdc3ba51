//! bwmon's HTB tree as data: class ids, the fixed classes, leaves, the changes to make, and
//! the classes that belong to nobody. Pure: no netlink here (that is [`super::Htb`]).

use std::{
    collections::{HashMap, HashSet},
    fmt,
};

use bwmon_common::{DEFAULT_EXEMPT_MINOR, DEFAULT_GENERAL_MINOR, HTB_MAJOR, tc_handle};
use netlink_packet_route::tc::TcHandle;

use super::ClassParams;
use crate::{
    class::{PerClass, TrafficClass},
    units::{BWMIN, BitsPerSec},
};

/// A class's minor under bwmon's qdisc `1:`; the class is `1:<minor>` (hex, as tc writes it).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Minor(pub u16);

/// The qdisc's major, `1:`.
pub(crate) const MAJOR: u16 = HTB_MAJOR as u16;
/// `1:1`, the class under the root that carries everything.
pub const TOP: Minor = Minor(0x1);
/// `1:10`, the parent of general leaves.
pub const GENERAL_PARENT: Minor = Minor(0x10);
/// `1:20`, the parent of exempt leaves.
pub const EXEMPT_PARENT: Minor = Minor(0x20);
/// The default leaves (xids without a slice): `1:2` general, `1:3` exempt.
pub(crate) const DEFAULT_LEAVES: PerClass<Minor> = PerClass {
    general: Minor(DEFAULT_GENERAL_MINOR as u16),
    exempt: Minor(DEFAULT_EXEMPT_MINOR as u16),
};
/// The shares of each default leaf (xids without a slice).
pub const DEFAULT_LEAF_SHARES: u32 = 1;
/// The first minor a slice's leaf may have.
pub(crate) const FIRST_LEAF_MINOR: Minor = Minor(0x100);
/// The quantum of one share, in bytes: what a leaf may send per round of HTB's deficit round
/// robin when it borrows. It must hold the largest packet HTB dequeues — a 64 KiB GSO packet
/// with its per-segment headers, about 69 KB — or each round sends one packet per leaf
/// whatever its quantum, and shares divide nothing (bwlimit's 1,600 bytes per share gave a
/// 1 : 1 split for shares 1 : 3; 72 KiB gives 1 : 2.95, see the README).
pub const QUANTUM_PER_SHARE: u32 = 72 * 1024;
/// The largest quantum: the kernel keeps a class's quantum as a signed 32-bit number.
pub(crate) const MAX_QUANTUM: u32 = i32::MAX as u32;

impl Minor {
    /// The kernel's handle of the class.
    pub(crate) fn handle(self) -> TcHandle {
        TcHandle {
            major: MAJOR,
            minor: self.0,
        }
    }

    /// The class id as `skb->priority` carries it (`major << 16 | minor`).
    pub(crate) fn class_id(self) -> u32 {
        tc_handle(HTB_MAJOR, u32::from(self.0))
    }

    /// The parent of a traffic class's leaves.
    pub(crate) fn parent_of(class: TrafficClass) -> Minor {
        match class {
            TrafficClass::General => GENERAL_PARENT,
            TrafficClass::Exempt => EXEMPT_PARENT,
        }
    }
}

impl fmt::Display for Minor {
    /// As tc writes the class: "1:1a3".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MAJOR:x}:{:x}", self.0)
    }
}

/// The class ids of a slice's leaves, as the classifier's xid → class map holds them; a class
/// without a leaf of its own goes to the default leaf.
pub(crate) fn class_ids(leaves: PerClass<Option<Minor>>) -> bwmon_common::ClassIds {
    let ids = leaves.map(|class, m| m.unwrap_or(*DEFAULT_LEAVES.of(class)).class_id());
    bwmon_common::ClassIds {
        general: ids.general,
        exempt: ids.exempt,
    }
}

impl ClassParams {
    /// A class's parameters with a quantum of `shares` times [`QUANTUM_PER_SHARE`] (at most
    /// [`MAX_QUANTUM`]): leaves that contend for what they borrow divide it in proportion to
    /// their shares, whatever their guaranteed rates.
    pub(crate) fn with_shares(rate: BitsPerSec, ceil: BitsPerSec, shares: u32) -> Self {
        ClassParams {
            rate,
            ceil,
            quantum: shares.saturating_mul(QUANTUM_PER_SHARE).min(MAX_QUANTUM),
        }
    }
}

/// Rates of the tree's fixed classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeSpec {
    /// Ceiling of all general traffic (`node_cap`).
    pub node_cap: BitsPerSec,
    /// Ceiling of all exempt traffic, and the rate of `1:1` (`exempt_max`).
    pub exempt_max: BitsPerSec,
}

/// A class to have in the tree: its minor, its parent's and its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedClass {
    /// The class.
    pub(crate) minor: Minor,
    /// Its parent; `None` directly under the qdisc.
    pub(crate) parent: Option<Minor>,
    /// Rate, ceil and quantum.
    pub(crate) params: ClassParams,
}

/// The classes with children: only leaves use a quantum.
const INNER: [Minor; 3] = [TOP, GENERAL_PARENT, EXEMPT_PARENT];

impl FixedClass {
    /// Whether the kernel's class `c` already is this one (at the kernel's precision). The
    /// quantum of a class with children is not compared: the kernel keeps the one it had when
    /// it was created (before its first child) and takes no other.
    pub fn is(&self, c: &ClassInfo) -> bool {
        let quantum = if INNER.contains(&self.minor) {
            c.params.quantum
        } else {
            self.params.quantum
        };
        c.minor == self.minor
            && c.parent == self.parent
            && c.params.same_in_kernel(&ClassParams {
                quantum,
                ..self.params
            })
    }
}

impl TreeSpec {
    /// The ceiling of each traffic class's parent.
    pub(crate) fn ceilings(&self) -> PerClass<BitsPerSec> {
        PerClass {
            general: self.node_cap,
            exempt: self.exempt_max,
        }
    }

    /// The fixed classes, parents first: `1:1`, `1:10`, `1:20`, then the default leaves.
    pub fn fixed_classes(&self) -> Vec<FixedClass> {
        let top = self.exempt_max.max(self.node_cap);
        let mut out = vec![FixedClass {
            minor: TOP,
            parent: None,
            params: ClassParams::with_shares(top, top, 1),
        }];
        for (class, ceil) in self.ceilings().iter() {
            out.push(FixedClass {
                minor: Minor::parent_of(class),
                parent: Some(TOP),
                params: ClassParams::with_shares(BWMIN, *ceil, 1),
            });
        }
        out.extend(self.default_leaves().map(|l| FixedClass {
            minor: l.minor,
            parent: Some(Minor::parent_of(l.class)),
            params: l.params,
        }));
        out
    }

    /// The default leaves (xids without a slice): min rate, full ceiling.
    pub fn default_leaves(&self) -> [Leaf; 2] {
        let ceilings = self.ceilings();
        TrafficClass::ALL.map(|class| Leaf {
            minor: *DEFAULT_LEAVES.of(class),
            class,
            params: ClassParams::with_shares(BWMIN, *ceilings.of(class), DEFAULT_LEAF_SHARES),
        })
    }
}

/// One leaf class: a slice's (or the default's) traffic of one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Its minor under `1:`.
    pub minor: Minor,
    /// General (under `1:10`) or exempt (under `1:20`).
    pub class: TrafficClass,
    /// Rate, ceil and quantum.
    pub params: ClassParams,
}

/// A change to the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the leaf, or change it in place (counters and queue kept).
    Upsert(Leaf),
    /// Delete the class with this minor.
    Remove(Minor),
}

/// A class as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    /// Minor under `1:`.
    pub minor: Minor,
    /// Its parent; `None` for a class directly under the qdisc.
    pub parent: Option<Minor>,
    /// Rate, ceil, quantum.
    pub params: ClassParams,
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent (GSO segments, as HTB counts them).
    pub(crate) packets: u64,
    /// Packets dropped.
    pub(crate) drops: u64,
    /// Packets queued now.
    pub(crate) qlen: u32,
}

impl ClassInfo {
    /// A class as the kernel lists it right after it was created: no counters yet (the unit
    /// tests' fake tree).
    #[cfg(test)]
    pub(crate) fn created(minor: Minor, parent: Option<Minor>, params: ClassParams) -> ClassInfo {
        ClassInfo {
            minor,
            parent,
            params,
            bytes: 0,
            packets: 0,
            drops: 0,
            qlen: 0,
        }
    }

    /// The class `leaf` creates (the unit tests' fake tree).
    #[cfg(test)]
    pub(crate) fn of_leaf(leaf: &Leaf) -> ClassInfo {
        ClassInfo::created(leaf.minor, Some(Minor::parent_of(leaf.class)), leaf.params)
    }

    /// Whether the kernel's class already is `leaf` (at the kernel's precision).
    pub(crate) fn is(&self, leaf: &Leaf) -> bool {
        self.minor == leaf.minor
            && self.parent == Some(Minor::parent_of(leaf.class))
            && self.params.same_in_kernel(&leaf.params)
    }
}

/// The leaves in `listed` that are in bwmon's tree but in neither `wanted` nor the fixed
/// classes: classes that belong to no slice, to be removed.
pub(crate) fn orphans(listed: &[ClassInfo], wanted: &HashSet<Minor>) -> Vec<Minor> {
    let default_leaves = [DEFAULT_LEAVES.general, DEFAULT_LEAVES.exempt];
    let mut out: Vec<Minor> = listed
        .iter()
        .map(|c| c.minor)
        .filter(|m| !INNER.contains(m) && !default_leaves.contains(m) && !wanted.contains(m))
        .collect();
    out.sort_unstable();
    out
}

/// The changes that make the tree's leaves `wanted`, given the classes it has (`listed`): each
/// leaf that is missing or differs (at the kernel's precision) is upserted, in `wanted`'s order;
/// then the [`orphans`] are removed.
pub(crate) fn diff_leaves(listed: &[ClassInfo], wanted: &[Leaf]) -> Vec<Op> {
    let by_minor: HashMap<Minor, &ClassInfo> = listed.iter().map(|c| (c.minor, c)).collect();
    let mut ops: Vec<Op> = wanted
        .iter()
        .filter(|leaf| !by_minor.get(&leaf.minor).is_some_and(|c| c.is(leaf)))
        .map(|leaf| Op::Upsert(*leaf))
        .collect();
    let minors: HashSet<Minor> = wanted.iter().map(|l| l.minor).collect();
    ops.extend(orphans(listed, &minors).into_iter().map(Op::Remove));
    ops
}

/// How much a new leaf enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Urgency {
    /// Its slice is capped (by the policy, or an operator's limit).
    Capped,
    /// Its ceiling is below its class's cap (a slice's own max rate).
    OwnCeiling,
}

/// `ops` in the order enforcement needs them, stable within each rank: changes to leaves the
/// tree has (a lowered ceiling takes effect at once, and a change in place is cheap), new
/// leaves of capped slices, new leaves with a ceiling of their own, removals, then the other
/// new leaves (a slice that merely sends shares the default leaf until its own comes, counted
/// all the same). Creating a class costs more the more classes there are, so a tree of 20,000
/// leaves takes many syncs to build: the leaves that enforce a ceiling come first.
pub(crate) fn enforcement_first(
    mut ops: Vec<Op>,
    listed: &[ClassInfo],
    urgent: &HashMap<Minor, Urgency>,
) -> Vec<Op> {
    let present: HashSet<Minor> = listed.iter().map(|c| c.minor).collect();
    ops.sort_by_key(|op| match op {
        Op::Upsert(l) if present.contains(&l.minor) => 0,
        Op::Upsert(l) => match urgent.get(&l.minor) {
            Some(Urgency::Capped) => 1,
            Some(Urgency::OwnCeiling) => 2,
            None => 4,
        },
        Op::Remove(_) => 3,
    });
    ops
}

/// The outcome of [`super::Htb::ensure_tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The root qdisc was (re)created: every slice's leaves must be added again.
    pub created: bool,
    /// The tree's classes after the call, with rates and counters.
    pub classes: Vec<ClassInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(minor: u16, parent: u16) -> ClassInfo {
        ClassInfo {
            minor: Minor(minor),
            parent: (parent != 0).then_some(Minor(parent)),
            params: ClassParams::with_shares(BWMIN, BWMIN, 1),
            bytes: 0,
            packets: 0,
            drops: 0,
            qlen: 0,
        }
    }

    #[test]
    fn orphans_are_leaves_nobody_wants_and_never_the_fixed_classes() {
        let listed: Vec<ClassInfo> = [(1, 0), (0x10, 1), (0x20, 1), (2, 0x10), (3, 0x20)]
            .into_iter()
            .chain([(0x100, 0x10), (0x101, 0x20), (0x1ff, 0x10)])
            .map(|(m, p)| info(m, p))
            .collect();
        let wanted = [Minor(0x100), Minor(0x101)].into_iter().collect();
        assert_eq!(orphans(&listed, &wanted), vec![Minor(0x1ff)]);
        assert_eq!(
            orphans(&listed, &Default::default()),
            vec![Minor(0x100), Minor(0x101), Minor(0x1ff)]
        );
    }

    fn leaf(minor: u16, ceil: u64) -> Leaf {
        Leaf {
            minor: Minor(minor),
            class: TrafficClass::General,
            params: ClassParams::with_shares(BWMIN, BitsPerSec(ceil), 1),
        }
    }

    /// The fixed classes, and `leaves` as the kernel lists them.
    fn listing(leaves: &[Leaf]) -> Vec<ClassInfo> {
        let spec = TreeSpec {
            node_cap: BitsPerSec(100_000_000),
            exempt_max: BitsPerSec(1_000_000_000),
        };
        let fixed = spec.fixed_classes().into_iter();
        fixed
            .map(|f| ClassInfo::created(f.minor, f.parent, f.params))
            .chain(leaves.iter().map(ClassInfo::of_leaf))
            .collect()
    }

    #[test]
    fn a_tree_that_has_every_leaf_as_wanted_needs_no_change() {
        let wanted = [leaf(0x100, 1_000_000), leaf(0x101, 2_000_000)];
        assert_eq!(diff_leaves(&listing(&wanted), &wanted), []);
        assert_eq!(
            diff_leaves(&listing(&[]), &[]),
            [],
            "the fixed classes stay"
        );
    }

    #[test]
    fn missing_leaves_are_added_and_changed_ones_changed_in_place() {
        let listed = listing(&[leaf(0x100, 1_000_000)]);
        let wanted = [leaf(0x101, 5_000), leaf(0x100, 8_000)];
        assert_eq!(
            diff_leaves(&listed, &wanted),
            [Op::Upsert(wanted[0]), Op::Upsert(wanted[1])]
        );
    }

    #[test]
    fn a_leaf_under_the_wrong_parent_is_upserted() {
        let mut exempt = leaf(0x100, 1_000_000);
        exempt.class = TrafficClass::Exempt;
        let listed = listing(&[leaf(0x100, 1_000_000)]);
        assert_eq!(diff_leaves(&listed, &[exempt]), [Op::Upsert(exempt)]);
    }

    #[test]
    fn leaves_nobody_wants_are_removed_after_the_upserts() {
        let listed = listing(&[leaf(0x1ff, 1000), leaf(0x100, 1000)]);
        let wanted = [leaf(0x102, 1000)];
        assert_eq!(
            diff_leaves(&listed, &wanted),
            [
                Op::Upsert(wanted[0]),
                Op::Remove(Minor(0x100)),
                Op::Remove(Minor(0x1ff))
            ]
        );
    }

    #[test]
    fn changes_then_capped_then_own_ceilings_then_removals_then_the_rest() {
        let listed = listing(&[leaf(0x100, 5000), leaf(0x1ff, 5000)]);
        let ops = vec![
            Op::Upsert(leaf(0x102, 1000)),
            Op::Upsert(leaf(0x104, 1000)),
            Op::Upsert(leaf(0x103, 1000)),
            Op::Remove(Minor(0x1ff)),
            Op::Upsert(leaf(0x100, 1000)),
            Op::Upsert(leaf(0x101, 1000)),
        ];
        let urgent = [
            (Minor(0x104), Urgency::OwnCeiling),
            (Minor(0x103), Urgency::Capped),
            (Minor(0x101), Urgency::Capped),
        ]
        .into_iter()
        .collect();
        let minors: Vec<(bool, u16)> = enforcement_first(ops, &listed, &urgent)
            .iter()
            .map(|op| match op {
                Op::Upsert(l) => (true, l.minor.0),
                Op::Remove(m) => (false, m.0),
            })
            .collect();
        assert_eq!(
            minors,
            [
                (true, 0x100),
                (true, 0x103),
                (true, 0x101),
                (true, 0x104),
                (false, 0x1ff),
                (true, 0x102)
            ]
        );
    }

    #[test]
    fn class_names_are_written_like_tc() {
        assert_eq!(Minor(0x1a3).to_string(), "1:1a3");
        assert_eq!(Minor(0x10).to_string(), "1:10");
    }

    #[test]
    fn quanta_follow_the_share_alone() {
        let q = |bits: u64, shares: u32| {
            ClassParams::with_shares(BitsPerSec(bits), BitsPerSec(bits), shares).quantum
        };
        assert_eq!(q(1000, 1), QUANTUM_PER_SHARE);
        assert_eq!(q(1000, 5), 5 * QUANTUM_PER_SHARE, "root's five shares");
        assert_eq!(
            q(8_000_000, 3),
            q(1000, 3),
            "a guaranteed rate does not add to the share"
        );
        assert!(
            u64::from(QUANTUM_PER_SHARE) > 65_536 + 44 * 86,
            "a GSO packet with its headers fits one share"
        );
        assert_eq!(q(1000, u32::MAX), MAX_QUANTUM);
    }

    #[test]
    fn an_inner_class_is_compared_without_its_quantum() {
        let spec = TreeSpec {
            node_cap: BitsPerSec(100_000_000),
            exempt_max: BitsPerSec(1_000_000_000),
        };
        for f in spec.fixed_classes() {
            let mut c = ClassInfo::created(f.minor, f.parent, f.params);
            assert!(f.is(&c), "{f:?}");
            c.params.quantum = 200_000;
            let inner = [TOP, GENERAL_PARENT, EXEMPT_PARENT].contains(&f.minor);
            assert_eq!(f.is(&c), inner, "{f:?}");
            c.params.ceil = BitsPerSec(1);
            assert!(!f.is(&c), "{f:?}");
        }
    }

    #[test]
    fn class_ids_are_major_one() {
        assert_eq!(Minor(0x1a3).class_id(), 0x1_01a3);
    }

    #[test]
    fn the_fixed_classes_are_the_documented_tree() {
        let spec = TreeSpec {
            node_cap: BitsPerSec(100_000_000),
            exempt_max: BitsPerSec(1_000_000_000),
        };
        let fixed = spec.fixed_classes();
        let shape: Vec<(Minor, Option<Minor>, BitsPerSec)> = fixed
            .iter()
            .map(|f| (f.minor, f.parent, f.params.ceil))
            .collect();
        assert_eq!(
            shape,
            [
                (TOP, None, spec.exempt_max),
                (GENERAL_PARENT, Some(TOP), spec.node_cap),
                (EXEMPT_PARENT, Some(TOP), spec.exempt_max),
                (Minor(2), Some(GENERAL_PARENT), spec.node_cap),
                (Minor(3), Some(EXEMPT_PARENT), spec.exempt_max),
            ]
        );
        assert!(fixed.iter().all(|f| f.params.quantum == QUANTUM_PER_SHARE));
    }
}
