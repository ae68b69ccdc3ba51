//! What bwmon remembers across restarts: every slice's period, baselines, ceilings, `emailed`
//! flag and leaf minors, departed slices until their period ends, and notices not yet
//! delivered. Postcard behind a magic and a version; written atomically (temporary file,
//! fsync, rename, fsync of the directory). A file that cannot be read, or was written by a
//! newer bwmon, stops the daemon: budgets are never silently started afresh.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::{
    class::{PerClass, TrafficClass},
    htb::Minor,
    policy::{Record, UnixSecs},
    units::{BitsPerSec, Bytes},
};

const MAGIC: &[u8; 8] = b"BWMONST\x01";
/// The format version this binary writes.
pub const VERSION: u16 = 1;

/// A notice decided by the policy and not yet delivered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Notice {
    /// Slice name.
    pub slice: String,
    /// Slice xid.
    pub xid: u32,
    /// The period it belongs to (its start).
    pub period_start: UnixSecs,
    /// When the period ends (the notice is stale after).
    pub period_end: UnixSecs,
    /// Every class that is capped.
    pub capped: Vec<CappedClass>,
    /// When the policy decided it.
    pub decided_at: UnixSecs,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Not before this time (backoff).
    pub next_attempt: UnixSecs,
}

/// One capped class of a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CappedClass {
    /// The class.
    pub class: TrafficClass,
    /// Bytes used in the period when it was capped.
    pub used: Bytes,
    /// The new ceiling.
    pub ceil: BitsPerSec,
    /// The period's budget.
    pub budget: Bytes,
}

/// What identifies a notice: one per slice and period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NoticeKey {
    /// The slice's xid.
    pub xid: u32,
    /// The start of the period it belongs to.
    pub period_start: UnixSecs,
}

impl Notice {
    /// What identifies this notice.
    pub fn key(&self) -> NoticeKey {
        NoticeKey {
            xid: self.xid,
            period_start: self.period_start,
        }
    }
}

/// One slice's persisted accounting.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SliceState {
    /// Name (for departed slices and notices).
    pub name: String,
    /// The policy's record for the current period.
    pub record: Record,
    /// Its leaves' minors.
    pub minors: PerClass<Minor>,
    /// The slice left the slices file; kept until its period ends.
    pub departed: bool,
}

/// Everything persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Slices by xid, live and departed (root included, xid 0).
    pub slices: BTreeMap<u32, SliceState>,
    /// The default pseudo-slice (xids without a slice).
    pub default: Option<Record>,
    /// Notices waiting for delivery.
    pub notices: Vec<Notice>,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on the file.
    #[error("state file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Not a bwmon state file, or damaged.
    #[error(
        "state file {path} is unreadable ({why}); refusing to start with every budget reset: move it away to start afresh"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Written by a newer bwmon.
    #[error(
        "state file {path} was written by a newer bwmon (format {found}, this one reads up to {VERSION}); refusing to start"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u16,
    },
}

impl State {
    /// Drops the notices whose keys are in `delivered`; says whether any was dropped.
    pub fn forget_notices(&mut self, delivered: &std::collections::HashSet<NoticeKey>) -> bool {
        let before = self.notices.len();
        self.notices.retain(|n| !delivered.contains(&n.key()));
        self.notices.len() != before
    }

    /// Reads the state at `path`; a missing file is a first start (empty state).
    ///
    /// # Errors
    /// Unreadable, damaged, or newer files.
    pub fn load(path: &Path) -> Result<State, StateError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::decode(path, &bytes)
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<State, StateError> {
        let corrupt = |why: String| StateError::Corrupt {
            path: path.to_owned(),
            why,
        };
        if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("no bwmon state header".into()));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version > VERSION {
            return Err(StateError::Newer {
                path: path.to_owned(),
                found: version,
            });
        }
        postcard::from_bytes(&bytes[10..]).map_err(|e| corrupt(e.to_string()))
    }

    /// The encoded file contents.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        // Serializing plain data into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Writes the state atomically: a reader (or a crash) sees the old file or the new one.
    ///
    /// # Errors
    /// Any I/O failure; the old file is then untouched.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
            std::process::id()
        ));
        let result = (|| {
            // Readable by root only: it names slices and their usage.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&self.encode())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(err)
    }
}

/// Where the state is saved, and whether the copy in memory is newer than the file. A failed
/// save leaves it dirty, so the next [`StateFile::save_if_dirty`] tries again.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    dirty: bool,
}

impl StateFile {
    /// The state file at `path`, taken to hold what is in memory.
    pub fn new(path: PathBuf) -> Self {
        Self { path, dirty: false }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state in memory changed.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Saves `state` when it changed since the last successful save.
    ///
    /// # Errors
    /// The save failed: the old file is intact and the next call tries again.
    pub fn save_if_dirty(&mut self, state: &State) -> Result<(), StateError> {
        if self.dirty {
            state.save(&self.path)?;
            self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ClassRecord;

    fn sample() -> State {
        let mut s = State::default();
        s.slices.insert(
            1001,
            SliceState {
                name: "alice".into(),
                record: Record {
                    period_start: 1_700_000_000,
                    classes: PerClass {
                        general: ClassRecord {
                            baseline: 123,
                            ceil: BitsPerSec(1_000_000),
                        },
                        exempt: ClassRecord::default(),
                    },
                    emailed: true,
                },
                minors: PerClass {
                    general: Minor(0x100),
                    exempt: Minor(0x101),
                },
                departed: false,
            },
        );
        s.notices.push(Notice {
            slice: "alice".into(),
            xid: 1001,
            period_start: 1_700_000_000,
            period_end: 1_700_086_400,
            capped: vec![CappedClass {
                class: TrafficClass::General,
                used: Bytes(5),
                ceil: BitsPerSec(1000),
                budget: Bytes(10),
            }],
            decided_at: 1_700_000_100,
            attempts: 0,
            next_attempt: 0,
        });
        s
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(State::load(&path).unwrap(), State::default(), "first start");
        sample().save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), sample());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_foreign_or_newer_files_refuse_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let good = sample().encode();
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("pickle", b"(S'$Id: bwmon.py".to_vec()),
            ("truncated", good[..good.len() / 2].to_vec()),
        ] {
            fs::write(&path, &bytes).unwrap();
            let e = State::load(&path).unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "{what}: {e}");
            assert!(e.to_string().contains("refusing to start"), "{e}");
        }
        let mut newer = good.clone();
        newer[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
        fs::write(&path, &newer).unwrap();
        assert!(matches!(
            State::load(&path).unwrap_err(),
            StateError::Newer { .. }
        ));
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        sample().save(&path).unwrap();
        // The target is a directory now: rename fails, the old contents stay readable elsewhere.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"x").unwrap();
        assert!(State::default().save(&blocked).is_err());
        assert_eq!(State::load(&path).unwrap(), sample());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file left"
        );
    }
}
