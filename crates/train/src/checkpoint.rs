//! Checkpoints: a folder per save holding the model (SPEC names, loadable
//! in PyTorch, with what inference needs in the safetensors metadata), the
//! optimiser state and the loop state. Folders are written under a
//! temporary name and renamed, so a crash leaves the previous checkpoint
//! whole; `latest.json` points at the newest one.
//!
//! ```text
//! <run>/checkpoints/step_000200/{model.safetensors, optimizer.safetensors, state.json}
//! <run>/checkpoints/best/...          (the best validation composite so far)
//! <run>/checkpoints/latest.json       {"step": 200, "dir": "step_000200"}
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::DType;
use candle_nn::VarMap;
use kseg_model::ResUNetConfig;
use kseg_volume::Intensity;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError, write_atomic};
use crate::optim::Optimiser;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMISER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const LATEST_FILE: &str = "latest.json";
/// The safetensors metadata key that holds [`ModelMeta`] as JSON.
pub const META_KEY: &str = "kseg";

/// What inference needs besides the weights: the network's shape and the
/// preprocessing of training. Stored in the model file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    pub format: u32,
    pub model: ResUNetConfig,
    /// Neighbours on each side of a slice (1: 3-slice stacks).
    pub context: usize,
    pub intensity: Intensity,
    /// In-plane size the network was trained at when slices were resampled
    /// to it; `None`: native size (inputs are padded to a multiple of
    /// `2^depth`).
    pub in_plane: Option<(usize, usize)>,
    /// Training steps behind these weights.
    pub step: usize,
    /// Keep this many largest foreground components of a prediction
    /// (`None`: no clean-up).
    #[serde(default)]
    pub keep_largest: Option<usize>,
    /// Average each slice's prediction with that of its mirror image.
    #[serde(default)]
    pub mirror: bool,
}

impl ModelMeta {
    pub fn from_config(cfg: &TrainConfig, step: usize) -> ModelMeta {
        ModelMeta {
            format: 1,
            model: cfg.model,
            context: cfg.data.context,
            intensity: cfg.data.intensity,
            in_plane: cfg.data.in_plane,
            step,
            keep_largest: cfg.postprocess.keep_largest,
            mirror: cfg.postprocess.mirror,
        }
    }
}

/// The best validation so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub step: usize,
    pub kidney: f64,
    pub tumour: f64,
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
    pub best: Option<Best>,
    /// Training seconds spent before this checkpoint (all sessions).
    pub wall_seconds: f64,
    pub config: TrainConfig,
}

/// Writes the variables of `varmap` as f32 safetensors with SPEC names and
/// `meta` in the metadata, through a temporary file and a rename.
pub fn save_model(varmap: &VarMap, meta: &ModelMeta, path: &Path) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(data.len());
    for (name, var) in data.iter() {
        let t = var.as_tensor().to_dtype(DType::F32)?.flatten_all()?;
        let bytes: Vec<u8> = t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        tensors.push((name.clone(), var.dims().to_vec(), bytes));
    }
    drop(data);
    let views = tensors
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    let json = serde_json::to_string(meta).expect("meta serialises");
    let info = HashMap::from([(META_KEY.to_string(), json)]);
    let bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Reads [`ModelMeta`] from a model file, with errors that say what is
/// wrong with it.
pub fn read_meta(path: &Path) -> Result<ModelMeta> {
    // Mapped, not read: the model is mapped again to load its weights, and
    // a full model file is 126 MB.
    let file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    // SAFETY: the file is only read; checkpoints are replaced by rename,
    // never rewritten in place.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| TrainError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        TrainError::checkpoint(
            path,
            format!("truncated, damaged or not a safetensors file ({e:?})"),
        )
    })?;
    // read_metadata only parses the header: check the data is all there.
    safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        TrainError::checkpoint(
            path,
            format!("truncated or damaged safetensors file ({e:?})"),
        )
    })?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            TrainError::checkpoint(
                path,
                "no kseg metadata: a model file written by kseg carries its model config and preprocessing (weights from elsewhere: load them with kseg_model::ResUNet::load)",
            )
        })?;
    let meta: ModelMeta = serde_json::from_str(json)
        .map_err(|e| TrainError::checkpoint(path, format!("bad kseg metadata: {e}")))?;
    if meta.format != 1 {
        return Err(TrainError::checkpoint(
            path,
            format!("metadata format {} is not supported (1)", meta.format),
        ));
    }
    meta.model
        .validate()
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    Ok(meta)
}

/// The model file of a checkpoint given as a file or a checkpoint folder.
pub fn model_path(checkpoint: &Path) -> PathBuf {
    if checkpoint.is_dir() {
        checkpoint.join(MODEL_FILE)
    } else {
        checkpoint.to_path_buf()
    }
}

/// Writes checkpoint folders under `<run>/checkpoints`.
pub struct Checkpointer {
    dir: PathBuf,
    keep: usize,
}

impl Checkpointer {
    pub fn new(run_dir: &Path, keep: usize) -> Result<Checkpointer> {
        let dir = run_dir.join("checkpoints");
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        Ok(Checkpointer { dir, keep })
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
    ) -> Result<PathBuf> {
        let name = format!("step_{:06}", state.step);
        let path = self.write_folder(&name, varmap, meta, optimiser, state)?;
        let latest = serde_json::json!({ "step": state.step, "dir": name });
        write_atomic(
            &self.dir.join(LATEST_FILE),
            format!("{latest:#}\n").as_bytes(),
        )?;
        if best {
            self.write_folder("best", varmap, meta, optimiser, state)?;
        }
        self.prune()?;
        Ok(path)
    }

    fn write_folder(
        &self,
        name: &str,
        varmap: &VarMap,
        meta: &ModelMeta,
        optimiser: &dyn Optimiser,
        state: &TrainState,
    ) -> Result<PathBuf> {
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let fin = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        let written = (|| {
            save_model(varmap, meta, &tmp.join(MODEL_FILE))?;
            optimiser
                .save(&tmp.join(OPTIMISER_FILE))
                .map_err(|e| TrainError::checkpoint(&tmp, e.to_string()))?;
            let json = serde_json::to_string_pretty(state).expect("state serialises");
            write_atomic(&tmp.join(STATE_FILE), (json + "\n").as_bytes())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Swap: the old folder steps aside before the new one takes its name.
        let old = self.dir.join(format!(".{name}.old-{}", std::process::id()));
        if fin.exists() {
            std::fs::rename(&fin, &old).map_err(|e| TrainError::io(&fin, e))?;
        }
        std::fs::rename(&tmp, &fin).map_err(|e| TrainError::io(&fin, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(fin)
    }

    /// Removes the oldest step folders beyond `keep`.
    fn prune(&self) -> Result<()> {
        let mut steps: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| TrainError::io(&self.dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("step_"))
            })
            .collect();
        steps.sort();
        let excess = steps.len().saturating_sub(self.keep.max(1));
        for p in &steps[..excess] {
            std::fs::remove_dir_all(p).map_err(|e| TrainError::io(p, e))?;
        }
        Ok(())
    }
}

/// The newest checkpoint folder of a run, from `latest.json`.
pub fn latest(run_dir: &Path) -> Result<PathBuf> {
    let dir = run_dir.join("checkpoints");
    let path = dir.join(LATEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&path, format!("not JSON: {e}")))?;
    let name = v["dir"]
        .as_str()
        .ok_or_else(|| TrainError::checkpoint(&path, "no \"dir\" entry"))?;
    let ckpt = dir.join(name);
    if !ckpt.is_dir() {
        return Err(TrainError::checkpoint(
            &ckpt,
            "the folder latest.json names is missing",
        ));
    }
    Ok(ckpt)
}

/// Reads a checkpoint folder's loop state.
pub fn read_state(ckpt: &Path) -> Result<TrainState> {
    let path = ckpt.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&path, format!("bad state: {e}")))
}
