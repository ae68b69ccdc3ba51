//! What can fail on the HTB tree: each error names the interface, and the operation and class
//! where the kernel refused one.

use std::io;

use super::options;

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
    #[error("netlink on {iface}")]
    Socket {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused an operation.
    #[error("{op} {class} on {iface}")]
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
    /// The kernel's packet scheduler clock could not be read.
    #[error("reading the packet scheduler clock for {iface}")]
    Clock {
        /// Interface.
        iface: String,
        /// What went wrong.
        #[source]
        source: options::PschedError,
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
