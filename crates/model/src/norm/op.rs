//! [`BnAct`]: BatchNorm2d, the residual add and LeakyReLU as one custom op,
//! one `impl` for every device: `cpu_fwd` runs `cpu.rs`'s kernels,
//! `cuda_fwd` (with the `cuda` feature) `cuda.rs`'s, and `bwd` dispatches
//! on the device of its tensors. Also the state the forward leaves for the
//! backward ([`Stats`]).

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::cpu;
#[cfg(feature = "cuda")]
use super::cuda;

/// Batch statistics of one training forward: per channel mean and biased
/// variance (for the running statistics) and 1/sqrt(var + eps).
#[derive(Debug)]
pub(super) struct BatchStats {
    pub(super) mean: Vec<f32>,
    pub(super) var: Vec<f32>,
    pub(super) invstd: Vec<f32>,
}

#[derive(Debug, Clone)]
pub(super) enum Stats {
    /// Training: computed by the forward, read by the backward.
    Batch(Arc<OnceLock<BatchStats>>),
    /// Evaluation: (mean, 1/sqrt(var + eps)) of the running statistics.
    Running(Arc<(Vec<f32>, Vec<f32>)>),
}

/// `act(gamma · (x - mean) · invstd + beta [+ r])` as one custom op: arg 1
/// `x` `(B, C, H, W)`, arg 2 `[gamma; beta]` `(2, C)`, optional arg 3 `r`
/// like `x`. Its backward recomputes `x̂` from `x` and the saved statistics
/// and reads the activation's slope from the sign of the output.
#[derive(Debug, Clone)]
pub(crate) struct BnAct {
    /// Added to the variance before its square root.
    pub(super) eps: f64,
    pub(super) slope: f32,
    pub(super) stats: Stats,
}

impl BnAct {
    /// `act(bn(x) [+ r])` as a tracked op (the inputs made contiguous).
    pub(super) fn apply(self, x: &Tensor, gb: &Tensor, r: Option<&Tensor>) -> Result<Tensor> {
        let x = x.contiguous()?;
        match r {
            Some(r) => x.apply_op3(gb, &r.contiguous()?, self),
            None => x.apply_op2(gb, self),
        }
    }

    /// The statistics the forward normalised with: (mean, 1/sqrt(var + eps)).
    pub(super) fn mean_invstd(&self) -> Result<(&[f32], &[f32])> {
        Ok(match &self.stats {
            Stats::Batch(s) => match s.get() {
                Some(s) => (&s.mean, &s.invstd),
                None => bail!("batch norm: backward before forward"),
            },
            Stats::Running(s) => (&s.0, &s.1),
        })
    }

    /// Gradients with respect to `x`, `[gamma; beta]` and, when `with_r`,
    /// `r` (the pre-activation gradient).
    fn grads(
        &self,
        x: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        with_r: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return cuda::grads(self, x, gb, y, dy, with_r);
        }
        if x.device().is_cpu() {
            return cpu::grads(self, x, gb, y, dy, with_r);
        }
        bail!("batch norm: no backward on {:?}", x.device().location())
    }
}

impl CustomOp2 for BnAct {
    fn name(&self) -> &'static str {
        "kseg-bn-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu::forward(self, s1, l1, s2, l2, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, s1, l1, s2, l2, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dgb, _) = self.grads(x, gb, y, dy, false)?;
        Ok((Some(dx), Some(dgb)))
    }
}

/// Checks that the residual (arg 3) has the input's shape.
fn check_residual(l1: &Layout, l3: &Layout) -> Result<()> {
    if l3.shape() != l1.shape() {
        bail!(
            "batch norm: residual {:?} does not match the input {:?}",
            l3.shape(),
            l1.shape()
        );
    }
    Ok(())
}

impl CustomOp3 for BnAct {
    fn name(&self) -> &'static str {
        "kseg-bn-add-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_residual(l1, l3)?;
        cpu::forward(self, s1, l1, s2, l2, Some((s3, l3)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        check_residual(l1, l3)?;
        cuda::forward(self, s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        _r: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgb, dr) = self.grads(x, gb, y, dy, true)?;
        Ok((Some(dx), Some(dgb), dr))
    }
}
