//! The operator's requests on one slice, answered by the syncer (the owner of the state):
//! what it knows of it, and the levers (grant, limit, reset), each persisted at once.

use super::{Kernel, Syncer, Tree};
use crate::{
    class::TrafficClass,
    policy::Limits,
    policy::levers::{self, Lever, LeverError, Levers},
    policy::rspec::Attributes,
    serve::slice_view::{self, SliceDetail, SliceRef},
    state::{AppliedRequest, Channels, ClassNote, Notice, NoticeKind, RequestId},
    time::{UnixSecs, calendar::Calendar},
};

/// What a pulled lever changed, for the audit line: the slice, and the value it moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pulled {
    /// The slice's name.
    pub(crate) slice: String,
    /// Its xid.
    pub(crate) xid: u32,
    /// What it was.
    pub(crate) before: String,
    /// What it is now.
    pub(crate) after: String,
    /// The lever.
    pub lever: Lever,
}

impl Pulled {
    /// The audit line: the slice, the lever, and the value it moved.
    pub(crate) fn audit(&self) -> String {
        format!(
            "{}: {}: {} → {}",
            self.slice, self.lever, self.before, self.after
        )
    }
}

/// What a lever request came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PullOutcome {
    /// Applied now.
    Applied(Pulled),
    /// Applied before, under the same request id (a retry after a lost reply): not applied
    /// again; its first outcome.
    Again(AppliedRequest),
}

/// Why an operator's request on a slice was refused (the text goes back to the CLI).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OperatorError {
    /// No slice in the state has that name or xid.
    #[error("no slice {0} (bwmon status lists them)")]
    NoSlice(SliceRef),
    /// The slice left the slices file: its levers are gone with it.
    #[error("slice {0} has left the slices file; its period runs out untouched")]
    Departed(SliceRef),
    /// The lever itself was refused.
    #[error(transparent)]
    Lever(#[from] LeverError),
    /// A request id applied before came with another lever or slice.
    #[error(
        "request id {0} was applied to another lever or slice; a retry repeats its request as it was (without --request-id, every request gets a new id)"
    )]
    RequestIdReused(RequestId),
}

impl<K: Kernel, T: Tree> Syncer<K, T> {
    /// The xid of the slice `which` names, among those in the state.
    fn find(&self, which: &SliceRef) -> Result<u32, OperatorError> {
        let found = match which {
            SliceRef::Xid(xid) => self.state.slices.contains_key(xid).then_some(*xid),
            SliceRef::Name(name) => self
                .state
                .slices
                .iter()
                .find(|(_, s)| &s.name == name)
                .map(|(xid, _)| *xid),
        };
        found.ok_or_else(|| OperatorError::NoSlice(which.clone()))
    }

    /// The attributes of the live slice `xid`; `None` once it departed.
    fn attributes(&self, xid: u32) -> Option<&Attributes> {
        (self.slices.iter().chain(&self.found))
            .find(|s| s.xid == xid)
            .map(|s| &s.attrs)
    }

    /// Everything known of the slice `which`.
    ///
    /// # Errors
    /// No such slice.
    pub(crate) fn slice_detail(
        &self,
        which: &SliceRef,
        now: UnixSecs,
    ) -> Result<SliceDetail, OperatorError> {
        let xid = self.find(which)?;
        let attrs = self.attributes(xid);
        let known = slice_view::Known {
            xid,
            state: &self.state.slices[&xid],
            attrs,
            defaults: &self.config.defaults,
            // A departed slice's: the defaults'.
            base: self.base_limits(attrs.unwrap_or(&Attributes::default())),
            levers: self.state.levers.get(&xid),
            row: self.last_report.slices.iter().find(|r| r.xid == xid),
            notice_pending: self.state.notices.iter().any(|n| n.xid == xid),
        };
        // The period's end from the calendar: a departed slice has no report line to take it
        // from.
        Ok(slice_view::detail(&known, &self.config.periods, now))
    }

    /// The webhook's notice of `lever`, pulled on the slice `xid` (whose limits before levers
    /// are `base`) with the audit line `audit`: the classes it moved as they now stand.
    fn lever_notice(
        &self,
        xid: u32,
        lever: Lever,
        audit: String,
        base: &Limits,
        now: UnixSecs,
    ) -> Notice {
        let periods = &self.config.periods;
        let s = &self.state.slices[&xid];
        let r = &s.record;
        let limits = base.in_force(self.state.levers.get(&xid), r, now, periods);
        let classes = match lever {
            Lever::Grant { class, .. } | Lever::Limit { class, .. } => vec![class],
            Lever::Reset => TrafficClass::ALL.to_vec(),
        };
        let classes = classes
            .into_iter()
            .map(|c| ClassNote::of(r, &limits, c))
            .collect();
        let period = (r.period_start, periods.end(r.period_start));
        let kind = NoticeKind::Lever(audit);
        Notice::new(
            (&s.name, xid),
            period,
            kind,
            classes,
            Channels::WEBHOOK,
            now,
        )
    }

    /// Pulls `lever` on the live slice `which` as request `id` and saves the state (with the
    /// request remembered); the caller syncs next so the tree follows at once. A request id
    /// applied before is not applied again: its first outcome comes back.
    ///
    /// # Errors
    /// No such live slice; a zero grant or a limit below bwmin; an id applied before to
    /// another lever or slice.
    pub(crate) fn pull(
        &mut self,
        id: RequestId,
        which: &SliceRef,
        lever: Lever,
        now: UnixSecs,
    ) -> Result<PullOutcome, OperatorError> {
        if let Some(first) = self.state.applied(id) {
            let same = first.lever == lever && self.find(which).ok() == Some(first.xid);
            return match same {
                true => Ok(PullOutcome::Again(first.clone())),
                false => Err(OperatorError::RequestIdReused(id)),
            };
        }
        let xid = self.find(which)?;
        let Some(base) = self.attributes(xid).map(|a| self.base_limits(a)) else {
            return Err(OperatorError::Departed(which.clone()));
        };
        let periods = &self.config.periods;
        let Some(slice) = self.state.slices.get_mut(&xid) else {
            return Err(OperatorError::NoSlice(which.clone()));
        };
        let record = slice.record;
        let period = record.period_start;
        let current = self
            .state
            .levers
            .get(&xid)
            .copied()
            .filter(|l| l.period_start == period)
            .unwrap_or(Levers::new(period));
        let (before, after) = match lever {
            Lever::Reset => {
                let before = format!(
                    "period from {period}, {} + {} exempt used",
                    slice.record.used(crate::class::TrafficClass::General),
                    slice.record.used(crate::class::TrafficClass::Exempt)
                );
                slice.record = levers::reset(&slice.record, now);
                self.state.levers.remove(&xid);
                (before, format!("period from {now}, nothing used"))
            }
            Lever::Grant { class, .. } => {
                let next = current.pull(lever)?;
                let budget = |l: &Levers| {
                    let limits: Limits = base.in_force(Some(l), &record, now, periods);
                    limits.of(class).max
                };
                let said = (
                    format!("{} budget {}", class.name(), budget(&current)),
                    format!("{} budget {}", class.name(), budget(&next)),
                );
                self.state.levers.insert(xid, next);
                said
            }
            Lever::Limit { class, .. } => {
                let next = current.pull(lever)?;
                let limit = |l: &Levers| {
                    l.limit
                        .of(class)
                        .map_or("no limit".to_owned(), |r| format!("limit {r}"))
                };
                let said = (
                    format!("{} {}", class.name(), limit(&current)),
                    format!("{} {}", class.name(), limit(&next)),
                );
                if next.is_empty() {
                    self.state.levers.remove(&xid);
                } else {
                    self.state.levers.insert(xid, next);
                }
                said
            }
        };
        let pulled = Pulled {
            slice: self.state.slices[&xid].name.clone(),
            xid,
            before,
            after,
            lever,
        };
        self.state.remember(AppliedRequest {
            id,
            xid,
            lever,
            at: now,
            outcome: pulled.audit(),
        });
        if self.config.webhook.is_some() && !self.config.dry_run {
            let n = self.lever_notice(xid, lever, pulled.audit(), &base, now);
            let queued = self.state.queue(n);
            self.told.push(queued);
        }
        self.file.mark_dirty();
        self.persist();
        Ok(PullOutcome::Applied(pulled))
    }
}
