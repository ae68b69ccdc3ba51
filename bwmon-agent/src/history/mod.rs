//! What slices used in past periods, and hourly in this one: a file beside the state
//! (`<state>.history`) that only grows by whole records, read back record by record.
//!
//! A record is a magic, its length, a CRC-32 and a postcard body (`records`). One `write`
//! appends the records of a sync; a crash can cut only the last one, and a record that is cut
//! or damaged is skipped (said, never fatal): reading resumes at the next magic. Old records
//! are dropped by replacing the file whole when it holds more than the retention (`file`).
//! The [`Tracker`] decides what each sync records; `view` and [`svg`] show it.

mod file;
mod records;
pub(crate) mod svg;
mod tracker;
mod view;

pub(crate) use file::{append, compact, path_for, read};
pub(crate) use records::{Entry, Sample};
pub(crate) use tracker::Tracker;
pub(crate) use view::{document, periods, render};

/// Status rows and reports for the tests.
#[cfg(test)]
mod fixtures {
    use crate::{
        history::{Entry, records::PeriodEntry},
        serve::status::{SliceStatus, StatusReport},
        time::UnixSecs,
    };

    pub(super) fn row(
        name: &str,
        xid: u32,
        start: UnixSecs,
        bytes: u64,
        capped: bool,
    ) -> SliceStatus {
        SliceStatus {
            name: name.into(),
            xid,
            period_start: start,
            period_end: start + 1000,
            bytes,
            max_kbyte: 100,
            thresh_kbyte: 80,
            ceil_bps: if capped { 8_000 } else { 1_000_000 },
            exempt_ceil_bps: 1_000_000,
            capped,
            ..Default::default()
        }
    }

    pub(super) fn report(now: UnixSecs, rows: Vec<SliceStatus>) -> StatusReport {
        StatusReport {
            now,
            period_secs: 1000,
            slices: rows,
            ..Default::default()
        }
    }

    pub(super) fn finished(entries: &[Entry]) -> Vec<&PeriodEntry> {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Period(p) => Some(p),
                Entry::Sample(_) => None,
            })
            .collect()
    }
}
