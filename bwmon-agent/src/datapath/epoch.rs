//! The counters' epoch: a number that names one instance of the kernel's counters (this boot,
//! the kernel ids of the maps that hold them), saved in the state beside the last values read
//! from them. A state whose epoch the counters do not carry reads them as restarted from zero.
//!
//! The number must therefore be the same for the same counters whatever toolchain built bwmon:
//! it is FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over a byte
//! string this module writes out itself — the boot id's bytes and a `0xff`, then per part a
//! `0x00` (absent) or a `0x01` and the part as 8 little-endian bytes. Std's `DefaultHasher`,
//! which bwmon used before, is not promised to stay the same across Rust releases; what it gave
//! is still computed ([`std_hasher_epoch`]) as a bridge, so that a state saved by such a bwmon
//! goes on with the same counters after the upgrade.

/// FNV-1a 64's offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64's prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, going on from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The epoch of the counters of boot `boot_id` held in maps with kernel ids `parts` (in a
/// fixed order; `None` for a map without an id): see the module's doc for the bytes hashed.
pub fn epoch_hash(boot_id: &str, parts: &[Option<u64>]) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, boot_id.as_bytes());
    h = fnv1a(h, &[0xff]);
    for part in parts {
        h = match part {
            None => fnv1a(h, &[0]),
            Some(v) => fnv1a(fnv1a(h, &[1]), &v.to_le_bytes()),
        };
    }
    h
}

/// The bridge: the epoch a bwmon that hashed with std's `DefaultHasher` saved for the same
/// counters (the boot id, then each map id as an `Option<u32>`), as this toolchain computes it.
pub fn std_hasher_epoch(boot_id: &str, map_ids: &[Option<u32>]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    boot_id.hash(&mut h);
    for id in map_ids {
        id.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::Snapshot;

    const BOOT: &str = "0f2e4c6a-8b1d-4e3f-9a5c-7d6b8e9f0a1b\n";

    #[test]
    fn the_epoch_of_known_inputs_is_fixed() {
        // Pinned: a change here reads every counter of every host as restarted.
        assert_eq!(epoch_hash("", &[]), 0xaf64_724c_8602_eb6e);
        assert_eq!(
            epoch_hash(BOOT, &[Some(17), Some(18), Some(19)]),
            0x4955_f3e8_73cf_789c
        );
        assert_eq!(epoch_hash(BOOT, &[Some(17), None]), 0x8335_8c71_19c7_3459);
        // Every input counts.
        let base = epoch_hash(BOOT, &[Some(17), Some(18), Some(19)]);
        for other in [
            epoch_hash("another boot", &[Some(17), Some(18), Some(19)]),
            epoch_hash(BOOT, &[Some(17), Some(18), Some(20)]),
            epoch_hash(BOOT, &[Some(18), Some(17), Some(19)]),
            epoch_hash(BOOT, &[Some(17), Some(18), None]),
            epoch_hash(BOOT, &[Some(17), Some(18)]),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn fnv1a_is_the_published_one() {
        // The FNV test vectors: "" and "a", "foobar".
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_bridge_is_what_the_earlier_formula_gave() {
        use std::hash::{Hash as _, Hasher as _};
        // The formula bwmon used up to now, written out as it was.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        BOOT.to_owned().hash(&mut h);
        Some(17u32).hash(&mut h);
        Some(18u32).hash(&mut h);
        let before_array = h.finish();
        Some(19u32).hash(&mut h);
        let with_array = h.finish();
        assert_eq!(std_hasher_epoch(BOOT, &[Some(17), Some(18)]), before_array);
        assert_eq!(
            std_hasher_epoch(BOOT, &[Some(17), Some(18), Some(19)]),
            with_array
        );
    }

    #[test]
    fn counters_go_on_across_a_change_of_the_std_hasher() {
        let ids = [Some(17), Some(18), Some(19)];
        let stable = epoch_hash(BOOT, &ids.map(|i: Option<u32>| i.map(u64::from)));
        // A state saved by this bwmon, read by one built with a toolchain whose std hasher
        // gives other numbers (simulated): the stable epoch is the same, the counters go on.
        let rebuilt = Snapshot {
            epoch: stable,
            earlier_epochs: vec![0x1111, 0x2222],
            ..Snapshot::default()
        };
        assert!(rebuilt.continues(stable));
        // A state saved by the bwmon before this one (std's hasher) goes on through the bridge.
        let upgraded = Snapshot {
            epoch: stable,
            earlier_epochs: vec![
                std_hasher_epoch(BOOT, &ids),
                std_hasher_epoch(BOOT, &ids[..2]),
            ],
            ..Snapshot::default()
        };
        assert!(upgraded.continues(std_hasher_epoch(BOOT, &ids)));
        assert!(upgraded.continues(std_hasher_epoch(BOOT, &ids[..2])));
        // Other counters (another boot) are a restart.
        assert!(!upgraded.continues(epoch_hash("another boot", &[])));
    }
}
