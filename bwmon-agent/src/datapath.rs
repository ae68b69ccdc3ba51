//! The kernel side seen from the agent: load the embedded eBPF object, attach it to the egress of
//! one interface, pin its maps and link so a restarted agent picks up where the last one left
//! off, fill the xid → class and exempt-prefix maps, and read the counters.
//!
//! Pins live under `<pin root>/<interface>/`: `link_egress` (the TCX link) and one file per map.
//! A restart re-opens the pinned maps and swaps the new program into the pinned link in one
//! `bpf_link_update`, so no packet goes uncounted and nothing is counted twice.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};
use bwmon_common::{ClassIds, Settings, XidCounters, XidSource, names};
use tracing::{debug, info, warn};

use crate::paths;

/// The eBPF object built by `cargo xtask build`; empty when the agent was built without it.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bwmon.bpf.o"));

/// Maps that outlive the agent (pinned). The rest (log gate, globals) are per load.
const PINNED_MAPS: [&str; 7] = [
    names::OFFERED,
    names::OFFERED_OVERFLOW,
    names::XID_CLASS,
    names::EXEMPT_V4,
    names::EXEMPT_V6,
    names::SOURCE_V4,
    names::SOURCE_V6,
];

/// Name of the pinned TCX link inside an interface's pin directory.
const LINK_PIN: &str = "link_egress";
/// Priority and handle of our filter when attached through clsact (kernels without TCX); fixed
/// so a restarted agent finds and replaces it.
const CLSACT_PRIORITY: u16 = 0xb3a0;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 0xb3a0);

/// What failed in the datapath, and on what.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The binary carries no eBPF object.
    #[error(
        "this bwmon binary was built without its eBPF object; build it with `cargo xtask build`"
    )]
    NotEmbedded,
    /// The interface name cannot be a network interface.
    #[error("invalid interface name {name:?}: {reason}")]
    InterfaceName {
        /// The name as given.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// bpffs could not be checked or mounted.
    #[error("bpffs at {path}: {source}")]
    Bpffs {
        /// Mount point.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A pin directory could not be made or read.
    #[error("pin directory {path}: {source}")]
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
    /// Loading the object or a program into the kernel failed.
    #[error("loading the eBPF object for {iface}: {source}")]
    Load {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Attaching to the interface failed.
    #[error("attaching the classifier to {iface} egress: {source}")]
    Attach {
        /// Interface.
        iface: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map operation failed.
    #[error("map {map} on {iface}: {source}")]
    Map {
        /// Interface.
        iface: String,
        /// Map name.
        map: &'static str,
        /// Cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// Removing pins or the attachment failed.
    #[error("tearing down the datapath of {iface} at {path}: {source}")]
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

type Result<T, E = DatapathError> = std::result::Result<T, E>;

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

/// What to load and where.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// The interface whose egress is accounted.
    pub interface: String,
    /// Where the xid of a packet comes from.
    pub xid_source: XidSource,
    /// Kernel-side diagnostics through aya-log.
    pub kernel_log: bool,
    /// Root of the pins (normally [`paths::PIN_ROOT`]).
    pub pin_root: PathBuf,
    /// TCX or clsact.
    pub attach_mode: AttachMode,
}

impl DatapathOptions {
    /// Options with the defaults for `interface`.
    pub fn new(interface: impl Into<String>) -> Self {
        Self {
            interface: interface.into(),
            xid_source: XidSource::Uid,
            kernel_log: false,
            pin_root: PathBuf::from(paths::PIN_ROOT),
            attach_mode: AttachMode::Auto,
        }
    }
}

/// Kernel counters at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Bytes offered at the egress hook per xid (summed over CPUs), monotonic.
    pub offered: BTreeMap<u32, XidCounters>,
    /// Bytes of xids that found no room in the per-xid map.
    pub offered_overflow: XidCounters,
}

/// The loaded, attached datapath of one interface.
pub struct Datapath {
    ebpf: Ebpf,
    iface: String,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("iface", &self.iface)
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

/// Checks that `name` can be a Linux interface name (it also becomes a path component).
pub fn validate_interface_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not a name")
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        Some("contains '/', ':', whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DatapathError::InterfaceName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Mounts bpffs at [`paths::BPFFS`] when nothing is mounted there (no systemd does it for us on
/// minimal hosts), as bpfman and Cilium do.
pub fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = Path::new(paths::BPFFS);
    let err = |source| DatapathError::Bpffs {
        path: path.to_owned(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| err(e.into()))?;
    // SAFETY: statfs on a valid NUL-terminated path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    if st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    info!(path = %path.display(), "bpffs is not mounted; mounting it");
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c_path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

impl Datapath {
    /// Loads the classifier, reusing pinned maps, and attaches it to the egress of the
    /// interface, replacing a previous bwmon program in place when one is attached.
    ///
    /// # Errors
    /// Any failure to load, pin or attach, naming the interface.
    pub fn open(opts: &DatapathOptions) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NotEmbedded);
        }
        validate_interface_name(&opts.interface)?;
        let iface = opts.interface.clone();
        ensure_bpffs()?;
        let pin_dir = paths::pin_dir(&opts.pin_root, &iface);
        fs::create_dir_all(&pin_dir).map_err(|source| DatapathError::PinDir {
            path: pin_dir.clone(),
            source,
        })?;

        let settings = Settings {
            xid_source: opts.xid_source as u32,
            log_enabled: u32::from(opts.kernel_log),
        };
        let mut loader = EbpfLoader::new();
        loader.override_global(names::SETTINGS, &settings, true);
        let pins: Vec<(&str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| DatapathError::Load {
            iface: iface.clone(),
            source: Box::new(e),
        })?;
        for (name, path) in &pins {
            check_pinned_map(&ebpf, name, path)?;
        }

        let load_err = |e: aya::programs::ProgramError| DatapathError::Load {
            iface: iface.clone(),
            source: Box::new(e),
        };
        let prog: &mut SchedClassifier = ebpf
            .program_mut(names::CLASSIFIER)
            .ok_or_else(|| DatapathError::Load {
                iface: iface.clone(),
                source: format!("program {} missing from the object", names::CLASSIFIER).into(),
            })?
            .try_into()
            .map_err(load_err)?;
        prog.load().map_err(load_err)?;
        attach(prog, &iface, &pin_dir, opts.attach_mode)?;
        Ok(Self {
            ebpf,
            iface,
            pin_dir,
        })
    }

    /// The interface this datapath accounts.
    pub fn interface(&self) -> &str {
        &self.iface
    }

    /// Reads every counter, summed over CPUs.
    ///
    /// # Errors
    /// A failed map read, naming the map.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let map = self.map(names::OFFERED)?;
        let offered: PerCpuHashMap<&MapData, u32, XidCounters> =
            PerCpuHashMap::try_from(map).map_err(|e| self.map_err(names::OFFERED, e))?;
        let mut out = Snapshot::default();
        for entry in offered.iter() {
            let (xid, values) = entry.map_err(|e| self.map_err(names::OFFERED, e))?;
            out.offered.insert(xid, sum(&values));
        }
        let map = self.map(names::OFFERED_OVERFLOW)?;
        let overflow: PerCpuArray<&MapData, XidCounters> =
            PerCpuArray::try_from(map).map_err(|e| self.map_err(names::OFFERED_OVERFLOW, e))?;
        out.offered_overflow = sum(&overflow
            .get(&0, 0)
            .map_err(|e| self.map_err(names::OFFERED_OVERFLOW, e))?);
        Ok(out)
    }

    /// Makes the xid → class map equal to `classes`: entries are written before stale ones are
    /// removed, so a packet never misses its class during the change.
    ///
    /// # Errors
    /// A failed map update, naming the map.
    pub fn set_classes(&mut self, classes: &HashMap<u32, ClassIds>) -> Result<()> {
        let iface = self.iface.clone();
        let err = |e| DatapathError::Map {
            iface: iface.clone(),
            map: names::XID_CLASS,
            source: e,
        };
        let map = self
            .ebpf
            .map_mut(names::XID_CLASS)
            .ok_or_else(|| missing(&self.iface, names::XID_CLASS))?;
        let mut map: BpfHashMap<&mut MapData, u32, ClassIds> =
            BpfHashMap::try_from(map).map_err(err)?;
        for (xid, ids) in classes {
            if map.get(xid, 0).ok().as_ref() != Some(ids) {
                map.insert(xid, ids, 0).map_err(err)?;
            }
        }
        let stale: Vec<u32> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !classes.contains_key(k))
            .collect();
        for xid in stale {
            map.remove(&xid).map_err(err)?;
        }
        Ok(())
    }

    fn map(&self, name: &'static str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| missing(&self.iface, name))
    }

    fn map_err(&self, map: &'static str, source: aya::maps::MapError) -> DatapathError {
        DatapathError::Map {
            iface: self.iface.clone(),
            map,
            source,
        }
    }
}

fn missing(iface: &str, map: &'static str) -> DatapathError {
    DatapathError::Map {
        iface: iface.to_owned(),
        map,
        source: aya::maps::MapError::InvalidName {
            name: map.to_owned(),
        },
    }
}

fn sum(values: &PerCpuValues<XidCounters>) -> XidCounters {
    values
        .iter()
        .fold(XidCounters::default(), |acc, v| acc.merged(*v))
}

/// Refuses a pinned map left by a binary with another layout (it would be read as garbage).
fn check_pinned_map(ebpf: &Ebpf, name: &str, path: &Path) -> Result<()> {
    let Some(map) = ebpf.map(name) else {
        return Ok(());
    };
    let (Ok(pinned), Some(obj)) = (aya::maps::MapInfo::from_pin(path), map_obj_info(map)) else {
        return Ok(());
    };
    let (key_size, value_size, max_entries) = obj;
    let mismatch = |what: String| DatapathError::PinnedMapMismatch {
        path: path.to_owned(),
        what,
    };
    if pinned.key_size() != key_size {
        return Err(mismatch(format!(
            "key size {} != {key_size}",
            pinned.key_size()
        )));
    }
    if pinned.value_size() != value_size {
        return Err(mismatch(format!(
            "value size {} != {value_size}",
            pinned.value_size()
        )));
    }
    if pinned.max_entries() != max_entries {
        return Err(mismatch(format!(
            "max entries {} != {max_entries}",
            pinned.max_entries()
        )));
    }
    Ok(())
}

fn map_obj_info(map: &Map) -> Option<(u32, u32, u32)> {
    let data = match map {
        Map::PerCpuHashMap(m) | Map::PerCpuArray(m) | Map::HashMap(m) | Map::LpmTrie(m) => m,
        _ => return None,
    };
    let info = data.info().ok()?;
    Some((info.key_size(), info.value_size(), info.max_entries()))
}

fn attach(prog: &mut SchedClassifier, iface: &str, pin_dir: &Path, mode: AttachMode) -> Result<()> {
    let attach_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
        iface: iface.to_owned(),
        source: e,
    };
    let use_tcx = match mode {
        AttachMode::Tcx => true,
        AttachMode::Clsact => false,
        AttachMode::Auto => aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0)),
    };
    if !use_tcx {
        return attach_clsact(prog, iface).map_err(attach_err);
    }
    let link_pin = pin_dir.join(LINK_PIN);
    match PinnedLink::from_pin(&link_pin) {
        Ok(pinned) => {
            // Make before break: the new program replaces the old one inside the same link.
            let link: SchedClassifierLink = FdLink::from(pinned)
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| attach_err(Box::new(e)))?;
            let id = prog
                .attach_to_link(link)
                .map_err(|e| attach_err(Box::new(e)))?;
            // Closing our fd leaves the pinned link (and the new program in it) in place.
            drop(prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?);
            info!(iface, pin = %link_pin.display(), "replaced the classifier in the pinned TCX link");
            Ok(())
        }
        Err(e) => {
            debug!(iface, error = %e, "no pinned TCX link; attaching anew");
            let id = prog
                .attach_with_options(
                    iface,
                    TcAttachType::Egress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| attach_err(Box::new(e)))?;
            let link = prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?;
            let fd_link: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| attach_err(Box::new(e)))?;
            fd_link
                .pin(&link_pin)
                .map_err(|e| attach_err(Box::new(e)))?;
            info!(iface, pin = %link_pin.display(), "attached the classifier (TCX) and pinned its link");
            Ok(())
        }
    }
}

fn attach_clsact(
    prog: &mut SchedClassifier,
    iface: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
        // EEXIST: clsact is already there (ours from a previous run, or another tool's); both fine.
        let exists = matches!(&e, aya::programs::tc::TcError::NetlinkError(n)
            if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(Box::new(e));
        }
    }
    let existing = SchedClassifierLink::attached(
        iface,
        TcAttachType::Egress,
        CLSACT_PRIORITY,
        CLSACT_HANDLE,
        None,
    )?;
    let id = match prog.attach_to_link(existing) {
        Ok(id) => {
            info!(iface, "replaced the classifier's clsact filter in place");
            id
        }
        Err(e) => {
            debug!(iface, error = %e, "no clsact filter of ours; adding one");
            prog.attach_with_options(
                iface,
                TcAttachType::Egress,
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

/// Removes what [`Datapath::open`] installed for `interface`: the attachment and the pins.
///
/// # Errors
/// A pin or filter that exists but cannot be removed.
pub fn teardown(pin_root: &Path, interface: &str) -> Result<()> {
    validate_interface_name(interface)?;
    let pin_dir = paths::pin_dir(pin_root, interface);
    let err = |path: &Path, source| DatapathError::Teardown {
        iface: interface.to_owned(),
        path: path.to_owned(),
        source,
    };
    // The clsact filter, when we used one; absent filters and interfaces are fine.
    if let Ok(link) = SchedClassifierLink::attached(
        interface,
        TcAttachType::Egress,
        CLSACT_PRIORITY,
        CLSACT_HANDLE,
        None,
    ) {
        // Dropping a netlink link detaches the filter; a filter that is not there is no error.
        drop(link);
    }
    match fs::read_dir(&pin_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| err(&pin_dir, e))?;
                let path = entry.path();
                // Unpinning the TCX link drops the last reference: the kernel detaches it.
                fs::remove_file(&path).map_err(|e| err(&path, e))?;
            }
            fs::remove_dir(&pin_dir).map_err(|e| err(&pin_dir, e))?;
            info!(iface = interface, pin_dir = %pin_dir.display(), "datapath removed");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            warn!(iface = interface, pin_dir = %pin_dir.display(), "no datapath pins to remove");
        }
        Err(e) => return Err(err(&pin_dir, e)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_that_cannot_be_paths_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "a b",
            "sixteen_chars_xx",
            "tab\t",
        ] {
            let err = validate_interface_name(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid interface name"), "{err}");
        }
        for good in ["eth0", "veth-bw1", "enp0s31f6", "x"] {
            validate_interface_name(good).expect(good);
        }
    }
}
