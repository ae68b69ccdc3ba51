//! The loader's settings: a read-only global written before the programs load, read field by
//! field on the hot path.

use bwmon_common::{KernelOffsets, LINK_HEADER_UNKNOWN, Settings, XidSource};

/// Written by the loader before the program is loaded (read-only global).
#[unsafe(no_mangle)]
pub(crate) static BWMON_SETTINGS: Settings = Settings {
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

#[inline(always)]
pub(crate) fn settings() -> Settings {
    // SAFETY: a plain read of a global the loader wrote; volatile so the compiler does not fold
    // the initial value in.
    unsafe { core::ptr::read_volatile(&BWMON_SETTINGS) }
}

/// One field of the settings, read alone: the hot path copies 4 bytes, not the whole struct.
macro_rules! setting {
    ($field:ident) => {
        // SAFETY: as in `settings`.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!($crate::settings::BWMON_SETTINGS.$field))
        }
    };
}
