//! The convolution's custom ops, one `impl` per op for every device:
//! `cpu_fwd` runs `cpu.rs`'s kernels, `cuda_fwd` (with the `cuda` feature)
//! `cuda.rs`'s, and `bwd` dispatches on the device of its tensors.
//!
//! - [`ConvGemm`]: `y = W ⋆ x [+ bias]`, `CustomOp2` on `(x, W)` and
//!   `CustomOp3` on `(x, W, bias)`;
//! - `Im2Col` / `Col2Im` (tests only): the unfolding and its adjoint as
//!   ops of their own, the reference the tiled products are checked by.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::cpu::{self, Dims};
#[cfg(feature = "cuda")]
use super::cuda;
use super::im2col::Geo;

/// A convolution, `y = W ⋆ x [+ bias]`, as one custom op, `CustomOp2` on
/// `(x, W)` or `CustomOp3` on `(x, W, bias)`. On the CPU (f32) each
/// sample's output rows are cut into tiles whose im2col patches fit in a
/// core's L2 cache, and each tile is one gemm product (onto the bias, whose
/// gradient is the per-channel sum of `dy`). The backward recomputes the
/// patches instead of keeping them: `dW = Σ dy_tile · patches_tileᵀ`, and
/// `dx` (only when autograd tracks `x`, i.e. not for the network's input)
/// is at stride 1 the forward convolution of `dy` with the flipped kernel,
/// else `Wᵀ · dy` folded back. Tiles run in parallel when there are
/// enough of them for the threads, else each product is parallel. 3×3
/// convolutions at stride 1, padding 1, with at least 16 channels in and
/// out on planes of at least 128×128 (or 128 channels on planes of at least
/// 32×32) use Winograd's F(2×2, 3×3) for the forward, `dx` and `dW`
/// instead (fewer multiply-adds; rounding within a few units in the last
/// place, like the direct sum). See `cpu.rs` and `winograd.rs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGemm {
    /// Stride.
    pub(crate) stride: usize,
    /// Zero padding on each side.
    pub(crate) pad: usize,
}

impl ConvGemm {
    /// `y = W ⋆ x [+ bias]` as a tracked op (the inputs made contiguous),
    /// after checking that `x` has the weight's input channels (the op
    /// checks that the bias has one value per output channel).
    pub(super) fn apply(self, x: &Tensor, wt: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (c, ci) = (x.dims4()?.1, wt.dim(1)?);
        if c != ci {
            bail!("conv: input has {c} channels, the weight expects {ci}");
        }
        let (x, wt) = (x.contiguous()?, wt.contiguous()?);
        match bias {
            Some(bias) => x.apply_op3(&wt, &bias.contiguous()?, self),
            None => x.apply_op2(&wt, self),
        }
    }

    /// The sizes of the convolution of `x` by `W`, checked.
    pub(super) fn dims(&self, xl: &Layout, wl: &Layout) -> Result<Dims> {
        let (b, c, h, w) = xl.shape().dims4()?;
        let (o, ci, k, k2) = wl.shape().dims4()?;
        if ci != c || k != k2 {
            bail!(
                "conv: input {:?} and weight {:?} do not fit",
                xl.shape(),
                wl.shape()
            );
        }
        if self.stride == 0 || k == 0 {
            bail!("conv: stride and kernel size must be at least 1");
        }
        if h + 2 * self.pad < k || w + 2 * self.pad < k {
            bail!(
                "conv: input {h}x{w} is smaller than the kernel {k} with padding {}",
                self.pad
            );
        }
        let geo = Geo::new(h, w, k, self.stride, self.pad);
        Ok(Dims { b, c, o, geo })
    }

    /// `(dx, dW)`: dx only when autograd tracks `x`.
    fn grads(&self, x: &Tensor, wt: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return cuda::grads(self, x, wt, dy);
        }
        if x.device().is_cpu() {
            return cpu::grads(self, x, wt, dy);
        }
        bail!("conv: no backward on {:?}", x.device().location())
    }

    /// The bias gradient: the per-channel sum of `dy`.
    fn bias_grad(dy: &Tensor, bias: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if dy.device().is_cuda() {
            return cuda::bias_grad(dy, bias);
        }
        if dy.device().is_cpu() {
            return cpu::bias_grad(dy, bias);
        }
        bail!("conv: no bias gradient on {:?}", dy.device().location())
    }
}

impl CustomOp2 for ConvGemm {
    fn name(&self) -> &'static str {
        "kseg-conv-gemm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu::forward(self, xs, xl, ws, wl, None)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, xs, xl, ws, wl, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, wt, dy)?;
        Ok((dx, Some(dw)))
    }
}

/// The convolution with its bias (arg 3, `(O,)`) added in the same pass;
/// the bias gradient is the per-channel sum of the output gradient.
impl CustomOp3 for ConvGemm {
    fn name(&self) -> &'static str {
        "kseg-conv-gemm-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu::forward(self, xs, xl, ws, wl, Some((bs, bl)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, xs, xl, ws, wl, Some((bs, bl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, wt, dy)?;
        Ok((dx, Some(dw), Some(Self::bias_grad(dy, bias)?)))
    }
}

/// Unfolds `(B, C, H, W)` into `(B, C·k·k, Ho·Wo)` patches (zero padding).
/// The tests' reference for the tiled products (CPU only).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Im2Col {
    /// Kernel size.
    pub(crate) k: usize,
    /// Stride.
    pub(crate) stride: usize,
    /// Zero padding on each side.
    pub(crate) pad: usize,
}

/// The adjoint of [`Im2Col`]: folds `(B, C·k·k, Ho·Wo)` back into
/// `(B, C, H, W)`, summing overlapping contributions.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Col2Im {
    /// Kernel size.
    pub(crate) k: usize,
    /// Stride.
    pub(crate) stride: usize,
    /// Zero padding on each side.
    pub(crate) pad: usize,
    /// Input channels.
    pub(crate) c: usize,
    /// Input height.
    pub(crate) h: usize,
    /// Input width.
    pub(crate) w: usize,
}

#[cfg(test)]
impl candle_core::CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "kseg-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu::im2col(self, s, l)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, c, h, w) = arg.dims4()?;
        let Im2Col { k, stride, pad } = *self;
        let fold = Col2Im {
            k,
            stride,
            pad,
            c,
            h,
            w,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1(fold)?))
    }
}

#[cfg(test)]
impl candle_core::CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "kseg-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu::col2im(self, s, l)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let Col2Im { k, stride, pad, .. } = *self;
        Ok(Some(grad_res.contiguous()?.apply_op1(Im2Col {
            k,
            stride,
            pad,
        })?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::{Col2Im, Im2Col};

    fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// `Σ a·b` in f64.
    fn dot(a: &Tensor, b: &Tensor) -> f64 {
        let p = (a.to_dtype(DType::F64).unwrap() * b.to_dtype(DType::F64).unwrap()).unwrap();
        p.sum_all().unwrap().to_scalar::<f64>().unwrap()
    }

    /// Also the check of the backward of the geometries where candle's
    /// conv2d is no reference (`tests/conv.rs`): the forward against
    /// candle's plus adjointness fix it.
    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), y> = <x, col2im(y)> for any x, y: col2im is the exact
        // transpose, so the input gradient is exact.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (k, stride, pad, h, w) in [
            (3, 1, 1, 6, 5),
            (3, 2, 1, 7, 8),
            (5, 2, 2, 9, 6),
            (5, 1, 2, 1, 1),
            (5, 2, 2, 2, 3),
            (3, 3, 1, 2, 5),
            (3, 3, 1, 11, 10),
        ] {
            let x = randn(&[2, 3, h, w], &mut rng);
            let cols = x.apply_op1(Im2Col { k, stride, pad }).unwrap();
            let y = randn(cols.dims(), &mut rng);
            let back = y
                .apply_op1(Col2Im {
                    k,
                    stride,
                    pad,
                    c: 3,
                    h,
                    w,
                })
                .unwrap();
            let (lhs, rhs) = (dot(&cols, &y), dot(&x, &back));
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }
}
