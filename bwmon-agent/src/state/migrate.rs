//! The state's older formats, read only to migrate them: each format converts into the next,
//! the fourth into today's [`State`], so a file of any of them loads whole, usage and all.

use std::collections::BTreeMap;

use super::{Notice, SliceState, State};
use crate::{
    class::PerClass,
    htb::Minor,
    policy::{ClassRecord, Record},
    time::UnixSecs,
    units::{BitsPerSec, Bytes},
};

/// A first-format file's payload (after its magic and version) as today's state.
pub(super) fn from_first(payload: &[u8]) -> Result<State, postcard::Error> {
    postcard::from_bytes::<v1::State>(payload).map(|old| State::from(v4::State::from(old)))
}

/// A later format's payload (after its version) as today's state; `None` for a version this
/// binary has never written.
pub(super) fn from_older(version: u16, payload: &[u8]) -> Option<Result<State, postcard::Error>> {
    Some(match version {
        2 => postcard::from_bytes::<v2::State>(payload)
            .map(|v2| State::from(v4::State::from(v3::State::from(v2)))),
        3 => postcard::from_bytes::<v3::State>(payload).map(|v3| State::from(v4::State::from(v3))),
        4 => postcard::from_bytes::<v4::State>(payload).map(State::from),
        5 => postcard::from_bytes::<v5::State>(payload).map(State::from),
        _ => return None,
    })
}

/// The first format, read to migrate it: a record kept the counter at the period's start.
mod v1 {
    use super::*;

    #[derive(serde::Deserialize)]
    pub(crate) struct ClassRecordV1 {
        baseline: u64,
        ceil: BitsPerSec,
    }

    #[derive(serde::Deserialize)]
    pub(crate) struct RecordV1 {
        period_start: UnixSecs,
        classes: PerClass<ClassRecordV1>,
        emailed: bool,
    }

    #[derive(serde::Deserialize)]
    pub(crate) struct SliceStateV1 {
        name: String,
        record: RecordV1,
        minors: PerClass<Minor>,
        departed: bool,
    }

    #[derive(serde::Deserialize)]
    pub(crate) struct State {
        slices: BTreeMap<u32, SliceStateV1>,
        default: Option<RecordV1>,
        notices: Vec<v4::Notice>,
    }

    impl From<RecordV1> for v4::Record {
        /// Nothing used yet, last counter = the period's start: the next sync adds
        /// `counter − baseline`, which is what the period used.
        fn from(r: RecordV1) -> v4::Record {
            v4::Record {
                period_start: r.period_start,
                classes: r.classes.map(|_, c| ClassRecord {
                    used: Bytes(0),
                    last: c.baseline,
                    ceil: c.ceil,
                }),
                emailed: r.emailed,
            }
        }
    }

    impl From<State> for v4::State {
        fn from(s: State) -> v4::State {
            v4::State {
                slices: s
                    .slices
                    .into_iter()
                    .map(|(xid, s)| {
                        let slice = v4::SliceState {
                            name: s.name,
                            record: s.record.into(),
                            minors: s.minors.map(|_, m| Some(m)),
                            drop_base: PerClass::default(),
                            departed: s.departed,
                        };
                        (xid, slice)
                    })
                    .collect(),
                default: s.default.map(v4::Record::from),
                notices: s.notices,
                // Unknown: the counters the first format saw are taken to go on.
                counters_epoch: None,
                levers: BTreeMap::new(),
                requests: Vec::new(),
            }
        }
    }
}

/// The second format: the third without the levers.
mod v2 {
    use super::*;

    #[derive(serde::Deserialize)]
    pub(crate) struct State {
        slices: BTreeMap<u32, v4::SliceState>,
        default: Option<v4::Record>,
        notices: Vec<v4::Notice>,
        counters_epoch: Option<u64>,
    }

    impl From<State> for super::v3::State {
        fn from(s: State) -> super::v3::State {
            super::v3::State {
                slices: s.slices,
                default: s.default,
                notices: s.notices,
                counters_epoch: s.counters_epoch,
                levers: BTreeMap::new(),
            }
        }
    }
}

/// The third format: the fourth without the lever requests.
mod v3 {
    use super::*;
    use crate::policy::levers::Levers;

    #[derive(serde::Deserialize)]
    pub(crate) struct State {
        pub(super) slices: BTreeMap<u32, v4::SliceState>,
        pub(super) default: Option<v4::Record>,
        pub(super) notices: Vec<v4::Notice>,
        pub(super) counters_epoch: Option<u64>,
        pub(super) levers: BTreeMap<u32, Levers>,
    }

    impl From<State> for v4::State {
        fn from(s: State) -> v4::State {
            v4::State {
                slices: s.slices,
                default: s.default,
                notices: s.notices,
                counters_epoch: s.counters_epoch,
                levers: s.levers,
                requests: Vec::new(),
            }
        }
    }
}

/// The fifth format: the sixth without the received bytes at the end.
mod v5 {
    use super::*;
    use crate::state::{AppliedRequest, Notice, NoticeId, SliceState};

    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    pub(crate) struct State {
        pub(super) slices: BTreeMap<u32, SliceState>,
        pub(super) default: Option<super::Record>,
        pub(super) notices: Vec<Notice>,
        pub(super) counters_epoch: Option<u64>,
        pub(super) levers: BTreeMap<u32, crate::policy::levers::Levers>,
        pub(super) requests: Vec<AppliedRequest>,
        pub(super) next_notice: NoticeId,
    }

    impl From<State> for super::State {
        /// Nothing received yet: downloads were not counted before this format.
        fn from(s: State) -> super::State {
            super::State {
                slices: s.slices,
                default: s.default,
                notices: s.notices,
                counters_epoch: s.counters_epoch,
                levers: s.levers,
                requests: s.requests,
                next_notice: s.next_notice,
                received: BTreeMap::new(),
                received_epoch: None,
            }
        }
    }
}

/// The fourth format: records without the warnings said; a notice was the cap's, by mail, one
/// per slice and period, without an id.
pub(super) mod v4 {
    use super::*;
    use crate::{
        class::TrafficClass,
        policy::levers::Levers,
        state::{AppliedRequest, Channels, ClassNote, NoticeId, NoticeKind},
    };

    #[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
    pub(crate) struct Record {
        pub(in crate::state) period_start: UnixSecs,
        pub(in crate::state) classes: PerClass<ClassRecord>,
        pub(in crate::state) emailed: bool,
    }

    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    pub(crate) struct SliceState {
        pub(in crate::state) name: String,
        pub(in crate::state) record: Record,
        pub(in crate::state) minors: PerClass<Option<Minor>>,
        pub(in crate::state) drop_base: PerClass<u64>,
        pub(in crate::state) departed: bool,
    }

    #[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
    pub(crate) struct CappedClass {
        pub(in crate::state) class: TrafficClass,
        pub(in crate::state) used: Bytes,
        pub(in crate::state) ceil: BitsPerSec,
        pub(in crate::state) budget: Bytes,
    }

    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    pub(crate) struct Notice {
        pub(in crate::state) slice: String,
        pub(in crate::state) xid: u32,
        pub(in crate::state) period_start: UnixSecs,
        pub(in crate::state) period_end: UnixSecs,
        pub(in crate::state) capped: Vec<CappedClass>,
        pub(in crate::state) decided_at: UnixSecs,
        pub(in crate::state) attempts: u32,
        pub(in crate::state) next_attempt: UnixSecs,
    }

    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    pub(crate) struct State {
        pub(in crate::state) slices: BTreeMap<u32, SliceState>,
        pub(in crate::state) default: Option<Record>,
        pub(in crate::state) notices: Vec<Notice>,
        pub(in crate::state) counters_epoch: Option<u64>,
        pub(in crate::state) levers: BTreeMap<u32, Levers>,
        pub(in crate::state) requests: Vec<AppliedRequest>,
    }

    impl From<Record> for super::Record {
        /// Nothing warned yet: the warnings came after this format.
        fn from(r: Record) -> super::Record {
            super::Record {
                period_start: r.period_start,
                classes: r.classes,
                emailed: r.emailed,
                warned: PerClass::default(),
            }
        }
    }

    impl From<State> for super::State {
        /// Each queued notice is the cap's, still to be mailed, numbered in queue order.
        fn from(s: State) -> super::State {
            let notices: Vec<super::Notice> = (0u64..)
                .zip(s.notices)
                .map(|(id, n)| super::Notice {
                    id: NoticeId(id),
                    slice: n.slice,
                    xid: n.xid,
                    period_start: n.period_start,
                    period_end: n.period_end,
                    kind: NoticeKind::Capped,
                    classes: n
                        .capped
                        .into_iter()
                        .map(|c| ClassNote {
                            class: c.class,
                            used: c.used,
                            ceil: c.ceil,
                            budget: c.budget,
                            level: None,
                        })
                        .collect(),
                    pending: Channels {
                        mail: true,
                        webhook: false,
                    },
                    decided_at: n.decided_at,
                    attempts: n.attempts,
                    next_attempt: n.next_attempt,
                })
                .collect();
            super::State {
                slices: s
                    .slices
                    .into_iter()
                    .map(|(xid, s)| {
                        let slice = super::SliceState {
                            name: s.name,
                            record: s.record.into(),
                            minors: s.minors,
                            drop_base: s.drop_base,
                            departed: s.departed,
                        };
                        (xid, slice)
                    })
                    .collect(),
                default: s.default.map(super::Record::from),
                next_notice: NoticeId(notices.len() as u64),
                notices,
                counters_epoch: s.counters_epoch,
                levers: s.levers,
                requests: s.requests,
                received: BTreeMap::new(),
                received_epoch: None,
            }
        }
    }
}
