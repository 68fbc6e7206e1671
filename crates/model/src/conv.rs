//! Convolution whose CPU backward runs on gemm.
//!
//! candle 0.11.1 computes a CPU convolution's input gradient with a direct
//! loop (`conv_transpose2d`) that uses no matrix product; it dominates a
//! training step. Here a convolution on the CPU in f32 is `ConvGemm`, a
//! custom op that computes `W · im2col(x)` tile by tile with the gemm crate
//! (each tile's patches sized to stay in cache), and whose backward is gemm
//! too: `dW = dY · colsᵀ`, and `dx` as the convolution of `dY` with the
//! flipped kernel (stride 1) or `col2im(Wᵀ · dY)`. The wide 3×3 stride-1
//! convolutions on large planes take Winograd's F(2×2, 3×3) instead
//! (`winograd`), forward and both gradients. Other devices and dtypes use
//! candle's own `conv2d`.
//!
//! Layout (docs/ARCHITECTURE.md, "Where things go"): this file holds the
//! layer ([`Conv`]), which tries each device's fast path in turn (`cuda`,
//! then `cpu`: each module's `applies`, then its `conv`) and falls back to
//! candle's `conv2d`; `op.rs` the custom op (`ConvGemm`, one `impl` for
//! every device); `cpu.rs` its CPU kernels, with `im2col.rs` (patch
//! geometry and unfolding), `tiling.rs` (work split) and `winograd.rs`
//! beside them; `cuda.rs` (with the `cuda` feature) its CUDA kernels.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};

mod cpu;
#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // kernel launches: see the crate's unsafe rule (lib.rs)
mod cuda;
pub(crate) mod fused;
mod im2col;
pub(crate) mod int8;
mod op;
mod plan;
mod tiling;
mod winograd;

/// A square convolution (no groups, no dilation) with PyTorch's parameter
/// names (`weight`, optional `bias`). On the CPU in f32 it runs as
/// `W · im2col(x)` (gemm in both directions of backward); elsewhere it is
/// candle's `conv2d`.
#[derive(Debug, Clone)]
pub struct Conv {
    inner: Conv2d,
}

impl Conv {
    /// Wraps candle's layer (its weight and optional bias).
    pub fn new(inner: Conv2d) -> Conv {
        Conv { inner }
    }

    fn cfg(&self) -> &Conv2dConfig {
        self.inner.config()
    }

    /// The weight `(o, c, k, k)`, the bias, the stride and the padding
    /// (what [`crate::frozen`] folds).
    pub(crate) fn parts(&self) -> (&Tensor, Option<&Tensor>, usize, usize) {
        let cfg = self.cfg();
        (
            self.inner.weight(),
            self.inner.bias(),
            cfg.stride,
            cfg.padding,
        )
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (wt, bias, cfg) = (self.inner.weight(), self.inner.bias(), self.cfg());
        #[cfg(feature = "cuda")]
        if cuda::applies(x, wt, bias, cfg) {
            return cuda::conv(x, wt, bias, cfg);
        }
        if cpu::applies(x, wt, bias, cfg) {
            return cpu::conv(x, wt, bias, cfg);
        }
        self.inner.forward(x)
    }
}
