//! BatchNorm2d fused with the residual add and LeakyReLU that follow it.
//!
//! Every BatchNorm of the Res-U-Net is followed by `LeakyReLU(bn(x))` or
//! `LeakyReLU(bn(x) + residual)`. candle's `BatchNorm` in training mode is a
//! chain of tensor ops (transpose + copy, subtract, square, divide, multiply,
//! add, transpose back) whose autograd keeps several activation-sized
//! intermediates, and the activation adds three more. On the CPU in f32,
//! [`BatchNorm2d::forward_act`] computes `act(bn(x) [+ r])` in one custom op
//! ([`BnAct`]) that keeps only its input and output and has a hand-written
//! backward; elsewhere (CUDA, Metal, f64) it is candle's `BatchNorm` followed
//! by the same add and activation as tensor ops. Both update the running
//! statistics like PyTorch (momentum 0.1, unbiased running variance).

//!
//! Layout: this file holds the layer; `norm/cpu.rs` its CPU op ([`BnAct`]).

use std::sync::{Arc, OnceLock};

use candle_core::{DType, ModuleT, Result, Tensor, Var, bail};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder};

use crate::act::leaky_relu;

mod cpu;

pub use cpu::BnAct;
use cpu::Stats;

/// PyTorch's `BatchNorm2d` (eps 1e-5, momentum 0.1, affine; names `weight`,
/// `bias`, `running_mean`, `running_var`).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    inner: BatchNorm,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm2d {
    /// Added to the variance (PyTorch's default).
    pub const EPS: f64 = 1e-5;
    /// Weight of the new batch in the running statistics (PyTorch's default).
    pub const MOMENTUM: f64 = 0.1;

    /// A BatchNorm over `c` channels with its parameters and running statistics under `vb`.
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let inner = candle_nn::batch_norm(
            c,
            BatchNormConfig {
                eps: Self::EPS,
                remove_mean: true,
                affine: true,
                momentum: Self::MOMENTUM,
            },
            vb,
        )?;
        // The running statistics are variables of the VarMap: these share
        // their storage, so updating them updates what a checkpoint saves.
        Ok(BatchNorm2d {
            running_mean: Var::from_tensor(inner.running_mean())?,
            running_var: Var::from_tensor(inner.running_var())?,
            inner,
        })
    }

    /// `LeakyReLU_slope(bn(x) + residual)`; `slope` 1 is the identity, no
    /// `residual` adds nothing. In training mode the batch statistics are
    /// used and the running ones updated.
    ///
    /// # Shapes
    /// `x` and `residual`: `(B, C, H, W)`.
    pub fn forward_act(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        slope: f64,
        train: bool,
    ) -> Result<Tensor> {
        // The fused backward reads the activation's side from the sign of
        // the output, which needs a positive slope (0, ReLU, takes the
        // tensor ops).
        let fused = slope > 0.0
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.running_mean.dtype() == DType::F32
            && residual.is_none_or(|r| r.dtype() == DType::F32);
        if !fused {
            let y = self.inner.forward_t(x, train)?;
            let y = match residual {
                Some(r) => (y + r)?,
                None => y,
            };
            return if slope == 1.0 {
                Ok(y)
            } else {
                leaky_relu(&y, slope)
            };
        }
        let (b, c, h, w) = x.dims4()?;
        if c != self.running_mean.dim(0)? {
            bail!(
                "batch norm: input has {c} channels, the layer {}",
                self.running_mean.dim(0)?
            );
        }
        if let Some(r) = residual
            && r.dims() != x.dims()
        {
            bail!(
                "batch norm: residual {:?} does not match the input {:?}",
                r.dims(),
                x.dims()
            );
        }
        let (weight, bias) = self
            .inner
            .weight_and_bias()
            .expect("BatchNorm2d is built affine");
        let gb = Tensor::stack(&[weight, bias], 0)?;
        let stats = if train {
            Stats::Batch(Arc::new(OnceLock::new()))
        } else {
            let mean = self.running_mean.to_vec1::<f32>()?;
            let invstd = self
                .running_var
                .to_vec1::<f32>()?
                .iter()
                .map(|&v| (1.0 / (v as f64 + Self::EPS).sqrt()) as f32)
                .collect();
            Stats::Running(Arc::new((mean, invstd)))
        };
        let op = BnAct {
            eps: Self::EPS,
            slope: slope as f32,
            stats: stats.clone(),
        };
        let x = x.contiguous()?;
        let y = match residual {
            Some(r) => x.apply_op3(&gb, &r.contiguous()?, op)?,
            None => x.apply_op2(&gb, op)?,
        };
        if let Stats::Batch(batch) = stats {
            let Some(batch) = batch.get() else {
                bail!("batch norm: the fused op did not record its statistics")
            };
            let n = (b * h * w) as f64;
            let m = Self::MOMENTUM;
            let dev = x.device();
            let mean = Tensor::from_vec(batch.mean.clone(), c, dev)?;
            let var = Tensor::from_vec(batch.var.clone(), c, dev)?;
            let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
            let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
            let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (var * (m * unbias))?)?;
            self.running_mean.set(&rm)?;
            self.running_var.set(&rv)?;
        }
        Ok(y)
    }
}
