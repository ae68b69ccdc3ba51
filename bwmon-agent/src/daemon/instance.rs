//! One daemon per interface, per state file and per socket: an exclusive `flock` on a lock
//! file for each — `<runtime dir>/<interface>.lock` (keyed by the interface's network
//! namespace, [`crate::interface::keyed_name`]), `<state>.lock`, `<socket>.lock` and
//! `<tenant socket>.lock` — all taken before anything is read or touched and held for the
//! process's life (the kernel lets them go when the process ends, however it ends). The holder
//! writes its pid and interface into each, for the message a second daemon prints. Two daemons
//! on two interfaces that share a state file would charge every slice twice; two that share a
//! socket would answer for each other.

use std::{
    fs::File,
    io::{self, Read, Seek, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use crate::{
    config::Config,
    paths,
    state::open::{Access, open_regular},
};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstanceError {
    /// Another daemon runs on the interface.
    #[error("bwmon already runs on {iface} (pid {pid}); it holds {path}")]
    Running {
        /// Interface.
        iface: String,
        /// The other daemon's pid, as it wrote it ("?" when unreadable).
        pid: String,
        /// The lock file.
        path: PathBuf,
    },
    /// Another daemon (on another interface) writes the same file.
    #[error(
        "the {what} {file} is in use by another bwmon (pid {pid}, on {iface}; it holds {path}): give each daemon its own `state`, `socket` and `tenant_socket`"
    )]
    InUse {
        /// "state file", "control socket", "tenant socket".
        what: &'static str,
        /// The file both daemons would write.
        file: PathBuf,
        /// The other daemon's pid ("?" when unreadable).
        pid: String,
        /// Its interface ("?" when unreadable).
        iface: String,
        /// The lock file.
        path: PathBuf,
    },
    /// A lock file could not be opened or locked.
    #[error("lock file {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Held locks; dropping them (or exiting) releases them.
#[derive(Debug)]
pub(crate) struct InstanceLock {
    _files: Vec<File>,
}

/// Who holds a lock, as the holder wrote it.
struct Holder {
    pid: String,
    iface: String,
}

/// Takes the lock at `path` for a daemon on `iface`, or says who holds it.
fn take(path: &Path, iface: &str) -> Result<Result<File, Holder>, InstanceError> {
    let err = |source| InstanceError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut file = open_regular(path, Access::Lock).map_err(err)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err(e));
        }
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let mut words = text.split_whitespace();
        let mut word = || words.next().unwrap_or("?").to_owned();
        return Ok(Err(Holder {
            pid: word(),
            iface: word(),
        }));
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    writeln!(file, "{} {iface}", std::process::id()).map_err(err)?;
    Ok(Ok(file))
}

/// Takes the lock of `iface` (in this network namespace) under `dir`.
///
/// # Errors
/// Another daemon runs on `iface`, or the file cannot be opened.
pub(crate) fn lock(dir: &Path, iface: &str) -> Result<InstanceLock, InstanceError> {
    let path = paths::interface_lock(dir, iface);
    match take(&path, iface)? {
        Ok(file) => Ok(InstanceLock { _files: vec![file] }),
        Err(holder) => Err(InstanceError::Running {
            iface: iface.to_owned(),
            pid: holder.pid,
            path,
        }),
    }
}

/// Takes the lock beside `file` (`<file>.lock`), the `what` of a daemon on `iface`.
///
/// # Errors
/// Another daemon writes `file`, or the lock cannot be opened.
pub(crate) fn lock_file(
    file: &Path,
    what: &'static str,
    iface: &str,
) -> Result<File, InstanceError> {
    let path = paths::lock_beside(file);
    take(&path, iface)?.map_err(|holder| InstanceError::InUse {
        what,
        file: file.to_owned(),
        pid: holder.pid,
        iface: holder.iface,
        path,
    })
}

/// Every lock a daemon of `config` needs, under the runtime directory `dir`: its interface,
/// its state file (taken before the state is read), its control socket and its tenant socket.
///
/// # Errors
/// Another daemon runs on the interface or writes one of those files.
pub(crate) fn lock_all(dir: &Path, config: &Config) -> Result<InstanceLock, InstanceError> {
    let iface = config.interface.as_str();
    let mut held = lock(dir, iface)?;
    let files = [
        Some((config.state.as_path(), "state file")),
        Some((config.socket.as_path(), "control socket")),
        config
            .tenant_socket
            .as_deref()
            .map(|p| (p, "tenant socket")),
    ];
    for (file, what) in files.into_iter().flatten() {
        held._files.push(lock_file(file, what, iface)?);
    }
    Ok(held)
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

    #[test]
    fn two_daemons_on_two_interfaces_cannot_share_a_state_file_or_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let text = |iface: &str, state: &str, socket: &str| {
            format!(
                "interface = \"{iface}\"\nstate = \"{}\"\nsocket = \"{}\"\ntenant_socket = \"\"\n",
                dir.path().join(state).display(),
                dir.path().join(socket).display()
            )
        };
        let config = |t: String| {
            let path = dir.path().join("bwmon.toml");
            std::fs::write(&path, t).unwrap();
            Config::load(&path).unwrap()
        };
        let first = lock_all(&run, &config(text("eth0", "state", "a.sock"))).unwrap();
        let e = lock_all(&run, &config(text("eth1", "state", "b.sock"))).unwrap_err();
        let said = e.to_string();
        assert!(
            said.contains(&format!(
                "the state file {} is in use by another bwmon (pid {}, on eth0",
                dir.path().join("state").display(),
                std::process::id()
            )),
            "{said}"
        );
        assert!(said.contains("its own `state`"), "{said}");
        let e = lock_all(&run, &config(text("eth1", "other", "a.sock"))).unwrap_err();
        assert!(e.to_string().contains("the control socket"), "{e}");
        // The failed attempts let go of what they took: eth1 is free.
        let second = lock_all(&run, &config(text("eth1", "other", "b.sock"))).unwrap();
        drop((first, second));
    }

    #[test]
    fn a_link_at_a_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("state.lock")).unwrap();
        let e = lock_file(&dir.path().join("state"), "state file", "eth0").unwrap_err();
        assert!(format!("{:#}", anyhow::Error::from(e)).contains("symbolic link"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
