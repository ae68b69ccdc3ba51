//! The kernel side seen from the agent: load the embedded eBPF object, attach its programs to
//! one interface, pin maps and links so a restarted agent picks up where the last one left off,
//! fill the xid → class, exempt-prefix and source-prefix maps, and read the counters.
//!
//! Pins live under `<pin root>/<interface>/`: `link_egress` (the classifier's TCX link),
//! `link_drop` (the `skb:kfree_skb` tracepoint program) and one file per map.
//!
//! Restarts lose and double nothing:
//! - the maps are re-opened from their pins, counters and all;
//! - the new classifier replaces the old one inside the pinned TCX link (`bpf_link_update`);
//! - the drop program is kept as it is when the new one has the same code (its tag); after an
//!   upgrade the new one is attached beside the old and counting is handed over by one write
//!   to `DROP_CONTROL` (only a drop at that very instant can be missed or doubled).
//!
//! What a slice is charged is what it offered at the egress hook minus what was dropped before
//! leaving (qdisc full, shot by a later tc program): exactly what HTB reports as sent.

mod batch;

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap,
        PerCpuValues, lpm_trie::Key,
    },
    programs::{
        BtfTracePoint, LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};
use bwmon_common::{
    ClassIds, Counter, DropControl, KernelOffsets, Settings, XidCounters, XidSource, names,
};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use crate::{btf::Btf, paths};

/// The eBPF object built by `cargo xtask build`; empty when the agent was built without it.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bwmon.bpf.o"));

/// Maps that outlive the agent (pinned). The rest (log gate, globals) are per load.
const PINNED_MAPS: [&str; 9] = [
    names::OFFERED,
    names::OFFERED_OVERFLOW,
    names::DROPPED,
    names::DROP_CONTROL,
    names::XID_CLASS,
    names::EXEMPT_V4,
    names::EXEMPT_V6,
    names::SOURCE_V4,
    names::SOURCE_V6,
];

/// Pinned TCX link of the classifier, inside an interface's pin directory.
const LINK_PIN: &str = "link_egress";
/// Pinned link of the drop program.
const DROP_LINK_PIN: &str = "link_drop";
/// The kernel tracepoint of dropped packets.
const DROP_TRACEPOINT: &str = "kfree_skb";
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
///
/// A slice is charged, per traffic class, what its xid offered minus what its class dropped:
/// see [`Snapshot::charged`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Bytes offered at the egress hook per xid (summed over CPUs), monotonic.
    pub offered: BTreeMap<u32, XidCounters>,
    /// Bytes of xids that found no room in the per-xid map.
    pub offered_overflow: XidCounters,
    /// Bytes dropped before leaving, per HTB minor of bwmon's `1:` tree (classes without drops
    /// are left out), monotonic.
    pub dropped: BTreeMap<u16, Counter>,
}

impl Snapshot {
    /// What `xid`, whose leaves are `classes`, is charged: offered at the egress hook minus
    /// dropped before leaving, per traffic class (general, exempt).
    pub fn charged(&self, xid: u32, classes: ClassIds) -> (Counter, Counter) {
        let offered = self.offered.get(&xid).copied().unwrap_or_default();
        let dropped = |class_id: u32| {
            self.dropped
                .get(&((class_id & 0xffff) as u16))
                .copied()
                .unwrap_or_default()
        };
        (
            offered.general.saturating_sub(dropped(classes.general)),
            offered.exempt.saturating_sub(dropped(classes.exempt)),
        )
    }
}

/// What the classifier did with a test frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// Its return value (`-1`, "next", for every packet).
    pub verdict: i32,
    /// The `skb->priority` it set: the HTB class.
    pub priority: u32,
    /// The frame came out byte for byte as it went in.
    pub data_unchanged: bool,
}

/// Cost of one of the kernel programs, from the kernel's `bpf_stats` (zero unless
/// `kernel.bpf_stats_enabled` is on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Times the program ran.
    pub run_count: u64,
    /// Total time spent in it.
    pub run_time: std::time::Duration,
}

/// The loaded, attached datapath of one interface.
pub struct Datapath {
    ebpf: Ebpf,
    iface: String,
    pin_dir: PathBuf,
    mode: AttachMode,
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
        let load_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Load {
            iface: iface.clone(),
            source: e,
        };
        let device = Device::lookup(&iface).map_err(|e| load_err(Box::new(e)))?;
        ensure_bpffs()?;
        let pin_dir = paths::pin_dir(&opts.pin_root, &iface);
        fs::create_dir_all(&pin_dir).map_err(|source| DatapathError::PinDir {
            path: pin_dir.clone(),
            source,
        })?;

        let (offsets, drop_reasons): (KernelOffsets, [u64; 4]) = Btf::from_kernel()
            .and_then(|b| Ok((b.kernel_offsets()?, b.qdisc_drop_reasons()?)))
            .map_err(|e| load_err(Box::new(e)))?;
        let settings = Settings {
            generation: new_generation(),
            xid_source: opts.xid_source as u32,
            log_enabled: u32::from(opts.kernel_log),
            offsets,
            drop_reasons,
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
        let mut ebpf = loader.load(OBJECT).map_err(|e| load_err(Box::new(e)))?;
        for (name, path) in &pins {
            check_pinned_map(&ebpf, name, path)?;
        }

        let prog_err = |e: aya::programs::ProgramError| load_err(Box::new(e));
        let classifier: &mut SchedClassifier = program(&mut ebpf, &iface, names::CLASSIFIER)?
            .try_into()
            .map_err(prog_err)?;
        classifier.load().map_err(prog_err)?;
        attach(classifier, &iface, &pin_dir, opts.attach_mode)?;

        let kernel_btf = aya::Btf::from_sys_fs().map_err(|e| load_err(Box::new(e)))?;
        let drop_prog: &mut BtfTracePoint = program(&mut ebpf, &iface, names::DROP)?
            .try_into()
            .map_err(prog_err)?;
        drop_prog
            .load(DROP_TRACEPOINT, &kernel_btf)
            .map_err(prog_err)?;
        let mut dp = Self {
            ebpf,
            iface,
            pin_dir,
            mode: opts.attach_mode,
        };
        dp.attach_drop(settings.generation, device)?;
        Ok(dp)
    }

    /// Attaches the drop program, or keeps the pinned one when it runs the same code, and
    /// points the counting at `device`.
    fn attach_drop(&mut self, generation: u64, device: Device) -> Result<()> {
        let iface = self.iface.clone();
        let attach_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
            iface: iface.clone(),
            source: e,
        };
        let link_pin = self.pin_dir.join(DROP_LINK_PIN);
        let new_tag = self
            .drop_program()?
            .info()
            .map_err(|e| attach_err(Box::new(e)))?
            .tag();
        let control = self.read_control()?;
        let old_link = PinnedLink::from_pin(&link_pin).ok().map(FdLink::from);
        let old_tag = old_link
            .as_ref()
            .and_then(|l| l.info().ok())
            .and_then(|info| program_tag(info.program_id()));
        if old_tag == Some(new_tag) && control.generation != 0 {
            // Same code already counting: keep it (no handover, nothing missed or doubled).
            self.write_control(DropControl {
                generation: control.generation,
                ifindex: device.ifindex,
                netns_inum: device.netns_inum,
            })?;
            self.drop_program()?
                .unload()
                .map_err(|e| attach_err(Box::new(e)))?;
            debug!(iface, "kept the pinned drop program (same code)");
            return Ok(());
        }
        let prog = self.drop_program()?;
        let id = prog.attach().map_err(|e| attach_err(Box::new(e)))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|e| attach_err(Box::new(e)))?
            .into();
        // Both programs are attached; from this write on only the new one counts.
        self.write_control(DropControl {
            generation,
            ifindex: device.ifindex,
            netns_inum: device.netns_inum,
        })?;
        if old_link.is_some() {
            fs::remove_file(&link_pin).map_err(|e| attach_err(Box::new(e)))?;
        }
        drop(old_link);
        link.pin(&link_pin).map_err(|e| attach_err(Box::new(e)))?;
        info!(iface, pin = %link_pin.display(), "drop program attached and counting");
        Ok(())
    }

    fn drop_program(&mut self) -> Result<&mut BtfTracePoint> {
        let iface = self.iface.clone();
        program(&mut self.ebpf, &iface, names::DROP)?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| DatapathError::Load {
                iface,
                source: Box::new(e),
            })
    }

    fn read_control(&self) -> Result<DropControl> {
        let map: Array<&MapData, DropControl> = Array::try_from(self.map(names::DROP_CONTROL)?)
            .map_err(|e| self.map_err(names::DROP_CONTROL, e))?;
        map.get(&0, 0)
            .map_err(|e| self.map_err(names::DROP_CONTROL, e))
    }

    /// A map to write to, and how to name its errors.
    fn map_for_write(
        &mut self,
        name: &'static str,
    ) -> Result<(
        &mut Map,
        impl Fn(aya::maps::MapError) -> DatapathError + use<>,
    )> {
        let iface = self.iface.clone();
        let err = move |source| DatapathError::Map {
            iface: iface.clone(),
            map: name,
            source,
        };
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| missing(&self.iface, name))?;
        Ok((map, err))
    }

    fn write_control(&mut self, control: DropControl) -> Result<()> {
        let (map, err) = self.map_for_write(names::DROP_CONTROL)?;
        let mut map: Array<&mut MapData, DropControl> = Array::try_from(map).map_err(&err)?;
        map.set(0, control, 0).map_err(&err)
    }

    /// Re-attaches the classifier when it no longer reaches the interface (the interface was
    /// deleted and created again), and points drop counting at the new device. Returns
    /// whether it had to.
    ///
    /// # Errors
    /// The interface is missing, or attaching fails.
    pub fn ensure_attached(&mut self) -> Result<bool> {
        let iface = self.iface.clone();
        let uses_tcx = match self.mode {
            AttachMode::Tcx => true,
            AttachMode::Clsact => false,
            AttachMode::Auto => aya::util::KernelVersion::current()
                .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0)),
        };
        let prog: &mut SchedClassifier = program(&mut self.ebpf, &iface, names::CLASSIFIER)?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| DatapathError::Load {
                iface: iface.clone(),
                source: Box::new(e),
            })?;
        if !uses_tcx || tcx_attached(prog, &iface) {
            return Ok(false);
        }
        let device = Device::lookup(&iface).map_err(|e| DatapathError::Attach {
            iface: iface.clone(),
            source: Box::new(e),
        })?;
        warn!(
            iface,
            "the classifier no longer reaches the interface (re-created?); attaching again"
        );
        attach(prog, &iface, &self.pin_dir, self.mode)?;
        let control = self.read_control()?;
        self.write_control(DropControl {
            generation: control.generation,
            ifindex: device.ifindex,
            netns_inum: device.netns_inum,
        })?;
        Ok(true)
    }

    /// Starts reading the kernel programs' diagnostics (off unless `kernel_log` was set) and
    /// hands them to `logger`; the caller polls the returned reader's fd and calls `flush`.
    ///
    /// # Errors
    /// The log ring buffer is missing (already taken).
    pub fn kernel_logger<T: log::Log>(&mut self, logger: T) -> Result<aya_log::EbpfLogger<T>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger).map_err(|e| {
            DatapathError::Load {
                iface: self.iface.clone(),
                source: Box::new(e),
            }
        })
    }

    /// Runs the classifier once on `frame` (an Ethernet frame) with `skb->mark = mark`
    /// through `BPF_PROG_TEST_RUN`; returns its verdict and the `skb->priority` it set. The
    /// packet is counted like a real one. For tests of packet parsing.
    ///
    /// # Errors
    /// The kernel refuses the test run.
    pub fn test_run_classifier(&mut self, frame: &[u8], mark: u32) -> Result<TestRunOutcome> {
        use aya::programs::{TestRun, TestRunOptions};
        // struct __sk_buff: mark at byte 8, priority at byte 32; 192 bytes in all.
        const SKB_CTX_LEN: usize = 192;
        let mut ctx_in = [0u8; SKB_CTX_LEN];
        ctx_in[8..12].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX_LEN];
        let mut data_out = vec![0u8; frame.len() + 256];
        let iface = self.iface.clone();
        let err = |e: aya::programs::ProgramError| DatapathError::Load {
            iface: iface.clone(),
            source: Box::new(e),
        };
        let prog: &mut SchedClassifier = program(&mut self.ebpf, &iface, names::CLASSIFIER)?
            .try_into()
            .map_err(&err)?;
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::new()
            })
            .map_err(&err)?;
        Ok(TestRunOutcome {
            verdict: result.return_value as i32,
            priority: u32::from_ne_bytes([ctx_out[32], ctx_out[33], ctx_out[34], ctx_out[35]]),
            data_unchanged: data_out.get(..frame.len()) == Some(frame),
        })
    }

    /// The interface this datapath accounts.
    pub fn interface(&self) -> &str {
        &self.iface
    }

    /// Reads every counter, summed over CPUs, with batch lookups where the kernel has them.
    ///
    /// # Errors
    /// A failed map read, naming the map.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| self.io_err(names::OFFERED, e))?;
        let mut out = Snapshot::default();

        let map = self.map(names::OFFERED)?;
        let offered = match map_data(map) {
            Some(data) => {
                batch::per_cpu_entries::<u32, XidCounters>(data.fd(), nr_cpus, XidCounters::merged)
                    .map_err(|e| self.io_err(names::OFFERED, e))?
            }
            None => None,
        };
        match offered {
            Some(entries) => out.offered.extend(entries),
            None => {
                let map: PerCpuHashMap<&MapData, u32, XidCounters> =
                    PerCpuHashMap::try_from(map).map_err(|e| self.map_err(names::OFFERED, e))?;
                for entry in map.iter() {
                    let (xid, values) = entry.map_err(|e| self.map_err(names::OFFERED, e))?;
                    out.offered.insert(xid, sum(&values, XidCounters::merged));
                }
            }
        }

        let map = self.map(names::OFFERED_OVERFLOW)?;
        let overflow: PerCpuArray<&MapData, XidCounters> =
            PerCpuArray::try_from(map).map_err(|e| self.map_err(names::OFFERED_OVERFLOW, e))?;
        out.offered_overflow = sum(
            &overflow
                .get(&0, 0)
                .map_err(|e| self.map_err(names::OFFERED_OVERFLOW, e))?,
            XidCounters::merged,
        );

        let map = self.map(names::DROPPED)?;
        let dropped = match map_data(map) {
            Some(data) => {
                batch::per_cpu_entries::<u32, Counter>(data.fd(), nr_cpus, Counter::merged)
                    .map_err(|e| self.io_err(names::DROPPED, e))?
            }
            None => None,
        };
        let dropped = match dropped {
            Some(entries) => entries,
            None => {
                let map: PerCpuArray<&MapData, Counter> =
                    PerCpuArray::try_from(map).map_err(|e| self.map_err(names::DROPPED, e))?;
                let mut entries = Vec::new();
                for minor in 0..bwmon_common::MAX_MINORS {
                    let values = map
                        .get(&minor, 0)
                        .map_err(|e| self.map_err(names::DROPPED, e))?;
                    entries.push((minor, sum(&values, Counter::merged)));
                }
                entries
            }
        };
        out.dropped.extend(
            dropped
                .into_iter()
                .filter(|(_, c)| c.packets != 0)
                .filter_map(|(minor, c)| Some((u16::try_from(minor).ok()?, c))),
        );
        Ok(out)
    }

    /// Run counts and run time of the classifier and the drop program (`bpf_stats`).
    ///
    /// # Errors
    /// The kernel refuses the program info.
    pub fn program_stats(&self) -> Result<(ProgramStats, ProgramStats)> {
        let stats = |name: &'static str| -> Result<ProgramStats> {
            let err = |e: aya::programs::ProgramError| DatapathError::Load {
                iface: self.iface.clone(),
                source: Box::new(e),
            };
            // The drop program may be the pinned one of an earlier load; ask its link.
            let info = if name == names::DROP {
                let link = PinnedLink::from_pin(self.pin_dir.join(DROP_LINK_PIN))
                    .map(FdLink::from)
                    .map_err(|e| DatapathError::Load {
                        iface: self.iface.clone(),
                        source: Box::new(e),
                    })?;
                let id = link
                    .info()
                    .map_err(|e| DatapathError::Load {
                        iface: self.iface.clone(),
                        source: Box::new(e),
                    })?
                    .program_id();
                program_info(id).ok_or_else(|| DatapathError::Load {
                    iface: self.iface.clone(),
                    source: format!("program {id} not found").into(),
                })?
            } else {
                self.ebpf
                    .program(name)
                    .ok_or_else(|| missing(&self.iface, name))?
                    .info()
                    .map_err(err)?
            };
            Ok(ProgramStats {
                run_count: info.run_count(),
                run_time: info.run_time(),
            })
        };
        Ok((stats(names::CLASSIFIER)?, stats(names::DROP)?))
    }

    /// Makes the exempt-destination tries hold exactly `prefixes` (IPv4 and IPv6).
    ///
    /// # Errors
    /// A failed map update (e.g. more prefixes than the trie holds), naming the map.
    pub fn set_exempt(&mut self, prefixes: &[IpNet]) -> Result<()> {
        let values: Vec<(IpNet, u8)> = prefixes.iter().map(|p| (*p, 1u8)).collect();
        self.replace_trie(names::EXEMPT_V4, names::EXEMPT_V6, &values)
    }

    /// Makes the source-prefix tries hold exactly `sources` (prefix → xid), for
    /// `xid_source = "source"`.
    ///
    /// # Errors
    /// A failed map update, naming the map.
    pub fn set_sources(&mut self, sources: &[(IpNet, u32)]) -> Result<()> {
        self.replace_trie(names::SOURCE_V4, names::SOURCE_V6, sources)
    }

    fn replace_trie<V: aya::Pod + PartialEq>(
        &mut self,
        v4: &'static str,
        v6: &'static str,
        entries: &[(IpNet, V)],
    ) -> Result<()> {
        let mut want4: HashMap<([u8; 4], u32), V> = HashMap::new();
        let mut want6: HashMap<([u8; 16], u32), V> = HashMap::new();
        for (net, value) in entries {
            match net.trunc() {
                IpNet::V4(n) => {
                    want4.insert((n.addr().octets(), u32::from(n.prefix_len())), *value)
                }
                IpNet::V6(n) => {
                    want6.insert((n.addr().octets(), u32::from(n.prefix_len())), *value)
                }
            };
        }
        self.sync_trie(v4, &want4)?;
        self.sync_trie(v6, &want6)
    }

    /// Inserts what is missing or changed first, then removes what is no longer wanted: a
    /// lookup for a prefix in both the old and the new set never misses.
    fn sync_trie<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod + PartialEq>(
        &mut self,
        name: &'static str,
        want: &HashMap<(K, u32), V>,
    ) -> Result<()> {
        let (map, err) = self.map_for_write(name)?;
        let mut trie: LpmTrie<&mut MapData, K, V> = LpmTrie::try_from(map).map_err(&err)?;
        for ((data, len), value) in want {
            let key = Key::new(*len, *data);
            if trie.get(&key, 0).ok().as_ref() != Some(value) {
                trie.insert(&key, value, 0).map_err(&err)?;
            }
        }
        let stale: Vec<Key<K>> = trie
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !want.contains_key(&(k.data(), k.prefix_len())))
            .collect();
        for key in stale {
            trie.remove(&key).map_err(&err)?;
        }
        Ok(())
    }

    /// Makes the xid → class map equal to `classes`: entries are written before stale ones are
    /// removed, so a packet never misses its class during the change.
    ///
    /// # Errors
    /// A failed map update, naming the map.
    pub fn set_classes(&mut self, classes: &HashMap<u32, ClassIds>) -> Result<()> {
        let (map, err) = self.map_for_write(names::XID_CLASS)?;
        let mut map: BpfHashMap<&mut MapData, u32, ClassIds> =
            BpfHashMap::try_from(map).map_err(&err)?;
        for (xid, ids) in classes {
            if map.get(xid, 0).ok().as_ref() != Some(ids) {
                map.insert(xid, ids, 0).map_err(&err)?;
            }
        }
        let stale: Vec<u32> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !classes.contains_key(k))
            .collect();
        for xid in stale {
            map.remove(&xid).map_err(&err)?;
        }
        Ok(())
    }

    fn map(&self, name: &'static str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| missing(&self.iface, name))
    }

    fn io_err(&self, map: &'static str, source: io::Error) -> DatapathError {
        self.map_err(
            map,
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error: source,
            }),
        )
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

fn sum<V: aya::Pod + Default>(values: &PerCpuValues<V>, fold: impl Fn(V, V) -> V) -> V {
    values.iter().fold(V::default(), |acc, v| fold(acc, *v))
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::PerCpuHashMap(m)
        | Map::PerCpuArray(m)
        | Map::HashMap(m)
        | Map::Array(m)
        | Map::LpmTrie(m) => Some(m),
        _ => None,
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    iface: &str,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| DatapathError::Load {
        iface: iface.to_owned(),
        source: format!("program {name} missing from the object").into(),
    })
}

fn program_info(id: u32) -> Option<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
}

fn program_tag(id: u32) -> Option<u64> {
    program_info(id).map(|p| p.tag())
}

/// A fresh, non-zero generation for this load.
fn new_generation() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    nanos ^ (u64::from(std::process::id()) << 48) | 1
}

/// The accounted device as the drop program identifies it.
#[derive(Clone, Copy, Debug)]
struct Device {
    ifindex: u32,
    netns_inum: u32,
}

impl Device {
    fn lookup(iface: &str) -> io::Result<Device> {
        let ifindex = crate::interface::index(iface)?;
        let netns_inum = fs::metadata("/proc/self/ns/net")?.ino() as u32;
        Ok(Device {
            ifindex,
            netns_inum,
        })
    }
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
    let info = map_data(map)?.info().ok()?;
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
    if let Ok(pinned) = PinnedLink::from_pin(&link_pin) {
        // Make before break: the new program replaces the old one inside the same link.
        let link: SchedClassifierLink = FdLink::from(pinned)
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| attach_err(Box::new(e)))?;
        match prog.attach_to_link(link) {
            Ok(id) => {
                // Closing our fd leaves the pinned link (and the new program in it) in place.
                drop(prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?);
                if tcx_attached(prog, iface) {
                    info!(iface, pin = %link_pin.display(), "replaced the classifier in the pinned TCX link");
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
            return Err(attach_err(Box::new(e)));
        }
    }
    debug!(iface, "no usable pinned TCX link; attaching anew");
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

/// Whether `prog` is among the programs attached to the interface's TCX egress.
fn tcx_attached(prog: &SchedClassifier, iface: &str) -> bool {
    let Ok(ours) = prog.info().map(|i| i.id()) else {
        return false;
    };
    SchedClassifier::query_tcx(iface, TcAttachType::Egress)
        .is_ok_and(|(_, progs)| progs.iter().any(|p| p.id() == ours))
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
