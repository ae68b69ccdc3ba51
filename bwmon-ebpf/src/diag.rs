//! Kernel-side diagnostics through aya-log, when the operator turned them on.

use aya_ebpf::{EbpfContext, helpers::bpf_ktime_get_ns};
use aya_log_ebpf::warn;

use crate::maps::LOG_GATE;

/// Something worth telling the operator about.
pub(crate) enum Diag {
    /// The per-xid map is full; the packet went to the overflow slot.
    MapFull { xid: u32 },
    /// An IP ethertype with an unreadable header or another IP version.
    UnexpectedPacket { proto: u16, version: u8 },
}

/// Logs `d` through aya-log when diagnostics are on, at most once a second per CPU.
#[inline(always)]
pub(crate) fn diag<C: EbpfContext>(ctx: &C, d: Diag) {
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
