//! The slices file: which slices live on this host, their xids and attributes.
//!
//! ```toml
//! [[slice]]
//! name = "alice"          # safe in a mail header and a metric label
//! xid = 1001              # optional when `name` is a local user (its uid)
//! sources = ["10.1.0.0/24"]   # with xid_source = "source"
//! net_max_kbyte = 2000000     # any rspec attribute
//!
//! [[slice]]
//! name = "ci-42"
//! cgroup = "/system.slice/ci-job-42.scope"   # this cgroup and everything below it
//!
//! [[cgroups]]
//! pattern = "/system.slice/docker-*.scope"   # a slice per matching cgroup, named after it
//! net_max_kbyte = 1000000
//! ```
//!
//! A slice with any problem is skipped whole, located; the others are applied (see [`parse`]).
//! A skipped entry that still names its slice (by name, else xid) keeps that slice's last good
//! definition in force ([`super::last_good`]): a typo frees no capped slice. Only a file that is
//! not TOML is rejected whole, and the caller keeps the last good one.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;

use toml_edit::Table;

use crate::{
    cgroup::{CgroupPath, path::assign_xids},
    config::{
        patterns::{PatternSpec, read_patterns},
        problems::{Collector, FileErrors, parse_document},
        read::{Field, attributes},
    },
    policy::rspec::Attributes,
};

/// The root slice's name and xid: always present, never capped.
pub(crate) const ROOT_NAME: &str = "root";
/// The name under which traffic of xids without a slice is shown.
pub(crate) const DEFAULT_NAME: &str = "default";

/// One slice as the file gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceSpec {
    /// Name.
    pub(crate) name: String,
    /// Its xid (uid, mark, or source-prefix id).
    pub(crate) xid: u32,
    /// Source prefixes (for `xid_source = "source"`).
    pub(crate) sources: Vec<IpNet>,
    /// Which bytes its budget covers, when its entry says (`count`); else the config's.
    pub(crate) count: Option<crate::policy::received::Count>,
    /// Attributes given for it (not yet merged with defaults).
    pub(crate) attrs: Attributes,
    /// Its cgroup (v2): packets of sockets in it or below it are its own.
    pub(crate) cgroup: Option<CgroupPath>,
}

/// Whether `name` can be a slice name: 1 to 64 of letters, digits, `_`, `.`, `-`, starting
/// with a letter or digit (safe in a mail header, a metric label and a file name).
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The uid of local user `name`, from the passwd database (as bwlimit did).
pub(crate) fn uid_of(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: passwd is plain C data; all-zero is a valid value for getpwnam_r to fill in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; the buffer outlives it.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
}

/// A slice's keys that are not attributes.
const SLICE_KEYS: [&str; 5] = ["name", "xid", "sources", "cgroup", "count"];

/// A slices file as read: the slices that can be used, and what was wrong with the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// Every valid slice, in file order.
    pub(crate) slices: Vec<SliceSpec>,
    /// Every valid `[[cgroups]]` table, in file order.
    pub(crate) patterns: Vec<PatternSpec>,
    /// The entries skipped (and other problems), located; `None` when there were none.
    pub(crate) skipped: Option<FileErrors>,
    /// Values used after a correction, located (a min rate above the max rate, …).
    pub(crate) warnings: Vec<String>,
    /// The entries skipped, with what can still be read of whose they are.
    pub(crate) broken: Vec<Broken>,
}

/// A `[[slice]]` entry that was skipped, and whose slice it names as far as that can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Broken {
    /// Its place among the entries, from 0 (`slice[index]` in its problems).
    pub(crate) index: usize,
    /// How many usable slices come before it: where its slice's kept definition goes.
    pub(crate) at: usize,
    /// Its name, when that is a valid one.
    pub(crate) name: Option<String>,
    /// Its xid, when that is a valid one.
    pub(crate) xid: Option<u32>,
}

/// Parses slices file text (as if read from `path`). As the seed did, a slice that cannot be
/// used is skipped and the others are applied: one bad entry never blocks the rest.
///
/// # Errors
/// Only a file that is not TOML, or whose `slice` is not a list of tables: then nothing in it
/// can be trusted.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Parsed, FileErrors> {
    let doc = parse_document(path, text)?;
    let mut c = Collector::new(text);
    let root = doc.as_table();
    for (key, item) in root
        .iter()
        .filter(|(key, _)| *key != "slice" && *key != "cgroups")
    {
        c.add(
            Some(item),
            key,
            "unknown key; the file holds [[slice]] and [[cgroups]] tables",
        );
    }
    let patterns = read_patterns(&mut c, root);
    let mut slices = Vec::new();
    let mut warnings = Vec::new();
    let mut broken = Vec::new();
    if let Some(item) = root.get("slice") {
        let Some(tables) = item.as_array_of_tables() else {
            c.add(Some(item), "slice", "must be [[slice]] tables");
            return Err(c.finish(path).err().unwrap_or_else(|| FileErrors {
                path: path.to_owned(),
                problems: Vec::new(),
            }));
        };
        let mut taken = Taken::default();
        for (index, table) in tables.iter().enumerate() {
            let entry = Entry {
                index,
                line: c.line_of(table.span()),
                table,
            };
            let Some(slice) = entry.read(&mut c, &mut taken) else {
                let (name, xid) = entry.identity();
                broken.push(Broken {
                    index,
                    at: slices.len(),
                    name,
                    xid,
                });
                continue;
            };
            warnings.extend(
                attr_warnings(&slice.name, &slice.attrs)
                    .into_iter()
                    .map(|w| format!("{}:{}: slice[{index}]: {w}", path.display(), entry.line)),
            );
            slices.push(slice);
        }
    }
    one_owner_per_source(&mut c, &mut slices);
    Ok(Parsed {
        slices,
        patterns,
        skipped: c.finish(path).err(),
        warnings,
        broken,
    })
}

/// The names and xids of the slices read so far.
#[derive(Default)]
struct Taken {
    names: HashSet<String>,
    xids: HashSet<u32>,
}

/// One `[[slice]]` table being read. Its problems are reported as `slice[index].key`, located
/// at the key, or at the table when the key is missing.
struct Entry<'t> {
    /// Its place in the file, from 0.
    index: usize,
    /// The line of its `[[slice]]`.
    line: usize,
    table: &'t Table,
}

impl Entry<'_> {
    /// The slice, or `None` (its problems reported) when any of it cannot be used: a slice is
    /// skipped whole, never half applied.
    fn read(&self, c: &mut Collector, taken: &mut Taken) -> Option<SliceSpec> {
        let name = self.name(c, taken)?;
        let cgroup = match self.table.get("cgroup") {
            Some(item) => match item.as_str().map(CgroupPath::parse) {
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    taken.names.remove(&name);
                    return self.refuse(c, "cgroup", e.to_string());
                }
                None => {
                    taken.names.remove(&name);
                    return self.refuse(c, "cgroup", "must be a string".into());
                }
            },
            None => None,
        };
        let xid = match (&cgroup, self.table.get("xid")) {
            // A cgroup slice without an xid: its path's, unless an earlier slice has that.
            (Some(path), None) => assign_xids(std::slice::from_ref(path), &taken.xids)[0],
            _ => self.xid(c, &name)?,
        };
        if !taken.xids.insert(xid) {
            self.problem(c, "xid", format!("{xid} is used by another slice"));
            return None;
        }
        let problems_before = c.problems.len();
        let sources = match self.table.get("sources") {
            Some(item) => {
                let key = self.key("sources");
                Field::new(c, item, &key).cidrs("")
            }
            None => Vec::new(),
        };
        let count = self.table.get("count").and_then(|item| {
            let key = self.key("count");
            super::draft::count_key(&mut Field::new(c, item, &key))
        });
        let mut attrs = Attributes::default();
        let prefix = self.key("");
        attributes(c, self.table, &prefix, &SLICE_KEYS, &mut attrs);
        if c.problems.len() > problems_before {
            taken.names.remove(&name);
            taken.xids.remove(&xid);
            return None;
        }
        Some(SliceSpec {
            name,
            xid,
            sources,
            count,
            attrs,
            cgroup,
        })
    }

    /// Its name: valid, not reserved, not taken by an earlier slice (it is taken then).
    fn name(&self, c: &mut Collector, taken: &mut Taken) -> Option<String> {
        let name = match self.table.get("name").and_then(|n| n.as_str()) {
            Some(n) if valid_name(n) => n.to_owned(),
            Some(n) => {
                let message = format!(
                    "'{}' must be 1-64 letters, digits, '_', '.', '-', starting with a letter or digit",
                    n.escape_debug()
                );
                return self.refuse(c, "name", message);
            }
            None => return self.refuse(c, "name", "missing or not a string".into()),
        };
        if name == ROOT_NAME || name == DEFAULT_NAME {
            let message = format!("'{name}' is reserved (bwmon always accounts it)");
            return self.refuse(c, "name", message);
        }
        if !taken.names.insert(name.clone()) {
            return self.refuse(c, "name", format!("'{name}' appears twice"));
        }
        Some(name)
    }

    /// Its xid: as given, else the uid of the local user of its name.
    fn xid(&self, c: &mut Collector, name: &str) -> Option<u32> {
        if let Some(item) = self.table.get("xid") {
            let message = || {
                "must be a whole number from 1 to 4294967294 (0 is the root slice; 4294967295 is (uid_t)-1, the default slice's line)".to_owned()
            };
            let key = self.key("xid");
            let xid = Field::new(c, item, &key).integer(1..=i64::from(u32::MAX) - 1, message)?;
            return Some(xid as u32);
        }
        match uid_of(name) {
            Some(0) => {
                let message = format!("local user '{name}' has uid 0, the root slice's");
                self.refuse(c, "xid", message)
            }
            Some(uid) => Some(uid),
            None => {
                let message =
                    format!("missing, and there is no local user '{name}' to take it from");
                self.refuse(c, "xid", message)
            }
        }
    }

    /// Whose entry this is, as far as can be read: a valid name, a valid xid.
    fn identity(&self) -> (Option<String>, Option<u32>) {
        let name = (self.table.get("name").and_then(|n| n.as_str()))
            .filter(|n| valid_name(n) && *n != ROOT_NAME && *n != DEFAULT_NAME)
            .map(str::to_owned);
        let xid = (self.table.get("xid").and_then(|x| x.as_integer()))
            .and_then(|x| u32::try_from(x).ok())
            .filter(|x| (1..u32::MAX).contains(x));
        (name, xid)
    }

    /// `key` as reported: `slice[index].key`.
    fn key(&self, key: &str) -> String {
        format!("slice[{}].{key}", self.index)
    }

    /// Reports `message` against `key` (at the table when the key is missing).
    fn problem(&self, c: &mut Collector, key: &str, message: String) {
        let key_at = self.key(key);
        match self.table.get(key) {
            Some(item) => c.add(Some(item), &key_at, message),
            None => c.add_line(self.line, &key_at, message),
        }
    }

    /// Reports `message` against `key` and reads nothing.
    fn refuse<T>(&self, c: &mut Collector, key: &str, message: String) -> Option<T> {
        self.problem(c, key, message);
        None
    }
}

/// A source prefix belongs to one slice only: the first that names it keeps it, a later
/// slice naming it too is skipped.
fn one_owner_per_source(c: &mut Collector, slices: &mut Vec<SliceSpec>) {
    let mut owners: HashMap<IpNet, String> = HashMap::new();
    slices.retain(|s| {
        let clash = s
            .sources
            .iter()
            .find_map(|p| Some((p, owners.get(p)?.clone())));
        if let Some((p, other)) = clash {
            let message = format!("{p} is also a source of slice '{other}'");
            c.add_line(1, &format!("{}.sources", s.name), message);
            return false;
        }
        for p in &s.sources {
            owners.insert(*p, s.name.clone());
        }
        true
    });
}

/// Attribute values bwmon corrects rather than refuses (the policy clamps them), said so.
fn attr_warnings(name: &str, a: &Attributes) -> Vec<String> {
    let mut out = Vec::new();
    let pairs = [
        (
            "net_min_rate",
            a.min_rate.map(|r| r.0),
            "net_max_rate",
            a.max_rate.map(|r| r.0),
        ),
        (
            "net_i2_min_rate",
            a.i2_min_rate.map(|r| r.0),
            "net_i2_max_rate",
            a.i2_max_rate.map(|r| r.0),
        ),
        (
            "net_thresh_kbyte",
            a.thresh_kbyte.map(|k| k.0),
            "net_max_kbyte",
            a.max_kbyte.map(|k| k.0),
        ),
        (
            "net_i2_thresh_kbyte",
            a.i2_thresh_kbyte.map(|k| k.0),
            "net_i2_max_kbyte",
            a.i2_max_kbyte.map(|k| k.0),
        ),
    ];
    for (low_key, low, high_key, high) in pairs {
        if let (Some(l), Some(h)) = (low, high)
            && l > h
        {
            out.push(format!(
                "slice '{name}': {low_key} {l} is above {high_key} {h}; {h} is used"
            ));
        }
    }
    out
}

/// The largest slices file read: 100,000 slices with attributes fit in a tenth of it.
pub(crate) const MAX_FILE: u64 = 256 << 20;

/// Reads and parses the slices file at `path`.
///
/// # Errors
/// Not a regular file, larger than [`MAX_FILE`], unreadable, or not TOML.
pub(crate) fn read(path: &Path) -> Result<Parsed, FileErrors> {
    parse(path, &crate::config::problems::read_text(path, MAX_FILE)?)
}

/// The slices file, re-read when it changes.
#[derive(Debug)]
pub(crate) struct SlicesFile {
    path: PathBuf,
    /// The file's stamp when it was last read (`Some(None)`: it was missing then).
    seen: Option<Option<(i64, i64, u64, u64)>>,
}

impl SlicesFile {
    /// Watches `path`.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, seen: None }
    }

    fn stamp(&self) -> Option<(i64, i64, u64, u64)> {
        std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
    }

    /// Whether the file changed since it was last read (a cheap `stat`).
    pub(crate) fn changed(&self) -> bool {
        self.seen != Some(self.stamp())
    }

    /// The file's contents when it changed since the last call (or `force`), else `None`.
    ///
    /// # Errors
    /// The file cannot be read, or has problems (the caller keeps the last good slices).
    pub(crate) fn poll(&mut self, force: bool) -> Option<Result<Parsed, FileErrors>> {
        let stamp = self.stamp();
        if !force && self.seen == Some(stamp) {
            return None;
        }
        self.seen = Some(stamp);
        Some(read(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/bwmon/slices.toml";

    /// The slices, or the problems when any slice was skipped.
    fn p(text: &str) -> Result<Vec<SliceSpec>, FileErrors> {
        let parsed = parse(Path::new(PATH), text)?;
        match parsed.skipped {
            Some(e) => Err(e),
            None => Ok(parsed.slices),
        }
    }

    #[test]
    fn a_bad_entry_is_skipped_and_the_others_are_applied() {
        let parsed = parse(
            Path::new(PATH),
            "[[slice]]\nname = \"alice\"\nxid = 1001\n[[slice]]\nname = \"bob\"\nxid = \"x\"\n[[slice]]\nname = \"carol\"\nxid = 1003\nnet_max_rate = \"fast\"\n[[slice]]\nname = \"dave\"\nxid = 1004\n",
        )
        .unwrap();
        let names: Vec<&str> = parsed.slices.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["alice", "dave"]);
        let skipped = parsed.skipped.unwrap().to_string();
        assert!(skipped.contains("slices.toml:6: slice[1].xid"), "{skipped}");
        assert!(
            skipped.contains("slices.toml:10: slice[2].net_max_rate"),
            "{skipped}"
        );
        // A file that is not TOML is refused whole.
        assert!(parse(Path::new(PATH), "[[slice]\nname=").is_err());
    }

    #[test]
    fn values_that_are_clamped_are_said() {
        let parsed = parse(
            Path::new(PATH),
            "[[slice]]\nname = \"alice\"\nxid = 1001\nnet_min_rate = 5000\nnet_max_rate = 1000\nnet_thresh_kbyte = 900\nnet_max_kbyte = 800\n",
        )
        .unwrap();
        assert_eq!(parsed.slices.len(), 1, "kept");
        let text = parsed.warnings.join("\n");
        assert!(
            text.contains("slices.toml:1: slice[0]: slice 'alice': net_min_rate 5000 is above net_max_rate 1000; 1000 is used"),
            "{text}"
        );
        assert!(
            text.contains("net_thresh_kbyte 900 is above net_max_kbyte 800"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_file_is_read_once_until_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slices.toml");
        let mut f = SlicesFile::new(path.clone());
        assert!(f.poll(false).unwrap().is_err(), "said once");
        assert!(f.poll(false).is_none(), "and not again");
        assert!(!f.changed());
        std::fs::write(&path, "[[slice]]\nname = \"a\"\nxid = 5\n").unwrap();
        assert!(f.changed());
        assert_eq!(f.poll(false).unwrap().unwrap().slices.len(), 1);
    }

    #[test]
    fn slices_with_xids_sources_and_attributes() {
        let s = p(r#"
[[slice]]
name = "alice"
xid = 1001
net_max_kbyte = 100
[[slice]]
name = "bob.lab-2"
xid = 1002
sources = ["10.1.0.7/24", "2001:db8::/64"]
"#)
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].attrs.max_kbyte, Some(crate::units::KBytes(100)));
        assert_eq!(s[1].sources[0].to_string(), "10.1.0.0/24");
    }

    #[test]
    fn cgroup_slices_and_patterns() {
        let parsed = parse(
            Path::new(PATH),
            r#"
[[slice]]
name = "ci-42"
cgroup = "/system.slice/ci-job-42.scope/"
net_max_kbyte = 100
[[slice]]
name = "web"
xid = 7000
cgroup = "/system.slice/web.service"
[[cgroups]]
pattern = "/system.slice/docker-*.scope"
net_max_kbyte = 200
count = "both"
[[cgroups]]
pattern = "relative/*"
[[cgroups]]
net_max_kbyte = 1
[[slice]]
name = "bad"
cgroup = "/a/*"
[[cgroups]]
pattern = "/user.slice/user-*.slice"
count = "sideways"
"#,
        )
        .unwrap();
        let ci = &parsed.slices[0];
        let path = CgroupPath::parse("/system.slice/ci-job-42.scope").unwrap();
        assert_eq!(ci.xid, path.hashed_xid(), "its path's xid");
        assert_eq!(ci.cgroup.as_ref(), Some(&path));
        assert_eq!(parsed.slices[1].xid, 7000, "a configured xid is kept");
        assert_eq!(parsed.slices.len(), 2);
        assert_eq!(parsed.patterns.len(), 1);
        assert_eq!(
            parsed.patterns[0].attrs.max_kbyte,
            Some(crate::units::KBytes(200))
        );
        assert_eq!(
            parsed.patterns[0].count,
            Some(crate::policy::received::Count::Both)
        );
        let text = parsed.skipped.unwrap().to_string();
        for expect in [
            "cgroups[1].pattern: 'relative/*' must start with '/'",
            "cgroups[2].pattern: missing",
            "slice[2].cgroup: '/a/*' has a '*'",
            "cgroups[3].count: 'sideways' is not one of \"egress\", \"both\"",
        ] {
            assert!(text.contains(expect), "missing {expect:?} in\n{text}");
        }
    }

    #[test]
    fn xid_comes_from_the_passwd_database_when_left_out() {
        // `root` is reserved; `daemon` (uid 1) exists on every Debian system.
        let s = p("[[slice]]\nname = \"daemon\"\n").unwrap();
        assert_eq!(s[0].xid, 1);
        let e = p("[[slice]]\nname = \"no-such-user-xyz\"\n").unwrap_err();
        assert!(
            e.to_string().contains("no local user 'no-such-user-xyz'"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported_and_located() {
        let e = p(r#"
[[slice]]
name = "a b"
xid = 5
[[slice]]
name = "ok"
xid = 6
[[slice]]
name = "ok"
xid = 7
[[slice]]
name = "root"
xid = 8
[[slice]]
name = "dup-xid"
xid = 6
[[slice]]
name = "attrs"
xid = 9
net_max_rate = "fast"
sources = ["nope"]
"#)
        .unwrap_err();
        let text = e.to_string();
        for expect in [
            "slices.toml:3: slice[0].name: 'a b' must be",
            "slices.toml:9: slice[2].name: 'ok' appears twice",
            "slices.toml:12: slice[3].name: 'root' is reserved",
            "slices.toml:16: slice[4].xid: 6 is used by another slice",
            "slices.toml:20: slice[5].net_max_rate: invalid rate 'fast'",
            "slices.toml:21: slice[5].sources: \"nope\" is not a CIDR prefix",
        ] {
            assert!(text.contains(expect), "missing {expect:?} in\n{text}");
        }
    }

    #[test]
    fn names_are_safe_for_headers_and_labels() {
        for ok in ["alice", "pl_slice.1", "a-b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a\nb",
            "a\"b",
            "a b",
            "ä",
            &"x".repeat(65),
            "a{b}",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_file_is_read_again_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slices.toml");
        std::fs::write(&path, "[[slice]]\nname = \"a\"\nxid = 5\n").unwrap();
        let mut f = SlicesFile::new(path.clone());
        assert_eq!(f.poll(false).unwrap().unwrap().slices.len(), 1);
        assert!(!f.changed());
        assert!(f.poll(false).is_none());
        assert!(f.poll(true).is_some(), "SIGHUP forces a read");
        std::fs::write(
            &path,
            "[[slice]]\nname = \"a\"\nxid = 5\n[[slice]]\nname = \"b\"\nxid = 6\n",
        )
        .unwrap();
        assert!(f.changed());
        assert_eq!(f.poll(false).unwrap().unwrap().slices.len(), 2);
    }
}
