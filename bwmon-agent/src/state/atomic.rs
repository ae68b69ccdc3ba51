//! Replacing a file whole, for the state and the history: a reader, or a crash at any point,
//! sees the old file or the new one, never half of either.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// Replaces the file at `path` with what `write` writes: a temporary file beside it, readable
/// by root only (it names slices and their usage), synced, renamed over `path`, and the
/// directory synced so the rename survives a crash. With `keep_old_as`, the file replaced is
/// kept there (a hard link, no space) just before the rename; a crash between the two renames
/// leaves the old file at both names. The directory is created if need be.
///
/// # Errors
/// `write` fails, or the file cannot be created, synced or renamed: the files are then as they
/// were, and no temporary file is left.
pub(crate) fn atomic_replace(
    path: &Path,
    keep_old_as: Option<&Path>,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    // A bare file name's parent is "", which no call opens: it means ".".
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let pid = std::process::id();
    let tmp = dir.join(format!(".{name}.tmp-{pid}"));
    let old_tmp = dir.join(format!(".{name}.old-tmp-{pid}"));
    let result = (|| {
        let mut out = io::BufWriter::new(
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?,
        );
        write(&mut out)?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        if let Some(old) = keep_old_as {
            match fs::hard_link(path, &old_tmp) {
                Ok(()) => fs::rename(&old_tmp, old)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&old_tmp);
    }
    result
}

/// The names of the files in `dir`, sorted: the tests check that no temporary file is left.
#[cfg(test)]
pub(super) fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_new_file_replaces_the_old_private_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f");
        atomic_replace(&path, None, |w| w.write_all(b"one")).unwrap();
        atomic_replace(&path, None, |w| w.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(names(&dir.path().join("sub")), ["f"]);
    }

    #[test]
    fn the_old_file_is_kept_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (path, old) = (dir.path().join("f"), dir.path().join("f.old"));
        atomic_replace(&path, Some(&old), |w| w.write_all(b"one")).unwrap();
        assert!(!old.exists(), "nothing to keep the first time");
        atomic_replace(&path, Some(&old), |w| w.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read(&old).unwrap(), b"one");
    }

    #[test]
    fn a_failed_write_leaves_the_files_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let (path, old) = (dir.path().join("f"), dir.path().join("f.old"));
        atomic_replace(&path, Some(&old), |w| w.write_all(b"one")).unwrap();
        atomic_replace(&path, Some(&old), |w| w.write_all(b"two")).unwrap();
        let failed = atomic_replace(&path, Some(&old), |w| {
            w.write_all(b"th")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read(&old).unwrap(), b"one");
        assert_eq!(names(dir.path()), ["f", "f.old"]);
    }
}
