//! Every map the programs share with the agent (names in `bwmon_common::names`), and the seen
//! maps' one writer.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
};
use bwmon_common::{
    BPF_F_NO_PREALLOC, CLASS_ARRAY_XIDS, COUNTER_SLOTS, Counter, DropControl, EXEMPT_FILTER_WORDS,
    IngressControl, MAX_CGROUPS, MAX_EXEMPT_PREFIXES, MAX_MINORS, MAX_SOURCE_PREFIXES, MAX_XIDS,
    Policer, SEEN_CHUNK, XidCounters, XidEntry,
};

#[map(name = "BWMON_DROPS")]
pub(crate) static DROPS: Array<Counter> = Array::with_max_entries(MAX_MINORS, 0);

#[map(name = "BWMON_DROPS_SEEN")]
pub(crate) static DROPS_SEEN: Array<[u8; SEEN_CHUNK as usize]> =
    Array::with_max_entries(MAX_MINORS / SEEN_CHUNK, 0);

#[map(name = "BWMON_DROP_CONTROL")]
pub(crate) static DROP_CONTROL: Array<DropControl> = Array::with_max_entries(1, 0);

#[map(name = "BWMON_SLOTS")]
pub(crate) static SLOTS: PerCpuArray<XidCounters> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map(name = "BWMON_UNSLOTTED")]
pub(crate) static UNSLOTTED: PerCpuHashMap<u32, XidCounters> =
    PerCpuHashMap::with_max_entries(MAX_XIDS, BPF_F_NO_PREALLOC);

#[map(name = "BWMON_OFFERED_OVERFLOW")]
pub(crate) static OFFERED_OVERFLOW: PerCpuArray<XidCounters> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "BWMON_XID_ARRAY")]
pub(crate) static XID_ARRAY: Array<XidEntry> = Array::with_max_entries(CLASS_ARRAY_XIDS, 0);

#[map(name = "BWMON_XID_HASH")]
pub(crate) static XID_HASH: HashMap<u32, XidEntry> =
    HashMap::with_max_entries(MAX_XIDS, BPF_F_NO_PREALLOC);

#[map(name = "BWMON_EXEMPT_V4")]
pub(crate) static EXEMPT_V4: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(MAX_EXEMPT_PREFIXES, 0);

#[map(name = "BWMON_EXEMPT_V6")]
pub(crate) static EXEMPT_V6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(MAX_EXEMPT_PREFIXES, 0);

#[map(name = "BWMON_EXEMPT_FILTER")]
pub(crate) static EXEMPT_FILTER: Array<u64> = Array::with_max_entries(EXEMPT_FILTER_WORDS, 0);

#[map(name = "BWMON_SOURCE_V4")]
pub(crate) static SOURCE_V4: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(MAX_SOURCE_PREFIXES, 0);

#[map(name = "BWMON_SOURCE_V6")]
pub(crate) static SOURCE_V6: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(MAX_SOURCE_PREFIXES, 0);

#[map(name = "BWMON_CGROUP_XIDS")]
pub(crate) static CGROUP_XIDS: HashMap<u64, u32> =
    HashMap::with_max_entries(MAX_CGROUPS, BPF_F_NO_PREALLOC);

#[map(name = "BWMON_CGROUP_LEVELS")]
pub(crate) static CGROUP_LEVELS: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU time of the last diagnostic, so logging is at most one line per second per CPU.
#[map(name = "BWMON_LOG_GATE")]
pub(crate) static LOG_GATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sets slot `index`'s byte in a seen map (read first: the cache line stays shared once set).
#[inline(always)]
pub(crate) fn mark_seen(seen: &Array<[u8; SEEN_CHUNK as usize]>, index: u32) {
    if let Some(chunk) = seen.get_ptr_mut(index / SEEN_CHUNK) {
        // SAFETY: within the chunk (offset below SEEN_CHUNK); a byte store races with nothing
        // that could undo it.
        unsafe {
            let byte = (chunk as *mut u8).add((index % SEEN_CHUNK) as usize);
            if *byte == 0 {
                *byte = 1;
            }
        }
    }
}

#[map(name = "BWMON_RECEIVED")]
pub(crate) static RECEIVED: PerCpuHashMap<u32, XidCounters> =
    PerCpuHashMap::with_max_entries(MAX_XIDS, BPF_F_NO_PREALLOC);

#[map(name = "BWMON_RECEIVED_OVERFLOW")]
pub(crate) static RECEIVED_OVERFLOW: PerCpuArray<XidCounters> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "BWMON_INGRESS_CONTROL")]
pub(crate) static INGRESS_CONTROL: Array<IngressControl> = Array::with_max_entries(1, 0);

#[map(name = "BWMON_POLICERS")]
pub(crate) static POLICERS: HashMap<u32, Policer> =
    HashMap::with_max_entries(MAX_XIDS, BPF_F_NO_PREALLOC);

#[map(name = "BWMON_POLICED")]
pub(crate) static POLICED: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);
