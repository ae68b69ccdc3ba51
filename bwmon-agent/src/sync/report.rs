//! A slice's line of the status report, from its record, counters and limits.

use super::plan::Memory;
use crate::{
    class::{PerClass, TrafficClass},
    policy::{Counters, Limits, Record},
    serve::status::SliceStatus,
    time::UnixSecs,
    units::Bytes,
};

/// A status line; `memory` remembers counters between syncs for the rate.
pub(super) fn row(
    memory: &mut Memory,
    name: &str,
    xid: u32,
    r: &Record,
    counters: Counters,
    limits: &Limits,
    now: UnixSecs,
) -> SliceStatus {
    let rate = match memory.previous.insert(xid, (counters, now)) {
        Some((prev, at)) if now > at => {
            PerClass::from_fn(|c| counters.of(c).saturating_sub(*prev.of(c)) * 8 / (now - at))
        }
        _ => PerClass::default(),
    };
    let kb = |b: Bytes| b.0 / 1024;
    let used = PerClass::from_fn(|c| r.used(c).0);
    SliceStatus {
        name: name.to_owned(),
        xid,
        period_start: r.period_start,
        bytes: used.general,
        exempt_bytes: used.exempt,
        ceil_bps: r.classes.general.ceil.0,
        exempt_ceil_bps: r.classes.exempt.ceil.0,
        max_kbyte: kb(limits.general.max),
        thresh_kbyte: kb(limits.general.thresh),
        i2_max_kbyte: kb(limits.exempt.max),
        i2_thresh_kbyte: kb(limits.exempt.thresh),
        capped: r.capped(TrafficClass::General, limits),
        exempt_capped: r.capped(TrafficClass::Exempt, limits),
        emailed: r.emailed,
        max_rate_bps: limits.general.max_rate.0,
        i2_max_rate_bps: limits.exempt.max_rate.0,
        dropped_bytes: 0,
        rate_bps: rate.general,
        exempt_rate_bps: rate.exempt,
        classes: Vec::new(),
        // The caller's, who knows the calendar.
        period_end: 0,
    }
}
