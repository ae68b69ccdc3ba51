//! Test cgroups under the v2 hierarchy, and senders that run inside them: a forked child moves
//! itself into the cgroup (`cgroup.procs`), takes the uid it is given, and sends. A socket keeps
//! the cgroup of the process that made it, so the child opens its sockets after moving.

use std::{
    ffi::CString,
    io::Write,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

/// Where the v2 hierarchy is mounted: `/sys/fs/cgroup` (pure v2), else
/// `/sys/fs/cgroup/unified` (hybrid, as on the development machine).
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let v2: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1])
        })
        .collect();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|p| v2.contains(p))
        .or(v2.first().copied())
        .map(PathBuf::from)
        .expect("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)")
}

/// A tree of test cgroups under `/bwmon-test-<pid>-<n>` of the v2 hierarchy, removed (deepest
/// first) when dropped.
pub struct TestCgroups {
    /// Its top, as a path under the hierarchy (`/bwmon-test-…`): what a slices file names.
    pub top: String,
    root: PathBuf,
}

impl TestCgroups {
    /// A new, empty top cgroup.
    pub fn new() -> TestCgroups {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let top = format!("/bwmon-test-{}-{n}", std::process::id());
        let t = TestCgroups {
            top,
            root: cgroup2_root(),
        };
        t.make("");
        t
    }

    /// `rel` below the top, as the slices file names it (`/bwmon-test-…/rel`).
    pub fn path(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.top.clone()
        } else {
            format!("{}/{rel}", self.top)
        }
    }

    /// The directory of `rel` below the top.
    pub fn dir(&self, rel: &str) -> PathBuf {
        self.root.join(self.path(rel).trim_start_matches('/'))
    }

    /// Creates `rel` below the top (and its parents).
    pub fn make(&self, rel: &str) -> PathBuf {
        let d = self.dir(rel);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }

    /// Removes `rel` below the top, and everything below it (no process may be left in it).
    pub fn remove(&self, rel: &str) {
        remove_tree(&self.dir(rel));
    }

    /// The kernel's id of `rel` (its directory's inode number).
    pub fn id(&self, rel: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.dir(rel)).unwrap().ino()
    }
}

impl Default for TestCgroups {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        remove_tree(&self.dir(""));
    }
}

/// Removes the cgroup at `dir` and those below it, deepest first (cgroupfs removes only empty
/// cgroups, with `rmdir`).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Runs `f` in a forked child that first moves itself into the cgroup at `dir` and, when
/// given, joins network namespace `netns` and takes uid `uid`; waits for it and panics when it
/// fails. Returns the child's pid when `wait` is false (the caller kills it).
fn fork_in(
    dir: &Path,
    uid: Option<u32>,
    netns: Option<&str>,
    wait: bool,
    f: impl FnOnce(),
) -> libc::pid_t {
    let procs = CString::new(
        dir.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let ns = netns.map(|n| {
        std::fs::File::open(format!("/run/netns/{n}"))
            .unwrap_or_else(|e| panic!("opening netns {n}: {e}"))
    });
    // SAFETY: the child only makes system calls and runs `f` (std sockets; glibc's malloc is
    // safe after fork), then `_exit`s without unwinding into the parent's state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: a valid C string; "0" moves the writing process.
            let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY) };
            assert!(fd >= 0, "open cgroup.procs");
            // SAFETY: writing one byte from a static buffer.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            assert_eq!(n, 1, "joining the cgroup");
            // SAFETY: closing the descriptor opened above.
            unsafe { libc::close(fd) };
            if let Some(ns) = &ns {
                // SAFETY: setns on a valid namespace descriptor.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns");
            }
            if let Some(uid) = uid {
                // SAFETY: plain set*id calls in the single-threaded child.
                let rc = unsafe { libc::setresuid(uid, uid, uid) };
                assert_eq!(rc, 0, "setresuid");
            }
            f();
        }))
        .map_or(1, |()| 0);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    if wait {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "sender in {} failed ({status:#x})",
            dir.display()
        );
    }
    pid
}

/// Sends `count` UDP datagrams of `payload` bytes to `dst` from a process in the cgroup at
/// `dir` (as `uid`, when given); returns each datagram's Ethernet wire length.
pub fn send_udp_in(
    dir: &Path,
    uid: Option<u32>,
    netns: Option<&str>,
    dst: SocketAddr,
    count: u32,
    payload: usize,
) -> u64 {
    let buf = vec![0x5au8; payload];
    fork_in(dir, uid, netns, true, || {
        let bind: SocketAddr = match dst.ip() {
            IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
            IpAddr::V6(_) => "[::]:0".parse().unwrap(),
        };
        let sock = UdpSocket::bind(bind).unwrap();
        for _ in 0..count {
            sock.send_to(&buf, dst).unwrap();
        }
    });
    let ip_header = if dst.is_ipv4() { 20 } else { 40 };
    (payload + 8 + ip_header + 14) as u64
}

/// Sends `bytes` over one TCP connection to `dst` from a process in the cgroup at `dir` (as
/// `uid`, when given), and waits for the peer's close.
pub fn send_tcp_in(dir: &Path, uid: Option<u32>, dst: SocketAddr, bytes: u64) {
    fork_in(dir, uid, None, true, || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        crate::traffic::write_then_close(&mut s, bytes);
    });
}

/// A process in a cgroup sending TCP to a destination as fast as it may, killed when dropped.
pub struct CgroupSender(libc::pid_t);

/// Starts a process in the cgroup at `dir` that sends TCP to `dst` until dropped.
pub fn sender_in(dir: &Path, dst: SocketAddr) -> CgroupSender {
    let buf = vec![0xa5u8; 1 << 16];
    CgroupSender(fork_in(dir, None, None, false, || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        while s.write_all(&buf).is_ok() {}
    }))
}

impl Drop for CgroupSender {
    fn drop(&mut self) {
        // SAFETY: our own child, killed and reaped.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// Runs `program args` as `uid` in a process in the cgroup at `dir`; its standard output.
pub fn output_in(dir: &Path, uid: u32, program: &Path, args: &[&str]) -> String {
    let out = tempfile::NamedTempFile::new().unwrap();
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let file = out.reopen().unwrap();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    fork_in(dir, Some(uid), None, true, || {
        let status = std::process::Command::new(program)
            .args(&args)
            .stdout(file)
            .status()
            .unwrap();
        assert!(status.success(), "{} {args:?}: {status}", program.display());
    });
    std::fs::read_to_string(out.path()).unwrap()
}
