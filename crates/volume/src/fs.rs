//! Atomic writes: the one place in kseg that writes a file or a folder
//! under a temporary name and renames it into place, so that a reader (or
//! a run resumed after a crash) sees the old version or the new one, never
//! half of one. Every output of the workspace (NIfTI files, caches, splits,
//! checkpoints, reports) goes through here.
//!
//! One rule for every output: the writer names its own temporary folder
//! (`.kseg-XXXXXXXXXX.tmp`, short whatever the output is called), a
//! library writes only inside it, errors name the output and never a
//! temporary name, and a file the command reads as an input or a ground
//! truth ([`protect`]) is never replaced.
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

/// The first characters of every temporary name this module makes.
const TEMP_PREFIX: &str = ".kseg-";
/// The random part of a temporary name: this many of [`TEMP_CHARS`].
const TEMP_RANDOM: usize = 10;
const TEMP_CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A temporary folder of this module (`.kseg-XXXXXXXXXX.tmp` or `.old`),
/// registered in [`IN_FLIGHT`] while it lives and removed on drop unless
/// kept.
struct Temp {
    path: PathBuf,
    keep: bool,
}

impl Temp {
    /// Creates an empty folder `dir/.kseg-XXXXXXXXXX{kind}` and registers
    /// it, in one step under the registry's lock: an interrupt handler that
    /// holds the lock ([`remove_in_flight_and_exit`]) sees every temporary
    /// that exists, and none is created after it has looked. The name is
    /// kseg's own and short whatever the output is called (a 255-byte name
    /// fits), and the error is the system's, without the temporary path.
    fn create(dir: &Path, kind: &str) -> std::io::Result<Temp> {
        let mut registry = in_flight();
        let mut last = None;
        for attempt in 0..32u64 {
            let path = dir.join(temp_name(kind, attempt));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    registry.insert(path.clone());
                    return Ok(Temp { path, keep: false });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("attempted"))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
        in_flight().remove(&self.path);
    }
}

/// `.kseg-` + [`TEMP_RANDOM`] random characters + `kind` (`.tmp`, `.old`).
fn temp_name(kind: &str, attempt: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u64(attempt);
    h.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    let mut x = h.finish();
    let mut name = String::from(TEMP_PREFIX);
    for _ in 0..TEMP_RANDOM {
        name.push(TEMP_CHARS[(x % TEMP_CHARS.len() as u64) as usize] as char);
        x /= TEMP_CHARS.len() as u64;
    }
    name + kind
}

fn in_flight() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    // A panic while holding the lock leaves a set that is still valid.
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the temporary files and folders that writes in progress have
/// made (none of the files they replace) and exits with `code`, holding
/// the registry so that no write starts another in between. For a SIGINT
/// or SIGTERM handler: the `kseg` binary calls it so an interrupt leaves
/// no hidden `.kseg-XXXXXXXXXX.tmp` behind.
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

/// Whether `name` is one of the temporary names this module makes, and
/// only those: `.kseg-` then ten lower-case letters or digits then `.tmp`
/// or `.old` (a user's `.bashrc.old` or `.x.tmp` is not one).
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
        return false;
    };
    let Some(random) = rest
        .strip_suffix(".tmp")
        .or_else(|| rest.strip_suffix(".old"))
    else {
        return false;
    };
    random.len() == TEMP_RANDOM && random.bytes().all(|b| TEMP_CHARS.contains(&b))
}

/// Removes what interrupted writes left in `dir` (not recursively): the
/// entries named as [`is_temp_name`] says, nothing else. Only for a folder
/// nobody else writes in now (a run folder under its lock). Returns what
/// it removed.
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(VolumeError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| VolumeError::io(dir, e))?;
        if !entry.file_name().to_str().is_some_and(is_temp_name) {
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

/// Files a command reads and must never write: its input images and the
/// ground truths beside them, by device and inode (a symbolic or hard
/// link to one is the same file), with what they are.
static PROTECTED: Mutex<Vec<(FileId, PathBuf, &'static str)>> = Mutex::new(Vec::new());

type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &Path) -> Option<FileId> {
    // Without inodes: the canonical path's hash stands for the file.
    use std::hash::{Hash, Hasher};
    let p = std::fs::canonicalize(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.hash(&mut h);
    Some((0, h.finish()))
}

fn protected() -> std::sync::MutexGuard<'static, Vec<(FileId, PathBuf, &'static str)>> {
    PROTECTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks `path` (an existing file) as an input of this process, `what` it
/// is (`"input image"`, `"ground truth"`): from now on every write of this
/// module refuses to replace it, under any name that reaches it. A path
/// that does not exist is ignored (nothing to protect).
pub fn protect(path: &Path, what: &'static str) {
    if let Some(id) = file_id(path) {
        protected().push((id, path.to_path_buf(), what));
    }
}

/// Checks that writing `path` would not replace a file given to
/// [`protect`]: the error names the output and the input it would
/// destroy. Commands call it before their work; every write calls it too.
pub fn check_not_input(path: &Path) -> Result<()> {
    let Some(id) = file_id(path) else {
        return Ok(());
    };
    // The input must still be that file: an inode freed by a deleted
    // input (tests delete theirs) may be reused by an unrelated output.
    let list = protected();
    let hit = list
        .iter()
        .find(|(p, input, _)| *p == id && file_id(input) == Some(id));
    match hit {
        Some((_, input, what)) => Err(VolumeError::WouldOverwriteInput {
            path: path.to_path_buf(),
            input: input.clone(),
            what,
        }),
        None => Ok(()),
    }
}

/// The folder `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> Result<PathBuf> {
    if path.file_name().is_none() {
        return Err(VolumeError::InvalidArgument(format!(
            "{} is not a file path",
            path.display()
        )));
    }
    Ok(match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    })
}

/// Flushes a file's or a folder's contents to the disk. `user` is the path
/// errors name (the one the user gave, not a temporary one).
fn sync(path: &Path, user: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| VolumeError::io(user, e))
}

/// An error of a writer that names a temporary path, with the user's path
/// in its place (`pairs`: temporary, user's; longest first): no message
/// quotes kseg's temporary names.
fn name_the_users_path<E: From<VolumeError> + std::fmt::Display>(
    e: E,
    user: &Path,
    pairs: &[(&Path, &Path)],
) -> E {
    let msg = e.to_string();
    if !pairs
        .iter()
        .any(|(tmp, _)| msg.contains(&*tmp.to_string_lossy()))
    {
        return e;
    }
    let msg = pairs.iter().fold(msg, |m, (tmp, to)| {
        m.replace(&*tmp.to_string_lossy(), &to.to_string_lossy())
    });
    VolumeError::Write {
        path: user.to_path_buf(),
        msg,
    }
    .into()
}

/// The name a writer is given inside its temporary folder: `out` plus
/// `path`'s known suffix in lower case (`.nii.gz`, `.nii`,
/// `.safetensors`, `.json`, `.png`), so writers that choose a format by
/// suffix behave.
fn inner_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let suffix = [".nii.gz", ".nii", ".safetensors", ".json", ".png"]
        .into_iter()
        .find(|s| name.ends_with(s))
        .unwrap_or("");
    format!("out{suffix}")
}

/// Writes `path` through a temporary file and a rename: `write` receives
/// the path to write, `out.<suffix>` inside a fresh folder
/// `.kseg-XXXXXXXXXX.tmp` beside `path` that only it writes in, so a
/// library that picks its own file name from the one it is given (the
/// `nifti` crate turns `x.tmp.nii` into `x.nii`) writes there too, and is
/// caught: the folder must then hold exactly that one file. The file is
/// flushed to the disk before the rename and the folder after it, so even
/// a power loss leaves the old file or the new one; it is created with
/// mode 0666 less the umask, like any other output; on an error nothing is
/// left behind. A `path` that is an input of this process ([`protect`]) is
/// refused. Errors name `path`, never a temporary name.
pub fn write_atomic<E: From<VolumeError> + std::fmt::Display>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dir = parent(path)?;
    if path.is_dir() {
        return Err(VolumeError::InvalidArgument(format!(
            "{} is a folder; a file path is needed",
            path.display()
        ))
        .into());
    }
    check_not_input(path)?;
    let tmp = Temp::create(&dir, ".tmp").map_err(|e| VolumeError::io(path, e))?;
    let file = tmp.path().join(inner_name(path));
    write(&file).map_err(|e| name_the_users_path(e, path, &[(&file, path), (tmp.path(), &dir)]))?;
    let written: Vec<_> = std::fs::read_dir(tmp.path())
        .map_err(|e| VolumeError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if written != [file.clone()] || !file.is_file() {
        return Err(VolumeError::Write {
            path: path.to_path_buf(),
            msg: format!(
                "{}: the writer did not write the file it was given ({} other files instead); nothing was written",
                path.display(),
                written.iter().filter(|p| **p != file).count()
            ),
        }
        .into());
    }
    sync(&file, path)?;
    std::fs::rename(&file, path).map_err(|e| VolumeError::io(path, e))?;
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

/// Writes the folder `path` through a temporary folder beside it
/// (`.kseg-XXXXXXXXXX.tmp`) and a rename: `write` fills the temporary
/// folder (files written there with [`write_atomic`] are flushed to the
/// disk). A folder already at `path` is replaced in one step where the
/// system can (Linux: the two are exchanged, so `path` always exists);
/// elsewhere it steps aside under a temporary name (`.kseg-….old`) first.
/// On an error the temporary folder is removed and `path` is untouched.
/// Errors name `path`, never a temporary name.
pub fn write_dir_atomic<E: From<VolumeError> + std::fmt::Display>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dir = parent(path)?;
    let mut tmp = Temp::create(&dir, ".tmp").map_err(|e| VolumeError::io(path, e))?;
    write(tmp.path()).map_err(|e| name_the_users_path(e, path, &[(tmp.path(), path)]))?;
    sync(tmp.path(), path)?;
    if path.exists() {
        match exchange(tmp.path(), path) {
            Ok(true) => {
                // `tmp` now holds the old version; its drop removes it.
                sync(&dir, path)?;
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => return Err(VolumeError::io(path, e).into()),
        }
    }
    let mut old = if path.exists() {
        let old = Temp::create(&dir, ".old").map_err(|e| VolumeError::io(path, e))?;
        // `old` is an empty folder: a rename onto it replaces it.
        std::fs::rename(path, old.path()).map_err(|e| VolumeError::io(path, e))?;
        Some(old)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(tmp.path(), path) {
        if let Some(old) = &mut old {
            // The old version back in place; if even that fails, it stays
            // where it is rather than be removed.
            let _ = std::fs::rename(old.path(), path);
            old.keep = true;
        }
        return Err(VolumeError::io(path, e).into());
    }
    // From here the folder is `path`: not to be removed.
    tmp.keep = true;
    sync(&dir, path)?;
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
            assert!(!tmp.exists() && !tmp.parent().unwrap().exists());
            Ok(())
        });
        // The write then fails (its file is gone) and the old file stays.
        assert!(r.is_err());
        let folder = seen.parent().unwrap().file_name().unwrap();
        assert!(is_temp_name(&folder.to_string_lossy()), "{seen:?}");
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
        // Names as the writers above make them, and names that must stay:
        // a user's own `.NAME.old` and `.NAME.tmp` files and folders are
        // not kseg's (they used to be removed).
        let temps = [".kseg-a1b2c3d4e5.tmp", ".kseg-0123456789.old"];
        let temp_dirs = [".kseg-zzzzzzzzzz.tmp", ".kseg-q1w2e3r4t5.old"];
        let keep = [
            ".lock",
            "metrics.jsonl",
            "config.json",
            "a.tmp",
            ".hidden",
            ".bashrc.old",
            ".pred.nii.gz.a1B2c3.tmp.nii.gz",
            ".metrics.jsonl.Zz9Yy8.tmp",
            ".kseg-short.tmp",
            ".kseg-A1B2C3D4E5.tmp",
            ".kseg-a1b2c3d4e5.tmp.nii",
        ];
        let keep_dirs = [".config.old", ".cache.tmp"];
        for n in temps.iter().chain(&keep) {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        for n in temp_dirs.iter().chain(&keep_dirs) {
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
        let mut keep: Vec<String> = keep
            .iter()
            .chain(&keep_dirs)
            .map(|s| s.to_string())
            .collect();
        keep.sort();
        assert_eq!(left, keep);
    }

    /// The names this module makes are the names [`is_temp_name`] knows,
    /// whatever the output is called.
    #[test]
    fn temporary_names_are_kseg_s_own() {
        let dir = tempfile::tempdir().unwrap();
        for out in ["a.nii", "OUT.NII", "x.json", &"n".repeat(255)] {
            let path = dir.path().join(out);
            let mut seen = PathBuf::new();
            write_atomic(&path, |tmp| {
                seen = tmp.to_path_buf();
                std::fs::write(tmp, b"x").map_err(|e| VolumeError::io(tmp, e))
            })
            .unwrap();
            let folder = seen.parent().unwrap().file_name().unwrap();
            assert!(is_temp_name(&folder.to_string_lossy()), "{seen:?}");
            assert_eq!(std::fs::read(&path).unwrap(), b"x");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }

    /// A writer that writes beside the path it was given (as the `nifti`
    /// crate did with `x.tmp.nii`) is caught: an error, nothing under the
    /// output's name, no stray file.
    #[test]
    fn a_writer_that_renames_its_file_is_an_error_not_an_empty_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.nii");
        let r: Result<()> = write_atomic(&path, |tmp| {
            std::fs::write(tmp.with_extension("other"), b"data")
                .map_err(|e| VolumeError::io(tmp, e))
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("p.nii") && e.contains("did not write"), "{e}");
        assert!(!e.contains(".kseg-"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Errors name the output, never the temporary name (a missing
    /// folder; a writer's own error about the file it was given).
    #[test]
    fn errors_name_the_output_not_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nowhere/p.nii.gz");
        let e = write_bytes_atomic(&path, b"x").unwrap_err().to_string();
        assert!(e.contains("nowhere/p.nii.gz"), "{e}");
        let own = e.replace(&*dir.path().to_string_lossy(), "TMP");
        assert!(!own.contains(".kseg-") && !own.contains(".tmp"), "{e}");
        let path = dir.path().join("q.json");
        let r: Result<()> = write_atomic(&path, |tmp| {
            Err(VolumeError::format(tmp, "cannot write: disk full"))
        });
        let e = r.unwrap_err().to_string();
        assert_eq!(e, format!("{}: cannot write: disk full", path.display()));
        let ckpt = dir.path().join("step_000001");
        let r: Result<()> = write_dir_atomic(&ckpt, |tmp| {
            Err(VolumeError::format(
                &tmp.join("model.safetensors"),
                "disk full",
            ))
        });
        let e = r.unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{}/model.safetensors: disk full", ckpt.display())
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A file given to [`protect`] is never replaced, under its own name
    /// or through a symbolic or hard link.
    #[cfg(unix)]
    #[test]
    fn a_protected_input_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let truth = dir.path().join("segmentation.nii.gz");
        std::fs::write(&truth, b"truth").unwrap();
        protect(&truth, "ground truth");
        let link = dir.path().join("link.nii.gz");
        std::os::unix::fs::symlink(&truth, &link).unwrap();
        let hard = dir.path().join("hard.nii.gz");
        std::fs::hard_link(&truth, &hard).unwrap();
        for p in [&truth, &link, &hard] {
            let e = write_bytes_atomic(p, b"pred").unwrap_err().to_string();
            assert!(
                e.contains("the output is the ground truth") && e.contains("segmentation.nii.gz"),
                "{e}"
            );
            assert!(check_not_input(p).is_err());
        }
        assert_eq!(std::fs::read(&truth).unwrap(), b"truth");
        // Another file in the same folder is written as usual.
        write_bytes_atomic(&dir.path().join("pred.nii.gz"), b"pred").unwrap();
    }
}
