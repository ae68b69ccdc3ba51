//! What bwmon remembers across restarts: every slice's period, usage, last counters,
//! ceilings, `emailed` flag and leaf minors, departed slices until their period ends, and
//! notices not yet delivered. How it is kept on disk (checksummed, in two generations) is
//! [`file`]; files are replaced whole by [`atomic::atomic_replace`].

pub(crate) mod atomic;
mod file;
pub(crate) mod open;

use std::collections::BTreeMap;

pub use file::StateError;
pub(crate) use file::{StateFile, previous};

use crate::{
    class::{PerClass, TrafficClass},
    htb::Minor,
    policy::Record,
    policy::levers::{Lever, Levers},
    time::UnixSecs,
    units::{BitsPerSec, Bytes},
};

/// A notice decided by the policy and not yet delivered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Notice {
    /// Slice name.
    pub(crate) slice: String,
    /// Slice xid.
    pub(crate) xid: u32,
    /// The period it belongs to (its start).
    pub(crate) period_start: UnixSecs,
    /// When the period ends (the notice is stale after).
    pub(crate) period_end: UnixSecs,
    /// Every class that is capped.
    pub(crate) capped: Vec<CappedClass>,
    /// When the policy decided it.
    pub(crate) decided_at: UnixSecs,
    /// Delivery attempts so far.
    pub(crate) attempts: u32,
    /// Not before this time (backoff).
    pub(crate) next_attempt: UnixSecs,
}

/// One capped class of a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CappedClass {
    /// The class.
    pub(crate) class: TrafficClass,
    /// Bytes used in the period when it was capped.
    pub(crate) used: Bytes,
    /// The new ceiling.
    pub(crate) ceil: BitsPerSec,
    /// The period's budget.
    pub(crate) budget: Bytes,
}

/// What identifies a notice: one per slice and period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NoticeKey {
    /// The slice's xid.
    pub(crate) xid: u32,
    /// The start of the period it belongs to.
    pub(crate) period_start: UnixSecs,
}

impl Notice {
    /// What identifies this notice.
    pub(crate) fn key(&self) -> NoticeKey {
        NoticeKey {
            xid: self.xid,
            period_start: self.period_start,
        }
    }
}

/// One slice's persisted accounting.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SliceState {
    /// Name (for departed slices and notices).
    pub(crate) name: String,
    /// The policy's record for the current period.
    pub(crate) record: Record,
    /// Its leaves' minors, per class; `None` while it has no leaf of that class (classes on
    /// demand: its packets go to the default leaf, and are counted all the same).
    pub(crate) minors: PerClass<Option<Minor>>,
    /// Bytes its leaves had dropped when it got them (a reused minor's drops are its
    /// previous owner's).
    pub(crate) drop_base: PerClass<u64>,
    /// The slice left the slices file; kept until its period ends.
    pub(crate) departed: bool,
}

/// Everything persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct State {
    /// Slices by xid, live and departed (root included, xid 0).
    pub(crate) slices: BTreeMap<u32, SliceState>,
    /// The default pseudo-slice (xids without a slice).
    pub(crate) default: Option<Record>,
    /// Notices waiting for delivery.
    pub(crate) notices: Vec<Notice>,
    /// The instance of the kernel's counters the records' `last` values came from (see
    /// `Snapshot::epoch`); `None` before the first sync.
    pub(crate) counters_epoch: Option<u64>,
    /// The operator's grants and limits by xid, each for the period it was given in
    /// (format 3 on).
    pub(crate) levers: BTreeMap<u32, Levers>,
    /// The operator's lever requests applied lately, by id, oldest first (format 4 on): one
    /// asked again (a reply lost, a retry) is answered with its first outcome, never applied
    /// twice.
    pub requests: Vec<AppliedRequest>,
}

/// The id a client gives a lever request, the same on every retry of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RequestId(pub u64);

impl RequestId {
    /// A fresh id, from the kernel's random source.
    pub fn fresh() -> RequestId {
        let hex = open::unpredictable_suffix();
        RequestId(u64::from_str_radix(&hex, 16).unwrap_or_default())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for RequestId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16)
            .map(RequestId)
            .map_err(|_| format!("a request id is up to 16 hex digits, not '{s}'"))
    }
}

/// A lever request that was applied: what a retry of it is answered with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedRequest {
    /// Its id.
    pub id: RequestId,
    /// The slice it was applied to.
    pub xid: u32,
    /// The lever.
    pub(crate) lever: Lever,
    /// When it was applied.
    pub at: UnixSecs,
    /// The audit line of its outcome.
    pub outcome: String,
}

/// How long applied lever requests are remembered, and how many at most.
const REQUEST_MEMORY: (UnixSecs, usize) = (7 * 86_400, 1024);

impl State {
    /// The applied request `id`, if it is remembered.
    pub(crate) fn applied(&self, id: RequestId) -> Option<&AppliedRequest> {
        self.requests.iter().find(|r| r.id == id)
    }

    /// Remembers the applied request `r`; requests older than a week, or beyond the newest
    /// 1024, are forgotten.
    pub(crate) fn remember(&mut self, r: AppliedRequest) {
        let (age, count) = REQUEST_MEMORY;
        let now = r.at;
        self.requests.push(r);
        self.requests.retain(|r| r.at + age > now);
        let extra = self.requests.len().saturating_sub(count);
        self.requests.drain(..extra);
    }
}

impl State {
    /// Drops the notices whose keys are in `delivered`; says whether any was dropped.
    pub(crate) fn forget_notices(
        &mut self,
        delivered: &std::collections::HashSet<NoticeKey>,
    ) -> bool {
        let before = self.notices.len();
        self.notices.retain(|n| !delivered.contains(&n.key()));
        self.notices.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lever_requests_are_remembered_for_a_week_and_at_most_1024() {
        let mut s = State::default();
        let applied = |id, at| AppliedRequest {
            id: RequestId(id),
            xid: 1,
            lever: Lever::Reset,
            at,
            outcome: String::new(),
        };
        s.remember(applied(1, 0));
        s.remember(applied(2, 7 * 86_400 - 1));
        assert!(s.applied(RequestId(1)).is_some());
        s.remember(applied(3, 7 * 86_400));
        assert!(s.applied(RequestId(1)).is_none(), "a week old");
        for id in 10..2000 {
            s.remember(applied(id, 7 * 86_400));
        }
        assert_eq!(s.requests.len(), 1024);
        assert!(s.applied(RequestId(1999)).is_some());
        assert!(s.applied(RequestId(2)).is_none());
        assert_eq!("00000000000000ff".parse::<RequestId>(), Ok(RequestId(255)));
        assert_eq!(RequestId(255).to_string(), "00000000000000ff");
        assert!("xyz".parse::<RequestId>().is_err());
    }
}
