//! bwmon's kernel side.
//!
//! `bwmon_classify` (TC egress): for every packet leaving the interface it finds the slice
//! (xid), decides whether the destination is exempt, steers the packet into the slice's HTB leaf
//! through `skb->priority`, and counts the bytes *offered* per xid: in the xid's counter slot
//! when the agent gave it one (one lookup finds leaves and slot), in a hash of xids without a
//! slot otherwise. It never drops and never touches the payload; it returns "next" so other
//! programs on the hook still run.
//!
//! `bwmon_drop` (BTF tracepoint `skb:kfree_skb`): when a packet steered into bwmon's tree is
//! dropped before it leaves (the qdisc was full, a later tc program shot it), it counts the
//! packet's length against its HTB class, in one array shared by the CPUs. A slice pays what it offered minus what was dropped:
//! what leaves, as HTB counts it. (Counting at the `qdisc:qdisc_enqueue` tracepoint instead was
//! measured to miss a few enqueues per thousand under TCP load on 6.18.)
#![no_std]
#![no_main]
// For `lock xadd` (see `atomic_add`); aya-ebpf enables it too, hence RUSTC_BOOTSTRAP in the build.
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, bpf_hdr_start_off::BPF_HDR_START_NET},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_skb_load_bytes_relative},
    macros::{btf_tracepoint, classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{BtfTracePointContext, TcContext},
};
use core::mem::MaybeUninit;

use aya_log_ebpf::warn;
use bwmon_common::{
    BPF_F_NO_PREALLOC, CLASS_ARRAY_XIDS, COUNTER_SLOTS, ClassIds, Counter, DropControl, ETH_HLEN,
    EXEMPT_FILTER_WORDS, HTB_MAJOR, KernelOffsets, LINK_HEADER_UNKNOWN, MAX_EXEMPT_PREFIXES,
    MAX_MINORS, MAX_SOURCE_PREFIXES, MAX_XIDS, SEEN_CHUNK, Settings, XidCounters, XidEntry,
    XidSource, exempt_filter_bit_v4, exempt_filter_bit_v6,
};

/// Written by the loader before the program is loaded (read-only global).
#[unsafe(no_mangle)]
static BWMON_SETTINGS: Settings = Settings {
    generation: 0,
    xid_source: XidSource::Uid as u32,
    log_enabled: 0,
    link_header: LINK_HEADER_UNKNOWN,
    _pad: 0,
    offsets: KernelOffsets {
        skb_dev: 0,
        skb_priority: 0,
        skb_pkt_len: 0,
        dev_ifindex: 0,
        dev_net: 0,
        net_inum: 0,
    },
    drop_reasons: [0; 4],
};

#[map(name = "BWMON_DROPS")]
static DROPS: Array<Counter> = Array::with_max_entries(MAX_MINORS, 0);

#[map(name = "BWMON_DROPS_SEEN")]
static DROPS_SEEN: Array<[u8; SEEN_CHUNK as usize]> =
    Array::with_max_entries(MAX_MINORS / SEEN_CHUNK, 0);

#[map(name = "BWMON_DROP_CONTROL")]
static DROP_CONTROL: Array<DropControl> = Array::with_max_entries(1, 0);

#[map(name = "BWMON_SLOTS")]
static SLOTS: PerCpuArray<XidCounters> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map(name = "BWMON_UNSLOTTED")]
static UNSLOTTED: PerCpuHashMap<u32, XidCounters> =
    PerCpuHashMap::with_max_entries(MAX_XIDS, BPF_F_NO_PREALLOC);

#[map(name = "BWMON_OFFERED_OVERFLOW")]
static OFFERED_OVERFLOW: PerCpuArray<XidCounters> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "BWMON_XID_ARRAY")]
static XID_ARRAY: Array<XidEntry> = Array::with_max_entries(CLASS_ARRAY_XIDS, 0);

#[map(name = "BWMON_XID_HASH")]
static XID_HASH: HashMap<u32, XidEntry> = HashMap::with_max_entries(MAX_XIDS, BPF_F_NO_PREALLOC);

#[map(name = "BWMON_EXEMPT_V4")]
static EXEMPT_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_EXEMPT_PREFIXES, 0);

#[map(name = "BWMON_EXEMPT_V6")]
static EXEMPT_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_EXEMPT_PREFIXES, 0);

#[map(name = "BWMON_EXEMPT_FILTER")]
static EXEMPT_FILTER: Array<u64> = Array::with_max_entries(EXEMPT_FILTER_WORDS, 0);

#[map(name = "BWMON_SOURCE_V4")]
static SOURCE_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_SOURCE_PREFIXES, 0);

#[map(name = "BWMON_SOURCE_V6")]
static SOURCE_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_SOURCE_PREFIXES, 0);

/// Per-CPU time of the last diagnostic, so logging is at most one line per second per CPU.
#[map(name = "BWMON_LOG_GATE")]
static LOG_GATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// The xid of packets whose source address matches no source prefix: the root slice.
const UNMATCHED_SOURCE_XID: u32 = bwmon_common::ROOT_XID;
const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn settings() -> Settings {
    // SAFETY: a plain read of a global the loader wrote; volatile so the compiler does not fold
    // the initial value in.
    unsafe { core::ptr::read_volatile(&BWMON_SETTINGS) }
}

/// One field of the settings, read alone: the hot path copies 4 bytes, not the whole struct.
macro_rules! setting {
    ($field:ident) => {
        // SAFETY: as in `settings`.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(BWMON_SETTINGS.$field)) }
    };
}

#[classifier]
fn bwmon_classify(ctx: TcContext) -> i32 {
    classify(&ctx);
    // "Next": never drop, and let the programs after us run.
    TC_ACT_UNSPEC
}

/// Where a packet's IP header can be read: straight in the packet, or in a stack copy.
#[derive(Clone, Copy)]
struct IpHeader {
    /// Readable for 20 bytes (IPv4) or 40 (IPv6).
    at: *const u8,
    v6: bool,
}

impl IpHeader {
    /// The destination address' first bits, for the exempt filter.
    #[inline(always)]
    fn filter_bit(self) -> (u32, u64) {
        // SAFETY: within the header's readable bytes.
        unsafe {
            if self.v6 {
                exempt_filter_bit_v6(u16::from_be_bytes(*(self.at.add(24) as *const [u8; 2])))
            } else {
                exempt_filter_bit_v4(*self.at.add(16))
            }
        }
    }

    /// Whether the destination is in an exempt prefix.
    #[inline(always)]
    fn dst_exempt(self) -> bool {
        // SAFETY: within the header's readable bytes; `[u8; N]` has no alignment.
        unsafe {
            if self.v6 {
                let dst = *(self.at.add(24) as *const [u8; 16]);
                EXEMPT_V6.get(Key::new(128, dst)).is_some()
            } else {
                let dst = *(self.at.add(16) as *const [u8; 4]);
                EXEMPT_V4.get(Key::new(32, dst)).is_some()
            }
        }
    }

    /// The xid of the source address' prefix.
    #[inline(always)]
    fn src_xid(self) -> Option<u32> {
        // SAFETY: as above.
        unsafe {
            if self.v6 {
                let src = *(self.at.add(8) as *const [u8; 16]);
                SOURCE_V6.get(Key::new(128, src)).copied()
            } else {
                let src = *(self.at.add(12) as *const [u8; 4]);
                SOURCE_V4.get(Key::new(32, src)).copied()
            }
        }
    }
}

/// The IP header straight from the packet when the link header's length is known (on
/// Ethernet its type field must say `proto`), the header is in the linear part and of `proto`'s
/// version. `None`: ask the helper.
#[inline(always)]
fn direct_header(ctx: &TcContext, proto: u16, len: usize) -> Option<IpHeader> {
    let data = ctx.data();
    let end = ctx.data_end();
    let link = match setting!(link_header) {
        ETH_HLEN => {
            if data + ETH_HLEN as usize > end {
                return None;
            }
            // SAFETY: bounds checked above.
            let ethertype = unsafe { *((data + 12) as *const [u8; 2]) };
            if u16::from_be_bytes(ethertype) != proto {
                return None;
            }
            ETH_HLEN as usize
        }
        0 => 0,
        _ => return None,
    };
    if data + link + len > end {
        return None;
    }
    let at = (data + link) as *const u8;
    // SAFETY: bounds checked above.
    let version = unsafe { *at } >> 4;
    (version == ip_version(proto)).then_some(IpHeader {
        at,
        v6: proto == ETH_P_IPV6,
    })
}

#[inline(always)]
fn ip_version(proto: u16) -> u8 {
    if proto == ETH_P_IPV6 { 6 } else { 4 }
}

/// The IP header copied into `buf` by a helper, which knows where the network header starts
/// whatever the device. `Err(version)`: cut short (0) or of another IP version.
#[inline(always)]
fn copied_header(
    ctx: &TcContext,
    proto: u16,
    len: usize,
    buf: &mut MaybeUninit<[u8; 40]>,
) -> Result<IpHeader, u8> {
    // SAFETY: the helper writes at most `len` ≤ 40 bytes into `buf`.
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.skb.skb as *const _,
            0,
            buf.as_mut_ptr() as *mut _,
            len as u32,
            BPF_HDR_START_NET,
        )
    };
    if ret != 0 {
        return Err(0);
    }
    let at = buf.as_ptr() as *const u8;
    // SAFETY: the helper filled the first `len` bytes.
    let version = unsafe { *at } >> 4;
    if version != ip_version(proto) {
        return Err(version);
    }
    Ok(IpHeader {
        at,
        v6: proto == ETH_P_IPV6,
    })
}

/// The packet's IP header; `None` for other protocols, and for an IP ethertype whose header
/// is cut short or carries another version (charged as general traffic of its xid, and said
/// in the kernel log).
#[inline(always)]
fn ip_header(ctx: &TcContext, buf: &mut MaybeUninit<[u8; 40]>) -> Option<IpHeader> {
    // SAFETY: reading a field of the context the kernel handed us.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let len = match proto {
        ETH_P_IP => 20,
        ETH_P_IPV6 => 40,
        _ => return None,
    };
    if let Some(h) = direct_header(ctx, proto, len) {
        return Some(h);
    }
    match copied_header(ctx, proto, len, buf) {
        Ok(h) => Some(h),
        Err(version) => {
            diag(ctx, Diag::UnexpectedPacket { proto, version });
            None
        }
    }
}

#[inline(always)]
fn classify(ctx: &TcContext) {
    let mut buf = MaybeUninit::<[u8; 40]>::uninit();
    let ip = ip_header(ctx, &mut buf);
    let xid = match XidSource::from_u32(setting!(xid_source)) {
        // SAFETY: the context's `__sk_buff` is valid for the program's run; the verifier
        // checks the field access.
        Some(XidSource::Mark) => unsafe { (*ctx.skb.skb).mark },
        Some(XidSource::Source) => ip
            .and_then(IpHeader::src_xid)
            .unwrap_or(UNMATCHED_SOURCE_XID),
        _ => ctx.get_socket_uid(),
    };
    // The filter (an inlined array lookup) spares the trie walk for destinations no exempt
    // prefix can cover: most packets, on most hosts.
    let exempt = ip.is_some_and(|h| may_be_exempt(h.filter_bit()) && h.dst_exempt());

    let entry = xid_entry(xid);
    let class = if entry.classes == ClassIds::NONE {
        ClassIds::DEFAULT
    } else {
        entry.classes
    };
    let priority = if exempt { class.exempt } else { class.general };
    // SAFETY: `priority` is a writable field of `__sk_buff` for TC programs.
    unsafe { (*ctx.skb.skb).priority = priority };

    // SAFETY: reading a field of the context.
    let wire_len = u64::from(unsafe { (*ctx.skb.skb).wire_len });
    // The xid's slot (an inlined bounds check), or its entry in the hash of xids without one.
    let slotted = if entry.slot != 0 {
        SLOTS.get_ptr_mut(entry.slot)
    } else {
        None
    };
    let counters = match slotted {
        Some(p) => p,
        None => match unslotted(xid) {
            Some(p) => p,
            None => {
                diag(ctx, Diag::MapFull { xid });
                match OFFERED_OVERFLOW.get_ptr_mut(0) {
                    Some(p) => p,
                    None => return,
                }
            }
        },
    };
    // SAFETY: per-CPU value: no other writer on this CPU while we run.
    let c = unsafe { &mut *counters };
    if exempt {
        c.exempt.charge(wire_len);
    } else {
        c.general.charge(wire_len);
    }
}

/// The xid's counters in the hash of xids without a slot, inserted at its first packet; `None`
/// when the hash is full.
#[inline(always)]
fn unslotted(xid: u32) -> Option<*mut XidCounters> {
    if let Some(p) = UNSLOTTED.get_ptr_mut(&xid) {
        return Some(p);
    }
    // Racing CPUs may both insert: the loser's insert fails and its lookup finds the key.
    let _ = UNSLOTTED.insert(&xid, &XidCounters::default(), BPF_NOEXIST);
    UNSLOTTED.get_ptr_mut(&xid)
}

/// Sets slot `index`'s byte in a seen map (read first: the cache line stays shared once set).
#[inline(always)]
fn mark_seen(seen: &Array<[u8; SEEN_CHUNK as usize]>, index: u32) {
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

/// What the agent keeps for the xid (leaves, counter slot): from the array below
/// [`CLASS_ARRAY_XIDS`] (an inlined bounds check), from the hash above; empty when it has
/// nothing.
#[inline(always)]
fn xid_entry(xid: u32) -> XidEntry {
    let found = if xid < CLASS_ARRAY_XIDS {
        XID_ARRAY.get(xid).copied()
    } else {
        // SAFETY: plain lookup; the value is copied out at once.
        unsafe { XID_HASH.get(&xid) }.copied()
    };
    found.unwrap_or(XidEntry::EMPTY)
}

/// Whether the exempt filter has `bit` set in word `word` (unreadable: assume it may be).
#[inline(always)]
fn may_be_exempt((word, bit): (u32, u64)) -> bool {
    EXEMPT_FILTER.get(word).is_none_or(|w| w & bit != 0)
}

#[btf_tracepoint(function = "kfree_skb")]
fn bwmon_drop(ctx: BtfTracePointContext) -> i32 {
    // kfree_skb(skb, location, reason, rx_sk)
    let reason: u32 = ctx.arg(2);
    if !settings().counts_drop_reason(reason) {
        return 0;
    }
    // SAFETY: every read below goes through bpf_probe_read_kernel, which tolerates bad
    // pointers.
    let _ = unsafe { count_drop(ctx.arg(0)) };
    0
}

/// Reads a `T` at `base + offset` of kernel memory.
///
/// # Safety
/// `base` must point into a kernel object; a bad read fails instead of faulting.
#[inline(always)]
unsafe fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: probe reads fault safely.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T).ok() }
}

/// Counts a dropped `skb` against its HTB leaf when the reason is one of the qdisc's.
///
/// # Safety
/// `skb` must be the tracepoint's `struct sk_buff` pointer.
#[inline(always)]
unsafe fn count_drop(skb: *const u8) -> Option<()> {
    let s = settings();
    let control = DROP_CONTROL.get(0).copied()?;
    if control.generation != s.generation {
        // Another load is the one counting: exactly one program counts a drop.
        return None;
    }
    let o = s.offsets;
    // SAFETY: probe reads of kernel memory.
    unsafe {
        let priority: u32 = read(skb, o.skb_priority)?;
        if priority >> 16 != HTB_MAJOR {
            return None;
        }
        let dev: *const u8 = read(skb, o.skb_dev)?;
        let ifindex: u32 = read(dev, o.dev_ifindex)?;
        if ifindex != control.ifindex {
            return None;
        }
        let net: *const u8 = read(dev, o.dev_net)?;
        let inum: u32 = read(net, o.net_inum)?;
        if inum != control.netns_inum {
            return None;
        }
        let pkt_len: u32 = read(skb, o.skb_pkt_len)?;
        let minor = priority & 0xffff;
        let counter = DROPS.get_ptr_mut(minor)?;
        // Shared by the CPUs: atomic adds (drops are rare next to sends, so a cache line
        // bouncing now and then costs less than a per-CPU copy of 65,536 counters).
        // SAFETY: the pointers are to the map value's fields, valid and 8-byte aligned.
        atomic_add(
            core::ptr::addr_of_mut!((*counter).bytes),
            u64::from(pkt_len),
        );
        atomic_add(core::ptr::addr_of_mut!((*counter).packets), 1);
        mark_seen(&DROPS_SEEN, minor);
    }
    Some(())
}

/// `*p += v` as one atomic instruction (BPF's `lock xadd`; the target has no compare-and-swap,
/// so core's atomics offer no `fetch_add`).
///
/// # Safety
/// `p` must be valid for writes and 8-byte aligned.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller's pointer; the instruction touches those 8 bytes only.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack),
        );
    }
}

/// Something worth telling the operator about.
enum Diag {
    /// The per-xid map is full; the packet went to the overflow slot.
    MapFull { xid: u32 },
    /// An IP ethertype with an unreadable header or another IP version.
    UnexpectedPacket { proto: u16, version: u8 },
}

/// Logs `d` through aya-log when diagnostics are on, at most once a second per CPU.
#[inline(always)]
fn diag(ctx: &TcContext, d: Diag) {
    if setting!(log_enabled) == 0 {
        return;
    }
    let Some(gate) = LOG_GATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot.
    let last = unsafe { &mut *gate };
    if now.wrapping_sub(*last) < 1_000_000_000 {
        return;
    }
    *last = now;
    match d {
        Diag::MapFull { xid } => warn!(
            ctx,
            "bwmon: xid map full, xid {} counted in the overflow slot", xid
        ),
        Diag::UnexpectedPacket { proto, version } => warn!(
            ctx,
            "bwmon: unexpected packet: ethertype {:x} with IP version {}, counted as general",
            proto,
            version
        ),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
