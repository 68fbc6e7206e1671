//! Checkpoints: a folder per save holding the model (PyTorch names,
//! loadable in PyTorch, with what inference needs in the safetensors
//! metadata), the optimiser state and the loop state. Folders are written
//! under a temporary name and renamed (`kseg_volume::fs`), so a crash
//! leaves the previous checkpoint whole; `latest.json` points at the newest
//! one. Where the files are: [`RunDir`] and [`CheckpointDir`].

use candle_nn::VarMap;
use kseg_infer::{ModelMeta, read_meta, save_model};
use serde::{Deserialize, Serialize};

use kseg_volume::fs::{write_dir_atomic, write_json_atomic};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::optim::Optimiser;
use crate::run_dir::{CheckpointDir, RunDir};

/// The best validation so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// Step of that validation.
    pub step: usize,
    /// Mean kidney Dice.
    pub kidney: f64,
    /// Mean tumour Dice.
    pub tumour: f64,
    /// Mean of the two.
    pub composite: f64,
}

/// The loop's state at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps done; the next batch is batch `step` (batches depend only on
    /// `(config.train.seed, step)`, which is the whole sampling RNG state).
    pub step: usize,
    /// Samples seen / training slices.
    pub epoch: f64,
    /// The best validation so far.
    pub best: Option<Best>,
    /// Training seconds spent before this checkpoint (all sessions).
    pub wall_seconds: f64,
    /// The configuration the run trains with.
    pub config: TrainConfig,
}

/// A checkpoint folder read in one visit: its paths, its loop state and
/// its model metadata.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where its files are.
    pub dir: CheckpointDir,
    /// The loop's state when it was written.
    pub state: TrainState,
    /// The model file's metadata (model configuration, preprocessing).
    pub meta: ModelMeta,
}

impl Checkpoint {
    /// Reads `state.json` and the model file's metadata of `dir`.
    pub fn open(dir: CheckpointDir) -> Result<Checkpoint> {
        let path = dir.state();
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let state = serde_json::from_str(&text)
            .map_err(|e| TrainError::checkpoint(&path, format!("bad state: {e}")))?;
        let meta = read_meta(&dir.model())?;
        Ok(Checkpoint { dir, state, meta })
    }
}

/// Writes checkpoint folders under `<run>/checkpoints`.
pub struct Checkpointer {
    run: RunDir,
    keep: usize,
}

impl Checkpointer {
    /// Creates `<run>/checkpoints`; at most `keep` step folders are kept.
    pub fn new(run: &RunDir, keep: usize) -> Result<Checkpointer> {
        let dir = run.checkpoints();
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        Ok(Checkpointer {
            run: run.clone(),
            keep,
        })
    }

    /// Writes `step_NNNNNN` (and, when `best`, the `best` folder), then
    /// points `latest.json` at it and removes step folders beyond `keep`.
    pub fn save(
        &self,
        varmap: &VarMap,
        meta: &ModelMeta,
        optimiser: &dyn Optimiser,
        state: &TrainState,
        best: bool,
    ) -> Result<CheckpointDir> {
        let dir = self.run.step_checkpoint(state.step);
        write_folder(&dir, varmap, meta, optimiser, state)?;
        self.run.write_latest(state.step)?;
        if best {
            write_folder(&self.run.best_checkpoint(), varmap, meta, optimiser, state)?;
        }
        self.prune()?;
        Ok(dir)
    }

    /// Removes the oldest step folders beyond `keep`.
    fn prune(&self) -> Result<()> {
        let steps = self.run.step_checkpoints()?;
        let excess = steps.len().saturating_sub(self.keep.max(1));
        for c in &steps[..excess] {
            std::fs::remove_dir_all(c.path()).map_err(|e| TrainError::io(c.path(), e))?;
        }
        Ok(())
    }
}

/// Writes one checkpoint folder atomically (a folder already there is
/// replaced).
fn write_folder(
    dir: &CheckpointDir,
    varmap: &VarMap,
    meta: &ModelMeta,
    optimiser: &dyn Optimiser,
    state: &TrainState,
) -> Result<()> {
    // Errors inside name the temporary folder: `write_dir_atomic` puts
    // the checkpoint's own path, the one the user will look for, in its
    // place.
    write_dir_atomic(dir.path(), |tmp| {
        let tmp = CheckpointDir::new(tmp);
        save_model(varmap, meta, &tmp.model())?;
        optimiser
            .save(&tmp.optimiser())
            .map_err(|e| TrainError::checkpoint(tmp.path(), e.to_string()))?;
        Ok(write_json_atomic(&tmp.state(), state)?)
    })
}
