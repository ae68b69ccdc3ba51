//! Replacing a file whole, for the state and the history: a reader, or a crash at any point,
//! sees the old file or the new one, never half of either. Nothing is followed or truncated
//! through a link: the target must be a regular file (or missing), and the temporary files are
//! created exclusively (`O_EXCL | O_NOFOLLOW`) under names no one can guess.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::open::{Access, open_regular, refuse_non_regular, unpredictable_suffix};

/// Replaces the file at `path` with what `write` writes: a temporary file beside it, readable
/// by root only (it names slices and their usage), synced, renamed over `path`, and the
/// directory synced so the rename survives a crash. With `keep_old_as`, the file replaced is
/// kept there (a hard link, no space) just before the rename; a crash between the two renames
/// leaves the old file at both names. The directory is created if need be.
///
/// # Errors
/// `path` is a symbolic link, a FIFO or anything but a regular file; `write` fails, or the file
/// cannot be created, synced or renamed: the files are then as they were, and no temporary
/// file is left.
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
    refuse_non_regular(path)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let (tmp, file) = create_temporary(dir, name, "tmp")?;
    let mut old_tmp: Option<PathBuf> = None;
    let result = (|| {
        let mut out = io::BufWriter::new(file);
        write(&mut out)?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        if let Some(old) = keep_old_as {
            // A hard link under a fresh name (link(2) neither follows nor replaces), then
            // renamed over `old` (rename(2) replaces whatever is there, a link included).
            let fresh = dir.join(format!(".{name}.old-{}", unpredictable_suffix()));
            match fs::hard_link(path, &fresh) {
                Ok(()) => {
                    old_tmp = Some(fresh.clone());
                    fs::rename(&fresh, old)?;
                    old_tmp = None;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        if let Some(old_tmp) = old_tmp {
            let _ = fs::remove_file(old_tmp);
        }
    }
    result
}

/// A new file `.<name>.<what>-<random>` in `dir`, created exclusively and without following a
/// link; a name that is taken (by anything: a link planted there is left alone) is tried again
/// with another.
fn create_temporary(dir: &Path, name: &str, what: &str) -> io::Result<(PathBuf, fs::File)> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = dir.join(format!(".{name}.{what}-{}", unpredictable_suffix()));
        match open_regular(&tmp, Access::CreateNew) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
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
    use std::os::unix::fs::{PermissionsExt as _, symlink};

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

    #[test]
    fn no_link_is_followed_at_the_target_or_at_any_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("passwd");
        fs::write(&victim, b"root:x:0:0\n").unwrap();
        let path = dir.path().join("state");
        let pid = std::process::id();
        // Every name an earlier bwmon used for its temporary files, and the history's.
        for name in [
            format!(".state.tmp-{pid}"),
            format!(".state.old-tmp-{pid}"),
            "state.history-tmp".to_owned(),
            format!(".state.history.tmp-{pid}"),
        ] {
            symlink(&victim, dir.path().join(name)).unwrap();
        }
        atomic_replace(&path, Some(&dir.path().join("state.prev")), |w| {
            w.write_all(b"one")
        })
        .unwrap();
        atomic_replace(&path, Some(&dir.path().join("state.prev")), |w| {
            w.write_all(b"two")
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read(&victim).unwrap(), b"root:x:0:0\n");
        // A temporary name that is taken is not opened: an exclusive create refuses it.
        let taken = dir.path().join(".state.tmp-planted");
        symlink(&victim, &taken).unwrap();
        let e = open_regular(&taken, Access::CreateNew).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        // A link at the target itself is refused, and its target left alone.
        let linked = dir.path().join("linked");
        symlink(&victim, &linked).unwrap();
        let e = atomic_replace(&linked, None, |w| w.write_all(b"x")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"root:x:0:0\n");
        assert!(
            fs::symlink_metadata(&linked)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let left: Vec<String> = names(dir.path())
            .into_iter()
            .filter(|n| {
                n.starts_with(".state.tmp-")
                    && !n.ends_with("planted")
                    && !n.ends_with(&pid.to_string())
            })
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
