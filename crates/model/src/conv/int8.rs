//! The int8 convolution of inference (`FreezeOptions::precision` =
//! `Precision::Int8`, opt-in): weights quantized once per output channel,
//! each sample's input quantized at run time, the products taken in exact
//! integer arithmetic and brought back to f32 in the epilogue.
//!
//! - **Weights**, per output channel `co`: `s_w = max|W[co]| / 127`,
//!   `wq = round(W / s_w)` in `-127..=127` (symmetric, no zero point).
//! - **Activations**, per sample and per layer (dynamic: no calibration
//!   set travels with a model, no range is ever clipped, and a slice's
//!   answer does not depend on the batch it is in): the range `[lo, hi]`
//!   of the sample's input widened to hold 0, `s_x = (hi − lo) / 255`, the
//!   zero point `z = round(−lo / s_x)`, `xq = clamp(round(x / s_x) + z,
//!   0, 255)`. The padding holds `z`, which is exactly 0.
//! - **Product**: `acc = Σ wq·xq` in i32 (exact while a product has
//!   fewer than 2³¹ / (255·127) ≈ 66 000 terms, `k·k·c`: 4608 in the
//!   KiTS19 preset's widest layer; `QConv::new` checks), then `y = (acc − z·Σwq) · (s_x·s_w) +
//!   bias`, plus the residual, then LeakyReLU: the same epilogue as the
//!   f32 path's, fused.
//!
//! There are no im2col patches: the input is laid out once per call as
//! `[Y][channel quad][phase][xi][4]` bytes (`Y`, `X` padded coordinates,
//! `phase = X mod stride`, `xi = X div stride`), so that for every tap the
//! four channels of 16 consecutive output pixels are 64 consecutive bytes,
//! what one `vpdpbusd` takes (`host/vnni.rs`). A CPU without AVX-512 VNNI
//! runs [`row_scalar`], the same integer arithmetic and epilogue in plain
//! Rust (the same bits, slower); the tests hold the two equal, and both
//! to the f64 convolution of the dequantized operands.

use std::sync::Mutex;

use rayon::prelude::*;

use super::im2col::Geo;
use crate::host::vnni::{self, QuantRun, RowArgs};
use crate::host::{DstMat, SharedOut};

/// One convolution, its BatchNorm folded in, quantized to int8.
#[derive(Debug)]
pub(crate) struct QConv {
    c: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// Channel quads (`c` rounded up to 4, over 4).
    nq: usize,
    /// `(o, k·k, nq, 4)`: channel `4q + j` of tap `t` at `[co][t][q][j]`
    /// (0 for the channels past `c`).
    wq: Vec<i8>,
    /// Per output channel: the weights' scale.
    w_scale: Vec<f32>,
    /// Per output channel: `Σ wq`.
    w_sum: Vec<i32>,
    bias: Vec<f32>,
    slope: Option<f32>,
    /// Whether this CPU runs the VNNI kernel.
    vnni: bool,
}

/// The quantized input's buffer, kept from one call to the next (a fresh
/// one each call cost a tenth of the time in page clearing) and shared by
/// every layer (they run one after another: the largest layer's size is
/// kept, not the sum of all); a call that finds it in use takes a new one.
static SCRATCH: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Where a sample's quantized input puts its bytes.
struct Layout {
    geo: Geo,
    /// Bytes per padded input row `Y`.
    row: usize,
    /// Bytes per channel quad within a row.
    quad: usize,
    /// Bytes per phase within a quad.
    phase: usize,
    /// Bytes per sample.
    len: usize,
    /// The byte offset of each tap `(dy, dx)` from an output pixel's origin.
    taps: Vec<usize>,
}

/// Round half to even of `v`, `|v| ≤ 2²²` (adding and removing 1.5·2²³
/// leaves the integer part, rounded as the FPU rounds: to nearest, ties
/// to even, what `vcvtps2dq` does too).
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

impl QConv {
    /// `w`: `(o, c, k, k)` row-major (the BatchNorm folded in), `bias`:
    /// `o` values.
    pub(crate) fn new(
        w: &[f32],
        bias: &[f32],
        (o, c, k): (usize, usize, usize),
        (stride, pad): (usize, usize),
        slope: Option<f32>,
    ) -> QConv {
        let kk = k * k;
        assert!(
            w.len() == o * c * kk && bias.len() == o && stride >= 1,
            "QConv: {} weights and {} biases for {o}x{c}x{k}x{k}",
            w.len(),
            bias.len()
        );
        let nq = c.div_ceil(4);
        assert!(
            (kk * nq * 4) as u64 * 255 * 127 <= i32::MAX as u64,
            "QConv: {kk}x{c} terms per product overflow i32"
        );
        let mut wq = vec![0i8; o * kk * nq * 4];
        let mut w_scale = Vec::with_capacity(o);
        let mut w_sum = Vec::with_capacity(o);
        for co in 0..o {
            let wc = &w[co * c * kk..][..c * kk];
            let max = wc.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            let inv = 1.0 / s;
            let mut sum = 0i32;
            for ci in 0..c {
                for t in 0..kk {
                    let v = round_even((wc[ci * kk + t] * inv).clamp(-127.0, 127.0)) as i8;
                    wq[((co * kk + t) * nq + ci / 4) * 4 + ci % 4] = v;
                    sum += i32::from(v);
                }
            }
            w_scale.push(s);
            w_sum.push(sum);
        }
        QConv {
            c,
            o,
            k,
            stride,
            pad,
            nq,
            wq,
            w_scale,
            w_sum,
            bias: bias.to_vec(),
            slope,
            vnni: vnni::available(),
        }
    }

    /// The bytes of a quantized `h × w` sample.
    fn layout(&self, (h, w): (usize, usize)) -> Layout {
        let geo = Geo::new(h, w, self.k, self.stride, self.pad);
        let s = self.stride;
        let (hp, wp) = (h + 2 * self.pad, w + 2 * self.pad);
        let wps = wp.div_ceil(s);
        let phase = wps * 4;
        let quad = s * phase;
        let row = self.nq * quad;
        let taps = (0..self.k * self.k)
            .map(|t| {
                let (dy, dx) = (t / self.k, t % self.k);
                dy * row + (dx % s) * phase + (dx / s) * 4
            })
            .collect();
        Layout {
            geo,
            row,
            quad,
            phase,
            len: hp * row,
            taps,
        }
    }

    /// Quantizes one sample `x` `(c, h, w)` into `dst` (`l.len` bytes),
    /// with the AVX-512 runs or the scalar ones (the same bytes), its
    /// padded rows in parallel: its scale and zero point.
    fn quantize(&self, x: &[f32], l: &Layout, dst: &mut [u8], use_vnni: bool) -> (f32, u8) {
        let (h, w) = (l.geo.h, l.geo.w);
        // min and max are exact: the parallel split does not change them.
        let (lo, hi) = x
            .par_chunks(1 << 16)
            .map(vnni::range_with_zero)
            .reduce(|| (0.0, 0.0), |a, b| (a.0.min(b.0), a.1.max(b.1)));
        let range = hi - lo;
        // A range too small for its inverse to be finite (or none, or not
        // finite) quantizes with scale 1: every value then rounds to the
        // zero point or next to it.
        let scale = match range / 255.0 {
            s if s.is_normal() && (1.0 / s).is_finite() => s,
            _ => 1.0,
        };
        let zero = round_even((-lo / scale).clamp(0.0, 255.0)) as u8;
        let inv = 1.0 / scale;
        let (s, p) = (self.stride, self.pad);
        dst.par_chunks_mut(l.row.max(1))
            .enumerate()
            .for_each(|(yp, drow)| {
                drow.fill(zero);
                let Some(y) = yp.checked_sub(p).filter(|&y| y < h) else {
                    return;
                };
                for qd in 0..self.nq {
                    for ph in 0..s {
                        // Positions whose padded column s·xi + ph is in p .. p + w.
                        let xi = p.saturating_sub(ph).div_ceil(s)
                            ..(p + w).saturating_sub(ph).div_ceil(s);
                        let run = QuantRun {
                            rows: std::array::from_fn(|j| {
                                let ci = 4 * qd + j;
                                (ci < self.c).then(|| &x[(ci * h + y) * w..][..w])
                            }),
                            stride: s,
                            off: ph as isize - p as isize,
                            xi,
                            inv,
                            zero,
                        };
                        let d = &mut drow[qd * l.quad + ph * l.phase..][..l.phase];
                        if use_vnni && s <= 2 {
                            vnni::quantize_run(&run, d);
                        } else {
                            quantize_run_scalar(&run, d);
                        }
                    }
                }
            });
        (scale, zero)
    }

    /// The output plane for an `h × w` input.
    #[cfg(test)]
    fn out_hw(&self, hw: (usize, usize)) -> (usize, usize) {
        let g = self.layout(hw).geo;
        (g.ho, g.wo)
    }

    /// `y = act(W ⋆ x + bias [+ residual])` of `b` samples of `h × w`
    /// (`x`: `(b, c, h, w)`; `residual`: `(b, o, ho, wo)`) into `out`
    /// (`b` samples of `o` rows of `ho·wo`).
    pub(crate) fn run(
        &self,
        b: usize,
        hw: (usize, usize),
        x: &[f32],
        residual: Option<&[f32]>,
        out: &SharedOut,
    ) {
        self.run_on(b, hw, x, residual, out, self.vnni);
    }

    /// [`QConv::run`] on the VNNI kernel or the scalar one.
    fn run_on(
        &self,
        b: usize,
        hw: (usize, usize),
        x: &[f32],
        residual: Option<&[f32]>,
        out: &SharedOut,
        use_vnni: bool,
    ) {
        let l = self.layout(hw);
        let (chw, ho, wo) = (self.c * hw.0 * hw.1, l.geo.ho, l.geo.wo);
        let n = ho * wo;
        assert!(
            x.len() == b * chw && residual.is_none_or(|r| r.len() == b * self.o * n),
            "QConv: input {} or residual for {b}x{}x{hw:?}",
            x.len(),
            self.c
        );
        // The kept buffer (every byte is written by `quantize`), or a new
        // one when another call has it.
        let mut xq = SCRATCH
            .try_lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        xq.resize(b * l.len, 0);
        let qs: Vec<(f32, u8)> = xq
            .par_chunks_mut(l.len.max(1))
            .zip(x.par_chunks(chw.max(1)))
            .map(|(d, s)| self.quantize(s, &l, d, use_vnni))
            .collect();
        // Per sample: each channel's combined scale and zero-point term.
        let terms: Vec<(Vec<f32>, Vec<i32>)> = qs
            .iter()
            .map(|&(sx, z)| {
                (
                    self.w_scale.iter().map(|&sw| sx * sw).collect(),
                    self.w_sum.iter().map(|&s| i32::from(z) * s).collect(),
                )
            })
            .collect();
        // Output rows in contiguous groups, a few per thread, each taken by
        // whichever thread is free (rows are independent: the result does
        // not depend on the split).
        let items = b * ho;
        let groups = items.min(4 * rayon::current_num_threads()).max(1);
        (0..groups).into_par_iter().with_max_len(1).for_each(|g| {
            let items = g * items / groups..(g + 1) * items / groups;
            let mut oy = items.start;
            while oy < items.end {
                let bi = oy / ho;
                let end = items.end.min((bi + 1) * ho);
                let rows = oy % ho..(end - 1) % ho + 1;
                let mut dst = out.block(bi, rows.start * wo..rows.end * wo);
                let args = RowArgs {
                    xs: &xq[bi * l.len..][..l.len],
                    wq: &self.wq,
                    taps: &l.taps,
                    nq: self.nq,
                    qstride: l.quad,
                    scale: &terms[bi].0,
                    zsum: &terms[bi].1,
                    bias: &self.bias,
                    slope: self.slope,
                };
                let res = residual.map(|r| &r[bi * self.o * n..][..self.o * n]);
                for y in rows.clone() {
                    let base = y * self.stride * l.row;
                    let col = (y - rows.start) * wo;
                    let r = res.map(|r| (r, n, y * wo));
                    if use_vnni {
                        vnni::row(&args, base, wo, &mut dst, col, r);
                    } else {
                        row_scalar(&args, base, wo, &mut dst, col, r);
                    }
                }
                oy = end;
            }
        });
        if let Ok(mut kept) = SCRATCH.try_lock()
            && kept.capacity() < xq.capacity()
        {
            *kept = xq;
        }
    }
}

/// [`vnni::quantize_run`] in plain Rust.
fn quantize_run_scalar(r: &QuantRun, dst: &mut [u8]) {
    r.check(dst);
    for xi in r.xi.clone() {
        let x = (xi as isize * r.stride as isize + r.off) as usize;
        for (j, row) in r.rows.iter().enumerate() {
            if let Some(row) = row {
                let v = round_even((row[x] * r.inv).clamp(-256.0, 256.0)) + f32::from(r.zero);
                dst[4 * xi + j] = v.clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// [`vnni::row`] in plain Rust: the same integer products and the same
/// epilogue, operation for operation.
fn row_scalar(
    a: &RowArgs,
    base: usize,
    wo: usize,
    dst: &mut DstMat,
    col: usize,
    residual: Option<(&[f32], usize, usize)>,
) {
    a.check(base, wo, dst, col, residual);
    let (kk, nq) = (a.taps.len(), a.nq);
    let mut acc = vec![0i32; wo];
    for co in 0..a.o() {
        acc.fill(0);
        let wc = &a.wq[co * kk * nq * 4..][..kk * nq * 4];
        for (t, &tap) in a.taps.iter().enumerate() {
            for q in 0..nq {
                let w4 = &wc[(t * nq + q) * 4..][..4];
                let xs = &a.xs[base + tap + q * a.qstride..][..4 * wo];
                for (acc, x4) in acc.iter_mut().zip(xs.chunks_exact(4)) {
                    *acc += x4
                        .iter()
                        .zip(w4)
                        .map(|(&x, &w)| i32::from(x) * i32::from(w))
                        .sum::<i32>();
                }
            }
        }
        let (sc, zs, bs) = (a.scale[co], a.zsum[co], a.bias[co]);
        let out = &mut dst.row(co)[col..col + wo];
        for (i, (y, &acc)) in out.iter_mut().zip(&acc).enumerate() {
            let mut v = (acc - zs) as f32 * sc + bs;
            if let Some((r, rs, rc)) = residual {
                v += r[co * rs + rc + i];
            }
            if let Some(s) = a.slope {
                v = if v < 0.0 { v * s } else { v };
            }
            *y = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The convolution of the dequantized operands (`s_w·wq`, `s_x·(xq −
    /// z)`, read back from the quantized buffers by the definition of the
    /// layout) plus bias, residual and activation, in f64, straight from
    /// the definition of a convolution.
    fn dequantized_reference(
        qc: &QConv,
        (b, h, w): (usize, usize, usize),
        x: &[f32],
        res: Option<&[f32]>,
    ) -> Vec<f64> {
        let l = qc.layout((h, w));
        let (c, o, k, s) = (qc.c, qc.o, qc.k, qc.stride);
        let (ho, wo) = (l.geo.ho, l.geo.wo);
        let mut out = vec![0f64; b * o * ho * wo];
        for bi in 0..b {
            let mut xq = vec![0u8; l.len];
            let (sx, z) = qc.quantize(&x[bi * c * h * w..][..c * h * w], &l, &mut xq, false);
            let xv = |ci: usize, yy: usize, xx: usize| -> f64 {
                // Padded coordinates.
                let i = yy * l.row + (ci / 4) * l.quad + (xx % s) * l.phase + (xx / s) * 4 + ci % 4;
                f64::from(sx) * (f64::from(xq[i]) - f64::from(z))
            };
            for co in 0..o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut v = f64::from(qc.bias[co]);
                        for ci in 0..c {
                            for dy in 0..k {
                                for dx in 0..k {
                                    let wqv = qc.wq[((co * k * k + dy * k + dx) * qc.nq + ci / 4)
                                        * 4
                                        + ci % 4];
                                    let wv = f64::from(qc.w_scale[co]) * f64::from(wqv);
                                    v += wv * xv(ci, oy * s + dy, ox * s + dx);
                                }
                            }
                        }
                        let i = ((bi * o + co) * ho + oy) * wo + ox;
                        if let Some(r) = res {
                            v += f64::from(r[i]);
                        }
                        if let (Some(sl), true) = (qc.slope, v < 0.0) {
                            v *= f64::from(sl);
                        }
                        out[i] = v;
                    }
                }
            }
        }
        out
    }

    fn randv(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| lo + (hi - lo) * rng.random::<f32>())
            .collect()
    }

    /// Both kernels against the dequantized definition, the VNNI kernel
    /// (where the CPU has it) bit for bit against the scalar one, and both
    /// within the quantization's error of the f32 convolution, for the
    /// network's shapes of layer: 3×3 at stride 1 and 2, 1×1, channel
    /// counts not a multiple of 4, output channels past one microkernel,
    /// rows of more, fewer and other than 16 or 32 pixels.
    #[test]
    fn int8_convolutions_match_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // (b, c, o, h, w, k, stride, pad)
        for (b, c, o, h, w, k, stride, pad) in [
            (2, 16, 16, 9, 40, 3, 1, 1),
            (1, 3, 13, 7, 17, 3, 1, 1),
            (3, 8, 26, 6, 33, 3, 2, 1),
            (2, 8, 16, 8, 32, 3, 2, 1),
            (2, 12, 6, 5, 9, 1, 1, 0),
            (1, 5, 25, 4, 70, 3, 1, 1),
        ] {
            let x = randv(&mut rng, b * c * h * w, -0.4, 2.0);
            let wt = randv(&mut rng, o * c * k * k, -1.0, 1.0);
            let bias = randv(&mut rng, o, -1.0, 1.0);
            // The skip projection has no activation.
            let slope = (k == 3).then_some(0.1);
            let qc = QConv::new(&wt, &bias, (o, c, k), (stride, pad), slope);
            let (ho, wo) = qc.out_hw((h, w));
            let n = ho * wo;
            let res = randv(&mut rng, b * o * n, -1.0, 1.0);
            for residual in [None, Some(&res[..])] {
                let want = dequantized_reference(&qc, (b, h, w), &x, residual);
                let mut got = Vec::new();
                for use_vnni in [false, true] {
                    if use_vnni && !vnni::available() {
                        eprintln!("this CPU lacks AVX-512 VNNI: the VNNI kernel is not tested");
                        continue;
                    }
                    let mut y = vec![0f32; b * o * n];
                    qc.run_on(
                        b,
                        (h, w),
                        &x,
                        residual,
                        &SharedOut::new(&mut y, b, o, n),
                        use_vnni,
                    );
                    let err = y
                        .iter()
                        .zip(&want)
                        .map(|(&g, &r)| (f64::from(g) - r).abs() / r.abs().max(1.0))
                        .fold(0f64, f64::max);
                    assert!(err < 1e-5, "{b} {c} {o} {h}x{w} k{k} s{stride}: {err:.2e}");
                    got.push(y);
                }
                if got.len() == 2 {
                    assert!(got[0] == got[1], "VNNI and scalar differ");
                }
                // Within the quantization error of the f32 convolution:
                // each output moves by at most Σ|Δw·x| + Σ|w·Δx|, about
                // (s_w/2)·Σ|x| + (s_x/2)·Σ|w|; bounded here by 2% of the
                // largest output plus that sum over one receptive field.
                let exact = super::super::cpu::tests::direct(
                    &super::super::cpu::Dims {
                        b,
                        c,
                        o,
                        geo: Geo::new(h, w, k, stride, pad),
                    },
                    &x,
                    &wt,
                    &vec![0f32; b * o * n],
                )
                .0;
                let scale = exact.iter().fold(1f64, |m, v| m.max(v.abs()));
                let y = &got[0];
                for (i, &e) in exact.iter().enumerate() {
                    let mut v =
                        e + f64::from(bias[i / n % o]) + residual.map_or(0.0, |r| f64::from(r[i]));
                    if let (Some(sl), true) = (slope, v < 0.0) {
                        v *= f64::from(sl);
                    }
                    assert!(
                        (f64::from(y[i]) - v).abs() < 0.02 * scale,
                        "{b} {c} {o} {h}x{w}: {} against {v} (scale {scale})",
                        y[i]
                    );
                }
            }
        }
    }

    /// Every byte of the quantized input where the layout's definition
    /// puts it: for padded row `Y`, column `X` and channel `ci`, byte
    /// `Y·row + (ci/4)·quad + (X mod s)·phase + (X div s)·4 + ci mod 4`
    /// holds `round(x / scale) + zero` (within one, for the rounding of
    /// `x·(1/scale)` against `x/scale` in f64) inside the image and the
    /// zero point in the padding, past the layer's channels and in the
    /// phases' unused tail; for strides 1 and 2, even and odd padded
    /// widths, channel counts not a multiple of 4, both quantizers.
    #[test]
    fn quantized_bytes_are_where_the_layout_puts_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        // (c, h, w, k, stride, pad)
        for (c, h, w, k, s, p) in [
            (5, 3, 7, 3, 1, 1),
            (6, 4, 8, 3, 2, 1),
            (3, 5, 9, 3, 2, 1),
            (2, 3, 6, 1, 1, 0),
            (4, 2, 40, 3, 1, 1),
        ] {
            let qc = QConv::new(
                &vec![0.5; 4 * c * k * k],
                &[0.0; 4],
                (4, c, k),
                (s, p),
                None,
            );
            let l = qc.layout((h, w));
            let x = randv(&mut rng, c * h * w, -1.0, 3.0);
            let lo = x.iter().fold(0f32, |m, &v| m.min(v));
            let hi = x.iter().fold(0f32, |m, &v| m.max(v));
            for use_vnni in [false, true] {
                if use_vnni && !vnni::available() {
                    continue;
                }
                let mut d = vec![7u8; l.len];
                let (scale, z) = qc.quantize(&x, &l, &mut d, use_vnni);
                assert_eq!(scale, (hi - lo) / 255.0);
                assert_eq!(z, (-lo / scale).round() as u8);
                let mut seen = vec![false; l.len];
                let (hp, wp) = (h + 2 * p, w + 2 * p);
                for yy in 0..hp {
                    for xx in 0..wp {
                        for ci in 0..4 * qc.nq {
                            let i = yy * l.row
                                + (ci / 4) * l.quad
                                + (xx % s) * l.phase
                                + (xx / s) * 4
                                + ci % 4;
                            seen[i] = true;
                            let inside =
                                (p..p + h).contains(&yy) && (p..p + w).contains(&xx) && ci < c;
                            if inside {
                                let v = x[(ci * h + yy - p) * w + xx - p];
                                let want = (f64::from(v) / f64::from(scale)).round() + f64::from(z);
                                let want = want.clamp(0.0, 255.0);
                                assert!(
                                    (f64::from(d[i]) - want).abs() <= 1.0,
                                    "c{c} {h}x{w} s{s}: ({yy}, {xx}, {ci}) {} not {want}",
                                    d[i]
                                );
                            } else {
                                assert_eq!(
                                    d[i], z,
                                    "c{c} {h}x{w} s{s}: padding ({yy}, {xx}, {ci})"
                                );
                            }
                        }
                    }
                }
                for (i, &b) in d.iter().enumerate() {
                    assert!(seen[i] || b == z, "byte {i} outside the layout: {b}");
                }
            }
        }
    }

    /// The vector range against the scalar fold, with tails and NaNs.
    #[test]
    fn range_with_zero_matches_the_fold() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for n in [0, 5, 16, 37, 1000] {
            let mut x = randv(&mut rng, n, -3.0, 5.0);
            if n > 3 {
                x[n / 2] = f32::NAN;
            }
            let want = x
                .iter()
                .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert_eq!(vnni::range_with_zero(&x), want, "{n} values");
        }
        assert_eq!(vnni::range_with_zero(&[2.0, 3.0]), (0.0, 3.0));
    }

    /// The quantizer by hand: 0 is exact, the range maps onto 0..=255.
    #[test]
    fn quantization_by_hand() {
        let qc = QConv::new(&[1.0], &[0.0], (1, 1, 1), (1, 0), None);
        let l = qc.layout((1, 4));
        let mut d = vec![0u8; l.len];
        // Range [-1, 4]: scale 5/255, zero point round(51) = 51.
        let (s, z) = qc.quantize(&[-1.0, 0.0, 4.0, 2.0], &l, &mut d, false);
        assert_eq!((s, z), (5.0 / 255.0, 51));
        // One channel of a quad: the other three hold the zero point.
        assert_eq!(
            &d[..],
            &[
                0, 51, 51, 51, 51, 51, 51, 51, 255, 51, 51, 51, 153, 51, 51, 51
            ][..]
        );
        // Weights: per output channel, max |w| onto 127.
        let qc = QConv::new(&[0.5, -0.3, 2.0, 1.1], &[0.0; 2], (2, 2, 1), (1, 0), None);
        assert_eq!(&qc.wq[..], &[127, -76, 0, 0, 127, 70, 0, 0][..]);
        assert_eq!(qc.w_scale, vec![0.5 / 127.0, 2.0 / 127.0]);
        assert_eq!(qc.w_sum, vec![51, 197]);
    }
}
