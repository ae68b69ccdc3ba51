//! The cgroups the slices file names, read from the hierarchy: each slice's `cgroup` and every
//! cgroup a `[[cgroups]]` pattern matches, with the kernel's id of each. A sync scans once; the
//! cost is a `stat` per named cgroup and a directory read per pattern level with a `*`
//! (measured in the README: 1,000 matching cgroups in about a millisecond).

use std::collections::HashMap;

use bwmon_common::MAX_CGROUP_LEVEL;

use super::{CgroupPath, Hierarchy, Pattern, path::glob};

/// What one scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tenants {
    /// Every cgroup matched by pattern `i`, as `(i, path)`, sorted by path; a path named by a
    /// slice's `cgroup`, or matched by an earlier pattern, is left out.
    pub(crate) found: Vec<(usize, CgroupPath)>,
    /// Kernel id of every named or found cgroup that exists.
    pub(crate) ids: HashMap<CgroupPath, u64>,
}

impl Tenants {
    /// The bitmap of the levels where tenant cgroups are (bit `L` for level `L`), as the
    /// classifier reads it: 0 when there are none.
    pub(crate) fn levels(&self) -> u32 {
        self.ids
            .keys()
            .map(CgroupPath::level)
            .filter(|l| (1..=MAX_CGROUP_LEVEL).contains(l))
            .fold(0, |bits, l| bits | (1 << l))
    }
}

/// Scans `hierarchy` for the cgroups at `named` and those `patterns` match.
pub(crate) fn scan(hierarchy: &Hierarchy, named: &[&CgroupPath], patterns: &[&Pattern]) -> Tenants {
    let mut t = Tenants::default();
    for path in named {
        if let Some(id) = hierarchy.id(path) {
            t.ids.insert((*path).clone(), id);
        }
    }
    for (i, pattern) in patterns.iter().enumerate() {
        let mut paths = Vec::new();
        walk(hierarchy, pattern.parts(), String::new(), &mut paths);
        paths.sort();
        for path in paths {
            if named.contains(&&path) || t.found.iter().any(|(_, p)| *p == path) {
                continue;
            }
            if let Some(id) = hierarchy.id(&path) {
                t.ids.insert(path.clone(), id);
                t.found.push((i, path));
            }
        }
    }
    t.found.sort_by(|a, b| a.1.cmp(&b.1));
    t
}

/// The cgroups below `prefix` (relative, `""` for the root) whose next components match
/// `parts`.
fn walk(hierarchy: &Hierarchy, parts: &[String], prefix: String, out: &mut Vec<CgroupPath>) {
    let Some((part, rest)) = parts.split_first() else {
        if let Ok(p) = CgroupPath::parse(&format!("/{prefix}")) {
            out.push(p);
        }
        return;
    };
    let join = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        }
    };
    if !part.contains('*') {
        if hierarchy.root.join(join(part)).is_dir() {
            walk(hierarchy, rest, join(part), out);
        }
        return;
    }
    let Ok(entries) = std::fs::read_dir(hierarchy.root.join(&prefix)) else {
        return;
    };
    for e in entries.flatten() {
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_dir && glob(part, name) {
            walk(hierarchy, rest, join(name), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_matched_cgroups_with_their_ids_and_levels() {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "system.slice/docker-a.scope/sub",
            "system.slice/docker-b.scope",
            "system.slice/sshd.service",
            "ci/job-1",
        ] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("system.slice/docker-file.scope"), "").unwrap();
        let h = Hierarchy {
            root: dir.path().to_owned(),
            hybrid: false,
        };
        let job = CgroupPath::parse("/ci/job-1").unwrap();
        let gone = CgroupPath::parse("/ci/job-2").unwrap();
        let docker = Pattern::parse("/system.slice/docker-*.scope").unwrap();
        let none = Pattern::parse("/user.slice/user-*.slice").unwrap();
        let t = scan(&h, &[&job, &gone], &[&docker, &none]);
        let found: Vec<(usize, &str)> = t.found.iter().map(|(i, p)| (*i, p.as_str())).collect();
        assert_eq!(
            found,
            [
                (0, "/system.slice/docker-a.scope"),
                (0, "/system.slice/docker-b.scope")
            ],
            "directories only, sorted"
        );
        assert!(t.ids.contains_key(&job) && !t.ids.contains_key(&gone));
        assert_eq!(t.ids.len(), 3);
        assert_eq!(t.levels(), 1 << 2);
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(dir.path().join("ci/job-1"))
            .unwrap()
            .ino();
        assert_eq!(t.ids[&job], ino);
    }
}
