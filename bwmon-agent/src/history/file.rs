//! The history file: appended to by whole records, read a chunk at a time, and rewritten whole
//! when it holds more than the retention.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::records::{Entry, PeriodEntry, encode, scan};
use crate::{
    config::Retention,
    state::{
        atomic::atomic_replace,
        open::{Access, open_regular},
    },
    time::UnixSecs,
};

/// The history file beside the state file `state`.
pub(crate) fn path_for(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".history");
    PathBuf::from(name)
}

/// Appends `entries` to the file at `path` in one write (never through a link, never into a
/// FIFO).
///
/// # Errors
/// The file cannot be opened or written (a full disk), or is not a regular file: nothing
/// already there is lost.
pub(crate) fn append(path: &Path, entries: &[Entry]) -> io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut f = open_regular(path, Access::Append)?;
    f.write_all(&encode(entries))?;
    f.sync_data()
}

/// Every good record of the file at `path` (none when there is no file), and what was
/// skipped.
///
/// # Errors
/// The file exists and cannot be read.
pub(crate) fn read(path: &Path) -> io::Result<(Vec<Entry>, Vec<String>)> {
    let mut entries = Vec::new();
    let problems = scan_file(path, |e| entries.push(e))?;
    Ok((entries, problems))
}

/// Calls `f` with every good record of the file at `path` (none when there is no file) and
/// returns what was skipped, reading the file a chunk at a time.
///
/// # Errors
/// The file exists and cannot be read, or is not a regular file (a link, a FIFO: refused
/// without blocking).
pub(crate) fn scan_file(path: &Path, f: impl FnMut(Entry)) -> io::Result<Vec<String>> {
    match open_regular(path, Access::Read) {
        Ok(file) => scan(file, f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// What `entries` keep under `retention` at `now`: the newest periods of each slice (one per
/// slice and start: a period written twice is kept once), samples young enough.
pub(crate) fn retain(entries: Vec<Entry>, retention: Retention, now: UnixSecs) -> Vec<Entry> {
    let mut periods: BTreeMap<(u32, UnixSecs), PeriodEntry> = BTreeMap::new();
    let mut samples = Vec::new();
    for e in entries {
        match e {
            Entry::Period(p) => {
                periods.insert((p.xid, p.start), p);
            }
            Entry::Sample(s) if s.at + retention.sample_secs >= now => samples.push(s),
            Entry::Sample(_) => {}
        }
    }
    let mut per_slice: HashMap<u32, usize> = HashMap::new();
    let mut kept: Vec<PeriodEntry> = periods
        .into_values()
        .rev()
        .filter(|p| {
            let n = per_slice.entry(p.xid).or_default();
            *n += 1;
            *n <= retention.periods
        })
        .collect();
    kept.reverse();
    kept.into_iter()
        .map(Entry::Period)
        .chain(samples.into_iter().map(Entry::Sample))
        .collect()
}

/// Rewrites the file at `path` with what `retention` keeps ([`atomic_replace`]), in two
/// passes that hold one record at a time: the first counts each slice's periods, the second
/// writes the newest `retention.periods` of them and the samples young enough.
///
/// # Errors
/// The file cannot be read, written or renamed; the old one is then as it was.
pub(crate) fn compact(path: &Path, retention: Retention, now: UnixSecs) -> io::Result<Vec<String>> {
    let mut count: HashMap<u32, usize> = HashMap::new();
    let problems = scan_file(path, |e| {
        if let Entry::Period(p) = e {
            *count.entry(p.xid).or_default() += 1;
        }
    })?;
    atomic_replace(path, None, |out| {
        let mut seen: HashMap<u32, usize> = HashMap::new();
        let mut failed = None;
        scan_file(path, |e| {
            let keep = match &e {
                Entry::Period(p) => {
                    let n = seen.entry(p.xid).or_default();
                    *n += 1;
                    *n + retention.periods > count.get(&p.xid).copied().unwrap_or(0)
                }
                Entry::Sample(s) => s.at + retention.sample_secs >= now,
            };
            if keep && failed.is_none() {
                failed = out.write_all(&encode(std::slice::from_ref(&e))).err();
            }
        })?;
        failed.map_or(Ok(()), Err)
    })?;
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        history::{
            Tracker,
            fixtures::{finished, report, row},
            periods,
            records::CHUNK,
            render,
        },
        serve::slice_view::SliceRef,
    };

    #[test]
    fn a_file_larger_than_a_chunk_is_read_record_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("state"));
        let mut t = Tracker::default();
        let mut all = Vec::new();
        // Records straddle the chunk boundaries many times over.
        for hour in 0..12_000u64 {
            let rows = vec![row("a", 1, hour * 3600, hour, hour % 2 == 0)];
            all.extend(t.observe(&report(hour * 3600 + 1, rows)));
        }
        let bytes = encode(&all);
        assert!(bytes.len() > 3 * CHUNK, "{} bytes", bytes.len());
        let mut damaged = bytes.clone();
        damaged[2 * CHUNK + 7] ^= 0x55;
        std::fs::write(&path, &damaged).unwrap();
        let (back, problems) = read(&path).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(back.len(), all.len() - 1);
        // Compaction streams too: the newest 10 periods, the samples of the last 100 hours.
        let keep = Retention {
            periods: 10,
            sample_secs: 100 * 3600,
        };
        compact(&path, keep, 12_000 * 3600).unwrap();
        let (kept, problems) = read(&path).unwrap();
        assert!(problems.is_empty());
        let starts: Vec<UnixSecs> = finished(&kept).iter().map(|p| p.start).collect();
        assert_eq!(
            starts,
            (11_989..11_999).map(|h| h * 3600).collect::<Vec<_>>()
        );
        let samples = kept.len() - starts.len();
        assert!((99..=101).contains(&samples), "{samples} samples");
    }

    #[test]
    fn the_file_grows_by_appends_and_compaction_keeps_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("state"));
        let mut t = Tracker::default();
        for period in 0..5u64 {
            let start = period * 1000;
            append(
                &path,
                &t.observe(&report(start + 10, vec![row("a", 1, start, period, false)])),
            )
            .unwrap();
        }
        let (all, problems) = read(&path).unwrap();
        assert!(problems.is_empty());
        assert_eq!(finished(&all).len(), 4);
        let keep = Retention {
            periods: 2,
            sample_secs: 1500,
        };
        compact(&path, keep, 4010).unwrap();
        let (kept, _) = read(&path).unwrap();
        let starts: Vec<UnixSecs> = finished(&kept).iter().map(|p| p.start).collect();
        assert_eq!(starts, vec![2000, 3000]);
        assert!(kept.iter().all(|e| match e {
            Entry::Sample(s) => s.at + 1500 >= 4010,
            Entry::Period(_) => true,
        }));
        let shown = periods(&kept, Some(&SliceRef::Name("a".into())), 1);
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].start, 3000);
        assert!(render(&shown, &Default::default()).contains("a (xid 1)"));
    }
}
