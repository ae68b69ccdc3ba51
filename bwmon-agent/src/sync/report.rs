//! A slice's line of the status report, from its record, the limits in force and what the plan
//! measured.

use crate::{
    class::PerClass,
    policy::{Limits, Record, levers::Levers, received::Count},
    serve::status::{ClassStatus, SliceHead, SliceStatus},
    time::UnixSecs,
    units::{BitsPerSec, Bytes, KBytes},
};

/// Everything a slice's status line is made of.
pub(super) struct Line<'a> {
    /// The slice's name.
    pub(super) name: &'a str,
    /// Its xid.
    pub(super) xid: u32,
    /// Its record after this sync.
    pub(super) record: &'a Record,
    /// When its period ends, by the calendar.
    pub(super) period_end: UnixSecs,
    /// Its limits in force.
    pub(super) limits: &'a Limits,
    /// The operator's levers in force on it ([`Levers::in_force`]), if any.
    pub(super) levers: Option<&'a Levers>,
    /// Its rate per class since the previous sync.
    pub(super) rate: PerClass<BitsPerSec>,
    /// What its leaves dropped.
    pub(super) dropped: Bytes,
    /// Its leaves, as tc writes them.
    pub(super) leaves: Vec<String>,
    /// The ceiling of all of each class's traffic (node cap, exempt max).
    pub(super) caps: PerClass<BitsPerSec>,
    /// Bytes it received in the current period.
    pub(super) received: PerClass<Bytes>,
    /// Which bytes its budget covers.
    pub(super) count: Count,
}

impl Line<'_> {
    /// The status line.
    pub(super) fn status(self) -> SliceStatus {
        let (r, limits) = (self.record, self.limits);
        let kb = |b: Bytes| KBytes(b.0 / 1024);
        let head = SliceHead {
            name: self.name.to_owned(),
            xid: self.xid,
            period_start: r.period_start,
            period_end: self.period_end,
            emailed: r.emailed,
            dropped: self.dropped,
            leaves: self.leaves,
            received: self.received,
            count: self.count,
        };
        let classes = PerClass::from_fn(|c| {
            let l = limits.of(c);
            ClassStatus {
                used: r.used(c),
                ceil: r.classes.of(c).ceil,
                budget: kb(l.max),
                thresh: kb(l.thresh),
                capped: r.capped(c, limits),
                max_rate: l.max_rate,
                rate: *self.rate.of(c),
                granted: self.levers.map_or(Bytes(0), |lv| *lv.grant.of(c)),
                limit: self.levers.and_then(|lv| *lv.limit.of(c)),
                // Idle, until the plan has seen who sends (`guarantees`).
                guaranteed: l.min_rate,
                cap: *self.caps.of(c),
                warned: *r.warned.of(c),
            }
        });
        SliceStatus::new(head, classes)
    }
}
