//! The host floor of kseg-model: every raw pointer and every `unsafe`
//! block of the crate's CPU code is in this file (the CUDA kernels'
//! launches are in each layer's `X/cuda.rs`: see the crate docs). The CPU
//! kernels (`conv/cpu.rs`, `conv/winograd.rs`, `norm/cpu.rs`) use these
//! safe types:
//!
//! - [`f32_slice`] and [`storage_f32`]: the f32 values of a CPU storage;
//! - [`Mat`] (a strided read-only matrix view), [`DstMat`] (a block to write
//!   a product into) and [`sgemm`] / [`sgemm_on`] (the gemm crate's product
//!   on them, on training's kernels or the fastest, [`Kernels`]);
//! - [`SharedOut`]: one output buffer that parallel work items write
//!   disjoint blocks of, each block checked against the others;
//! - [`lane_sums`] and [`lane_sums3`]: vectorisable per-plane sums;
//! - [`mmap_safetensors`]: a checkpoint file mapped for reading;
//! - [`vnni`] and [`bf16`]: inference's int8 and bf16 kernels.
//!
//! Performance-critical: after editing, run `cargo test -p kseg-model` and
//! `cargo bench --bench model` before and after (docs/ARCHITECTURE.md).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{CpuStorage, Layout, Result, Storage, bail};

pub(crate) mod bf16;
pub(crate) mod vnni;

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

/// A row-major view of a matrix: element (i, j) at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Rows of `rs` values each (the first columns of them when the
    /// product uses fewer).
    pub(crate) fn rows(data: &'a [f32], rs: usize) -> Mat<'a> {
        Mat { data, rs, cs: 1 }
    }

    /// Panics unless the view holds a `rows × cols` matrix.
    pub(crate) fn check(&self, rows: usize, cols: usize, what: &str) {
        let last = (rows.max(1) - 1) * self.rs + (cols.max(1) - 1) * self.cs;
        assert!(
            rows == 0 || cols == 0 || self.data.len() > last,
            "{what}: a {rows}x{cols} matrix outside its {} values",
            self.data.len()
        );
    }

    pub(crate) fn t(self) -> Mat<'a> {
        Mat {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A row-major block to write a product into: element (i, j) at
/// `ptr[i·rs + j]`, `rows × cols`.
pub(crate) struct DstMat<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    rs: usize,
    _out: PhantomData<&'a mut [f32]>,
}

impl<'a> DstMat<'a> {
    /// All of `d` as `rows × cols`.
    pub(crate) fn whole(d: &'a mut [f32], rows: usize, cols: usize) -> DstMat<'a> {
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
    pub(crate) fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "DstMat: row {i} of {}", self.rows);
        // SAFETY: row i of the block is in bounds (checked when the block
        // was made) and this block has it to itself.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.rs), self.cols) }
    }

    /// Sets row `i` to `vals[i]`.
    pub(crate) fn fill_rows(&mut self, vals: &[f32]) {
        for (i, &v) in vals.iter().enumerate().take(self.rows) {
            // SAFETY: row i of the block is in bounds (checked when the
            // block was made) and this block has it to itself.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.rs), self.cols) }.fill(v);
        }
    }
}

/// One output buffer of `samples × rows × cols` values that several
/// threads write disjoint blocks of: block `(sample, columns)` is every row
/// of one sample, restricted to a range of columns (a tile of output rows
/// of every channel). Each block can be taken once: [`SharedOut::block`]
/// checks that it overlaps no block taken before, so the blocks in use
/// never alias and the type is safe to use from any thread.
pub(crate) struct SharedOut<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    /// Values from one sample's first row to the next's.
    sample_stride: usize,
    /// Per sample, the column ranges taken so far (start → end).
    taken: Vec<Mutex<BTreeMap<usize, usize>>>,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: the pointer comes from a `&mut [f32]` held for 'a, and the only
// access to it is through blocks that `block` has checked are disjoint from
// every other block handed out, whichever thread asks.
unsafe impl Send for SharedOut<'_> {}
// SAFETY: as above; the record of taken blocks is behind a mutex.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    /// `d` as `samples` blocks of `rows × cols` values.
    pub(crate) fn new(d: &'a mut [f32], samples: usize, rows: usize, cols: usize) -> SharedOut<'a> {
        assert_eq!(
            d.len(),
            samples * rows * cols,
            "SharedOut: {samples}x{rows}x{cols} in {}",
            d.len()
        );
        SharedOut {
            ptr: d.as_mut_ptr(),
            rows,
            cols,
            sample_stride: rows * cols,
            taken: (0..samples).map(|_| Mutex::new(BTreeMap::new())).collect(),
            _out: PhantomData,
        }
    }

    /// Rows `within` of `d` taken as `samples × total × cols` values: the
    /// blocks are those rows of each sample only (a convolution writing
    /// its channels into part of a concatenation's buffer).
    pub(crate) fn rows_of(
        d: &'a mut [f32],
        (samples, total, cols): (usize, usize, usize),
        within: Range<usize>,
    ) -> SharedOut<'a> {
        assert!(
            d.len() == samples * total * cols && within.start <= within.end && within.end <= total,
            "SharedOut: rows {within:?} of {samples}x{total}x{cols} in {}",
            d.len()
        );
        SharedOut {
            // SAFETY: within.start·cols ≤ total·cols ≤ the length (checked above).
            ptr: unsafe { d.as_mut_ptr().add(within.start * cols) },
            rows: within.len(),
            cols,
            sample_stride: total * cols,
            taken: (0..samples).map(|_| Mutex::new(BTreeMap::new())).collect(),
            _out: PhantomData,
        }
    }

    /// Columns `cs` of every row of `sample`, as a `rows × cs.len()` block
    /// with row stride `cols`. Panics if that block overlaps one taken
    /// before (a bug in the caller's partition of the work).
    pub(crate) fn block(&self, sample: usize, cs: Range<usize>) -> DstMat<'a> {
        assert!(
            sample < self.taken.len() && cs.start <= cs.end && cs.end <= self.cols,
            "SharedOut: block {sample}, {cs:?} outside {}x{}x{}",
            self.taken.len(),
            self.rows,
            self.cols
        );
        if !cs.is_empty() {
            let mut taken = self.taken[sample].lock().unwrap_or_else(|e| e.into_inner());
            let before = taken.range(..cs.end).next_back();
            assert!(
                before.is_none_or(|(_, &end)| end <= cs.start),
                "SharedOut: block {sample}, {cs:?} overlaps one already taken"
            );
            taken.insert(cs.start, cs.end);
        }
        DstMat {
            // SAFETY: in bounds (checked above, and by the constructors):
            // the block's last element is at sample·sample_stride +
            // (rows-1)·cols + cs.end - 1 < the length.
            ptr: unsafe { self.ptr.add(sample * self.sample_stride + cs.start) },
            rows: if cs.is_empty() { 0 } else { self.rows },
            cols: cs.len(),
            rs: self.cols,
            _out: PhantomData,
        }
    }
}

/// `dst[2j] = a[j]`, `dst[2j + 1] = b[j]` (PixelShuffle's rows), with
/// AVX-512 where the CPU has it.
pub(crate) fn interleave(dst: &mut [f32], a: &[f32], b: &[f32]) {
    assert!(
        a.len() == b.len() && dst.len() == 2 * a.len(),
        "interleave: {} and {} values into {}",
        a.len(),
        b.len(),
        dst.len()
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked); the lengths are checked
        // above.
        unsafe { interleave_avx512(dst, a, b) };
        return;
    }
    for (pair, (&x, &y)) in dst.chunks_exact_mut(2).zip(a.iter().zip(b)) {
        pair[0] = x;
        pair[1] = y;
    }
}

/// [`interleave`] on AVX-512.
///
/// # Safety
/// The CPU has AVX-512F; `dst` is twice as long as `a` and `b`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave_avx512(dst: &mut [f32], a: &[f32], b: &[f32]) {
    use std::arch::x86_64::*;
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let n = a.len() / 16 * 16;
    for j in (0..n).step_by(16) {
        // SAFETY: j + 16 ≤ a.len() = b.len(), 2j + 32 ≤ dst.len().
        unsafe {
            let (va, vb) = (
                _mm512_loadu_ps(a.as_ptr().add(j)),
                _mm512_loadu_ps(b.as_ptr().add(j)),
            );
            _mm512_storeu_ps(
                dst.as_mut_ptr().add(2 * j),
                _mm512_permutex2var_ps(va, lo, vb),
            );
            _mm512_storeu_ps(
                dst.as_mut_ptr().add(2 * j + 16),
                _mm512_permutex2var_ps(va, hi, vb),
            );
        }
    }
    for j in n..a.len() {
        dst[2 * j] = a[j];
        dst[2 * j + 1] = b[j];
    }
}

/// Which of the gemm crate's microkernels a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    /// Training's: on x86 with FMA the AVX2+FMA kernels whatever else the
    /// CPU has (what `gemm::gemm` dispatched to before its AVX-512 kernels
    /// were compiled in), so that training's arithmetic, and the default
    /// job's logged losses, are those of every x86 CPU; elsewhere gemm's
    /// own choice.
    Training,
    /// gemm's own choice: AVX-512F where the CPU has it (inference).
    Fastest,
}

/// `dst (m×n) [+]= a (m×k) · b (k×n)` with the gemm crate, on training's
/// kernels ([`Kernels::Training`]).
pub(crate) fn sgemm(
    dst: &mut DstMat,
    accumulate: bool,
    a: Mat,
    b: Mat,
    mnk: (usize, usize, usize),
    threads: usize,
) {
    sgemm_on(Kernels::Training, dst, accumulate, a, b, mnk, threads)
}

/// [`sgemm`] on the given kernels.
pub(crate) fn sgemm_on(
    kernels: Kernels,
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
    assert!(
        m <= dst.rows && n <= dst.cols,
        "sgemm: a {m}x{n} product into {}x{}",
        dst.rows,
        dst.cols
    );
    a.check(m, k, "sgemm");
    b.check(k, n, "sgemm");
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let p = Product {
        m,
        n,
        k,
        dst: dst.ptr,
        dst_cs: 1,
        dst_rs: dst.rs as isize,
        read_dst: accumulate,
        lhs: a.data.as_ptr(),
        lhs_cs: a.cs as isize,
        lhs_rs: a.rs as isize,
        rhs: b.data.as_ptr(),
        rhs_cs: b.cs as isize,
        rhs_rs: b.rs as isize,
        alpha: if accumulate { 1.0 } else { 0.0 },
        par,
    };
    #[cfg(target_arch = "x86_64")]
    if kernels == Kernels::Training && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the bounds are checked above; dst does not alias a or b;
        // the CPU has FMA (checked).
        unsafe { p.on_fma() };
        return;
    }
    let _ = kernels;
    // SAFETY: the bounds are checked above; dst does not alias a or b.
    unsafe { p.on_gemms_choice() }
}

/// One product's operands as the gemm crate takes them (`dst := alpha·dst
/// + lhs·rhs`; strides in elements, all positive here).
struct Product {
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: f32,
    par: gemm::Parallelism,
}

impl Product {
    /// `gemm::gemm`: its dispatcher picks the kernels.
    ///
    /// # Safety
    /// The operands are valid for the sizes and strides; dst aliases
    /// neither input.
    unsafe fn on_gemms_choice(&self) {
        // SAFETY: the caller's.
        unsafe {
            gemm::gemm(
                self.m,
                self.n,
                self.k,
                self.dst,
                self.dst_cs,
                self.dst_rs,
                self.read_dst,
                self.lhs,
                self.lhs_cs,
                self.lhs_rs,
                self.rhs,
                self.rhs_cs,
                self.rhs_rs,
                self.alpha,
                1.0,
                false,
                false,
                false,
                self.par,
            )
        }
    }

    /// What `gemm::gemm` does for f32 with its AVX2+FMA kernels: the
    /// transposition it makes when the destination is row-major (its
    /// microkernels prefer columns), then gemm-common's generic driver with
    /// gemm-f32's FMA microkernel tables (8 lanes), as gemm-f32's own
    /// `fma::gemm_basic` calls it. Our strides are positive, so its sign
    /// fix-ups do nothing.
    ///
    /// # Safety
    /// As [`Product::on_gemms_choice`], and the CPU has FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn on_fma(&self) {
        use gemm_common::simd::MixedSimd;
        use gemm_f32::microkernel::fma::f32 as uk;
        /// gemm-f32's FMA f32 lane count (its private `N`).
        const LANES: usize = 8;
        let p = self;
        let t = p.dst_cs.abs() < p.dst_rs.abs();
        let (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs) = if t {
            (
                p.n, p.m, p.dst_rs, p.dst_cs, p.rhs, p.rhs_rs, p.rhs_cs, p.lhs, p.lhs_rs, p.lhs_cs,
            )
        } else {
            (
                p.m, p.n, p.dst_cs, p.dst_rs, p.lhs, p.lhs_cs, p.lhs_rs, p.rhs, p.rhs_cs, p.rhs_rs,
            )
        };
        let simd = <gemm_common::simd::V3 as MixedSimd<f32, f32, f32, f32>>::try_new()
            .expect("FMA checked by the caller");
        // SAFETY: the caller's; the kernels are those of `simd`'s level.
        unsafe {
            gemm_common::gemm::gemm_basic_generic::<
                _,
                f32,
                LANES,
                { uk::MR_DIV_N * LANES },
                { uk::NR },
                { uk::MR_DIV_N },
                { uk::H_M },
                { uk::H_N },
            >(
                simd,
                m,
                n,
                p.k,
                p.dst,
                dst_cs,
                dst_rs,
                p.read_dst,
                lhs,
                lhs_cs,
                lhs_rs,
                rhs,
                rhs_cs,
                rhs_rs,
                p.alpha,
                1.0,
                false,
                false,
                false,
                |a, b, c| a * b + c,
                &uk::UKR,
                &uk::H_UKR,
                false,
                p.par,
            )
        }
    }
}

/// Lanes of the per-plane sums: independent partial sums that the compiler
/// keeps in vector registers (one running f32 sum waits an add's latency
/// per element and does not vectorise).
const LANES: usize = 16;

/// `Σ f(v)` over `p` for each of the `K` outputs of `f`, in [`LANES`]
/// partial sums.
#[inline(always)]
pub(crate) fn lane_sums<const K: usize>(p: &[f32], f: impl Fn(f32) -> [f32; K]) -> [f32; K] {
    let mut acc = [[0f32; LANES]; K];
    let chunks = p.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for (l, &v) in ch.iter().enumerate() {
            let t = f(v);
            for k in 0..K {
                acc[k][l] += t[k];
            }
        }
    }
    let mut out = acc.map(|a| a.iter().sum::<f32>());
    for &v in rest {
        let t = f(v);
        for k in 0..K {
            out[k] += t[k];
        }
    }
    out
}

/// [`lane_sums`] of `f(a, b, c)` over three planes of the same length.
#[inline(always)]
pub(crate) fn lane_sums3<const K: usize>(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> [f32; K],
) -> [f32; K] {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [[0f32; LANES]; K];
    let full = n / LANES * LANES;
    for ((ca, cb), cc) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
        .zip(c[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let t = f(ca[l], cb[l], cc[l]);
            for k in 0..K {
                acc[k][l] += t[k];
            }
        }
    }
    let mut out = acc.map(|s| s.iter().sum::<f32>());
    for i in full..n {
        let t = f(a[i], b[i], c[i]);
        for k in 0..K {
            out[k] += t[k];
        }
    }
    out
}

/// `path` mapped as a safetensors file (read only).
pub(crate) fn mmap_safetensors(path: &Path) -> Result<candle_core::safetensors::MmapedSafetensors> {
    // SAFETY: the file is only read, and kseg replaces checkpoints by
    // rename, never rewriting one in place; a file changed under the map by
    // another program can give wrong weights but not unsound memory access
    // beyond what the mapping itself allows.
    unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
}
