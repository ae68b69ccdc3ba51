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
// For `lock xadd` (see `drop::atomic_add`); aya-ebpf enables it too, hence RUSTC_BOOTSTRAP in the build.
#![feature(asm_experimental_arch)]

// The settings' macro first: the modules below use it.
#[macro_use]
mod settings;
mod cgroup;
mod classify;
mod diag;
mod drop;
mod header;
mod ingress;
mod maps;

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
