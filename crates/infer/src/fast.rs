//! The fast mode of prediction (`kseg predict --fast`, opt-in): a coarse
//! pass over every `stride`-th slice finds where the kidneys are, then
//! the full-resolution pass runs only on the slab of slices around them,
//! cropped in-plane to their box with a margin. Everything outside is
//! background. What it costs in Dice and buys in time is in
//! docs/PERFORMANCE.md.

use std::ops::Range;

use ndarray::{Array3, Axis};

/// The fast mode's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastMode {
    /// The coarse pass segments slices `0, stride, 2·stride, …` (and the
    /// last one).
    pub stride: usize,
    /// Millimetres added around the coarse pass's foreground box in-plane
    /// (at least [`MIN_MARGIN_PX`] pixels). The network sees this much
    /// context around the kidneys.
    pub margin_mm: f64,
}

impl Default for FastMode {
    fn default() -> Self {
        FastMode {
            stride: 4,
            margin_mm: 120.0,
        }
    }
}

/// The fewest pixels of in-plane margin, whatever the voxel size.
pub const MIN_MARGIN_PX: usize = 16;

/// Where the full-resolution pass runs: slices and, in-plane, rows and
/// columns of the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The slab of slices.
    pub slices: Range<usize>,
    /// Rows of the crop.
    pub rows: Range<usize>,
    /// Columns of the crop.
    pub cols: Range<usize>,
}

impl FastMode {
    /// The slices of the coarse pass of a volume of `depth` slices: every
    /// `stride`-th and the last.
    pub fn coarse_slices(&self, depth: usize) -> Vec<usize> {
        let mut ks: Vec<usize> = (0..depth).step_by(self.stride.max(1)).collect();
        if depth > 0 && ks.last() != Some(&(depth - 1)) {
            ks.push(depth - 1);
        }
        ks
    }

    /// The window of the full pass from the coarse pass's labels (`labels`
    /// `[slices, H, W]`, segmented at `sampled` only): the sampled slices
    /// with foreground, widened by `stride` slices each way (the slices
    /// between samples); their in-plane box of foreground widened by the
    /// margin (`spacing`: the in-plane voxel size in mm when known) and
    /// then, where the volume allows, to a multiple of `multiple` pixels
    /// per side (the network's, so that the crop needs no padding).
    /// `None`: no foreground in the coarse pass.
    pub fn window(
        &self,
        labels: &Array3<u8>,
        sampled: &[usize],
        spacing: Option<(f64, f64)>,
        multiple: usize,
    ) -> Option<Window> {
        let (d, h, w) = labels.dim();
        let (mut k0, mut k1) = (usize::MAX, 0);
        let (mut r0, mut r1, mut c0, mut c1) = (usize::MAX, 0, usize::MAX, 0);
        for &k in sampled {
            let plane = labels.index_axis(Axis(0), k);
            let mut any = false;
            for ((r, c), &v) in plane.indexed_iter() {
                if v != 0 {
                    any = true;
                    r0 = r0.min(r);
                    r1 = r1.max(r + 1);
                    c0 = c0.min(c);
                    c1 = c1.max(c + 1);
                }
            }
            if any {
                k0 = k0.min(k);
                k1 = k1.max(k + 1);
            }
        }
        if k0 == usize::MAX {
            return None;
        }
        let s = self.stride.max(1);
        let slices = k0.saturating_sub(s)..(k1 + s).min(d);
        let margin = |px_mm: Option<f64>| -> usize {
            let px = px_mm
                .filter(|v| v.is_finite() && *v > 0.0)
                .map_or(0.0, |v| (self.margin_mm / v).ceil());
            (px as usize).max(MIN_MARGIN_PX)
        };
        let rows = widen(r0..r1, margin(spacing.map(|s| s.0)), h, multiple);
        let cols = widen(c0..c1, margin(spacing.map(|s| s.1)), w, multiple);
        Some(Window { slices, rows, cols })
    }
}

/// `r` widened by `margin` each way, then to a multiple of `multiple`
/// (growing at the end, then at the start), all within `0..len`.
fn widen(r: Range<usize>, margin: usize, len: usize, multiple: usize) -> Range<usize> {
    let (mut a, mut b) = (r.start.saturating_sub(margin), (r.end + margin).min(len));
    let m = multiple.max(1);
    let want = (b - a).div_ceil(m) * m;
    if want <= len {
        b = (a + want).min(len);
        a = b - want;
    } else {
        a = 0;
        b = len;
    }
    a..b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_slices_are_every_stride_th_and_the_last() {
        let f = FastMode {
            stride: 4,
            ..Default::default()
        };
        assert_eq!(f.coarse_slices(10), vec![0, 4, 8, 9]);
        assert_eq!(f.coarse_slices(9), vec![0, 4, 8]);
        assert_eq!(f.coarse_slices(1), vec![0]);
        assert!(f.coarse_slices(0).is_empty());
    }

    /// A box of foreground on two sampled slices: the slab is those slices
    /// widened by the stride, the crop the box widened by the margin and
    /// rounded to the multiple, inside the volume (worked by hand).
    #[test]
    fn the_window_is_the_box_with_its_margins() {
        let mut labels = Array3::<u8>::zeros((40, 100, 120));
        // Foreground rows 40..50, columns 30..45 on slices 12 and 16;
        // slice 13 (not sampled) is ignored.
        for k in [12, 16] {
            labels.slice_mut(ndarray::s![k, 40..50, 30..45]).fill(1);
        }
        labels[[13, 0, 0]] = 2;
        let f = FastMode {
            stride: 4,
            margin_mm: 20.0,
        };
        let sampled = f.coarse_slices(40);
        let win = f.window(&labels, &sampled, Some((1.0, 2.0)), 32).unwrap();
        assert_eq!(win.slices, 8..21);
        // Rows: 40-20 .. 50+20 = 20..70 (50), to 64: 20..84.
        assert_eq!(win.rows, 20..84);
        // Columns: margin max(10, 16) = 16: 14..61 (47), to 64: 14..78.
        assert_eq!(win.cols, 14..78);
        // Near the edge the rounding grows towards the start; a multiple
        // beyond the volume takes the whole axis.
        assert_eq!(widen(90..100, 16, 100, 32), 68..100);
        assert_eq!(widen(0..10, 0, 20, 32), 0..20);
        assert_eq!(widen(3..5, 0, 100, 1), 3..5);
    }

    #[test]
    fn no_foreground_no_window() {
        let labels = Array3::<u8>::zeros((8, 16, 16));
        let f = FastMode::default();
        assert_eq!(f.window(&labels, &f.coarse_slices(8), None, 32), None);
    }
}
