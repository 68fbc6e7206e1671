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

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Storage,
    Tensor, bail,
};
use candle_nn::{Conv2d, Conv2dConfig};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::ops::Range;

use crate::norm::lane_sums;

mod winograd;

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

    /// Writes output rows `oys` of the patch row of kernel offset
    /// `kk` = ki·k + kj of one input `plane` into `dst` (`oys.len()·wo`,
    /// zero where the patch is in the padding).
    fn unfold_row(&self, plane: &[f32], kk: usize, oys: Range<usize>, dst: &mut [f32]) {
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
    fn fold_rows(&self, rows: &[f32], oys: Range<usize>, plane: &mut [f32]) {
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

/// A row-major view of a matrix: element (i, j) at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Rows of `rs` values each (the first columns of them when the
    /// product uses fewer).
    fn rows(data: &'a [f32], rs: usize) -> Mat<'a> {
        Mat { data, rs, cs: 1 }
    }

    fn t(self) -> Mat<'a> {
        Mat {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A row-major block to write a product into: element (i, j) at
/// `ptr[i·rs + j]`, `rows × cols`.
struct DstMat<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    rs: usize,
    _out: PhantomData<&'a mut [f32]>,
}

impl<'a> DstMat<'a> {
    /// All of `d` as `rows × cols`.
    fn whole(d: &'a mut [f32], rows: usize, cols: usize) -> DstMat<'a> {
        assert!(
            d.len() >= rows * cols,
            "DstMat: {rows}x{cols} in {}",
            d.len()
        );
        DstMat {
            ptr: d.as_mut_ptr(),
            rows,
            cols,
            rs: cols,
            _out: PhantomData,
        }
    }

    /// Row `i` (`cols` values).
    fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "DstMat: row {i} of {}", self.rows);
        // SAFETY: row i of the block is in bounds (checked when the block
        // was made) and this block has it to itself.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.rs), self.cols) }
    }

    /// Sets row `i` to `vals[i]`.
    fn fill_rows(&mut self, vals: &[f32]) {
        for (i, &v) in vals.iter().enumerate().take(self.rows) {
            // SAFETY: row i of the block is in bounds (checked when the
            // block was made) and this block has it to itself.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.rs), self.cols) }.fill(v);
        }
    }
}

/// One output buffer that several threads write disjoint blocks of.
#[derive(Clone, Copy)]
struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: the pointer comes from a `&mut [f32]` held for 'a; `block` and
// `slice` callers promise that concurrently used blocks do not overlap.
unsafe impl Send for SharedOut<'_> {}
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    fn new(d: &'a mut [f32]) -> SharedOut<'a> {
        SharedOut {
            ptr: d.as_mut_ptr(),
            len: d.len(),
            _out: PhantomData,
        }
    }

    /// The `rows × cols` block at `off` with row stride `rs`.
    ///
    /// # Safety
    /// No other block or slice in use at the same time overlaps it.
    unsafe fn block(&self, off: usize, rows: usize, rs: usize, cols: usize) -> DstMat<'a> {
        assert!(
            rows == 0 || off + (rows - 1) * rs + cols <= self.len,
            "SharedOut: block past the end"
        );
        DstMat {
            // SAFETY: in bounds, checked above.
            ptr: unsafe { self.ptr.add(off) },
            rows,
            cols,
            rs,
            _out: PhantomData,
        }
    }

    /// `len` values at `off`.
    ///
    /// # Safety
    /// As for [`SharedOut::block`].
    unsafe fn slice(&self, off: usize, len: usize) -> &'a mut [f32] {
        assert!(off + len <= self.len, "SharedOut: slice past the end");
        // SAFETY: in bounds; not aliased by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }
}

/// `dst (m×n) [+]= a (m×k) · b (k×n)` with the gemm crate.
fn sgemm(
    dst: &mut DstMat,
    accumulate: bool,
    a: Mat,
    b: Mat,
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |x: Mat, r: usize, c: usize| (r.max(1) - 1) * x.rs + (c.max(1) - 1) * x.cs;
    assert!(
        m <= dst.rows
            && n <= dst.cols
            && a.data.len() > last(a, m, k)
            && b.data.len() > last(b, k, n),
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
            dst.ptr,
            1,
            dst.rs as isize,
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

/// How many patch values a tile aims at (512 KiB: the patches of a tile
/// stay in a core's L2 cache while the product reads them).
const TILE_FLOATS: usize = 1 << 17;
/// The fewest output positions in a tile, so that reading the weights
/// once per tile stays cheap beside the tile's product.
const TILE_MIN_COLS: usize = 512;

/// How the output rows of each sample are cut into tiles.
#[derive(Debug, Clone, Copy)]
struct Tiling {
    rows: usize,
    tiles: usize,
}

impl Tiling {
    /// Tiles of at most `floats` patch values (but at least `min_cols`
    /// output positions, and whole output rows); when the samples do not
    /// share out evenly over the threads, a multiple of the threads (if
    /// there is more than one tile).
    fn new(
        geo: &Geo,
        ckk: usize,
        b: usize,
        threads: usize,
        (floats, min_cols): (usize, usize),
    ) -> Tiling {
        let cols = (floats / ckk.max(1)).max(min_cols);
        let mut rows = (cols / geo.wo.max(1)).clamp(1, geo.ho.max(1));
        let mut tiles = geo.ho.div_ceil(rows);
        if threads > 1 && b % threads != 0 && tiles > 1 {
            tiles = tiles.next_multiple_of(threads).min(geo.ho);
            rows = geo.ho.div_ceil(tiles);
            tiles = geo.ho.div_ceil(rows);
        }
        Tiling { rows, tiles }
    }

    /// The output rows of tile `t`.
    fn oys(&self, t: usize, ho: usize) -> Range<usize> {
        t * self.rows..((t + 1) * self.rows).min(ho)
    }
}

/// Runs `f(items, gemm_threads)` over `0..items`: in up to four contiguous
/// groups per thread, each with single-threaded products and taken by
/// whichever thread is free (a thread slowed by other work, such as the
/// trainer's augmentation workers, just takes fewer), when the items share
/// out evenly enough; else one range whose products use all the threads.
/// The groups depend only on the item and thread counts, and the results
/// come back in group order (sums over them are reproducible).
fn spread<R: Send>(items: usize, f: impl Fn(Range<usize>, usize) -> R + Sync) -> Vec<R> {
    let threads = rayon::current_num_threads();
    if threads > 1 && items >= threads && (items % threads == 0 || items >= 4 * threads) {
        let groups = items.min(4 * threads);
        (0..groups)
            .into_par_iter()
            .with_max_len(1)
            .map(|g| f(g * items / groups..(g + 1) * items / groups, 1))
            .collect()
    } else {
        vec![f(0..items, threads)]
    }
}

/// The element-wise sum of the per-group partial results [`spread`] returns
/// (each `len` long; zeros when there are none), added in group order so
/// that the sum is reproducible.
fn sum_parts(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for p in parts {
        for (a, v) in sum.iter_mut().zip(&p) {
            *a += v;
        }
    }
    sum
}

/// The sizes of one convolution: `b` samples of `c` channels in, `o` out.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    c: usize,
    o: usize,
    geo: Geo,
}

impl Dims {
    fn ckk(&self) -> usize {
        self.c * self.geo.k * self.geo.k
    }

    fn n(&self) -> usize {
        self.geo.ho * self.geo.wo
    }

    fn chw(&self) -> usize {
        self.c * self.geo.h * self.geo.w
    }

    /// `true` when the patches of a sample are the sample itself.
    fn pointwise(&self) -> bool {
        self.geo.k == 1 && self.geo.stride == 1 && self.geo.pad == 0
    }

    /// The `(c·k·k, oys.len()·wo)` patches of output rows `oys` of sample
    /// `xb`: a view of the sample for a pointwise convolution, else
    /// unfolded into `cols`.
    fn patches<'a>(
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

    /// `y = W ⋆ x [+ bias]`, `(b, o, ho·wo)`: per tile of output rows,
    /// `W · patches` (onto the bias).
    fn forward(
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
        let out = SharedOut::new(&mut y);
        spread(self.b * tiling.tiles, |items, threads| {
            let mut cols = Vec::new();
            for item in items {
                let (bi, t) = (item / tiling.tiles, item % tiling.tiles);
                let oys = tiling.oys(t, self.geo.ho);
                let (j0, nc) = (oys.start * wo, oys.len() * wo);
                let patches = self.patches(&x[bi * chw..][..chw], oys, &mut cols, threads);
                // SAFETY: each work item writes its own tile.
                let mut dst = unsafe { out.block(bi * o * n + j0, o, n, nc) };
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
    fn weight_grad(&self, x: &[f32], dy: &[f32], tile: (usize, usize)) -> Vec<f32> {
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
    fn input_grad(&self, wt: &[f32], dy: &[f32], tile: (usize, usize)) -> Vec<f32> {
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
        let out = SharedOut::new(&mut dx);
        spread(self.b, |samples, threads| {
            let mut cols = Vec::new();
            for bi in samples {
                // SAFETY: each sample's gradient is written by one item.
                let dxb = unsafe { out.slice(bi * chw, chw) };
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
    pub stride: usize,
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `(y, dW, dx)` of a convolution by its definition, in f64:
    /// `y[b,o,i,j] = Σ W[o,c,ki,kj] · x[b,c,i·s+ki-p, j·s+kj-p]`, and the
    /// gradients of `Σ y·dy` by the same sum.
    pub(super) fn direct(
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

    pub(super) fn max_diff(a: &[f32], r: &[f64]) -> f64 {
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
