//! `bwmon_drop` (BTF tracepoint `skb:kfree_skb`): bytes steered into bwmon's tree and dropped
//! before they left, counted against their HTB minor.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use bwmon_common::HTB_MAJOR;

use crate::{
    maps::{DROP_CONTROL, DROPS, DROPS_SEEN, mark_seen},
    settings::settings,
};

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
