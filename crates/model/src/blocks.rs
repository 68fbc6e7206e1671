//! The reference method's building blocks, named as in its code (docs/METHOD.md §2).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::conv::Conv;
use crate::norm::BatchNorm2d;

/// A convolution with a bias (PyTorch names `weight`, `bias`).
fn conv2d(cin: usize, cout: usize, k: usize, cfg: Conv2dConfig, vb: VarBuilder) -> Result<Conv> {
    Ok(Conv::new(candle_nn::conv2d(cin, cout, k, cfg, vb)?))
}

fn bn(c: usize, vb: VarBuilder) -> Result<BatchNorm2d> {
    BatchNorm2d::new(c, vb)
}

fn conv3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Conv> {
    Ok(Conv::new(candle_nn::conv2d_no_bias(
        cin,
        cout,
        3,
        Conv2dConfig {
            padding: 1,
            stride,
            ..Default::default()
        },
        vb,
    )?))
}

/// C(3, stride) without bias, `bn`, LeakyReLU: what `conv0` and a
/// shortcut [`Connector`] both are.
#[derive(Debug, Clone)]
pub(crate) struct ConvBnAct {
    pub(crate) conv: Conv,
    pub(crate) bn: BatchNorm2d,
    pub(crate) slope: f64,
}

impl ConvBnAct {
    fn new(cin: usize, cout: usize, stride: usize, slope: f64, vb: VarBuilder) -> Result<Self> {
        Ok(ConvBnAct {
            conv: conv3(cin, cout, stride, vb.pp("conv"))?,
            bn: bn(cout, vb.pp("bn"))?,
            slope,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn
            .forward_act(&self.conv.forward(x)?, None, self.slope, train)
    }
}

/// `conv0`: C(3,1) in→c, BN, LeakyReLU.
///
/// # Shapes
/// `(B, in, H, W)` → `(B, c, H, W)`.
#[derive(Debug, Clone)]
pub struct Conv0(pub(crate) ConvBnAct);

impl Conv0 {
    /// `cin` → `cout` channels at stride 1; `slope`: LeakyReLU's negative slope.
    pub fn new(cin: usize, cout: usize, slope: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Conv0(ConvBnAct::new(cin, cout, 1, slope, vb)?))
    }
}

impl ModuleT for Conv0 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.0.forward_t(x, train)
    }
}

/// The shortcut of a [`ResDownSample`]: `conv` C(3,2) c→2c, `bn`, LeakyReLU.
///
/// # Shapes
/// `(B, c, H, W)` → `(B, 2c, H/2, W/2)`.
#[derive(Debug, Clone)]
pub struct Connector(pub(crate) ConvBnAct);

impl Connector {
    /// `cin` → `cout` channels at stride 2; `slope`: LeakyReLU's negative slope.
    pub fn new(cin: usize, cout: usize, slope: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Connector(ConvBnAct::new(cin, cout, 2, slope, vb)?))
    }
}

impl ModuleT for Connector {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.0.forward_t(x, train)
    }
}

/// `down.i`: main path `conv1` C(3,2) c→2c, `bn1`, LR, `conv2` C(3,1), `bn2`;
/// plus the [`Connector`] shortcut; output LR(main + shortcut).
///
/// # Shapes
/// `(B, c, H, W)` → `(B, 2c, H/2, W/2)`.
#[derive(Debug, Clone)]
pub struct ResDownSample {
    pub(crate) conv1: Conv,
    pub(crate) bn1: BatchNorm2d,
    pub(crate) conv2: Conv,
    pub(crate) bn2: BatchNorm2d,
    pub(crate) shortcut: Connector,
    pub(crate) slope: f64,
}

impl ResDownSample {
    /// `cin` → `cout` channels, halving the plane; `slope`: LeakyReLU's negative slope.
    pub fn new(cin: usize, cout: usize, slope: f64, vb: VarBuilder) -> Result<Self> {
        Ok(ResDownSample {
            conv1: conv3(cin, cout, 2, vb.pp("conv1"))?,
            bn1: bn(cout, vb.pp("bn1"))?,
            conv2: conv3(cout, cout, 1, vb.pp("conv2"))?,
            bn2: bn(cout, vb.pp("bn2"))?,
            shortcut: Connector::new(cin, cout, slope, vb.pp("shortcut"))?,
            slope,
        })
    }
}

impl ModuleT for ResDownSample {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let m = self
            .bn1
            .forward_act(&self.conv1.forward(x)?, None, self.slope, train)?;
        let s = self.shortcut.forward_t(x, train)?;
        self.bn2
            .forward_act(&self.conv2.forward(&m)?, Some(&s), self.slope, train)
    }
}

/// PixelShuffle(2): `(B, c, H, W)` → `(B, c/4, 2H, 2W)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpSample;

impl Module for UpSample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::pixel_shuffle(x, 2)
    }
}

/// `up.j`: u = PixelShuffle(2)(x); `skip` C(1,1) s→s/2 (with bias) on the
/// encoder feature; cat = [u, skip(s)]; `conv1` C(3,1) m→m, `bn1`, LR,
/// `conv2` C(3,1) m→m, `bn2`; output LR(that + cat), m = c/4 + s/2.
///
/// # Shapes
/// `x`: `(B, c, H, W)`, `skip`: `(B, s, 2H, 2W)` → `(B, m, 2H, 2W)`.
#[derive(Debug, Clone)]
pub struct CatResBlock {
    pub(crate) skip: Conv,
    pub(crate) conv1: Conv,
    pub(crate) bn1: BatchNorm2d,
    pub(crate) conv2: Conv,
    pub(crate) bn2: BatchNorm2d,
    pub(crate) slope: f64,
}

impl CatResBlock {
    /// `c`: channels of `x`; `s`: channels of the skip input.
    pub fn new(c: usize, s: usize, slope: f64, vb: VarBuilder) -> Result<Self> {
        let m = c / 4 + s / 2;
        Ok(CatResBlock {
            skip: conv2d(s, s / 2, 1, Conv2dConfig::default(), vb.pp("skip"))?,
            conv1: conv3(m, m, 1, vb.pp("conv1"))?,
            bn1: bn(m, vb.pp("bn1"))?,
            conv2: conv3(m, m, 1, vb.pp("conv2"))?,
            bn2: bn(m, vb.pp("bn2"))?,
            slope,
        })
    }

    /// Up-samples `x`, concatenates the projected `skip` and applies the residual block.
    pub fn forward_t(&self, x: &Tensor, skip: &Tensor, train: bool) -> Result<Tensor> {
        let u = UpSample.forward(x)?;
        let cat = Tensor::cat(&[&u, &self.skip.forward(skip)?], 1)?;
        let m = self
            .bn1
            .forward_act(&self.conv1.forward(&cat)?, None, self.slope, train)?;
        self.bn2
            .forward_act(&self.conv2.forward(&m)?, Some(&cat), self.slope, train)
    }
}

/// `head`: u = PixelShuffle(2)(x); cat = [u, conv0 output]; `conv` C(3,1)
/// → base, `bn`, LR; `classifier` C(1,1) → classes (with bias).
///
/// # Shapes
/// `x`: `(B, c, H/2, W/2)`, `first`: `(B, base, H, W)` → `(B, classes, H, W)`.
#[derive(Debug, Clone)]
pub struct CatConv {
    pub(crate) conv: Conv,
    pub(crate) bn: BatchNorm2d,
    pub(crate) classifier: Conv,
    pub(crate) slope: f64,
}

impl CatConv {
    /// `c` channels in from below, `base` from `conv0`, `classes` logits out.
    pub fn new(c: usize, base: usize, classes: usize, slope: f64, vb: VarBuilder) -> Result<Self> {
        Ok(CatConv {
            conv: conv3(c / 4 + base, base, 1, vb.pp("conv"))?,
            bn: bn(base, vb.pp("bn"))?,
            classifier: conv2d(
                base,
                classes,
                1,
                Conv2dConfig::default(),
                vb.pp("classifier"),
            )?,
            slope,
        })
    }

    /// The logits from the last decoder output `x` and `conv0`'s output `first`.
    pub fn forward_t(&self, x: &Tensor, first: &Tensor, train: bool) -> Result<Tensor> {
        let u = UpSample.forward(x)?;
        let cat = Tensor::cat(&[&u, first], 1)?;
        let h = self
            .bn
            .forward_act(&self.conv.forward(&cat)?, None, self.slope, train)?;
        self.classifier.forward(&h)
    }
}
