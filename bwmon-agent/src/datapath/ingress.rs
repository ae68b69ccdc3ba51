//! The ingress side: the `cgroup_skb/ingress` counter on the cgroup v2 root (uid and mark
//! slices: it sees a packet after the socket lookup), the TC ingress counter of source-prefix
//! slices, which device they count, the received counters, and the download policers.
//!
//! The cgroup program is attached with a `bpf_link` (multi-attach: other programs on the root
//! stay), pinned beside the maps; a restarted agent swaps its program inside the pinned link
//! (`BPF_LINK_UPDATE`), so no packet is counted twice or missed. Attaching needs only a
//! descriptor of the cgroup directory opened read-only, so a read-only `/sys/fs/cgroup`
//! (systemd's `ProtectControlGroups`) is no obstacle.

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SchedClassifier, links::FdLink},
};
use bwmon_common::{Counter, IngressControl, Policer, XidCounters, names};
use tracing::{debug, info, warn};

use super::{
    AttachCause, Datapath, DatapathError, attach::Side, bulk, epoch, error::Result,
    pins::CGROUP_LINK_PIN, program, program_err,
};
use crate::{paths, units::BitsPerSec};

/// `CGROUP2_SUPER_MAGIC`.
const CGROUP2_MAGIC: i64 = 0x6367_7270;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// The `bpf(2)` command `cmd` with `attr`.
///
/// # Safety
/// Every pointer in `attr` must be valid for what `cmd` reads there.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: the caller's pointers; the size is the attribute's own.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A descriptor of the object pinned at `path` (`BPF_OBJ_GET`; aya's pinned link keeps its
/// descriptor to itself).
fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `pathname` points at a NUL-terminated string alive for the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr)? };
    // SAFETY: the kernel gave us this new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The cgroup v2 root: the first of [`paths::CGROUP2_MOUNTS`] that is a cgroup2 mount.
///
/// # Errors
/// None of them is.
pub(crate) fn cgroup2_root() -> io::Result<PathBuf> {
    for path in paths::CGROUP2_MOUNTS {
        let c = std::ffi::CString::new(path).map_err(io::Error::other)?;
        // SAFETY: statfs on a valid NUL-terminated path into a zeroed struct it fills in.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == CGROUP2_MAGIC {
            return Ok(PathBuf::from(path));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no cgroup v2 hierarchy at {}",
            paths::CGROUP2_MOUNTS.join(" or ")
        ),
    ))
}

/// Puts `prog` in place of the program of the link `link` (`BPF_LINK_UPDATE`).
fn link_update(link: &impl AsFd, prog: &impl AsFd) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_fd().as_raw_fd() as u32,
        new_prog_fd: prog.as_fd().as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: the attribute holds descriptors only.
    unsafe { bpf(BPF_LINK_UPDATE, &mut attr) }.map(|_| ())
}

/// The token bucket of a download ceiling: half a second's bytes, and never less than four of
/// the largest packets the stack hands up (64 KiB GRO/GSO packets). A policer drops whole
/// packets, and TCP recovers slowly from a 64 KiB packet lost at once: a bucket of a few of
/// them lets it run near the rate instead of well below it.
pub(crate) fn policer_for(ceil: BitsPerSec) -> Policer {
    let rate = ceil.0 / 8;
    Policer {
        rate,
        burst: (rate / 2).max(4 * 65_536),
        tokens: 0,
        last_ns: 0,
    }
}

impl Datapath {
    fn ingress_err(&self, program: &'static str, source: impl Into<AttachCause>) -> DatapathError {
        DatapathError::Attach {
            iface: self.iface.clone(),
            program,
            source: source.into(),
        }
    }

    /// A TC program of the object by side.
    pub(super) fn tc_program(&mut self, side: Side) -> Result<&mut SchedClassifier> {
        let iface = self.iface.clone();
        let name = side.program();
        program(&mut self.ebpf, name)?
            .try_into()
            .map_err(|source| program_err(&iface, name, "finding", source))
    }

    /// Loads the ingress programs and attaches them: the TC one to the interface, the cgroup
    /// one to the cgroup v2 root (in place of the pinned one's program when there is one).
    pub(super) fn attach_ingress(&mut self, ifindex: u32) -> Result<()> {
        self.write_ingress_control(ifindex)?;
        let (iface, pin_dir, mode) = (self.iface.clone(), self.pin_dir.clone(), self.mode);
        let tc = self.tc_program(Side::Ingress)?;
        tc.load()
            .map_err(|source| program_err(&iface, names::INGRESS_TC, "loading", source))?;
        super::attach::attach(tc, &iface, &pin_dir, mode, Side::Ingress)?;

        let name = names::INGRESS_CGROUP;
        let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?
            .try_into()
            .map_err(|source| program_err(&iface, name, "finding", source))?;
        prog.load()
            .map_err(|source| program_err(&iface, name, "loading", source))?;
        let link_pin = pin_dir.join(CGROUP_LINK_PIN);
        if let Ok(link) = obj_get(&link_pin) {
            let prog_fd = prog
                .fd()
                .map_err(|source| program_err(&iface, name, "describing", source))?;
            match link_update(&link, prog_fd) {
                Ok(()) => {
                    info!(iface, pin = %link_pin.display(), "replaced the ingress counter in its pinned cgroup link");
                    return Ok(());
                }
                Err(e) => {
                    warn!(iface, error = %e, "replacing the ingress counter in its pinned cgroup link failed; attaching anew");
                    fs::remove_file(&link_pin).map_err(|e| self.ingress_err(name, e))?;
                }
            }
        }
        let root = cgroup2_root().map_err(|e| self.ingress_err(name, e))?;
        // Read-only is enough to attach (the kernel needs the directory, not write access).
        let dir = fs::File::open(&root).map_err(|e| self.ingress_err(name, e))?;
        let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?
            .try_into()
            .map_err(|source| program_err(&iface, name, "finding", source))?;
        // A `bpf_link` (every kernel bwmon runs on, 5.7+) is always attached as one of many
        // (the kernel refuses flags on a link and attaches it with BPF_F_ALLOW_MULTI): other
        // programs on the root stay. "Single" here means "no flags".
        let link = prog
            .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .and_then(|id| prog.take_link(id))
            .map_err(|e| DatapathError::Attach {
                iface: iface.clone(),
                program: name,
                source: e.into(),
            })?;
        let link: FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| self.ingress_err(name, e))?;
        link.pin(&link_pin).map_err(|e| self.ingress_err(name, e))?;
        info!(iface, cgroup = %root.display(), pin = %link_pin.display(), "attached the ingress counter to the cgroup v2 root");
        Ok(())
    }

    /// Run counts and run time of the ingress programs (`bpf_stats`): the `cgroup_skb` one and
    /// the TC one (the one that counts depends on the xid source; the other returns at once).
    ///
    /// # Errors
    /// The kernel refuses the program info.
    pub fn ingress_program_stats(&self) -> Result<(super::ProgramStats, super::ProgramStats)> {
        let stats = |name: &'static str| -> Result<super::ProgramStats> {
            let info = self
                .ebpf
                .program(name)
                .ok_or(DatapathError::MissingProgram { program: name })?
                .info()
                .map_err(|source| program_err(&self.iface, name, "describing", source))?;
            Ok(super::ProgramStats {
                run_count: info.run_count(),
                run_time: info.run_time(),
            })
        };
        Ok((stats(names::INGRESS_CGROUP)?, stats(names::INGRESS_TC)?))
    }

    /// Points the ingress counters at the device `ifindex`.
    pub(super) fn write_ingress_control(&mut self, ifindex: u32) -> Result<()> {
        let (map, err) = self.map_for_write(names::INGRESS_CONTROL)?;
        let mut map: Array<&mut MapData, IngressControl> = Array::try_from(map).map_err(&err)?;
        map.set(0, IngressControl { ifindex, _pad: 0 }, 0)
            .map_err(&err)
    }

    /// Makes the policers those of `ceilings` (xid → download ceiling): new and changed ones
    /// written (a changed rate keeps its bucket's tokens), the others removed.
    ///
    /// # Errors
    /// A failed map update, naming the map.
    pub fn set_policers(&mut self, ceilings: &HashMap<u32, BitsPerSec>) -> Result<()> {
        let (map, err) = self.map_for_write(names::POLICERS)?;
        let mut hash: BpfHashMap<&mut MapData, u32, Policer> =
            BpfHashMap::try_from(map).map_err(&err)?;
        let have: Vec<(u32, Policer)> = hash.iter().filter_map(|r| r.ok()).collect();
        for (xid, ceil) in ceilings {
            let want = policer_for(*ceil);
            let old = have.iter().find(|(x, _)| x == xid).map(|(_, p)| *p);
            match old {
                Some(p) if p.rate == want.rate && p.burst == want.burst => {}
                Some(p) => {
                    let kept = Policer {
                        tokens: p.tokens.min(want.burst),
                        last_ns: p.last_ns,
                        ..want
                    };
                    hash.insert(xid, kept, 0).map_err(&err)?;
                }
                None => {
                    debug!(xid, ceil = ceil.0, "download policer set");
                    hash.insert(xid, want, 0).map_err(&err)?;
                }
            }
        }
        for (xid, _) in have {
            if !ceilings.contains_key(&xid) {
                match hash.remove(&xid) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(err(e)),
                }
            }
        }
        Ok(())
    }

    /// The received counters' instance (this boot, the kernel id of the map holding them).
    pub(super) fn received_epoch(&self) -> Result<u64> {
        let id = self.map_id(names::RECEIVED)?.map(u64::from);
        Ok(epoch::epoch_hash(&self.boot_id, &[id]))
    }

    /// Received bytes per xid, the overflow slot's, and what the policers dropped, summed
    /// over CPUs.
    pub(super) fn read_received(
        &self,
        nr_cpus: usize,
    ) -> Result<(BTreeMap<u32, XidCounters>, XidCounters, Counter)> {
        let received = bulk::hash_entries::<u32, XidCounters>(
            self.map(names::RECEIVED)?,
            nr_cpus,
            XidCounters::merged,
        )
        .map_err(|e| self.map_err(names::RECEIVED, e))?
        .into_iter()
        .filter(|(_, c)| *c != XidCounters::default())
        .collect();
        let overflow = bulk::array_runs(
            self.map(names::RECEIVED_OVERFLOW)?,
            &[(0, 1)],
            nr_cpus,
            XidCounters::merged,
        )
        .map_err(|e| self.map_err(names::RECEIVED_OVERFLOW, e))?
        .first()
        .map(|(_, c)| *c)
        .unwrap_or_default();
        let policed = bulk::array_runs(
            self.map(names::POLICED)?,
            &[(0, 1)],
            nr_cpus,
            Counter::merged,
        )
        .map_err(|e| self.map_err(names::POLICED, e))?
        .first()
        .map(|(_, c)| *c)
        .unwrap_or_default();
        Ok((received, overflow, policed))
    }
}
