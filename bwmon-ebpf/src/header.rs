//! Reading a packet's IP header: straight from the packet where the link header's length is
//! known, copied by a helper otherwise; the exempt tries and source tries looked up from it.

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, bpf_hdr_start_off::BPF_HDR_START_NET},
    helpers::generated::bpf_skb_load_bytes_relative,
    maps::lpm_trie::Key,
};
use core::mem::MaybeUninit;

use bwmon_common::{ETH_HLEN, exempt_filter_bit_v4, exempt_filter_bit_v6};

use crate::{
    diag::{Diag, diag},
    maps::{EXEMPT_FILTER, EXEMPT_V4, EXEMPT_V6, SOURCE_V4, SOURCE_V6},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Where a packet's IP header can be read: straight in the packet, or in a stack copy.
#[derive(Clone, Copy)]
pub(crate) struct IpHeader {
    /// Readable for 20 bytes (IPv4) or 40 (IPv6).
    at: *const u8,
    v6: bool,
}

impl IpHeader {
    /// The destination address' first bits, for the exempt filter.
    #[inline(always)]
    pub(crate) fn filter_bit(self) -> (u32, u64) {
        // SAFETY: within the header's readable bytes.
        unsafe {
            if self.v6 {
                exempt_filter_bit_v6(u16::from_be_bytes(*(self.at.add(24) as *const [u8; 2])))
            } else {
                exempt_filter_bit_v4(*self.at.add(16))
            }
        }
    }

    /// The source address' first bits, for the exempt filter (a received packet is exempt by
    /// where it came from).
    #[inline(always)]
    pub(crate) fn src_filter_bit(self) -> (u32, u64) {
        // SAFETY: within the header's readable bytes.
        unsafe {
            if self.v6 {
                exempt_filter_bit_v6(u16::from_be_bytes(*(self.at.add(8) as *const [u8; 2])))
            } else {
                exempt_filter_bit_v4(*self.at.add(12))
            }
        }
    }

    /// Whether the destination is in an exempt prefix.
    #[inline(always)]
    pub(crate) fn dst_exempt(self) -> bool {
        self.exempt(Addr::Dst)
    }

    /// Whether the source is in an exempt prefix.
    #[inline(always)]
    pub(crate) fn src_exempt(self) -> bool {
        self.exempt(Addr::Src)
    }

    #[inline(always)]
    fn exempt(self, which: Addr) -> bool {
        let (v4, v6) = which.offsets();
        // SAFETY: within the header's readable bytes; `[u8; N]` has no alignment.
        unsafe {
            if self.v6 {
                let a = *(self.at.add(v6) as *const [u8; 16]);
                EXEMPT_V6.get(Key::new(128, a)).is_some()
            } else {
                let a = *(self.at.add(v4) as *const [u8; 4]);
                EXEMPT_V4.get(Key::new(32, a)).is_some()
            }
        }
    }

    /// The xid of the source address' prefix (a packet sent by a source-prefix slice).
    #[inline(always)]
    pub(crate) fn src_xid(self) -> Option<u32> {
        self.prefix_xid(Addr::Src)
    }

    /// The xid of the destination address' prefix (a packet a source-prefix slice receives).
    #[inline(always)]
    pub(crate) fn dst_xid(self) -> Option<u32> {
        self.prefix_xid(Addr::Dst)
    }

    #[inline(always)]
    fn prefix_xid(self, which: Addr) -> Option<u32> {
        let (v4, v6) = which.offsets();
        // SAFETY: as above.
        unsafe {
            if self.v6 {
                let a = *(self.at.add(v6) as *const [u8; 16]);
                SOURCE_V6.get(Key::new(128, a)).copied()
            } else {
                let a = *(self.at.add(v4) as *const [u8; 4]);
                SOURCE_V4.get(Key::new(32, a)).copied()
            }
        }
    }
}

/// One of a header's two addresses.
#[derive(Clone, Copy)]
enum Addr {
    Src,
    Dst,
}

impl Addr {
    /// Its byte offset in an IPv4 header and in an IPv6 one.
    #[inline(always)]
    const fn offsets(self) -> (usize, usize) {
        match self {
            Addr::Src => (12, 8),
            Addr::Dst => (16, 24),
        }
    }
}

/// The IP header straight from the packet when the link header's length is known (on
/// Ethernet its type field must say `proto`), the header is in the linear part and of `proto`'s
/// version. `None`: ask the helper.
#[inline(always)]
fn direct_header(skb: *mut __sk_buff, link: u32, proto: u16, len: usize) -> Option<IpHeader> {
    // SAFETY: reading the context's packet pointers (the verifier tracks them).
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let link = match link {
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
    skb: *mut __sk_buff,
    proto: u16,
    len: usize,
    buf: &mut MaybeUninit<[u8; 40]>,
) -> Result<IpHeader, u8> {
    // SAFETY: the helper writes at most `len` ≤ 40 bytes into `buf`.
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            skb as *const _,
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
/// in the kernel log). `link`: the bytes before the network header at `skb->data` (the
/// device's link header at TC, 0 in a `cgroup_skb` program), or [`bwmon_common::LINK_HEADER_UNKNOWN`].
#[inline(always)]
pub(crate) fn ip_header<C: EbpfContext>(
    ctx: &C,
    skb: *mut __sk_buff,
    link: u32,
    buf: &mut MaybeUninit<[u8; 40]>,
) -> Option<IpHeader> {
    // SAFETY: reading a field of the context the kernel handed us.
    let proto = u16::from_be(unsafe { (*skb).protocol } as u16);
    let len = match proto {
        ETH_P_IP => 20,
        ETH_P_IPV6 => 40,
        _ => return None,
    };
    if let Some(h) = direct_header(skb, link, proto, len) {
        return Some(h);
    }
    match copied_header(skb, proto, len, buf) {
        Ok(h) => Some(h),
        Err(version) => {
            diag(ctx, Diag::UnexpectedPacket { proto, version });
            None
        }
    }
}

/// Whether the exempt filter has `bit` set in word `word` (unreadable: assume it may be).
#[inline(always)]
pub(crate) fn may_be_exempt((word, bit): (u32, u64)) -> bool {
    EXEMPT_FILTER.get(word).is_none_or(|w| w & bit != 0)
}
