//! The slices file: which slices live on this host, their xids and attributes.
//!
//! ```toml
//! [[slice]]
//! name = "alice"          # safe in a mail header and a metric label
//! xid = 1001              # optional when `name` is a local user (its uid)
//! sources = ["10.1.0.0/24"]   # with xid_source = "source"
//! net_max_kbyte = 2000000     # any rspec attribute
//! ```
//!
//! A file with any problem is rejected whole, with every problem located; the caller keeps the
//! last good one in force.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;

use crate::{
    problems::{Collector, FileErrors, Problem, parse_document, plain_value},
    rspec::Attributes,
};

/// The root slice's name and xid: always present, never capped.
pub const ROOT_NAME: &str = "root";
/// The name under which traffic of xids without a slice is shown.
pub const DEFAULT_NAME: &str = "default";

/// One slice as the file gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceSpec {
    /// Name.
    pub name: String,
    /// Its xid (uid, mark, or source-prefix id).
    pub xid: u32,
    /// Source prefixes (for `xid_source = "source"`).
    pub sources: Vec<IpNet>,
    /// Attributes given for it (not yet merged with defaults).
    pub attrs: Attributes,
}

/// Whether `name` can be a slice name: 1 to 64 of letters, digits, `_`, `.`, `-`, starting
/// with a letter or digit (safe in a mail header, a metric label and a file name).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The uid of local user `name`, from the passwd database (as bwlimit did).
pub fn uid_of(name: &str) -> Option<u32> {
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

const SLICE_KEYS: [&str; 3] = ["name", "xid", "sources"];

/// Parses slices file text (as if read from `path`).
///
/// # Errors
/// Every problem, located: syntax, unknown keys, bad names, duplicates, bad attributes.
pub fn parse(path: &Path, text: &str) -> Result<Vec<SliceSpec>, FileErrors> {
    let doc = parse_document(path, text)?;
    let mut c = Collector::new(text);
    let root = doc.as_table();
    for (key, item) in root.iter() {
        if key != "slice" {
            c.add(
                Some(item),
                key,
                "unknown key; the file holds [[slice]] tables",
            );
        }
    }
    let mut out = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut xids: HashSet<u32> = HashSet::new();
    if let Some(item) = root.get("slice") {
        let Some(tables) = item.as_array_of_tables() else {
            c.add(Some(item), "slice", "must be [[slice]] tables");
            return c.finish(path).map(|()| Vec::new());
        };
        for (i, t) in tables.iter().enumerate() {
            let at = format!("slice[{i}]");
            let table_line = c.line_of(t.span());
            let problem =
                |c: &mut Collector, item: Option<&toml_edit::Item>, key: &str, msg: String| {
                    if item.is_some() {
                        c.add(item, &format!("{at}.{key}"), msg);
                    } else {
                        c.problems.push(Problem {
                            line: table_line,
                            key: format!("{at}.{key}"),
                            message: msg,
                        });
                    }
                };
            let name = match t.get("name").and_then(|n| n.as_str()) {
                Some(n) if valid_name(n) => n.to_owned(),
                Some(n) => {
                    problem(
                        &mut c,
                        t.get("name"),
                        "name",
                        format!(
                            "'{}' must be 1-64 letters, digits, '_', '.', '-', starting with a letter or digit",
                            n.escape_debug()
                        ),
                    );
                    continue;
                }
                None => {
                    problem(
                        &mut c,
                        t.get("name"),
                        "name",
                        "missing or not a string".into(),
                    );
                    continue;
                }
            };
            if name == ROOT_NAME || name == DEFAULT_NAME {
                problem(
                    &mut c,
                    t.get("name"),
                    "name",
                    format!("'{name}' is reserved (bwmon always accounts it)"),
                );
                continue;
            }
            if names.insert(name.clone(), i).is_some() {
                problem(
                    &mut c,
                    t.get("name"),
                    "name",
                    format!("'{name}' appears twice"),
                );
                continue;
            }
            let xid = match t.get("xid") {
                Some(item) => match item.as_integer() {
                    Some(x) if (1..i64::from(u32::MAX)).contains(&x) => x as u32,
                    _ => {
                        problem(
                            &mut c,
                            Some(item),
                            "xid",
                            "must be a whole number from 1 to 4294967294 (0 is the root slice; 4294967295 is (uid_t)-1, the default slice's line)"
                                .into(),
                        );
                        continue;
                    }
                },
                None => match uid_of(&name) {
                    Some(0) => {
                        problem(
                            &mut c,
                            None,
                            "xid",
                            format!("local user '{name}' has uid 0, the root slice's"),
                        );
                        continue;
                    }
                    Some(uid) => uid,
                    None => {
                        problem(
                            &mut c,
                            None,
                            "xid",
                            format!("missing, and there is no local user '{name}' to take it from"),
                        );
                        continue;
                    }
                },
            };
            if !xids.insert(xid) {
                problem(
                    &mut c,
                    t.get("xid"),
                    "xid",
                    format!("{xid} is used by another slice"),
                );
                continue;
            }
            let mut sources = Vec::new();
            if let Some(item) = t.get("sources") {
                match item.as_array() {
                    Some(arr) => {
                        for v in arr.iter() {
                            match v.as_str().map(str::parse::<IpNet>) {
                                Some(Ok(net)) => sources.push(net.trunc()),
                                _ => c.add_value(
                                    v,
                                    &format!("{at}.sources"),
                                    format!("{} is not a CIDR prefix", v.to_string().trim()),
                                ),
                            }
                        }
                    }
                    None => problem(
                        &mut c,
                        Some(item),
                        "sources",
                        "must be a list of CIDR prefixes".into(),
                    ),
                }
            }
            let mut attrs = Attributes::default();
            for (k, v) in t.iter() {
                if SLICE_KEYS.contains(&k) {
                    continue;
                }
                match v.as_value() {
                    Some(val) => {
                        if let Err(e) = attrs.set(k, &plain_value(val)) {
                            c.add(Some(v), &format!("{at}.{k}"), e);
                        }
                    }
                    None => c.add(Some(v), &format!("{at}.{k}"), "must be a value"),
                }
            }
            out.push(SliceSpec {
                name,
                xid,
                sources,
                attrs,
            });
        }
    }
    // A source prefix belongs to one slice only.
    let mut owners: HashMap<IpNet, &str> = HashMap::new();
    for s in &out {
        for p in &s.sources {
            if let Some(other) = owners.insert(*p, &s.name) {
                c.problems.push(Problem {
                    line: 1,
                    key: format!("{}.sources", s.name),
                    message: format!("{p} is also a source of slice '{other}'"),
                });
            }
        }
    }
    c.finish(path)?;
    Ok(out)
}

/// The slices file, re-read when it changes.
#[derive(Debug)]
pub struct SlicesFile {
    path: PathBuf,
    seen: Option<(i64, i64, u64, u64)>,
}

impl SlicesFile {
    /// Watches `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, seen: None }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stamp(&self) -> Option<(i64, i64, u64, u64)> {
        std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
    }

    /// Whether the file changed since it was last read (a cheap `stat`).
    pub fn changed(&self) -> bool {
        self.stamp() != self.seen
    }

    /// The file's contents when it changed since the last call (or `force`), else `None`.
    ///
    /// # Errors
    /// The file cannot be read, or has problems (the caller keeps the last good slices).
    pub fn poll(&mut self, force: bool) -> Option<Result<Vec<SliceSpec>, FileErrors>> {
        let stamp = self.stamp();
        if !force && self.seen.is_some() && stamp == self.seen {
            return None;
        }
        self.seen = stamp;
        Some(match std::fs::read_to_string(&self.path) {
            Ok(text) => parse(&self.path, &text),
            Err(e) => Err(FileErrors {
                path: self.path.clone(),
                problems: vec![Problem {
                    line: 0,
                    key: "(file)".into(),
                    message: format!("cannot read: {e}"),
                }],
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<SliceSpec>, FileErrors> {
        parse(Path::new("/etc/bwmon/slices.toml"), text)
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
            "slices.toml:20: slice[5].net_max_rate: must be a whole number",
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
        assert_eq!(f.poll(false).unwrap().unwrap().len(), 1);
        assert!(!f.changed());
        assert!(f.poll(false).is_none());
        assert!(f.poll(true).is_some(), "SIGHUP forces a read");
        std::fs::write(
            &path,
            "[[slice]]\nname = \"a\"\nxid = 5\n[[slice]]\nname = \"b\"\nxid = 6\n",
        )
        .unwrap();
        assert!(f.changed());
        assert_eq!(f.poll(false).unwrap().unwrap().len(), 2);
    }
}
