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

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Storage,
    Tensor, bail,
};
use candle_nn::{Conv2d, Conv2dConfig};
use rayon::prelude::*;

use crate::norm::lane_sums;

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

/// The f32 values of a contiguous CPU storage.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: f32 only")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what}: input must be contiguous")
    };
    Ok(&v[a..b])
}

/// [`f32_slice`] of a tensor's storage (in a custom op's backward).
pub(crate) fn storage_f32<'a>(s: &'a Storage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(cs) => f32_slice(cs, l, what),
        _ => bail!("{what}: CPU storage expected"),
    }
}

/// For output position `o` along one axis and kernel offset `ki`, the input
/// index, if inside.
#[inline]
fn src_index(o: usize, ki: usize, stride: usize, pad: usize, n: usize) -> Option<usize> {
    (o * stride + ki).checked_sub(pad).filter(|&i| i < n)
}

/// The geometry of one convolution: input plane `h`×`w`, square kernel
/// `k`, stride, zero padding, output plane `ho`×`wo`.
#[derive(Debug, Clone, Copy)]
struct Geo {
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geo {
    fn new(h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Geo {
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

    /// Writes the patch row of kernel offset `kk` = ki·k + kj of one input
    /// `plane` into `dst` (`ho·wo`, zero where the patch is in the padding).
    fn unfold_row(&self, plane: &[f32], kk: usize, dst: &mut [f32]) {
        let (w, wo) = (self.w, self.wo);
        let (ki, kj) = (kk / self.k, kk % self.k);
        for oy in 0..self.ho {
            let d = &mut dst[oy * wo..(oy + 1) * wo];
            let Some(iy) = src_index(oy, ki, self.stride, self.pad, self.h) else {
                d.fill(0.0);
                continue;
            };
            let src = &plane[iy * w..(iy + 1) * w];
            let (lo, hi, src_lo) = self.span(kj);
            d[..lo].fill(0.0);
            d[hi..].fill(0.0);
            if self.stride == 1 {
                d[lo..hi].copy_from_slice(&src[src_lo..src_lo + hi - lo]);
            } else {
                let from = src[src_lo..].iter().step_by(self.stride);
                for (v, &sv) in d[lo..hi].iter_mut().zip(from) {
                    *v = sv;
                }
            }
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

    /// Adds the `k·k` patch rows of one channel (`rows`, `k·k·ho·wo`) back
    /// into its input `plane` (the adjoint of [`Geo::unfold_row`]).
    fn fold_rows(&self, rows: &[f32], plane: &mut [f32]) {
        let (k, w, n) = (self.k, self.w, self.ho * self.wo);
        for ki in 0..k {
            for kj in 0..k {
                let src = &rows[(ki * k + kj) * n..][..n];
                for oy in 0..self.ho {
                    let Some(iy) = src_index(oy, ki, self.stride, self.pad, self.h) else {
                        continue;
                    };
                    let d = &mut plane[iy * w..(iy + 1) * w];
                    let s = &src[oy * self.wo..(oy + 1) * self.wo];
                    let (lo, hi, src_lo) = self.span(kj);
                    if self.stride == 1 {
                        for (dv, sv) in d[src_lo..src_lo + hi - lo].iter_mut().zip(&s[lo..hi]) {
                            *dv += sv;
                        }
                    } else {
                        let to = d[src_lo..].iter_mut().step_by(self.stride);
                        for (dv, sv) in to.zip(&s[lo..hi]) {
                            *dv += sv;
                        }
                    }
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
            geo.unfold_row(&x[(bi * c + ch) * h * w..][..h * w], r % (k * k), dst);
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
                geo.fold_rows(rows_of, dst);
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

/// A row-major view of a matrix: element (i, j) at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Mat<'a> {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `(n, cols)` matrix.
    fn transposed(data: &'a [f32], cols: usize) -> Mat<'a> {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `dst (m×n, row-major) [+]= a (m×k) · b (k×n)` with the gemm crate.
fn sgemm(
    dst: &mut [f32],
    accumulate: bool,
    a: Mat,
    b: Mat,
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    let last = |x: Mat, r: usize, c: usize| (r - 1) * x.rs + (c - 1) * x.cs;
    assert!(
        dst.len() >= m * n && a.data.len() > last(a, m, k) && b.data.len() > last(b, k, n),
        "sgemm: operands smaller than {m}x{k} · {k}x{n}"
    );
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the bounds are checked above; dst does not alias a or b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// A convolution, `y = W ⋆ x [+ bias]`, as one custom op on the CPU (f32):
/// per sample, `y_b = W · im2col(x_b)` with the gemm crate (as `CustomOp2`
/// on `(x, W)`, or `CustomOp3` on `(x, W, bias)`, the product accumulating
/// onto the bias, whose gradient is the per-channel sum of `dy`). Its
/// backward recomputes the patches instead of keeping them (less memory),
/// accumulates `dW = Σ_b dy_b · im2col(x_b)ᵀ` in place, and computes
/// `dx_b = col2im(Wᵀ · dy_b)` only when `x` is tracked by autograd (not for
/// the network's input). Samples run in parallel when there are enough of
/// them for the threads, else each product is parallel.
#[derive(Debug, Clone, Copy)]
pub struct ConvGemm {
    pub stride: usize,
    pub pad: usize,
}

/// How a batch is spread over the threads.
fn batch_parallel(b: usize) -> (bool, usize) {
    let threads = rayon::current_num_threads();
    let per_sample = b >= threads && (b % threads == 0 || b >= 2 * threads);
    (per_sample, threads)
}

impl ConvGemm {
    fn dims(&self, xl: &Layout, wl: &Layout) -> Result<(usize, usize, usize, usize, usize, Geo)> {
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
        Ok((b, c, h, w, o, Geo::new(h, w, k, self.stride, self.pad)))
    }

    /// `true` when the patches of a sample are the sample itself.
    fn pointwise(geo: &Geo) -> bool {
        geo.k == 1 && geo.stride == 1 && geo.pad == 0
    }

    /// The `(c·k·k, ho·wo)` patches of one sample: the sample itself for a
    /// pointwise convolution, else unfolded into `cols`.
    fn patches<'a>(
        geo: &Geo,
        xb: &'a [f32],
        c: usize,
        cols: &'a mut Vec<f32>,
        threads: usize,
    ) -> &'a [f32] {
        if Self::pointwise(geo) {
            return xb;
        }
        cols.resize(c * geo.k * geo.k * geo.ho * geo.wo, 0.0);
        Self::unfold(geo, xb, c, cols, threads);
        cols
    }

    /// The `(c·k·k, ho·wo)` patches of one sample into `cols`.
    fn unfold(geo: &Geo, xb: &[f32], c: usize, cols: &mut [f32], threads: usize) {
        let (kk, n, hw) = (geo.k * geo.k, geo.ho * geo.wo, geo.h * geo.w);
        let row =
            |(r, dst): (usize, &mut [f32])| geo.unfold_row(&xb[r / kk * hw..][..hw], r % kk, dst);
        if threads > 1 {
            cols[..c * kk * n]
                .par_chunks_mut(n)
                .enumerate()
                .for_each(row);
        } else {
            cols[..c * kk * n].chunks_mut(n).enumerate().for_each(row);
        }
    }

    /// The forward of both ops: `W · im2col(x_b) [+ bias]` per sample.
    fn fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, xl, "conv")?;
        let wt = f32_slice(ws, wl, "conv weight")?;
        let (b, c, h, w, o, geo) = self.dims(xl, wl)?;
        if bias.is_some_and(|bv| bv.len() != o) {
            bail!("conv: bias does not have {o} values");
        }
        let (ckk, n) = (c * geo.k * geo.k, geo.ho * geo.wo);
        let mut y = vec![0f32; b * o * n];
        let sample = |xb: &[f32], yb: &mut [f32], cols: &mut Vec<f32>, threads: usize| {
            let patches = Self::patches(&geo, xb, c, cols, threads);
            // With a bias the product accumulates onto it.
            if let Some(bv) = bias {
                for (row, &bo) in yb.chunks_mut(n).zip(bv) {
                    row.fill(bo);
                }
            }
            sgemm(
                yb,
                bias.is_some(),
                Mat::rows(wt, ckk),
                Mat::rows(patches, n),
                (o, n, ckk),
                threads,
            );
        };
        let (per_sample, threads) = batch_parallel(b);
        if per_sample {
            y.par_chunks_mut(o * n)
                .zip(x.par_chunks(c * h * w))
                .for_each_init(Vec::new, |cols, (yb, xb)| sample(xb, yb, cols, 1));
        } else {
            let mut cols = Vec::new();
            for (yb, xb) in y.chunks_mut(o * n).zip(x.chunks(c * h * w)) {
                sample(xb, yb, &mut cols, threads);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((b, o, geo.ho, geo.wo))))
    }

    /// `(dx, dW)`: dx only when autograd tracks `x`.
    fn grads(&self, x: &Tensor, wt: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let want_dx = x.track_op();
        let (xt, wtt, dyt) = (x.contiguous()?, wt.contiguous()?, dy.contiguous()?);
        let (xs, xl) = xt.storage_and_layout();
        let (ws, wl) = wtt.storage_and_layout();
        let (dys, dyl) = dyt.storage_and_layout();
        let xv = storage_f32(&xs, xl, "conv input")?;
        let wv = storage_f32(&ws, wl, "conv weight")?;
        let dyv = storage_f32(&dys, dyl, "conv output gradient")?;
        let (b, c, h, w, o, geo) = self.dims(xl, wl)?;
        let (ckk, n, chw) = (c * geo.k * geo.k, geo.ho * geo.wo, c * h * w);
        if dyv.len() != b * o * n {
            bail!(
                "conv backward: output gradient {:?} does not fit",
                dyl.shape()
            );
        }
        let pointwise = Self::pointwise(&geo);
        // One sample: dW (+)= dy_b · patchesᵀ; dx_b = fold(Wᵀ · dy_b).
        let sample = |xb: &[f32],
                      dyb: &[f32],
                      dw: &mut [f32],
                      acc: bool,
                      dxb: Option<&mut [f32]>,
                      cols: &mut Vec<f32>,
                      threads: usize| {
            let dy_m = Mat::rows(dyb, n);
            let patches = Self::patches(&geo, xb, c, cols, threads);
            sgemm(
                dw,
                acc,
                dy_m,
                Mat::transposed(patches, n),
                (o, ckk, n),
                threads,
            );
            let Some(dxb) = dxb else { return };
            let wt_m = Mat::transposed(wv, ckk);
            if pointwise {
                // The input gradient is Wᵀ·dy_b itself.
                sgemm(dxb, false, wt_m, dy_m, (ckk, n, o), threads);
                return;
            }
            // The patches are no longer needed: their buffer takes Wᵀ·dy_b,
            // which folds back onto the input.
            sgemm(cols, false, wt_m, dy_m, (ckk, n, o), threads);
            let kk = geo.k * geo.k;
            let fold = |(ch, plane): (usize, &mut [f32])| {
                geo.fold_rows(&cols[ch * kk * n..][..kk * n], plane)
            };
            if threads > 1 {
                dxb.par_chunks_mut(h * w).enumerate().for_each(fold);
            } else {
                dxb.chunks_mut(h * w).enumerate().for_each(fold);
            }
        };
        let mut dw = vec![0f32; o * ckk];
        let mut dx = if want_dx {
            vec![0f32; b * chw]
        } else {
            Vec::new()
        };
        let (per_sample, threads) = batch_parallel(b);
        if per_sample {
            // Per-sample weight gradients, summed afterwards.
            let partial: Vec<Vec<f32>> = if want_dx {
                dx.par_chunks_mut(chw)
                    .zip(xv.par_chunks(chw).zip(dyv.par_chunks(o * n)))
                    .map_init(Vec::new, |cols, (dxb, (xb, dyb))| {
                        let mut dwb = vec![0f32; o * ckk];
                        sample(xb, dyb, &mut dwb, false, Some(dxb), cols, 1);
                        dwb
                    })
                    .collect()
            } else {
                xv.par_chunks(chw)
                    .zip(dyv.par_chunks(o * n))
                    .map_init(Vec::new, |cols, (xb, dyb)| {
                        let mut dwb = vec![0f32; o * ckk];
                        sample(xb, dyb, &mut dwb, false, None, cols, 1);
                        dwb
                    })
                    .collect()
            };
            for p in &partial {
                for (d, v) in dw.iter_mut().zip(p) {
                    *d += v;
                }
            }
        } else {
            let mut cols = Vec::new();
            let mut dx_chunks = dx.chunks_mut(chw);
            for (i, (xb, dyb)) in xv.chunks(chw).zip(dyv.chunks(o * n)).enumerate() {
                let dxb = if want_dx { dx_chunks.next() } else { None };
                sample(xb, dyb, &mut dw, i > 0, dxb, &mut cols, threads);
            }
        }
        let dev = x.device();
        let dx = if want_dx {
            Some(Tensor::from_vec(dx, (b, c, h, w), dev)?)
        } else {
            None
        };
        Ok((dx, Tensor::from_vec(dw, wt.shape(), dev)?))
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
        self.fwd(xs, xl, ws, wl, None)
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
        let bias = f32_slice(bs, bl, "conv bias")?;
        self.fwd(xs, xl, ws, wl, Some(bias))
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
        let (b, o, ho, wo) = dy.dims4()?;
        let n = ho * wo;
        let dyt = dy.contiguous()?;
        let (dys, dyl) = dyt.storage_and_layout();
        let dyv = storage_f32(&dys, dyl, "conv output gradient")?;
        let db: Vec<f32> = (0..o)
            .into_par_iter()
            .map(|oc| {
                (0..b)
                    .map(|bi| lane_sums(&dyv[(bi * o + oc) * n..][..n], |v| [v])[0] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        Ok((
            dx,
            Some(dw),
            Some(Tensor::from_vec(db, bias.shape(), bias.device())?),
        ))
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
