//! A live slice's leaves and steering: classes on demand (a class gets its leaf when it has
//! sent in this period or its limits differ from the default leaf's, and keeps it until a whole
//! period passes idle), each leaf's parameters, and the tree's changes.

use super::{Draft, Event};
use crate::{
    class::{PerClass, TrafficClass},
    datapath::Snapshot,
    htb::{
        ClassInfo, ClassParams, Leaf, Minor, Op, TreeSpec,
        minors::Minors,
        tree::{self, Urgency},
    },
    policy::{Limits, shares::Claim},
    state::SliceState,
    units::{BWMIN, BitsPerSec},
};

/// Whether a slice's class needs a leaf of its own even without traffic: its limits differ
/// from what the default leaf gives (guaranteed rate, ceiling, share).
pub(crate) fn differs_from_default(limits: &Limits, tree: &TreeSpec) -> PerClass<bool> {
    PerClass::from_fn(|c| {
        let l = limits.of(c);
        l.min_rate != BWMIN || l.max_rate != *tree.ceilings().of(c) || l.share != 1
    })
}

/// Gives each class of `s` that `needs` a leaf and has none a minor from `minors` (its drops
/// counted from what that leaf dropped so far). Returns how many classes found no minor left.
pub(super) fn grow(
    s: &mut SliceState,
    needs: PerClass<bool>,
    minors: &mut Minors,
    snap: &Snapshot,
) -> usize {
    let mut short = 0;
    for class in TrafficClass::ALL {
        if !needs.of(class) || s.minors.of(class).is_some() {
            continue;
        }
        match minors.allocate() {
            Some(m) => {
                *s.minors.of_mut(class) = Some(m);
                *s.drop_base.of_mut(class) = snap.dropped_at(m).bytes;
            }
            None => short += 1,
        }
    }
    short
}

/// What each class of `s` claims of its cap under `limits`: its min rate, the ceiling its leaf
/// has (a dry run accounts and reports the lowered ceiling, and applies none) and its share.
pub(super) fn claims(s: &SliceState, limits: &Limits, dry_run: bool) -> PerClass<Claim> {
    PerClass::from_fn(|class| {
        let lim = limits.of(class);
        Claim {
            min: lim.min_rate,
            ceil: if dry_run {
                lim.max_rate
            } else {
                s.record.classes.of(class).ceil
            },
            share: lim.share,
        }
    })
}

/// How much each leaf of `s` enforces ([`tree::enforcement_first`] creates them in that
/// order): capped when its class is capped by the policy or held below its own max rate by
/// an operator's limit (`limits` in force against the `base` ones), a ceiling of its own when
/// it claims less than its class's cap.
pub(super) fn urgency<'a>(
    s: &'a SliceState,
    limits: &'a Limits,
    base: &'a Limits,
    claims: PerClass<Claim>,
    caps: PerClass<BitsPerSec>,
) -> impl Iterator<Item = (Minor, Urgency)> + 'a {
    s.minors.iter().filter_map(move |(class, m)| {
        let capped =
            s.record.capped(class, limits) || limits.of(class).max_rate < base.of(class).max_rate;
        let urgency = if capped {
            Urgency::Capped
        } else if claims.of(class).ceil < *caps.of(class) {
            Urgency::OwnCeiling
        } else {
            return None;
        };
        m.map(|m| (m, urgency))
    })
}

/// The leaves of `s`, with the parameters of its `claims`.
pub(super) fn of_slice(s: &SliceState, claims: PerClass<Claim>) -> impl Iterator<Item = Leaf> + '_ {
    s.minors.iter().filter_map(move |(class, m)| {
        let c = claims.of(class);
        m.map(|minor| Leaf {
            minor,
            class,
            params: ClassParams::with_shares(c.min, c.ceil, c.share),
        })
    })
}

impl Draft<'_> {
    /// The tree's changes for `leaves` ([`tree::diff_leaves`]); each orphan removed is an event.
    pub(super) fn tree_ops(&mut self, listed: &[ClassInfo], leaves: &[Leaf]) -> Vec<Op> {
        let ops = tree::diff_leaves(listed, leaves);
        self.events.extend(ops.iter().filter_map(|op| match op {
            Op::Remove(m) => Some(Event::Orphan(*m)),
            Op::Upsert(_) => None,
        }));
        ops
    }
}
