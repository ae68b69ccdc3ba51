//! Test hosts for bwmon's end-to-end tests: a network namespace joined to the root namespace by
//! a veth pair, traffic senders that run as a given uid, and sinks inside the namespace.
//!
//! Every [`Lab`] has unique names and removes its namespace, veth and bpffs pins when dropped,
//! also when the test panics. The tests need root and say so instead of skipping.
#![allow(
    clippy::unwrap_used,
    reason = "test harness: a failed setup step panics with context"
)]

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

/// Panics with a clear message unless the test runs as root.
pub fn require_root() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "bwmon's integration tests create network namespaces and load eBPF programs: run them as root (`cargo xtask test`)"
        );
    }
}

/// Runs a command given as program and arguments, panicking with its output when it fails.
pub fn cmd(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cmd_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// The bwmon binary built by `cargo xtask build` (`BWMON_BIN`, else `target/debug/bwmon`).
pub fn bwmon_bin() -> PathBuf {
    std::env::var_os("BWMON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/bwmon"))
}

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// A namespace host reached from the root namespace through a veth pair.
///
/// The root side (`host_if`) is the interface bwmon accounts. The namespace answers on a
/// "general" address and on an "exempt" address, each in its own subnet, over IPv4 and IPv6.
pub struct Lab {
    /// Namespace name.
    pub netns: String,
    /// The veth end in the root namespace (where the egress hook goes).
    pub host_if: String,
    /// The veth end inside the namespace.
    pub peer_if: String,
    /// Address of the namespace host in the general subnet.
    pub general_v4: Ipv4Addr,
    /// Address of the namespace host in the exempt subnet.
    pub exempt_v4: Ipv4Addr,
    /// IPv6 general address.
    pub general_v6: Ipv6Addr,
    /// IPv6 exempt address.
    pub exempt_v6: Ipv6Addr,
    /// The exempt IPv4 subnet, as CIDR.
    pub exempt_net_v4: String,
    /// The exempt IPv6 subnet, as CIDR.
    pub exempt_net_v6: String,
    /// Root of the bpffs pins for this lab (unique, removed on drop).
    pub pin_root: PathBuf,
}

impl Lab {
    /// Builds a fresh lab.
    pub fn new() -> Lab {
        require_root();
        let n = LAB_SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{}{}", pid % 100_000, n);
        let lab_no = (pid.wrapping_mul(7).wrapping_add(n)) % 200 + 20;
        let lab = Lab {
            netns: format!("bwmon-t{tag}"),
            host_if: format!("bwt{tag}a"),
            peer_if: format!("bwt{tag}b"),
            general_v4: Ipv4Addr::new(10, 211, lab_no as u8, 2),
            exempt_v4: Ipv4Addr::new(10, 212, lab_no as u8, 2),
            general_v6: format!("fd00:211:{lab_no}::2").parse().unwrap(),
            exempt_v6: format!("fd00:212:{lab_no}::2").parse().unwrap(),
            exempt_net_v4: format!("10.212.{lab_no}.0/24"),
            exempt_net_v6: format!("fd00:212:{lab_no}::/64"),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/bwmon-test-{tag}")),
        };
        let ns = lab.netns.as_str();
        let (a, b) = (lab.host_if.as_str(), lab.peer_if.as_str());
        cmd("ip", &["netns", "add", ns]);
        cmd(
            "ip",
            &[
                "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns,
            ],
        );
        let host_v4 = format!("10.211.{lab_no}.1/24");
        let host_v6 = format!("fd00:211:{lab_no}::1/64");
        cmd("ip", &["addr", "add", &host_v4, "dev", a]);
        cmd("ip", &["-6", "addr", "add", &host_v6, "dev", a, "nodad"]);
        cmd("ip", &["link", "set", a, "up"]);
        let peer_v4 = format!("{}/24", lab.general_v4);
        let peer_ex_v4 = format!("{}/24", lab.exempt_v4);
        let peer_v6 = format!("{}/64", lab.general_v6);
        let peer_ex_v6 = format!("{}/64", lab.exempt_v6);
        let nsip = |args: &[&str]| {
            let mut full = vec!["-n", ns];
            full.extend_from_slice(args);
            cmd("ip", &full);
        };
        nsip(&["link", "set", "lo", "up"]);
        nsip(&["addr", "add", &peer_v4, "dev", b]);
        nsip(&["addr", "add", &peer_ex_v4, "dev", b]);
        nsip(&["-6", "addr", "add", &peer_v6, "dev", b, "nodad"]);
        nsip(&["-6", "addr", "add", &peer_ex_v6, "dev", b, "nodad"]);
        nsip(&["link", "set", b, "up"]);
        // The exempt subnet is reached through the same veth.
        let gw_v4 = lab.general_v4.to_string();
        let gw_v6 = lab.general_v6.to_string();
        cmd(
            "ip",
            &["route", "add", &lab.exempt_net_v4, "via", &gw_v4, "dev", a],
        );
        cmd(
            "ip",
            &[
                "-6",
                "route",
                "add",
                &lab.exempt_net_v6,
                "via",
                &gw_v6,
                "dev",
                a,
            ],
        );
        lab
    }

    /// Runs `f` on a thread that lives in the lab's namespace; sockets it opens belong there.
    pub fn spawn_in_ns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.netns);
        let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// A TCP sink in the namespace on `addr`: it accepts connections and discards what it
    /// reads until `stop_after` connections have closed; returns the bytes it received.
    pub fn tcp_sink(&self, addr: SocketAddr, stop_after: usize) -> thread::JoinHandle<u64> {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = self.spawn_in_ns(move || {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            tx.send(()).unwrap();
            let mut total = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            for _ in 0..stop_after {
                let (mut s, _) = listener.accept().unwrap();
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
            }
            total
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("sink did not start");
        handle
    }

    /// Interface statistics of the root-side veth: (tx bytes, tx packets).
    pub fn host_tx(&self) -> (u64, u64) {
        let read = |what: &str| -> u64 {
            let p = format!("/sys/class/net/{}/statistics/{what}", self.host_if);
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .trim()
                .parse()
                .unwrap()
        };
        (read("tx_bytes"), read("tx_packets"))
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting one veth end removes both; deleting the namespace removes the rest.
        cmd_quiet("ip", &["link", "del", &self.host_if]);
        cmd_quiet("ip", &["netns", "del", &self.netns]);
        if self.pin_root.exists() {
            if let Ok(dirs) = std::fs::read_dir(&self.pin_root) {
                for d in dirs.flatten() {
                    if let Ok(files) = std::fs::read_dir(d.path()) {
                        for f in files.flatten() {
                            let _ = std::fs::remove_file(f.path());
                        }
                    }
                    let _ = std::fs::remove_dir(d.path());
                }
            }
            let _ = std::fs::remove_dir(&self.pin_root);
        }
    }
}

/// Runs `f` on a new thread whose file-system uid is `uid`: sockets it creates are owned by
/// `uid`, which is what `bpf_get_socket_uid` reports, without forking a process per sender.
pub fn as_uid<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        // SAFETY: the raw syscall changes only this thread's credentials (glibc's wrapper would
        // change every thread's).
        unsafe { libc::syscall(libc::SYS_setfsuid, uid) };
        // SAFETY: as above; reading back the current value.
        let now = unsafe { libc::syscall(libc::SYS_setfsuid, uid) };
        assert_eq!(now as u32, uid, "setfsuid({uid}) did not take");
        f()
    })
    .join()
    .expect("sender thread panicked")
}

/// Sends `count` UDP datagrams of `payload` bytes to `dst` as `uid`. Returns the bytes each
/// datagram occupies on an Ethernet wire (payload + UDP + IP + Ethernet headers).
pub fn send_udp_as(uid: u32, dst: SocketAddr, count: u32, payload: usize) -> u64 {
    as_uid(uid, move || {
        let bind: SocketAddr = match dst.ip() {
            IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
            IpAddr::V6(_) => "[::]:0".parse().unwrap(),
        };
        let sock = UdpSocket::bind(bind).unwrap();
        let buf = vec![0x5au8; payload];
        for _ in 0..count {
            sock.send_to(&buf, dst).unwrap();
        }
    });
    let ip_header = match dst.ip() {
        IpAddr::V4(_) => 20,
        IpAddr::V6(_) => 40,
    };
    (payload + 8 + ip_header + 14) as u64
}

/// Sends `bytes` over one TCP connection to `dst` as `uid`, then closes it.
pub fn send_tcp_as(uid: u32, dst: SocketAddr, bytes: u64) {
    as_uid(uid, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        let buf = vec![0xa5u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // Wait for the peer's close so every data segment has left before we return.
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink);
    })
}
