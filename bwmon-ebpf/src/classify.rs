//! `bwmon_classify` (TC egress): a packet's slice, its class (general or exempt), its HTB leaf
//! through `skb->priority`, and its bytes counted in the slice's counter slot.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::bpf_get_socket_uid,
    macros::classifier,
    programs::TcContext,
};
use core::mem::MaybeUninit;

use bwmon_common::{CLASS_ARRAY_XIDS, ClassIds, XidCounters, XidEntry, XidSource};

use crate::{
    diag::{Diag, diag},
    header::{IpHeader, ip_header, may_be_exempt},
    maps::{OFFERED_OVERFLOW, SLOTS, UNSLOTTED, XID_ARRAY, XID_HASH},
};

/// The xid of packets whose local address matches no source prefix: the root slice.
const UNMATCHED_SOURCE_XID: u32 = bwmon_common::ROOT_XID;
pub(crate) const BPF_NOEXIST: u64 = 1;

/// Which way a packet goes through the interface.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Sent: the local address is the source.
    Egress,
    /// Received: the local address is the destination.
    Ingress,
}

/// The packet's slice (xid), in either direction: by the socket owner's uid, by `skb->mark`,
/// or by the prefix of its local address (the source of a packet sent, the destination of
/// one received). The one place a packet's xid is chosen.
#[inline(always)]
pub(crate) fn packet_xid(skb: *mut __sk_buff, ip: Option<IpHeader>, dir: Direction) -> u32 {
    // A tenant cgroup's socket first (at TC ingress there is no socket yet: none matches);
    // everything else by `xid_source`.
    if let Some(xid) = crate::cgroup::tenant_xid(skb) {
        return xid;
    }
    match XidSource::from_u32(setting!(xid_source)) {
        // SAFETY: the context's `__sk_buff` is valid for the program's run; the verifier
        // checks the field access.
        Some(XidSource::Mark) => unsafe { (*skb).mark },
        Some(XidSource::Source) => ip
            .and_then(|h| match dir {
                Direction::Egress => h.src_xid(),
                Direction::Ingress => h.dst_xid(),
            })
            .unwrap_or(UNMATCHED_SOURCE_XID),
        // SAFETY: the helper reads the skb's socket, if any (overflow uid without one).
        _ => unsafe { bpf_get_socket_uid(skb) },
    }
}

#[classifier]
fn bwmon_classify(ctx: TcContext) -> i32 {
    classify(&ctx);
    // "Next": never drop, and let the programs after us run.
    TC_ACT_UNSPEC
}

#[inline(always)]
fn classify(ctx: &TcContext) {
    let mut buf = MaybeUninit::<[u8; 40]>::uninit();
    let ip = ip_header(ctx, ctx.skb.skb, setting!(link_header), &mut buf);
    let xid = packet_xid(ctx.skb.skb, ip, Direction::Egress);
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

/// What the agent keeps for the xid (leaves, counter slot): from the array below
/// [`CLASS_ARRAY_XIDS`] (an inlined bounds check), from the hash above; empty when it has
/// nothing.
#[inline(always)]
pub(crate) fn xid_entry(xid: u32) -> XidEntry {
    let found = if xid < CLASS_ARRAY_XIDS {
        XID_ARRAY.get(xid).copied()
    } else {
        // SAFETY: plain lookup; the value is copied out at once.
        unsafe { XID_HASH.get(&xid) }.copied()
    };
    found.unwrap_or(XidEntry::EMPTY)
}
