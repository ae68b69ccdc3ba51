//! Reading many slots of an array, or every entry of a hash, at once: batch lookups where the
//! kernel has them (a few calls), one lookup per key otherwise. Per-CPU values are summed.

use aya::{
    Pod,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
};

use super::batch;

/// A failed raw batch lookup, as a map error.
pub(super) fn batch_error(source: std::io::Error) -> MapError {
    MapError::SyscallError(aya::sys::SyscallError {
        call: "bpf_map_lookup_batch",
        io_error: source,
    })
}

/// The map's data, for raw calls (batch lookups, info, fdinfo).
pub(super) fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::PerCpuHashMap(m)
        | Map::PerCpuArray(m)
        | Map::HashMap(m)
        | Map::Array(m)
        | Map::LpmTrie(m)
        | Map::RingBuf(m) => Some(m),
        _ => None,
    }
}

fn sum<V: Pod + Default>(values: &PerCpuValues<V>, fold: impl Fn(V, V) -> V) -> V {
    values.iter().fold(V::default(), |acc, v| fold(acc, *v))
}

/// The slots of array `map` in `runs` (`(start, len)`), per-CPU values summed by `fold`;
/// slots holding `V::default()` left out.
///
/// # Errors
/// A failed lookup.
pub(super) fn array_runs<V: Pod + Default + PartialEq>(
    map: &Map,
    runs: &[(u32, u32)],
    nr_cpus: usize,
    fold: impl Fn(V, V) -> V + Copy,
) -> Result<Vec<(u32, V)>, MapError> {
    let per_cpu = matches!(map, Map::PerCpuArray(_));
    let mut out = Vec::new();
    for &(start, len) in runs {
        let batched = match map_data(map) {
            Some(data) if per_cpu => batch::per_cpu_range(data.fd(), nr_cpus, start, len, fold),
            Some(data) => batch::range(data.fd(), start, len),
            None => Ok(None),
        }
        .map_err(batch_error)?;
        let slots = match batched {
            Some(slots) => slots,
            None if per_cpu => {
                let array: PerCpuArray<&MapData, V> = PerCpuArray::try_from(map)?;
                (start..start + len)
                    .map(|i| Ok((i, sum(&array.get(&i, 0)?, fold))))
                    .collect::<Result<_, MapError>>()?
            }
            None => {
                let array: Array<&MapData, V> = Array::try_from(map)?;
                (start..start + len)
                    .map(|i| Ok((i, array.get(&i, 0)?)))
                    .collect::<Result<_, MapError>>()?
            }
        };
        out.extend(slots.into_iter().filter(|(_, v)| *v != V::default()));
    }
    Ok(out)
}

/// Every entry of hash `map`, per-CPU values summed by `fold`.
///
/// # Errors
/// A failed lookup.
pub(super) fn hash_entries<K: Pod + Default + Eq + std::hash::Hash, V: Pod + Default>(
    map: &Map,
    nr_cpus: usize,
    fold: impl Fn(V, V) -> V + Copy,
) -> Result<Vec<(K, V)>, MapError> {
    let per_cpu = matches!(map, Map::PerCpuHashMap(_));
    let batched = match map_data(map) {
        Some(data) if per_cpu => batch::per_cpu_entries::<K, V>(data.fd(), nr_cpus, fold),
        Some(data) => batch::entries::<K, V>(data.fd()),
        None => Ok(None),
    }
    .map_err(batch_error)?;
    if let Some(entries) = batched {
        return Ok(entries);
    }
    if per_cpu {
        let hash: PerCpuHashMap<&MapData, K, V> = PerCpuHashMap::try_from(map)?;
        hash.iter()
            .map(|e| e.map(|(k, values)| (k, sum(&values, fold))))
            .collect()
    } else {
        let hash: HashMap<&MapData, K, V> = HashMap::try_from(map)?;
        hash.iter().collect()
    }
}
