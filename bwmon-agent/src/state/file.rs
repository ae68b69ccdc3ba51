//! The state on disk. Postcard behind a magic, a CRC-32 of everything after it, and a
//! version; written atomically (temporary file, fsync, rename, fsync of the directory), and in
//! two generations: before a new `state` replaces the old one, the old one becomes
//! `state.prev`. At start the newest generation that loads wins; a damaged one is moved aside
//! with a timestamp and said in the log and in status. Only when none loads does the daemon
//! refuse to start, naming the file and `bwmon run --fresh-state`: budgets are never silently
//! started afresh. A failed save leaves the files as they were and is retried.

use std::{
    ffi::OsString,
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use super::{
    State,
    atomic::atomic_replace,
    migrate,
    open::{Access, is_refused, open_regular},
};

/// Files of this format: magic, CRC-32 (LE) of the rest, version (LE), postcard.
const MAGIC: &[u8; 8] = b"BWMONSC\x02";
/// The first format: magic, version 1, postcard, no checksum (read to migrate it).
const MAGIC_V1: &[u8; 8] = b"BWMONST\x01";
/// The format version this binary writes (3: the operator's levers after the rest; 4: the
/// lever requests applied lately after those; 5: the warnings said in each record, notices of
/// every kind with their ids and channels, the next notice id after the rest; 6: the received
/// bytes per slice and their counters' epoch after the rest).
pub(crate) const VERSION: u16 = 6;

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
    #[error("state file {path} is damaged: {why}")]
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
    /// A link, a FIFO or anything but a regular file where a state file should be.
    #[error("state file {path}")]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it is.
        #[source]
        source: io::Error,
    },
    /// Neither generation loads.
    #[error(
        "no generation of the state file {path} loads ({why}); refusing to start with every budget reset. To start afresh on purpose: bwmon run --fresh-state"
    )]
    NoGoodGeneration {
        /// The state file.
        path: PathBuf,
        /// What is wrong with each generation.
        why: String,
    },
}

/// A damaged generation moved out of the way at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetAside {
    /// Where it was.
    pub(crate) from: PathBuf,
    /// Where it is now.
    pub(crate) to: PathBuf,
    /// What was wrong with it.
    pub(crate) why: String,
}

/// The state as loaded at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// The state (empty at a first start).
    pub(crate) state: State,
    /// The file it came from; `None` at a first start.
    pub(crate) from: Option<PathBuf>,
    /// Damaged generations moved aside.
    pub(crate) set_aside: Vec<SetAside>,
    /// The newest generation was missing and the previous one loaded: the usage is that of
    /// the save before the last.
    pub lone_previous: bool,
}

/// The previous generation of the state file at `path`: `<path>.prev`.
pub(crate) fn previous(path: &Path) -> PathBuf {
    with_suffix(path, ".prev")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

impl State {
    /// Reads the one file at `path`; a missing file is `Ok(None)`.
    ///
    /// # Errors
    /// Unreadable, damaged, or newer files.
    pub(crate) fn read(path: &Path) -> Result<Option<State>, StateError> {
        let read = open_regular(path, Access::Read).and_then(|mut f| {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).map(|_| bytes)
        });
        match read {
            Ok(bytes) => Self::decode(path, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) if is_refused(&source) => Err(StateError::NotAFile {
                path: path.to_owned(),
                source,
            }),
            Err(source) => Err(StateError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Reads the state at `path`, falling back to its previous generation; a damaged
    /// generation is moved aside (`<path>.damaged-<unix time>`). No file at all is a first
    /// start.
    ///
    /// # Errors
    /// No generation loads; a file cannot be read or moved; a newer format.
    pub(crate) fn load(path: &Path) -> Result<Loaded, StateError> {
        let prev = previous(path);
        let mut damaged: Vec<(PathBuf, String)> = Vec::new();
        let mut found = None;
        for candidate in [path, prev.as_path()] {
            match Self::read(candidate) {
                Ok(Some(state)) => {
                    found = Some((state, candidate.to_owned()));
                    break;
                }
                Ok(None) => {}
                Err(StateError::Corrupt { why, .. }) => damaged.push((candidate.to_owned(), why)),
                Err(e) => return Err(e),
            }
        }
        let lone_previous = found.as_ref().is_some_and(|(_, from)| from == &prev)
            && damaged.iter().all(|(file, _)| file != path);
        let Some((state, from)) = found else {
            if damaged.is_empty() {
                return Ok(Loaded::default());
            }
            let why = damaged
                .iter()
                .map(|(p, why)| format!("{}: {why}", p.display()))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(StateError::NoGoodGeneration {
                path: path.to_owned(),
                why,
            });
        };
        let stamp = crate::time::now();
        let mut set_aside = Vec::new();
        for (file, why) in damaged {
            let to = with_suffix(&file, &format!(".damaged-{stamp}"));
            fs::rename(&file, &to).map_err(|source| StateError::Io {
                path: file.clone(),
                source,
            })?;
            set_aside.push(SetAside {
                from: file,
                to,
                why,
            });
        }
        Ok(Loaded {
            state,
            from: Some(from),
            set_aside,
            lone_previous,
        })
    }

    /// Removes every generation at `path` (`state` and `state.prev`), for `teardown
    /// --forget-state`. Returns the files removed.
    ///
    /// # Errors
    /// A file that exists and cannot be removed.
    pub(crate) fn forget(path: &Path) -> Result<Vec<PathBuf>, StateError> {
        let mut removed = Vec::new();
        for file in [path.to_owned(), previous(path)] {
            match fs::remove_file(&file) {
                Ok(()) => removed.push(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StateError::Io { path: file, source }),
            }
        }
        Ok(removed)
    }

    /// Moves every generation at `path` aside (`<path>.discarded-<unix time>`), for a start
    /// afresh on purpose. Returns where they went.
    ///
    /// # Errors
    /// A file that exists and cannot be moved.
    pub(crate) fn discard(path: &Path) -> Result<Vec<PathBuf>, StateError> {
        let stamp = crate::time::now();
        let mut moved = Vec::new();
        for file in [path.to_owned(), previous(path)] {
            let to = with_suffix(&file, &format!(".discarded-{stamp}"));
            match fs::rename(&file, &to) {
                Ok(()) => moved.push(to),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StateError::Io { path: file, source }),
            }
        }
        Ok(moved)
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<State, StateError> {
        let corrupt = |why: String| StateError::Corrupt {
            path: path.to_owned(),
            why,
        };
        if let Some(rest) = bytes.strip_prefix(MAGIC_V1) {
            if rest.get(..2) != Some(&1u16.to_le_bytes()[..]) {
                return Err(corrupt("a first-format header with another version".into()));
            }
            return migrate::from_first(&rest[2..]).map_err(|e| corrupt(e.to_string()));
        }
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Err(corrupt("no bwmon state header".into()));
        };
        if rest.len() < 6 {
            return Err(corrupt("cut short".into()));
        }
        let (crc, body) = rest.split_at(4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let version = u16::from_le_bytes([body[0], body[1]]);
        if version > VERSION {
            return Err(StateError::Newer {
                path: path.to_owned(),
                found: version,
            });
        }
        let decoded = if version == VERSION {
            postcard::from_bytes(&body[2..])
        } else {
            migrate::from_older(version, &body[2..])
                .ok_or_else(|| corrupt(format!("unknown version {version}")))?
        };
        decoded.map_err(|e| corrupt(e.to_string()))
    }

    /// The encoded file contents.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = VERSION.to_le_bytes().to_vec();
        // Serializing plain data into a Vec cannot fail.
        body.extend(postcard::to_stdvec(self).unwrap_or_default());
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend(body);
        out
    }

    /// Writes the state atomically, keeping the file it replaces as `<path>.prev`: a reader
    /// (or a crash) sees the old generations or the new ones, never half a file.
    ///
    /// # Errors
    /// Any I/O failure (a full or read-only disk); the files are then as they were.
    pub(crate) fn save(&self, path: &Path) -> Result<(), StateError> {
        let bytes = self.encode();
        // A crash between the renames leaves `.prev` alone, which loads.
        atomic_replace(path, Some(&previous(path)), |w| w.write_all(&bytes)).map_err(|source| {
            StateError::Io {
                path: path.to_owned(),
                source,
            }
        })
    }
}

/// Where the state is saved, and whether the copy in memory is newer than the file. A failed
/// save leaves it dirty, so the next [`StateFile::save_if_dirty`] tries again.
#[derive(Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    dirty: bool,
}

impl StateFile {
    /// The state file at `path`, taken to hold what is in memory.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, dirty: false }
    }

    /// The state in memory changed.
    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Saves `state` when it changed since the last successful save.
    ///
    /// # Errors
    /// The save failed: the old files are intact and the next call tries again.
    pub(crate) fn save_if_dirty(&mut self, state: &State) -> Result<(), StateError> {
        if self.dirty {
            state.save(&self.path)?;
            self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        class::{PerClass, TrafficClass},
        htb::Minor,
        policy::warnings::{Levels, Percent},
        policy::{ClassRecord, Record},
        state::migrate::v4,
        state::{
            Channels, ClassNote, Notice, NoticeId, NoticeKind, SliceState, atomic::names as files,
        },
        units::{BitsPerSec, Bytes},
    };

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
                            used: Bytes(4000),
                            last: 123,
                            ceil: BitsPerSec(1_000_000),
                        },
                        exempt: ClassRecord::default(),
                    },
                    emailed: true,
                    warned: PerClass {
                        general: [80, 95].into_iter().filter_map(Percent::new).collect(),
                        exempt: Levels::default(),
                    },
                },
                minors: PerClass {
                    general: Some(Minor(0x100)),
                    exempt: None,
                },
                drop_base: PerClass::default(),
                departed: false,
            },
        );
        let mut levers = crate::policy::levers::Levers::new(1_700_000_000);
        levers.grant.general = Bytes(2 << 30);
        levers.limit.exempt = Some(BitsPerSec(3_000_000));
        s.levers.insert(1001, levers);
        s.remember(crate::state::AppliedRequest {
            id: crate::state::RequestId(0xfeed),
            xid: 1001,
            lever: crate::policy::levers::Lever::Grant {
                class: TrafficClass::General,
                amount: Bytes(2 << 30),
            },
            at: 1_700_000_050,
            outcome: "alice: grant general 2.0 GiB: general budget 5.4 GiB → 7.4 GiB".into(),
        });
        let told = |kind, level, pending| Notice {
            id: NoticeId::default(),
            slice: "alice".into(),
            xid: 1001,
            period_start: 1_700_000_000,
            period_end: 1_700_086_400,
            kind,
            classes: vec![ClassNote {
                class: TrafficClass::General,
                used: Bytes(5),
                ceil: BitsPerSec(1000),
                budget: Bytes(10),
                level,
            }],
            pending,
            decided_at: 1_700_000_100,
            attempts: 0,
            next_attempt: 0,
        };
        let both = Channels {
            mail: true,
            webhook: true,
        };
        let hook = Channels {
            mail: false,
            webhook: true,
        };
        s.queue(told(NoticeKind::Warned, Percent::new(80), both));
        s.queue(told(NoticeKind::Capped, Percent::new(95), both));
        s.queue(told(NoticeKind::Lever("alice: reset".into()), None, hook));
        s
    }

    /// A state of the fourth format: alice capped and mailed, her notice queued.
    fn fourth() -> v4::State {
        let new = sample();
        let now = new.slices[&1001].record;
        let record = v4::Record {
            period_start: now.period_start,
            classes: now.classes,
            emailed: now.emailed,
        };
        let slice = v4::SliceState {
            name: "alice".into(),
            record,
            minors: PerClass {
                general: Some(Minor(0x100)),
                exempt: None,
            },
            drop_base: PerClass::default(),
            departed: false,
        };
        let notice = v4::Notice {
            slice: "alice".into(),
            xid: 1001,
            period_start: 1_700_000_000,
            period_end: 1_700_086_400,
            capped: vec![v4::CappedClass {
                class: TrafficClass::General,
                used: Bytes(5),
                ceil: BitsPerSec(1000),
                budget: Bytes(10),
            }],
            decided_at: 1_700_000_100,
            attempts: 0,
            next_attempt: 0,
        };
        v4::State {
            slices: BTreeMap::from([(1001, slice)]),
            default: Some(record),
            notices: vec![notice],
            counters_epoch: Some(7),
            levers: new.levers,
            requests: new.requests,
        }
    }

    /// [`fourth`] as this bwmon reads it: nothing warned, its notice the cap's by mail, id 0.
    fn fourth_migrated() -> State {
        let mut s = sample();
        let alice = s.slices.get_mut(&1001).unwrap();
        alice.record.warned = PerClass::default();
        s.default = Some(alice.record);
        s.counters_epoch = Some(7);
        s.notices.clear();
        s.next_notice = NoticeId(0);
        s.queue(Notice {
            id: NoticeId::default(),
            slice: "alice".into(),
            xid: 1001,
            period_start: 1_700_000_000,
            period_end: 1_700_086_400,
            kind: NoticeKind::Capped,
            classes: vec![ClassNote {
                class: TrafficClass::General,
                used: Bytes(5),
                ceil: BitsPerSec(1000),
                budget: Bytes(10),
                level: None,
            }],
            pending: Channels {
                mail: true,
                webhook: false,
            },
            decided_at: 1_700_000_100,
            attempts: 0,
            next_attempt: 0,
        });
        s
    }

    #[test]
    fn round_trips_and_keeps_the_previous_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(
            State::load(&path).unwrap(),
            Loaded::default(),
            "first start"
        );
        State::default().save(&path).unwrap();
        sample().save(&path).unwrap();
        let loaded = State::load(&path).unwrap();
        assert_eq!(loaded.state, sample());
        assert_eq!(loaded.from.as_deref(), Some(path.as_path()));
        assert_eq!(
            State::read(&previous(&path)).unwrap(),
            Some(State::default())
        );
        // No temporary file is left behind.
        assert_eq!(files(dir.path()), ["state", "state.prev"]);
    }

    #[test]
    fn a_damaged_newest_generation_falls_back_to_the_previous_and_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        sample().save(&path).unwrap();
        State::default().save(&path).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x5a;
        fs::write(&path, &bytes).unwrap();
        let loaded = State::load(&path).unwrap();
        assert_eq!(loaded.state, sample(), "the previous generation");
        assert_eq!(loaded.from, Some(previous(&path)));
        assert_eq!(loaded.set_aside.len(), 1);
        assert!(
            loaded.set_aside[0].why.contains("checksum"),
            "{:?}",
            loaded.set_aside
        );
        assert!(!path.exists(), "moved aside");
        assert!(loaded.set_aside[0].to.exists());
        assert_eq!(fs::read(&loaded.set_aside[0].to).unwrap(), bytes);
    }

    #[test]
    fn a_lone_previous_generation_loads_and_says_so_and_forget_removes_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        sample().save(&path).unwrap();
        State::default().save(&path).unwrap();
        let loaded = State::load(&path).unwrap();
        assert!(!loaded.lone_previous);
        fs::remove_file(&path).unwrap();
        let loaded = State::load(&path).unwrap();
        assert_eq!(loaded.state, sample());
        assert_eq!(loaded.from, Some(previous(&path)));
        assert!(loaded.lone_previous);
        assert!(loaded.set_aside.is_empty());
        // Forgetting removes every generation.
        State::default().save(&path).unwrap();
        let removed = State::forget(&path).unwrap();
        assert_eq!(removed, vec![path.clone(), previous(&path)]);
        assert_eq!(State::load(&path).unwrap(), Loaded::default());
        assert_eq!(State::forget(&path).unwrap(), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_link_or_a_fifo_at_the_state_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let victim = dir.path().join("victim");
        sample().save(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = State::load(&path).unwrap_err();
        assert!(matches!(e, StateError::NotAFile { .. }), "{e}");
        assert!(format!("{:#}", anyhow::Error::from(e)).contains("symbolic link"));
        assert!(
            State::default().save(&path).is_err(),
            "never written through"
        );
        assert_eq!(State::read(&victim).unwrap(), Some(sample()));
        fs::remove_file(&path).unwrap();
        crate::state::open::mkfifo(&path);
        let e = State::load(&path).unwrap_err();
        assert!(matches!(e, StateError::NotAFile { .. }), "{e}");
    }

    #[test]
    fn both_generations_damaged_refuses_and_names_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        fs::write(&path, b"garbage").unwrap();
        fs::write(previous(&path), b"(S'$Id: bwmon.py").unwrap();
        let e = State::load(&path).unwrap_err();
        assert!(matches!(e, StateError::NoGoodGeneration { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("bwmon run --fresh-state"), "{text}");
        assert!(path.exists(), "nothing moved when nothing loads");
        let moved = State::discard(&path).unwrap();
        assert_eq!(moved.len(), 2);
        assert_eq!(State::load(&path).unwrap(), Loaded::default());
    }

    #[test]
    fn damaged_foreign_or_newer_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let good = sample().encode();
        for (what, bytes) in [
            ("empty", Vec::new()),
            ("pickle", b"(S'$Id: bwmon.py".to_vec()),
            ("truncated", good[..good.len() / 2].to_vec()),
        ] {
            fs::write(&path, &bytes).unwrap();
            let e = State::read(&path).unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "{what}: {e}");
        }
        // A newer format, with a valid checksum.
        let mut body = (VERSION + 1).to_le_bytes().to_vec();
        body.extend(postcard::to_stdvec(&sample()).unwrap());
        let mut newer = MAGIC.to_vec();
        newer.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        newer.extend(body);
        fs::write(&path, &newer).unwrap();
        assert!(matches!(
            State::load(&path).unwrap_err(),
            StateError::Newer { .. }
        ));
    }

    #[test]
    fn every_single_byte_flip_is_refused_or_loads_the_same_records() {
        let path = Path::new("/nonexistent/state");
        let good = sample().encode();
        let mut refused = 0;
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff, 0x5a] {
                let mut bytes = good.clone();
                bytes[i] ^= flip;
                match State::decode(path, &bytes) {
                    Ok(s) => assert_eq!(s, sample(), "byte {i} ^ {flip:#x} loaded other records"),
                    Err(_) => refused += 1,
                }
            }
        }
        assert_eq!(refused, good.len() * 4, "a checksum catches every flip");
    }

    #[test]
    fn a_first_format_file_is_migrated_without_a_fresh_budget() {
        // Version 1 of alice's record: counter 1,000 at the period's start.
        #[derive(serde::Serialize)]
        struct V1Class(u64, BitsPerSec);
        /// period start, (general, exempt), emailed
        type V1Record = (u64, (V1Class, V1Class), bool);
        /// name, record, minors, departed
        type V1Slice = (String, V1Record, (u16, u16), bool);
        let slices: BTreeMap<u32, V1Slice> = BTreeMap::from([(
            1001,
            (
                "alice".to_owned(),
                (
                    1_700_000_000,
                    (
                        V1Class(1000, BitsPerSec(5000)),
                        V1Class(7, BitsPerSec(6000)),
                    ),
                    true,
                ),
                (0x100, 0x101),
                false,
            ),
        )]);
        let payload = (slices, None::<()>, Vec::<Notice>::new());
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend(postcard::to_stdvec(&payload).unwrap());
        let s = State::decode(Path::new("state"), &bytes).unwrap();
        let alice = &s.slices[&1001];
        assert_eq!(alice.record.period_start, 1_700_000_000);
        assert_eq!(alice.record.classes.general.last, 1000);
        assert_eq!(alice.record.classes.general.used, Bytes(0));
        assert_eq!(alice.record.classes.exempt.ceil, BitsPerSec(6000));
        assert!(alice.record.emailed);
        assert_eq!(alice.minors.exempt, Some(Minor(0x101)));
        // The next sync charges what the period used: counter − baseline.
        let next = alice.record.classes.general.carried(1500);
        assert_eq!(next.used, Bytes(500));
    }

    /// A file of format `version` with `payload` as its body, checksummed.
    fn file_of(version: u16, payload: &impl serde::Serialize) -> Vec<u8> {
        let mut body = version.to_le_bytes().to_vec();
        body.extend(postcard::to_stdvec(payload).unwrap());
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend(body);
        bytes
    }

    #[test]
    fn a_fourth_format_file_loads_whole_with_nothing_warned_and_its_notice_mailed() {
        let old = fourth();
        let s = State::decode(Path::new("state"), &file_of(4, &old)).unwrap();
        assert_eq!(s, fourth_migrated());
        assert_eq!(s.notices[0].id, NoticeId(0));
        assert_eq!(s.next_notice, NoticeId(1), "the next notice gets a new id");
        // And the warnings, notices and ids of format 5 round-trip.
        let with = sample();
        assert_eq!(with.notices.len(), 3);
        assert_eq!(with.next_notice, NoticeId(3));
        assert_eq!(
            State::decode(Path::new("state"), &with.encode()).unwrap(),
            with
        );
    }

    #[test]
    fn a_third_format_file_loads_whole_with_no_lever_requests() {
        // Format 3 is format 4 without the requests at the end.
        let old = fourth();
        let payload = (
            &old.slices,
            &old.default,
            &old.notices,
            &old.counters_epoch,
            &old.levers,
        );
        let mut expect = fourth_migrated();
        expect.requests.clear();
        assert_eq!(
            State::decode(Path::new("state"), &file_of(3, &payload)).unwrap(),
            expect
        );
    }

    #[test]
    fn a_second_format_file_loads_whole_with_no_levers() {
        // Format 2 is format 3 without the levers at the end.
        let old = fourth();
        let payload = (&old.slices, &old.default, &old.notices, &old.counters_epoch);
        let mut expect = fourth_migrated();
        expect.requests.clear();
        expect.levers.clear();
        assert_eq!(
            State::decode(Path::new("state"), &file_of(2, &payload)).unwrap(),
            expect
        );
    }

    #[test]
    fn a_fifth_format_file_loads_whole_with_nothing_received_and_received_bytes_round_trip() {
        // Format 5 is format 6 without the received bytes and their epoch at the end.
        let old = sample();
        let payload = (
            &old.slices,
            &old.default,
            &old.notices,
            &old.counters_epoch,
            &old.levers,
            &old.requests,
            &old.next_notice,
        );
        let loaded = State::decode(Path::new("state"), &file_of(5, &payload)).unwrap();
        assert_eq!(loaded, old, "everything of format 5 kept");
        assert!(loaded.received.is_empty() && loaded.received_epoch.is_none());
        // And a state with received bytes round-trips.
        let mut with = old;
        let received = crate::policy::received::Received {
            period_start: 1_700_000_000,
            used: PerClass {
                general: Bytes(7 << 20),
                exempt: Bytes(3),
            },
            last: PerClass {
                general: 9 << 20,
                exempt: 3,
            },
            charged: PerClass {
                general: 5 << 20,
                exempt: 0,
            },
        };
        with.received.insert(1001, received);
        with.received_epoch = Some(0xfeed);
        assert_eq!(
            State::decode(Path::new("state"), &with.encode()).unwrap(),
            with
        );
    }

    #[test]
    fn a_failed_write_leaves_the_old_files_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        sample().save(&path).unwrap();
        // The target is a directory now: rename fails, the old contents stay readable elsewhere.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"x").unwrap();
        let mut file = StateFile::new(blocked.clone());
        file.mark_dirty();
        assert!(file.save_if_dirty(&State::default()).is_err());
        assert_eq!(State::load(&path).unwrap().state, sample());
        assert_eq!(
            files(dir.path()),
            ["blocked", "state"],
            "no temporary file left"
        );
        // Space is back: the next call saves.
        fs::remove_dir_all(&blocked).unwrap();
        file.save_if_dirty(&State::default()).unwrap();
        assert_eq!(State::read(&blocked).unwrap(), Some(State::default()));
        file.save_if_dirty(&sample()).unwrap();
        assert_eq!(
            State::read(&blocked).unwrap(),
            Some(State::default()),
            "clean: nothing written"
        );
    }
}
