//! Tenant cgroups: the xid of the cgroup slice whose cgroup (or one below it) holds the
//! packet's socket.

use aya_ebpf::{bindings::__sk_buff, helpers::generated::bpf_skb_ancestor_cgroup_id};
use bwmon_common::MAX_CGROUP_LEVEL;

use crate::maps::{CGROUP_LEVELS, CGROUP_XIDS};

/// The xid of the tenant cgroup the packet's socket is in (that cgroup or any below it; the
/// deepest tenant cgroup when tenants nest), or `None`: no cgroup slices configured (one
/// inlined array read, no helper call), no full socket (forwarded traffic), or a socket in no
/// tenant cgroup.
#[inline(always)]
pub(crate) fn tenant_xid(skb: *mut __sk_buff) -> Option<u32> {
    let levels = *CGROUP_LEVELS.get(0)?;
    if levels == 0 {
        return None;
    }
    // Deepest first, a bounded loop: only the configured levels cost a helper call and a
    // lookup. Above the socket's own level the helper returns 0.
    let mut level = MAX_CGROUP_LEVEL;
    while level > 0 {
        if levels & (1 << level) != 0 {
            // SAFETY: `skb` is the program's context, as the helper requires.
            let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
            if id != 0 {
                // SAFETY: plain lookup; the value is copied out at once.
                if let Some(xid) = unsafe { CGROUP_XIDS.get(&id) } {
                    return Some(*xid);
                }
            }
        }
        level -= 1;
    }
    None
}
