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
//! ```

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

/// The folder name of the checkpoint after `step` steps: `step_NNNNNN`.
fn step_name(step: usize) -> String {
    format!("{STEP_PREFIX}{step:06}")
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

    /// Creates the folder if needed and takes its exclusive lock, held
    /// until the returned value is dropped or the process ends (a crash
    /// included: the system releases it). A second process gets a clear
    /// error instead of mixing its files with this one's. Then removes what
    /// interrupted writes of earlier processes left in the folder, its
    /// `checkpoints/` and its `plots/`: under the lock nobody else writes
    /// there.
    pub fn lock(&self) -> Result<RunLock> {
        std::fs::create_dir_all(&self.root).map_err(|e| TrainError::io(&self.root, e))?;
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
        let mut steps: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| TrainError::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(STEP_PREFIX))
            })
            .collect();
        steps.sort();
        Ok(steps.into_iter().map(CheckpointDir::new).collect())
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
}
