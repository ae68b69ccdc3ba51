//! Cgroup paths and patterns as the slices file gives them (relative to the v2 hierarchy's
//! root, written with a leading `/`), and the xids of cgroup slices.

use std::fmt;

use bwmon_common::MAX_CGROUP_LEVEL;

/// First xid given to a cgroup slice whose entry names none: cgroup slices take xids from
/// `CGROUP_XID_BASE` to `CGROUP_XID_BASE + CGROUP_XID_SPAN - 1` (2^31 to 2^32 - 2^16 - 1),
/// far above the uids of local users and of the usual container uid ranges.
pub(crate) const CGROUP_XID_BASE: u32 = 0x8000_0000;
/// How many xids the cgroup range holds.
pub(crate) const CGROUP_XID_SPAN: u32 = 0x7FFF_0000;

/// A cgroup's path under the v2 hierarchy: `/`-separated, no empty, `.` or `..` component,
/// at most [`MAX_CGROUP_LEVEL`] deep; not the root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct CgroupPath(String);

/// Why a path or pattern cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// Not starting with `/`.
    #[error(
        "'{0}' must start with '/' (a path under the cgroup v2 hierarchy, like \"/system.slice/x.scope\")"
    )]
    NotAbsolute(String),
    /// The hierarchy's root: every process is in it.
    #[error("'/' is the whole host; a cgroup slice is a cgroup below it")]
    Root,
    /// An empty, `.` or `..` component.
    #[error("'{0}' has an empty, '.' or '..' component")]
    BadComponent(String),
    /// Deeper than the classifier looks.
    #[error("'{path}' is {level} levels deep; at most {MAX_CGROUP_LEVEL} are supported")]
    TooDeep {
        /// The path.
        path: String,
        /// Its level.
        level: usize,
    },
    /// A `*` in a `cgroup` path (patterns go in `[[cgroups]]`).
    #[error("'{0}' has a '*'; a pattern goes in a [[cgroups]] table")]
    Wildcard(String),
}

/// The components of `text`, checked.
fn components(text: &str) -> Result<Vec<&str>, PathError> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err(PathError::NotAbsolute(text.to_owned()));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(PathError::Root);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
    {
        return Err(PathError::BadComponent(text.to_owned()));
    }
    if parts.len() > MAX_CGROUP_LEVEL as usize {
        return Err(PathError::TooDeep {
            path: text.to_owned(),
            level: parts.len(),
        });
    }
    Ok(parts)
}

impl CgroupPath {
    /// Checks `text` (a trailing `/` is dropped).
    ///
    /// # Errors
    /// Not absolute, the root, a bad component, too deep, or a `*` in it.
    pub(crate) fn parse(text: &str) -> Result<CgroupPath, PathError> {
        if text.contains('*') {
            return Err(PathError::Wildcard(text.to_owned()));
        }
        let parts = components(text)?;
        Ok(CgroupPath(format!("/{}", parts.join("/"))))
    }

    /// The path, with its leading `/`.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The path relative to the hierarchy's root (no leading `/`).
    pub(crate) fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// Its level in the hierarchy: the root is 0, `/a` is 1, `/a/b` is 2.
    pub(crate) fn level(&self) -> u32 {
        self.0.matches('/').count() as u32
    }

    /// Its last component.
    pub(crate) fn last(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The xid of a cgroup slice at this path whose entry names none: a hash of the path in
    /// the cgroup range, so a cgroup that goes and comes back under the same path (a re-run
    /// job, a user logging in again) is the same slice, across restarts too, without a table
    /// to keep. Two paths with the same hash are told apart by [`assign_xids`].
    pub(crate) fn hashed_xid(&self) -> u32 {
        // FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        CGROUP_XID_BASE + (h % u64::from(CGROUP_XID_SPAN)) as u32
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Xids for `paths` (sorted, no duplicates) that none of `taken` has: each its
/// [`CgroupPath::hashed_xid`], or on a clash (rare: a few in a million pairs) the next free
/// one in the range, given in path order so the same set of paths always gets the same xids.
pub(crate) fn assign_xids(
    paths: &[CgroupPath],
    taken: &std::collections::HashSet<u32>,
) -> Vec<u32> {
    let mut used = taken.clone();
    paths
        .iter()
        .map(|p| {
            let mut xid = p.hashed_xid();
            while !used.insert(xid) {
                xid = CGROUP_XID_BASE + (xid - CGROUP_XID_BASE + 1) % CGROUP_XID_SPAN;
            }
            xid
        })
        .collect()
}

/// A `[[cgroups]]` pattern: a path whose components may hold `*` (any run of characters
/// within one component).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    text: String,
    parts: Vec<String>,
}

impl Pattern {
    /// Checks `text`.
    ///
    /// # Errors
    /// Not absolute, the root, a bad component, or too deep.
    pub(crate) fn parse(text: &str) -> Result<Pattern, PathError> {
        let parts = components(text)?;
        Ok(Pattern {
            text: text.to_owned(),
            parts: parts.into_iter().map(str::to_owned).collect(),
        })
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// Its components.
    pub(crate) fn parts(&self) -> &[String] {
        &self.parts
    }

    /// Whether `path` matches it.
    #[cfg(test)]
    pub(crate) fn matches(&self, path: &CgroupPath) -> bool {
        let names: Vec<&str> = path.relative().split('/').collect();
        names.len() == self.parts.len() && self.parts.iter().zip(names).all(|(p, n)| glob(p, n))
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The slice name of a cgroup found by a pattern: its last component, characters a slice
/// name cannot hold (systemd's `\x2d` escapes, …) made `_`, cut to 64 characters.
pub(crate) fn slice_name(path: &CgroupPath) -> String {
    let mut name: String = path
        .last()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.replace_range(..1, "c");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_and_normalised() {
        let p = CgroupPath::parse("/system.slice/ci-job-42.scope/").unwrap();
        assert_eq!(p.as_str(), "/system.slice/ci-job-42.scope");
        assert_eq!(p.relative(), "system.slice/ci-job-42.scope");
        assert_eq!(p.level(), 2);
        assert_eq!(p.last(), "ci-job-42.scope");
        for bad in ["", "x", "/", "/a//b", "/a/../b", "/a/./b", "/a/*"] {
            assert!(CgroupPath::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "/a".repeat(MAX_CGROUP_LEVEL as usize + 1);
        assert!(matches!(
            CgroupPath::parse(&deep),
            Err(PathError::TooDeep { .. })
        ));
    }

    #[test]
    fn patterns_match_within_one_component() {
        let p = Pattern::parse("/system.slice/docker-*.scope").unwrap();
        let m = |s: &str| p.matches(&CgroupPath::parse(s).unwrap());
        assert!(m("/system.slice/docker-abc.scope"));
        assert!(m("/system.slice/docker-.scope"));
        assert!(!m("/system.slice/docker-abc.service"));
        assert!(!m("/system.slice/docker-abc.scope/sub"));
        assert!(!m("/user.slice/docker-abc.scope"));
        assert!(glob("user-*.slice", "user-1000.slice"));
        assert!(glob("*", "anything"));
        assert!(glob("a*b*c", "a-b-b-c"));
        assert!(!glob("a*b*c", "a-c"));
        assert!(!glob("ab*ba", "aba"), "pieces may not overlap");
    }

    #[test]
    fn xids_are_stable_in_the_range_and_never_clash() {
        let a = CgroupPath::parse("/system.slice/ci-job-42.scope").unwrap();
        let x = a.hashed_xid();
        assert!((CGROUP_XID_BASE..CGROUP_XID_BASE + CGROUP_XID_SPAN).contains(&x));
        assert_eq!(x, a.hashed_xid());
        // A clash with a taken xid (a uid slice's, or another path's) moves to the next.
        let taken = std::collections::HashSet::from([x]);
        assert_eq!(assign_xids(std::slice::from_ref(&a), &taken), [x + 1]);
        let b = CgroupPath::parse("/b").unwrap();
        let both = assign_xids(&[a.clone(), b.clone()], &Default::default());
        assert_eq!(both, [x, b.hashed_xid()]);
    }

    #[test]
    fn names_of_found_cgroups_are_valid_slice_names() {
        let n = |s: &str| slice_name(&CgroupPath::parse(s).unwrap());
        assert_eq!(n("/user.slice/user-1000.slice"), "user-1000.slice");
        assert_eq!(n("/system.slice/a\\x2db.scope"), "a_x2db.scope");
        assert_eq!(n("/x/_hidden"), "chidden");
        let docker = format!("/system.slice/docker-{}.scope", "f".repeat(64));
        assert_eq!(n(&docker).len(), 64);
        assert!(crate::config::slices::valid_name(&n(&docker)));
    }
}
