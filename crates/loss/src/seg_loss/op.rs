//! [`PartOp`]: one part of the loss as a custom op on the logits, one
//! `impl` for every device: `cpu_fwd` runs `cpu.rs`'s kernels, `cuda_fwd`
//! (with the `cuda` feature) `cuda.rs`'s, and `bwd` dispatches on the
//! device of the logits. Also the state the forward leaves for the
//! backward ([`Saved`]: the host's [`Kept`], or the device's).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};

use super::cpu;
#[cfg(feature = "cuda")]
use super::cuda;

/// What the backward of each part needs.
pub(super) struct Kept {
    /// `[B, C, H, W]`.
    pub(super) dims: [usize; 4],
    pub(super) dtype: DType,
    /// Softmax probabilities, `(B, C, H, W)`.
    pub(super) probs: Vec<f64>,
    /// The Lovász term's gradient with respect to `probs`.
    pub(super) lovasz_grad: Vec<f64>,
    /// `(B, H, W)`.
    pub(super) labels: Vec<u32>,
    /// Each pixel's cross-entropy weight over the sum of the weights (0 for
    /// ignored pixels, and everywhere when no pixel has weight).
    pub(super) ce_scale: Vec<f64>,
    pub(super) lambda: f64,
}

/// Which of the loss's three scalars.
#[derive(Debug, Clone, Copy)]
pub(super) enum Part {
    Total,
    Ce,
    Lovasz,
}

/// What a [`PartOp`] holds of its forward.
pub(super) enum Saved {
    /// The host loss (`cpu.rs`): its state and this part's value.
    Host { kept: Arc<Kept>, value: f64 },
    /// The device loss (`cuda.rs`): its state, the values on the device.
    #[cfg(feature = "cuda")]
    Cuda(Arc<cuda::DeviceKept>),
}

/// One part's value, as an op on the logits whose backward is that part's
/// gradient.
pub(crate) struct PartOp {
    pub(super) saved: Saved,
    pub(super) part: Part,
}

impl CustomOp1 for PartOp {
    fn name(&self) -> &'static str {
        "kseg-seg-loss"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::value(self)?, Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        _l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::value(self, s)?, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(feature = "cuda")]
        if arg.device().is_cuda() {
            return cuda::grad(self, arg, grad_res).map(Some);
        }
        if arg.device().is_cpu() {
            return cpu::grad(self, arg, grad_res).map(Some);
        }
        bail!("loss: no backward on {:?}", arg.device().location())
    }
}
