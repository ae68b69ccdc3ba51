//! What failed in the datapath, and on what. Each variant keeps its cause's type as its
//! `#[source]`; messages name the call and the input, never the cause (it is printed once, by
//! whoever prints the chain).

use std::{io, path::PathBuf};

/// What failed in the datapath, and on what.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The binary carries no eBPF object.
    #[error(
        "this bwmon binary was built without its eBPF object; build it with `cargo xtask build`"
    )]
    NotEmbedded,
    /// The interface name cannot be a network interface.
    #[error(transparent)]
    InterfaceName(#[from] crate::interface::InvalidName),
    /// The interface (or this process's network namespace) could not be looked up.
    #[error("looking up interface {iface}")]
    Interface {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// bpffs could not be checked or mounted.
    #[error("bpffs at {path}")]
    Bpffs {
        /// Mount point.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A pin directory could not be made or read.
    #[error("pin directory {path}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A pinned map does not have the layout this binary expects (an upgrade changed it).
    #[error(
        "pinned map {path} does not match this binary ({what}); run `bwmon teardown` to remove the old datapath"
    )]
    PinnedMapMismatch {
        /// The pin.
        path: PathBuf,
        /// Which property differs.
        what: String,
    },
    /// The running kernel's BTF could not give the offsets and drop reasons.
    #[error("reading the running kernel's types for {iface}")]
    KernelTypes {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: crate::datapath::btf::BtfError,
    },
    /// aya could not read the running kernel's BTF.
    #[error("reading the running kernel's BTF for the tracepoint on {iface}")]
    KernelBtf {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: aya::BtfError,
    },
    /// Loading the object into the kernel failed.
    #[error("loading the eBPF object for {iface}")]
    Load {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The object has no program of this name (a build mismatch).
    #[error("program {program} missing from the eBPF object")]
    MissingProgram {
        /// The program's name.
        program: &'static str,
    },
    /// A program operation (load, info, test run, unload) failed.
    #[error("{action} program {program} for {iface}")]
    Program {
        /// Interface.
        iface: String,
        /// The program's name.
        program: &'static str,
        /// What was done ("loading", "test-running", …).
        action: &'static str,
        /// Cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A program attached through a pinned link is no longer loaded.
    #[error("program {id} of the pinned link on {iface} is not loaded")]
    ProgramGone {
        /// Interface.
        iface: String,
        /// The kernel's program id.
        id: u32,
    },
    /// Attaching a program failed.
    #[error("attaching {program} to {iface}")]
    Attach {
        /// Interface.
        iface: String,
        /// The program's name.
        program: &'static str,
        /// Cause.
        #[source]
        source: AttachCause,
    },
    /// The kernel programs' log could not be read.
    #[error("reading the kernel programs' log for {iface}")]
    KernelLog {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: aya_log::Error,
    },
    /// This boot's id could not be read.
    #[error("reading /proc/sys/kernel/random/boot_id")]
    BootId {
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A map operation failed.
    #[error("map {map} on {iface}")]
    Map {
        /// Interface.
        iface: String,
        /// Map name.
        map: &'static str,
        /// Cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// A map's fdinfo (its kernel memory) could not be read.
    #[error("reading the fdinfo of map {map} on {iface}")]
    Fdinfo {
        /// Interface.
        iface: String,
        /// Map name.
        map: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Removing pins or the attachment failed.
    #[error("tearing down the datapath of {iface} at {path}")]
    Teardown {
        /// Interface.
        iface: String,
        /// What could not be removed.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Why an attachment failed: one of the layers it goes through.
#[derive(Debug, thiserror::Error)]
pub enum AttachCause {
    /// The program side (attach, take the link, replace in a link).
    #[error(transparent)]
    Program(Box<aya::programs::ProgramError>),
    /// Turning a link into another kind, or pinning it.
    #[error(transparent)]
    Link(#[from] aya::programs::links::LinkError),
    /// Pinning or unpinning a link.
    #[error(transparent)]
    Pin(#[from] aya::pin::PinError),
    /// The clsact qdisc or filter.
    #[error(transparent)]
    Tc(#[from] aya::programs::tc::TcError),
    /// A file operation on a pin.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<aya::programs::ProgramError> for AttachCause {
    fn from(e: aya::programs::ProgramError) -> Self {
        AttachCause::Program(Box::new(e))
    }
}

/// The datapath's result.
pub(crate) type Result<T, E = DatapathError> = std::result::Result<T, E>;
