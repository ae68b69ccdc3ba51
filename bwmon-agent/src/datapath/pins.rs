//! What bwmon pins under bpffs, and how a pin directory is made, checked and removed.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{Ebpf, maps::Map};
use bwmon_common::names;
use tracing::info;

use super::{DatapathError, error::Result};
use crate::paths;

/// Maps of the object that outlive the agent (pinned). The rest (log gate, globals) are per
/// load; the carried maps the agent makes itself ([`super::older`]).
const PINNED_MAPS: [&str; 20] = [
    names::RECEIVED,
    names::RECEIVED_OVERFLOW,
    names::INGRESS_CONTROL,
    names::POLICERS,
    names::POLICED,
    names::SLOTS,
    names::UNSLOTTED,
    names::OFFERED_OVERFLOW,
    names::DROPS,
    names::DROPS_SEEN,
    names::DROP_CONTROL,
    names::XID_ARRAY,
    names::XID_HASH,
    names::EXEMPT_V4,
    names::EXEMPT_V6,
    names::EXEMPT_FILTER,
    names::SOURCE_V4,
    names::SOURCE_V6,
    names::CGROUP_XIDS,
    names::CGROUP_LEVELS,
];

/// Pinned TCX link of the classifier, inside an interface's pin directory.
pub(crate) const LINK_PIN: &str = "link_egress";
/// Pinned TCX link of the ingress program of source-prefix slices.
pub(crate) const INGRESS_LINK_PIN: &str = "link_ingress";
/// Pinned link of the `cgroup_skb/ingress` program on the cgroup v2 root.
pub(crate) const CGROUP_LINK_PIN: &str = "link_ingress_cgroup";
/// Pinned link of the drop program.
pub(crate) const DROP_LINK_PIN: &str = "link_drop";

/// Makes the pin directory of `iface` under `pin_root`.
pub(super) fn make_dir(pin_root: &Path, iface: &str) -> Result<PathBuf> {
    let pin_dir = paths::pin_dir(pin_root, iface);
    fs::create_dir_all(&pin_dir).map_err(|source| DatapathError::PinDir {
        path: pin_dir.clone(),
        source,
    })?;
    Ok(pin_dir)
}

/// Every pinned map's name and pin path.
pub(super) fn map_paths(pin_dir: &Path) -> Vec<(&'static str, PathBuf)> {
    PINNED_MAPS
        .iter()
        .map(|name| (*name, pin_dir.join(name)))
        .collect()
}

/// The pins that should be in `pin_dir` and are not (`link_egress` only with TCX, the carried
/// maps only when `carried`).
pub(super) fn missing(pin_dir: &Path, tcx: bool, carried: bool) -> Vec<&'static str> {
    let links = [
        (DROP_LINK_PIN, true),
        (CGROUP_LINK_PIN, true),
        (LINK_PIN, tcx),
        (INGRESS_LINK_PIN, tcx),
    ];
    let carried_pins = super::older::CARRIED_PINS.iter().filter(|_| carried);
    PINNED_MAPS
        .iter()
        .chain(carried_pins)
        .copied()
        .chain(links.iter().filter(|(_, wanted)| *wanted).map(|(l, _)| *l))
        .filter(|name| !pin_dir.join(name).exists())
        .collect()
}

/// Mounts bpffs at [`paths::BPFFS`] when nothing is mounted there (no systemd does it for us on
/// minimal hosts), as bpfman and Cilium do.
///
/// # Errors
/// The mount point cannot be checked, or mounting fails.
pub(crate) fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = Path::new(paths::BPFFS);
    let err = |source| DatapathError::Bpffs {
        path: path.to_owned(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| err(e.into()))?;
    // SAFETY: statfs on a valid NUL-terminated path into a zeroed struct it fills in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
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

/// Refuses a pinned map left by a binary with another layout (it would be read as garbage).
pub(super) fn check_map(ebpf: &Ebpf, name: &str, path: &Path) -> Result<()> {
    let Some(map) = ebpf.map(name) else {
        return Ok(());
    };
    let (Ok(pinned), Some(obj)) = (aya::maps::MapInfo::from_pin(path), layout(map)) else {
        return Ok(());
    };
    let found = (pinned.key_size(), pinned.value_size(), pinned.max_entries());
    for (what, found, expected) in [
        ("key size", found.0, obj.0),
        ("value size", found.1, obj.1),
        ("max entries", found.2, obj.2),
    ] {
        if found != expected {
            return Err(DatapathError::PinnedMapMismatch {
                path: path.to_owned(),
                what: format!("{what} {found} != {expected}"),
            });
        }
    }
    Ok(())
}

/// Key size, value size and capacity of a loaded map.
fn layout(map: &Map) -> Option<(u32, u32, u32)> {
    let info = super::bulk::map_data(map)?.info().ok()?;
    Some((info.key_size(), info.value_size(), info.max_entries()))
}
