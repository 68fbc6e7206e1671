//! The kseg model file: a safetensors file of the Res-U-Net's weights
//! under PyTorch's `state_dict` names (f32, loadable in PyTorch), with
//! [`ModelMeta`] (the network's shape and the preprocessing and clean-up of
//! training) as JSON in the metadata under the key [`META_KEY`]. The one
//! writer is [`save_model`] (through a temporary file and a rename), the
//! one reader [`read_meta`], which checks the file whole and its metadata
//! before anything is built from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::DType;
use candle_nn::VarMap;
use kseg_metrics::LabelSet;
use kseg_model::ResUNetConfig;
use kseg_volume::Intensity;
use kseg_volume::fs::write_bytes_atomic;
use serde::{Deserialize, Serialize};

use crate::error::{InferError, Result, candle_text};

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

/// The file name of a model inside a checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";

/// The model file of a checkpoint given as a file or a checkpoint folder
/// (what `kseg predict --checkpoint` takes).
pub fn model_file(checkpoint: &Path) -> PathBuf {
    if checkpoint.is_dir() {
        checkpoint.join(MODEL_FILE)
    } else {
        checkpoint.to_path_buf()
    }
}

impl ModelMeta {
    /// The metadata of `model` with the reference method's preprocessing:
    /// 3-slice stacks, the default intensity window, native in-plane size,
    /// no clean-up, no mirroring, KiTS19 labels (a softmax).
    pub fn new(model: ResUNetConfig) -> ModelMeta {
        ModelMeta {
            format: 1,
            model,
            context: 1,
            intensity: Intensity::default(),
            in_plane: None,
            step: 0,
            keep_largest: None,
            mirror: false,
            spacing_mm: None,
            labels: LabelSet::Kits19,
            regions: false,
        }
    }

    /// Checks the metadata as a configuration is checked: the model's
    /// sizes, the stack it takes, the intensity window (std > 0) and the
    /// in-plane size, so a damaged or edited file cannot make inference
    /// allocate at an absurd size or predict nonsense.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.model.validate().map_err(|e| candle_text(&e))?;
        // Checked: a context near usize::MAX must not overflow.
        let stack = self.context.checked_mul(2).and_then(|n| n.checked_add(1));
        if stack != Some(self.model.in_channels) {
            return Err(format!(
                "model.in_channels = {} but context = {} gives {}-slice stacks",
                self.model.in_channels,
                self.context,
                stack.map_or("more than usize::MAX".to_string(), |n| n.to_string())
            ));
        }
        self.intensity.validate().map_err(|e| e.to_string())?;
        if self.keep_largest == Some(0) {
            return Err(KEEP_ZERO.to_string());
        }
        if let Some(t) = self.spacing_mm
            && !(t.is_finite() && t > 0.0 && t <= 20.0)
        {
            return Err(format!("spacing_mm {t} must be in (0, 20] mm"));
        }
        let Some(outputs) = self.labels.outputs(self.regions) else {
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
            self.check_forward(1, (h, w)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Checks the memory a forward pass of `batch` inputs of `(h, w)`
    /// pixels implies against the limit ([`kseg_volume::limits`]), before
    /// any input of that size is made.
    ///
    /// The estimate is a floor: float32 activations of `4 · base_channels`
    /// per pixel at full resolution (the first block's output, kept for the
    /// head, the head's concatenation of twice that and its convolution's
    /// output), whatever the depth.
    pub fn check_forward(
        &self,
        batch: usize,
        (h, w): (usize, usize),
    ) -> std::result::Result<u64, kseg_volume::limits::LimitError> {
        let per_pixel = 4usize.saturating_mul(self.model.base_channels);
        kseg_volume::limits::check(
            &format!(
                "a forward pass of {batch} slices of {h}x{w} pixels (base_channels {})",
                self.model.base_channels
            ),
            &[batch, h, w, per_pixel],
            std::mem::size_of::<f32>(),
        )
    }
}

/// Why `keep_largest = 0` is refused (model files and configurations).
pub const KEEP_ZERO: &str = "keep_largest = 0 would keep no component and erase every prediction; leave it out (null) for no clean-up";

/// Largest in-plane size a model file may ask inputs to be resampled to.
pub const MAX_IN_PLANE: usize = 4096;

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
        .map_err(|e| InferError::checkpoint(path, e.to_string()))?;
    let json = serde_json::to_string(meta).expect("meta serialises");
    let info = HashMap::from([(META_KEY.to_string(), json)]);
    let bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| InferError::checkpoint(path, e.to_string()))?;
    Ok(write_bytes_atomic(path, &bytes)?)
}

/// Reads [`ModelMeta`] from a model file, with errors that say what is
/// wrong with it.
pub fn read_meta(path: &Path) -> Result<ModelMeta> {
    // Mapped, not read: the model is mapped again to load its weights, and
    // a full model file is 126 MB.
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            InferError::checkpoint(
                path,
                "no such file (a checkpoint is a model.safetensors or a checkpoint folder holding one)",
            )
        } else {
            InferError::io(path, e)
        }
    })?;
    if !file
        .metadata()
        .map_err(|e| InferError::io(path, e))?
        .is_file()
    {
        return Err(InferError::checkpoint(
            path,
            "not a file (a folder?): a checkpoint is a model.safetensors file or a checkpoint folder holding one",
        ));
    }
    // SAFETY: the file is only read; checkpoints are replaced by rename,
    // never rewritten in place.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| InferError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        InferError::checkpoint(
            path,
            format!("truncated, damaged or not a safetensors file ({e:?})"),
        )
    })?;
    // read_metadata only parses the header: check the data is all there.
    safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        InferError::checkpoint(
            path,
            format!("truncated or damaged safetensors file ({e:?})"),
        )
    })?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            InferError::checkpoint(
                path,
                "no kseg metadata: a model file written by kseg carries its model config and preprocessing (weights from elsewhere: load them with kseg_model::ResUNet::load)",
            )
        })?;
    let meta: ModelMeta = serde_json::from_str(json)
        .map_err(|e| InferError::checkpoint(path, format!("bad kseg metadata: {e}")))?;
    if meta.format != 1 {
        return Err(InferError::checkpoint(
            path,
            format!("metadata format {} is not supported (1)", meta.format),
        ));
    }
    meta.validate()
        .map_err(|e| InferError::checkpoint(path, format!("bad kseg metadata: {e}")))?;
    Ok(meta)
}
