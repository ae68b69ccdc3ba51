//! The history's records: what they hold, and how they are framed in the file — a magic, the
//! body's length, a CRC-32 and a postcard body — and read back one at a time, skipping damage.

use std::io;

use crate::{class::PerClass, time::UnixSecs};

const MAGIC: &[u8; 4] = b"BWH1";
/// Magic, length, CRC-32.
const HEADER: usize = 12;
/// No record is larger: a length above it is damage.
const MAX_RECORD: usize = 64 << 10;

/// A finished period of one slice.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PeriodEntry {
    /// Slice name.
    pub(crate) slice: String,
    /// Xid.
    pub(crate) xid: u32,
    /// Period start (Unix seconds).
    pub(crate) start: UnixSecs,
    /// Period end.
    pub(crate) end: UnixSecs,
    /// Bytes used, per class.
    pub(crate) bytes: PerClass<u64>,
    /// The budget, per class (grants included).
    pub(crate) budget: PerClass<u64>,
    /// When each class was first seen capped, if it was.
    pub(crate) capped_at: PerClass<Option<UnixSecs>>,
    /// The lowest ceiling each class had, bit/s.
    pub(crate) lowest_ceil_bps: PerClass<u64>,
    /// The slice was sent a notice.
    pub(crate) noticed: bool,
    /// Bytes received, per class of where they came from (records before downloads were
    /// counted: 0).
    pub(crate) received: PerClass<u64>,
}

/// One slice's use so far in its period, at the start of an hour.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sample {
    /// The period as it stands: bytes so far, budget, caps so far.
    pub(crate) period: PeriodEntry,
    /// When (the start of the hour it was taken in).
    pub(crate) at: UnixSecs,
    /// Use after which the ceiling is lowered, per class.
    pub(crate) threshold: PerClass<u64>,
}

/// One record of the history file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Entry {
    /// A finished period.
    Period(PeriodEntry),
    /// An hourly sample of the current period.
    Sample(Sample),
}

/// A record as the file holds it. Postcard names a variant by its index: new kinds of record
/// are added at the end, and the older ones are still read (written no more).
#[derive(serde::Serialize, serde::Deserialize)]
enum OnDisk {
    /// A finished period before received bytes.
    Period(v1::PeriodEntry),
    /// A sample before received bytes.
    Sample(v1::Sample),
    /// A finished period.
    PeriodReceived(PeriodEntry),
    /// An hourly sample.
    SampleReceived(Sample),
}

impl From<OnDisk> for Entry {
    fn from(d: OnDisk) -> Entry {
        match d {
            OnDisk::Period(p) => Entry::Period(p.into()),
            OnDisk::Sample(s) => Entry::Sample(Sample {
                period: s.period.into(),
                at: s.at,
                threshold: s.threshold,
            }),
            OnDisk::PeriodReceived(p) => Entry::Period(p),
            OnDisk::SampleReceived(s) => Entry::Sample(s),
        }
    }
}

/// The records written before received bytes.
mod v1 {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    pub(super) struct PeriodEntry {
        pub(super) slice: String,
        pub(super) xid: u32,
        pub(super) start: UnixSecs,
        pub(super) end: UnixSecs,
        pub(super) bytes: PerClass<u64>,
        pub(super) budget: PerClass<u64>,
        pub(super) capped_at: PerClass<Option<UnixSecs>>,
        pub(super) lowest_ceil_bps: PerClass<u64>,
        pub(super) noticed: bool,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    pub(super) struct Sample {
        pub(super) period: PeriodEntry,
        pub(super) at: UnixSecs,
        pub(super) threshold: PerClass<u64>,
    }

    impl From<PeriodEntry> for super::PeriodEntry {
        /// Nothing received: downloads were not counted then.
        fn from(p: PeriodEntry) -> super::PeriodEntry {
            super::PeriodEntry {
                slice: p.slice,
                xid: p.xid,
                start: p.start,
                end: p.end,
                bytes: p.bytes,
                budget: p.budget,
                capped_at: p.capped_at,
                lowest_ceil_bps: p.lowest_ceil_bps,
                noticed: p.noticed,
                received: PerClass::default(),
            }
        }
    }
}

/// The bytes of `entries` as they are appended.
pub(crate) fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let d = match e.clone() {
            Entry::Period(p) => OnDisk::PeriodReceived(p),
            Entry::Sample(s) => OnDisk::SampleReceived(s),
        };
        // Serializing plain data into a Vec cannot fail.
        let body = postcard::to_stdvec(&d).unwrap_or_default();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend(body);
    }
    out
}

/// Bytes read from the file at a time.
pub(super) const CHUNK: usize = 256 << 10;

/// At most this many damaged ranges are listed one by one; the rest are counted.
const LISTED: usize = 20;

/// What a read skipped: one line per damaged range (its byte span and what was wrong where it
/// began), the first [`LISTED`] of them, then a count of the rest. Memory and log lines stay
/// bounded whatever the damage.
#[derive(Default)]
struct Damage {
    lines: Vec<String>,
    /// Ranges seen, listed or not.
    ranges: u64,
    /// Bytes skipped in all.
    bytes: u64,
    /// The range being skipped: where it began, and why.
    open: Option<(u64, &'static str)>,
}

impl Damage {
    /// Bytes from `at` on cannot be read as a record (a range begins unless one is open).
    fn begin(&mut self, at: u64, why: &'static str) {
        self.open.get_or_insert((at, why));
    }

    /// A good record (or the file's end) at `at` ends the open range, if any.
    fn end(&mut self, at: u64) {
        let Some((start, why)) = self.open.take() else {
            return;
        };
        self.ranges += 1;
        self.bytes += at - start;
        if self.lines.len() < LISTED {
            self.lines.push(format!(
                "bytes {start}..{at} ({} bytes): {why}; skipped to the next record",
                at - start
            ));
        }
    }

    fn into_lines(mut self) -> Vec<String> {
        let unlisted = self.ranges - self.lines.len() as u64;
        if unlisted > 0 {
            self.lines.push(format!(
                "and {unlisted} more damaged ranges ({} bytes skipped in all)",
                self.bytes
            ));
        }
        self.lines
    }
}

/// Reads records one by one from a file of any size (memory: one chunk and one record), and
/// says what it skips, once per damaged range.
struct Scanner<R> {
    r: R,
    buf: Vec<u8>,
    pos: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
    damage: Damage,
}

impl<R: io::Read> Scanner<R> {
    fn new(r: R) -> Self {
        Scanner {
            r,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            eof: false,
            damage: Damage::default(),
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

    /// The file offset of `pos`.
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// The next good record; damaged bytes are skipped to the next magic, and each run of them
    /// noted once.
    fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        loop {
            if !self.want(1)? {
                self.damage.end(self.offset());
                return Ok(None);
            }
            let at = self.offset();
            match self.record()? {
                Ok(e) => {
                    self.damage.end(at);
                    return Ok(Some(e));
                }
                Err(why) => self.damage.begin(at, why),
            }
            self.pos += 1;
            self.skip_to_magic()?;
        }
    }

    /// Moves `pos` to the next magic, or to the end of the file.
    fn skip_to_magic(&mut self) -> io::Result<()> {
        while self.want(MAGIC.len())? {
            let window = &self.buf[self.pos..];
            match window.windows(MAGIC.len()).position(|w| w == MAGIC) {
                Some(i) => {
                    self.pos += i;
                    return Ok(());
                }
                // Keep the last bytes: a magic may straddle the next read.
                None => self.pos = self.buf.len() - (MAGIC.len() - 1),
            }
        }
        self.pos = self.buf.len();
        Ok(())
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
        match postcard::from_bytes::<OnDisk>(body).map(Entry::from) {
            Ok(e) => {
                self.pos += HEADER + len;
                Ok(Ok(e))
            }
            Err(_) => Ok(Err("unreadable record")),
        }
    }
}

/// Calls `f` with every good record of `r`; returns what was skipped: a line per damaged
/// range (by byte span), at most [`LISTED`] of them and a count of the rest.
pub(super) fn scan(r: impl io::Read, mut f: impl FnMut(Entry)) -> io::Result<Vec<String>> {
    let mut s = Scanner::new(r);
    while let Some(e) = s.next_entry()? {
        f(e);
    }
    Ok(s.damage.into_lines())
}

/// Every good record in `bytes`, and what was wrong with the others (by offset).
#[cfg(test)]
fn decode(bytes: &[u8]) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    // Reading a slice cannot fail.
    let problems = scan(bytes, |e| entries.push(e)).unwrap_or_default();
    (entries, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{
        Tracker,
        fixtures::{report, row},
    };

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
        let (_, problems) = decode(&front);
        assert_eq!(
            problems,
            ["bytes 0..4 (4 bytes): no record starts here; skipped to the next record"]
        );
    }

    #[test]
    fn records_written_before_received_bytes_read_with_none_received() {
        let mut t = Tracker::default();
        let mut entries = t.observe(&report(3600, vec![row("a", 1, 0, 1, false)]));
        entries.extend(t.observe(&report(7200, vec![row("a", 1, 5000, 2, false)])));
        // The same records as the earlier bwmon framed them: its two kinds, without received.
        let mut old = Vec::new();
        for e in &entries {
            let v1 = |p: &PeriodEntry| v1::PeriodEntry {
                slice: p.slice.clone(),
                xid: p.xid,
                start: p.start,
                end: p.end,
                bytes: p.bytes,
                budget: p.budget,
                capped_at: p.capped_at,
                lowest_ceil_bps: p.lowest_ceil_bps,
                noticed: p.noticed,
            };
            let d = match e {
                Entry::Period(p) => OnDisk::Period(v1(p)),
                Entry::Sample(s) => OnDisk::Sample(v1::Sample {
                    period: v1(&s.period),
                    at: s.at,
                    threshold: s.threshold,
                }),
            };
            let body = postcard::to_stdvec(&d).unwrap();
            old.extend_from_slice(MAGIC);
            old.extend_from_slice(&(body.len() as u32).to_le_bytes());
            old.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            old.extend(body);
        }
        assert!(entries.iter().all(|e| match e {
            Entry::Period(p) => p.received == PerClass::default(),
            Entry::Sample(s) => s.period.received == PerClass::default(),
        }));
        assert_eq!(decode(&old), (entries, vec![]));
    }

    #[test]
    fn a_run_of_record_magic_is_one_damaged_range_read_in_one_pass() {
        let mut t = Tracker::default();
        let entries = t.observe(&report(3600, vec![row("a", 1, 0, 1, false)]));
        let good = encode(&entries);
        // 8 MiB of magic between two good records, then more after the second.
        let run = MAGIC.repeat(2 << 20);
        let mut bytes = good.clone();
        bytes.extend(&run);
        bytes.extend(&good);
        bytes.extend(&run[..1000]);
        let started = std::time::Instant::now();
        let (read, problems) = decode(&bytes);
        assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
        assert_eq!(read, [entries.clone(), entries].concat());
        let (a, b) = (good.len(), good.len() + run.len());
        assert_eq!(
            problems,
            [
                format!(
                    "bytes {a}..{b} ({} bytes): impossible length; skipped to the next record",
                    run.len()
                ),
                format!(
                    "bytes {}..{} (1000 bytes): impossible length; skipped to the next record",
                    b + good.len(),
                    bytes.len()
                ),
            ]
        );
    }

    #[test]
    fn damage_between_many_records_is_listed_up_to_a_bound_and_counted() {
        let mut t = Tracker::default();
        let entries = t.observe(&report(3600, vec![row("a", 1, 0, 1, false)]));
        let good = encode(&entries);
        let mut bytes = Vec::new();
        for _ in 0..1000 {
            bytes.extend(&good);
            bytes.extend(b"xx");
        }
        let (read, problems) = decode(&bytes);
        assert_eq!(read.len(), 1000);
        assert_eq!(problems.len(), LISTED + 1, "{problems:?}");
        assert_eq!(
            problems[LISTED],
            "and 980 more damaged ranges (2000 bytes skipped in all)"
        );
    }
}
