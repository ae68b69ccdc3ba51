//! bwmon's HTB tree on the egress of one interface, programmed over rtnetlink (no `tc`).
//!
//! ```text
//! 1: htb default 1:2
//! └─1:1     rate = exempt max
//!    ├─1:10  rate bwmin, ceil = node cap         general traffic of all slices
//!    │  ├─1:2    the default leaf (xids without a slice)
//!    │  └─1:xxxx one leaf per slice: rate = min rate, ceil = max rate or the lowered cap,
//!    │           quantum = share × 72 KiB (tree::QUANTUM_PER_SHARE)
//!    └─1:20  rate bwmin, ceil = exempt max       exempt traffic of all slices
//!       ├─1:3    the default exempt leaf
//!       └─1:xxxx one leaf per slice, same rules with the i2 attributes
//! ```
//!
//! Leaf minors are chosen by the caller (and remembered in its state), so any 32-bit xid fits.
//! A class is changed in place (`RTM_NEWTCLASS` with `NLM_F_REPLACE`): its counters and queue
//! are kept. The tree as data is [`tree`]; the netlink batching is in `netlink`.

mod error;
pub(crate) mod minors;
mod netlink;
pub(crate) mod options;
pub mod tree;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, Nla};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage, TcOption, TcStats2},
};
use tracing::info;

pub use error::HtbError;
use netlink::{Netlink, Request};
pub use options::{ClassParams, Psched};
pub use tree::{ClassInfo, Installed, Leaf, Minor, Op, TreeSpec};
use tree::{DEFAULT_LEAVES, EXEMPT_PARENT, GENERAL_PARENT, MAJOR, TOP};

use crate::units::BitsPerSec;

type Result<T> = std::result::Result<T, HtbError>;

/// What sits at the root of the interface's egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Root {
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
    netlink: Netlink,
    clock: Psched,
}

impl std::fmt::Debug for Htb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htb")
            .field("iface", &self.iface)
            .finish_non_exhaustive()
    }
}

/// The qdisc's own handle, `1:`.
const QDISC: TcHandle = TcHandle {
    major: MAJOR,
    minor: 0,
};

impl Htb {
    /// Opens a netlink socket for `iface`.
    ///
    /// # Errors
    /// The socket cannot be opened, or the psched clock cannot be read.
    pub fn open(iface: &str) -> Result<Self> {
        let netlink = Netlink::open(iface)?;
        let clock = Psched::from_kernel().map_err(|source| HtbError::Clock {
            iface: iface.to_owned(),
            source,
        })?;
        Ok(Self {
            iface: iface.to_owned(),
            netlink,
            clock,
        })
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

    fn htb_attrs(options: Vec<(u16, Vec<u8>)>) -> Vec<TcAttribute> {
        let opts = options
            .into_iter()
            .map(|(kind, value)| TcOption::Other(netlink_packet_core::DefaultNla::new(kind, value)))
            .collect();
        vec![TcAttribute::Kind("htb".into()), TcAttribute::Options(opts)]
    }

    fn class_request(
        &mut self,
        ifindex: i32,
        minor: Minor,
        parent: Option<Minor>,
        p: &ClassParams,
    ) -> Request {
        let parent = parent.map_or(QDISC, Minor::handle);
        let mut msg = self.tc_message(ifindex, minor.handle(), parent);
        msg.attributes = Self::htb_attrs(options::class_options(p, &self.clock));
        Request {
            op: "add or change class",
            target: minor.to_string(),
            message: self.netlink.request(
                NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                RouteNetlinkMessage::NewTrafficClass(msg),
            ),
        }
    }

    /// What is at the root of the interface's egress now.
    ///
    /// # Errors
    /// Netlink failures.
    pub(crate) fn root(&mut self) -> Result<Root> {
        Ok(self.root_and_classes()?.0)
    }

    /// What is at the root, with the classes of bwmon's tree when it is an HTB `1:` (listed
    /// once, for the check and for the caller).
    fn root_and_classes(&mut self) -> Result<(Root, Vec<ClassInfo>)> {
        let ifindex = self.ifindex()?;
        let msg = self.tc_message(ifindex, TcHandle::UNSPEC, TcHandle::UNSPEC);
        let req = self
            .netlink
            .request(NLM_F_DUMP, RouteNetlinkMessage::GetQueueDiscipline(msg));
        let qdiscs = self.netlink.dump(req)?;
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
        if kind == "htb" && root.header.handle == QDISC {
            let classes = self.list()?;
            let has = |minor: Minor, parent: Option<Minor>| {
                classes
                    .iter()
                    .any(|c| c.minor == minor && c.parent == parent)
            };
            if has(TOP, None) && has(GENERAL_PARENT, Some(TOP)) && has(EXEMPT_PARENT, Some(TOP)) {
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
                let mut msg = self.tc_message(ifindex, QDISC, TcHandle::ROOT);
                msg.attributes =
                    Self::htb_attrs(options::qdisc_options(u32::from(DEFAULT_LEAVES.general.0)));
                // Replacing whatever default qdisc is there (or a foreign one on take-over).
                batch.push(Request {
                    op: "add root qdisc",
                    target: format!("{MAJOR:x}:"),
                    message: self.netlink.request(
                        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                        RouteNetlinkMessage::NewQueueDiscipline(msg),
                    ),
                });
                true
            }
        };
        for fixed in spec.fixed_classes() {
            if !classes.iter().any(|c| fixed.is(c)) {
                batch.push(self.class_request(ifindex, fixed.minor, fixed.parent, &fixed.params));
            }
        }
        if batch.is_empty() {
            return Ok(Installed { created, classes });
        }
        self.netlink.send_batch(batch)?;
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
                        Some(Minor::parent_of(leaf.class)),
                        &leaf.params,
                    ));
                }
                Op::Remove(minor) => {
                    let msg = self.tc_message(ifindex, minor.handle(), TcHandle::UNSPEC);
                    let message = self
                        .netlink
                        .request(NLM_F_ACK, RouteNetlinkMessage::DelTrafficClass(msg));
                    batch.push(Request {
                        op: "delete class",
                        target: minor.to_string(),
                        message,
                    });
                }
            }
        }
        self.netlink.send_batch(batch)
    }

    /// Every class of bwmon's tree (handles `1:*`), with rates and counters.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn list(&mut self) -> Result<Vec<ClassInfo>> {
        let ifindex = self.ifindex()?;
        let msg = self.tc_message(ifindex, TcHandle::UNSPEC, TcHandle::UNSPEC);
        let req = self
            .netlink
            .request(NLM_F_DUMP, RouteNetlinkMessage::GetTrafficClass(msg));
        let mut out = Vec::new();
        for m in self.netlink.dump(req)? {
            if m.header.index != ifindex || m.header.handle.major != MAJOR {
                continue;
            }
            let mut info = ClassInfo {
                minor: Minor(m.header.handle.minor),
                parent: (m.header.parent.major == MAJOR).then_some(Minor(m.header.parent.minor)),
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

    /// Removes the interface's clsact qdisc when no filter is left on it (on kernels without
    /// TCX bwmon added it for its classifier; another tool's filters keep it). Returns whether
    /// it was removed.
    ///
    /// # Errors
    /// Netlink failures.
    pub fn remove_empty_clsact(&mut self) -> Result<bool> {
        let ifindex = self.ifindex()?;
        let msg = self.tc_message(ifindex, TcHandle::UNSPEC, TcHandle::UNSPEC);
        let req = self
            .netlink
            .request(NLM_F_DUMP, RouteNetlinkMessage::GetQueueDiscipline(msg));
        let has_clsact = self.netlink.dump(req)?.iter().any(|q| {
            q.header.index == ifindex
                && q.header.parent == TcHandle::CLSACT
                && q.attributes.contains(&TcAttribute::Kind("clsact".into()))
        });
        if !has_clsact {
            return Ok(false);
        }
        for minor in [TcHandle::MIN_INGRESS, TcHandle::MIN_EGRESS] {
            let parent = TcHandle {
                major: 0xffff,
                minor,
            };
            let msg = self.tc_message(ifindex, TcHandle::UNSPEC, parent);
            let req = self
                .netlink
                .request(NLM_F_DUMP, RouteNetlinkMessage::GetTrafficFilter(msg));
            if !self.netlink.dump(req)?.is_empty() {
                return Ok(false);
            }
        }
        let msg = self.tc_message(
            ifindex,
            TcHandle {
                major: 0xffff,
                minor: 0,
            },
            TcHandle::CLSACT,
        );
        let message = self
            .netlink
            .request(NLM_F_ACK, RouteNetlinkMessage::DelQueueDiscipline(msg));
        self.netlink.send_batch(vec![Request {
            op: "delete qdisc",
            target: "clsact".into(),
            message,
        }])?;
        info!(iface = %self.iface, "removed the empty clsact qdisc");
        Ok(true)
    }

    /// Removes bwmon's root qdisc (and with it the whole tree), if it is there.
    ///
    /// # Errors
    /// A kernel refusal other than "not there".
    pub(crate) fn remove_tree(&mut self) -> Result<()> {
        if self.root()? != Root::Ours {
            return Ok(());
        }
        let ifindex = self.ifindex()?;
        let msg = self.tc_message(ifindex, QDISC, TcHandle::ROOT);
        let message = self
            .netlink
            .request(NLM_F_ACK, RouteNetlinkMessage::DelQueueDiscipline(msg));
        self.netlink.send_batch(vec![Request {
            op: "delete root qdisc",
            target: format!("{MAJOR:x}:"),
            message,
        }])
    }
}
