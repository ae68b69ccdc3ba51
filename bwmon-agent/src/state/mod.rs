//! What bwmon remembers across restarts: every slice's period, usage, last counters,
//! ceilings, `emailed` flag, warnings said and leaf minors, departed slices until their period
//! ends, and notices not yet delivered on every channel they go to. How it is kept on disk (checksummed, in two generations) is
//! [`file`]; files are replaced whole by [`atomic::atomic_replace`].

pub(crate) mod atomic;
mod file;
mod migrate;
pub(crate) mod open;

use std::collections::BTreeMap;

pub use file::StateError;
pub(crate) use file::{StateFile, previous};

use crate::{
    class::{PerClass, TrafficClass},
    htb::Minor,
    policy::levers::{Lever, Levers},
    policy::warnings::Percent,
    policy::{Limits, Record, received::Received},
    time::UnixSecs,
    units::{BitsPerSec, Bytes},
};

/// A notice decided by a sync (or a lever) and not yet delivered on every channel it goes to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Notice {
    /// Its id: never reused, the same across restarts (a webhook receiver's dedupe key).
    pub(crate) id: NoticeId,
    /// Slice name.
    pub(crate) slice: String,
    /// Slice xid.
    pub(crate) xid: u32,
    /// The period it belongs to (its start).
    pub(crate) period_start: UnixSecs,
    /// When the period ends (the notice is stale after).
    pub(crate) period_end: UnixSecs,
    /// What it tells.
    pub(crate) kind: NoticeKind,
    /// The classes it is about, with their figures when it was decided.
    pub(crate) classes: Vec<ClassNote>,
    /// The channels it has still to be delivered on.
    pub(crate) pending: Channels,
    /// When it was decided.
    pub(crate) decided_at: UnixSecs,
    /// Delivery attempts so far.
    pub(crate) attempts: u32,
    /// Not before this time (backoff).
    pub(crate) next_attempt: UnixSecs,
}

impl Notice {
    /// A notice of `kind` about the slice `slice` (`xid`) in the period `(start, end)`,
    /// decided at `now`, to go out on `pending`; it gets its id when it is queued
    /// ([`State::queue`]).
    pub(crate) fn new(
        (slice, xid): (&str, u32),
        (period_start, period_end): (UnixSecs, UnixSecs),
        kind: NoticeKind,
        classes: Vec<ClassNote>,
        pending: Channels,
        now: UnixSecs,
    ) -> Notice {
        Notice {
            id: NoticeId::default(),
            slice: slice.to_owned(),
            xid,
            period_start,
            period_end,
            kind,
            classes,
            pending,
            decided_at: now,
            attempts: 0,
            next_attempt: now,
        }
    }
}

/// A notice's id.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub(crate) struct NoticeId(pub(crate) u64);

/// What a notice tells. Mail carries warnings and the cap; the webhook everything.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum NoticeKind {
    /// Classes used a level of their budget (`warn_at`).
    Warned,
    /// Classes were capped.
    Capped,
    /// Classes' caps were lifted within the period (a grant, a raised budget).
    Uncapped,
    /// A new period began for a slice that was warned or capped in the one that ended.
    NewPeriod,
    /// The operator pulled a lever on the slice (its audit line).
    Lever(String),
}

impl NoticeKind {
    /// Its name in the webhook's event ("warned", "capped", "uncapped", "new_period", "lever").
    pub(crate) const fn name(&self) -> &'static str {
        match self {
            NoticeKind::Warned => "warned",
            NoticeKind::Capped => "capped",
            NoticeKind::Uncapped => "uncapped",
            NoticeKind::NewPeriod => "new_period",
            NoticeKind::Lever(_) => "lever",
        }
    }
}

/// One class of a notice, as it stood when the notice was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ClassNote {
    /// The class.
    pub(crate) class: TrafficClass,
    /// Bytes used in the period (for a new period: in the period that ended).
    pub(crate) used: Bytes,
    /// The ceiling in force.
    pub(crate) ceil: BitsPerSec,
    /// The period's budget, grants included.
    pub(crate) budget: Bytes,
    /// The warning level it crossed, when it tells one (a warning, or one crossed with the
    /// cap and told by it).
    pub(crate) level: Option<Percent>,
}

impl ClassNote {
    /// What `class` of `record` stands at under `limits`, telling no level.
    pub(crate) fn of(record: &Record, limits: &Limits, class: TrafficClass) -> ClassNote {
        ClassNote {
            class,
            used: record.used(class),
            ceil: record.classes.of(class).ceil,
            budget: limits.of(class).max,
            level: None,
        }
    }
}

/// Where notices go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum Channel {
    /// By mail (`[mail]`; its transport "none" logs them).
    Mail,
    /// POSTed to `[webhook] url`.
    Webhook,
}

impl Channel {
    /// Both channels.
    pub(crate) const ALL: [Channel; 2] = [Channel::Mail, Channel::Webhook];

    /// "mail" or "webhook".
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Channel::Mail => "mail",
            Channel::Webhook => "webhook",
        }
    }
}

/// A set of channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Channels {
    /// By mail.
    pub(crate) mail: bool,
    /// To the webhook.
    pub(crate) webhook: bool,
}

impl Channels {
    /// The webhook alone (what mail does not carry).
    pub(crate) const WEBHOOK: Channels = Channels {
        mail: false,
        webhook: true,
    };

    /// Whether `c` is one of them.
    pub(crate) const fn has(self, c: Channel) -> bool {
        match c {
            Channel::Mail => self.mail,
            Channel::Webhook => self.webhook,
        }
    }

    /// These channels but `c`.
    pub(crate) const fn without(self, c: Channel) -> Channels {
        match c {
            Channel::Mail => Channels {
                mail: false,
                ..self
            },
            Channel::Webhook => Channels {
                webhook: false,
                ..self
            },
        }
    }

    /// Whether there are none.
    pub(crate) const fn is_empty(self) -> bool {
        !self.mail && !self.webhook
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
    /// Notices waiting for delivery, oldest first.
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
    /// The id the next notice gets (format 5 on).
    pub(crate) next_notice: NoticeId,
    /// Received bytes by xid, for the slices with a record (format 6 on).
    pub(crate) received: BTreeMap<u32, Received>,
    /// The instance of the received counters `received`'s `last` values came from
    /// (`Snapshot::received_epoch`; format 6 on).
    pub(crate) received_epoch: Option<u64>,
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
    /// Queues `n` under the next id; returns it as queued.
    pub(crate) fn queue(&mut self, mut n: Notice) -> Notice {
        n.id = self.next_notice;
        self.next_notice = NoticeId(self.next_notice.0 + 1);
        self.notices.push(n.clone());
        n
    }

    /// The notice `id` was delivered on `channel`: it is forgotten once it has no channel
    /// left to go to. Says whether the state changed.
    pub(crate) fn delivered(&mut self, id: NoticeId, channel: Channel) -> bool {
        let Some(at) = self.notices.iter().position(|n| n.id == id) else {
            return false;
        };
        let n = &mut self.notices[at];
        if !n.pending.has(channel) {
            return false;
        }
        n.pending = n.pending.without(channel);
        if n.pending.is_empty() {
            self.notices.remove(at);
        }
        true
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

    #[test]
    fn a_notice_is_forgotten_once_delivered_on_every_channel_it_goes_to() {
        let mut s = State::default();
        let both = Channels {
            mail: true,
            webhook: true,
        };
        let n = |pending| {
            Notice::new(
                ("alice", 1001),
                (0, 100),
                NoticeKind::Warned,
                vec![],
                pending,
                5,
            )
        };
        let first = s.queue(n(both));
        let second = s.queue(n(Channels::WEBHOOK));
        assert_eq!((first.id, second.id), (NoticeId(0), NoticeId(1)));
        assert_eq!(s.next_notice, NoticeId(2));
        assert!(s.delivered(first.id, Channel::Mail));
        assert!(!s.delivered(first.id, Channel::Mail), "once");
        assert_eq!(s.notices.len(), 2, "the webhook still waits for it");
        assert!(s.delivered(first.id, Channel::Webhook));
        assert_eq!(
            s.notices,
            [Notice {
                id: NoticeId(1),
                ..n(Channels::WEBHOOK)
            }]
        );
        assert!(!s.delivered(NoticeId(9), Channel::Webhook), "unknown");
    }
}
