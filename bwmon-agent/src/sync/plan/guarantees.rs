//! What each slice's classes are guaranteed now: each class's cap divided among the leaves
//! that sent in the last interval ([`shares::divide`]: min rates first, the rest by shares, up
//! to the ceilings), which is what HTB gives them while they all send; an idle class is
//! guaranteed its min rate. Shown in the report and by `bwmon slice show`; the tree itself is
//! not touched (the quanta divide the cap, see [`crate::htb::tree::QUANTUM_PER_SHARE`]).

use std::collections::HashMap;

use crate::{
    class::{PerClass, TrafficClass},
    policy::shares::{self, Claim},
    serve::status::SliceStatus,
    units::BitsPerSec,
};

/// Sets each row's guaranteed rates from the `claims` of the rows' xids (a row without one
/// keeps what its line says), dividing each class's cap among the rows that sent.
pub(super) fn guarantee(
    rows: &mut [SliceStatus],
    claims: &HashMap<u32, PerClass<Claim>>,
    caps: PerClass<BitsPerSec>,
) {
    let mut guaranteed: Vec<Option<PerClass<BitsPerSec>>> = rows
        .iter()
        .map(|r| claims.get(&r.xid).map(|c| c.map(|_, c| c.min)))
        .collect();
    for class in TrafficClass::ALL {
        let (sending, claims): (Vec<usize>, Vec<Claim>) = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.class(class).rate.0 > 0)
            .filter_map(|(i, r)| claims.get(&r.xid).map(|c| (i, *c.of(class))))
            .unzip();
        let parts = shares::divide(*caps.of(class), &claims);
        for (i, part) in sending.into_iter().zip(parts) {
            if let Some(g) = guaranteed[i].as_mut() {
                *g.of_mut(class) = part;
            }
        }
    }
    for (row, g) in rows.iter_mut().zip(guaranteed) {
        if let Some(g) = g {
            row.set_guaranteed(g);
        }
    }
}
