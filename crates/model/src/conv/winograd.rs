//! Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms
//! for Convolutional Neural Networks", 2016) for the 3×3 convolutions at
//! stride 1 and padding 1 that make up most of the Res-U-Net.
//!
//! Each 2×2 block of output is `Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A` from the 4×4
//! block `d` of input around it: 16 multiply-adds per channel pair where
//! the direct convolution needs 36. Summed over the input channels, the 16
//! element-wise products are 16 matrix products,
//! `M_ξ (o × T) = U_ξ (o × c) · V_ξ (c × T)`, one per position ξ of the
//! transformed 4×4 block, over a band of `T` blocks at a time (the band's
//! transformed input and products sized to stay near a core's L2 cache).
//! The stride-1 input gradient is itself such a convolution (of `dy` with
//! the flipped kernel), so it takes this path too, and the weight gradient
//! is the same products transposed: `dU_ξ = Σ dM_ξ · V_ξᵀ` with
//! `dM = A dY Aᵀ` per block, then `dW = Gᵀ dU G`.
//!
//! In f32 the transforms round a little more than the direct sum (the
//! matrices hold 1/2 and ±1 only, so the error stays within a few units in
//! the last place of the inputs' scale): `tests` checks it against the
//! definition in f64.

use super::cpu::Dims;
use super::tiling::{spread, sum_parts};
use crate::host::bf16::{self, PackedA};
use crate::host::{DstMat, Kernels, Mat, SharedOut, sgemm, sgemm_on};

/// Fewest input and output channels for the Winograd path (chosen, not
/// swept: with fewer, its 16 products have an inner size too small for
/// gemm's kernels to pay for the transforms).
pub(super) const MIN_CHANNELS: usize = 16;
/// Fewest pixels per plane for the Winograd path (128×128). On the smaller
/// planes of the 128² training preset (base 8, batch 4) it measured no
/// faster than im2col, within this machine's noise (docs/PERFORMANCE.md),
/// and there each band is a whole thin plane.
pub(super) const MIN_PLANE: usize = 128 * 128;
/// Wide layers take the path on smaller planes too: at least this many
/// channels in and out ...
pub(super) const WIDE_CHANNELS: usize = 128;
/// ... on planes of at least 32×32 (the default model's two deepest levels
/// at 512² input: 256 and 512 channels; `train_step --size 512` 1.77-2.25 s
/// per step with them against 2.02-2.41 s without).
pub(super) const WIDE_MIN_PLANE: usize = 32 * 32;
/// Transformed values (input and products) one band aims at: 512 KiB.
const BAND_FLOATS: usize = 1 << 17;
/// Fewest 2×2 blocks in a band (so that each product has some width).
const BAND_MIN_TILES: usize = 64;

/// Whether `d`'s forward and weight gradient run here: 3×3, stride 1,
/// padding 1, and at least [`MIN_CHANNELS`] in and out on planes of at
/// least [`MIN_PLANE`] pixels, or at least [`WIDE_CHANNELS`] on planes of
/// at least [`WIDE_MIN_PLANE`].
pub(super) fn applies(d: &Dims) -> bool {
    let g = &d.geo;
    g.k == 3
        && g.stride == 1
        && g.pad == 1
        && ((d.c.min(d.o) >= MIN_CHANNELS && g.h * g.w >= MIN_PLANE)
            || (d.c.min(d.o) >= WIDE_CHANNELS && g.h * g.w >= WIDE_MIN_PLANE))
}

/// `U_ξ = (G g Gᵀ)_ξ` for every (out, in) channel pair, as 16 row-major
/// `(o, c)` matrices. `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`.
pub(super) fn transform_weights(wt: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * o * c];
    for (pair, g) in wt.chunks_exact(9).enumerate() {
        // G g: 4×3.
        let mut t = [[0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
            t[0][j] = g0;
            t[1][j] = 0.5 * (g0 + g1 + g2);
            t[2][j] = 0.5 * (g0 - g1 + g2);
            t[3][j] = g2;
        }
        // (G g) Gᵀ: 4×4.
        for (i, &[a, b, e]) in t.iter().enumerate() {
            let row = [a, 0.5 * (a + b + e), 0.5 * (a - b + e), e];
            for (j, v) in row.into_iter().enumerate() {
                u[(i * 4 + j) * o * c + pair] = v;
            }
        }
    }
    u
}

/// `L · X · Lᵀ` (`L`: 4×K) of the K×K blocks of block rows `trs` of every
/// plane of `src` (`n × h × w`, zero outside), into 16 row-major `(n, T)`
/// matrices in `out` (`T = trs.len() · tw`, blocks in row order). Block
/// `(tr, tc)` starts `lead` rows and columns before output block
/// `(2·tr, 2·tc)`; `lmul(x)` is `L · x`.
fn transform_blocks<const K: usize>(
    src: &[f32],
    (n, h, w): (usize, usize, usize),
    trs: std::ops::Range<usize>,
    (tw, lead): (usize, usize),
    lmul: impl Fn([f32; K]) -> [f32; 4],
    out: &mut [f32],
) {
    let t = trs.len() * tw;
    // K rows, zero-padded to columns -lead .. 2·tw + K - 2 - lead.
    let pw = 2 * tw + K - 2;
    let mut rows = vec![0f32; K * pw];
    let mut comb = vec![0f32; 4 * pw];
    for ch in 0..n {
        let plane = &src[ch * h * w..][..h * w];
        for (ri, tr) in trs.clone().enumerate() {
            for (i, row) in rows.chunks_exact_mut(pw).enumerate() {
                row.fill(0.0);
                let y = (2 * tr + i).wrapping_sub(lead);
                if y < h {
                    row[lead..lead + w].copy_from_slice(&plane[y * w..][..w]);
                }
            }
            // L over the K rows, for every column at once.
            for x in 0..pw {
                let col = lmul(std::array::from_fn(|k| rows[k * pw + x]));
                for (i, v) in col.into_iter().enumerate() {
                    comb[i * pw + x] = v;
                }
            }
            // Lᵀ over each block's K columns.
            let base = ri * tw;
            for (i, cr) in comb.chunks_exact(pw).enumerate() {
                let at: [usize; 4] = std::array::from_fn(|j| (i * 4 + j) * n * t + ch * t + base);
                for tc in 0..tw {
                    let vals = lmul(std::array::from_fn(|k| cr[2 * tc + k]));
                    for (&o, v) in at.iter().zip(vals) {
                        out[o + tc] = v;
                    }
                }
            }
        }
    }
}

/// `V_ξ = (Bᵀ d B)_ξ` of the 4×4 input blocks of block rows `trs` of one
/// sample `xb` (`c × h × w`), into 16 row-major `(c, T)` matrices in `v`.
/// `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`.
pub(super) fn transform_input(
    xb: &[f32],
    chw: (usize, usize, usize),
    trs: std::ops::Range<usize>,
    tw: usize,
    v: &mut [f32],
) {
    let bt = |[a0, a1, a2, a3]: [f32; 4]| [a0 - a2, a1 + a2, a2 - a1, a1 - a3];
    transform_blocks(xb, chw, trs, (tw, 1), bt, v);
}

/// `Y = Aᵀ M A` of every block of block rows `trs` (`m`: 16 row-major
/// `(o, T)` matrices), plus the bias, into `dst`: row `oc` holds output
/// rows `2·trs.start ..` of channel `oc` (`w` values each, the last block
/// row and column cut at `h`, `w`). `Aᵀ = [1 1 1 0; 0 1 -1 -1]`.
pub(super) fn transform_output(
    m: &[f32],
    o: usize,
    trs: std::ops::Range<usize>,
    (tw, h, w): (usize, usize, usize),
    bias: Option<&[f32]>,
    dst: &mut DstMat,
) {
    let t = trs.len() * tw;
    let y0 = 2 * trs.start;
    let mut s = vec![0f32; 8 * tw];
    for oc in 0..o {
        let bv = bias.map_or(0.0, |b| b[oc]);
        let yo = dst.row(oc);
        for (ri, tr) in trs.clone().enumerate() {
            let at = |xi: usize| &m[xi * o * t + oc * t + ri * tw..][..tw];
            // Aᵀ over the four rows of each block, for all blocks of the row.
            let (s0, s1) = s.split_at_mut(4 * tw);
            for j in 0..4 {
                let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                let (a, b) = (&mut s0[j * tw..][..tw], &mut s1[j * tw..][..tw]);
                for tc in 0..tw {
                    a[tc] = m0[tc] + m1[tc] + m2[tc];
                    b[tc] = m1[tc] - m2[tc] - m3[tc];
                }
            }
            // A over the four columns; two output rows of two values each.
            for (r, sr) in [&*s0, &*s1].into_iter().enumerate() {
                let y = 2 * tr + r;
                if y >= h {
                    break;
                }
                let row = &mut yo[(y - y0) * w..][..w];
                let (q0, q1, q2, q3) = (
                    &sr[..tw],
                    &sr[tw..2 * tw],
                    &sr[2 * tw..3 * tw],
                    &sr[3 * tw..],
                );
                for tc in 0..w / 2 {
                    row[2 * tc] = q0[tc] + q1[tc] + q2[tc] + bv;
                    row[2 * tc + 1] = q1[tc] - q2[tc] - q3[tc] + bv;
                }
                if w % 2 == 1 {
                    let tc = tw - 1;
                    row[w - 1] = q0[tc] + q1[tc] + q2[tc] + bv;
                }
            }
        }
    }
}

/// `dM = A dY Aᵀ` of the 2×2 output-gradient blocks of block rows `trs` of
/// one sample `dyb` (`o × h × w`; zero past `h`, `w`), into 16 row-major
/// `(o, T)` matrices in `m`. `A = [1 0; 1 1; 1 -1; 0 -1]`.
fn transform_output_grad(
    dyb: &[f32],
    ohw: (usize, usize, usize),
    trs: std::ops::Range<usize>,
    tw: usize,
    m: &mut [f32],
) {
    let a = |[y0, y1]: [f32; 2]| [y0, y0 + y1, y0 - y1, -y1];
    transform_blocks(dyb, ohw, trs, (tw, 0), a, m);
}

/// How the 2×2 output blocks of each sample are cut into bands of block
/// rows, the work items of [`forward`] and [`weight_grad`].
pub(super) struct Bands {
    /// Block rows and columns of a sample.
    th: usize,
    pub(super) tw: usize,
    /// Block rows per band: about [`BAND_FLOATS`] transformed values, at
    /// least [`BAND_MIN_TILES`] blocks.
    rows: usize,
    /// Bands per sample.
    pub(super) count: usize,
}

impl Bands {
    pub(super) fn new(d: &Dims) -> Bands {
        let (th, tw) = (d.geo.h.div_ceil(2), d.geo.w.div_ceil(2));
        let rows = (BAND_FLOATS / (16 * (d.c + d.o) * tw))
            .max(BAND_MIN_TILES.div_ceil(tw))
            .clamp(1, th);
        Bands {
            th,
            tw,
            rows,
            count: th.div_ceil(rows),
        }
    }

    /// Work item `item` (of `b · count`): its sample and its block rows.
    pub(super) fn item(&self, item: usize) -> (usize, std::ops::Range<usize>) {
        let band = item % self.count;
        let trs = band * self.rows..((band + 1) * self.rows).min(self.th);
        (item / self.count, trs)
    }
}

/// How a band's 16 products `M_ξ = U_ξ · V_ξ` are taken.
pub(super) enum Product<'a> {
    /// In f32 on the given kernels, `U`: 16 row-major `(o, c)` matrices.
    F32(&'a [f32], Kernels),
    /// In bf16 (`host/bf16.rs`): the 16 `U_ξ` packed.
    Bf16(&'a [PackedA]),
}

/// A band's buffers, kept by the caller from one band to the next and
/// sized by [`band_products`].
#[derive(Default)]
pub(super) struct Scratch {
    /// The transformed input, 16 `(c, T)` matrices.
    v: Vec<f32>,
    /// The products, 16 `(o, T)` matrices.
    pub(super) m: Vec<f32>,
    /// One `V_ξ` packed to bf16.
    packed: Vec<u32>,
}

/// The 16 products `M_ξ = U_ξ · V_ξ` of one band: block rows `trs` (`tw`
/// blocks each) of sample `xb` (`c × h × w`) transformed into `s.v`, then
/// multiplied by `U` (`product`, `o` rows) into `s.m`.
pub(super) fn band_products(
    xb: &[f32],
    chw: (usize, usize, usize),
    (trs, tw): (std::ops::Range<usize>, usize),
    (product, o): (&Product, usize),
    s: &mut Scratch,
    threads: usize,
) {
    let (c, t) = (chw.0, trs.len() * tw);
    s.v.resize(16 * c * t, 0.0);
    s.m.resize(16 * o * t, 0.0);
    transform_input(xb, chw, trs, tw, &mut s.v);
    for (xi, mx) in s.m.chunks_exact_mut(o * t).enumerate() {
        let mut dst = DstMat::whole(mx, o, t);
        let vx = Mat::rows(&s.v[xi * c * t..][..c * t], t);
        match *product {
            Product::F32(u, kernels) => {
                let ux = Mat::rows(&u[xi * o * c..][..o * c], c);
                sgemm_on(kernels, &mut dst, false, ux, vx, (o, t, c), threads);
            }
            Product::Bf16(u) => {
                bf16::pack_b(vx, (c, t), &mut s.packed, threads);
                bf16::gemm(&mut dst, false, &u[xi], &s.packed, t, threads);
            }
        }
    }
}

/// The 16 `U_ξ` of `u` ([`transform_weights`]'s) packed to bf16.
pub(super) fn pack_weights_bf16(u: &[f32], o: usize, c: usize) -> Vec<PackedA> {
    u.chunks_exact(o * c)
        .map(|ux| PackedA::new(Mat::rows(ux, c), (o, c)))
        .collect()
}

/// `y = W ⋆ x [+ bias]`, `(b, o, h, w)`, for a 3×3 kernel at stride 1 and
/// padding 1 (any channel counts and sizes; [`applies`] says when it pays).
pub(super) fn forward(d: &Dims, x: &[f32], wt: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    debug_assert!(d.geo.k == 3 && d.geo.stride == 1 && d.geo.pad == 1);
    let (b, c, o, h, w) = (d.b, d.c, d.o, d.geo.h, d.geo.w);
    let bands = Bands::new(d);
    let tw = bands.tw;
    let u = transform_weights(wt, o, c);
    let (chw, ohw) = (c * h * w, o * h * w);
    let mut y = vec![0f32; b * ohw];
    let out = SharedOut::new(&mut y, b, o, h * w);
    spread(b * bands.count, |items, threads| {
        let mut s = Scratch::default();
        let product = Product::F32(&u, Kernels::Training);
        for item in items {
            let (bi, trs) = bands.item(item);
            band_products(
                &x[bi * chw..][..chw],
                (c, h, w),
                (trs.clone(), tw),
                (&product, o),
                &mut s,
                threads,
            );
            let (ya, yb) = (2 * trs.start, (2 * trs.end).min(h));
            // Output rows ya..yb of every channel of sample bi: this item's
            // alone (bands do not overlap; `block` checks it).
            let mut dst = out.block(bi, ya * w..yb * w);
            transform_output(&s.m, o, trs, (tw, h, w), bias, &mut dst);
        }
    });
    y
}

/// `dW`, `(o, c, 3, 3)`, of the convolution [`forward`] computes, for the
/// output gradient `dy`: `dU_ξ = Σ_samples Σ_bands dM_ξ · V_ξᵀ`, summed per
/// group of bands in group order (reproducible), then
/// `dW = Gᵀ dU G`.
pub(super) fn weight_grad(d: &Dims, x: &[f32], dy: &[f32]) -> Vec<f32> {
    debug_assert!(d.geo.k == 3 && d.geo.stride == 1 && d.geo.pad == 1);
    let (b, c, o, h, w) = (d.b, d.c, d.o, d.geo.h, d.geo.w);
    let bands = Bands::new(d);
    let tw = bands.tw;
    let (chw, ohw, oc_) = (c * h * w, o * h * w, o * c);
    let partial = spread(b * bands.count, |items, threads| {
        let (mut v, mut m) = (Vec::new(), Vec::new());
        let mut du = vec![0f32; 16 * oc_];
        for (i, item) in items.enumerate() {
            let (bi, trs) = bands.item(item);
            let t = trs.len() * tw;
            v.resize(16 * c * t, 0.0);
            m.resize(16 * o * t, 0.0);
            transform_input(&x[bi * chw..][..chw], (c, h, w), trs.clone(), tw, &mut v);
            transform_output_grad(&dy[bi * ohw..][..ohw], (o, h, w), trs, tw, &mut m);
            for (xi, dux) in du.chunks_exact_mut(oc_).enumerate() {
                let mut dst = DstMat::whole(dux, o, c);
                let mx = Mat::rows(&m[xi * o * t..][..o * t], t);
                let vx = Mat::rows(&v[xi * c * t..][..c * t], t);
                sgemm(&mut dst, i > 0, mx, vx.t(), (o, c, t), threads);
            }
        }
        du
    });
    let du = sum_parts(partial, 16 * oc_);
    // Gᵀ dU G, `Gᵀ = [1 ½ ½ 0; 0 ½ -½ 0; 0 ½ ½ 1]`.
    let mut dw = vec![0f32; oc_ * 9];
    for (pair, g) in dw.chunks_exact_mut(9).enumerate() {
        let u = |i: usize, j: usize| du[(i * 4 + j) * oc_ + pair];
        // Gᵀ dU, column by column (three values each).
        let t: [[f32; 3]; 4] = std::array::from_fn(|j| {
            let (u0, u1, u2, u3) = (u(0, j), u(1, j), u(2, j), u(3, j));
            [u0 + 0.5 * (u1 + u2), 0.5 * (u1 - u2), 0.5 * (u1 + u2) + u3]
        });
        // (Gᵀ dU) G, row by row.
        for (r, gr) in g.chunks_exact_mut(3).enumerate() {
            let (a, b, e, f) = (t[0][r], t[1][r], t[2][r], t[3][r]);
            gr[0] = a + 0.5 * (b + e);
            gr[1] = 0.5 * (b - e);
            gr[2] = 0.5 * (b + e) + f;
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::super::cpu::tests::{direct, max_diff};
    use super::super::im2col::Geo;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn applies_to_wide_3x3_convolutions_on_large_planes_only() {
        let d = |c, o, h, w, k, stride, pad| Dims {
            b: 1,
            c,
            o,
            geo: Geo::new(h, w, k, stride, pad),
        };
        assert!(applies(&d(16, 32, 128, 128, 3, 1, 1)));
        assert!(!applies(&d(8, 32, 128, 128, 3, 1, 1)));
        assert!(!applies(&d(32, 8, 128, 128, 3, 1, 1)));
        assert!(!applies(&d(32, 32, 64, 64, 3, 1, 1)));
        assert!(applies(&d(128, 256, 32, 32, 3, 1, 1)));
        assert!(!applies(&d(64, 256, 32, 32, 3, 1, 1)));
        assert!(!applies(&d(256, 256, 16, 32, 3, 1, 1)));
        assert!(!applies(&d(32, 32, 128, 128, 3, 2, 1)));
        assert!(!applies(&d(32, 32, 128, 128, 3, 1, 0)));
        assert!(!applies(&d(32, 32, 128, 128, 5, 1, 1)));
    }

    /// Odd and even sizes, one block row per band up to whole samples, with
    /// and without bias, forward and weight gradient, against the
    /// definition in f64.
    #[test]
    fn winograd_matches_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // (b, c, o, h, w)
        for (b, c, o, h, w) in [
            (2, 16, 16, 9, 7),
            (1, 16, 24, 2, 2),
            (1, 20, 16, 1, 5),
            (3, 17, 19, 12, 11),
            (1, 32, 16, 64, 48),
        ] {
            let d = Dims {
                b,
                c,
                o,
                geo: Geo::new(h, w, 3, 1, 1),
            };
            let mut randv = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
            };
            let x = randv(b * c * h * w);
            let wt = randv(o * c * 9);
            let bias = randv(o);
            let dy = randv(b * o * h * w);
            let (y_ref, dw_ref, _) = direct(&d, &x, &wt, &dy);
            let dw = weight_grad(&d, &x, &dy);
            let err = max_diff(&dw, &dw_ref);
            // Sums of b·h·w products.
            assert!(
                err < 1e-4,
                "b{b} {c}->{o} {h}x{w} weight gradient: {err:.2e}"
            );
            let y = forward(&d, &x, &wt, None);
            let err = max_diff(&y, &y_ref);
            // Sums of 9·c products of values in [-1, 1].
            assert!(err < 2e-5, "b{b} {c}->{o} {h}x{w}: {err:.2e}");
            let yb = forward(&d, &x, &wt, Some(&bias));
            let with_bias: Vec<f64> = y_ref
                .iter()
                .enumerate()
                .map(|(i, v)| v + bias[i / (h * w) % o] as f64)
                .collect();
            let err = max_diff(&yb, &with_bias);
            assert!(err < 2e-5, "b{b} {c}->{o} {h}x{w} with bias: {err:.2e}");
        }
    }
}
