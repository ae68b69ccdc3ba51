//! The drop program (`skb:kfree_skb`): attached once and kept while its code is unchanged;
//! after an upgrade the new one is attached beside the old and counting is handed over by one
//! write of a new generation to `DROP_CONTROL`.

use std::{
    fs,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    maps::{Array, MapData},
    programs::links::{FdLink, PinnedLink},
};
use bwmon_common::{DropControl, names};
use tracing::{debug, info};

use super::{AttachCause, Datapath, DatapathError, Device, error::Result, pins::DROP_LINK_PIN};

/// A fresh, non-zero generation for this load.
pub(super) fn new_generation() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    nanos ^ (u64::from(std::process::id()) << 48) | 1
}

fn program_info(id: u32) -> Option<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
}

impl Datapath {
    fn drop_attach_err(&self, source: impl Into<AttachCause>) -> DatapathError {
        DatapathError::Attach {
            iface: self.iface.clone(),
            program: names::DROP,
            source: source.into(),
        }
    }

    /// Attaches the drop program, or keeps the pinned one when it runs the same code, and
    /// points the counting at `device`.
    pub(super) fn attach_drop(&mut self, generation: u64, device: Device) -> Result<()> {
        let link_pin = self.pin_dir.join(DROP_LINK_PIN);
        let iface = self.iface.clone();
        let new_tag = self
            .drop_program()?
            .info()
            .map_err(|source| super::program_err(&iface, names::DROP, "describing", source))?
            .tag();
        let control = self.read_control()?;
        let old_link = PinnedLink::from_pin(&link_pin).ok().map(FdLink::from);
        let old_tag = old_link
            .as_ref()
            .and_then(|l| l.info().ok())
            .and_then(|info| program_info(info.program_id()))
            .map(|p| p.tag());
        if old_tag == Some(new_tag) && control.generation != 0 {
            // Same code already counting: keep it (no handover, nothing missed or doubled).
            self.write_control(DropControl {
                generation: control.generation,
                ifindex: device.ifindex,
                netns_inum: device.netns_inum,
            })?;
            self.drop_program()?
                .unload()
                .map_err(|source| super::program_err(&iface, names::DROP, "unloading", source))?;
            debug!(iface, "kept the pinned drop program (same code)");
            return Ok(());
        }
        let prog = self.drop_program()?;
        let attached = prog.attach().and_then(|id| prog.take_link(id));
        let link: FdLink = attached.map_err(|e| self.drop_attach_err(e))?.into();
        // Both programs are attached; from this write on only the new one counts.
        self.write_control(DropControl {
            generation,
            ifindex: device.ifindex,
            netns_inum: device.netns_inum,
        })?;
        if old_link.is_some() {
            fs::remove_file(&link_pin).map_err(|e| self.drop_attach_err(e))?;
        }
        drop(old_link);
        link.pin(&link_pin).map_err(|e| self.drop_attach_err(e))?;
        info!(iface, pin = %link_pin.display(), "drop program attached and counting");
        Ok(())
    }

    /// The drop program that counts now: the pinned link's.
    pub(super) fn pinned_drop_program(&self) -> Result<aya::programs::ProgramInfo> {
        let link = PinnedLink::from_pin(self.pin_dir.join(DROP_LINK_PIN))
            .map(FdLink::from)
            .map_err(|e| self.drop_attach_err(e))?;
        let id = link
            .info()
            .map_err(|e| self.drop_attach_err(e))?
            .program_id();
        program_info(id).ok_or_else(|| DatapathError::ProgramGone {
            iface: self.iface.clone(),
            id,
        })
    }

    pub(super) fn read_control(&self) -> Result<DropControl> {
        let err = |e| self.map_err(names::DROP_CONTROL, e);
        let map: Array<&MapData, DropControl> =
            Array::try_from(self.map(names::DROP_CONTROL)?).map_err(err)?;
        map.get(&0, 0).map_err(err)
    }

    pub(super) fn write_control(&mut self, control: DropControl) -> Result<()> {
        let (map, err) = self.map_for_write(names::DROP_CONTROL)?;
        let mut map: Array<&mut MapData, DropControl> = Array::try_from(map).map_err(&err)?;
        map.set(0, control, 0).map_err(&err)
    }
}
