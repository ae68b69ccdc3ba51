//! The accounted network interface as the kernel knows it.

use std::{ffi::CString, io};

/// The index of interface `name` in this network namespace. It changes when the interface is
/// deleted and created again, so callers look it up each time they need it.
///
/// # Errors
/// No such interface (the error names it), or a name with a NUL byte.
pub(crate) fn index(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {name}: {e}")));
    }
    Ok(index)
}

/// Bytes of link-layer header in front of the network header of packets leaving interface
/// `name`, from its device type: [`bwmon_common::ETH_HLEN`] for Ethernet (and loopback, which
/// builds Ethernet headers), 0 for devices that carry bare IP (WireGuard, tun, raw IP), else
/// [`bwmon_common::LINK_HEADER_UNKNOWN`].
///
/// # Errors
/// No such interface, or a name with a NUL byte.
pub fn link_header_len(name: &str) -> io::Result<u32> {
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_RAWIP: u16 = 519;
    const ARPHRD_LOOPBACK: u16 = 772;
    const ARPHRD_NONE: u16 = 0xfffe;
    let c_name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a plain datagram socket, closed when `fd` drops.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid `ifreq`.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = c_name.as_bytes_with_nul();
    if bytes.len() > req.ifr_name.len() {
        return Err(io::Error::other(format!("interface {name}: name too long")));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills `req.ifr_ifru.ifru_hwaddr`; `req` outlives the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            &mut req,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {name}: {e}")));
    }
    // SAFETY: the union member the ioctl wrote.
    let family = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    Ok(match family {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => bwmon_common::ETH_HLEN,
        ARPHRD_NONE | ARPHRD_RAWIP => 0,
        _ => bwmon_common::LINK_HEADER_UNKNOWN,
    })
}

/// A name that cannot be a Linux interface's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid interface name {name:?}: {reason}")]
pub struct InvalidName {
    /// The name as given.
    pub(crate) name: String,
    /// Why it is rejected.
    pub(crate) reason: &'static str,
}

/// The inode of the host's (the initial) network namespace on kernels that fix it (6.18 on:
/// `PROC_NET_INIT_INO`); earlier ones number it like any other.
const HOST_NETNS_INO: u64 = 0xEFFF_FFF9;

/// The network namespace the calling thread is in, by the inode of its nsfs file; `None` when
/// it is the host's, or when that cannot be told (then bwmon names files as it always did).
pub fn netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = |path: &str| std::fs::metadata(path).ok().map(|m| m.ino());
    let mine = ino("/proc/thread-self/ns/net")?;
    if mine == HOST_NETNS_INO {
        return None;
    }
    // Before 6.18: the host's is pid 1's (readable by root, unless a sandbox hides it).
    match ino("/proc/1/ns/net") {
        Some(host) => (host != mine).then_some(mine),
        None => fixes_host_netns_ino().then_some(mine),
    }
}

/// Whether the running kernel gives the host's network namespace [`HOST_NETNS_INO`] (6.18 on).
fn fixes_host_netns_ino() -> bool {
    // SAFETY: uname fills the struct it is given; all-zero is a valid one.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` outlives the call.
    if unsafe { libc::uname(&mut u) } != 0 {
        return false;
    }
    let release: String = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (6, 18)
}

/// How bwmon names interface `iface` in its file names (the pin directory, the instance lock):
/// the name itself in the host's network namespace (where it always did), `<iface>:netns<inode>`
/// in another one, where an interface of the same name is another interface. (`:` is in no
/// interface name.)
pub fn keyed_name(iface: &str) -> String {
    match netns() {
        None => iface.to_owned(),
        Some(ino) => format!("{iface}:netns{ino}"),
    }
}

/// Checks that `name` can be a Linux interface name (it also becomes a path component under
/// the pin root, so `/`, `.` and `..` are refused).
///
/// # Errors
/// The name is empty, too long, or has a character Linux (or a path) refuses.
pub(crate) fn validate_name(name: &str) -> Result<(), InvalidName> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 15 {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "not a name"
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        "contains '/', ':', whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(InvalidName {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_an_index_and_missing_interfaces_are_named() {
        assert!(super::index("lo").unwrap() > 0);
        let e = super::index("no-such-if0").unwrap_err();
        assert!(e.to_string().contains("interface no-such-if0"), "{e}");
    }

    #[test]
    fn loopback_has_an_ethernet_header_and_missing_interfaces_are_named() {
        assert_eq!(
            super::link_header_len("lo").unwrap(),
            bwmon_common::ETH_HLEN
        );
        let e = super::link_header_len("no-such-if0").unwrap_err();
        assert!(e.to_string().contains("interface no-such-if0"), "{e}");
    }

    #[test]
    fn an_interface_is_keyed_by_its_network_namespace_unless_it_is_the_hosts() {
        assert_eq!(super::keyed_name("eth0"), "eth0", "the host's namespace");
        let other = std::thread::spawn(|| {
            // SAFETY: moves only this thread to a new network namespace (root only).
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            Some((super::netns(), super::keyed_name("eth0")))
        })
        .join()
        .unwrap();
        let Some((ino, name)) = other else {
            eprintln!("not root: a new network namespace cannot be made here");
            return;
        };
        let ino = ino.expect("another namespace");
        assert_eq!(name, format!("eth0:netns{ino}"));
    }

    #[test]
    fn interface_names_that_cannot_be_paths_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "eth0:1",
            "a b",
            "sixteen_chars_xx",
            "tab\t",
        ] {
            let err = super::validate_name(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid interface name"), "{err}");
        }
        for good in ["eth0", "veth-bw1", "enp0s31f6", "x"] {
            super::validate_name(good).expect(good);
        }
    }
}
