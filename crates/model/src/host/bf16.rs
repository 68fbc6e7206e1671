//! The bf16 matrix product of inference (`Precision::Bf16`, opt-in;
//! `conv/fused.rs` runs every product of a bf16 layer through it, the
//! Winograd ones included): `dst [+]= A · B` with both operands rounded to
//! bf16 (round to nearest, ties to even: 8 significant bits) and the sums
//! kept in f32.
//!
//! On a CPU with AVX512-BF16 (checked at run time, [`available`]) one
//! `vdpbf16ps` multiplies 16 pairs of bf16 and adds each pair's two
//! products into one of 16 f32 lanes: 32 multiply-adds per instruction
//! where an f32 FMA does 16, from operands half the size. Elsewhere
//! [`gemm`] runs the same products in plain Rust (each bf16 product is
//! exact in f32; the sums round as the hardware's do, up to their order
//! and its flushing of subnormals: the two agree to f32 rounding, not bit
//! for bit).
//!
//! The operands are packed first: `A` (the weights, once per layer) into
//! panels of [`MR`] rows, `[panel][k pair][MR]`, and `B` (each call's
//! input) into panels of [`NR`] columns, `[panel][k pair][NR]`, each
//! 32-bit word a pair of bf16 along `k` (the even element in the low
//! half, as `vdpbf16ps` takes it), zero past the matrix. The product runs
//! per column panel, in blocks of [`KC`] pairs (the block of `B`, 32 KiB,
//! stays in L1; the block of `A` for every row, in L2), [`MR`] rows at a
//! time.

use std::ops::Range;

use rayon::prelude::*;

use super::{DstMat, Mat};

/// Rows per microkernel (with two vectors of 16 columns: 24 accumulators
/// of the 32 vector registers).
pub(crate) const MR: usize = 12;
/// Columns per panel of `B`.
pub(crate) const NR: usize = 32;
/// `k` pairs per block.
const KC: usize = 256;

/// Whether this CPU runs the AVX512-BF16 kernel (AVX-512F and BF16,
/// checked at run time).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `v` rounded to bf16, its 16 bits (the upper half of an f32): to
/// nearest, ties to even, overflowing to ±inf; a NaN stays a (quiet) NaN.
pub(crate) fn to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    let rounded = (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16;
    if v.is_nan() {
        (u >> 16) as u16 | 0x40
    } else {
        rounded
    }
}

/// The f32 value of bf16 bits.
pub(crate) fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// The word of the pair `(even, odd)`.
fn pair(even: f32, odd: f32) -> u32 {
    u32::from(to_bf16(even)) | u32::from(to_bf16(odd)) << 16
}

/// An `m × k` left operand packed once (see the module docs).
#[derive(Debug)]
pub(crate) struct PackedA {
    m: usize,
    k: usize,
    /// `[m.div_ceil(MR)][k.div_ceil(2)][MR]` words.
    data: Vec<u32>,
}

impl PackedA {
    /// Packs the `m × k` matrix `a`.
    pub(crate) fn new(a: Mat, (m, k): (usize, usize)) -> PackedA {
        a.check(m, k, "bf16 pack A");
        let k2 = k.div_ceil(2);
        let mut data = vec![0u32; m.div_ceil(MR) * k2 * MR];
        let at = |i: usize, j: usize| {
            if j < k {
                a.data[i * a.rs + j * a.cs]
            } else {
                0.0
            }
        };
        for i in 0..m {
            let (panel, r) = (i / MR, i % MR);
            for p in 0..k2 {
                data[(panel * k2 + p) * MR + r] = pair(at(i, 2 * p), at(i, 2 * p + 1));
            }
        }
        PackedA { m, k, data }
    }

    /// The value of element `(i, j)` after rounding (tests).
    #[cfg(test)]
    pub(crate) fn get(&self, i: usize, j: usize) -> f32 {
        let k2 = self.k.div_ceil(2);
        let w = self.data[((i / MR) * k2 + j / 2) * MR + i % MR];
        from_bf16((w >> (16 * (j % 2))) as u16)
    }
}

/// Packs the `k × n` matrix `b` into `dst` (resized), as [`gemm`] takes
/// it, a pair of rows at a time ([`write_pair`]); groups of panels in
/// parallel when `threads` > 1.
pub(crate) fn pack_b(b: Mat, (k, n): (usize, usize), dst: &mut Vec<u32>, threads: usize) {
    b.check(k, n, "bf16 pack B");
    let (k2, panels) = (k.div_ceil(2), n.div_ceil(NR));
    dst.resize(panels * k2 * NR, 0);
    // Panels `g·per ..` of `d`: every pair of rows, those panels' columns.
    let group = |g: usize, per: usize, d: &mut [u32]| {
        let cols = (g * per * NR).min(n)..((g + 1) * per * NR).min(n);
        let mut buf = Vec::new();
        for p in 0..k2 {
            write_pair(pair_rows(b, (2 * p, k), cols.clone(), &mut buf), p, k2, d);
        }
    };
    if threads > 1 && panels > 1 {
        let per = panels.div_ceil(4 * threads);
        dst.par_chunks_mut((per * k2 * NR).max(1))
            .enumerate()
            .for_each(|(g, d)| group(g, per, d));
    } else {
        group(0, panels, dst);
    }
}

/// Rows `r` and `r + 1` of `b`, columns `cols` (zero for rows at `k` and
/// past): borrowed where they are contiguous, else gathered into `buf`.
fn pair_rows<'t>(
    b: Mat<'t>,
    (r, k): (usize, usize),
    cols: Range<usize>,
    buf: &'t mut Vec<f32>,
) -> (&'t [f32], &'t [f32]) {
    if b.cs == 1 && r + 1 < k {
        let row = |r: usize| &b.data[r * b.rs..][cols.clone()];
        return (row(r), row(r + 1));
    }
    let nc = cols.len();
    buf.resize(2 * nc, 0.0);
    for (i, half) in buf.chunks_exact_mut(nc.max(1)).enumerate() {
        for (v, j) in half.iter_mut().zip(cols.clone()) {
            *v = if r + i < k {
                b.data[(r + i) * b.rs + j * b.cs]
            } else {
                0.0
            };
        }
    }
    buf.split_at(nc)
}

/// [`pack_b`] of a `k × n` matrix made a row at a time by `row(r, dst)`
/// (`n` values), two rows at a time into `rows` (the caller's scratch,
/// resized here): the matrix itself is never written out (im2col's patches
/// go straight from the input to the packed words).
pub(crate) fn pack_b_rows(
    (k, n): (usize, usize),
    mut row: impl FnMut(usize, &mut [f32]),
    rows: &mut Vec<f32>,
    dst: &mut Vec<u32>,
) {
    let k2 = k.div_ceil(2);
    dst.resize(n.div_ceil(NR) * k2 * NR, 0);
    rows.resize(2 * n, 0.0);
    for p in 0..k2 {
        let (even, odd) = rows.split_at_mut(n);
        row(2 * p, even);
        if 2 * p + 1 < k {
            row(2 * p + 1, odd);
        } else {
            odd.fill(0.0);
        }
        write_pair((even, odd), p, k2, dst);
    }
}

/// The words of pair `p` (of `k2`) of rows, `(even, odd)`, into every
/// panel of `dst` (the rows hold those panels' columns, the first panel's
/// first at 0; words past them are zero), with AVX-512F where the CPU has
/// it (the same words).
fn write_pair(rows: (&[f32], &[f32]), p: usize, k2: usize, dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked).
        unsafe { into_panels_avx512(rows, p, k2, dst) };
        return;
    }
    into_panels(rows, p, k2, dst);
}

/// [`write_pair`] in plain Rust.
#[inline(always)]
fn into_panels((even, odd): (&[f32], &[f32]), p: usize, k2: usize, dst: &mut [u32]) {
    for (jp, panel) in dst.chunks_exact_mut((k2 * NR).max(1)).enumerate() {
        let words = &mut panel[p * NR..][..NR];
        let cols = (jp * NR).min(even.len())..(jp * NR + NR).min(even.len());
        let nc = cols.len();
        pairs(&even[cols.clone()], &odd[cols], &mut words[..nc]);
        words[nc..].fill(0);
    }
}

/// [`into_panels`] compiled for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn into_panels_avx512(rows: (&[f32], &[f32]), p: usize, k2: usize, dst: &mut [u32]) {
    into_panels(rows, p, k2, dst)
}

/// `words[j] = pair(even[j], odd[j])`, written so that it vectorises.
#[inline(always)]
fn pairs(even: &[f32], odd: &[f32], words: &mut [u32]) {
    for ((w, &e), &o) in words.iter_mut().zip(even).zip(odd) {
        *w = pair(e, o);
    }
}

/// `dst (m×n) [+]= a · b` (`b` packed by [`pack_b`] from a `k × n`
/// matrix, `k` as `a`'s), on the AVX512-BF16 kernel or the portable one
/// ([`available`]), the column panels in parallel when `threads` > 1.
pub(crate) fn gemm(
    dst: &mut DstMat,
    accumulate: bool,
    a: &PackedA,
    b: &[u32],
    n: usize,
    threads: usize,
) {
    gemm_on(dst, accumulate, a, b, n, threads, available());
}

/// [`gemm`] on the AVX512-BF16 kernel (`fast`) or the portable one.
pub(crate) fn gemm_on(
    dst: &mut DstMat,
    accumulate: bool,
    a: &PackedA,
    b: &[u32],
    n: usize,
    threads: usize,
    fast: bool,
) {
    let (m, k2) = (a.m, a.k.div_ceil(2));
    assert!(
        m <= dst.rows && n <= dst.cols && b.len() == n.div_ceil(NR) * k2 * NR,
        "bf16 gemm: {m}x{} · {}x{n} into {}x{} ({} packed words)",
        a.k,
        a.k,
        dst.rows,
        dst.cols,
        b.len()
    );
    assert!(
        !fast || available(),
        "bf16 gemm: this CPU lacks AVX512-BF16"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k2 == 0 {
        // An empty sum: no tile runs, and the product is zero.
        if !accumulate {
            (0..m).for_each(|i| dst.row(i)[..n].fill(0.0));
        }
        return;
    }
    let panels = n.div_ceil(NR);
    let run = |ps: Range<usize>, out: Cols| {
        for jp in ps {
            let cols = jp * NR..(jp * NR + NR).min(n);
            let bp = &b[jp * k2 * NR..][..k2 * NR];
            for p0 in (0..k2).step_by(KC) {
                let kc = (k2 - p0).min(KC);
                let load = accumulate || p0 > 0;
                for ip in 0..m.div_ceil(MR) {
                    let rows = ip * MR..(ip * MR + MR).min(m);
                    let ap = &a.data[(ip * k2 + p0) * MR..][..kc * MR];
                    let bk = &bp[p0 * NR..][..kc * NR];
                    let t = Tile {
                        ap,
                        bp: bk,
                        kc,
                        rows: rows.len(),
                        cols: cols.len(),
                        load,
                    };
                    let c = out.0.wrapping_add(rows.start * out.1 + cols.start);
                    if fast {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the CPU has AVX-512F and BF16 (asserted);
                        // the tile's rows and columns are inside `dst` (its
                        // size is checked above) and this call has them to
                        // itself; `ap`, `bp` hold `kc` steps.
                        unsafe {
                            x86::tile(&t, c, out.1)
                        }
                    } else {
                        // SAFETY: as above.
                        unsafe { tile_portable(&t, c, out.1) }
                    }
                }
            }
        }
    };
    let out = Cols(dst.ptr, dst.rs);
    if threads > 1 && panels > 1 {
        let groups = panels.min(4 * threads);
        (0..groups)
            .into_par_iter()
            .with_max_len(1)
            .for_each(|g| run(g * panels / groups..(g + 1) * panels / groups, out));
    } else {
        run(0..panels, out);
    }
}

/// `dst`'s pointer and row stride, handed to the threads that write its
/// disjoint column panels.
#[derive(Clone, Copy)]
struct Cols(*mut f32, usize);

// SAFETY: `gemm_on` gives each thread whole column panels of its own, so
// no element is written by two threads, and the pointer outlives them
// (the scope of the `&mut DstMat`).
unsafe impl Send for Cols {}
// SAFETY: as above.
unsafe impl Sync for Cols {}

/// One microkernel call: `rows ≤ MR` rows by `cols ≤ NR` columns, over
/// `kc` pairs of `k` (`ap`: `kc × MR` words, `bp`: `kc × NR`), onto the
/// destination's values when `load`, else onto zero.
struct Tile<'a> {
    ap: &'a [u32],
    bp: &'a [u32],
    kc: usize,
    rows: usize,
    cols: usize,
    load: bool,
}

/// [`x86::tile`] in plain Rust: each pair's two exact products added to
/// the f32 sum, the odd element's first.
///
/// # Safety
/// `c` (row stride `rs`) holds the tile's rows and columns.
unsafe fn tile_portable(t: &Tile, c: *mut f32, rs: usize) {
    let mut acc = [[0f32; NR]; MR];
    if t.load {
        for (i, row) in acc.iter_mut().enumerate().take(t.rows) {
            // SAFETY: the caller's.
            let src = unsafe { std::slice::from_raw_parts(c.add(i * rs), t.cols) };
            row[..t.cols].copy_from_slice(src);
        }
    }
    for p in 0..t.kc {
        let bw = &t.bp[p * NR..][..NR];
        let (be, bo): ([f32; NR], [f32; NR]) = (
            std::array::from_fn(|j| from_bf16(bw[j] as u16)),
            std::array::from_fn(|j| from_bf16((bw[j] >> 16) as u16)),
        );
        for (i, row) in acc.iter_mut().enumerate() {
            let w = t.ap[p * MR + i];
            let (ae, ao) = (from_bf16(w as u16), from_bf16((w >> 16) as u16));
            for j in 0..NR {
                row[j] = (row[j] + ao * bo[j]) + ae * be[j];
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(t.rows) {
        // SAFETY: the caller's.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * rs), t.cols) };
        dst.copy_from_slice(&row[..t.cols]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR, Tile};

    /// Sixteen words as the 32 bf16 they hold (the same bits).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn as_bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain bits, every pattern valid.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// One microkernel call on AVX512-BF16.
    ///
    /// # Safety
    /// The CPU has AVX-512F and BF16; `c` (row stride `rs`) holds the
    /// tile's rows and columns.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(t: &Tile, c: *mut f32, rs: usize) {
        let lanes = |nb: usize| t.cols.saturating_sub(16 * nb).min(16);
        let mask = |nb: usize| -> __mmask16 {
            match lanes(nb) {
                16 => u16::MAX,
                l => (1u16 << l) - 1,
            }
        };
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        if t.load {
            for (i, a) in acc.iter_mut().enumerate().take(t.rows) {
                for (nb, v) in a.iter_mut().enumerate() {
                    // A vector with no lanes in the tile is not loaded (its
                    // address may be past the buffer).
                    if lanes(nb) > 0 {
                        // SAFETY: the unmasked lanes are the tile's (the
                        // caller's), and the vector starts inside it.
                        *v = unsafe { _mm512_maskz_loadu_ps(mask(nb), c.add(i * rs + 16 * nb)) };
                    }
                }
            }
        }
        let (ap, bp) = (t.ap.as_ptr(), t.bp.as_ptr());
        for p in 0..t.kc {
            // SAFETY: step p's NR words of B and MR of A (the slices'
            // lengths are kc times those).
            let (b0, b1, aw) = unsafe {
                (
                    _mm512_loadu_si512(bp.add(p * NR).cast()),
                    _mm512_loadu_si512(bp.add(p * NR + 16).cast()),
                    ap.add(p * MR),
                )
            };
            let (b0, b1) = (as_bh(b0), as_bh(b1));
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let w = as_bh(_mm512_set1_epi32(unsafe { aw.add(i).read() } as i32));
                a[0] = _mm512_dpbf16_ps(a[0], w, b0);
                a[1] = _mm512_dpbf16_ps(a[1], w, b1);
            }
        }
        for (i, a) in acc.iter().enumerate().take(t.rows) {
            for (nb, &v) in a.iter().enumerate() {
                if lanes(nb) > 0 {
                    // SAFETY: the unmasked lanes are the tile's.
                    unsafe { _mm512_mask_storeu_ps(c.add(i * rs + 16 * nb), mask(nb), v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Rounding by hand: ties to even, overflow to infinity, NaN kept.
    #[test]
    fn rounding_to_bf16_by_hand() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: to even (1).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: to even (up).
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        // Just above halfway rounds up.
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert_eq!(to_bf16(f32::MAX), 0x7f80);
        assert_eq!(to_bf16(f32::NEG_INFINITY), 0xff80);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        // A NaN whose payload is in the low half only stays NaN.
        assert!(from_bf16(to_bf16(f32::from_bits(0x7f80_0001))).is_nan());
        assert_eq!(from_bf16(0x4049), 3.140625);
    }

    fn randv(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect()
    }

    /// Both kernels against the f64 product of the rounded operands (the
    /// sums within f32 rounding of their size), and against the f32
    /// product within bf16's rounding; for shapes with `m`, `n` and `k`
    /// not multiples of the panels (odd `k`), several `k` blocks, a
    /// transposed `B`, accumulation onto the destination, several
    /// threads; the destination's other columns are left alone.
    #[test]
    fn bf16_products_match_the_rounded_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (m, n, k, threads) in [
            (12, 32, 16, 1),
            (5, 7, 3, 1),
            (25, 70, 41, 2),
            (13, 33, 2 * KC + 9, 2),
            (1, 1, 1, 1),
            (3, 5, 0, 1),
            (3, 70, 0, 2),
            (24, 100, 600, 4),
        ] {
            let a = randv(&mut rng, m * k);
            let b = randv(&mut rng, k * n);
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let init = randv(&mut rng, m * (n + 3));
            let pa = PackedA::new(Mat::rows(&a, k), (m, k));
            let r = |v: f32| f64::from(from_bf16(to_bf16(v)));
            for accumulate in [false, true] {
                for transposed in [false, true] {
                    let bm = if transposed {
                        Mat::rows(&bt, k).t()
                    } else {
                        Mat::rows(&b, n)
                    };
                    let mut pb = Vec::new();
                    pack_b(bm, (k, n), &mut pb, threads);
                    for fast in [false, true] {
                        if fast && !available() {
                            eprintln!("this CPU lacks AVX512-BF16: its kernel is not tested");
                            continue;
                        }
                        let mut out = init.clone();
                        {
                            let mut d = DstMat::whole(&mut out, m, n + 3);
                            gemm_on(&mut d, accumulate, &pa, &pb, n, threads, fast);
                        }
                        for i in 0..m {
                            for j in 0..n + 3 {
                                let got = f64::from(out[i * (n + 3) + j]);
                                let c0 = f64::from(init[i * (n + 3) + j]);
                                if j >= n {
                                    assert_eq!(got, c0, "column {j} past {n} written");
                                    continue;
                                }
                                let base = if accumulate { c0 } else { 0.0 };
                                let (mut want, mut size, mut exact) = (base, base.abs(), base);
                                for p in 0..k {
                                    let (x, y) = (a[i * k + p], b[p * n + j]);
                                    want += r(x) * r(y);
                                    size += (r(x) * r(y)).abs();
                                    exact += f64::from(x) * f64::from(y);
                                }
                                let tol = 2f64.powi(-22) * size * (k as f64).log2().max(1.0);
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{m}x{n}x{k} fast {fast} acc {accumulate}: ({i}, {j}) \
                                     {got} against {want}"
                                );
                                // bf16 keeps 8 bits: each product within
                                // about 2·2⁻⁹ of its size.
                                assert!(
                                    (got - exact).abs() <= 2f64.powi(-7) * size + 1e-6,
                                    "({i}, {j}) {got} against the f32 product {exact}"
                                );
                            }
                        }
                    }
                }
            }
            // The packed operand holds the rounded values where the
            // layout puts them.
            for i in 0..m {
                for j in 0..k {
                    assert_eq!(f64::from(pa.get(i, j)), r(a[i * k + j]));
                }
            }
        }
    }

    /// Packing a matrix made row by row gives the words of packing it
    /// whole (odd and even `k`, `n` past a panel and short of one).
    #[test]
    fn packing_by_rows_is_packing_the_matrix() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (k, n) in [(5, 45), (8, 32), (1, 3), (27, 70)] {
            let b = randv(&mut rng, k * n);
            let mut whole = Vec::new();
            pack_b(Mat::rows(&b, n), (k, n), &mut whole, 1);
            let (mut rows, mut by_rows) = (Vec::new(), vec![9u32; 4 * k * n + 64]);
            let row = |r: usize, dst: &mut [f32]| dst.copy_from_slice(&b[r * n..][..n]);
            pack_b_rows((k, n), row, &mut rows, &mut by_rows);
            assert_eq!(by_rows, whole, "{k}x{n}");
        }
    }

    /// The vector packing of `B` against the scalar one, word for word,
    /// NaNs and infinities included.
    #[test]
    fn packing_b_is_the_same_with_avx512() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (k, n) = (5, 45);
        let mut b = randv(&mut rng, k * n);
        b[3] = f32::NAN;
        b[n + 7] = f32::INFINITY;
        b[2 * n + 1] = f32::from_bits(0x7f80_0001);
        let mut packed = Vec::new();
        pack_b(Mat::rows(&b, n), (k, n), &mut packed, 1);
        let k2 = k.div_ceil(2);
        for jp in 0..n.div_ceil(NR) {
            for p in 0..k2 {
                for jj in 0..NR {
                    let j = jp * NR + jj;
                    let at = |r: usize| if r < k && j < n { b[r * n + j] } else { 0.0 };
                    let want = pair(at(2 * p), at(2 * p + 1));
                    assert_eq!(packed[(jp * k2 + p) * NR + jj], want, "({p}, {j})");
                }
            }
        }
    }
}
