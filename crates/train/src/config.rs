//! The training configuration: one nested, serde-readable value (TOML or
//! JSON) whose `Default` is the reference method's method (docs/METHOD.md §1-3), with dotted-path
//! overrides from the command line (`train.steps=200`).

use std::path::{Path, PathBuf};

use kseg_augment::AugmentConfig;
use kseg_infer::ModelMeta;
use kseg_infer::runtime::GpuOps;
use kseg_loss::{LovaszConfig, SegLossConfig};
use kseg_model::ResUNetConfig;
use kseg_volume::synth::SynthConfig;
use kseg_volume::{Intensity, LabelSet};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::{AdamWConfig, SgdConfig};
use crate::schedule::Schedule;

/// Everything a run needs; saved as `config.json` in the run folder before
/// the first step and inside every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Cases, split, stacking, intensity and sampling.
    pub data: DataConfig,
    /// The augmentation.
    pub augment: AugmentConfig,
    /// The network.
    pub model: ResUNetConfig,
    /// The loss.
    pub loss: LossConfig,
    /// The optimiser.
    pub optim: OptimConfig,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Steps, batches, validation, checkpoints.
    pub train: LoopConfig,
    /// Clean-up of predicted volumes, in validation and (recorded in the
    /// checkpoint) in `kseg predict`.
    pub postprocess: PostprocessConfig,
    /// `cpu`, `cuda`, `cuda:N`, `metal` or `auto` (the best compiled in and
    /// present).
    pub device: String,
    /// On CUDA: `candle` (default) or `kseg`, kseg's own CUDA ops where it
    /// has them (opt-in until a recorded GPU run verifies them:
    /// docs/CUDA.md).
    #[serde(skip_serializing_if = "is_default")]
    pub gpu_ops: GpuOps,
    /// On CUDA: allow TF32 tensor-core math in f32 products and
    /// convolutions (off: FMA math, like PyTorch's f32).
    #[serde(skip_serializing_if = "is_default")]
    pub tf32: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: DataConfig::default(),
            augment: AugmentConfig::default(),
            model: ResUNetConfig::default(),
            loss: LossConfig::default(),
            optim: OptimConfig::default(),
            schedule: Schedule::Cosine {
                warmup: 500,
                min_lr: 1e-6,
            },
            train: LoopConfig::default(),
            postprocess: PostprocessConfig::default(),
            device: "auto".into(),
            gpu_ops: GpuOps::Candle,
            tf32: false,
        }
    }
}

/// Clean-up of predicted label volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PostprocessConfig {
    /// Keep only this many largest 6-connected foreground components (2:
    /// the two kidneys). `None` (default): off.
    pub keep_largest: Option<usize>,
    /// Mirroring test-time augmentation (nnU-Net's): average the class
    /// probabilities of each slice and of its left-right mirror image
    /// (mirrored back). Twice the inference cost. Default off.
    pub mirror: bool,
}

/// Where the cases come from and how slices become samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A KiTS19 `data/` folder (`case_XXXXX/imaging.nii.gz` +
    /// `segmentation.nii.gz`). `None`: synthetic KiTS-like cases.
    pub data_dir: Option<PathBuf>,
    /// The synthetic cases made when `data_dir` is `None`.
    pub synthetic: SyntheticData,
    /// Slice caches; default `<data_dir>/.kseg-cache` (inside the data
    /// folder: a read-only dataset needs this set).
    pub cache_dir: Option<PathBuf>,
    /// Split file (JSON); default `<cache_dir>/split-<seed>-<n_val>.json`,
    /// created on first use.
    pub split_file: Option<PathBuf>,
    /// Validation cases of a new split (the reference method: 30 of 210).
    /// Unused with `folds`.
    pub n_val: usize,
    /// k-fold cross-validation: `k` (nnU-Net: 5) folds of the labelled
    /// cases, this run validating on fold `fold` and training on the rest
    /// (`kseg_volume::Split::kfold`, seeded by `split_seed`); 0 (default):
    /// one random split of `n_val` validation cases.
    #[serde(skip_serializing_if = "is_default")]
    pub folds: usize,
    /// The fold validated on (0 to `folds` − 1).
    #[serde(skip_serializing_if = "is_default")]
    pub fold: usize,
    /// RNG seed of the train/validation split.
    pub split_seed: u64,
    /// Neighbours on each side of the slice: 1 gives the reference method's 3-slice
    /// stacks. The model's `in_channels` must be `2·context + 1`.
    pub context: usize,
    /// In-plane size the network sees, `(H, W)`: slices are resampled to it
    /// in training (by the augmentation's crop-and-resize) and in inference
    /// (and the prediction back). `None`: the data's own size (the reference method:
    /// 512×512, no resampling).
    pub in_plane: Option<(usize, usize)>,
    /// In-plane voxel size in mm the network works at: training slices are
    /// resampled to it (the `augment.out_size` canvas then covers a fixed
    /// field of view, cropped or padded about the slice's centre) before the
    /// augmentation, and inference resamples every input to it and the
    /// class probabilities back. `None` (default): the data's own pixels, as
    /// the reference method. Slice spacing stays native (2.5D stacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spacing_mm: Option<f64>,
    /// Share of training draws taken from slices that show kidney or tumour.
    pub foreground_fraction: f64,
    /// HU window and normalisation.
    pub intensity: Intensity,
    /// Use at most this many validation cases per validation (`None`: all).
    pub max_val_cases: Option<usize>,
    /// The label values of the data: `kits19` (0..=2, the default) or
    /// `kits23` (0..=3, cysts). Label files are checked against it, and
    /// validation scores with the set's metrics (KiTS23: Dice and surface
    /// Dice of three regions).
    #[serde(skip_serializing_if = "is_default")]
    pub labels: LabelSet,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            data_dir: None,
            synthetic: SyntheticData::default(),
            cache_dir: None,
            split_file: None,
            n_val: 30,
            folds: 0,
            fold: 0,
            split_seed: 0,
            context: 1,
            in_plane: None,
            spacing_mm: None,
            foreground_fraction: 1.0 / 3.0,
            intensity: Intensity::default(),
            max_val_cases: None,
            labels: LabelSet::Kits19,
        }
    }
}

/// The built-in data: `cases` synthetic cases written (once) to `dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticData {
    /// Number of synthetic cases.
    pub cases: usize,
    /// Default `data/synth-<H>x<W>-<seed>` under the working folder.
    pub dir: Option<PathBuf>,
    /// The generator's settings.
    pub generator: SynthConfig,
}

impl Default for SyntheticData {
    fn default() -> Self {
        SyntheticData {
            cases: 12,
            dir: None,
            generator: SynthConfig::default(),
        }
    }
}

/// How class weights of the cross-entropy are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// `1/sqrt(frequency)` over the training labels, mean 1 (docs/METHOD.md §3).
    Auto,
    /// Unweighted.
    None,
    /// Given, one per class.
    Fixed(Vec<f32>),
}

/// The loss: weighted CE + λ·Lovász-Softmax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of the Lovász term (docs/METHOD.md §3: 1).
    pub lambda: f64,
    /// The Lovász-Softmax term's settings (and the ignore label).
    pub lovasz: LovaszConfig,
    /// The cross-entropy's class weights (with `regions`: two per region,
    /// outside and inside, the same for every region; `auto` computes them
    /// per region).
    pub class_weights: ClassWeights,
    /// Region-based training (KiTS23 only): one sigmoid output per region
    /// (kidney_and_mass {1,2,3}, mass {2,3}, tumor {2}), each with the
    /// reference method's loss on its two-class problem; the model has 3
    /// outputs and predictions are decoded kidney, then cyst, then tumour.
    /// `false`: one softmax over the label set's classes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub regions: bool,
}

impl Default for LossConfig {
    fn default() -> Self {
        let seg = SegLossConfig::default();
        LossConfig {
            lambda: seg.lambda,
            lovasz: seg.lovasz,
            class_weights: ClassWeights::Auto,
            regions: false,
        }
    }
}

impl LossConfig {
    /// The loss crate's configuration of this.
    pub fn seg(&self) -> SegLossConfig {
        SegLossConfig {
            lambda: self.lambda,
            lovasz: self.lovasz,
        }
    }
}

/// The optimiser and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimConfig {
    /// AdamW (PyTorch's rule).
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    /// SGD with momentum (PyTorch's rule).
    Sgd(SgdConfig),
}

impl Default for OptimConfig {
    /// AdamW, lr 1e-3, weight decay 1e-4 (ours; the write-up names none).
    fn default() -> Self {
        OptimConfig::AdamW(AdamWConfig {
            weight_decay: 1e-4,
            ..AdamWConfig::default()
        })
    }
}

/// What is wrong with a schedule for the base rate `lr` (`None`: nothing).
fn schedule_problem(schedule: &Schedule, lr: f64) -> Option<String> {
    match *schedule {
        Schedule::Constant => None,
        Schedule::Poly { exponent } => (!(exponent.is_finite() && exponent >= 0.0))
            .then(|| format!("schedule.exponent must be >= 0, got {exponent}")),
        Schedule::Cosine { min_lr, .. } => (!(min_lr.is_finite() && (0.0..=lr).contains(&min_lr)))
            .then(|| format!("schedule.min_lr must be in [0, optim.lr = {lr}], got {min_lr}")),
    }
}

impl OptimConfig {
    /// Checks the optimiser's constants (the learning rate is checked with
    /// the schedule): betas and momentum in [0, 1), eps > 0, weight decay
    /// >= 0, all finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(TrainError::Config { path: None, msg });
        let unit = |v: f64| v.is_finite() && (0.0..1.0).contains(&v);
        let (weight_decay, checks): (f64, Vec<(&str, f64, bool)>) = match self {
            OptimConfig::AdamW(c) => (
                c.weight_decay,
                vec![
                    ("beta1", c.beta1, unit(c.beta1)),
                    ("beta2", c.beta2, unit(c.beta2)),
                    ("eps", c.eps, c.eps.is_finite() && c.eps > 0.0),
                ],
            ),
            OptimConfig::Sgd(c) => (
                c.weight_decay,
                vec![("momentum", c.momentum, unit(c.momentum))],
            ),
        };
        for (name, value, ok) in checks {
            if !ok {
                let want = if name == "eps" { "> 0" } else { "in [0, 1)" };
                return bad(format!("optim.{name} must be {want}, got {value}"));
            }
        }
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return bad(format!(
                "optim.weight_decay must be >= 0, got {weight_decay}"
            ));
        }
        Ok(())
    }

    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimConfig::AdamW(c) => c.lr,
            OptimConfig::Sgd(c) => c.lr,
        }
    }
}

/// The loop: length, batch, seeds, and how often to log, check and save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopConfig {
    /// Training steps (batches).
    pub steps: usize,
    /// Samples per batch.
    pub batch_size: usize,
    /// Seeds the model's initialisation, the slice draws and the
    /// augmentation: batch `s` depends only on `(seed, s)`.
    pub seed: u64,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub grad_clip: Option<f64>,
    /// Batches prepared ahead on the loader thread.
    pub prefetch: usize,
    /// Log a step record every this many steps.
    pub log_every: usize,
    /// Validate (and keep the best checkpoint) every this many steps and at
    /// the end; 0: only at the end.
    pub validate_every: usize,
    /// Save a checkpoint every this many steps and at the end.
    pub checkpoint_every: usize,
    /// Slices per forward pass in validation and prediction.
    pub val_batch_size: usize,
    /// Step checkpoints kept besides `best` (the oldest are removed).
    pub keep_checkpoints: usize,
    /// Overlays of prediction vs truth drawn at each validation.
    pub overlay_slices: usize,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            steps: 50_000,
            batch_size: 8,
            seed: 42,
            grad_clip: Some(12.0),
            prefetch: 4,
            log_every: 10,
            validate_every: 2_500,
            checkpoint_every: 500,
            val_batch_size: 8,
            keep_checkpoints: 2,
            overlay_slices: 4,
        }
    }
}

/// Fields left out of a configuration's JSON when they hold their default,
/// so that configurations written before they existed (KiTS19's) stay
/// byte for byte the same; overrides may still set them.
const OMITTED_WHEN_DEFAULT: [&str; 6] = [
    "gpu_ops",
    "tf32",
    "data.labels",
    "data.spacing_mm",
    "data.synthetic.generator.cysts",
    "loss.regions",
];

impl TrainConfig {
    /// Reads a TOML (`.toml`) or JSON (anything else) file; unknown keys are
    /// errors. The presets in `configs/` are such files.
    pub fn from_file(path: impl AsRef<Path>) -> Result<TrainConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let toml = path.extension().is_some_and(|e| e == "toml");
        TrainConfig::from_text(&text, toml, path)
    }

    /// [`TrainConfig::from_file`] of a file's text already read (`toml`:
    /// TOML, else JSON); `origin` names it in errors.
    pub fn from_text(text: &str, toml: bool, origin: &Path) -> Result<TrainConfig> {
        let cfg: TrainConfig = if toml {
            toml::from_str(text).map_err(|e| TrainError::config(origin, e.to_string()))?
        } else {
            serde_json::from_str(text).map_err(|e| TrainError::config(origin, e.to_string()))?
        };
        cfg.validate()
            .map_err(|e| TrainError::config(origin, e.to_string()))?;
        Ok(cfg)
    }

    /// Applies `key.path=value` overrides. The value is read as JSON when it
    /// parses (`3`, `true`, `null`, `[64,64]`, `{"kind":"sgd"}`), else as a
    /// string; the key must name an existing field.
    ///
    /// ```
    /// let mut c = kseg_train::TrainConfig::default();
    /// c.apply_overrides(&["train.steps=7", "model.base_channels=8"]).unwrap();
    /// assert_eq!((c.train.steps, c.model.base_channels), (7, 8));
    /// assert!(c.apply_overrides(&["train.stepz=7"]).is_err());
    /// ```
    pub fn apply_overrides<S: AsRef<str>>(&mut self, overrides: &[S]) -> Result<()> {
        let mut v = serde_json::to_value(&*self).expect("config serialises");
        for o in overrides {
            let o = o.as_ref();
            let bad = |msg: String| TrainError::Config {
                path: None,
                msg: format!("override {o:?}: {msg}"),
            };
            let Some((key, value)) = o.split_once('=') else {
                return Err(bad("expected key.path=value".into()));
            };
            let value: serde_json::Value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
            let mut slot = &mut v;
            let key = key.trim();
            for part in key.split('.') {
                let obj = slot
                    .as_object_mut()
                    .ok_or_else(|| bad(format!("{part:?} is not inside a section")))?;
                if !obj.contains_key(part) {
                    if OMITTED_WHEN_DEFAULT.contains(&key) {
                        obj.insert(part.to_string(), serde_json::Value::Null);
                    } else {
                        // Optional fields serialise as null (all but
                        // OMITTED_WHEN_DEFAULT), so a missing key is a typo.
                        let mut known: Vec<String> = obj.keys().cloned().collect();
                        let prefix = key.rsplit_once('.').map_or("", |(p, _)| p);
                        known.extend(OMITTED_WHEN_DEFAULT.iter().filter_map(|k| {
                            let (p, f) = k.rsplit_once('.')?;
                            (p == prefix).then(|| f.to_string())
                        }));
                        known.sort();
                        known.dedup();
                        return Err(bad(format!("no field {part:?} (known: {known:?})")));
                    }
                }
                slot = obj.get_mut(part).expect("checked or inserted");
            }
            // A section is set field by field: `train=5` would drop every
            // field of `train`, and a later `train.steps=2` took the blame.
            if let Some(section) = slot.as_object()
                && !value.is_object()
            {
                let fields: Vec<&String> = section.keys().collect();
                return Err(bad(format!(
                    "{key:?} is a section, not a value; set its fields ({key}.FIELD=VALUE, fields {fields:?})"
                )));
            }
            *slot = value;
        }
        let cfg: TrainConfig = serde_json::from_value(v).map_err(|e| TrainError::Config {
            path: None,
            msg: format!(
                "overrides {:?}: {e}",
                overrides.iter().map(|o| o.as_ref()).collect::<Vec<_>>()
            ),
        })?;
        cfg.validate()?;
        *self = cfg;
        Ok(())
    }

    /// The model-file metadata of a model trained with this configuration,
    /// after `step` steps.
    pub fn model_meta(&self, step: usize) -> ModelMeta {
        ModelMeta {
            format: 1,
            model: self.model,
            context: self.data.context,
            intensity: self.data.intensity,
            in_plane: self.data.in_plane,
            step,
            keep_largest: self.postprocess.keep_largest,
            mirror: self.postprocess.mirror,
            spacing_mm: self.data.spacing_mm,
            labels: self.data.labels,
            regions: self.loss.regions,
        }
    }

    /// The model's output channels this configuration needs: one per
    /// label of the set, or one per region with `loss.regions` (`None`:
    /// regions asked of a set that has none).
    pub fn outputs(&self) -> Option<usize> {
        self.data.labels.outputs(self.loss.regions)
    }

    /// Checks the values that the parts do not check themselves, and the
    /// parts.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(TrainError::Config { path: None, msg });
        self.model.validate()?;
        self.augment.validate()?;
        self.data.intensity.validate()?;
        self.data.synthetic.generator.validate()?;
        if self.postprocess.keep_largest == Some(0) {
            return bad(format!("postprocess.{}", kseg_infer::model_file::KEEP_ZERO));
        }
        // Checked: a context near usize::MAX must not overflow.
        let stack = (self.data.context.checked_mul(2)).and_then(|n| n.checked_add(1));
        if stack != Some(self.model.in_channels) {
            return bad(format!(
                "model.in_channels = {} but data.context = {} gives {}-slice stacks",
                self.model.in_channels,
                self.data.context,
                stack.map_or("more than usize::MAX".to_string(), |n| n.to_string())
            ));
        }
        let labels = self.data.labels;
        let Some(outputs) = self.outputs() else {
            return bad(format!(
                "loss.regions needs data.labels = \"kits23\" (its regions hold cysts), got {labels}"
            ));
        };
        if self.model.num_classes != outputs {
            return bad(format!(
                "model.num_classes must be {outputs} for {} ({}), got {}",
                labels,
                if self.loss.regions {
                    "one output per region: kidney_and_mass, mass, tumor".to_string()
                } else {
                    labels.names().join(", ")
                },
                self.model.num_classes
            ));
        }
        let t = &self.train;
        if t.steps == 0 || t.batch_size == 0 || t.val_batch_size == 0 || t.prefetch == 0 {
            return bad("train.steps, batch_size, val_batch_size and prefetch must be >= 1".into());
        }
        if t.checkpoint_every == 0 || t.log_every == 0 {
            return bad("train.checkpoint_every and log_every must be >= 1".into());
        }
        if let Some(c) = t.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("train.grad_clip must be > 0, got {c}"));
        }
        let lr = self.optim.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return bad(format!("optim.lr must be > 0, got {lr}"));
        }
        self.optim.validate()?;
        if let Some(msg) = schedule_problem(&self.schedule, lr) {
            return bad(msg);
        }
        if self.data.folds == 1 || (self.data.folds > 1 && self.data.fold >= self.data.folds) {
            return bad(format!(
                "data.fold {} of data.folds {}: cross-validation needs at least 2 folds, numbered 0 to folds - 1 (data.folds = 0: no cross-validation)",
                self.data.fold, self.data.folds
            ));
        }
        if self.data.folds == 0 && self.data.fold != 0 {
            return bad(format!(
                "data.fold {} without data.folds: set data.folds (e.g. 5) for cross-validation",
                self.data.fold
            ));
        }
        if self.data.n_val == 0 || self.data.max_val_cases == Some(0) {
            return bad(format!(
                "data.n_val (got {}) and data.max_val_cases must be >= 1: validation scores the run and picks its best checkpoint",
                self.data.n_val
            ));
        }
        let m = 1usize << self.model.depth;
        if let (Some(s), Some(o)) = (self.data.in_plane, self.augment.out_size)
            && s != o
        {
            return bad(format!(
                "data.in_plane {s:?} and augment.out_size {o:?} differ: the network sees one size"
            ));
        }
        let Some((h, w)) = self.data.in_plane.or(self.augment.out_size) else {
            return bad("augment.out_size must be set (the size of the training crops)".into());
        };
        if h % m != 0 || w % m != 0 {
            return bad(format!(
                "training size {h}x{w} must be divisible by 2^depth = {m}"
            ));
        }
        let classes = if self.loss.regions {
            2
        } else {
            self.model.num_classes
        };
        if let ClassWeights::Fixed(w) = &self.loss.class_weights
            && (w.len() != classes || w.iter().any(|v| !(v.is_finite() && *v >= 0.0)))
        {
            return bad(format!(
                "loss.class_weights must be {classes} finite values >= 0, got {w:?}"
            ));
        }
        if let Some(t) = self.data.spacing_mm {
            if !(t.is_finite() && t > 0.0 && t <= 20.0) {
                return bad(format!("data.spacing_mm must be in (0, 20] mm, got {t}"));
            }
            if self.data.in_plane.is_some() {
                return bad(
                    "data.spacing_mm and data.in_plane both resample slices: set one".into(),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.data.foreground_fraction) {
            return bad(format!(
                "data.foreground_fraction must be in [0, 1], got {}",
                self.data.foreground_fraction
            ));
        }
        self.check_memory((h, w))
    }

    /// Checks the memory the sizes imply against the limit
    /// ([`kseg_volume::limits`]) before anything of that size exists: the
    /// batches of `h`×`w` crops the loader holds (`train.prefetch` in its
    /// channel, one being made, one being trained on) and a forward pass of
    /// the larger of `train.batch_size` and `val_batch_size`
    /// ([`kseg_infer::ModelMeta::check_forward`]'s floor).
    fn check_memory(&self, (h, w): (usize, usize)) -> Result<()> {
        use kseg_volume::limits;
        let t = &self.train;
        let too_large = |e: limits::LimitError| TrainError::Config {
            path: None,
            msg: e.to_string(),
        };
        let c = self.model.in_channels;
        let batch = limits::bytes_of(&[t.batch_size, c + 1, h, w], std::mem::size_of::<f32>())
            .and_then(|b| b.checked_add(std::mem::size_of::<Result<crate::data::Batch>>() as u128));
        let held = batch.and_then(|b| b.checked_mul(t.prefetch as u128 + 2));
        limits::check_bytes(
            &format!(
                "train.prefetch = {} (with batch_size {} of {c}x{h}x{w} crops)",
                t.prefetch, t.batch_size
            ),
            held,
        )
        .map_err(too_large)?;
        self.model_meta(0)
            .check_forward(t.batch_size.max(t.val_batch_size), (h, w))
            .map_err(too_large)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kseg-augment depends on no kseg crate, so its default fill is a
    /// literal: it must be air after the default intensity window, bit
    /// for bit, or the default job's augmented samples would change.
    #[test]
    fn the_augmentation_fills_with_air_of_the_default_window() {
        let air = Intensity::default().air();
        assert_eq!(
            kseg_augment::AugmentConfig::AIR_FILL.to_bits(),
            air.to_bits()
        );
        assert_eq!(TrainConfig::default().augment.fill.to_bits(), air.to_bits());
    }

    /// The model file's metadata follows the configuration it was trained
    /// with, and passes the model file's own check.
    #[test]
    fn model_meta_follows_the_config() {
        let mut cfg = TrainConfig::default();
        cfg.postprocess.keep_largest = Some(2);
        let meta = cfg.model_meta(7);
        assert_eq!((meta.step, meta.keep_largest), (7, Some(2)));
        assert_eq!(meta.model, cfg.model);
        assert_eq!(meta.labels.outputs(meta.regions), cfg.outputs());
        meta.validate().unwrap();
    }
}
