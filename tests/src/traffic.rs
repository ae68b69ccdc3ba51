//! Traffic: senders that run as a given uid (UDP, TCP, marked UDP), and iperf3.

use std::{
    io::Read, io::Write, net::IpAddr, net::SocketAddr, net::TcpStream, net::UdpSocket,
    os::fd::AsRawFd, process::Command, sync::atomic::Ordering, thread, time::Duration,
};

use crate::*;

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
        write_then_close(&mut s, bytes);
    })
}

/// The most a TCP sender of `payload` bytes may be charged on the wire: every segment's
/// headers (66 B per 1,448 B of payload at MTU 1500 with timestamps: 4.6 %), and segments sent
/// again (a busy two-core machine drops a few at the receiving veth's backlog after they were
/// charged, and TCP resends them: a sender of 8 MiB was charged 5.4 % over its payload).
pub fn tcp_wire_at_most(payload: u64) -> u64 {
    payload * 110 / 100
}

/// Writes `bytes` to `s`, shuts its sending side, then waits for the peer's close so every
/// data segment has left before it returns.
pub fn write_then_close(s: &mut TcpStream, bytes: u64) {
    let buf = vec![0xa5u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut sink = [0u8; 16];
    let _ = s.read(&mut sink);
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
    let v = iperf3_client(uid, dst, port, secs, &[]);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 reported no rate: {v}"))
}

/// Downloads from the iperf3 server at `dst` for `secs` seconds as `uid` (`-R`: the server
/// sends, this side receives), with `extra` options (`-b 4M` paces the server); returns the
/// rate this side received, in bit/s.
pub fn iperf3_download_as(uid: u32, dst: IpAddr, port: u16, secs: u32, extra: &[&str]) -> f64 {
    let mut args = vec!["-R"];
    args.extend_from_slice(extra);
    let v = iperf3_client(uid, dst, port, secs, &args);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 reported no rate: {v}"))
}

/// `payload`-byte UDP datagrams sent by the iperf3 server at `dst` as fast as it can (`-R`)
/// for `secs` seconds, received as `uid`; returns the datagrams per second received.
pub fn iperf3_udp_download_pps_as(
    uid: u32,
    dst: IpAddr,
    port: u16,
    secs: u32,
    payload: usize,
) -> f64 {
    let length = payload.to_string();
    let v = iperf3_client(
        uid,
        dst,
        port,
        secs,
        &["-R", "-u", "-b", "0", "-l", &length],
    );
    udp_pps(&v)
}

/// Sends `payload`-byte UDP datagrams as fast as iperf3 can as `uid` for `secs` seconds;
/// returns the datagrams per second the receiver got.
pub fn iperf3_udp_pps_as(uid: u32, dst: IpAddr, port: u16, secs: u32, payload: usize) -> f64 {
    let length = payload.to_string();
    let v = iperf3_client(uid, dst, port, secs, &["-u", "-b", "0", "-l", &length]);
    udp_pps(&v)
}

fn iperf3_client(uid: u32, dst: IpAddr, port: u16, secs: u32, extra: &[&str]) -> serde_json::Value {
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
        .args(extra)
        .output()
        .expect("run iperf3");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The datagrams per second an iperf3 UDP run's receiver got, from its JSON report.
fn udp_pps(v: &serde_json::Value) -> f64 {
    let sum = &v["end"]["sum"];
    let (Some(packets), Some(lost), Some(seconds)) = (
        sum["packets"].as_f64(),
        sum["lost_packets"].as_f64(),
        sum["seconds"].as_f64(),
    ) else {
        panic!("iperf3 reported no UDP counts: {v}");
    };
    (packets - lost) / seconds.max(1e-9)
}
