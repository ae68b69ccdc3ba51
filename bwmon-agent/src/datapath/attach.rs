//! Attaching the classifier to the interface's egress: TCX with a pinned link where the
//! kernel has it (6.6+), a clsact direct-action filter with a fixed priority and handle
//! otherwise, so a restarted agent finds and replaces its own program in place.

use std::{fs, io, path::Path};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
};
use bwmon_common::{DropControl, names};
use tracing::{debug, info, warn};

use super::{
    AttachCause, Datapath, DatapathError, Device,
    error::Result,
    pins::{INGRESS_LINK_PIN, LINK_PIN},
};

/// Priority and handle of our filter when attached through clsact (kernels without TCX); fixed
/// so a restarted agent finds and replaces it.
const CLSACT_PRIORITY: u16 = 0xb3a0;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 0xb3a0);

/// How to attach the classifier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX where the kernel has it (6.6+), clsact otherwise.
    #[default]
    Auto,
    /// Always TCX.
    Tcx,
    /// Always a clsact direct-action filter.
    Clsact,
}

impl AttachMode {
    /// Whether this mode means TCX on the running kernel.
    pub(super) fn uses_tcx(self) -> bool {
        match self {
            AttachMode::Tcx => true,
            AttachMode::Clsact => false,
            AttachMode::Auto => aya::util::KernelVersion::current()
                .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0)),
        }
    }
}

/// Which of the interface's TC hooks a program goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// The classifier, on egress.
    Egress,
    /// The ingress counter of source-prefix slices.
    Ingress,
}

impl Side {
    fn attach_type(self) -> TcAttachType {
        match self {
            Side::Egress => TcAttachType::Egress,
            Side::Ingress => TcAttachType::Ingress,
        }
    }

    fn link_pin(self) -> &'static str {
        match self {
            Side::Egress => LINK_PIN,
            Side::Ingress => INGRESS_LINK_PIN,
        }
    }

    pub(super) fn program(self) -> &'static str {
        match self {
            Side::Egress => names::CLASSIFIER,
            Side::Ingress => names::INGRESS_TC,
        }
    }
}

fn attach_err(iface: &str, side: Side) -> impl Fn(AttachCause) -> DatapathError + '_ {
    move |source| DatapathError::Attach {
        iface: iface.to_owned(),
        program: side.program(),
        source,
    }
}

/// Attaches `prog` to `iface`'s `side` in `mode`, replacing our earlier program in place.
pub(super) fn attach(
    prog: &mut SchedClassifier,
    iface: &str,
    pin_dir: &Path,
    mode: AttachMode,
    side: Side,
) -> Result<()> {
    let err = attach_err(iface, side);
    if !mode.uses_tcx() {
        return attach_clsact(prog, iface, side).map_err(&err);
    }
    let link_pin = pin_dir.join(side.link_pin());
    if let Ok(pinned) = PinnedLink::from_pin(&link_pin) {
        // Make before break: the new program replaces the old one inside the same link.
        let link: SchedClassifierLink = FdLink::from(pinned)
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| err(e.into()))?;
        match prog.attach_to_link(link) {
            Ok(id) => {
                // Closing our fd leaves the pinned link (and the new program in it) in place.
                drop(prog.take_link(id).map_err(|e| err(e.into()))?);
                if tcx_attached(prog, iface, side) {
                    info!(iface, pin = %link_pin.display(), program = side.program(), "replaced the program in the pinned TCX link");
                    return Ok(());
                }
                warn!(
                    iface,
                    "the pinned TCX link no longer reaches the interface (re-created?); attaching anew"
                );
            }
            Err(e) => {
                warn!(iface, error = %e, "replacing the classifier in the pinned TCX link failed; attaching anew")
            }
        }
        if let Err(e) = fs::remove_file(&link_pin)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(err(e.into()));
        }
    }
    debug!(iface, "no usable pinned TCX link; attaching anew");
    let id = prog
        .attach_with_options(
            iface,
            side.attach_type(),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| err(e.into()))?;
    let link = prog.take_link(id).map_err(|e| err(e.into()))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| err(e.into()))?;
    fd_link.pin(&link_pin).map_err(|e| err(e.into()))?;
    info!(iface, pin = %link_pin.display(), program = side.program(), "attached (TCX) and pinned the link");
    Ok(())
}

/// Whether `prog` is among the programs attached to the interface's TCX `side`.
///
/// Asked with `BPF_PROG_QUERY` for the programs' ids alone: aya's `query_tcx` also opens
/// every program by id, which needs `CAP_SYS_ADMIN`, which the shipped unit does not give (it
/// failed there, and a program in place read as gone at every sync).
fn tcx_attached(prog: &SchedClassifier, iface: &str, side: Side) -> bool {
    let Ok(ours) = prog.info().map(|i| i.id()) else {
        return false;
    };
    let Ok(ifindex) = crate::interface::index(iface) else {
        return false;
    };
    tcx_program_ids(ifindex, side).is_ok_and(|ids| ids.contains(&ours))
}

/// The ids of the programs on the interface `ifindex`'s TCX `side`.
fn tcx_program_ids(ifindex: u32, side: Side) -> io::Result<Vec<u32>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_ifindex: ifindex,
        attach_type: match side {
            Side::Egress => BPF_TCX_EGRESS,
            Side::Ingress => BPF_TCX_INGRESS,
        },
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..QueryAttr::default()
    };
    // SAFETY: `prog_ids` points at `prog_cnt` writable u32s alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut QueryAttr,
            size_of::<QueryAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

fn attach_clsact(prog: &mut SchedClassifier, iface: &str, side: Side) -> Result<(), AttachCause> {
    if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
        // EEXIST: clsact is already there (ours from a previous run, or another tool's); both fine.
        let exists = matches!(&e, aya::programs::tc::TcError::NetlinkError(n)
            if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(e.into());
        }
    }
    let existing = SchedClassifierLink::attached(
        iface,
        side.attach_type(),
        CLSACT_PRIORITY,
        CLSACT_HANDLE,
        None,
    )?;
    let id = match prog.attach_to_link(existing) {
        Ok(id) => {
            info!(
                iface,
                program = side.program(),
                "replaced the clsact filter in place"
            );
            id
        }
        Err(e) => {
            debug!(iface, error = %e, "no clsact filter of ours; adding one");
            prog.attach_with_options(
                iface,
                side.attach_type(),
                TcAttachOptions::Netlink(NlOptions {
                    priority: CLSACT_PRIORITY,
                    handle: CLSACT_HANDLE,
                    classid: None,
                }),
            )?
        }
    };
    let link = prog.take_link(id)?;
    // The filter outlives the process; teardown removes it.
    std::mem::forget(link);
    Ok(())
}

/// Removes our clsact filters from `iface`, when there are some; absent filters and
/// interfaces are fine.
pub(super) fn detach_clsact(iface: &str) {
    for side in [Side::Egress, Side::Ingress] {
        if let Ok(link) = SchedClassifierLink::attached(
            iface,
            side.attach_type(),
            CLSACT_PRIORITY,
            CLSACT_HANDLE,
            None,
        ) {
            // Dropping a netlink link detaches the filter.
            drop(link);
        }
    }
}

impl Datapath {
    /// Re-attaches the classifier when it no longer reaches the interface (the interface was
    /// deleted and created again: with TCX the kernel says whether our program is attached;
    /// with clsact, whose filters are not links, the interface's index tells), and points
    /// drop counting at the new device. Returns whether it had to.
    ///
    /// # Errors
    /// The interface is missing, or attaching fails.
    pub fn ensure_attached(&mut self) -> Result<bool> {
        let iface = self.iface.clone();
        let mode = self.mode;
        let pin_dir = self.pin_dir.clone();
        let device = Device::lookup(&iface)?;
        let recreated = device.ifindex != self.ifindex;
        if recreated && device.link_header != self.link_header {
            warn!(
                iface,
                "the interface was re-created as another kind of device; loading the classifier again"
            );
            // The same pinned maps: what this process knows of their slots still holds.
            let slots = std::mem::take(&mut self.slots);
            *self = Datapath::open(&self.opts)?;
            self.slots = slots;
            return Ok(true);
        }
        let mut again = false;
        for side in [Side::Egress, Side::Ingress] {
            let prog = self.tc_program(side)?;
            let attached = if mode.uses_tcx() {
                tcx_attached(prog, &iface, side)
            } else {
                !recreated
            };
            if attached {
                continue;
            }
            warn!(
                iface,
                program = side.program(),
                "the program no longer reaches the interface (re-created?); attaching again"
            );
            attach(prog, &iface, &pin_dir, mode, side)?;
            again = true;
        }
        if !again {
            return Ok(false);
        }
        self.ifindex = device.ifindex;
        self.write_ingress_control(device.ifindex)?;
        let control = self.read_control()?;
        self.write_control(DropControl {
            generation: control.generation,
            ifindex: device.ifindex,
            netns_inum: device.netns_inum,
        })?;
        Ok(true)
    }
}
