//! The kernel side seen from the agent: load the embedded eBPF object, attach its programs to
//! one interface, pin maps and links so a restarted agent picks up where the last one left off,
//! fill the xid → class, exempt-prefix and source-prefix maps, and read the counters.
//!
//! Pins live under `<pin root>/<interface>/`: `link_egress` (the classifier's TCX link),
//! `link_ingress` (the TC ingress counter's), `link_ingress_cgroup` (the `cgroup_skb/ingress`
//! counter on the cgroup v2 root, [`ingress`]), `link_drop` (the `skb:kfree_skb` tracepoint
//! program) and one file per map ([`pins`]).
//!
//! Restarts lose and double nothing:
//! - the maps are re-opened from their pins, counters and all;
//! - the new classifier replaces the old one inside the pinned TCX link (`bpf_link_update`,
//!   [`attach`]);
//! - the drop program is kept as it is when the new one has the same code (its tag); after an
//!   upgrade the new one is attached beside the old and counting is handed over by one write
//!   to `DROP_CONTROL` ([`drops`]; only a drop at that very instant can be missed or doubled).
//!
//! What a slice is charged is what it offered at the egress hook minus what was dropped before
//! leaving (qdisc full, shot by a later tc program): exactly what HTB reports as sent
//! ([`snapshot`]).

mod attach;
mod batch;
pub(crate) mod btf;
mod bulk;
mod drops;
pub mod epoch;
mod error;
pub(crate) mod ingress;
mod inspect;
mod maps;
pub mod memory;
mod older;
pub(crate) mod pins;
mod seen;
pub mod slots;
mod snapshot;

use std::{
    collections::{BTreeSet, HashMap},
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{BtfTracePoint, SchedClassifier},
};
use bwmon_common::{COUNTER_SLOTS, Settings, XidCounters, XidEntry, XidSource, names};
use tracing::{info, warn};

pub use attach::AttachMode;
use error::Result;
pub use error::{AttachCause, DatapathError};
pub use inspect::{ProgramStats, TestRunOutcome};
pub(crate) use pins::ensure_bpffs;
pub use snapshot::Snapshot;

use crate::{datapath::btf::Btf, paths};
use slots::Slots;

/// The eBPF object built by `cargo xtask build`; empty when the agent was built without it.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bwmon.bpf.o"));

/// Changes at every boot: counters from another boot restarted from zero.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The kernel tracepoint of dropped packets.
const DROP_TRACEPOINT: &str = "kfree_skb";

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
    /// How long an xid without a record or leaves keeps its counter slot without sending
    /// ([`slots::IDLE`]; tests shorten it).
    pub slot_idle: std::time::Duration,
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
            slot_idle: slots::IDLE,
        }
    }
}

/// The loaded, attached datapath of one interface.
pub struct Datapath {
    ebpf: Ebpf,
    /// What it was opened with, to open it again when its pins were lost.
    opts: DatapathOptions,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`), part of the counters' epoch.
    boot_id: String,
    iface: String,
    /// The interface's index when the classifier was attached: another index means the
    /// interface was deleted and created again (and, with clsact, lost our filter).
    ifindex: u32,
    /// The link header length the classifier was loaded with: an interface re-created as
    /// another kind of device needs a new load.
    link_header: u32,
    pin_dir: PathBuf,
    mode: AttachMode,
    /// The xid maps' entries (this process is their only writer).
    entries: HashMap<u32, XidEntry>,
    /// Which xid counts in which slot.
    slots: Slots,
    /// An older layout's counter maps, until folded into [`Datapath::carried`].
    older: Option<older::Older>,
    /// What an older layout counted, frozen.
    carried: Option<older::Carried>,
    /// When the programs of this load took over from the previous ones.
    takeover: Instant,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("iface", &self.iface)
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
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
        crate::interface::validate_name(&opts.interface)?;
        let iface = opts.interface.clone();
        let device = Device::lookup(&iface)?;
        ensure_bpffs()?;
        let pin_dir = pins::make_dir(&opts.pin_root, &iface)?;

        let types = |source| DatapathError::KernelTypes {
            iface: iface.clone(),
            source,
        };
        let btf = Btf::from_kernel().map_err(types)?;
        let settings = Settings {
            generation: drops::new_generation(),
            xid_source: opts.xid_source as u32,
            log_enabled: u32::from(opts.kernel_log),
            link_header: device.link_header,
            _pad: 0,
            offsets: btf.kernel_offsets().map_err(types)?,
            drop_reasons: btf.qdisc_drop_reasons().map_err(types)?,
        };
        let mut loader = EbpfLoader::new();
        loader.override_global(names::SETTINGS, &settings, true);
        let pinned = pins::map_paths(&pin_dir);
        let had_pin = |name: &str| pin_dir.join(name).exists();
        // A seen map made now beside an array that already counted cannot say which slots
        // are used.
        let incomplete = had_pin(names::DROPS) && !had_pin(names::DROPS_SEEN);
        for (name, path) in &pinned {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(OBJECT).map_err(|source| DatapathError::Load {
            iface: iface.clone(),
            source: Box::new(source),
        })?;
        for (name, path) in &pinned {
            pins::check_map(&ebpf, name, path)?;
        }

        let boot_id = std::fs::read_to_string(BOOT_ID)
            .map_err(|source| DatapathError::BootId { source })?
            .trim()
            .to_owned();
        let older_err = |e: older::OlderError| DatapathError::Map {
            iface: iface.clone(),
            map: e.map,
            source: e.source,
        };
        let carried = older::Carried::open(&pin_dir).map_err(older_err)?;
        // Older counter maps beside complete carried ones: a fold whose unpinning was cut
        // short; what they hold is carried already.
        let older = match carried {
            Some(_) => None,
            None => older::Older::open(&pin_dir).map_err(older_err)?,
        };
        let older_classes = older::classes(&pin_dir).map_err(older_err)?;
        let mut dp = Self {
            ebpf,
            opts: opts.clone(),
            boot_id,
            ifindex: device.ifindex,
            link_header: device.link_header,
            iface,
            pin_dir,
            mode: opts.attach_mode,
            entries: HashMap::new(),
            slots: Slots::default(),
            older,
            carried,
            takeover: Instant::now(),
        };
        // Before the classifier runs: its exempt filter covers what the pinned tries hold, the
        // slots are known, and its xid maps hold what an older layout's class maps held.
        dp.cover_tries_in_filter()?;
        dp.load_slots()?;
        dp.steer_as_the_older_layout(older_classes)?;
        if incomplete {
            info!(iface = %dp.iface, map = names::DROPS_SEEN, "the drop counters' seen map was made anew: reading them whole until the next reboot");
            let (map, err) = dp.map_for_write(names::DROPS_SEEN)?;
            seen::mark_incomplete(map).map_err(err)?;
        }
        let pin_dir = dp.pin_dir.clone();
        let classifier = dp.classifier()?;
        classifier
            .load()
            .map_err(|source| program_err(&opts.interface, names::CLASSIFIER, "loading", source))?;
        attach::attach(
            classifier,
            &opts.interface,
            &pin_dir,
            opts.attach_mode,
            attach::Side::Egress,
        )?;
        dp.attach_ingress(device.ifindex)?;

        let kernel_btf = aya::Btf::from_sys_fs().map_err(|source| DatapathError::KernelBtf {
            iface: opts.interface.clone(),
            source,
        })?;
        dp.drop_program()?
            .load(DROP_TRACEPOINT, &kernel_btf)
            .map_err(|source| program_err(&opts.interface, names::DROP, "loading", source))?;
        dp.attach_drop(settings.generation, device)?;
        // The new programs are in place: the older layout's maps are written no more once
        // the runs under way end (its counts are folded in a little later).
        dp.takeover = Instant::now();
        if dp.older.is_none() || older::has_class_pins(&dp.pin_dir) {
            dp.unpin_older_classes()?;
        }
        Ok(dp)
    }

    /// Removes the older layout's pins: all of them once its counters are carried (or when
    /// it had none), else only its class maps (copied at load).
    fn unpin_older_classes(&mut self) -> Result<()> {
        let err = |source| DatapathError::PinDir {
            path: self.pin_dir.clone(),
            source,
        };
        if self.older.is_none() {
            return older::unpin(&self.pin_dir).map_err(err);
        }
        for name in [
            bwmon_common::legacy::XID_CLASS,
            bwmon_common::legacy::XID_CLASS_ARRAY,
        ] {
            match fs::remove_file(self.pin_dir.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads the xid maps' entries and finds the slots in use: assigned to an xid, or holding
    /// counts without one (zeroed before they are given).
    fn load_slots(&mut self) -> Result<()> {
        self.entries = self.read_entries()?;
        let nr_cpus = self.nr_cpus()?;
        let dirty: BTreeSet<u32> = bulk::array_runs(
            self.map(names::SLOTS)?,
            &[(0, COUNTER_SLOTS)],
            nr_cpus,
            XidCounters::merged,
        )
        .map_err(|e| self.map_err(names::SLOTS, e))?
        .into_iter()
        .map(|(slot, _)| slot)
        .collect();
        let assigned = self
            .entries
            .iter()
            .filter(|(_, e)| e.slot != 0)
            .map(|(x, e)| (*x, e.slot));
        let (slots, invalid) = Slots::new(assigned, &dirty, Instant::now());
        self.slots = slots;
        if !invalid.is_empty() {
            warn!(iface = %self.iface, xids = ?invalid, "xid entries named slots they cannot have; counted without a slot");
            let mut want = self.entries.clone();
            for xid in invalid {
                if let Some(e) = want.get_mut(&xid) {
                    e.slot = 0;
                }
            }
            want.retain(|_, e| *e != XidEntry::EMPTY);
            self.write_entries(&want)?;
        }
        Ok(())
    }

    /// The kernel's count of possible CPUs (per-CPU maps hold a value for each).
    fn nr_cpus(&self) -> Result<usize> {
        aya::util::nr_cpus()
            .map_err(|(_, e)| self.map_err(names::SLOTS, aya::maps::MapError::IoError(e)))
    }

    pub(super) fn classifier(&mut self) -> Result<&mut SchedClassifier> {
        let iface = self.iface.clone();
        program(&mut self.ebpf, names::CLASSIFIER)?
            .try_into()
            .map_err(|source| program_err(&iface, names::CLASSIFIER, "finding", source))
    }

    fn drop_program(&mut self) -> Result<&mut BtfTracePoint> {
        let iface = self.iface.clone();
        program(&mut self.ebpf, names::DROP)?
            .try_into()
            .map_err(|source| program_err(&iface, names::DROP, "finding", source))
    }

    /// Opens the datapath again when any of its pins is gone (removed behind bwmon's back):
    /// missing maps are made anew (their counters restart from zero, which the next snapshot's
    /// epoch tells), the programs attached again. The old programs are let go only after the
    /// new ones are attached. Returns whether it had to.
    ///
    /// # Errors
    /// Opening again failed; the old datapath stays as it was.
    pub(crate) fn ensure_pinned(&mut self) -> Result<bool> {
        let missing = pins::missing(&self.pin_dir, self.mode.uses_tcx(), self.carried.is_some());
        if missing.is_empty() {
            return Ok(false);
        }
        warn!(
            iface = %self.iface,
            missing = ?missing,
            "pins of the datapath were removed; loading and attaching it again"
        );
        let fresh = Datapath::open(&self.opts)?;
        *self = fresh;
        Ok(true)
    }

    /// The link-layer header length the classifier was loaded with
    /// ([`crate::interface::link_header_len`] of the interface then).
    pub fn link_header(&self) -> u32 {
        self.link_header
    }
}

/// A program of the object by name.
/// The accounted device as the drop program identifies it.
#[derive(Clone, Copy, Debug)]
struct Device {
    ifindex: u32,
    netns_inum: u32,
    /// [`crate::interface::link_header_len`], which the classifier is loaded with.
    link_header: u32,
}

impl Device {
    fn lookup(iface: &str) -> Result<Device> {
        let err = |source| DatapathError::Interface {
            iface: iface.to_owned(),
            source,
        };
        let ifindex = crate::interface::index(iface).map_err(err)?;
        let netns_inum = fs::metadata("/proc/self/ns/net").map_err(err)?.ino() as u32;
        let link_header = crate::interface::link_header_len(iface).map_err(err)?;
        Ok(Device {
            ifindex,
            netns_inum,
            link_header,
        })
    }
}

/// Removes what [`Datapath::open`] installed for `interface`: the attachment and the
/// pins.
///
/// # Errors
/// A pin or filter that exists but cannot be removed.
pub fn teardown(pin_root: &Path, interface: &str) -> Result<()> {
    crate::interface::validate_name(interface)?;
    let pin_dir = paths::pin_dir(pin_root, interface);
    let err = |path: &Path, source| DatapathError::Teardown {
        iface: interface.to_owned(),
        path: path.to_owned(),
        source,
    };
    attach::detach_clsact(interface);
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

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { program: name })
}

pub(super) fn program_err(
    iface: &str,
    program: &'static str,
    action: &'static str,
    source: aya::programs::ProgramError,
) -> DatapathError {
    DatapathError::Program {
        iface: iface.to_owned(),
        program,
        action,
        source: Box::new(source),
    }
}
