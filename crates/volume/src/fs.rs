//! Atomic writes: the one place in kseg that writes a file or a folder
//! under a temporary name and renames it into place, so that a reader (or
//! a run resumed after a crash) sees the old version or the new one, never
//! half of one. Every output of the workspace (NIfTI files, caches, splits,
//! checkpoints, reports) goes through here.
//!
//! ```
//! # fn main() -> Result<(), kseg_volume::VolumeError> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("report.json");
//! kseg_volume::fs::write_bytes_atomic(&path, b"{}\n")?;
//! kseg_volume::fs::write_dir_atomic(&dir.path().join("ckpt"), |tmp| {
//!     kseg_volume::fs::write_bytes_atomic(&tmp.join("state.json"), b"{}\n")
//! })?;
//! assert_eq!(std::fs::read(&path).unwrap(), b"{}\n");
//! assert!(dir.path().join("ckpt/state.json").is_file());
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Result, VolumeError};

/// The folder `path` is in (`.` for a bare file name) and its file name.
fn split(path: &Path) -> Result<(PathBuf, String)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            VolumeError::InvalidArgument(format!("{} is not a file path", path.display()))
        })?
        .to_string_lossy()
        .into_owned();
    Ok((dir, name))
}

/// Writes `path` through a temporary file in its folder and a rename.
/// `write` receives the temporary path, which keeps `path`'s known
/// suffixes (`.nii.gz`, `.nii`, `.safetensors`, `.json`), so writers that
/// choose a format by suffix behave. The file is created with mode 0666
/// less the umask, like any other output; on an error nothing is left
/// behind.
pub fn write_atomic<E: From<VolumeError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let (dir, name) = split(path)?;
    let suffix = [".nii.gz", ".nii", ".safetensors", ".json"]
        .into_iter()
        .find(|s| name.to_ascii_lowercase().ends_with(s))
        .unwrap_or("");
    let (prefix, suffix) = (format!(".{name}."), format!(".tmp{suffix}"));
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(&suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let tmp = builder
        .tempfile_in(&dir)
        .map_err(|e| VolumeError::io(&dir, e))?;
    write(tmp.path())?;
    tmp.persist(path)
        .map_err(|e| VolumeError::io(path, e.error))?;
    Ok(())
}

/// [`write_atomic`] of a byte string.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| VolumeError::io(path, e))
    })
}

/// [`write_atomic`] of `value` as pretty JSON with a final newline (the
/// form of every JSON file kseg writes: configurations, splits, loop
/// states, summaries).
pub fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value).map_err(|e| {
        VolumeError::InvalidArgument(format!("{}: cannot serialise: {e}", path.display()))
    })?;
    write_bytes_atomic(path, (json + "\n").as_bytes())
}

/// Writes the folder `path` through a temporary folder beside it and a
/// rename: `write` fills the temporary folder. A folder already at `path`
/// is replaced (it steps aside under a temporary name first and is removed
/// after the new one is in place). On an error the temporary folder is
/// removed and `path` is untouched.
pub fn write_dir_atomic<E: From<VolumeError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let (dir, name) = split(path)?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(&dir)
        .map_err(|e| VolumeError::io(&dir, e))?;
    write(tmp.path())?;
    // From here the folder is kept: it becomes `path`.
    let tmp = tmp.keep();
    let old = if path.exists() {
        let old = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".old")
            .tempdir_in(&dir)
            .map_err(|e| VolumeError::io(&dir, e))?
            .keep();
        // `old` is an empty folder: a rename onto it replaces it.
        if let Err(e) = std::fs::rename(path, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_dir(&old);
            return Err(VolumeError::io(path, e).into());
        }
        Some(old)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_dir_all(&tmp);
        if let Some(old) = &old {
            let _ = std::fs::rename(old, path);
        }
        return Err(VolumeError::io(path, e).into());
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_nothing_and_keeps_the_old_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        write_bytes_atomic(&file, b"old").unwrap();
        let failed: Result<()> = write_atomic(&file, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(VolumeError::InvalidArgument("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"old");

        let folder = dir.path().join("ckpt");
        write_dir_atomic(&folder, |tmp| write_bytes_atomic(&tmp.join("x"), b"1")).unwrap();
        let failed: Result<()> = write_dir_atomic(&folder, |tmp| {
            write_bytes_atomic(&tmp.join("x"), b"2")?;
            Err(VolumeError::InvalidArgument("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(folder.join("x")).unwrap(), b"1");
        // Replacing works and leaves no temporary folder.
        write_dir_atomic(&folder, |tmp| write_bytes_atomic(&tmp.join("x"), b"3")).unwrap();
        assert_eq!(std::fs::read(folder.join("x")).unwrap(), b"3");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["a.json", "ckpt"]);
    }

    #[cfg(unix)]
    #[test]
    fn files_follow_the_umask_not_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.nii.gz");
        write_bytes_atomic(&file, b"x").unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        // Group and others can read with any usual umask (022, 002).
        assert_eq!(mode & 0o044, 0o044, "mode {mode:o}");
    }
}
