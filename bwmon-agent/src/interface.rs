//! The accounted network interface as the kernel knows it.

use std::{ffi::CString, io};

/// The index of interface `name` in this network namespace. It changes when the interface is
/// deleted and created again, so callers look it up each time they need it.
///
/// # Errors
/// No such interface (the error names it), or a name with a NUL byte.
pub fn index(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {name}: {e}")));
    }
    Ok(index)
}

/// A name that cannot be a Linux interface's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid interface name {name:?}: {reason}")]
pub struct InvalidName {
    /// The name as given.
    pub name: String,
    /// Why it is rejected.
    pub reason: &'static str,
}

/// Checks that `name` can be a Linux interface name (it also becomes a path component under
/// the pin root, so `/`, `.` and `..` are refused).
///
/// # Errors
/// The name is empty, too long, or has a character Linux (or a path) refuses.
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
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
