//! Seen maps: a byte per slot of a counter array, set by the program that counts there, so the
//! agent reads only the slots in use instead of all of them.

use aya::maps::{Array, Map, MapData, MapError};
use bwmon_common::{SEEN_CHUNK, SEEN_INCOMPLETE};

/// One entry of a seen map.
pub(super) type Chunk = [u8; SEEN_CHUNK as usize];

/// Gaps of unseen slots shorter than this are read through: a few slots cost less than
/// another call.
const RUN_GAP: u32 = 64;

/// The runs `(start, len)` of slots to read for the seen bytes in `chunks`: every seen slot in
/// one, joined across short gaps.
pub(super) fn runs(chunks: &[Chunk]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    let seen = chunks
        .iter()
        .flatten()
        .zip(0u32..)
        .filter(|(b, _)| **b != 0);
    for (_, slot) in seen {
        match runs.last_mut() {
            Some((start, len)) if slot - (*start + *len) < RUN_GAP => *len = slot - *start + 1,
            _ => runs.push((slot, 1)),
        }
    }
    runs
}

/// The runs of the `slots`-slot array that seen map `seen` covers: the slots it marks, or all
/// of them when it is incomplete or missing (`None`).
///
/// # Errors
/// The seen map cannot be read.
pub(super) fn runs_to_read(seen: Option<&Map>, slots: u32) -> Result<Vec<(u32, u32)>, MapError> {
    let Some(seen) = seen else {
        return Ok(vec![(0, slots)]);
    };
    let map: Array<&MapData, Chunk> = Array::try_from(seen)?;
    let chunks = (0..slots / SEEN_CHUNK)
        .map(|i| map.get(&i, 0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if chunks.first().is_some_and(|c| c[0] == SEEN_INCOMPLETE) {
        vec![(0, slots)]
    } else {
        runs(&chunks)
    })
}

/// Marks seen map `seen` incomplete: made after its array had counted. Only before the program
/// that writes it is attached: the chunk written here could undo a byte it set.
///
/// # Errors
/// The map cannot be read or written.
pub(super) fn mark_incomplete(seen: &mut Map) -> Result<(), MapError> {
    let mut map: Array<&mut MapData, Chunk> = Array::try_from(seen)?;
    let mut first = map.get(&0, 0)?;
    first[0] = SEEN_INCOMPLETE;
    map.set(0, first, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(seen: &[u32]) -> Vec<Chunk> {
        let mut c = vec![[0u8; SEEN_CHUNK as usize]; (65_536 / SEEN_CHUNK) as usize];
        for slot in seen {
            c[(slot / SEEN_CHUNK) as usize][(slot % SEEN_CHUNK) as usize] = 1;
        }
        c
    }

    #[test]
    fn seen_slots_are_read_in_runs_joined_across_short_gaps() {
        assert_eq!(runs(&chunks(&[])), vec![]);
        assert_eq!(runs(&chunks(&[0])), vec![(0, 1)]);
        assert_eq!(runs(&chunks(&[65_535])), vec![(65_535, 1)]);
        // 1000 and 1063 are 62 apart (a gap of 62 unseen slots): one run; 1200 starts another.
        assert_eq!(
            runs(&chunks(&[1000, 1063, 1200, 1201])),
            vec![(1000, 64), (1200, 2)]
        );
        // Across a chunk boundary.
        assert_eq!(runs(&chunks(&[4095, 4096])), vec![(4095, 2)]);
        let all: Vec<u32> = (20_000..30_000).collect();
        assert_eq!(runs(&chunks(&all)), vec![(20_000, 10_000)]);
        // Every seen slot is inside a run.
        let some = [3, 70, 4000, 4100, 40_000, 65_534];
        let r = runs(&chunks(&some));
        for slot in some {
            assert!(r.iter().any(|(s, l)| (*s..s + l).contains(&slot)), "{slot}");
        }
    }
}
