//! The Res-U-Net and its configuration, initialisation and checkpoints.

use std::path::Path;

use candle_core::{DType, Device, ModuleT, Result, Tensor, bail};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::blocks::{CatConv, CatResBlock, Conv0, ResDownSample};

/// The network's shape. `Default` is the reference method's model: 3 input channels
/// (a slice and its two neighbours), 3 classes, base width 32, depth 5,
/// LeakyReLU slope 0.2 (31,613,347 parameters).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResUNetConfig {
    /// Input channels (2n+1 stacked slices).
    pub in_channels: usize,
    /// Output classes (logit channels).
    pub num_classes: usize,
    /// Channels after `conv0`; each down-sampling doubles them.
    pub base_channels: usize,
    /// Number of down-sampling blocks; H and W must be divisible by 2^depth.
    pub depth: usize,
    /// LeakyReLU's negative slope.
    pub negative_slope: f64,
}

impl Default for ResUNetConfig {
    fn default() -> Self {
        ResUNetConfig {
            in_channels: 3,
            num_classes: 3,
            base_channels: 32,
            depth: 5,
            negative_slope: 0.2,
        }
    }
}

impl ResUNetConfig {
    /// That `x` is `(B, in_channels, H, W)` with H and W positive multiples
    /// of 2^depth.
    pub(crate) fn check_input(&self, x: &Tensor) -> Result<()> {
        let Ok((_, c, h, w)) = x.dims4() else {
            bail!(
                "Res-U-Net: input must be (B, C, H, W), got shape {:?}",
                x.dims()
            );
        };
        if c != self.in_channels {
            bail!(
                "Res-U-Net: input has {c} channels, the model takes {} (shape {:?})",
                self.in_channels,
                x.dims()
            );
        }
        let m = 1usize << self.depth;
        if h % m != 0 || w % m != 0 || h == 0 || w == 0 {
            bail!(
                "Res-U-Net: H and W must be positive multiples of 2^depth = {m} (depth {}), got {h}x{w} (shape {:?})",
                self.depth,
                x.dims()
            );
        }
        Ok(())
    }

    /// Checks the sizes: depth and widths the network can be built with.
    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.num_classes == 0 || self.depth == 0 {
            bail!("Res-U-Net: in_channels, num_classes and depth must be >= 1, got {self:?}");
        }
        // PixelShuffle(2) needs channels divisible by 4 at every level: the
        // deepest has base·2^depth; the head's input base·2 (depth 1) or the
        // last decoder's width.
        if self.base_channels < 2 || !self.base_channels.is_multiple_of(2) {
            bail!(
                "Res-U-Net: base_channels must be even and >= 2, got {}",
                self.base_channels
            );
        }
        if !(self.negative_slope.is_finite() && self.negative_slope >= 0.0) {
            bail!(
                "Res-U-Net: negative_slope must be finite and >= 0, got {}",
                self.negative_slope
            );
        }
        // No allocation sized by an unchecked value: a model file's metadata
        // or a config cannot ask for more than these.
        let limits = [
            ("in_channels", self.in_channels, MAX_IN_CHANNELS),
            ("num_classes", self.num_classes, MAX_CLASSES),
            ("base_channels", self.base_channels, MAX_BASE_CHANNELS),
            ("depth", self.depth, MAX_DEPTH),
        ];
        for (name, value, max) in limits {
            if value > max {
                bail!("Res-U-Net: {name} = {value} is beyond the supported {max}");
            }
        }
        let widest = self.base_channels << self.depth;
        if widest > MAX_WIDTH {
            bail!(
                "Res-U-Net: base_channels·2^depth = {widest} channels at the deepest level is beyond the supported {MAX_WIDTH}"
            );
        }
        Ok(())
    }
}

/// Largest `in_channels` (a 2n+1 stack of n ≤ 31 neighbours each side).
pub const MAX_IN_CHANNELS: usize = 63;
/// Largest `num_classes`.
pub const MAX_CLASSES: usize = 256;
/// Largest `base_channels`.
pub const MAX_BASE_CHANNELS: usize = 1024;
/// Largest `depth` (a 2^10 = 1024-pixel multiple).
pub const MAX_DEPTH: usize = 10;
/// Largest width at the deepest level (the reference model has 1024; this
/// allows 8× more, about 2·10⁹ parameters).
pub const MAX_WIDTH: usize = 8192;

/// A `VarBuilder` backend over a mapped checkpoint that hands out the
/// file's tensors only when their shape and dtype are what the model asks
/// for, and keeps them for the `VarMap`.
#[derive(Clone)]
struct CheckedFile {
    st: std::sync::Arc<candle_core::safetensors::MmapedSafetensors>,
    path: std::path::PathBuf,
    cfg: ResUNetConfig,
    loaded: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Tensor>>>,
}

impl candle_nn::var_builder::SimpleBackend for CheckedFile {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let err = |e: String| candle_core::Error::Msg(format!("{}: {e}", self.path.display()));
        let cfg = self.cfg;
        let view = self.st.get(name).map_err(|_| {
            err(format!(
                "no tensor {name} (is it a Res-U-Net checkpoint of {cfg:?}?)"
            ))
        })?;
        if view.shape() != s.dims() {
            return Err(err(format!(
                "{name} has shape {:?}, the model expects {:?}",
                view.shape(),
                s.dims()
            )));
        }
        use safetensors::Dtype as D;
        if !matches!(view.dtype(), D::F16 | D::BF16 | D::F32 | D::F64) {
            return Err(err(format!(
                "{name} is {:?}; weights must be floating point (F16, BF16, F32 or F64)",
                view.dtype()
            )));
        }
        let t = self
            .st
            .load(name, dev)
            .map_err(|e| err(format!("{name}: {e}")))?
            .to_dtype(dtype)?;
        self.loaded
            .lock()
            .expect("loaded lock")
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.st.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }
}

/// The reference method's Res-U-Net (docs/METHOD.md §2). Tensor names are PyTorch `state_dict`
/// names (`conv0.conv.weight`, `down.0.bn1.running_mean`, `up.1.skip.bias`,
/// `head.classifier.weight`...), so a PyTorch checkpoint saved with
/// safetensors loads with [`ResUNet::new`] over
/// `VarBuilder::from_mmaped_safetensors`, and ours load in PyTorch.
#[derive(Debug, Clone)]
pub struct ResUNet {
    pub(crate) cfg: ResUNetConfig,
    pub(crate) conv0: Conv0,
    pub(crate) down: Vec<ResDownSample>,
    pub(crate) up: Vec<CatResBlock>,
    pub(crate) head: CatConv,
}

impl ResUNet {
    /// Builds the network from `vb` (weights loaded from a checkpoint, or
    /// created in a `VarMap`; see [`ResUNet::init`] for seeded
    /// initialisation).
    pub fn new(cfg: &ResUNetConfig, vb: VarBuilder) -> Result<ResUNet> {
        cfg.validate()?;
        let s = cfg.negative_slope;
        let b = cfg.base_channels;
        let conv0 = Conv0::new(cfg.in_channels, b, s, vb.pp("conv0"))?;
        let mut down = Vec::with_capacity(cfg.depth);
        let mut widths = vec![b];
        for i in 0..cfg.depth {
            let c = b << i;
            down.push(ResDownSample::new(c, 2 * c, s, vb.pp(format!("down.{i}")))?);
            widths.push(2 * c);
        }
        // Decoder: up.j takes x (width c) and the output of down.(depth-2-j).
        let mut up = Vec::new();
        let mut c = widths[cfg.depth];
        for j in 0..cfg.depth.saturating_sub(1) {
            let skip = widths[cfg.depth - 1 - j];
            if c % 4 != 0 {
                bail!("Res-U-Net: {c} channels at up.{j} cannot be pixel-shuffled by 2 ({cfg:?})");
            }
            up.push(CatResBlock::new(c, skip, s, vb.pp(format!("up.{j}")))?);
            c = c / 4 + skip / 2;
        }
        if c % 4 != 0 {
            bail!("Res-U-Net: {c} channels at the head cannot be pixel-shuffled by 2 ({cfg:?})");
        }
        let head = CatConv::new(c, b, cfg.num_classes, s, vb.pp("head"))?;
        Ok(ResUNet {
            cfg: *cfg,
            conv0,
            down,
            up,
            head,
        })
    }

    /// Creates the network's variables in a new `VarMap` and initialises
    /// them from a ChaCha8 stream seeded by `seed`, in name order, so a seed
    /// gives the same model on every device: convolution weights Kaiming
    /// normal for LeakyReLU(`negative_slope`) (`std = sqrt(2 / (1 + a²)) /
    /// sqrt(fan_in)`), convolution biases 0, BatchNorm weight 1, bias 0,
    /// running mean 0, running variance 1.
    pub fn init(
        cfg: &ResUNetConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<(ResUNet, VarMap)> {
        let varmap = VarMap::new();
        let model = ResUNet::new(cfg, VarBuilder::from_varmap(&varmap, dtype, device))?;
        let a = cfg.negative_slope;
        let gain = (2.0 / (1.0 + a * a)).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data = varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let shape = var.shape().clone();
            let t = if name.ends_with("running_var")
                || (name.contains(".bn") && name.ends_with(".weight"))
            {
                Tensor::ones(&shape, dtype, device)?
            } else if shape.rank() == 4 && name.ends_with(".weight") {
                let dims = shape.dims();
                let fan_in = dims[1] * dims[2] * dims[3];
                let normal = Normal::new(0.0, gain / (fan_in as f64).sqrt()).expect("std > 0");
                let v: Vec<f64> = (0..shape.elem_count())
                    .map(|_| normal.sample(&mut rng))
                    .collect();
                Tensor::from_vec(v, &shape, &Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(device)?
            } else {
                Tensor::zeros(&shape, dtype, device)?
            };
            var.set(&t)?;
        }
        drop(data);
        Ok((model, varmap))
    }

    /// Loads a checkpoint (safetensors, PyTorch names, docs/METHOD.md §2) for inference or
    /// fine-tuning: its tensors become the variables of a new `VarMap`.
    ///
    /// Nothing is allocated at the size `cfg` claims: every tensor the
    /// model asks for is first compared, by shape and dtype, with the file's
    /// header, and the variables are made from the file's tensors (no random
    /// initialisation), so memory is bounded by the file, whatever `cfg`
    /// says.
    pub fn load(
        cfg: &ResUNetConfig,
        path: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<(ResUNet, VarMap)> {
        cfg.validate()?;
        let path = path.as_ref();
        let st = crate::host::mmap_safetensors(path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        let file = CheckedFile {
            st: std::sync::Arc::new(st),
            path: path.to_path_buf(),
            cfg: *cfg,
            loaded: Default::default(),
        };
        // First pass: the file's tensors, checked one by one against the
        // shapes the model asks for.
        ResUNet::new(
            cfg,
            VarBuilder::from_backend(Box::new(file.clone()), dtype, device.clone()),
        )?;
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for (name, t) in file.loaded.lock().expect("loaded lock").drain() {
                data.insert(name, candle_core::Var::from_tensor(&t)?);
            }
        }
        // Second pass: the model over those variables (found by name, so
        // nothing is initialised).
        let model = ResUNet::new(cfg, VarBuilder::from_varmap(&varmap, dtype, device))?;
        Ok((model, varmap))
    }

    /// The model's configuration.
    pub fn config(&self) -> &ResUNetConfig {
        &self.cfg
    }

    /// Trainable parameters (BatchNorm running statistics excluded, as
    /// PyTorch's `model.parameters()`).
    pub fn num_parameters(varmap: &VarMap) -> usize {
        let data = varmap.data().lock().expect("varmap lock");
        data.iter()
            .filter(|(name, _)| !name.contains("running_"))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        self.cfg.check_input(x)
    }
}

impl ModuleT for ResUNet {
    /// # Shapes
    /// `(B, in_channels, H, W)` → logits `(B, num_classes, H, W)`; H and W
    /// divisible by 2^depth.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let first = self.conv0.forward_t(x, train)?;
        let mut feats = Vec::with_capacity(self.down.len());
        let mut h = first.clone();
        for d in &self.down {
            h = d.forward_t(&h, train)?;
            feats.push(h.clone());
        }
        let depth = self.cfg.depth;
        for (j, u) in self.up.iter().enumerate() {
            h = u.forward_t(&h, &feats[depth - 2 - j], train)?;
        }
        self.head.forward_t(&h, &first, train)
    }
}
