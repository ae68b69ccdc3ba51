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

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_an_index_and_missing_interfaces_are_named() {
        assert!(super::index("lo").unwrap() > 0);
        let e = super::index("no-such-if0").unwrap_err();
        assert!(e.to_string().contains("interface no-such-if0"), "{e}");
    }
}
