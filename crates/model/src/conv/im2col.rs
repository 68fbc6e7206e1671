//! Unfolding convolution patches: the geometry of one convolution
//! ([`Geo`], [`Dims`]), the row copies that unfold and fold patches, and
//! [`Im2Col`] / [`Col2Im`] as candle ops of their own (the tests' reference
//! for the tiled products in `cpu.rs`).

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::host::{Mat, f32_slice};

/// Unfolds `(B, C, H, W)` into `(B, C·k·k, Ho·Wo)` patches (zero padding).
#[derive(Debug, Clone, Copy)]
pub struct Im2Col {
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

/// The adjoint of [`Im2Col`]: folds `(B, C·k·k, Ho·Wo)` back into
/// `(B, C, H, W)`, summing overlapping contributions.
#[derive(Debug, Clone, Copy)]
pub struct Col2Im {
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
}

pub(crate) fn out_size(n: usize, k: usize, stride: usize, pad: usize) -> usize {
    (n + 2 * pad - k) / stride + 1
}

/// For output position `o` along one axis and kernel offset `ki`, the input
/// index, if inside.
#[inline]
pub(super) fn src_index(o: usize, ki: usize, stride: usize, pad: usize, n: usize) -> Option<usize> {
    (o * stride + ki).checked_sub(pad).filter(|&i| i < n)
}

/// `dst[j] = src[j·stride]` for every `j` of `dst`. Stride 2 (the
/// down-sampling convolutions) has its own loop over an exactly sized
/// source: no `step_by` iterator state and no bounds check per element
/// (the `step_by` loop was about 45% of the unfold's time in the 128²
/// training step's profile).
#[inline]
fn gather(dst: &mut [f32], src: &[f32], stride: usize) {
    let n = dst.len();
    if n == 0 {
        return;
    }
    match stride {
        1 => dst.copy_from_slice(&src[..n]),
        2 => {
            let src = &src[..2 * n - 1];
            for (j, v) in dst.iter_mut().enumerate() {
                *v = src[2 * j];
            }
        }
        _ => {
            for (v, &sv) in dst.iter_mut().zip(src.iter().step_by(stride)) {
                *v = sv;
            }
        }
    }
}

/// `dst[j·stride] += src[j]` for every `j` of `src`: the adjoint of
/// [`gather`].
#[inline]
fn scatter_add(dst: &mut [f32], src: &[f32], stride: usize) {
    let n = src.len();
    if n == 0 {
        return;
    }
    match stride {
        1 => {
            for (d, s) in dst[..n].iter_mut().zip(src) {
                *d += s;
            }
        }
        2 => {
            let dst = &mut dst[..2 * n - 1];
            for (j, s) in src.iter().enumerate() {
                dst[2 * j] += s;
            }
        }
        _ => {
            for (d, s) in dst.iter_mut().step_by(stride).zip(src) {
                *d += s;
            }
        }
    }
}

/// The geometry of one convolution: input plane `h`×`w`, square kernel
/// `k`, stride, zero padding, output plane `ho`×`wo`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geo {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geo {
    pub(super) fn new(h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Geo {
        Geo {
            h,
            w,
            k,
            stride,
            pad,
            ho: out_size(h, k, stride, pad),
            wo: out_size(w, k, stride, pad),
        }
    }

    /// Writes output rows `oys` of the patch row of kernel offset
    /// `kk` = ki·k + kj of one input `plane` into `dst` (`oys.len()·wo`,
    /// zero where the patch is in the padding).
    pub(super) fn unfold_row(&self, plane: &[f32], kk: usize, oys: Range<usize>, dst: &mut [f32]) {
        let (w, wo) = (self.w, self.wo);
        let (ki, kj) = (kk / self.k, kk % self.k);
        let (lo, hi, src_lo) = self.span(kj);
        for (d, oy) in dst.chunks_exact_mut(wo).zip(oys) {
            let Some(iy) = src_index(oy, ki, self.stride, self.pad, self.h) else {
                d.fill(0.0);
                continue;
            };
            let src = &plane[iy * w..(iy + 1) * w];
            d[..lo].fill(0.0);
            d[hi..].fill(0.0);
            gather(&mut d[lo..hi], &src[src_lo..], self.stride);
        }
    }

    /// Kernel column `kj`: output columns `lo..hi` read the input columns
    /// `src_lo, src_lo + stride, ...` (`ix = ox·stride + kj - pad`); the
    /// others fall in the padding (all of them when `lo == hi`, and then
    /// `src_lo` is 0).
    fn span(&self, kj: usize) -> (usize, usize, usize) {
        let s = self.stride;
        let lo = self.pad.saturating_sub(kj).div_ceil(s).min(self.wo);
        let hi = (self.w + self.pad)
            .saturating_sub(kj)
            .div_ceil(s)
            .min(self.wo)
            .max(lo);
        if lo == hi {
            return (lo, hi, 0);
        }
        // lo·s + kj >= pad by the choice of lo.
        (lo, hi, lo * s + kj - self.pad)
    }

    /// Adds the `k·k` patch rows of one channel for output rows `oys`
    /// (`rows`, `k·k·oys.len()·wo`) back into its input `plane` (the
    /// adjoint of [`Geo::unfold_row`]).
    pub(super) fn fold_rows(&self, rows: &[f32], oys: Range<usize>, plane: &mut [f32]) {
        let (k, w, wo) = (self.k, self.w, self.wo);
        let n = oys.len() * wo;
        for ki in 0..k {
            for kj in 0..k {
                let (lo, hi, src_lo) = self.span(kj);
                let src = &rows[(ki * k + kj) * n..][..n];
                for (s, oy) in src.chunks_exact(wo).zip(oys.clone()) {
                    let Some(iy) = src_index(oy, ki, self.stride, self.pad, self.h) else {
                        continue;
                    };
                    let d = &mut plane[iy * w..(iy + 1) * w];
                    scatter_add(&mut d[src_lo..], &s[lo..hi], self.stride);
                }
            }
        }
    }
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
            let (bi, r) = (row / (c * k * k), row % (c * k * k));
            let geo = Geo::new(h, w, k, stride, pad);
            let ch = r / (k * k);
            geo.unfold_row(
                &x[(bi * c + ch) * h * w..][..h * w],
                r % (k * k),
                0..ho,
                dst,
            );
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
        let geo = Geo::new(h, w, k, stride, pad);
        // One output plane per (batch, channel): it gathers its k·k rows.
        out.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane_i, dst)| {
                let (bi, ch) = (plane_i / c, plane_i % c);
                let rows_of = &g[(bi * rows + ch * k * k) * cols..][..k * k * cols];
                geo.fold_rows(rows_of, 0..ho, dst);
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

/// The sizes of one convolution: `b` samples of `c` channels in, `o` out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub(super) b: usize,
    pub(super) c: usize,
    pub(super) o: usize,
    pub(super) geo: Geo,
}

impl Dims {
    pub(super) fn ckk(&self) -> usize {
        self.c * self.geo.k * self.geo.k
    }

    pub(super) fn n(&self) -> usize {
        self.geo.ho * self.geo.wo
    }

    pub(super) fn chw(&self) -> usize {
        self.c * self.geo.h * self.geo.w
    }

    /// `true` when the patches of a sample are the sample itself.
    pub(super) fn pointwise(&self) -> bool {
        self.geo.k == 1 && self.geo.stride == 1 && self.geo.pad == 0
    }

    /// The `(c·k·k, oys.len()·wo)` patches of output rows `oys` of sample
    /// `xb`: a view of the sample for a pointwise convolution, else
    /// unfolded into `cols`.
    pub(super) fn patches<'a>(
        &self,
        xb: &'a [f32],
        oys: Range<usize>,
        cols: &'a mut Vec<f32>,
        threads: usize,
    ) -> Mat<'a> {
        let geo = &self.geo;
        let (kk, hw, wo) = (geo.k * geo.k, geo.h * geo.w, geo.wo);
        if self.pointwise() {
            return Mat::rows(&xb[oys.start * wo..], hw);
        }
        let nc = oys.len() * wo;
        cols.resize(self.ckk() * nc, 0.0);
        let row = |(r, dst): (usize, &mut [f32])| {
            geo.unfold_row(&xb[r / kk * hw..][..hw], r % kk, oys.clone(), dst)
        };
        if threads > 1 {
            cols.par_chunks_mut(nc).enumerate().for_each(row);
        } else {
            cols.chunks_mut(nc).enumerate().for_each(row);
        }
        Mat::rows(cols, nc)
    }
}
