//! The convolution's CUDA kernels (with the `cuda` feature): none yet, so
//! [`applies`] is false and a CUDA convolution is candle's `conv2d`. This
//! is where cuDNN's forward, backward-data and backward-filter calls go
//! (`../shared/GPU-DESIGN.md` §3.2): [`forward`] is [`ConvGemm`]'s
//! `cuda_fwd`, [`grads`] and [`bias_grad`] its backward, [`applies`] and
//! [`conv`] what the layer calls. Like `host.rs`, this file may hold
//! `unsafe` (kernel launches, uninitialised device buffers), each block
//! with a `// SAFETY:` comment.

use candle_core::{CudaStorage, Layout, Result, Shape, Tensor, bail};
use candle_nn::Conv2dConfig;

use super::op::ConvGemm;

/// Whether [`conv`] takes this convolution on CUDA: never yet.
/// With a kernel, this also asks the runtime's switch, [`crate::gpu_ops`]
/// (kseg's own CUDA ops stay off until a recorded GPU run verifies them).
pub(super) fn applies(
    _x: &Tensor,
    _wt: &Tensor,
    _bias: Option<&Tensor>,
    _cfg: &Conv2dConfig,
) -> bool {
    false
}

/// `y = W ⋆ x [+ bias]` as [`ConvGemm`] (where [`applies`]).
pub(super) fn conv(
    x: &Tensor,
    wt: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
) -> Result<Tensor> {
    let op = ConvGemm {
        stride: cfg.stride,
        pad: cfg.padding,
    };
    op.apply(x, wt, bias)
}

/// [`ConvGemm`]'s forward on CUDA.
pub(super) fn forward(
    _op: &ConvGemm,
    _xs: &CudaStorage,
    _xl: &Layout,
    _ws: &CudaStorage,
    _wl: &Layout,
    _bias: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    bail!("conv: no CUDA kernel yet (conv::cuda::applies is false)")
}

/// [`ConvGemm`]'s `(dx, dW)` on CUDA.
pub(super) fn grads(
    _op: &ConvGemm,
    _x: &Tensor,
    _wt: &Tensor,
    _dy: &Tensor,
) -> Result<(Option<Tensor>, Tensor)> {
    bail!("conv: no CUDA backward yet (conv::cuda::applies is false)")
}

/// The bias gradient on CUDA.
pub(super) fn bias_grad(_dy: &Tensor, _bias: &Tensor) -> Result<Tensor> {
    bail!("conv: no CUDA bias gradient yet (conv::cuda::applies is false)")
}
