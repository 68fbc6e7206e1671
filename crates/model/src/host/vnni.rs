//! The AVX-512 VNNI row kernel of the int8 convolution (`conv/int8.rs`,
//! which documents the layouts and the arithmetic): `vpdpbusd` multiplies
//! 64 unsigned activation bytes by 64 signed weight bytes and adds each
//! group of four products into one of 16 i32 lanes, 64 multiply-adds per
//! instruction where an f32 FMA does 16.
//!
//! The lanes are 16 consecutive output pixels of one row (so that the
//! output, the residual and the activations are contiguous along a row of
//! the planar layout the rest of the network uses); each of up to
//! [`MR`] output channels takes its four weights of a channel quad as one
//! broadcast 32-bit value. The epilogue (zero-point correction, scale,
//! bias, residual, LeakyReLU) is the scalar kernel's, operation for
//! operation in the same order, so the two give the same bits.

use super::DstMat;

/// Output channels per microkernel call (with two pixel vectors: 24
/// accumulators of the 32 vector registers).
pub(crate) const MR: usize = 12;

/// What one row of an int8 convolution reads (see `conv/int8.rs`).
pub(crate) struct RowArgs<'a> {
    /// One sample's quantized input (`[Y][quad][phase][xi][4]` bytes).
    pub(crate) xs: &'a [u8],
    /// The weights, `(o, taps, quads, 4)` signed bytes.
    pub(crate) wq: &'a [i8],
    /// The byte offset of each tap from an output pixel's origin.
    pub(crate) taps: &'a [usize],
    /// Channel quads.
    pub(crate) nq: usize,
    /// Bytes from one channel quad to the next.
    pub(crate) qstride: usize,
    /// Per output channel: the input's scale times the weights'.
    pub(crate) scale: &'a [f32],
    /// Per output channel: the zero point times the sum of the weights.
    pub(crate) zsum: &'a [i32],
    /// Per output channel: the bias.
    pub(crate) bias: &'a [f32],
    /// LeakyReLU's negative slope (`None`: no activation).
    pub(crate) slope: Option<f32>,
}

impl RowArgs<'_> {
    /// Output channels.
    pub(crate) fn o(&self) -> usize {
        self.bias.len()
    }

    /// Panics unless a row of `wo` pixels at input byte `base` into
    /// columns `col..col + wo` of `dst`, with `residual` `(values, row
    /// stride, column)`, stays inside every buffer.
    pub(crate) fn check(
        &self,
        base: usize,
        wo: usize,
        dst: &DstMat,
        col: usize,
        residual: Option<(&[f32], usize, usize)>,
    ) {
        let o = self.o();
        let last_tap = self.taps.iter().copied().max().unwrap_or(0);
        let reads = base + last_tap + self.nq.max(1).saturating_sub(1) * self.qstride + 4 * wo;
        assert!(
            self.scale.len() == o
                && self.zsum.len() == o
                && self.wq.len() == o * self.taps.len() * self.nq * 4
                && dst.rows == o
                && col + wo <= dst.cols
                && (wo == 0 || reads <= self.xs.len())
                && residual.is_none_or(|(r, rs, rc)| o == 0 || (o - 1) * rs + rc + wo <= r.len()),
            "int8 row: {o} channels, {wo} pixels at byte {base} of {} outside its buffers",
            self.xs.len()
        );
    }
}

/// Whether this CPU runs [`row`] (AVX-512F, BW and VNNI, checked at run
/// time).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One output row of `wo` pixels whose input origin is byte `base` of
/// `a.xs`, into columns `col..col + wo` of every row of `dst`, plus
/// `residual` (`(values, row stride, column)`: channel `co`'s row at
/// `co·stride + column`). Panics when [`available`] is false.
pub(crate) fn row(
    a: &RowArgs,
    base: usize,
    wo: usize,
    dst: &mut DstMat,
    col: usize,
    residual: Option<(&[f32], usize, usize)>,
) {
    a.check(base, wo, dst, col, residual);
    assert!(available(), "int8 row: this CPU lacks AVX-512 VNNI");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the features (checked above); every read and
    // write is inside the buffers (`check`): the loads and stores of
    // pixels past `wo` are masked off, and the pointers to them are made
    // with wrapping arithmetic.
    unsafe {
        x86::row(a, base, wo, dst, col, residual)
    }
}

/// One run of quantized input: up to four channel rows (`None`: a channel
/// past the layer's, which holds the zero point), each `w` values, into
/// the bytes of positions `xi` (`4·xi + j` for channel `j` of the quad)
/// whose source column is `stride·xi + off`.
pub(crate) struct QuantRun<'a> {
    pub(crate) rows: [Option<&'a [f32]>; 4],
    pub(crate) stride: usize,
    pub(crate) off: isize,
    pub(crate) xi: std::ops::Range<usize>,
    /// `1 / scale`.
    pub(crate) inv: f32,
    pub(crate) zero: u8,
}

impl QuantRun<'_> {
    /// Panics unless every source column of the run is inside its rows
    /// and `dst` holds the run's bytes.
    pub(crate) fn check(&self, dst: &[u8]) {
        let first = self.xi.start as isize * self.stride as isize + self.off;
        let last = (self.xi.end as isize - 1) * self.stride as isize + self.off;
        assert!(
            self.xi.is_empty()
                || (first >= 0
                    && self
                        .rows
                        .iter()
                        .flatten()
                        .all(|r| (last as usize) < r.len())
                    && 4 * self.xi.end <= dst.len()),
            "int8 quantize: run {:?} (stride {}, offset {}) outside its rows or {} bytes",
            self.xi,
            self.stride,
            self.off,
            dst.len()
        );
    }
}

/// Writes the run `r` into `dst` (the bytes of the other positions are
/// left alone), with AVX-512: each value's `clamp(round(v / scale) +
/// zero, 0, 255)` as `conv/int8.rs`'s scalar quantizer computes it.
/// Strides 1 and 2 only; panics when [`available`] is false.
pub(crate) fn quantize_run(r: &QuantRun, dst: &mut [u8]) {
    r.check(dst);
    assert!(
        available() && (r.stride == 1 || r.stride == 2),
        "int8 quantize: AVX-512 and stride 1 or 2 only"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the features (checked above); every unmasked
    // read and write is inside the rows and `dst` (`check`); pointers past
    // them are made with wrapping arithmetic and never dereferenced.
    unsafe {
        x86::quantize_run(r, dst)
    }
}

/// The least and greatest of `x` and 0, NaNs ignored (AVX-512 where the
/// CPU has it: the same values as the scalar fold, which it falls back
/// to).
pub(crate) fn range_with_zero(x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked); the reads are inside `x`.
        return unsafe { x86::range_with_zero(x) };
    }
    fold_range(x)
}

/// [`range_with_zero`] as a scalar fold (the fallback, and the vector
/// version's tail).
fn fold_range(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{DstMat, MR, QuantRun, RowArgs};

    /// [`super::range_with_zero`] on AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn range_with_zero(x: &[f32]) -> (f32, f32) {
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            // SAFETY: 16 values of `x`.
            let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
            // min/max give their second operand when either is NaN.
            lo = _mm512_min_ps(v, lo);
            hi = _mm512_max_ps(v, hi);
        }
        let fold = super::fold_range(chunks.remainder());
        (
            _mm512_reduce_min_ps(lo).min(fold.0),
            _mm512_reduce_max_ps(hi).max(fold.1),
        )
    }

    /// [`super::quantize_run`] without its checks.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW, the stride is 1 or 2, and `r.check`
    /// passed.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_run(r: &QuantRun, dst: &mut [u8]) {
        let (inv, zero) = (_mm512_set1_ps(r.inv), _mm512_set1_epi32(i32::from(r.zero)));
        let (lo, hi) = (_mm512_set1_ps(-256.0), _mm512_set1_ps(256.0));
        let (b0, b255) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        // The even elements of two vectors (stride 2).
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let elems = |n: usize| -> __mmask16 {
            match n {
                0 => 0,
                n if n >= 16 => u16::MAX,
                n => (1u16 << n) - 1,
            }
        };
        let mut xi = r.xi.start;
        while xi < r.xi.end {
            let l = (r.xi.end - xi).min(16);
            let x0 = (xi as isize * r.stride as isize + r.off) as usize;
            let mut word = _mm512_setzero_si512();
            for (j, row) in r.rows.iter().enumerate() {
                let q = match row {
                    Some(row) => {
                        let p = row.as_ptr().wrapping_add(x0);
                        // SAFETY: the unmasked elements are columns of the
                        // run, inside the row (the caller's).
                        let v = unsafe {
                            if r.stride == 1 {
                                _mm512_maskz_loadu_ps(elems(l), p)
                            } else {
                                let span = 2 * l - 1;
                                let a = _mm512_maskz_loadu_ps(elems(span), p);
                                let b = _mm512_maskz_loadu_ps(
                                    elems(span.saturating_sub(16)),
                                    p.wrapping_add(16),
                                );
                                _mm512_permutex2var_ps(a, evens, b)
                            }
                        };
                        let v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, inv), lo), hi);
                        let q = _mm512_add_epi32(_mm512_cvtps_epi32(v), zero);
                        _mm512_min_epi32(_mm512_max_epi32(q, b0), b255)
                    }
                    None => zero,
                };
                word = _mm512_or_si512(word, _mm512_sllv_epi32(q, _mm512_set1_epi32(8 * j as i32)));
            }
            let bytes: __mmask64 = if l == 16 {
                u64::MAX
            } else {
                (1u64 << (4 * l)) - 1
            };
            // SAFETY: the unmasked bytes are the run's, inside `dst`.
            unsafe {
                _mm512_mask_storeu_epi8(dst.as_mut_ptr().wrapping_add(4 * xi).cast(), bytes, word)
            };
            xi += l;
        }
    }

    macro_rules! by_m {
        ($m:expr, $nb:literal, $($arg:expr),*) => {
            match $m {
                1 => tile::<1, $nb>($($arg),*),
                2 => tile::<2, $nb>($($arg),*),
                3 => tile::<3, $nb>($($arg),*),
                4 => tile::<4, $nb>($($arg),*),
                5 => tile::<5, $nb>($($arg),*),
                6 => tile::<6, $nb>($($arg),*),
                7 => tile::<7, $nb>($($arg),*),
                8 => tile::<8, $nb>($($arg),*),
                9 => tile::<9, $nb>($($arg),*),
                10 => tile::<10, $nb>($($arg),*),
                11 => tile::<11, $nb>($($arg),*),
                12 => tile::<12, $nb>($($arg),*),
                _ => unreachable!("at most MR channels"),
            }
        };
    }

    /// [`super::row`] without its checks.
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI, and `a.check` passed.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn row(
        a: &RowArgs,
        base: usize,
        wo: usize,
        dst: &mut DstMat,
        col: usize,
        residual: Option<(&[f32], usize, usize)>,
    ) {
        let o = a.o();
        let wide = wo > 16;
        let step = if wide { 32 } else { 16 };
        for co0 in (0..o).step_by(MR) {
            let m = (o - co0).min(MR);
            for ox0 in (0..wo).step_by(step) {
                let valid = (wo - ox0).min(step);
                let out = dst.ptr.wrapping_add(co0 * dst.rs + col + ox0);
                let res =
                    residual.map(|(r, rs, rc)| (r.as_ptr().wrapping_add(co0 * rs + rc + ox0), rs));
                let args = (a, base + 4 * ox0, co0, valid, (out, dst.rs), res);
                // SAFETY: the caller's; the tile stays inside the row.
                unsafe {
                    if wide {
                        by_m!(m, 2, args);
                    } else {
                        by_m!(m, 1, args);
                    }
                }
            }
        }
    }

    /// Output pointer and row stride; residual pointer and row stride.
    type Tile<'a, 'b> = (
        &'a RowArgs<'b>,
        usize,
        usize,
        usize,
        (*mut f32, usize),
        Option<(*const f32, usize)>,
    );

    /// `M` output channels from `co0` by `valid` ≤ 16·`NB` pixels whose
    /// first input pixel is byte `base`.
    ///
    /// # Safety
    /// As [`row`]'s, for the pixels and channels of the tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn tile<const M: usize, const NB: usize>((a, base, co0, valid, (out, ors), res): Tile) {
        let (kk, nq) = (a.taps.len(), a.nq);
        let wrow = kk * nq * 4;
        let xs = a.xs.as_ptr().wrapping_add(base);
        let wb = a.wq.as_ptr().wrapping_add(co0 * wrow);
        let lanes = |nb: usize| valid.saturating_sub(16 * nb).min(16);
        let bytes: [__mmask64; NB] = std::array::from_fn(|nb| match lanes(nb) {
            16 => u64::MAX,
            l => (1u64 << (4 * l)) - 1,
        });
        let mut acc = [[_mm512_setzero_si512(); NB]; M];
        for (ti, &tap) in a.taps.iter().enumerate() {
            let xt = xs.wrapping_add(tap);
            let wt = wb.wrapping_add(ti * nq * 4);
            for q in 0..nq {
                let xq = xt.wrapping_add(q * a.qstride);
                // SAFETY: the unmasked bytes are inside `xs` (the caller's).
                let v: [__m512i; NB] = std::array::from_fn(|nb| unsafe {
                    _mm512_maskz_loadu_epi8(bytes[nb], xq.wrapping_add(64 * nb).cast())
                });
                let wq = wt.wrapping_add(4 * q);
                for (m, accm) in acc.iter_mut().enumerate() {
                    // SAFETY: channel co0 + m's four weights of quad q at
                    // tap ti, inside `wq` (the caller's).
                    let w4 = unsafe { wq.wrapping_add(m * wrow).cast::<i32>().read_unaligned() };
                    let w = _mm512_set1_epi32(w4);
                    for nb in 0..NB {
                        accm[nb] = _mm512_dpbusd_epi32(accm[nb], v[nb], w);
                    }
                }
            }
        }
        let zero = _mm512_setzero_ps();
        for (m, accm) in acc.iter().enumerate() {
            let co = co0 + m;
            let (sc, zs, bs) = (
                _mm512_set1_ps(a.scale[co]),
                _mm512_set1_epi32(a.zsum[co]),
                _mm512_set1_ps(a.bias[co]),
            );
            for (nb, &acc) in accm.iter().enumerate() {
                let l = lanes(nb);
                if l == 0 {
                    continue;
                }
                let k: __mmask16 = if l == 16 { u16::MAX } else { (1u16 << l) - 1 };
                let mut y = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, zs));
                y = _mm512_add_ps(_mm512_mul_ps(y, sc), bs);
                if let Some((r, rs)) = res {
                    // SAFETY: the unmasked lanes are inside the residual.
                    let rv = unsafe { _mm512_maskz_loadu_ps(k, r.wrapping_add(m * rs + 16 * nb)) };
                    y = _mm512_add_ps(y, rv);
                }
                if let Some(s) = a.slope {
                    let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, zero);
                    y = _mm512_mask_mul_ps(y, neg, y, _mm512_set1_ps(s));
                }
                // SAFETY: the unmasked lanes are inside `dst`'s row.
                unsafe { _mm512_mask_storeu_ps(out.wrapping_add(m * ors + 16 * nb), k, y) };
            }
        }
    }
}
