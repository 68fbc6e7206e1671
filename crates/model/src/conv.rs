//! Convolution whose CPU backward runs on gemm.
//!
//! candle 0.11.1 computes a CPU convolution's input gradient with a direct
//! loop (`conv_transpose2d`) that uses no matrix product; it dominates a
//! training step. Here a convolution on the CPU in f32 is [`ConvGemm`], a
//! custom op that computes `W · im2col(x)` tile by tile with the gemm crate
//! (each tile's patches sized to stay in cache), and whose backward is gemm
//! too: `dW = dY · colsᵀ`, and `dx` as the convolution of `dY` with the
//! flipped kernel (stride 1) or `col2im(Wᵀ · dY)`. The wide 3×3 stride-1
//! convolutions on large planes take Winograd's F(2×2, 3×3) instead
//! (`winograd`), forward and both gradients. [`Im2Col`] and its
//! adjoint [`Col2Im`] are the unfolding as candle ops on their own. Other
//! devices and dtypes use candle's own `conv2d`.
//!
//! Layout: this file holds the layer ([`Conv`]); `cpu.rs` its CPU op
//! ([`ConvGemm`]), with `im2col.rs` (patch geometry and unfolding),
//! `tiling.rs` (work split) and `winograd.rs` beside it. A CUDA op would be
//! `cuda.rs` (docs/ARCHITECTURE.md, "Where things go").

use candle_core::{DType, Module, Result, Tensor, bail};
use candle_nn::{Conv2d, Conv2dConfig};

mod cpu;
mod im2col;
mod tiling;
mod winograd;

pub use cpu::ConvGemm;
pub use im2col::{Col2Im, Im2Col};

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
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = *self.cfg();
        let wt = self.inner.weight();
        let (_, ci, k, k2) = wt.dims4()?;
        let bias = self.inner.bias();
        let usable = x.device().is_cpu()
            && x.dtype() == DType::F32
            && wt.dtype() == DType::F32
            && bias.is_none_or(|b| b.dtype() == DType::F32)
            && cfg.groups == 1
            && cfg.dilation == 1
            && k == k2;
        if !usable {
            return self.inner.forward(x);
        }
        let c = x.dims4()?.1;
        if c != ci {
            bail!("conv: input has {c} channels, the weight expects {ci}");
        }
        let op = ConvGemm {
            stride: cfg.stride,
            pad: cfg.padding,
        };
        let (x, wt) = (x.contiguous()?, wt.contiguous()?);
        match bias {
            // The op checks that the bias has `o` values.
            Some(bias) => x.apply_op3(&wt, &bias.contiguous()?, op),
            None => x.apply_op2(&wt, op),
        }
    }
}
