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
