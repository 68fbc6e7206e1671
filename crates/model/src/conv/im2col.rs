//! Unfolding convolution patches: the geometry of one convolution
//! ([`Geo`]) and the row copies that unfold and fold patches. The CPU
//! kernels of `cpu.rs` (and the test-only `Im2Col` / `Col2Im` ops of
//! `op.rs`) are built on them.

use std::ops::Range;

fn out_size(n: usize, k: usize, stride: usize, pad: usize) -> usize {
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
