//! bwmon's HTB tree on the egress of one interface, programmed over rtnetlink (no `tc`).
//!
//! ```text
//! 1: htb default 1:2
//! └─1:1     rate = exempt max
//!    ├─1:10  rate bwmin, ceil = node cap         general traffic of all slices
//!    │  ├─1:2    the default leaf (xids without a slice)
//!    │  └─1:xxxx one leaf per slice: rate = min rate, ceil = max rate or the lowered cap,
//!    │           quantum = share × 1600
//!    └─1:20  rate bwmin, ceil = exempt max       exempt traffic of all slices
//!       ├─1:3    the default exempt leaf
//!       └─1:xxxx one leaf per slice, same rules with the i2 attributes
//! ```
//!
//! Leaf minors are chosen by the caller (and remembered in its state), so any 32-bit xid fits.
//! A class is changed in place (`RTM_NEWTCLASS` with `NLM_F_REPLACE`): its counters and queue
//! are kept. Many operations go out in one `sendmsg` and their acknowledgements are matched
//! back to them, so an error names the operation and the class.

pub mod minors;
pub mod options;

use std::{collections::HashMap, io};

use bwmon_common::{DEFAULT_EXEMPT_MINOR, DEFAULT_GENERAL_MINOR, HTB_MAJOR};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage, TcOption, TcStats2},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tracing::{debug, info};

pub use options::{ClassParams, Psched};

use crate::{class::TrafficClass, units::BitsPerSec};

/// Minor of `1:1`, the class under the root that carries everything.
pub const TOP_MINOR: u16 = 0x1;
/// Minor of `1:10`, the parent of general leaves.
pub const GENERAL_MINOR: u16 = 0x10;
/// Minor of `1:20`, the parent of exempt leaves.
pub const EXEMPT_MINOR: u16 = 0x20;
/// The first minor the caller may give a slice's leaf.
pub const FIRST_LEAF_MINOR: u16 = 0x100;
/// The smallest rate bwmon ever sets (bwlimit's `bwmin`).
pub const BWMIN: BitsPerSec = BitsPerSec(1000);

const MAJOR: u16 = HTB_MAJOR as u16;

/// The parent class of a traffic class's leaves.
pub fn parent_minor(class: TrafficClass) -> u16 {
    match class {
        TrafficClass::General => GENERAL_MINOR,
        TrafficClass::Exempt => EXEMPT_MINOR,
    }
}

/// What failed, on which interface, operation and class.
#[derive(Debug, thiserror::Error)]
pub enum HtbError {
    /// The interface does not exist.
    #[error("looking up interface {iface} for its HTB tree")]
    Interface {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The netlink socket failed.
    #[error("netlink on {iface}: {source}")]
    Socket {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused an operation.
    #[error("{op} {class} on {iface}: {source}")]
    Kernel {
        /// Interface.
        iface: String,
        /// The operation ("add class", "delete class", "add qdisc", …).
        op: &'static str,
        /// The class or qdisc, as tc writes it ("1:1a3").
        class: String,
        /// The kernel's error (EINVAL, ENOENT, EEXIST, …).
        #[source]
        source: io::Error,
    },
    /// A root qdisc bwmon did not create is in place.
    #[error(
        "{iface} already has a root qdisc bwmon did not create ({kind} {handle}); remove it or set `take_over_root_qdisc = true`"
    )]
    ForeignRoot {
        /// Interface.
        iface: String,
        /// Its kind ("fq_codel", "htb", …).
        kind: String,
        /// Its handle ("8001:").
        handle: String,
    },
    /// The kernel sent something this module cannot read.
    #[error("unexpected netlink reply on {iface}: {what}")]
    Protocol {
        /// Interface.
        iface: String,
        /// What was wrong.
        what: String,
    },
}

type Result<T> = std::result::Result<T, HtbError>;

/// Rates of the tree's fixed classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeSpec {
    /// Ceiling of all general traffic (`node_cap`).
    pub node_cap: BitsPerSec,
    /// Ceiling of all exempt traffic, and the rate of `1:1` (`exempt_max`).
    pub exempt_max: BitsPerSec,
}

impl TreeSpec {
    /// The fixed classes: `1:1`, `1:10`, `1:20`.
    fn inner_classes(&self) -> [(u16, u16, ClassParams); 3] {
        let top = self.exempt_max.max(self.node_cap);
        [
            (
                TOP_MINOR,
                0,
                ClassParams {
                    rate: top,
                    ceil: top,
                    quantum: 1600,
                },
            ),
            (
                GENERAL_MINOR,
                TOP_MINOR,
                ClassParams {
                    rate: BWMIN,
                    ceil: self.node_cap,
                    quantum: 1600,
                },
            ),
            (
                EXEMPT_MINOR,
                TOP_MINOR,
                ClassParams {
                    rate: BWMIN,
                    ceil: self.exempt_max,
                    quantum: 1600,
                },
            ),
        ]
    }

    /// The default leaves (xids without a slice): min rate, full ceiling.
    pub fn default_leaves(&self) -> [Leaf; 2] {
        [
            Leaf {
                minor: DEFAULT_GENERAL_MINOR as u16,
                class: TrafficClass::General,
                params: ClassParams {
                    rate: BWMIN,
                    ceil: self.node_cap,
                    quantum: 1600,
                },
            },
            Leaf {
                minor: DEFAULT_EXEMPT_MINOR as u16,
                class: TrafficClass::Exempt,
                params: ClassParams {
                    rate: BWMIN,
                    ceil: self.exempt_max,
                    quantum: 1600,
                },
            },
        ]
    }
}

/// One leaf class: a slice's (or the default's) traffic of one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Its minor under `1:`.
    pub minor: u16,
    /// General (under `1:10`) or exempt (under `1:20`).
    pub class: TrafficClass,
    /// Rate, ceil and quantum.
    pub params: ClassParams,
}

/// A change to the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the leaf, or change it in place (counters and queue kept).
    Upsert(Leaf),
    /// Delete the class with this minor.
    Remove(u16),
}

/// A class as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    /// Minor under `1:`.
    pub minor: u16,
    /// Minor of its parent (0 for a class directly under the qdisc).
    pub parent_minor: u16,
    /// Rate, ceil, quantum.
    pub params: ClassParams,
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent (GSO segments, as HTB counts them).
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Packets queued now.
    pub qlen: u32,
}

/// The leaves in `listed` that are in bwmon's tree but in neither `wanted` nor the fixed
/// classes: classes that belong to no slice, to be removed.
pub fn orphans(listed: &[ClassInfo], wanted: &std::collections::HashSet<u16>) -> Vec<u16> {
    let fixed = [
        TOP_MINOR,
        GENERAL_MINOR,
        EXEMPT_MINOR,
        DEFAULT_GENERAL_MINOR as u16,
        DEFAULT_EXEMPT_MINOR as u16,
    ];
    let mut out: Vec<u16> = listed
        .iter()
        .map(|c| c.minor)
        .filter(|m| !fixed.contains(m) && !wanted.contains(m))
        .collect();
    out.sort_unstable();
    out
}

/// The outcome of [`Htb::ensure_tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The root qdisc was (re)created: every slice's leaves must be added again.
    pub created: bool,
    /// The tree's classes after the call, with rates and counters.
    pub classes: Vec<ClassInfo>,
}

/// What sits at the root of the interface's egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// The kernel's default (handle `0:`, e.g. noqueue or pfifo_fast): free to replace.
    Default,
    /// bwmon's HTB tree.
    Ours,
    /// Someone else's qdisc.
    Foreign {
        /// Kind.
        kind: String,
        /// Handle, as tc writes it.
        handle: String,
    },
}

/// The HTB tree of one interface.
pub struct Htb {
    iface: String,
    socket: Socket,
    seq: u32,
    clock: Psched,
}

impl std::fmt::Debug for Htb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htb")
            .field("iface", &self.iface)
            .finish_non_exhaustive()
    }
}

fn handle(minor: u16) -> TcHandle {
    TcHandle {
        major: MAJOR,
        minor,
    }
}

fn show(h: TcHandle) -> String {
    format!("{:x}:{:x}", h.major, h.minor)
}

/// The tc handle text of one of bwmon's classes ("1:1a3").
pub fn class_name(minor: u16) -> String {
    show(handle(minor))
}

/// One request in a batch, kept to name it in errors.
struct Request {
    op: &'static str,
    target: String,
    message: NetlinkMessage<RouteNetlinkMessage>,
}

impl Htb {
    /// Opens a netlink socket for `iface`.
    ///
    /// # Errors
    /// The socket cannot be opened, or the psched clock cannot be read.
    pub fn open(iface: &str) -> Result<Self> {
        let sock_err = |source| HtbError::Socket {
            iface: iface.to_owned(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(sock_err)?;
        socket.bind_auto().map_err(sock_err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(sock_err)?;
        let _ = socket.set_ext_ack(true);
        // Acknowledgements without a copy of each request: a batch's acks must fit the
        // receive buffer until they are read.
        socket.set_cap_ack(true).map_err(sock_err)?;
        let _ = socket.set_rx_buf_sz(4 << 20);
        let clock = Psched::from_kernel().map_err(|e| sock_err(io::Error::other(e)))?;
        Ok(Self {
            iface: iface.to_owned(),
            socket,
            seq: 0,
            clock,
        })
    }

    /// The interface.
    pub fn interface(&self) -> &str {
        &self.iface
    }

    fn ifindex(&self) -> Result<i32> {
        let index = crate::interface::index(&self.iface).map_err(|source| HtbError::Interface {
            iface: self.iface.clone(),
            source,
        })?;
        Ok(index as i32)
    }

    fn tc_message(&self, ifindex: i32, handle: TcHandle, parent: TcHandle) -> TcMessage {
        let mut msg = TcMessage::default();
        msg.header.index = ifindex;
        msg.header.handle = handle;
        msg.header.parent = parent;
        msg
    }

    fn request(
        &mut self,
        flags: u16,
        payload: RouteNetlinkMessage,
    ) -> NetlinkMessage<RouteNetlinkMessage> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        msg
    }

    fn htb_attrs(options: Vec<(u16, Vec<u8>)>) -> Vec<TcAttribute> {
        let opts = options
            .into_iter()
            .map(|(kind, value)| TcOption::Other(netlink_packet_core::DefaultNla::new(kind, value)))
            .collect();
        vec![TcAttribute::Kind("htb".into()), TcAttribute::Options(opts)]
    }

    fn class_request(&mut self, ifindex: i32, minor: u16, parent: u16, p: &ClassParams) -> Request {
        let parent = if parent == 0 {
            TcHandle {
                major: MAJOR,
                minor: 0,
            }
        } else {
            handle(parent)
        };
        let mut msg = self.tc_message(ifindex, handle(minor), parent);
        msg.attributes = Self::htb_attrs(options::class_options(p, &self.clock));
        Request {
            op: "add or change class",
            target: class_name(minor),
            message: self.request(
                NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                RouteNetlinkMessage::NewTrafficClass(msg),
            ),
        }
    }

    /// What is at the root of the interface's egress now.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn root(&mut self) -> Result<Root> {
        Ok(self.root_and_classes()?.0)
    }

    /// What is at the root, with the classes of bwmon's tree when it is an HTB `1:` (listed
    /// once, for the check and for the caller).
    fn root_and_classes(&mut self) -> Result<(Root, Vec<ClassInfo>)> {
        let ifindex = self.ifindex()?;
        let msg = self.tc_message(ifindex, TcHandle::UNSPEC, TcHandle::UNSPEC);
        let req = self.request(NLM_F_DUMP, RouteNetlinkMessage::GetQueueDiscipline(msg));
        let qdiscs = self.dump(req)?;
        let root = qdiscs
            .into_iter()
            .find(|m| m.header.index == ifindex && m.header.parent == TcHandle::ROOT);
        let Some(root) = root else {
            return Ok((Root::Default, Vec::new()));
        };
        let kind = root
            .attributes
            .iter()
            .find_map(|a| match a {
                TcAttribute::Kind(k) => Some(k.clone()),
                _ => None,
            })
            .unwrap_or_default();
        if root.header.handle.major == 0 {
            return Ok((Root::Default, Vec::new()));
        }
        if kind == "htb"
            && root.header.handle
                == (TcHandle {
                    major: MAJOR,
                    minor: 0,
                })
        {
            let classes = self.list()?;
            let has = |minor: u16, parent: u16| {
                classes
                    .iter()
                    .any(|c| c.minor == minor && c.parent_minor == parent)
            };
            if has(TOP_MINOR, 0) && has(GENERAL_MINOR, TOP_MINOR) && has(EXEMPT_MINOR, TOP_MINOR) {
                return Ok((Root::Ours, classes));
            }
        }
        let foreign = Root::Foreign {
            kind,
            handle: format!("{:x}:", root.header.handle.major),
        };
        Ok((foreign, Vec::new()))
    }

    /// Makes sure bwmon's tree is installed: the root qdisc, `1:1`, `1:10`, `1:20` and the
    /// default leaves, with `spec`'s rates; only what is missing or different is written.
    /// Returns whether the qdisc had to be (re)created (then every slice's leaves are gone and
    /// must be added again) and the tree's classes as they are now.
    ///
    /// # Errors
    /// A foreign root qdisc (unless `take_over`), or a kernel refusal.
    pub fn ensure_tree(&mut self, spec: &TreeSpec, take_over: bool) -> Result<Installed> {
        let ifindex = self.ifindex()?;
        let (root, classes) = self.root_and_classes()?;
        let mut batch = Vec::new();
        let created = match root {
            Root::Ours => false,
            Root::Foreign { kind, handle } if !take_over => {
                return Err(HtbError::ForeignRoot {
                    iface: self.iface.clone(),
                    kind,
                    handle,
                });
            }
            Root::Foreign { .. } | Root::Default => {
                let mut msg = self.tc_message(
                    ifindex,
                    TcHandle {
                        major: MAJOR,
                        minor: 0,
                    },
                    TcHandle::ROOT,
                );
                msg.attributes = Self::htb_attrs(options::qdisc_options(u32::from(
                    DEFAULT_GENERAL_MINOR as u16,
                )));
                // Replacing whatever default qdisc is there (or a foreign one on take-over).
                batch.push(Request {
                    op: "add root qdisc",
                    target: format!("{MAJOR:x}:"),
                    message: self.request(
                        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                        RouteNetlinkMessage::NewQueueDiscipline(msg),
                    ),
                });
                true
            }
        };
        let fixed = spec.inner_classes().into_iter().chain(
            spec.default_leaves()
                .map(|l| (l.minor, parent_minor(l.class), l.params)),
        );
        for (minor, parent, params) in fixed {
            let current = classes.iter().find(|c| c.minor == minor);
            if !current
                .is_some_and(|c| c.parent_minor == parent && c.params.same_in_kernel(&params))
            {
                batch.push(self.class_request(ifindex, minor, parent, &params));
            }
        }
        if batch.is_empty() {
            return Ok(Installed { created, classes });
        }
        self.send_batch(batch)?;
        if created {
            info!(iface = %self.iface, "installed bwmon's HTB tree");
        }
        Ok(Installed {
            created,
            classes: self.list()?,
        })
    }

    /// Carries out `ops` in one batch. Every operation is attempted; the first failure is
    /// returned after all were sent (the others still took effect).
    ///
    /// # Errors
    /// A kernel refusal, naming the operation and class.
    pub fn apply(&mut self, ops: &[Op]) -> Result<()> {
        let ifindex = self.ifindex()?;
        let mut batch = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Upsert(leaf) => {
                    batch.push(self.class_request(
                        ifindex,
                        leaf.minor,
                        parent_minor(leaf.class),
                        &leaf.params,
                    ));
                }
                Op::Remove(minor) => {
                    let msg = self.tc_message(ifindex, handle(*minor), TcHandle::UNSPEC);
                    let message =
                        self.request(NLM_F_ACK, RouteNetlinkMessage::DelTrafficClass(msg));
                    batch.push(Request {
                        op: "delete class",
                        target: class_name(*minor),
                        message,
                    });
                }
            }
        }
        self.send_batch(batch)
    }

    /// Every class of bwmon's tree (handles `1:*`), with rates and counters.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn list(&mut self) -> Result<Vec<ClassInfo>> {
        let ifindex = self.ifindex()?;
        let msg = self.tc_message(ifindex, TcHandle::UNSPEC, TcHandle::UNSPEC);
        let req = self.request(NLM_F_DUMP, RouteNetlinkMessage::GetTrafficClass(msg));
        let mut out = Vec::new();
        for m in self.dump(req)? {
            if m.header.index != ifindex || m.header.handle.major != MAJOR {
                continue;
            }
            let mut info = ClassInfo {
                minor: m.header.handle.minor,
                parent_minor: if m.header.parent.major == MAJOR {
                    m.header.parent.minor
                } else {
                    0
                },
                params: ClassParams {
                    rate: BitsPerSec(0),
                    ceil: BitsPerSec(0),
                    quantum: 0,
                },
                bytes: 0,
                packets: 0,
                drops: 0,
                qlen: 0,
            };
            for attr in &m.attributes {
                match attr {
                    TcAttribute::Options(opts) => {
                        // netlink-packet-route does not know HTB: it hands the whole nest
                        // over as one opaque TCA_OPTIONS attribute.
                        let raw: Vec<(u16, Vec<u8>)> = opts
                            .iter()
                            .flat_map(|o| {
                                let mut v = vec![0u8; o.value_len()];
                                o.emit_value(&mut v);
                                options::parse_nested(&v)
                            })
                            .collect();
                        if let Some(p) = options::parse_class_options(&raw) {
                            info.params = p;
                        }
                    }
                    TcAttribute::Stats2(stats) => {
                        for s in stats {
                            match s {
                                TcStats2::Basic(b) => {
                                    info.bytes = b.bytes;
                                    info.packets = u64::from(b.packets);
                                }
                                TcStats2::Queue(q) => {
                                    info.drops = u64::from(q.drops);
                                    info.qlen = q.qlen;
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.push(info);
        }
        Ok(out)
    }

    /// Removes bwmon's root qdisc (and with it the whole tree), if it is there.
    ///
    /// # Errors
    /// A kernel refusal other than "not there".
    pub fn remove_tree(&mut self) -> Result<()> {
        if self.root()? != Root::Ours {
            return Ok(());
        }
        let ifindex = self.ifindex()?;
        let msg = self.tc_message(
            ifindex,
            TcHandle {
                major: MAJOR,
                minor: 0,
            },
            TcHandle::ROOT,
        );
        let message = self.request(NLM_F_ACK, RouteNetlinkMessage::DelQueueDiscipline(msg));
        self.send_batch(vec![Request {
            op: "delete root qdisc",
            target: format!("{MAJOR:x}:"),
            message,
        }])
    }

    fn sock_err(&self, source: io::Error) -> HtbError {
        HtbError::Socket {
            iface: self.iface.clone(),
            source,
        }
    }

    /// Sends the requests in as few `sendmsg` calls as fit the socket buffer, then reads one
    /// acknowledgement per request.
    fn send_batch(&mut self, batch: Vec<Request>) -> Result<()> {
        // About a hundred requests per sendmsg: the kernel queues one ack (~1 KiB of socket
        // buffer) per request before we read them.
        const CHUNK: usize = 16 * 1024;
        let mut first_error = None;
        let mut start = 0;
        while start < batch.len() {
            let mut buf = Vec::with_capacity(CHUNK);
            let mut pending: HashMap<u32, usize> = HashMap::new();
            let mut end = start;
            while end < batch.len()
                && (buf.is_empty() || buf.len() + batch[end].message.buffer_len() <= CHUNK)
            {
                let m = &batch[end].message;
                let at = buf.len();
                buf.resize(at + m.buffer_len(), 0);
                m.serialize(&mut buf[at..]);
                pending.insert(m.header.sequence_number, end);
                end += 1;
            }
            self.socket.send(&buf, 0).map_err(|e| self.sock_err(e))?;
            while !pending.is_empty() {
                for reply in self.receive()? {
                    let seq = reply.header.sequence_number;
                    let Some(i) = pending.remove(&seq) else {
                        continue;
                    };
                    if let NetlinkPayload::Error(e) = reply.payload
                        && e.code.is_some()
                    {
                        let req = &batch[i];
                        let err = HtbError::Kernel {
                            iface: self.iface.clone(),
                            op: req.op,
                            class: req.target.clone(),
                            source: e.to_io(),
                        };
                        debug!(error = %err, "netlink operation failed");
                        first_error.get_or_insert(err);
                    }
                }
            }
            start = end;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn receive(&mut self) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let mut buf = vec![0u8; 256 * 1024];
        let n = self
            .socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| self.sock_err(e))?;
        let mut out = Vec::new();
        let mut at = 0;
        while at < n {
            let msg =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..n]).map_err(|e| {
                    HtbError::Protocol {
                        iface: self.iface.clone(),
                        what: e.to_string(),
                    }
                })?;
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            at += len.next_multiple_of(4);
            out.push(msg);
        }
        Ok(out)
    }

    fn dump(&mut self, req: NetlinkMessage<RouteNetlinkMessage>) -> Result<Vec<TcMessage>> {
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| self.sock_err(e))?;
        let seq = req.header.sequence_number;
        let mut out = Vec::new();
        loop {
            for msg in self.receive()? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(HtbError::Kernel {
                            iface: self.iface.clone(),
                            op: "dump",
                            class: "1:".into(),
                            source: e.to_io(),
                        });
                    }
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewTrafficClass(m)
                        | RouteNetlinkMessage::NewQueueDiscipline(m),
                    ) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(minor: u16, parent_minor: u16) -> ClassInfo {
        ClassInfo {
            minor,
            parent_minor,
            params: ClassParams {
                rate: BWMIN,
                ceil: BWMIN,
                quantum: 1600,
            },
            bytes: 0,
            packets: 0,
            drops: 0,
            qlen: 0,
        }
    }

    #[test]
    fn orphans_are_leaves_nobody_wants_and_never_the_fixed_classes() {
        let listed: Vec<ClassInfo> = [(1, 0), (0x10, 1), (0x20, 1), (2, 0x10), (3, 0x20)]
            .into_iter()
            .chain([(0x100, 0x10), (0x101, 0x20), (0x1ff, 0x10)])
            .map(|(m, p)| info(m, p))
            .collect();
        let wanted = [0x100, 0x101].into_iter().collect();
        assert_eq!(orphans(&listed, &wanted), vec![0x1ff]);
        assert_eq!(
            orphans(&listed, &Default::default()),
            vec![0x100, 0x101, 0x1ff]
        );
    }

    #[test]
    fn class_names_are_written_like_tc() {
        assert_eq!(class_name(0x1a3), "1:1a3");
        assert_eq!(class_name(0x10), "1:10");
    }
}
