//! Opening the files bwmon keeps (the state, its previous generation, the history, the lock
//! files): never through a symbolic link (`O_NOFOLLOW`), never blocking on a FIFO or a device
//! (`O_NONBLOCK`, then `fstat`: regular files only). Whoever can put a link or a FIFO at one of
//! these names gets a refusal that names the file, not a write to another file or a daemon
//! stuck in `open()`.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

/// What a file is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reading an existing file.
    Read,
    /// Appending, created (mode 0600) if need be.
    Append,
    /// Reading and writing, created (mode 0600) if need be, never truncated (a lock file).
    Lock,
    /// Writing a file that must not exist yet (a temporary file), mode 0600.
    CreateNew,
}

/// Opens the regular file at `path` for `access`, without following a symbolic link at its
/// last component and without blocking; anything but a regular file is refused.
///
/// # Errors
/// The open fails (a missing file is `NotFound`, as from `open(2)`), `path` is a symbolic
/// link, or it is not a regular file (a FIFO, a socket, a device, a directory).
pub(crate) fn open_regular(path: &Path, access: Access) -> io::Result<File> {
    let mut options = OpenOptions::new();
    match access {
        Access::Read => options.read(true),
        Access::Append => options.append(true).create(true),
        Access::Lock => options.read(true).write(true).create(true).truncate(false),
        Access::CreateNew => options.write(true).create_new(true),
    };
    options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    let file = options.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => refused("a symbolic link"),
        // Opening a FIFO that nobody reads for writing, without blocking.
        Some(libc::ENXIO) => refused("a FIFO"),
        _ => e,
    })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(refused(describe(kind)));
    }
    Ok(file)
}

/// Refuses anything at `path` that is not a regular file: a symbolic link is not followed,
/// a FIFO or device not opened. A missing file is fine.
///
/// # Errors
/// `path` is something else than a regular file, or cannot be looked at.
pub(crate) fn refuse_non_regular(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => Err(refused(describe(m.file_type()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a file that is not a regular one is.
fn describe(kind: fs::FileType) -> &'static str {
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// A file refused for what it is.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0}, not a regular file: refused (bwmon neither follows links nor opens FIFOs or devices for its files)"
)]
pub(crate) struct Refused(&'static str);

fn refused(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, Refused(what))
}

/// Whether `e` is a file refused for what it is (a link, a FIFO, …): the operator has to look.
pub(crate) fn is_refused(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Refused>())
}

/// A name no one can guess: 16 hex digits from the kernel's random source.
pub(crate) fn unpredictable_suffix() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // Never seen on Linux ≥ 3.17 for 8 bytes; the time still differs between calls, and
        // an exclusive create refuses whatever is already there.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A FIFO at `path`, for the tests that check nothing blocks on one.
#[cfg(test)]
pub(crate) fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, os::unix::fs::symlink, time::Instant};

    use super::*;

    #[test]
    fn links_fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("passwd");
        fs::write(&victim, b"root:x:0:0\n").unwrap();
        let link = dir.path().join("link");
        symlink(&victim, &link).unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let started = Instant::now();
        for access in [
            Access::Read,
            Access::Append,
            Access::Lock,
            Access::CreateNew,
        ] {
            for (path, what) in [(&link, "symbolic link"), (&fifo, "FIFO")] {
                let e = open_regular(path, access).unwrap_err();
                let text = e.to_string();
                assert!(
                    text.contains(what)
                        || (access == Access::CreateNew
                            && e.kind() == io::ErrorKind::AlreadyExists),
                    "{access:?} {}: {text}",
                    path.display()
                );
            }
            if access != Access::CreateNew {
                let e = open_regular(dir.path(), access).unwrap_err();
                assert!(
                    e.to_string().contains("directory") || e.raw_os_error() == Some(libc::EISDIR),
                    "{e}"
                );
            }
        }
        assert!(started.elapsed().as_secs() < 2, "nothing blocked");
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"root:x:0:0\n",
            "the link's target untouched"
        );
        for path in [&link, &fifo] {
            assert!(refuse_non_regular(path).is_err());
        }
        refuse_non_regular(&victim).unwrap();
        refuse_non_regular(&dir.path().join("missing")).unwrap();
        // A regular file opens, and a missing one is NotFound.
        let mut text = String::new();
        open_regular(&victim, Access::Read)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "root:x:0:0\n");
        let missing = open_regular(&dir.path().join("missing"), Access::Read).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn suffixes_differ() {
        let a = unpredictable_suffix();
        assert_eq!(a.len(), 16);
        assert_ne!(a, unpredictable_suffix());
    }
}
