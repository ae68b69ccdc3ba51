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
    /// This lab's number: its subnets are 10.211.N.0/24, 10.212.N.0/24, fd00:211:N::/64, ….
    pub lab_no: u32,
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
            lab_no,
        };
        let ns = lab.netns.as_str();
        cmd("ip", &["netns", "add", ns]);
        lab.recreate_veth();
        lab
    }

    /// Creates the veth pair, its addresses and routes (again, after `ip link del`).
    pub fn recreate_veth(&self) {
        let lab = self;
        let ns = lab.netns.as_str();
        let (a, b) = (lab.host_if.as_str(), lab.peer_if.as_str());
        let lab_no = lab.lab_no;
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
    }

    /// Datapath options for this lab: its host interface, its own pin root.
    pub fn datapath_options(&self) -> bwmon_agent::datapath::DatapathOptions {
        let mut opts = bwmon_agent::datapath::DatapathOptions::new(self.host_if.clone());
        opts.pin_root = self.pin_root.clone();
        opts
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
        // A daemon under test pins under the default root.
        let daemon_pins = std::path::Path::new(bwmon_agent::paths::PIN_ROOT).join(&self.host_if);
        if let Ok(files) = std::fs::read_dir(&daemon_pins) {
            for f in files.flatten() {
                let _ = std::fs::remove_file(f.path());
            }
            let _ = std::fs::remove_dir(&daemon_pins);
        }
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

/// Counters of one HTB class as `tc -s` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcClassStats {
    /// Bytes sent (dequeued).
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Packets queued right now.
    pub qlen: u64,
    /// Rate in bit/s as tc prints it (rounded to its unit).
    pub rate: u64,
    /// Ceil in bit/s as tc prints it.
    pub ceil: u64,
    /// Quantum in bytes.
    pub quantum: u64,
    /// Parent handle, e.g. "1:10".
    pub parent: Option<(u32, u32)>,
}

/// Parses tc's rate text ("1Mbit", "10Gbit", "64bit", "1500Kbit") into bit/s.
pub fn parse_tc_rate(s: &str) -> Option<u64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult = match unit {
        "bit" => 1.0,
        "Kbit" => 1e3,
        "Mbit" => 1e6,
        "Gbit" => 1e9,
        "Tbit" => 1e12,
        _ => return None,
    };
    Some((num * mult).round() as u64)
}

/// Parses the text of `tc -s -d class show` into stats per handle.
pub fn parse_tc_classes(text: &str) -> std::collections::HashMap<(u32, u32), TcClassStats> {
    let mut map = std::collections::HashMap::new();
    let mut current: Option<((u32, u32), TcClassStats)> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
        };
        if words.first() == Some(&"class") {
            if let Some((h, st)) = current.take() {
                map.insert(h, st);
            }
            let handle = words
                .get(2)
                .and_then(|h| parse_handle(h))
                .expect("class handle");
            let st = TcClassStats {
                rate: after("rate").and_then(|r| parse_tc_rate(r)).unwrap_or(0),
                ceil: after("ceil").and_then(|r| parse_tc_rate(r)).unwrap_or(0),
                quantum: after("quantum").and_then(|q| q.parse().ok()).unwrap_or(0),
                parent: after("parent").and_then(|p| parse_handle(p)),
                ..Default::default()
            };
            current = Some((handle, st));
        } else if let Some((_, st)) = current.as_mut() {
            if words.first() == Some(&"Sent") {
                st.bytes = words.get(1).and_then(|b| b.parse().ok()).unwrap_or(0);
                st.packets = words.get(3).and_then(|b| b.parse().ok()).unwrap_or(0);
                st.drops = after("(dropped")
                    .and_then(|d| d.trim_end_matches(',').parse().ok())
                    .unwrap_or(0);
            } else if words.first() == Some(&"backlog") {
                st.qlen = words
                    .get(2)
                    .and_then(|p| p.trim_end_matches('p').parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    if let Some((h, st)) = current {
        map.insert(h, st);
    }
    map
}

fn parse_handle(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.split_once(':')?;
    let maj = if maj.is_empty() {
        0
    } else {
        u32::from_str_radix(maj, 16).ok()?
    };
    let min = if min.is_empty() {
        0
    } else {
        u32::from_str_radix(min, 16).ok()?
    };
    Some((maj, min))
}

impl Lab {
    /// Runs `tc` with `args` followed by `dev <host_if>` where `{dev}` appears.
    pub fn tc(&self, args: &[&str]) -> Output {
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "{dev}" {
                    self.host_if.as_str()
                } else {
                    a
                }
            })
            .collect();
        cmd("tc", &args)
    }

    /// A plain HTB tree made with `tc` for datapath tests: `1:` (default `1:2`), `1:1` at
    /// 10 gbit, and one leaf per `(minor, rate)` (rate and ceil equal, tc syntax).
    pub fn htb_fixture(&self, leaves: &[(u16, &str)]) {
        // A short device queue so a flood into a slow class overflows it instead of blocking
        // the sender on its socket buffer.
        cmd("ip", &["link", "set", &self.host_if, "txqueuelen", "20"]);
        self.tc(&[
            "qdisc", "add", "dev", "{dev}", "root", "handle", "1:", "htb", "default", "2",
        ]);
        self.tc(&[
            "class", "add", "dev", "{dev}", "parent", "1:", "classid", "1:1", "htb", "rate",
            "10gbit",
        ]);
        for (minor, rate) in [(2u16, "10gbit")].iter().chain(leaves.iter()) {
            let id = format!("1:{minor:x}");
            self.tc(&[
                "class", "add", "dev", "{dev}", "parent", "1:1", "classid", &id, "htb", "rate",
                rate, "ceil", rate,
            ]);
        }
    }

    /// Every class on the host interface, by handle, parsed from `tc -s -d class show`
    /// (iproute2 6.1 prints classes only as text).
    pub fn tc_classes(&self) -> std::collections::HashMap<(u32, u32), TcClassStats> {
        let out = self.tc(&["-s", "-d", "class", "show", "dev", "{dev}"]);
        parse_tc_classes(&String::from_utf8_lossy(&out.stdout))
    }

    /// Bytes and packets the root qdisc sent, from `tc -s -j qdisc show`.
    pub fn root_qdisc_sent(&self) -> (u64, u64) {
        let out = self.tc(&["-s", "-j", "qdisc", "show", "dev", "{dev}"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("tc -j output is JSON");
        let root = v
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["root"].as_bool() == Some(true)))
            .expect("a root qdisc");
        (
            root["bytes"].as_u64().unwrap_or(0),
            root["packets"].as_u64().unwrap_or(0),
        )
    }

    /// Waits until no HTB class holds packets (so dequeued counters are final).
    pub fn wait_for_empty_queues(&self) {
        for _ in 0..100 {
            if self.tc_classes().values().all(|c| c.qlen == 0) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("HTB queues on {} did not drain", self.host_if);
    }
}

/// Ethernet frames for `BPF_PROG_TEST_RUN`.
pub mod frames {
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// An IPv4 UDP frame with `payload` bytes.
    pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
        let mut f = eth(0x0800);
        let total = (20 + 8 + payload) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend(udp(payload));
        f
    }

    /// A UDP header (port 12345 → 9, no checksum) and `payload` bytes.
    fn udp(payload: usize) -> Vec<u8> {
        let mut u = vec![0x30, 0x39, 0, 9];
        u.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend(std::iter::repeat_n(0x5a, payload));
        u
    }

    /// An IPv6 UDP frame with `payload` bytes.
    pub fn udp_v6(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
        let mut f = eth(0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[17, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend(udp(payload));
        f
    }

    /// An ARP request (not IP).
    pub fn arp() -> Vec<u8> {
        let mut f = eth(0x0806);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 10, 0, 0, 1]);
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        f
    }

    /// A bare Ethernet header with a local experimental ethertype: the shortest frame there is.
    pub fn bare_ethernet() -> Vec<u8> {
        eth(0x88b5)
    }

    /// An 802.1Q-tagged IPv4 frame (the classifier does not look inside VLAN tags).
    pub fn vlan_tagged(inner: &[u8]) -> Vec<u8> {
        let mut f = eth(0x8100);
        f.extend_from_slice(&[0, 5]);
        f.extend_from_slice(&inner[12..]);
        f
    }

    /// An IPv4 UDP frame whose header carries 4 bytes of options (IHL 6).
    pub fn udp_v4_with_options(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
        let mut f = udp_v4(src, dst, payload);
        f[14] = 0x46;
        let total = u16::from_be_bytes([f[16], f[17]]) + 4;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        // A no-op option word after the 20-byte header.
        f.splice(34..34, [1, 1, 1, 0]);
        f
    }
}

/// Sends `count` UDP datagrams of `payload` bytes to `dst` from a socket marked with `mark`
/// (`SO_MARK`), binding to `src` when given. Returns each datagram's Ethernet wire length.
pub fn send_udp_marked(
    mark: Option<u32>,
    src: Option<IpAddr>,
    dst: SocketAddr,
    count: u32,
    payload: usize,
) -> u64 {
    let bind = match (src, dst.ip()) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, IpAddr::V4(_)) => "0.0.0.0:0".parse().unwrap(),
        (None, IpAddr::V6(_)) => "[::]:0".parse().unwrap(),
    };
    let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    if let Some(mark) = mark {
        set_mark(&sock, mark);
    }
    let buf = vec![0x5au8; payload];
    for _ in 0..count {
        sock.send_to(&buf, dst).unwrap();
    }
    let ip_header = if dst.is_ipv4() { 20 } else { 40 };
    (payload + 8 + ip_header + 14) as u64
}

/// Sets `SO_MARK` on a socket (root only).
pub fn set_mark(sock: &UdpSocket, mark: u32) {
    // SAFETY: setsockopt with a pointer to a u32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            &mark as *const u32 as *const libc::c_void,
            size_of::<u32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_MARK: {}", std::io::Error::last_os_error());
}

/// Sends over one TCP connection to `dst` as `uid` until `stop` is set; returns the bytes sent.
pub fn send_tcp_until(
    uid: u32,
    dst: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        as_uid(uid, move || {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
            let buf = vec![0xa5u8; 1 << 16];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&buf).unwrap();
                sent += buf.len() as u64;
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut sink = [0u8; 16];
            let _ = s.read(&mut sink);
            sent
        })
    })
}

/// An iperf3 server in the lab's namespace for one test on `port`.
pub struct Iperf3Server {
    child: std::process::Child,
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    /// Starts `iperf3 -s -1` inside the namespace.
    pub fn iperf3_server(&self, port: u16) -> Iperf3Server {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "iperf3", "-s", "-1", "-p"])
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start iperf3 -s (cargo xtask setup installs it)");
        // Killed and reaped on drop, also if it never comes up.
        let server = Iperf3Server { child };
        // Ready when the namespace shows a listening socket on the port (a probe connection
        // would use up the one test `-1` serves).
        let hex_port = format!(":{port:04X} ");
        for _ in 0..100 {
            let tables = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.netns,
                    "cat",
                    "/proc/net/tcp",
                    "/proc/net/tcp6",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            // Column 4 is the state; 0A is LISTEN.
            if tables
                .lines()
                .any(|l| l.contains(&hex_port) && l.split_whitespace().nth(3) == Some("0A"))
            {
                return server;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("iperf3 -s did not listen on port {port} in {}", self.netns);
    }
}

/// Runs an iperf3 client as `uid` for `secs` seconds; returns what the receiver got, in bit/s.
pub fn iperf3_as(uid: u32, dst: IpAddr, port: u16, secs: u32) -> f64 {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
        ])
        .args([
            "iperf3",
            "-J",
            "-c",
            &dst.to_string(),
            "-p",
            &port.to_string(),
            "-t",
        ])
        .arg(secs.to_string())
        .output()
        .expect("run iperf3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 reported no rate: {v}"))
}

/// A `bwmon run` under test, with its files in a temporary directory. Stopped on drop.
pub struct Daemon {
    /// Directory holding config, slices, state, socket and log.
    pub dir: PathBuf,
    child: Option<std::process::Child>,
}

impl Daemon {
    /// Writes `config` (without `interface`, which is the lab's) and `slices`, then starts.
    pub fn start(lab: &Lab, config: &str, slices: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("bwmon-daemon-{}", lab.host_if));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("bwmon.toml"),
            format!(
                "interface = \"{}\"\nslices = \"slices.toml\"\nstate = \"state\"\nsocket = \"bwmon.sock\"\n{config}",
                lab.host_if
            ),
        )
        .unwrap();
        std::fs::write(dir.join("slices.toml"), slices).unwrap();
        let mut d = Daemon { dir, child: None };
        d.restart();
        d
    }

    /// Starts the daemon again (after a kill).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new(bwmon_bin())
            .args(["run", "--config"])
            .arg(self.dir.join("bwmon.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bwmon_bin().display()));
        self.child = Some(child);
        // Ready when the first status is served.
        for _ in 0..100 {
            if let Some(s) = self.try_status()
                && !s["slices"].as_array().is_none_or(|a| a.is_empty())
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("bwmon run exited ({status}):\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("bwmon run did not serve status:\n{}", self.log());
    }

    /// Sends `signal` and waits for the process; returns its exit status.
    pub fn stop(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap()
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Replaces the slices file.
    pub fn write_slices(&self, slices: &str) {
        std::fs::write(self.dir.join("slices.toml"), slices).unwrap();
    }

    fn try_status(&self) -> Option<serde_json::Value> {
        let out = Command::new(bwmon_bin())
            .args(["status", "--json", "--config"])
            .arg(self.dir.join("bwmon.toml"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())?
    }

    /// `bwmon status --json`.
    pub fn status(&self) -> serde_json::Value {
        self.try_status()
            .unwrap_or_else(|| panic!("bwmon status failed:\n{}", self.log()))
    }

    /// One slice of `bwmon status --json`.
    pub fn slice(&self, name: &str) -> Option<serde_json::Value> {
        self.status()["slices"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("--- bwmon log ---\n{}", self.log());
        }
    }
}

/// A real SMTP server on loopback (Debian's aiosmtpd), storing what it receives in a Maildir.
pub struct SmtpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SmtpServer {
    /// A server for `port`, not yet started.
    pub fn new(port: u16) -> SmtpServer {
        let dir = std::env::temp_dir().join(format!("bwmon-smtp-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SmtpServer {
            port,
            dir,
            child: None,
        }
    }

    /// Starts (or restarts) it and waits until it accepts connections.
    pub fn start(&mut self) {
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(self.dir.join("Maildir"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start aiosmtpd (cargo xtask setup installs python3-aiosmtpd)");
        self.child = Some(child);
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("aiosmtpd did not listen on {}", self.port);
    }

    /// Stops it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every message received so far, as raw text.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.join("Maildir").join(sub)) {
                for e in entries.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Waits up to `secs` for at least `n` messages; returns them.
    pub fn wait_for(&self, n: usize, secs: u64) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let m = self.messages();
            if m.len() >= n || std::time::Instant::now() > deadline {
                return m;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Keeps the kernel's log lines (aya-log records) for a test to look at.
#[derive(Clone, Default)]
pub struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl CapturedLog {
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl log::Log for CapturedLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}
