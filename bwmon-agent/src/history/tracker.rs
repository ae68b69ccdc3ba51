//! The history as a sync sees it: which records each sync's report makes (finished periods,
//! hourly samples), and where it goes on from after a restart.

use std::{
    collections::{HashMap, HashSet},
    io,
    path::Path,
};

use super::{
    file::scan_file,
    records::{Entry, PeriodEntry, Sample},
};
use crate::{
    class::{PerClass, TrafficClass},
    serve::status::{ClassStatus, SliceStatus, StatusReport},
    state::State,
    time::UnixSecs,
};

const HOUR: UnixSecs = 3600;

/// What the history knows of each slice's current period, between syncs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tracker {
    open: HashMap<u32, Sample>,
    /// The period and bytes of each slice's last written sample: an idle slice writes none
    /// (10,000 configured slices, 1,000 of them active, write 1,000 samples an hour, not 10,000).
    written: HashMap<u32, (UnixSecs, PerClass<u64>)>,
}

impl Tracker {
    /// A tracker that goes on from the newest samples in the file at `path`, read a record at
    /// a time; and what was skipped in it.
    ///
    /// # Errors
    /// The file exists and cannot be read.
    pub(crate) fn resume_file(path: &Path) -> io::Result<(Tracker, Vec<String>)> {
        let mut r = Resume::default();
        let problems = scan_file(path, |e| r.add(e))?;
        Ok((r.tracker(), problems))
    }

    /// Brings the periods going on up to what `state` (as loaded at start) used in them: after a
    /// restart the newest sample may be an hour older than the last save, and a period that
    /// ended while bwmon was down is written with the state's bytes, not the sample's.
    pub(crate) fn carry_state(&mut self, state: &State) {
        for (xid, s) in &state.slices {
            let Some(open) = self.open.get_mut(xid) else {
                continue;
            };
            let r = &s.record;
            if open.period.start == r.period_start {
                open.period.bytes = PerClass::from_fn(|c| r.used(c).0);
                if let Some(received) = state.received.get(xid)
                    && received.period_start == r.period_start
                {
                    open.period.received = received.used.map(|_, b| b.0);
                }
                open.period.noticed |= r.emailed;
            }
        }
    }

    /// The records one sync's report makes: a finished period for every slice whose period
    /// changed, and for every slice gone from the report whose period has ended (a departed
    /// slice's record expires then); a sample for every slice not yet sampled in this hour
    /// whose use moved since its last sample.
    pub(crate) fn observe(&mut self, report: &StatusReport) -> Vec<Entry> {
        let now = report.now;
        let hour = now - now % HOUR;
        let mut out = Vec::new();
        let shown: HashSet<u32> = report.slices.iter().map(|r| r.xid).collect();
        let mut ended: Vec<u32> = self
            .open
            .iter()
            .filter(|(xid, o)| !shown.contains(xid) && o.period.end <= now)
            .map(|(xid, _)| *xid)
            .collect();
        ended.sort_unstable();
        for xid in ended {
            if let Some(o) = self.open.remove(&xid) {
                self.written.remove(&xid);
                out.push(Entry::Period(o.period));
            }
        }
        for row in &report.slices {
            let classes = row.per_class();
            let seen = period_of(row, &classes);
            let (mut period, sampled) = match self.open.remove(&row.xid) {
                Some(o) if o.period.start == seen.start => (o.period, o.at == hour),
                Some(o) => {
                    // The period ended (or was reset): what its last sync saw is what it used.
                    let mut done = o.period;
                    done.end = done.end.min(seen.start);
                    out.push(Entry::Period(done));
                    (seen.clone(), false)
                }
                None => (seen.clone(), false),
            };
            merge(&mut period, &seen, classes.map(|_, c| c.capped), now);
            let sample = Sample {
                period,
                at: hour,
                threshold: classes.map(|_, c| c.thresh.bytes().0),
            };
            let now_written = (sample.period.start, sample.period.bytes);
            if !sampled && self.written.get(&row.xid) != Some(&now_written) {
                self.written.insert(row.xid, now_written);
                out.push(Entry::Sample(sample.clone()));
            }
            self.open.insert(row.xid, sample);
        }
        out
    }
}

/// What a restart needs of the history: each slice's newest sample and newest finished period.
#[derive(Default)]
struct Resume {
    open: HashMap<u32, Sample>,
    finished: HashMap<u32, UnixSecs>,
}

impl Resume {
    fn add(&mut self, e: Entry) {
        match e {
            Entry::Period(p) => {
                let f = self.finished.entry(p.xid).or_default();
                *f = (*f).max(p.start);
            }
            Entry::Sample(s) => {
                if self.open.get(&s.period.xid).is_none_or(|o| o.at <= s.at) {
                    self.open.insert(s.period.xid, s);
                }
            }
        }
    }

    /// Periods already written as finished are not open any more.
    fn tracker(mut self) -> Tracker {
        let finished = self.finished;
        self.open
            .retain(|xid, s| finished.get(xid).is_none_or(|f| s.period.start > *f));
        let written = self
            .open
            .iter()
            .map(|(xid, s)| (*xid, (s.period.start, s.period.bytes)))
            .collect();
        Tracker {
            open: self.open,
            written,
        }
    }
}

/// A status line (and its `classes`) as the period it describes so far (caps are [`merge`]d in
/// with their time).
fn period_of(row: &SliceStatus, classes: &PerClass<ClassStatus>) -> PeriodEntry {
    PeriodEntry {
        slice: row.name.clone(),
        xid: row.xid,
        start: row.period_start,
        end: row.period_end,
        bytes: classes.map(|_, c| c.used.0),
        budget: classes.map(|_, c| c.budget.bytes().0),
        capped_at: PerClass::default(),
        lowest_ceil_bps: classes.map(|_, c| c.ceil.0),
        noticed: row.emailed,
        received: PerClass {
            general: row.received_bytes,
            exempt: row.received_exempt_bytes,
        },
    }
}

/// `p` (the period so far) updated with what a sync at `now` saw of it.
fn merge(p: &mut PeriodEntry, seen: &PeriodEntry, capped: PerClass<bool>, now: UnixSecs) {
    p.slice.clone_from(&seen.slice);
    p.bytes = seen.bytes;
    p.received = seen.received;
    p.budget = seen.budget;
    p.noticed |= seen.noticed;
    for class in TrafficClass::ALL {
        if *capped.of(class) && p.capped_at.of(class).is_none() {
            *p.capped_at.of_mut(class) = Some(now);
        }
        let low = p.lowest_ceil_bps.of_mut(class);
        *low = (*low).min(*seen.lowest_ceil_bps.of(class));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::fixtures::{finished, report, row};

    /// A tracker that goes on from `entries`, as [`Tracker::resume_file`] does from a file.
    fn resumed(entries: &[Entry]) -> Tracker {
        let mut r = Resume::default();
        for e in entries {
            r.add(e.clone());
        }
        r.tracker()
    }

    #[test]
    fn a_period_ends_with_what_its_last_sync_saw_and_when_it_was_capped() {
        let mut t = Tracker::default();
        let first = t.observe(&report(7200, vec![row("alice", 1, 7000, 10, false)]));
        assert!(finished(&first).is_empty());
        assert_eq!(first.len(), 1, "one sample in this hour");
        assert!(
            t.observe(&report(7300, vec![row("alice", 1, 7000, 90_000, true)]))
                .is_empty()
        );
        assert!(
            t.observe(&report(7400, vec![row("alice", 1, 7000, 99_000, true)]))
                .is_empty()
        );
        // Next hour: a sample; next period: the finished one.
        let next = t.observe(&report(8100, vec![row("alice", 1, 8000, 5, false)]));
        let done = finished(&next);
        assert_eq!(done.len(), 1);
        let p = done[0];
        assert_eq!((p.start, p.end), (7000, 8000));
        assert_eq!(p.bytes.general, 99_000);
        assert_eq!(p.budget.general, 100 * 1024);
        assert_eq!(p.capped_at.general, Some(7300));
        assert_eq!(p.capped_at.exempt, None);
        assert_eq!(p.lowest_ceil_bps.general, 8_000);
        assert!(
            next.iter()
                .any(|e| matches!(e, Entry::Sample(s) if s.period.start == 8000))
        );
    }

    #[test]
    fn an_idle_slice_writes_no_samples_until_it_moves() {
        let mut t = Tracker::default();
        let rows = |bytes| vec![row("a", 1, 0, 10, false), row("b", 2, 0, bytes, false)];
        assert_eq!(
            t.observe(&report(100, rows(5))).len(),
            2,
            "first sight: both"
        );
        assert!(
            t.observe(&report(3700, rows(5))).is_empty(),
            "nothing moved"
        );
        let out = t.observe(&report(7300, rows(6)));
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Entry::Sample(s) if s.period.xid == 2 && s.at == 7200));
    }

    #[test]
    fn a_new_period_is_sampled_and_a_finished_one_is_not_finished_twice() {
        let mut t = Tracker::default();
        let mut file = t.observe(&report(100, vec![row("a", 1, 0, 0, false)]));
        file.extend(t.observe(&report(500, vec![row("a", 1, 0, 70, false)])));
        // A new period with nothing used yet, the same bytes as the last sample: sampled.
        let out = t.observe(&report(1000, vec![row("a", 1, 1000, 0, false)]));
        assert_eq!(finished(&out).len(), 1);
        assert_eq!(finished(&out)[0].bytes.general, 70);
        assert!(
            out.iter()
                .any(|e| matches!(e, Entry::Sample(s) if s.period.start == 1000))
        );
        file.extend(out);
        // After a restart the finished period is not written again.
        let mut again = resumed(&file);
        let out = again.observe(&report(1100, vec![row("a", 1, 1000, 5, false)]));
        assert!(finished(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn a_departed_slices_last_period_is_written_when_its_record_expires() {
        let mut t = Tracker::default();
        let both = |b| vec![row("a", 1, 0, 10, false), row("gone", 2, 0, b, false)];
        t.observe(&report(100, both(70)));
        t.observe(&report(200, both(90)));
        // "gone" leaves the slices file: no line while its record is kept, nothing written.
        let out = t.observe(&report(300, vec![row("a", 1, 0, 10, false)]));
        assert!(finished(&out).is_empty(), "{out:?}");
        // Its period ends at 1000 (the fixtures' periods are 1000 s): written then, once.
        let out = t.observe(&report(1000, vec![row("a", 1, 1000, 0, false)]));
        let done = finished(&out);
        assert_eq!(done.len(), 2, "{out:?}");
        let gone = done.iter().find(|p| p.xid == 2).unwrap();
        assert_eq!((gone.start, gone.end, gone.bytes.general), (0, 1000, 90));
        let out = t.observe(&report(1100, vec![row("a", 1, 1000, 5, false)]));
        assert!(finished(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn a_period_that_ended_while_bwmon_was_down_is_written_with_the_states_bytes() {
        let mut t = Tracker::default();
        // The last sample of the period says 50; the state saved at the stop says 80.
        let file = t.observe(&report(7200, vec![row("alice", 1, 7000, 50, false)]));
        let mut state = State::default();
        let mut record = crate::policy::Record {
            period_start: 7000,
            ..Default::default()
        };
        record.classes.general.used = crate::units::Bytes(80);
        record.emailed = true;
        state.slices.insert(
            1,
            crate::state::SliceState {
                name: "alice".into(),
                record,
                minors: PerClass::default(),
                drop_base: PerClass::default(),
                departed: false,
            },
        );
        let mut again = resumed(&file);
        again.carry_state(&state);
        // Back after the period's end: the first sync starts the next period.
        let out = again.observe(&report(9000, vec![row("alice", 1, 9000, 0, false)]));
        let done = finished(&out);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].bytes.general, 80, "the state's bytes");
        assert!(done[0].noticed);
        assert_eq!(done[0].end, 8000);
    }

    #[test]
    fn a_restart_resumes_from_the_newest_samples() {
        let mut t = Tracker::default();
        let mut file = t.observe(&report(7200, vec![row("alice", 1, 7000, 10, true)]));
        file.extend(t.observe(&report(10_900, vec![row("alice", 1, 7000, 50, true)])));
        let mut again = resumed(&file);
        let out = again.observe(&report(11_000, vec![row("alice", 1, 11_000, 0, false)]));
        let done = finished(&out);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].bytes.general, 50);
        assert_eq!(
            done[0].capped_at.general,
            Some(7200),
            "carried by the samples"
        );
    }
}
