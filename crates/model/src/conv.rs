//! Convolution whose CPU backward runs on gemm.
//!
//! candle 0.11.1 computes a CPU convolution's input gradient with a direct
//! loop (`conv_transpose2d`) that uses no matrix product; it dominates a
//! training step. Here a convolution on the CPU is written as
//! `W · im2col(x)`: [`Im2Col`] is a custom op whose backward is its adjoint
//! [`Col2Im`], and the product is candle's batched matmul (gemm), so the
//! weight gradient (`dY · colsᵀ`) and the input gradient
//! (`col2im(Wᵀ · dY)`) are both gemm plus a scatter. Other devices and
//! dtypes use candle's own `conv2d`.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor, bail};
use candle_nn::{Conv2d, Conv2dConfig};
use rayon::prelude::*;

/// Unfolds `(B, C, H, W)` into `(B, C·k·k, Ho·Wo)` patches (zero padding).
#[derive(Debug, Clone, Copy)]
pub struct Im2Col {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

/// The adjoint of [`Im2Col`]: folds `(B, C·k·k, Ho·Wo)` back into
/// `(B, C, H, W)`, summing overlapping contributions.
#[derive(Debug, Clone, Copy)]
pub struct Col2Im {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

fn out_size(n: usize, k: usize, stride: usize, pad: usize) -> usize {
    (n + 2 * pad - k) / stride + 1
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: f32 only")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what}: input must be contiguous")
    };
    Ok(&v[a..b])
}

/// For output position `o` along one axis and kernel offset `ki`, the input
/// index, if inside.
#[inline]
fn src_index(o: usize, ki: usize, stride: usize, pad: usize, n: usize) -> Option<usize> {
    (o * stride + ki).checked_sub(pad).filter(|&i| i < n)
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "kseg-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "im2col")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let Im2Col { k, stride, pad } = *self;
        let (ho, wo) = (out_size(h, k, stride, pad), out_size(w, k, stride, pad));
        let cols = ho * wo;
        let mut out = vec![0f32; b * c * k * k * cols];
        // One output row per (batch, channel, ki, kj): rows are independent.
        out.par_chunks_mut(cols).enumerate().for_each(|(row, dst)| {
            let kj = row % k;
            let ki = row / k % k;
            let ch = row / (k * k) % c;
            let bi = row / (k * k * c);
            let plane = &x[(bi * c + ch) * h * w..][..h * w];
            for oy in 0..ho {
                let d = &mut dst[oy * wo..(oy + 1) * wo];
                let Some(iy) = src_index(oy, ki, stride, pad, h) else {
                    continue; // stays zero
                };
                let src = &plane[iy * w..(iy + 1) * w];
                if stride == 1 {
                    // ix = ox + kj - pad: a shifted copy.
                    let lo = pad.saturating_sub(kj);
                    let hi = (w + pad).saturating_sub(kj).min(wo);
                    if lo < hi {
                        d[lo..hi].copy_from_slice(&src[lo + kj - pad..hi + kj - pad]);
                    }
                } else {
                    for (ox, v) in d.iter_mut().enumerate() {
                        if let Some(ix) = src_index(ox, kj, stride, pad, w) {
                            *v = src[ix];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c * k * k, cols))))
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

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "kseg-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, "col2im")?;
        let Col2Im {
            k,
            stride,
            pad,
            c,
            h,
            w,
        } = *self;
        let (b, rows, cols) = l.shape().dims3()?;
        let (ho, wo) = (out_size(h, k, stride, pad), out_size(w, k, stride, pad));
        if rows != c * k * k || cols != ho * wo {
            bail!(
                "col2im: input {:?} does not fit C={c}, k={k}, {h}x{w}",
                l.shape()
            );
        }
        let mut out = vec![0f32; b * c * h * w];
        // One output plane per (batch, channel): it gathers its k·k rows.
        out.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane_i, dst)| {
                let (bi, ch) = (plane_i / c, plane_i % c);
                for ki in 0..k {
                    for kj in 0..k {
                        let row = (ch * k + ki) * k + kj;
                        let src = &g[(bi * rows + row) * cols..][..cols];
                        for oy in 0..ho {
                            let Some(iy) = src_index(oy, ki, stride, pad, h) else {
                                continue;
                            };
                            let d = &mut dst[iy * w..(iy + 1) * w];
                            let s = &src[oy * wo..(oy + 1) * wo];
                            if stride == 1 {
                                let lo = pad.saturating_sub(kj);
                                let hi = (w + pad).saturating_sub(kj).min(wo);
                                if lo < hi {
                                    let d = &mut d[lo + kj - pad..hi + kj - pad];
                                    for (dv, sv) in d.iter_mut().zip(&s[lo..hi]) {
                                        *dv += sv;
                                    }
                                }
                            } else {
                                for (ox, sv) in s.iter().enumerate() {
                                    if let Some(ix) = src_index(ox, kj, stride, pad, w) {
                                        d[ix] += sv;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
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

/// A square convolution (no groups, no dilation) with PyTorch's parameter
/// names (`weight`, optional `bias`). On the CPU in f32 it runs as
/// `W · im2col(x)` (gemm in both directions of backward); elsewhere it is
/// candle's `conv2d`.
#[derive(Debug, Clone)]
pub struct Conv {
    inner: Conv2d,
}

impl Conv {
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
        let (o, ci, k, k2) = wt.dims4()?;
        let usable = x.device().is_cpu()
            && x.dtype() == DType::F32
            && wt.dtype() == DType::F32
            && cfg.groups == 1
            && cfg.dilation == 1
            && k == k2;
        if !usable {
            return self.inner.forward(x);
        }
        let (b, c, h, w) = x.dims4()?;
        if c != ci {
            bail!("conv: input has {c} channels, the weight expects {ci}");
        }
        let (s, p) = (cfg.stride, cfg.padding);
        if h + 2 * p < k || w + 2 * p < k {
            bail!("conv: input {h}x{w} is smaller than the kernel {k} with padding {p}");
        }
        let (ho, wo) = (out_size(h, k, s, p), out_size(w, k, s, p));
        let cols = if k == 1 && s == 1 && p == 0 {
            x.reshape((b, c, h * w))?
        } else {
            x.contiguous()?.apply_op1(Im2Col {
                k,
                stride: s,
                pad: p,
            })?
        };
        let w2 = wt.reshape((o, c * k * k))?;
        let y = w2.broadcast_matmul(&cols)?.reshape((b, o, ho, wo))?;
        match self.inner.bias() {
            Some(bias) => y.broadcast_add(&bias.reshape((1, o, 1, 1))?),
            None => Ok(y),
        }
    }
}
