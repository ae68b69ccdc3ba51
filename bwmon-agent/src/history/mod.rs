//! What slices used in past periods, and hourly in this one: a file beside the state
//! (`<state>.history`) that only grows by whole records, read back record by record.
//!
//! A record is a magic, its length, a CRC-32 and a postcard body. One `write` appends the
//! records of a sync; a crash can cut only the last one, and a record that is cut or damaged is
//! skipped (said, never fatal): reading resumes at the next magic. Old records are dropped by
//! rewriting the file (temporary file, rename) when it holds more than the retention.

pub mod svg;

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::{
    class::{PerClass, TrafficClass},
    config::Retention,
    serve::slice_view::SliceRef,
    serve::status::{ClassStatus, SliceStatus, StatusReport},
    time::UnixSecs,
};

const MAGIC: &[u8; 4] = b"BWH1";
/// Magic, length, CRC-32.
const HEADER: usize = 12;
/// No record is larger: a length above it is damage.
const MAX_RECORD: usize = 64 << 10;
const HOUR: UnixSecs = 3600;

/// A finished period of one slice.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeriodEntry {
    /// Slice name.
    pub slice: String,
    /// Xid.
    pub xid: u32,
    /// Period start (Unix seconds).
    pub start: UnixSecs,
    /// Period end.
    pub end: UnixSecs,
    /// Bytes used, per class.
    pub bytes: PerClass<u64>,
    /// The budget, per class (grants included).
    pub budget: PerClass<u64>,
    /// When each class was first seen capped, if it was.
    pub capped_at: PerClass<Option<UnixSecs>>,
    /// The lowest ceiling each class had, bit/s.
    pub lowest_ceil_bps: PerClass<u64>,
    /// The slice was sent a notice.
    pub noticed: bool,
}

/// One slice's use so far in its period, at the start of an hour.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// The period as it stands: bytes so far, budget, caps so far.
    pub period: PeriodEntry,
    /// When (the start of the hour it was taken in).
    pub at: UnixSecs,
    /// Use after which the ceiling is lowered, per class.
    pub threshold: PerClass<u64>,
}

/// One record of the history file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Entry {
    /// A finished period.
    Period(PeriodEntry),
    /// An hourly sample of the current period.
    Sample(Sample),
}

/// The bytes of `entries` as they are appended.
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        // Serializing plain data into a Vec cannot fail.
        let body = postcard::to_stdvec(e).unwrap_or_default();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend(body);
    }
    out
}

/// Bytes read from the file at a time.
const CHUNK: usize = 256 << 10;

/// Reads records one by one from a file of any size (memory: one chunk and one record), and
/// says what it skips.
struct Scanner<R> {
    r: R,
    buf: Vec<u8>,
    pos: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
    problems: Vec<String>,
}

impl<R: io::Read> Scanner<R> {
    fn new(r: R) -> Self {
        Scanner {
            r,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            eof: false,
            problems: Vec::new(),
        }
    }

    /// Whether `n` bytes are available at `pos` (reading more unless the file ended).
    fn want(&mut self, n: usize) -> io::Result<bool> {
        while self.buf.len() - self.pos < n && !self.eof {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
            let old = self.buf.len();
            self.buf.resize(old + CHUNK, 0);
            let got = self.r.read(&mut self.buf[old..])?;
            self.buf.truncate(old + got);
            self.eof = got == 0;
        }
        Ok(self.buf.len() - self.pos >= n)
    }

    /// The next good record; damaged ones are noted and skipped to the next magic.
    fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        loop {
            if !self.want(1)? {
                return Ok(None);
            }
            let at = self.base + self.pos as u64;
            let why = self.record()?;
            let Err(why) = why else {
                return Ok(why.ok());
            };
            self.problems
                .push(format!("byte {at}: {why}; skipped to the next record"));
            self.pos += 1;
            while self.want(MAGIC.len())? && &self.buf[self.pos..self.pos + MAGIC.len()] != MAGIC {
                self.pos += 1;
            }
            if !self.want(MAGIC.len())? {
                self.pos = self.buf.len();
            }
        }
    }

    /// The record at `pos` (moving past it), or why there is none.
    fn record(&mut self) -> io::Result<Result<Entry, &'static str>> {
        if !self.want(HEADER)? {
            return Ok(Err("cut short"));
        }
        let h = &self.buf[self.pos..self.pos + HEADER];
        if &h[..4] != MAGIC {
            return Ok(Err("no record starts here"));
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if len > MAX_RECORD {
            return Ok(Err("impossible length"));
        }
        if !self.want(HEADER + len)? {
            return Ok(Err("cut short"));
        }
        let body = &self.buf[self.pos + HEADER..self.pos + HEADER + len];
        if crc32fast::hash(body) != crc {
            return Ok(Err("checksum mismatch"));
        }
        match postcard::from_bytes::<Entry>(body) {
            Ok(e) => {
                self.pos += HEADER + len;
                Ok(Ok(e))
            }
            Err(_) => Ok(Err("unreadable record")),
        }
    }
}

/// Calls `f` with every good record of `r`; returns what was skipped (by offset).
fn scan(r: impl io::Read, mut f: impl FnMut(Entry)) -> io::Result<Vec<String>> {
    let mut s = Scanner::new(r);
    while let Some(e) = s.next_entry()? {
        f(e);
    }
    Ok(s.problems)
}

/// Every good record in `bytes`, and what was wrong with the others (by offset).
pub fn decode(bytes: &[u8]) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    // Reading a slice cannot fail.
    let problems = scan(bytes, |e| entries.push(e)).unwrap_or_default();
    (entries, problems)
}

/// Calls `f` with every good record of the file at `path` (none when there is no file) and
/// returns what was skipped, reading the file a chunk at a time.
///
/// # Errors
/// The file exists and cannot be read.
pub fn scan_file(path: &Path, f: impl FnMut(Entry)) -> io::Result<Vec<String>> {
    match fs::File::open(path) {
        Ok(file) => scan(file, f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The history file beside the state file `state`.
pub fn path_for(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".history");
    PathBuf::from(name)
}

/// Appends `entries` to the file at `path` in one write.
///
/// # Errors
/// The file cannot be opened or written (a full disk): nothing already there is lost.
pub fn append(path: &Path, entries: &[Entry]) -> io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(&encode(entries))?;
    f.sync_data()
}

/// Every good record of the file at `path` (none when there is no file), and what was
/// skipped.
///
/// # Errors
/// The file exists and cannot be read.
pub fn read(path: &Path) -> io::Result<(Vec<Entry>, Vec<String>)> {
    let mut entries = Vec::new();
    let problems = scan_file(path, |e| entries.push(e))?;
    Ok((entries, problems))
}

/// What `entries` keep under `retention` at `now`: the newest periods of each slice (one per
/// slice and start: a period written twice is kept once), samples young enough.
pub fn retain(entries: Vec<Entry>, retention: Retention, now: UnixSecs) -> Vec<Entry> {
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

/// Rewrites the file at `path` with what `retention` keeps (temporary file, rename), in two
/// passes that hold one record at a time: the first counts each slice's periods, the second
/// writes the newest `retention.periods` of them and the samples young enough.
///
/// # Errors
/// The file cannot be read, written or renamed; the old one is then as it was.
pub fn compact(path: &Path, retention: Retention, now: UnixSecs) -> io::Result<Vec<String>> {
    let mut count: HashMap<u32, usize> = HashMap::new();
    let problems = scan_file(path, |e| {
        if let Entry::Period(p) = e {
            *count.entry(p.xid).or_default() += 1;
        }
    })?;
    let tmp = path.with_extension("history-tmp");
    let written = (|| {
        let mut out = io::BufWriter::new(
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?,
        );
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
        if let Some(e) = failed {
            return Err(e);
        }
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| problems)
}

/// The finished periods in `entries` of the slice `which` (all when `None`), the newest `n`
/// of each, oldest first; a period recorded twice is shown once.
pub fn periods(entries: &[Entry], which: Option<&SliceRef>, n: usize) -> Vec<PeriodEntry> {
    let matches = |p: &PeriodEntry| match which {
        None => true,
        Some(SliceRef::Name(name)) => &p.slice == name,
        Some(SliceRef::Xid(xid)) => p.xid == *xid,
    };
    let periods = entries.iter().filter_map(|e| match e {
        Entry::Period(p) if matches(p) => Some(Entry::Period(p.clone())),
        _ => None,
    });
    let kept = retain(
        periods.collect(),
        Retention {
            periods: n,
            sample_secs: 0,
        },
        0,
    );
    let mut out: Vec<PeriodEntry> = kept
        .into_iter()
        .filter_map(|e| match e {
            Entry::Period(p) => Some(p),
            Entry::Sample(_) => None,
        })
        .collect();
    out.sort_by(|a, b| (&a.slice, a.start).cmp(&(&b.slice, b.start)));
    out
}

/// `used` of `budget` as a bar of 20 cells.
fn bar(used: u64, budget: u64) -> String {
    const CELLS: u64 = 20;
    let full = (used.saturating_mul(CELLS) / budget.max(1)).min(CELLS) as usize;
    format!("{}{}", "█".repeat(full), "░".repeat(CELLS as usize - full))
}

/// `bwmon history` as text: per slice, a line per period and class with a bar of its use
/// against its budget.
pub fn render(periods: &[PeriodEntry]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut last = None;
    for p in periods {
        if last != Some((&p.slice, p.xid)) {
            let _ = writeln!(out, "{} (xid {})", p.slice, p.xid);
            last = Some((&p.slice, p.xid));
        }
        let _ = writeln!(
            out,
            "  {} → {}{}",
            crate::time::text::format_time(p.start),
            crate::time::text::format_time(p.end),
            if p.noticed { "  (noticed)" } else { "" }
        );
        for class in TrafficClass::ALL {
            let (used, budget) = (*p.bytes.of(class), *p.budget.of(class));
            let capped = p.capped_at.of(class).map_or(String::new(), |t| {
                format!(
                    "  capped at {}, down to {}",
                    crate::time::text::format_time(t),
                    crate::units::BitsPerSec(*p.lowest_ceil_bps.of(class))
                )
            });
            let _ = writeln!(
                out,
                "    {:<8} {} {:>5.1} %  {} of {}{capped}",
                class.name(),
                bar(used, budget),
                used as f64 * 100.0 / budget.max(1) as f64,
                crate::units::Bytes(used),
                crate::units::Bytes(budget),
            );
        }
    }
    if periods.is_empty() {
        out.push_str("no finished period recorded yet\n");
    }
    out
}

/// What the history knows of each slice's current period, between syncs.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    open: HashMap<u32, Sample>,
    /// The period and bytes of each slice's last written sample: an idle slice writes none
    /// (10,000 configured slices, 1,000 of them active, write 1,000 samples an hour, not 10,000).
    written: HashMap<u32, (UnixSecs, PerClass<u64>)>,
}

impl Tracker {
    /// A tracker that goes on from the newest samples of `entries` (after a restart).
    pub fn resume(entries: &[Entry]) -> Tracker {
        let mut r = Resume::default();
        for e in entries {
            r.add(e.clone());
        }
        r.tracker()
    }

    /// A tracker that goes on from the newest samples in the file at `path`, read a record at
    /// a time; and what was skipped in it.
    ///
    /// # Errors
    /// The file exists and cannot be read.
    pub fn resume_file(path: &Path) -> io::Result<(Tracker, Vec<String>)> {
        let mut r = Resume::default();
        let problems = scan_file(path, |e| r.add(e))?;
        Ok((r.tracker(), problems))
    }

    /// The records one sync's report makes: a finished period for every slice whose period
    /// changed, a sample for every slice not yet sampled in this hour whose use moved since its
    /// last sample.
    pub fn observe(&mut self, report: &StatusReport) -> Vec<Entry> {
        let now = report.now;
        let hour = now - now % HOUR;
        let mut out = Vec::new();
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
    }
}

/// `p` (the period so far) updated with what a sync at `now` saw of it.
fn merge(p: &mut PeriodEntry, seen: &PeriodEntry, capped: PerClass<bool>, now: UnixSecs) {
    p.slice.clone_from(&seen.slice);
    p.bytes = seen.bytes;
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

    fn row(name: &str, xid: u32, start: UnixSecs, bytes: u64, capped: bool) -> SliceStatus {
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

    fn report(now: UnixSecs, rows: Vec<SliceStatus>) -> StatusReport {
        StatusReport {
            now,
            period_secs: 1000,
            slices: rows,
            ..Default::default()
        }
    }

    fn finished(entries: &[Entry]) -> Vec<&PeriodEntry> {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Period(p) => Some(p),
                Entry::Sample(_) => None,
            })
            .collect()
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
        let mut again = Tracker::resume(&file);
        let out = again.observe(&report(1100, vec![row("a", 1, 1000, 5, false)]));
        assert!(finished(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn a_restart_resumes_from_the_newest_samples() {
        let mut t = Tracker::default();
        let mut file = t.observe(&report(7200, vec![row("alice", 1, 7000, 10, true)]));
        file.extend(t.observe(&report(10_900, vec![row("alice", 1, 7000, 50, true)])));
        let mut again = Tracker::resume(&file);
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

    #[test]
    fn damaged_and_cut_records_are_skipped_one_by_one() {
        let mut t = Tracker::default();
        let mut entries = t.observe(&report(3600, vec![row("a", 1, 0, 1, false)]));
        entries.extend(t.observe(&report(7200, vec![row("a", 1, 5000, 2, false)])));
        entries.extend(t.observe(&report(10_800, vec![row("a", 1, 5000, 3, false)])));
        let good = encode(&entries);
        assert_eq!(decode(&good), (entries.clone(), vec![]));
        // One byte of the second record's body flipped: only that record goes.
        let second = encode(&entries[..1]).len();
        let mut bad = good.clone();
        bad[second + HEADER + 3] ^= 0xff;
        let (read, problems) = decode(&bad);
        assert_eq!(read.len(), entries.len() - 1);
        assert_eq!(read[0], entries[0]);
        assert_eq!(read.last(), entries.last());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("checksum"), "{problems:?}");
        // A crash in the middle of the last write.
        let (read, problems) = decode(&good[..good.len() - 5]);
        assert_eq!(read.len(), entries.len() - 1);
        assert!(problems[0].contains("cut short"), "{problems:?}");
        // Garbage in front.
        let mut front = b"junk".to_vec();
        front.extend(&good);
        assert_eq!(decode(&front).0, entries);
    }

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
        assert!(render(&shown).contains("a (xid 1)"));
    }
}
