//! One daemon per interface: an exclusive `flock` on `<runtime dir>/<interface>.lock`, taken
//! before anything is touched and held for the process's life (the kernel lets it go when the
//! process ends, however it ends). The holder's pid is written into the file for the message a
//! second daemon prints.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstanceError {
    /// Another daemon holds it.
    #[error("bwmon already runs on {iface} (pid {pid}); it holds {path}")]
    Running {
        /// Interface.
        iface: String,
        /// The other daemon's pid, as it wrote it ("?" when unreadable).
        pid: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("lock file {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub(crate) struct InstanceLock {
    _file: File,
}

/// Takes the lock of `iface` under `dir`.
///
/// # Errors
/// Another daemon runs on `iface`, or the file cannot be opened.
pub(crate) fn lock(dir: &Path, iface: &str) -> Result<InstanceLock, InstanceError> {
    let path = dir.join(format!("{iface}.lock"));
    let err = |source| InstanceError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err(e));
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(InstanceError::Running {
            iface: iface.to_owned(),
            pid: if pid.is_empty() { "?" } else { pid }.to_owned(),
            path,
        });
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    writeln!(file, "{}", std::process::id()).map_err(err)?;
    Ok(InstanceLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_interface_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path(), "eth0").unwrap();
        let e = lock(dir.path(), "eth0").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "bwmon already runs on eth0 (pid {})",
                std::process::id()
            )),
            "{text}"
        );
        lock(dir.path(), "eth1").expect("another interface is free");
        drop(held);
        lock(dir.path(), "eth0").expect("free once released");
    }
}
