//! Checkpoints: a folder per save holding the model (PyTorch names,
//! loadable in PyTorch, with what inference needs in the safetensors
//! metadata), the optimiser state and the loop state. Folders are written
//! under a temporary name and renamed (`kseg_volume::fs`), so a crash
//! leaves the previous checkpoint whole; `latest.json` points at the newest
//! one. Where the files are: [`RunDir`] and [`CheckpointDir`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::DType;
use candle_nn::VarMap;
use kseg_model::ResUNetConfig;
use kseg_volume::{Intensity, LabelSet};
use serde::{Deserialize, Serialize};

use kseg_volume::fs::{write_bytes_atomic, write_dir_atomic, write_json_atomic};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError, candle_text};
use crate::optim::Optimiser;
use crate::run_dir::{CheckpointDir, RunDir};
/// The safetensors metadata key that holds [`ModelMeta`] as JSON.
pub const META_KEY: &str = "kseg";

/// What inference needs besides the weights: the network's shape and the
/// preprocessing of training. Stored in the model file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    /// Version of this metadata (1).
    pub format: u32,
    /// The network's shape.
    pub model: ResUNetConfig,
    /// Neighbours on each side of a slice (1: 3-slice stacks).
    pub context: usize,
    /// The intensity window and normalisation of training.
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
    /// In-plane voxel size (mm) inputs are resampled to, when training
    /// used one (`data.spacing_mm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing_mm: Option<f64>,
    /// The label values predictions are written with (KiTS19's unless
    /// recorded).
    #[serde(default, skip_serializing_if = "is_kits19")]
    pub labels: LabelSet,
    /// The outputs are the KiTS23 regions (sigmoids), decoded kidney, then
    /// cyst, then tumour; `false`: a softmax over the labels.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regions: bool,
}

fn is_kits19(l: &LabelSet) -> bool {
    *l == LabelSet::Kits19
}

impl ModelMeta {
    /// The metadata of a model trained with `cfg`, after `step` steps.
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
            spacing_mm: cfg.data.spacing_mm,
            labels: cfg.data.labels,
            regions: cfg.loss.regions,
        }
    }
}

impl ModelMeta {
    /// Checks the metadata as a configuration is checked: the model's
    /// sizes, the stack it takes, the intensity window (std > 0) and the
    /// in-plane size, so a damaged or edited file cannot make inference
    /// allocate at an absurd size or predict nonsense.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.model.validate().map_err(|e| candle_text(&e))?;
        if self.model.in_channels != 2 * self.context + 1 {
            return Err(format!(
                "model.in_channels = {} but context = {} gives {}-slice stacks",
                self.model.in_channels,
                self.context,
                2 * self.context + 1
            ));
        }
        self.intensity.validate().map_err(|e| e.to_string())?;
        if let Some(t) = self.spacing_mm
            && !(t.is_finite() && t > 0.0 && t <= 20.0)
        {
            return Err(format!("spacing_mm {t} must be in (0, 20] mm"));
        }
        let Some(outputs) = crate::config::model_outputs(self.labels, self.regions) else {
            return Err(format!("regions with the {} label set", self.labels));
        };
        if self.model.num_classes != outputs {
            return Err(format!(
                "the model has {} outputs; {} {} needs {outputs}",
                self.model.num_classes,
                self.labels,
                if self.regions { "regions" } else { "labels" }
            ));
        }
        if let Some((h, w)) = self.in_plane {
            let m = 1usize << self.model.depth;
            if h == 0 || w == 0 || h > MAX_IN_PLANE || w > MAX_IN_PLANE || h % m != 0 || w % m != 0
            {
                return Err(format!(
                    "in_plane {h}x{w} must be positive multiples of 2^depth = {m}, at most {MAX_IN_PLANE}"
                ));
            }
        }
        Ok(())
    }
}

/// Largest in-plane size a model file may ask inputs to be resampled to.
pub const MAX_IN_PLANE: usize = 4096;

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

/// Writes the variables of `varmap` as f32 safetensors with PyTorch names
/// (docs/METHOD.md §2) and `meta` in the metadata, through a temporary
/// file and a rename: the one way kseg writes a model file.
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
    Ok(write_bytes_atomic(path, &bytes)?)
}

/// Reads [`ModelMeta`] from a model file, with errors that say what is
/// wrong with it.
pub fn read_meta(path: &Path) -> Result<ModelMeta> {
    // Mapped, not read: the model is mapped again to load its weights, and
    // a full model file is 126 MB.
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TrainError::checkpoint(
                path,
                "no such file (a checkpoint is a model.safetensors or a checkpoint folder holding one)",
            )
        } else {
            TrainError::io(path, e)
        }
    })?;
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
    meta.validate()
        .map_err(|e| TrainError::checkpoint(path, format!("bad kseg metadata: {e}")))?;
    Ok(meta)
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
    let mut tmp_path = None;
    write_dir_atomic(dir.path(), |tmp| {
        tmp_path = Some(tmp.to_path_buf());
        let tmp = CheckpointDir::new(tmp);
        save_model(varmap, meta, &tmp.model())?;
        optimiser
            .save(&tmp.optimiser())
            .map_err(|e| TrainError::checkpoint(dir.path(), e.to_string()))?;
        Ok(write_json_atomic(&tmp.state(), state)?)
    })
    .map_err(|e: TrainError| {
        // Errors inside name the temporary folder: say the checkpoint's
        // own path, the one the user will look for.
        let msg = e.to_string();
        match tmp_path.as_ref().map(|t| t.to_string_lossy().into_owned()) {
            Some(t) if msg.contains(&t) => {
                TrainError::Other(msg.replace(&t, &dir.path().to_string_lossy()))
            }
            _ => e,
        }
    })
}
