//! The layout of a run folder, in one place: every other file asks
//! [`RunDir`] or [`CheckpointDir`] for a path and spells no file name.
//!
//! ```text
//! <run>/config.json          the configuration the run trains with
//! <run>/split.json           the training and validation cases
//! <run>/metrics.jsonl        one JSON object per logged step and validation
//! <run>/summary.json         written at the end
//! <run>/plots/{loss,dice,overlay}.png
//! <run>/checkpoints/step_000200/{model.safetensors, optimizer.safetensors, state.json}
//! <run>/checkpoints/best/...          (the best validation composite so far)
//! <run>/checkpoints/latest.json       {"step": 200, "dir": "step_000200"}
//! <run>/.lock                the run's lock, held while a process trains
//! <run>/.kseg-run            the marker: this folder is a kseg run
//! ```
//!
//! A folder becomes a run folder by one rule ([`RunDir::lock`]): a new or
//! empty folder is made one (the marker is written), a folder with the
//! marker is one, and any other folder is refused, so kseg never writes
//! into, or removes anything from, a folder it did not make.

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

const CONFIG: &str = "config.json";
const SPLIT: &str = "split.json";
const METRICS: &str = "metrics.jsonl";
const SUMMARY: &str = "summary.json";
const PLOTS: &str = "plots";
const CHECKPOINTS: &str = "checkpoints";
const LATEST: &str = "latest.json";
const BEST: &str = "best";
const STEP_PREFIX: &str = "step_";
const MODEL: &str = kseg_infer::MODEL_FILE;
const OPTIMISER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
const LOCK: &str = ".lock";
const MARKER: &str = ".kseg-run";
const MARKER_TEXT: &str = "kseg run folder: kseg writes and removes files here\n";

/// The folder name of the checkpoint after `step` steps: `step_NNNNNN`.
fn step_name(step: usize) -> String {
    format!("{STEP_PREFIX}{step:06}")
}

/// The step of a checkpoint folder's name (`step_` and six or more
/// digits, as [`step_name`] writes it).
fn step_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix(STEP_PREFIX)?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The step a `step_NNNNNN` checkpoint folder's name says (`None` for
/// `best` or another name).
pub(crate) fn step_of_dir(dir: &Path) -> Option<usize> {
    step_of(dir.file_name()?.to_str()?)
}

/// A run folder and the paths of what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run folder at `root` (nothing is read or created).
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.json`: the run's configuration.
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// `split.json`: the training and validation case ids.
    pub fn split(&self) -> PathBuf {
        self.root.join(SPLIT)
    }

    /// `metrics.jsonl`: the metrics log.
    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS)
    }

    /// `summary.json`: the end-of-run summary.
    pub fn summary(&self) -> PathBuf {
        self.root.join(SUMMARY)
    }

    /// `plots/`: the PNG plots.
    pub fn plots(&self) -> PathBuf {
        self.root.join(PLOTS)
    }

    /// `plots/<name>.png` (`loss`, `dice`, `overlay`).
    pub fn plot(&self, name: &str) -> PathBuf {
        self.plots().join(format!("{name}.png"))
    }

    /// `checkpoints/`: the checkpoint folders and `latest.json`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }

    /// `checkpoints/step_NNNNNN`: the checkpoint after `step` steps.
    pub fn step_checkpoint(&self, step: usize) -> CheckpointDir {
        CheckpointDir::new(self.checkpoints().join(step_name(step)))
    }

    /// `checkpoints/best`: the checkpoint of the best validation so far.
    pub fn best_checkpoint(&self) -> CheckpointDir {
        CheckpointDir::new(self.checkpoints().join(BEST))
    }

    /// `checkpoints/latest.json`: which checkpoint is the newest.
    pub fn latest_file(&self) -> PathBuf {
        self.checkpoints().join(LATEST)
    }

    /// Points `latest.json` at the checkpoint of `step`.
    pub fn write_latest(&self, step: usize) -> Result<()> {
        let latest = serde_json::json!({ "step": step, "dir": step_name(step) });
        kseg_volume::fs::write_bytes_atomic(
            &self.latest_file(),
            format!("{latest:#}\n").as_bytes(),
        )?;
        Ok(())
    }

    /// The newest checkpoint folder, from `latest.json`.
    pub fn latest(&self) -> Result<CheckpointDir> {
        let path = self.latest_file();
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TrainError::checkpoint(&path, format!("not JSON: {e}")))?;
        let name = v["dir"]
            .as_str()
            .ok_or_else(|| TrainError::checkpoint(&path, "no \"dir\" entry"))?;
        // A name, not a path: latest.json cannot point outside the folder.
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(TrainError::checkpoint(
                &path,
                format!("\"dir\" {name:?} is not a checkpoint folder name"),
            ));
        }
        let ckpt = self.checkpoints().join(name);
        if !ckpt.is_dir() {
            return Err(TrainError::checkpoint(
                &ckpt,
                "the folder latest.json names is missing",
            ));
        }
        Ok(CheckpointDir::new(ckpt))
    }

    /// `.lock`: the file whose lock a training process holds.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(LOCK)
    }

    /// `.kseg-run`: the marker that says the folder is a kseg run.
    pub fn marker(&self) -> PathBuf {
        self.root.join(MARKER)
    }

    /// Makes the folder a run folder or adopts it, by the one rule: a
    /// folder that does not exist or is empty is created and marked; one
    /// with the marker is a run folder; a run folder of an earlier kseg
    /// (`config.json` and `checkpoints/latest.json`, no marker) is marked;
    /// any other folder is refused, untouched.
    fn create_or_adopt(&self) -> Result<()> {
        let root = &self.root;
        if self.marker().is_file() {
            return Ok(());
        }
        match std::fs::read_dir(root) {
            Ok(mut entries) => {
                let empty = entries.next().is_none();
                let earlier_run = self.config().is_file() && self.latest_file().is_file();
                if !empty && !earlier_run {
                    return Err(TrainError::Config {
                        path: Some(root.clone()),
                        msg: format!(
                            "is not empty and is not a kseg run folder (no {MARKER}); kseg makes its run folders itself, so that it never overwrites or removes files it did not write: choose a new or empty --out"
                        ),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(TrainError::Config {
                    path: Some(root.clone()),
                    msg: "exists and is not a folder; a run folder is needed".into(),
                });
            }
            Err(e) => return Err(TrainError::io(root, e)),
        }
        kseg_volume::fs::write_bytes_atomic(&self.marker(), MARKER_TEXT.as_bytes())?;
        Ok(())
    }

    /// Makes or adopts the run folder ([`RunDir::create_or_adopt`]: a
    /// folder that is neither new, empty nor a run is refused, untouched)
    /// and takes its exclusive lock, held until the returned value is
    /// dropped or the process ends (a crash included: the system releases
    /// it). A second process gets a clear error instead of mixing its files
    /// with this one's. Then removes what interrupted writes of earlier
    /// processes left in the folder, its `checkpoints/` and its `plots/`
    /// (kseg's own temporary names only): under the lock nobody else
    /// writes there.
    pub fn lock(&self) -> Result<RunLock> {
        self.create_or_adopt()?;
        let path = self.lock_file();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(TrainError::Config {
                    path: Some(self.root.clone()),
                    msg: "another kseg process is training in this run folder (it holds .lock); wait for it to end or choose another --out".into(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(TrainError::io(&path, e)),
        }
        for dir in [self.root.clone(), self.checkpoints(), self.plots()] {
            for p in kseg_volume::fs::remove_stale_temps(&dir)? {
                eprintln!("removed {} (left by an interrupted write)", p.display());
            }
        }
        Ok(RunLock { _file: file })
    }

    /// The `step_NNNNNN` checkpoint folders, oldest first.
    pub fn step_checkpoints(&self) -> Result<Vec<CheckpointDir>> {
        let dir = self.checkpoints();
        // By step number, not by name: `step_1000000` comes after
        // `step_999999` (as names it sorted first, and was pruned).
        let mut steps: Vec<(usize, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| TrainError::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .filter_map(|p| Some((step_of(p.file_name()?.to_str()?)?, p)))
            .collect();
        steps.sort();
        Ok(steps
            .into_iter()
            .map(|(_, p)| CheckpointDir::new(p))
            .collect())
    }
}

/// A run folder's exclusive lock ([`RunDir::lock`]); released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// One checkpoint folder and the files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointDir {
    path: PathBuf,
}

impl CheckpointDir {
    /// The checkpoint folder at `path` (nothing is read).
    pub fn new(path: impl Into<PathBuf>) -> CheckpointDir {
        CheckpointDir { path: path.into() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `model.safetensors`: the weights (PyTorch names) and the metadata
    /// inference needs.
    pub fn model(&self) -> PathBuf {
        self.path.join(MODEL)
    }

    /// `optimizer.safetensors`: the optimiser's state.
    pub fn optimiser(&self) -> PathBuf {
        self.path.join(OPTIMISER)
    }

    /// `state.json`: the loop's state.
    pub fn state(&self) -> PathBuf {
        self.path.join(STATE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout as the README and docs/ARCHITECTURE.md describe it.
    #[test]
    fn paths_follow_the_documented_layout() {
        let run = RunDir::new("/r");
        assert_eq!(run.config(), Path::new("/r/config.json"));
        assert_eq!(run.split(), Path::new("/r/split.json"));
        assert_eq!(run.metrics(), Path::new("/r/metrics.jsonl"));
        assert_eq!(run.summary(), Path::new("/r/summary.json"));
        assert_eq!(run.plot("loss"), Path::new("/r/plots/loss.png"));
        assert_eq!(run.latest_file(), Path::new("/r/checkpoints/latest.json"));
        let c = run.step_checkpoint(200);
        assert_eq!(c.path(), Path::new("/r/checkpoints/step_000200"));
        assert_eq!(
            c.model(),
            Path::new("/r/checkpoints/step_000200/model.safetensors")
        );
        assert_eq!(
            c.optimiser(),
            Path::new("/r/checkpoints/step_000200/optimizer.safetensors")
        );
        assert_eq!(
            c.state(),
            Path::new("/r/checkpoints/step_000200/state.json")
        );
        assert_eq!(
            run.best_checkpoint().path(),
            Path::new("/r/checkpoints/best")
        );
    }

    #[test]
    fn latest_json_cannot_point_outside_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        std::fs::write(run.latest_file(), r#"{"step": 1, "dir": "../.."}"#).unwrap();
        let e = run.latest().unwrap_err().to_string();
        assert!(
            e.contains("latest.json") && e.contains("not a checkpoint"),
            "{e}"
        );
        run.write_latest(7).unwrap();
        std::fs::create_dir_all(run.step_checkpoint(7).path()).unwrap();
        assert_eq!(run.latest().unwrap(), run.step_checkpoint(7));
    }

    /// Two runs started together on one folder: the second gets a clear
    /// error, and can take the folder once the first has let go.
    #[test]
    fn a_run_folder_has_one_owner_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path().join("run"));
        let held = run.lock().unwrap();
        let e = run.lock().unwrap_err().to_string();
        assert!(
            e.contains("another kseg process") && e.contains("run"),
            "{e}"
        );
        drop(held);
        run.lock().unwrap();
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// `--out ~` used to delete the user's `.*.old` and `.*.tmp` files and
    /// folders ("left by an interrupted write"): a folder kseg did not
    /// make is refused and left exactly as it was.
    #[test]
    fn a_folder_kseg_did_not_make_is_refused_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join(".config.old")).unwrap();
        std::fs::write(home.join(".config.old/settings"), b"mine").unwrap();
        for f in [".bashrc.old", ".notes.tmp", ".a.tmp.b", "metrics.jsonl"] {
            std::fs::write(home.join(f), b"mine").unwrap();
        }
        let before = listing(&home);
        let e = RunDir::new(&home).lock().unwrap_err().to_string();
        assert!(
            e.contains("home") && e.contains("not a kseg run folder"),
            "{e}"
        );
        assert_eq!(listing(&home), before);
        assert_eq!(std::fs::read(home.join(".bashrc.old")).unwrap(), b"mine");
        assert_eq!(
            std::fs::read(home.join(".config.old/settings")).unwrap(),
            b"mine"
        );
        // A file is not a run folder either.
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = RunDir::new(&file).lock().unwrap_err().to_string();
        assert!(e.contains("not a folder"), "{e}");
    }

    /// An empty or new folder is made a run folder (the marker); in a run
    /// folder only kseg's own temporary names are removed.
    #[test]
    fn a_run_folder_is_marked_and_only_kseg_temporaries_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        drop(RunDir::new(&empty).lock().unwrap());
        assert_eq!(listing(&empty), [".kseg-run", ".lock"]);
        let run = RunDir::new(tmp.path().join("new/run"));
        drop(run.lock().unwrap());
        assert!(run.marker().is_file());
        // What a SIGKILL left, and a user's file put there by hand.
        std::fs::create_dir_all(run.checkpoints().join(".kseg-0a1b2c3d4e.tmp")).unwrap();
        std::fs::write(run.root().join(".kseg-zyxwvutsrq.tmp"), b"half").unwrap();
        std::fs::write(run.root().join(".bashrc.old"), b"mine").unwrap();
        drop(run.lock().unwrap());
        assert_eq!(
            listing(run.root()),
            [".bashrc.old", ".kseg-run", ".lock", "checkpoints"]
        );
        assert!(listing(&run.checkpoints()).is_empty());
        // A run of an earlier kseg (no marker) is adopted.
        let old = RunDir::new(tmp.path().join("old"));
        std::fs::create_dir_all(old.checkpoints()).unwrap();
        std::fs::write(old.config(), b"{}").unwrap();
        std::fs::write(old.latest_file(), b"{}").unwrap();
        drop(old.lock().unwrap());
        assert!(old.marker().is_file());
    }

    /// Pruning keeps the newest checkpoints: `step_1000000` is newer than
    /// `step_999990` (as names it sorted first and was deleted).
    #[test]
    fn checkpoints_are_ordered_by_step_number() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        for name in [
            "step_1000000",
            "step_999990",
            "step_000010",
            "best",
            "step_x",
        ] {
            std::fs::create_dir_all(run.checkpoints().join(name)).unwrap();
        }
        let steps: Vec<String> = run
            .step_checkpoints()
            .unwrap()
            .iter()
            .map(|c| c.path().file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(steps, ["step_000010", "step_999990", "step_1000000"]);
        assert_eq!(
            run.step_checkpoint(1_000_000).path(),
            run.checkpoints().join("step_1000000")
        );
    }
}
