//! Types shared by the kernel programs (`bwmon-ebpf`) and the agent: map names, keys and values.
//!
//! Everything here is `#[repr(C)]` with explicit integer fields and padding (no `bool`), so the
//! kernel and user space agree on layout byte for byte.
#![no_std]
#![deny(missing_docs)]

/// Names of the maps and globals in the eBPF object. The agent pins maps under these names.
pub mod names {
    /// Array indexed by xid below [`CLASS_ARRAY_XIDS`](crate::CLASS_ARRAY_XIDS):
    /// [`XidEntry`](crate::XidEntry), all zero where the agent has nothing for the xid. Most
    /// hosts' uids are below it, and an array lookup is a bounds check where a hash lookup
    /// hashes. Written by the agent only.
    pub const XID_ARRAY: &str = "BWMON_XID_ARRAY";
    /// Hash (not preallocated): xid → [`XidEntry`](crate::XidEntry) for xids from
    /// [`CLASS_ARRAY_XIDS`](crate::CLASS_ARRAY_XIDS) up. Written by the agent only.
    pub const XID_HASH: &str = "BWMON_XID_HASH";
    /// Per-CPU array of [`COUNTER_SLOTS`](crate::COUNTER_SLOTS) dense counter slots:
    /// [`XidCounters`](crate::XidCounters) of bytes offered at the egress hook by the xid
    /// whose [`XidEntry::slot`](crate::XidEntry::slot) it is. Slot 0 is never given: it means
    /// "no slot".
    pub const SLOTS: &str = "BWMON_SLOTS";
    /// Per-CPU hash (not preallocated: memory only for xids seen): xid →
    /// [`XidCounters`](crate::XidCounters) of bytes offered by xids without a slot. An xid's
    /// offered bytes are its slot plus its entry here, if any: an xid given a slot keeps what it
    /// counted here before.
    pub const UNSLOTTED: &str = "BWMON_UNSLOTTED";
    /// Per-CPU array with one slot: offered bytes of xids that found no room in [`UNSLOTTED`].
    pub const OFFERED_OVERFLOW: &str = "BWMON_OFFERED_OVERFLOW";
    /// Array (shared by the CPUs, added to atomically: drops are rare) indexed by HTB minor of
    /// bwmon's `1:` tree: [`Counter`](crate::Counter) of the bytes the qdisc (or a later tc
    /// program) dropped before they left. A slice is charged what it offered minus what was
    /// dropped: what HTB sent.
    pub const DROPS: &str = "BWMON_DROPS";
    /// Array of [`SEEN_CHUNK`](crate::SEEN_CHUNK)-byte chunks, a byte per HTB minor: non-zero
    /// once the drop program counted a drop there, so the agent reads only those slots of
    /// [`DROPS`]. Only the drop program writes it (a byte each, so no write can undo
    /// another).
    pub const DROPS_SEEN: &str = "BWMON_DROPS_SEEN";
    /// Array with one [`DropControl`](crate::DropControl).
    pub const DROP_CONTROL: &str = "BWMON_DROP_CONTROL";
    /// Hash made by the agent when it takes over from an older layout: xid →
    /// [`XidCounters`](crate::XidCounters), what the older maps had counted, frozen. Pinned
    /// only once complete, so its pin says the older maps are folded in.
    pub const CARRIED: &str = "BWMON_CARRIED";
    /// Like [`CARRIED`], for drops: HTB minor → [`Counter`](crate::Counter).
    pub const CARRIED_DROPS: &str = "BWMON_CARRIED_DROPS";
    /// Array with one [`Lineage`](crate::Lineage), made and pinned with [`CARRIED`].
    pub const LINEAGE: &str = "BWMON_LINEAGE";
    /// LPM trie of exempt IPv4 destinations.
    pub const EXEMPT_V4: &str = "BWMON_EXEMPT_V4";
    /// LPM trie of exempt IPv6 destinations.
    pub const EXEMPT_V6: &str = "BWMON_EXEMPT_V6";
    /// Array of `u64` words: a bitmap of the leading address bits any exempt prefix covers
    /// (see [`exempt_filter_bit_v4`](crate::exempt_filter_bit_v4) and
    /// [`exempt_filter_bit_v6`](crate::exempt_filter_bit_v6)). A destination whose bit is clear
    /// cannot be exempt, and the tries are not searched for it.
    pub const EXEMPT_FILTER: &str = "BWMON_EXEMPT_FILTER";
    /// LPM trie: IPv4 source prefix → xid.
    pub const SOURCE_V4: &str = "BWMON_SOURCE_V4";
    /// LPM trie: IPv6 source prefix → xid.
    pub const SOURCE_V6: &str = "BWMON_SOURCE_V6";
    /// The drop program (BTF tracepoint `skb:kfree_skb`).
    pub const DROP: &str = "bwmon_drop";
    /// Hash (not preallocated): cgroup v2 id (the inode number of the cgroup's directory) →
    /// xid of the cgroup slice it is. Written by the agent only.
    pub const CGROUP_XIDS: &str = "BWMON_CGROUP_XIDS";
    /// Array with one `u32`: bit `L` set when some tenant cgroup is at level `L` of the
    /// hierarchy (the root is level 0), for `L` from 1 to
    /// [`MAX_CGROUP_LEVEL`](crate::MAX_CGROUP_LEVEL). Zero: no cgroup slices, and the
    /// classifier reads no socket's cgroup.
    pub const CGROUP_LEVELS: &str = "BWMON_CGROUP_LEVELS";
    /// Read-only global [`Settings`](crate::Settings) written by the loader.
    pub const SETTINGS: &str = "BWMON_SETTINGS";
    /// The classifier program (TC egress).
    pub const CLASSIFIER: &str = "bwmon_classify";
    /// Per-CPU hash (not preallocated: memory only for xids that received): xid →
    /// [`XidCounters`](crate::XidCounters) of bytes *received* by the xid, split by the
    /// packet's source address against the exempt prefixes. A received byte is one of the
    /// packet as the stack delivered it plus its link header: IP length + link header, what
    /// the egress side's wire length is for a packet sent. Bytes the policer dropped are not
    /// in it.
    pub const RECEIVED: &str = "BWMON_RECEIVED";
    /// Per-CPU array with one slot: received bytes of xids that found no room in
    /// [`RECEIVED`].
    pub const RECEIVED_OVERFLOW: &str = "BWMON_RECEIVED_OVERFLOW";
    /// Array with one [`IngressControl`](crate::IngressControl): which device's packets the
    /// ingress programs count.
    pub const INGRESS_CONTROL: &str = "BWMON_INGRESS_CONTROL";
    /// Hash (not preallocated): xid → [`Policer`](crate::Policer), the token bucket a capped
    /// slice's downloads are held to. Written by the agent (rate, burst), updated by the
    /// ingress programs (tokens, time).
    pub const POLICERS: &str = "BWMON_POLICERS";
    /// Per-CPU array with one [`Counter`](crate::Counter): what the policers dropped.
    pub const POLICED: &str = "BWMON_POLICED";
    /// The ingress counter for uid and mark slices (`cgroup_skb/ingress` on the cgroup v2
    /// root: it sees a packet after the socket lookup, with the receiving socket's owner).
    pub const INGRESS_CGROUP: &str = "bwmon_ingress";
    /// The ingress counter for source-prefix slices (TC ingress of the interface, keyed by the
    /// packet's *destination* address).
    pub const INGRESS_TC: &str = "bwmon_ingress_tc";
}

/// The maps the layouts before counter slots pinned (counters for every possible xid and
/// minor, per CPU), which a new load folds into [`names::CARRIED`] and
/// [`names::CARRIED_DROPS`] and then unpins. Their names and sizes, for reading them (and for
/// tests that make them).
pub mod legacy {
    /// Per-CPU hash (65,536 entries, preallocated): xid → [`XidCounters`](crate::XidCounters).
    /// The oldest layout counted every xid here; the next only xids from 65,536 up.
    pub const OFFERED: &str = "BWMON_OFFERED";
    /// Per-CPU array indexed by xid below 65,536: [`XidCounters`](crate::XidCounters).
    pub const OFFERED_ARRAY: &str = "BWMON_OFFERED_ARRAY";
    /// Array of [`SEEN_CHUNK`](crate::SEEN_CHUNK)-byte chunks, a byte per slot of
    /// [`OFFERED_ARRAY`] the classifier counted in.
    pub const OFFERED_SEEN: &str = "BWMON_OFFERED_SEEN";
    /// Per-CPU array indexed by HTB minor: [`Counter`](crate::Counter) of bytes dropped.
    pub const DROPPED: &str = "BWMON_DROPPED";
    /// Like [`OFFERED_SEEN`], for [`DROPPED`].
    pub const DROPPED_SEEN: &str = "BWMON_DROPPED_SEEN";
    /// Hash (65,536 entries, preallocated): xid → [`ClassIds`](crate::ClassIds).
    pub const XID_CLASS: &str = "BWMON_XID_CLASS";
    /// Array indexed by xid below 65,536: [`ClassIds`](crate::ClassIds).
    pub const XID_CLASS_ARRAY: &str = "BWMON_XID_CLASS_ARRAY";
    /// Entries of every map above (slots of the arrays, capacity of the hashes).
    pub const ENTRIES: u32 = 65_536;
    /// Every name above.
    pub const ALL: [&str; 7] = [
        OFFERED,
        OFFERED_ARRAY,
        OFFERED_SEEN,
        DROPPED,
        DROPPED_SEEN,
        XID_CLASS,
        XID_CLASS_ARRAY,
    ];
}

/// Capacity of the per-xid hashes ([`names::UNSLOTTED`], [`names::XID_HASH`]). Xids beyond it
/// are counted in the overflow slot.
pub const MAX_XIDS: u32 = 65_536;
/// Xids below this find their [`XidEntry`] in [`names::XID_ARRAY`], the rest in
/// [`names::XID_HASH`]. An array lookup is a bounds check the verifier inlines; a hash lookup
/// is a call that hashes.
pub const CLASS_ARRAY_XIDS: u32 = 65_536;
/// Counter slots in [`names::SLOTS`] (slot 0 unused): the xids counted without a hash call.
/// 32 bytes per slot per CPU: 256 KiB per CPU.
pub const COUNTER_SLOTS: u32 = 8_192;
/// Slots of the dropped-bytes array: one per possible HTB minor.
pub const MAX_MINORS: u32 = 65_536;
/// Bytes per entry of the seen maps.
pub const SEEN_CHUNK: u32 = 4096;
/// Byte 0 of a seen map made after its array had already counted (its pin was lost): the map
/// cannot say which slots are used, and the agent reads the array whole. The programs only
/// ever write 1 into a byte that is 0.
pub const SEEN_INCOMPLETE: u8 = 2;
/// `BPF_F_NO_PREALLOC`: a hash whose entries are allocated when inserted.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Capacity of [`names::CGROUP_XIDS`]: tenant cgroups.
pub const MAX_CGROUPS: u32 = 65_536;
/// The deepest level a tenant cgroup may be at (`/a/b/c` is level 3): the classifier asks
/// for the socket's ancestor at each configured level, deepest first, at most this many.
pub const MAX_CGROUP_LEVEL: u32 = 16;

/// Capacity of each exempt-destination trie (one per address family).
pub const MAX_EXEMPT_PREFIXES: u32 = 16_384;
/// Capacity of each source-prefix trie (one per address family), for `xid_source = "source"`.
pub const MAX_SOURCE_PREFIXES: u32 = 65_536;

/// Words of the exempt filter: 256 bits for the first octet of IPv4 destinations, then 65,536
/// bits for the first 16 bits of IPv6 ones.
pub const EXEMPT_FILTER_WORDS: u32 = 4 + 1024;

/// The exempt filter's word and bit for an IPv4 destination's first octet.
#[inline(always)]
pub fn exempt_filter_bit_v4(first_octet: u8) -> (u32, u64) {
    (u32::from(first_octet) >> 6, 1 << (first_octet & 63))
}

/// The exempt filter's word and bit for an IPv6 destination's first 16 bits.
#[inline(always)]
pub fn exempt_filter_bit_v6(first_16: u16) -> (u32, u64) {
    (4 + (u32::from(first_16) >> 6), 1 << (first_16 & 63))
}

/// The root slice's xid (PlanetLab's `root`).
pub const ROOT_XID: u32 = 0;

/// HTB handle major of bwmon's root qdisc (`1:`).
pub const HTB_MAJOR: u32 = 1;
/// Minor of the default leaf for general traffic of unknown xids (`1:2`), also the qdisc default.
pub const DEFAULT_GENERAL_MINOR: u32 = 0x2;
/// Minor of the default leaf for exempt traffic of unknown xids (`1:3`).
pub const DEFAULT_EXEMPT_MINOR: u32 = 0x3;

/// Builds a tc handle `major:minor` as the kernel stores it in `skb->priority`.
pub const fn tc_handle(major: u32, minor: u32) -> u32 {
    (major << 16) | (minor & 0xFFFF)
}

/// The HTB class ids (`skb->priority` values) of one slice's two leaves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassIds {
    /// Leaf for general traffic, as `major << 16 | minor`.
    pub general: u32,
    /// Leaf for exempt traffic, as `major << 16 | minor`.
    pub exempt: u32,
}

impl ClassIds {
    /// No leaves of the xid's own: its packets go to the default leaves.
    pub const NONE: ClassIds = ClassIds {
        general: 0,
        exempt: 0,
    };

    /// Where packets of xids without a slice go.
    pub const DEFAULT: ClassIds = ClassIds {
        general: tc_handle(HTB_MAJOR, DEFAULT_GENERAL_MINOR),
        exempt: tc_handle(HTB_MAJOR, DEFAULT_EXEMPT_MINOR),
    };
}

/// What the agent keeps for an xid in [`names::XID_ARRAY`] or [`names::XID_HASH`]: its leaves
/// and its counter slot, found by one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XidEntry {
    /// Its leaves; [`ClassIds::NONE`] where it has none (the default leaves then).
    pub classes: ClassIds,
    /// Its slot in [`names::SLOTS`]; 0: none, counted in [`names::UNSLOTTED`].
    pub slot: u32,
    /// Zero; room for what later programs look up per xid.
    pub _reserved: u32,
}

impl XidEntry {
    /// An entry that says nothing (the same as no entry).
    pub const EMPTY: XidEntry = XidEntry {
        classes: ClassIds::NONE,
        slot: 0,
        _reserved: 0,
    };

    /// This entry with counter slot `slot`.
    pub const fn with_slot(self, slot: u32) -> XidEntry {
        XidEntry { slot, ..self }
    }
}

/// Value of [`names::LINEAGE`]: the kernel ids of the older layout's counter maps whose final
/// counts [`names::CARRIED`] holds (0: the map was not there). The epochs an older bwmon saved
/// are computed from them (this boot's), so that a state saved under one goes on with these
/// counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    /// [`legacy::OFFERED`]'s id.
    pub offered: u32,
    /// [`legacy::DROPPED`]'s id.
    pub dropped: u32,
    /// [`legacy::OFFERED_ARRAY`]'s id.
    pub offered_array: u32,
    /// Padding (keeps the layout explicit).
    pub _pad: u32,
}

/// Value of [`names::INGRESS_CONTROL`]: the device whose received packets are counted. The
/// `cgroup_skb` program runs for every socket's packets on the host; it counts those that
/// arrived on this device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressControl {
    /// ifindex of the accounted interface (0: count nothing).
    pub ifindex: u32,
    /// Padding (keeps the layout explicit).
    pub _pad: u32,
}

/// Value of [`names::POLICERS`]: one slice's download token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policer {
    /// Bytes per second it lets through (the slice's ceiling ÷ 8); 0: no policing.
    pub rate: u64,
    /// Bytes the bucket holds at most.
    pub burst: u64,
    /// Bytes in the bucket at `last_ns`.
    pub tokens: u64,
    /// `bpf_ktime_get_ns` of the last refill.
    pub last_ns: u64,
}

/// Where the classifier takes a packet's xid from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XidSource {
    /// The uid owning the sending socket (`bpf_get_socket_uid`).
    Uid = 0,
    /// `skb->mark`.
    Mark = 1,
    /// The source address, looked up in the source-prefix tries.
    Source = 2,
}

impl XidSource {
    /// Decodes the wire value; unknown values yield `None`.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Uid),
            1 => Some(Self::Mark),
            2 => Some(Self::Source),
            _ => None,
        }
    }
}

/// Load-time settings of the kernel programs, a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// This load's generation: the drop program counts only while [`names::DROP_CONTROL`]
    /// holds it, so exactly one loaded program counts a drop.
    pub generation: u64,
    /// A [`XidSource`] as `u32`.
    pub xid_source: u32,
    /// Non-zero: emit kernel-side diagnostics through aya-log.
    pub log_enabled: u32,
    /// Bytes of link-layer header before the network header on the accounted interface
    /// ([`ETH_HLEN`] on Ethernet, 0 on devices without one), or [`LINK_HEADER_UNKNOWN`]. With
    /// a known length the classifier reads the IP header straight from the packet.
    pub link_header: u32,
    /// Padding (keeps the layout explicit).
    pub _pad: u32,
    /// Kernel struct offsets, read from the running kernel's BTF at load time.
    pub offsets: KernelOffsets,
    /// Bitmap of the `enum skb_drop_reason` values that mean "dropped before leaving through
    /// the qdisc" (`QDISC_*`, tc egress), read from the kernel's BTF.
    pub drop_reasons: [u64; 4],
}

impl Settings {
    /// Whether drop reason `reason` is in [`Settings::drop_reasons`].
    #[inline(always)]
    pub fn counts_drop_reason(&self, reason: u32) -> bool {
        let word = (reason / 64) as usize;
        word < self.drop_reasons.len() && self.drop_reasons[word] & (1 << (reason % 64)) != 0
    }
}

/// Length of an Ethernet header.
pub const ETH_HLEN: u32 = 14;
/// [`Settings::link_header`] of a device type whose header length bwmon does not know: the
/// classifier copies the IP header with a helper that knows where it starts.
pub const LINK_HEADER_UNKNOWN: u32 = u32::MAX;

/// Value of [`names::DROP_CONTROL`]: which drop program counts, and for which device.
///
/// The device is here rather than in [`Settings`] so a kept program follows an interface that
/// was re-created (new ifindex) without being reloaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropControl {
    /// The [`Settings::generation`] of the program that counts.
    pub generation: u64,
    /// ifindex of the accounted interface.
    pub ifindex: u32,
    /// Inode number of its network namespace (ifindexes are per namespace).
    pub netns_inum: u32,
}

/// Byte offsets of the kernel struct fields the drop program reads. They differ between
/// kernel builds, so the agent reads them from `/sys/kernel/btf/vmlinux`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sk_buff.dev`
    pub skb_dev: u32,
    /// `sk_buff.priority`
    pub skb_priority: u32,
    /// `sk_buff.cb` + `qdisc_skb_cb.pkt_len`: the length the qdisc accounts.
    pub skb_pkt_len: u32,
    /// `net_device.ifindex`
    pub dev_ifindex: u32,
    /// `net_device.nd_net.net`
    pub dev_net: u32,
    /// `net.ns.inum`
    pub net_inum: u32,
}

/// Bytes and packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Bytes, as wire length (what HTB counts).
    pub bytes: u64,
    /// Packets.
    pub packets: u64,
}

impl Counter {
    /// Adds one packet of `len` bytes.
    #[inline(always)]
    pub fn charge(&mut self, len: u64) {
        self.bytes = self.bytes.wrapping_add(len);
        self.packets = self.packets.wrapping_add(1);
    }

    /// `self - other`, never below zero in either field.
    pub fn saturating_sub(self, other: Counter) -> Counter {
        Counter {
            bytes: self.bytes.saturating_sub(other.bytes),
            packets: self.packets.saturating_sub(other.packets),
        }
    }

    /// Sum of two counters (used to fold per-CPU values).
    pub fn merged(self, other: Counter) -> Counter {
        Counter {
            bytes: self.bytes.wrapping_add(other.bytes),
            packets: self.packets.wrapping_add(other.packets),
        }
    }
}

/// Counters of one xid, split by traffic class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XidCounters {
    /// Traffic to destinations outside the exempt prefixes.
    pub general: Counter,
    /// Traffic to the exempt prefixes.
    pub exempt: Counter,
}

impl XidCounters {
    /// Sum of two per-CPU values.
    pub fn merged(self, other: XidCounters) -> XidCounters {
        XidCounters {
            general: self.general.merged(other.general),
            exempt: self.exempt.merged(other.exempt),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::XidCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClassIds {}
    // SAFETY: as above (u64 first, then an even number of u32s: no padding).
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropControl {}
    // SAFETY: as above (two u32 pairs).
    unsafe impl aya::Pod for super::XidEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Lineage {}
    // SAFETY: as above (two u32s).
    unsafe impl aya::Pod for super::IngressControl {}
    // SAFETY: as above (four u64s).
    unsafe impl aya::Pod for super::Policer {}
}
