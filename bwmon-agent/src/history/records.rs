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

/// The bytes of `entries` as they are appended.
pub(crate) fn encode(entries: &[Entry]) -> Vec<u8> {
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
pub(super) const CHUNK: usize = 256 << 10;

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
pub(super) fn scan(r: impl io::Read, mut f: impl FnMut(Entry)) -> io::Result<Vec<String>> {
    let mut s = Scanner::new(r);
    while let Some(e) = s.next_entry()? {
        f(e);
    }
    Ok(s.problems)
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
    }
}
