//! The convolution's CPU op: [`ConvGemm`], `W · im2col(x)` tile by tile on
//! gemm, forward and backward, with Winograd's F(2×2, 3×3) for the wide
//! 3×3 layers (`winograd.rs`).
//!
//! Performance-critical: after editing, run `cargo test -p kseg-model` and
//! `cargo bench --bench model` before and after (docs/ARCHITECTURE.md).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::im2col::{Dims, Geo};
use super::tiling::{TILE_FLOATS, TILE_MIN_COLS, Tiling, spread, sum_parts};
use super::winograd;
use crate::host::{DstMat, Mat, SharedOut, f32_slice, lane_sums, sgemm, storage_f32};

impl Dims {
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

/// A convolution, `y = W ⋆ x [+ bias]`, as one custom op on the CPU (f32),
/// `CustomOp2` on `(x, W)` or `CustomOp3` on `(x, W, bias)`. Each sample's
/// output rows are cut into tiles whose im2col patches fit in a core's L2
/// cache, and each tile is one gemm product (onto the bias, whose gradient
/// is the per-channel sum of `dy`). The backward recomputes the patches
/// instead of keeping them: `dW = Σ dy_tile · patches_tileᵀ`, and `dx`
/// (only when autograd tracks `x`, i.e. not for the network's input) is
/// at stride 1 the forward convolution of `dy` with the flipped kernel,
/// else `Wᵀ · dy` folded back. Tiles run in parallel when there are
/// enough of them for the threads, else each product is parallel. 3×3
/// convolutions at stride 1, padding 1, with at least 16 channels in and
/// out on planes of at least 128×128 (or 128 channels on planes of at least
/// 32×32) use Winograd's F(2×2, 3×3) for the
/// forward, `dx` and `dW` instead (fewer multiply-adds; rounding within a
/// few units in the last place, like the direct sum).
#[derive(Debug, Clone, Copy)]
pub struct ConvGemm {
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

impl ConvGemm {
    fn dims(&self, xl: &Layout, wl: &Layout) -> Result<Dims> {
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

    /// The forward of both ops.
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
        let d = self.dims(xl, wl)?;
        if bias.is_some_and(|bv| bv.len() != d.o) {
            bail!("conv: bias does not have {} values", d.o);
        }
        let y = d.forward(x, wt, bias, (TILE_FLOATS, TILE_MIN_COLS));
        let shape = Shape::from((d.b, d.o, d.geo.ho, d.geo.wo));
        Ok((CpuStorage::F32(y), shape))
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
        let d = self.dims(xl, wl)?;
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
