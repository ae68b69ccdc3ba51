//! Received bytes per slice, and the download policer of capped slices.
//!
//! `bwmon_ingress` (`cgroup_skb/ingress`, attached to the cgroup v2 root): a packet delivered
//! to a local socket, after the stack's socket lookup, so the receiving socket's owner (uid
//! slices) and mark are known. It counts only packets that arrived on the accounted interface
//! (by ifindex, from [`INGRESS_CONTROL`]). `bwmon_ingress_tc` (TC ingress of the interface):
//! the same for source-prefix slices (routed or bridged tenants without a local socket), keyed
//! by the packet's *destination* address. Each counts only under its own xid source, so a
//! packet is counted once.
//!
//! A received byte: the packet as the stack delivered it plus its link header — IP length +
//! link header, what `wire_len` is for a packet sent (at TC the link header is in the packet;
//! a `cgroup_skb` program sees it from the network header on, so the device's link header
//! length is added). Exempt by the packet's *source* against the exempt prefixes.
//!
//! Policing: a slice with a [`Policer`](bwmon_common::Policer) (written by the agent when its
//! general class is capped or under an operator `limit`) has general packets above its token
//! bucket dropped, and those are not charged.
//! The bucket is shared by the CPUs without a lock: two CPUs refilling at once may let a
//! packet's worth more through, which TCP's backing off makes up for.

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{cgroup_skb, classifier},
    programs::{SkBuffContext, TcContext},
};
use core::mem::MaybeUninit;

use bwmon_common::{LINK_HEADER_UNKNOWN, XidCounters, XidSource};

use crate::{
    classify::{BPF_NOEXIST, Direction, packet_xid},
    diag::{Diag, diag},
    header::{ip_header, may_be_exempt},
    maps::{INGRESS_CONTROL, POLICED, POLICERS, RECEIVED, RECEIVED_OVERFLOW},
};

/// Where a received packet is seen.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// `cgroup_skb/ingress`: after the socket lookup, from the network header on.
    Cgroup,
    /// TC ingress of the interface: before the stack, link header included.
    Tc,
}

/// What to do with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Above its slice's policer.
    Drop,
}

#[cgroup_skb(ingress)]
fn bwmon_ingress(ctx: SkBuffContext) -> i32 {
    match receive(&ctx, ctx.skb.skb, Hook::Cgroup) {
        Verdict::Pass => 1,
        Verdict::Drop => 0,
    }
}

#[classifier]
fn bwmon_ingress_tc(ctx: TcContext) -> i32 {
    match receive(&ctx, ctx.skb.skb, Hook::Tc) {
        // "Next": let the programs after us run.
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// What the TC ingress program writes in `skb->tc_index` of every packet it sees when the
/// cgroup program is the one that counts: the packet came in through the accounted interface
/// *in its network namespace*. An ifindex alone does not say that: another namespace's
/// device may have the same index (6.6+ allocates them per namespace), and a socket there
/// would be charged for it. `tc_index` is kept with the packet up the stack and nothing else
/// on a host's ingress uses it (the dsmark and tcindex qdiscs that did are gone since 6.3).
const SEEN_ON_OUR_INTERFACE: u32 = 0xb3a0;

#[inline(always)]
fn receive<C: EbpfContext>(ctx: &C, skb: *mut __sk_buff, hook: Hook) -> Verdict {
    let by_prefix = XidSource::from_u32(setting!(xid_source)) == Some(XidSource::Source);
    // One hook counts each packet: the TC one for source-prefix slices, the cgroup one for
    // the others.
    if by_prefix != (hook == Hook::Tc) {
        if hook == Hook::Tc {
            // SAFETY: `tc_index` is a writable field of `__sk_buff` for TC programs.
            unsafe { (*skb).tc_index = SEEN_ON_OUR_INTERFACE };
        }
        return Verdict::Pass;
    }
    let link = setting!(link_header);
    let len = match hook {
        Hook::Tc => {
            // SAFETY: reading a field of the context.
            u64::from(unsafe { (*skb).len })
        }
        Hook::Cgroup => {
            let Some(control) = INGRESS_CONTROL.get(0) else {
                return Verdict::Pass;
            };
            // SAFETY: reading fields of the context: the device the packet arrived on, and
            // the TC program's mark that it came through ours.
            let (ifindex, seen) = unsafe { ((*skb).ifindex, (*skb).tc_index) };
            if ifindex != control.ifindex || seen != SEEN_ON_OUR_INTERFACE {
                return Verdict::Pass;
            }
            let link = if link == LINK_HEADER_UNKNOWN { 0 } else { link };
            // SAFETY: as above.
            u64::from(unsafe { (*skb).len }) + u64::from(link)
        }
    };
    let mut buf = MaybeUninit::<[u8; 40]>::uninit();
    let at = match hook {
        Hook::Tc => link,
        Hook::Cgroup => 0,
    };
    let ip = ip_header(ctx, skb, at, &mut buf);
    let xid = packet_xid(skb, ip, Direction::Ingress);
    let exempt = ip.is_some_and(|h| may_be_exempt(h.src_filter_bit()) && h.src_exempt());
    // The policer holds general downloads to the general ceiling; exempt ones have their own
    // budget and are not policed.
    if !exempt && police(xid, len) == Verdict::Drop {
        if let Some(p) = POLICED.get_ptr_mut(0) {
            // SAFETY: per-CPU value.
            unsafe { (*p).charge(len) };
        }
        return Verdict::Drop;
    }
    let counters = match received(xid) {
        Some(p) => p,
        None => {
            diag(ctx, Diag::MapFull { xid });
            match RECEIVED_OVERFLOW.get_ptr_mut(0) {
                Some(p) => p,
                None => return Verdict::Pass,
            }
        }
    };
    // SAFETY: per-CPU value: no other writer on this CPU while we run.
    let c = unsafe { &mut *counters };
    if exempt {
        c.exempt.charge(len);
    } else {
        c.general.charge(len);
    }
    Verdict::Pass
}

/// The xid's received counters, inserted at its first packet; `None` when the hash is full.
#[inline(always)]
fn received(xid: u32) -> Option<*mut XidCounters> {
    if let Some(p) = RECEIVED.get_ptr_mut(&xid) {
        return Some(p);
    }
    // Racing CPUs may both insert: the loser's insert fails and its lookup finds the key.
    let _ = RECEIVED.insert(&xid, &XidCounters::default(), BPF_NOEXIST);
    RECEIVED.get_ptr_mut(&xid)
}

/// Takes `len` bytes from the xid's token bucket, if it has one: `Drop` when they are not
/// there.
#[inline(always)]
fn police(xid: u32, len: u64) -> Verdict {
    let Some(p) = POLICERS.get_ptr_mut(&xid) else {
        return Verdict::Pass;
    };
    // SAFETY: a value of the hash, valid while we run (entries are not preallocated, and RCU
    // keeps a removed one alive until we are done).
    let p = unsafe { &mut *p };
    if p.rate == 0 {
        return Verdict::Pass;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // At most a second's refill: no overflow, and a bucket is never more than full.
    let elapsed = now.saturating_sub(p.last_ns).min(1_000_000_000);
    let tokens = (p.tokens + elapsed * p.rate / 1_000_000_000).min(p.burst);
    p.last_ns = now;
    if tokens < len {
        p.tokens = tokens;
        return Verdict::Drop;
    }
    p.tokens = tokens - len;
    Verdict::Pass
}
