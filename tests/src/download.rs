//! Downloads: receivers in the root namespace that run as a given uid, senders in the lab's
//! namespace, and the host interface's receive counters.

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use crate::*;

/// A UDP socket bound to `addr` in the root namespace, owned by `uid` (what the ingress
/// counter reports for packets delivered to it).
pub fn udp_socket_as(uid: u32, addr: SocketAddr) -> UdpSocket {
    as_uid(uid, move || {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // Room for every datagram a test sends before it reads them (root may exceed rmem_max).
        let size: libc::c_int = 16 << 20;
        // SAFETY: setsockopt with a pointer to an int and its size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
        s
    })
}

/// A TCP listener on `addr` in the root namespace, owned by `uid` (the connections it accepts
/// are too).
pub fn tcp_listener_as(uid: u32, addr: SocketAddr) -> TcpListener {
    as_uid(uid, move || {
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
    })
}

/// Reads everything `listener`'s next connection sends until the sender closes, accepting it
/// as `uid`; returns the bytes (on its own thread). The accepting thread's uid is the one
/// `bpf_get_socket_uid` reports for the connection: a socket gets its owner when accepted
/// (what arrives before, in the accept queue, is root's).
pub fn tcp_drain(uid: u32, listener: TcpListener) -> thread::JoinHandle<u64> {
    thread::spawn(move || as_uid(uid, move || drain(listener)))
}

fn drain(listener: TcpListener) -> u64 {
    {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    }
}

/// Reads datagrams from `sock` until none came for 200 ms; returns how many.
pub fn udp_drain(sock: &UdpSocket) -> u64 {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0;
    while sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

impl Lab {
    /// Sends `count` UDP datagrams of `payload` bytes from the namespace (from `src`) to
    /// `dst`, paced so that no queue drops them. Returns each one's length on an Ethernet
    /// wire.
    pub fn send_udp_from_ns(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        count: u32,
        payload: usize,
    ) -> u64 {
        self.spawn_in_ns(move || {
            let s = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
            let buf = vec![0x3cu8; payload];
            for i in 0..count {
                s.send_to(&buf, dst).unwrap();
                if i % 64 == 63 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        })
        .join()
        .unwrap();
        let ip = if dst.is_ipv4() { 20 } else { 40 };
        (payload + 8 + ip + 14) as u64
    }

    /// Sends `bytes` over one TCP connection from the namespace (from `src`) to `dst`, closing
    /// first (so the receiver never holds a TIME_WAIT socket).
    pub fn send_tcp_from_ns(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        bytes: u64,
    ) -> thread::JoinHandle<()> {
        self.spawn_in_ns(move || {
            let sock = match src {
                IpAddr::V4(_) => {
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                }
                IpAddr::V6(_) => {
                    socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
                }
            }
            .unwrap();
            sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
            sock.connect_timeout(&dst.into(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
            let mut s: TcpStream = sock.into();
            write_then_close(&mut s, bytes);
        })
    }

    /// Interface statistics of the root-side veth: (rx bytes, rx packets).
    pub fn host_rx(&self) -> (u64, u64) {
        (self.host_stat("rx_bytes"), self.host_stat("rx_packets"))
    }

    /// Permanent IPv4 neighbour entries on both ends (general and exempt addresses), and IPv6
    /// off on the namespace's end (its router solicitations and MLD reports come at random
    /// times after the link comes up), so nothing but the test's packets arrives while a test
    /// compares what sockets got with what the interface got.
    pub fn static_neighbours(&self) {
        let v6_off = format!("net.ipv6.conf.{}.disable_ipv6=1", self.peer_if);
        cmd(
            "ip",
            &["netns", "exec", &self.netns, "sysctl", "-qw", &v6_off],
        );
        let mac = |ns: Option<&str>, dev: &str| {
            let path = format!("/sys/class/net/{dev}/address");
            let out = match ns {
                Some(ns) => cmd("ip", &["netns", "exec", ns, "cat", &path]),
                None => cmd("cat", &[&path]),
            };
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let host_mac = mac(None, &self.host_if);
        let peer_mac = mac(Some(&self.netns), &self.peer_if);
        for peer in [self.general_v4, self.exempt_v4] {
            let peer = peer.to_string();
            cmd(
                "ip",
                &[
                    "neigh",
                    "replace",
                    &peer,
                    "lladdr",
                    &peer_mac,
                    "dev",
                    &self.host_if,
                    "nud",
                    "permanent",
                ],
            );
        }
        let host = self.host_v4().to_string();
        cmd(
            "ip",
            &[
                "-n",
                &self.netns,
                "neigh",
                "replace",
                &host,
                "lladdr",
                &host_mac,
                "dev",
                &self.peer_if,
                "nud",
                "permanent",
            ],
        );
    }

    /// The host side's IPv4 address (what the namespace sends downloads to).
    pub fn host_v4(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 211, self.lab_no as u8, 1)
    }
}
