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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Result, VolumeError};

/// Temporary files and folders being written now, so that an interrupted
/// program can remove them ([`remove_in_flight_and_exit`]).
static IN_FLIGHT: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// A temporary path registered in [`IN_FLIGHT`] while it lives.
struct InFlight(PathBuf);

impl InFlight {
    /// Creates a temporary file or folder with `make` and registers it, in
    /// one step under the registry's lock: an interrupt handler that holds
    /// the lock ([`remove_in_flight_and_exit`]) sees every temporary that
    /// exists, and none is created after it has looked.
    fn create<T>(
        make: impl FnOnce() -> std::io::Result<T>,
        path: impl Fn(&T) -> &Path,
    ) -> std::io::Result<(T, InFlight)> {
        let mut registry = in_flight();
        let made = make()?;
        let p = path(&made).to_path_buf();
        registry.insert(p.clone());
        Ok((made, InFlight(p)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        in_flight().remove(&self.0);
    }
}

fn in_flight() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    // A panic while holding the lock leaves a set that is still valid.
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the temporary files and folders that writes in progress have
/// made (none of the files they replace) and exits with `code`, holding
/// the registry so that no write starts another in between. For a SIGINT
/// or SIGTERM handler: the `kseg` binary calls it so an interrupt leaves
/// no hidden `.NAME.XXXXXX.tmp` behind.
pub fn remove_in_flight_and_exit(code: i32) -> ! {
    let registry = in_flight();
    remove_all(&registry, Path::new("/"));
    std::process::exit(code)
}

fn remove_all(registry: &BTreeSet<PathBuf>, root: &Path) {
    for p in registry.iter().filter(|p| p.starts_with(root)) {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(p);
        } else {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What [`remove_in_flight_and_exit`] removes, for the temporaries under
/// `root` only and without exiting (tests run side by side in a process).
#[cfg(test)]
fn remove_in_flight_under(root: &Path) {
    remove_all(&in_flight(), root);
}

/// Whether `name` is one of the temporary names this module makes
/// (`.NAME.XXXXXX.tmp`, `.NAME.XXXXXX.tmp.nii.gz`, `.NAME.XXXXXX.old`).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name.len() > 1
        && (name.contains(".tmp.") || name.ends_with(".tmp") || name.ends_with(".old"))
}

/// Removes what interrupted writes left in `dir` (not recursively): the
/// entries named as [`is_temp_name`] says. Only for a folder nobody else
/// writes in now (a run folder under its lock). Returns what it removed.
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(VolumeError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| VolumeError::io(dir, e))?;
        if !is_temp_name(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| VolumeError::io(&path, e))?;
        if kind.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .map_err(|e| VolumeError::io(&path, e))?;
        removed.push(path);
    }
    Ok(removed)
}

/// `tempfile`'s error without the temporary path it appends ("... at path
/// /out/.x.nii.gz.a1b2c3.tmp.nii.gz"): errors name the user's path.
fn without_temp_path(e: std::io::Error) -> std::io::Error {
    let os = e
        .get_ref()
        .and_then(|inner| inner.source())
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|s| s.raw_os_error());
    match os {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => e,
    }
}

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

/// Flushes a file's or a folder's contents to the disk. `user` is the path
/// errors name (the one the user gave, not a temporary one).
fn sync(path: &Path, user: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| VolumeError::io(user, e))
}

/// Writes `path` through a temporary file in its folder and a rename.
/// `write` receives the temporary path, which keeps `path`'s known
/// suffixes (`.nii.gz`, `.nii`, `.safetensors`, `.json`), so writers that
/// choose a format by suffix behave. The file is flushed to the disk
/// before the rename and the folder after it, so even a power loss leaves
/// the old file or the new one; it is created with mode 0666 less the
/// umask, like any other output; on an error nothing is left behind.
pub fn write_atomic<E: From<VolumeError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let (dir, name) = split(path)?;
    if path.is_dir() {
        return Err(VolumeError::InvalidArgument(format!(
            "{} is a folder; a file path is needed",
            path.display()
        ))
        .into());
    }
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
    let (tmp, _registered) = InFlight::create(|| builder.tempfile_in(&dir), |t| t.path())
        .map_err(|e| VolumeError::io(&dir, without_temp_path(e)))?;
    write(tmp.path())?;
    sync(tmp.path(), path)?;
    tmp.persist(path)
        .map_err(|e| VolumeError::io(path, without_temp_path(e.error)))?;
    sync(&dir, path)?;
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

/// Swaps two existing paths in one step (Linux `renameat2` with
/// `RENAME_EXCHANGE`). `Ok(false)`: the file system cannot, nothing moved.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that live across the call; the
    // syscall reads them and nothing else.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Writes the folder `path` through a temporary folder beside it and a
/// rename: `write` fills the temporary folder (files written there with
/// [`write_atomic`] are flushed to the disk). A folder already at `path`
/// is replaced in one step where the system can (Linux: the two are
/// exchanged, so `path` always exists); elsewhere it steps aside under a
/// temporary name first. On an error the temporary folder is removed and
/// `path` is untouched.
pub fn write_dir_atomic<E: From<VolumeError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let (dir, name) = split(path)?;
    let (tmp, _registered) = InFlight::create(
        || {
            tempfile::Builder::new()
                .prefix(&format!(".{name}."))
                .suffix(".tmp")
                .tempdir_in(&dir)
        },
        |t| t.path(),
    )
    .map_err(|e| VolumeError::io(&dir, without_temp_path(e)))?;
    write(tmp.path())?;
    sync(tmp.path(), path)?;
    // From here the folder is kept: it becomes `path`.
    let tmp = tmp.keep();
    if path.exists() {
        match exchange(&tmp, path) {
            Ok(true) => {
                // `tmp` now holds the old version.
                sync(&dir, path)?;
                let _ = std::fs::remove_dir_all(&tmp);
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(VolumeError::io(path, e).into());
            }
        }
    }
    let old = if path.exists() {
        let old = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".old")
            .tempdir_in(&dir)
            .map_err(|e| VolumeError::io(&dir, without_temp_path(e)))?
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
    sync(&dir, path)?;
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

    /// A reader polling a folder that is replaced again and again always
    /// finds it (the folder is exchanged, not moved aside then replaced).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_replaced_folder_never_goes_missing() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let best = dir.path().join("best");
        write_dir_atomic(&best, |t| write_bytes_atomic(&t.join("x"), b"0")).unwrap();
        let done = AtomicBool::new(false);
        let missing = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    if !best.join("x").exists() {
                        missing.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            let written = (0..400).try_for_each(|i| {
                write_dir_atomic(&best, |t| {
                    std::fs::write(t.join("x"), i.to_string()).map_err(|e| VolumeError::io(t, e))
                })
            });
            done.store(true, Ordering::Relaxed);
            written.unwrap();
        });
        assert_eq!(missing.load(Ordering::Relaxed), 0, "best/ was missing");
        assert_eq!(std::fs::read(best.join("x")).unwrap(), b"399");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// What an interrupt handler removes: the temporary files of writes in
    /// progress, never the files they replace.
    #[test]
    fn in_flight_temporaries_are_removed_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pred.nii.gz");
        write_bytes_atomic(&file, b"old").unwrap();
        let mut seen = PathBuf::new();
        let r: Result<()> = write_atomic(&file, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            seen = tmp.to_path_buf();
            // The signal arrives here.
            remove_in_flight_under(dir.path());
            assert!(!tmp.exists());
            Ok(())
        });
        // The write then fails (its file is gone) and the old file stays.
        assert!(r.is_err());
        assert!(
            is_temp_name(&seen.file_name().unwrap().to_string_lossy()),
            "{seen:?}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"old");
        let ckpt = dir.path().join("step_000010");
        let r: Result<()> = write_dir_atomic(&ckpt, |tmp| {
            write_bytes_atomic(&tmp.join("model.safetensors"), b"w")?;
            remove_in_flight_under(dir.path());
            assert!(!tmp.exists());
            Ok(())
        });
        assert!(r.is_err());
        assert!(!ckpt.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temporaries_are_recognised_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Names as the writers above make them, and names that must stay.
        let temps = [
            ".pred.nii.gz.a1B2c3.tmp.nii.gz",
            ".metrics.jsonl.Zz9Yy8.tmp",
            ".config.json.Q1w2E3.tmp.json",
        ];
        let temp_dirs = [".step_000010.AbCdEf.tmp", ".best.x1y2z3.old"];
        let keep = [".lock", "metrics.jsonl", "config.json", "a.tmp", ".hidden"];
        for n in temps.iter().chain(&keep) {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        for n in temp_dirs {
            std::fs::create_dir(dir.path().join(n)).unwrap();
            std::fs::write(dir.path().join(n).join("model.safetensors"), b"x").unwrap();
        }
        let mut removed: Vec<String> = remove_stale_temps(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        let mut want: Vec<String> = temps
            .iter()
            .chain(&temp_dirs)
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(removed, want);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut keep: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        keep.sort();
        assert_eq!(left, keep);
    }
}
