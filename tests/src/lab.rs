//! A lab: a network namespace joined to the root namespace by a veth pair, with unique
//! names, removed (namespace, veth, bpffs pins) when dropped, also when the test panics.

use std::{
    fs::File, io::Read, net::Ipv4Addr, net::Ipv6Addr, net::SocketAddr, net::TcpListener,
    os::fd::AsRawFd, path::PathBuf, process::Command, process::Output, sync::atomic::AtomicU32,
    sync::atomic::Ordering, thread, time::Duration,
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

/// [`bwmon_bin`] where any user can run it: the binary itself when every directory above it
/// lets others through, else a copy in a directory of mode 0755 under the temporary directory
/// (a checkout under a `mktemp -d` directory, mode 0700, is closed to the tenants the tests
/// run commands as).
pub fn bwmon_bin_for_tenants() -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = bwmon_bin();
        let open_to_others = bin
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
            .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
        if open_to_others {
            return bin;
        }
        let dir = std::env::temp_dir().join(format!("bwmon-tenant-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("bwmon");
        std::fs::copy(&bin, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
    .clone()
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
    /// The machine-wide claim on `lab_no` (released when the lab is dropped).
    _claim: File,
}

/// Where lab numbers are claimed, one lock file each.
const LAB_CLAIMS: &str = "/run/bwmon-test-labs";

/// A lab number no other lab on this machine holds, and its claim: a lock on
/// `/run/bwmon-test-labs/N`, held while the lab lives. Two test processes at once (two
/// checkouts, CI beside a developer) never build the same subnets; a crashed process's claim
/// ends with it.
fn claim_lab_no(start: u32) -> (u32, File) {
    std::fs::create_dir_all(LAB_CLAIMS).unwrap_or_else(|e| panic!("creating {LAB_CLAIMS}: {e}"));
    for i in 0..200 {
        let no = (start + i) % 200 + 20;
        let path = format!("{LAB_CLAIMS}/{no}");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return (no, file);
        }
    }
    panic!("all 200 lab numbers are held by running labs");
}

impl Lab {
    /// Builds a fresh lab.
    pub fn new() -> Lab {
        require_root();
        let n = LAB_SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{}{}", pid % 100_000, n);
        let (lab_no, claim) = claim_lab_no(pid.wrapping_mul(7).wrapping_add(n));
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
            _claim: claim,
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
        (self.host_stat("tx_bytes"), self.host_stat("tx_packets"))
    }

    /// One counter of the root-side veth's statistics (`rx_bytes`, `tx_packets`, …).
    pub fn host_stat(&self, what: &str) -> u64 {
        let p = format!("/sys/class/net/{}/statistics/{what}", self.host_if);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .trim()
            .parse()
            .unwrap()
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
