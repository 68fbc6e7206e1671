//! The training-step problem that `examples/train_step.rs` and
//! `benches/model.rs` time (and `benches/compare/train_step.py` mirrors in
//! PyTorch): a seeded Res-U-Net, random images and labels, the bench class
//! weights and the trainer's AdamW. Included by both with `#[path]`.

use candle_core::{DType, Device, Result, Tensor};
use kseg::loss::{SegLoss, SegLossConfig};
use kseg::model::{ResUNet, ResUNetConfig};
use kseg::train::{AdamW, AdamWConfig};

pub struct StepProblem {
    pub model: ResUNet,
    /// `(batch, 3, size, size)` standard normal.
    pub x: Tensor,
    /// `(batch, size, size)` labels 0..=2.
    pub y: Tensor,
    /// Weighted CE (weights 0.3, 1, 2.5) + Lovász-Softmax.
    pub loss: SegLoss,
    /// The trainer's AdamW (decoupled decay skipping BN and biases; on the
    /// CPU one fused pass per variable), lr 1e-4.
    pub opt: AdamW,
}

impl StepProblem {
    pub fn new(cfg: &ResUNetConfig, batch: usize, size: usize, dev: &Device) -> Result<Self> {
        let (model, varmap) = ResUNet::init(cfg, 0, DType::F32, dev)?;
        let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), dev)?;
        let y = Tensor::rand(0f32, 3.0, (batch, size, size), dev)?
            .floor()?
            .to_dtype(DType::U32)?;
        let loss = SegLoss::new(
            SegLossConfig::default(),
            Some(Tensor::new(&[0.3f32, 1.0, 2.5], dev)?),
        )?;
        let vars = varmap.data().lock().expect("varmap").clone();
        let opt = AdamW::new(
            &vars,
            AdamWConfig {
                lr: 1e-4,
                ..Default::default()
            },
        )
        .map_err(candle_core::Error::wrap)?;
        Ok(StepProblem {
            model,
            x,
            y,
            loss,
            opt,
        })
    }
}
