//! The convolution's CPU kernels: `W · im2col(x)` tile by tile on gemm,
//! forward and backward, with Winograd's F(2×2, 3×3) for the wide 3×3
//! layers (`winograd.rs`). [`ConvGemm`]'s `cpu_fwd` is [`forward`], its
//! backward [`grads`] and [`bias_grad`]; [`applies`] and [`conv`] are what
//! the layer (`conv.rs`) calls.
//!
//! How it works: each sample's output rows are cut into tiles whose
//! `im2col` patches fit in a core's L2 cache (about 512 KiB, at least 512
//! positions), and each tile is one gemm product `W · patches` (a bias is
//! added in the same op, its gradient summed there); its backward
//! recomputes the patches (nothing kept between forward and backward),
//! accumulates `dW = Σ dy_tile · patches_tileᵀ`, and computes the input
//! gradient only for inputs autograd tracks (not the network's input): at
//! stride 1 as the forward convolution of `dy` with the flipped, channel-
//! swapped kernel, else `col2im(Wᵀ·dy)`; tiles are spread over the threads
//! (up to four groups per thread, each taken by whichever thread is free,
//! single-threaded products; results combined in group order) when there
//! are enough of them, else each product is parallel. 3×3 convolutions at
//! stride 1 and padding 1 with at least 16 channels in and out on planes of
//! at least 128×128 (or 128 channels on planes of at least 32×32) take
//! Winograd's F(2×2, 3×3) instead (`conv/winograd.rs`: 16 gemm products
//! over bands of 2×2 output blocks, 16 multiply-adds per channel pair and
//! block instead of 36), for the forward, the stride-1 input gradient (a
//! forward convolution) and the weight gradient (`dU = Σ dM · Vᵀ`, `dW = Gᵀ
//! dU G`). `Im2Col` / `Col2Im` are the same unfold/fold as standalone
//! adjoint ops.
//!
//! Performance-critical: after editing, run `cargo test -p kseg-model` and
//! `cargo bench --bench model` before and after (docs/ARCHITECTURE.md).

use std::ops::Range;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, bail};
use candle_nn::Conv2dConfig;
use rayon::prelude::*;

use super::im2col::Geo;
use super::op::ConvGemm;
#[cfg(test)]
use super::op::{Col2Im, Im2Col};
use super::tiling::{TILE_FLOATS, TILE_MIN_COLS, Tiling, spread, sum_parts};
use super::winograd;
use crate::host::{DstMat, Mat, SharedOut, f32_slice, lane_sums, sgemm, storage_f32};

/// Whether [`conv`] takes this convolution: `x` on the CPU, f32 input,
/// weight and bias, a square kernel, no groups, no dilation.
pub(super) fn applies(x: &Tensor, wt: &Tensor, bias: Option<&Tensor>, cfg: &Conv2dConfig) -> bool {
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && wt.dtype() == DType::F32
        && bias.is_none_or(|b| b.dtype() == DType::F32)
        && cfg.groups == 1
        && cfg.dilation == 1
        && matches!(wt.dims(), &[_, _, k, k2] if k == k2)
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

    /// Row `r` (channel `r / k²`, kernel offset `r mod k²`) of the patches
    /// of output rows `oys` of sample `xb`, into `dst` (`oys.len()·wo`).
    pub(super) fn patch_row(&self, xb: &[f32], r: usize, oys: Range<usize>, dst: &mut [f32]) {
        let (kk, hw) = (self.geo.k * self.geo.k, self.geo.h * self.geo.w);
        self.geo
            .unfold_row(&xb[r / kk * hw..][..hw], r % kk, oys, dst)
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
        let (hw, wo) = (geo.h * geo.w, geo.wo);
        if self.pointwise() {
            return Mat::rows(&xb[oys.start * wo..], hw);
        }
        let nc = oys.len() * wo;
        cols.resize(self.ckk() * nc, 0.0);
        let row = |(r, dst): (usize, &mut [f32])| self.patch_row(xb, r, oys.clone(), dst);
        if threads > 1 {
            cols.par_chunks_mut(nc).enumerate().for_each(row);
        } else {
            cols.chunks_mut(nc).enumerate().for_each(row);
        }
        Mat::rows(cols, nc)
    }

    /// `y = W ⋆ x [+ bias]`, `(b, o, ho·wo)`: per tile of output rows,
    /// `W · patches` (onto the bias).
    pub(super) fn forward(
        &self,
        x: &[f32],
        wt: &[f32],
        bias: Option<&[f32]>,
        tile: (usize, usize),
    ) -> Vec<f32> {
        if winograd::applies(self) {
            return winograd::forward(self, x, wt, bias);
        }
        let (o, ckk, n, chw, wo) = (self.o, self.ckk(), self.n(), self.chw(), self.geo.wo);
        let tiling = Tiling::new(&self.geo, ckk, self.b, rayon::current_num_threads(), tile);
        let mut y = vec![0f32; self.b * o * n];
        let out = SharedOut::new(&mut y, self.b, o, n);
        spread(self.b * tiling.tiles, |items, threads| {
            let mut cols = Vec::new();
            for item in items {
                let (bi, t) = (item / tiling.tiles, item % tiling.tiles);
                let oys = tiling.oys(t, self.geo.ho);
                let (j0, nc) = (oys.start * wo, oys.len() * wo);
                let patches = self.patches(&x[bi * chw..][..chw], oys, &mut cols, threads);
                // Each work item writes its own tile (`block` checks it).
                let mut dst = out.block(bi, j0..j0 + nc);
                if let Some(bv) = bias {
                    dst.fill_rows(bv);
                }
                let w_m = Mat::rows(wt, ckk);
                sgemm(
                    &mut dst,
                    bias.is_some(),
                    w_m,
                    patches,
                    (o, nc, ckk),
                    threads,
                );
            }
        });
        y
    }

    /// `dW = Σ_b Σ_tiles dy_tile · patches_tileᵀ`, `(o, c·k·k)`.
    pub(super) fn weight_grad(&self, x: &[f32], dy: &[f32], tile: (usize, usize)) -> Vec<f32> {
        if winograd::applies(self) {
            return winograd::weight_grad(self, x, dy);
        }
        let (o, ckk, n, chw, wo) = (self.o, self.ckk(), self.n(), self.chw(), self.geo.wo);
        let tiling = Tiling::new(&self.geo, ckk, self.b, rayon::current_num_threads(), tile);
        let partial = spread(self.b * tiling.tiles, |items, threads| {
            let mut dw = vec![0f32; o * ckk];
            let mut cols = Vec::new();
            for (i, item) in items.enumerate() {
                let (bi, t) = (item / tiling.tiles, item % tiling.tiles);
                let oys = tiling.oys(t, self.geo.ho);
                let (j0, nc) = (oys.start * wo, oys.len() * wo);
                let patches = self.patches(&x[bi * chw..][..chw], oys, &mut cols, threads);
                let dy_m = Mat::rows(&dy[bi * o * n + j0..], n);
                let mut dst = DstMat::whole(&mut dw, o, ckk);
                sgemm(&mut dst, i > 0, dy_m, patches.t(), (o, ckk, nc), threads);
            }
            dw
        });
        sum_parts(partial, o * ckk)
    }

    /// `dx`, `(b, c, h, w)`. At stride 1 (padding below the kernel size)
    /// it is the convolution of `dy` with the kernel flipped and its
    /// channel axes swapped, padding `k-1-pad`: the tiled forward, no
    /// scatter. Otherwise `Wᵀ · dy` per tile, folded back onto the input.
    pub(super) fn input_grad(&self, wt: &[f32], dy: &[f32], tile: (usize, usize)) -> Vec<f32> {
        let Geo {
            h, w, k, ho, wo, ..
        } = self.geo;
        let (c, o, kk) = (self.c, self.o, k * k);
        if self.geo.stride == 1 && self.geo.pad < k {
            let mut flipped = vec![0f32; c * o * kk];
            for (oc, w_o) in wt.chunks_exact(c * kk).enumerate() {
                for (ch, w_oc) in w_o.chunks_exact(kk).enumerate() {
                    let dst = &mut flipped[(ch * o + oc) * kk..][..kk];
                    for (d, &v) in dst.iter_mut().rev().zip(w_oc) {
                        *d = v;
                    }
                }
            }
            let back = Dims {
                b: self.b,
                c: o,
                o: c,
                geo: Geo::new(ho, wo, k, 1, k - 1 - self.geo.pad),
            };
            debug_assert!(back.geo.ho == h && back.geo.wo == w);
            return back.forward(dy, &flipped, None, tile);
        }
        let (ckk, n, chw, hw) = (self.ckk(), self.n(), self.chw(), h * w);
        let tiling = Tiling::new(&self.geo, ckk, self.b, rayon::current_num_threads(), tile);
        let mut dx = vec![0f32; self.b * chw];
        let out = SharedOut::new(&mut dx, self.b, 1, chw);
        spread(self.b, |samples, threads| {
            let mut cols = Vec::new();
            for bi in samples {
                // Each sample's gradient is written by one item.
                let mut block = out.block(bi, 0..chw);
                let dxb = block.row(0);
                for t in 0..tiling.tiles {
                    let oys = tiling.oys(t, ho);
                    let nc = oys.len() * wo;
                    cols.resize(ckk * nc, 0.0);
                    let dy_m = Mat::rows(&dy[bi * o * n + oys.start * wo..], n);
                    let mut dst = DstMat::whole(&mut cols, ckk, nc);
                    sgemm(
                        &mut dst,
                        false,
                        Mat::rows(wt, ckk).t(),
                        dy_m,
                        (ckk, nc, o),
                        threads,
                    );
                    let fold = |(ch, plane): (usize, &mut [f32])| {
                        self.geo
                            .fold_rows(&cols[ch * kk * nc..][..kk * nc], oys.clone(), plane)
                    };
                    if threads > 1 {
                        dxb.par_chunks_mut(hw).enumerate().for_each(fold);
                    } else {
                        dxb.chunks_mut(hw).enumerate().for_each(fold);
                    }
                }
            }
        });
        dx
    }
}

/// [`ConvGemm`]'s forward on the CPU (`bias`: the `CustomOp3`'s third
/// argument).
pub(super) fn forward(
    op: &ConvGemm,
    xs: &CpuStorage,
    xl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let bias = bias
        .map(|(bs, bl)| f32_slice(bs, bl, "conv bias"))
        .transpose()?;
    let x = f32_slice(xs, xl, "conv")?;
    let wt = f32_slice(ws, wl, "conv weight")?;
    let d = op.dims(xl, wl)?;
    if bias.is_some_and(|bv| bv.len() != d.o) {
        bail!("conv: bias does not have {} values", d.o);
    }
    let y = d.forward(x, wt, bias, (TILE_FLOATS, TILE_MIN_COLS));
    let shape = Shape::from((d.b, d.o, d.geo.ho, d.geo.wo));
    Ok((CpuStorage::F32(y), shape))
}

/// [`ConvGemm`]'s `(dx, dW)` on the CPU: dx only when autograd tracks `x`.
pub(super) fn grads(
    op: &ConvGemm,
    x: &Tensor,
    wt: &Tensor,
    dy: &Tensor,
) -> Result<(Option<Tensor>, Tensor)> {
    let want_dx = x.track_op();
    let (xt, wtt, dyt) = (x.contiguous()?, wt.contiguous()?, dy.contiguous()?);
    let (xs, xl) = xt.storage_and_layout();
    let (ws, wl) = wtt.storage_and_layout();
    let (dys, dyl) = dyt.storage_and_layout();
    let xv = storage_f32(&xs, xl, "conv input")?;
    let wv = storage_f32(&ws, wl, "conv weight")?;
    let dyv = storage_f32(&dys, dyl, "conv output gradient")?;
    let d = op.dims(xl, wl)?;
    if dyv.len() != d.b * d.o * d.n() {
        bail!(
            "conv backward: output gradient {:?} does not fit",
            dyl.shape()
        );
    }
    let tile = (TILE_FLOATS, TILE_MIN_COLS);
    let dev = x.device();
    let dw = Tensor::from_vec(d.weight_grad(xv, dyv, tile), wt.shape(), dev)?;
    let dx = if want_dx {
        let dx = d.input_grad(wv, dyv, tile);
        Some(Tensor::from_vec(dx, xl.shape(), dev)?)
    } else {
        None
    };
    Ok((dx, dw))
}

/// The bias gradient on the CPU: the per-channel sum of `dy` (f32 lane sums
/// per plane, f64 across the batch).
pub(super) fn bias_grad(dy: &Tensor, bias: &Tensor) -> Result<Tensor> {
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
    Tensor::from_vec(db, bias.shape(), bias.device())
}

/// [`Im2Col`]'s forward: one output row per (batch, channel, ki, kj).
#[cfg(test)]
pub(super) fn im2col(op: &Im2Col, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let x = f32_slice(s, l, "im2col")?;
    let (b, c, h, w) = l.shape().dims4()?;
    let Im2Col { k, stride, pad } = *op;
    let geo = Geo::new(h, w, k, stride, pad);
    let cols = geo.ho * geo.wo;
    let mut out = vec![0f32; b * c * k * k * cols];
    // Rows are independent.
    out.par_chunks_mut(cols).enumerate().for_each(|(row, dst)| {
        let (bi, r) = (row / (c * k * k), row % (c * k * k));
        let ch = r / (k * k);
        geo.unfold_row(
            &x[(bi * c + ch) * h * w..][..h * w],
            r % (k * k),
            0..geo.ho,
            dst,
        );
    });
    Ok((CpuStorage::F32(out), Shape::from((b, c * k * k, cols))))
}

/// [`Col2Im`]'s forward: one output plane per (batch, channel), which
/// gathers its k·k rows.
#[cfg(test)]
pub(super) fn col2im(op: &Col2Im, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let g = f32_slice(s, l, "col2im")?;
    let Col2Im {
        k,
        stride,
        pad,
        c,
        h,
        w,
    } = *op;
    let (b, rows, cols) = l.shape().dims3()?;
    let geo = Geo::new(h, w, k, stride, pad);
    if rows != c * k * k || cols != geo.ho * geo.wo {
        bail!(
            "col2im: input {:?} does not fit C={c}, k={k}, {h}x{w}",
            l.shape()
        );
    }
    let mut out = vec![0f32; b * c * h * w];
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane_i, dst)| {
            let (bi, ch) = (plane_i / c, plane_i % c);
            let rows_of = &g[(bi * rows + ch * k * k) * cols..][..k * k * cols];
            geo.fold_rows(rows_of, 0..geo.ho, dst);
        });
    Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::im2col::src_index;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `(y, dW, dx)` of a convolution by its definition, in f64:
    /// `y[b,o,i,j] = Σ W[o,c,ki,kj] · x[b,c,i·s+ki-p, j·s+kj-p]`, and the
    /// gradients of `Σ y·dy` by the same sum.
    pub(in crate::conv) fn direct(
        d: &Dims,
        x: &[f32],
        wt: &[f32],
        dy: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let Geo {
            h,
            w,
            k,
            stride,
            pad,
            ho,
            wo,
        } = d.geo;
        let (b, c, o) = (d.b, d.c, d.o);
        let mut y = vec![0f64; b * o * ho * wo];
        let mut dw = vec![0f64; wt.len()];
        let mut dx = vec![0f64; x.len()];
        for bi in 0..b {
            for oc in 0..o {
                for i in 0..ho {
                    for j in 0..wo {
                        let yi = ((bi * o + oc) * ho + i) * wo + j;
                        for ch in 0..c {
                            for ki in 0..k {
                                for kj in 0..k {
                                    let (Some(iy), Some(ix)) = (
                                        src_index(i, ki, stride, pad, h),
                                        src_index(j, kj, stride, pad, w),
                                    ) else {
                                        continue;
                                    };
                                    let xi = ((bi * c + ch) * h + iy) * w + ix;
                                    let wi = ((oc * c + ch) * k + ki) * k + kj;
                                    y[yi] += wt[wi] as f64 * x[xi] as f64;
                                    dw[wi] += dy[yi] as f64 * x[xi] as f64;
                                    dx[xi] += dy[yi] as f64 * wt[wi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dw, dx)
    }

    pub(in crate::conv) fn max_diff(a: &[f32], r: &[f64]) -> f64 {
        assert_eq!(a.len(), r.len());
        a.iter()
            .zip(r)
            .map(|(&a, &r)| (a as f64 - r).abs())
            .fold(0.0, f64::max)
    }

    /// Every tiling (one output row per tile up to the whole sample), the
    /// stride-1 input gradient by the flipped kernel and the scatter one,
    /// against the definition.
    #[test]
    fn tiled_convolution_and_its_gradients_match_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // (b, c, o, h, w, k, stride, pad)
        let cases = [
            (1, 3, 4, 9, 7, 3, 1, 1),
            (3, 2, 3, 8, 5, 3, 1, 1),
            (2, 3, 2, 9, 8, 3, 2, 1),
            (1, 2, 3, 7, 7, 5, 1, 2),
            (1, 4, 3, 6, 5, 1, 1, 0),
            (2, 2, 2, 5, 6, 1, 2, 0),
            (1, 2, 2, 6, 6, 3, 1, 0),
            // padding as large as the kernel: the scatter path at stride 1
            (1, 2, 2, 4, 5, 1, 1, 1),
            (2, 2, 3, 2, 3, 5, 2, 2),
        ];
        for (b, c, o, h, w, k, stride, pad) in cases {
            let d = Dims {
                b,
                c,
                o,
                geo: Geo::new(h, w, k, stride, pad),
            };
            let mut randv = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
            };
            let x = randv(b * c * h * w);
            let wt = randv(o * c * k * k);
            let dy = randv(b * o * d.n());
            let (y_ref, dw_ref, dx_ref) = direct(&d, &x, &wt, &dy);
            // Patch budgets from one output row per tile to the whole sample.
            for tile in [(1, 1), (d.ckk() * d.geo.wo * 2, 1), (usize::MAX / 2, 1)] {
                let case = format!("b{b} {c}->{o} {h}x{w} k{k} s{stride} p{pad} tile {tile:?}");
                let y = d.forward(&x, &wt, None, tile);
                assert!(max_diff(&y, &y_ref) < 1e-5, "{case}: forward");
                let dw = d.weight_grad(&x, &dy, tile);
                assert!(max_diff(&dw, &dw_ref) < 1e-5, "{case}: weight gradient");
                let dx = d.input_grad(&wt, &dy, tile);
                assert!(max_diff(&dx, &dx_ref) < 1e-5, "{case}: input gradient");
            }
        }
    }
}
