//! A throwaway Debian 12 root to install packages in: unpacked from a tarball that
//! `mmdebstrap` makes once and that is kept under `target/debian/test-root/`, removed when
//! dropped (also when the test panics).
//!
//! Commands run in it through `unshare --net --pid --fork --mount-proc` and `chroot`: a network
//! namespace of their own (nothing is downloaded, and no maintainer script can reach the
//! host's interfaces), their own PIDs and `/proc`. systemd is not PID 1 there: units are
//! enabled as files, never started.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

/// Debian packages in the root beyond minbase: systemd (`systemd-analyze`, the unit's
/// directories), procps (`/bin/kill`, which the unit's ExecReload runs) and man-db (`man`:
/// `systemd-analyze verify` checks the unit's `Documentation=man:`).
const INCLUDE: &str = "systemd,procps,man-db";

/// The workspace's `target/debian/test-root`.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian/test-root")
}

/// The cached tarball of a Debian 12 root, made by mmdebstrap when missing (a minute or so,
/// from the Debian mirrors).
fn tarball() -> PathBuf {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "bookworm-minbase-{}.tar.zst",
        INCLUDE.replace(',', "-")
    ));
    if path.exists() {
        return path;
    }
    let partial = path.with_extension("partial.tar.zst");
    let started = Instant::now();
    crate::cmd(
        "mmdebstrap",
        &[
            "--quiet",
            "--variant=minbase",
            &format!("--include={INCLUDE}"),
            "bookworm",
            partial.to_str().unwrap(),
        ],
    );
    std::fs::rename(&partial, &path).unwrap();
    eprintln!(
        "debian root: made {} in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    path
}

/// An unpacked Debian 12 root.
pub struct DebianRoot {
    /// Its directory on the host.
    pub dir: PathBuf,
}

impl DebianRoot {
    /// A fresh root, unpacked from the cached tarball.
    pub fn new() -> DebianRoot {
        crate::require_root();
        let tarball = tarball();
        let dir = cache_dir().join(format!("run-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        let started = Instant::now();
        crate::cmd(
            "tar",
            &[
                "--zstd",
                "-xpf",
                tarball.to_str().unwrap(),
                "-C",
                dir.to_str().unwrap(),
            ],
        );
        eprintln!(
            "debian root: unpacked in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        DebianRoot { dir }
    }

    /// The host's path of `path` inside the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }

    /// Runs `program` with `args` inside the root; its output, whatever its exit status.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let proc = self.path("/proc");
        Command::new("unshare")
            .args(["--net", "--pid", "--fork", "--kill-child"])
            .arg(format!("--mount-proc={}", proc.display()))
            .arg("chroot")
            .arg(&self.dir)
            .arg(program)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("starting {program} {args:?} in the Debian root: {e}"))
    }

    /// Runs `program` with `args` inside the root, panicking with its output when it fails;
    /// its standard output and error, together.
    pub fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{program} {args:?} in the Debian root failed: {}\n{text}",
            out.status
        );
        text
    }
}

impl Default for DebianRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DebianRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
