//! Where the cgroup v2 hierarchy is, and which cgroup a process is in.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::CgroupPath;

/// Where systemd mounts the v2 hierarchy: pure v2 (Debian 12 and later), then the hybrid
/// layout's v2 part (v1 controllers at `/sys/fs/cgroup/*`).
pub(crate) const MOUNT_POINTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// The mounted v2 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    /// Its mount point.
    pub(crate) root: PathBuf,
    /// Whether it is the hybrid layout's (v1 controllers mounted beside it).
    pub(crate) hybrid: bool,
}

impl Hierarchy {
    /// The v2 hierarchy as `/proc/self/mounts` lists it: at `/sys/fs/cgroup`, else at
    /// `/sys/fs/cgroup/unified`, else wherever a `cgroup2` file system is mounted; `None`
    /// when there is none (a host with cgroup v1 only cannot have cgroup slices).
    pub(crate) fn locate() -> Option<Hierarchy> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        Self::from_mounts(&mounts)
    }

    /// [`Hierarchy::locate`] from the text of a mounts file.
    pub(crate) fn from_mounts(mounts: &str) -> Option<Hierarchy> {
        let v2: Vec<&str> = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
                (fstype == "cgroup2").then_some(point)
            })
            .collect();
        let point = MOUNT_POINTS
            .iter()
            .copied()
            .find(|p| v2.contains(p))
            .or_else(|| v2.first().copied())?;
        Some(Hierarchy {
            root: PathBuf::from(point),
            hybrid: point != MOUNT_POINTS[0],
        })
    }

    /// The directory of `path`.
    pub(crate) fn dir(&self, path: &CgroupPath) -> PathBuf {
        self.root.join(path.relative())
    }

    /// The kernel's id of the cgroup at `path` (the inode number of its directory, which is
    /// what `bpf_skb_cgroup_id` reports), or `None` when there is no such cgroup.
    pub(crate) fn id(&self, path: &CgroupPath) -> Option<u64> {
        let m = std::fs::metadata(self.dir(path)).ok()?;
        m.is_dir().then(|| m.ino())
    }

    /// How `check` and the log say where it is.
    pub(crate) fn describe(&self) -> String {
        format!(
            "cgroup v2 hierarchy at {} ({})",
            self.root.display(),
            if self.hybrid {
                "hybrid layout: cgroup v1 controllers beside it"
            } else {
                "pure v2"
            }
        )
    }
}

/// The v2 cgroup of process `pid` (the `0::` line of `/proc/PID/cgroup`); `None` for the
/// root cgroup, a process that is gone, or one whose file cannot be read.
pub(crate) fn cgroup_of(proc_root: &Path, pid: u32) -> Option<CgroupPath> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    parse_proc_cgroup(&text)
}

/// The cgroup of process `pid` among `tenants` and the cgroups below them, found in their
/// `cgroup.procs` files: the deepest that lists it. This is how the daemon finds a tenant's
/// cgroup when `/proc` hides other users' processes (the shipped unit's
/// `ProtectProc=invisible`, without `CAP_SYS_PTRACE`): cgroupfs lists them all the same.
pub(crate) fn find_pid(
    hierarchy: &Hierarchy,
    tenants: &[CgroupPath],
    pid: u32,
) -> Option<CgroupPath> {
    let mut best: Option<CgroupPath> = None;
    for t in tenants {
        let mut stack = vec![t.clone()];
        while let Some(path) = stack.pop() {
            let dir = hierarchy.dir(&path);
            let listed = std::fs::read_to_string(dir.join("cgroup.procs"))
                .is_ok_and(|text| text.lines().any(|l| l.trim().parse() == Ok(pid)));
            if listed && best.as_ref().is_none_or(|b| path.level() > b.level()) {
                best = Some(path.clone());
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir())
                    && let Some(name) = e.file_name().to_str()
                    && let Ok(below) = CgroupPath::parse(&format!("{path}/{name}"))
                {
                    stack.push(below);
                }
            }
        }
    }
    best
}

/// The v2 path in the text of a `/proc/PID/cgroup` file.
pub(crate) fn parse_proc_cgroup(text: &str) -> Option<CgroupPath> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    // A process in a cgroup removed under it reads "/path (deleted)".
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    CgroupPath::parse(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pure_v2_hybrid_and_v1_only_hosts() {
        let pure = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        let h = Hierarchy::from_mounts(pure).unwrap();
        assert_eq!(h.root, Path::new("/sys/fs/cgroup"));
        assert!(!h.hybrid);
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let h = Hierarchy::from_mounts(hybrid).unwrap();
        assert_eq!(h.root, Path::new("/sys/fs/cgroup/unified"));
        assert!(h.hybrid);
        assert!(h.describe().contains("/sys/fs/cgroup/unified (hybrid"));
        let v1 = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(Hierarchy::from_mounts(v1), None);
        let elsewhere = "cgroup2 /mnt/cg cgroup2 rw 0 0\n";
        assert_eq!(
            Hierarchy::from_mounts(elsewhere).unwrap().root,
            Path::new("/mnt/cg")
        );
    }

    #[test]
    fn a_pid_is_found_in_the_deepest_cgroup_procs_that_lists_it() {
        let dir = tempfile::tempdir().unwrap();
        let h = Hierarchy {
            root: dir.path().to_owned(),
            hybrid: false,
        };
        for (d, procs) in [("ci", "7\n"), ("ci/step", "42\n43\n"), ("web", "42\n")] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
            std::fs::write(dir.path().join(d).join("cgroup.procs"), procs).unwrap();
        }
        let ci = CgroupPath::parse("/ci").unwrap();
        let found = |pid| find_pid(&h, std::slice::from_ref(&ci), pid).map(|p| p.to_string());
        assert_eq!(found(42).as_deref(), Some("/ci/step"));
        assert_eq!(found(7).as_deref(), Some("/ci"));
        assert_eq!(found(8), None, "in no tenant cgroup (web is not one)");
    }

    #[test]
    fn a_process_cgroup_is_its_v2_line() {
        let hybrid = "9:name=systemd:/user.slice/user-1000.slice/session-2.scope\n0::/user.slice/user-1000.slice/session-2.scope\n";
        assert_eq!(
            parse_proc_cgroup(hybrid).unwrap().as_str(),
            "/user.slice/user-1000.slice/session-2.scope"
        );
        assert_eq!(parse_proc_cgroup("0::/\n"), None, "the root cgroup");
        assert_eq!(parse_proc_cgroup("1:cpu:/x\n"), None, "v1 only");
        assert_eq!(
            parse_proc_cgroup("0::/ci/job (deleted)\n")
                .unwrap()
                .as_str(),
            "/ci/job"
        );
    }
}
