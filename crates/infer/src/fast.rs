//! The fast mode of prediction (`kseg predict --fast`, opt-in): a coarse
//! pass over every `stride`-th slice, at a fraction of the resolution,
//! finds where the kidneys are; then the full-resolution pass runs only
//! on the slices between the first and the last sampled slice with
//! foreground, cropped in-plane to their box with a margin, and grows
//! that slab a slice at a time each way until a slice has no foreground.
//! Everything outside is background. What it costs in Dice and buys in
//! time is in docs/PERFORMANCE.md.

use std::ops::Range;

use ndarray::{Array3, Axis};

/// The fast mode's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastMode {
    /// The coarse pass segments slices `0, stride, 2·stride, …` (and the
    /// last one).
    pub stride: usize,
    /// The coarse pass runs at `1/shrink` of the full pass's resolution in
    /// each in-plane axis (1: the full pass's own; 2: a quarter of the
    /// pixels and of the work). Ignored for a model of a fixed input size.
    pub shrink: usize,
    /// Millimetres added around the coarse pass's foreground box in-plane
    /// (at least [`MIN_MARGIN_PX`] pixels). The network sees this much
    /// context around the kidneys.
    pub margin_mm: f64,
}

impl Default for FastMode {
    fn default() -> Self {
        FastMode {
            stride: 8,
            shrink: 1,
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

    /// The window the full pass starts from, from the coarse pass's labels
    /// (`labels` `[sampled.len(), H, W]`: plane `i` is the volume's slice
    /// `sampled[i]`, cleaned up as the final labels are, so that specks
    /// far from the kidneys do not widen it): the
    /// slices from the first to the last sampled one with foreground (the
    /// full pass grows it: [`Grow`]); their in-plane box of foreground
    /// widened by the
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
        assert_eq!(d, sampled.len(), "one plane per sampled slice");
        let (mut k0, mut k1) = (usize::MAX, 0);
        let (mut r0, mut r1, mut c0, mut c1) = (usize::MAX, 0, usize::MAX, 0);
        for (i, &k) in sampled.iter().enumerate() {
            let plane = labels.index_axis(Axis(0), i);
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
        let margin = |px_mm: Option<f64>| -> usize {
            let px = px_mm
                .filter(|v| v.is_finite() && *v > 0.0)
                .map_or(0.0, |v| (self.margin_mm / v).ceil());
            (px as usize).max(MIN_MARGIN_PX)
        };
        let rows = widen(r0..r1, margin(spacing.map(|s| s.0)), h, multiple);
        let cols = widen(c0..c1, margin(spacing.map(|s| s.1)), w, multiple);
        Some(Window {
            slices: k0..k1,
            rows,
            cols,
        })
    }
}

/// The growth of the full pass's slab, one end at a time: the slices to
/// segment next beyond an end, until the outermost slice segmented there
/// has no foreground or the volume ends. A kidney is one run of slices,
/// so the first empty slice beyond the sampled ones ends it; the slices
/// between the last sampled slice with foreground and the first without
/// are at most `stride - 1`, and growing one slice at a time segments
/// only those the kidney reaches (and one more), where widening by the
/// stride would segment all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grow {
    /// The slab segmented so far.
    pub slices: Range<usize>,
    /// The volume's slices.
    depth: usize,
    /// Whether each end still grows: towards slice 0, towards the last.
    down: bool,
    up: bool,
}

impl Grow {
    /// Growth from the slab `slices` of a volume of `depth` slices.
    pub fn new(slices: Range<usize>, depth: usize) -> Grow {
        Grow {
            down: slices.start > 0,
            up: slices.end < depth,
            slices,
            depth,
        }
    }

    /// Up to `n` slices (at least 1) beyond the slab's growing ends, the
    /// outermost last at each end; empty when neither end grows.
    pub fn next(&self, n: usize) -> Vec<usize> {
        let n = n.max(1);
        let mut ks = Vec::new();
        if self.down {
            ks.extend((self.slices.start.saturating_sub(n)..self.slices.start).rev());
        }
        if self.up {
            ks.extend(self.slices.end..(self.slices.end + n).min(self.depth));
        }
        ks
    }

    /// Takes the slices `ks` ([`Grow::next`]'s, now segmented) into the
    /// slab; `has_foreground(k)` says whether slice `k` has any. An end
    /// stops growing where its outermost new slice has none, or at the
    /// volume's end.
    pub fn advance(&mut self, ks: &[usize], has_foreground: impl Fn(usize) -> bool) {
        let (a, b) = (self.slices.start, self.slices.end);
        let below = ks.iter().copied().filter(|&k| k < a).min();
        let above = ks.iter().copied().filter(|&k| k >= b).max();
        if let Some(k) = below {
            self.slices.start = k;
            self.down = k > 0 && has_foreground(k);
        }
        if let Some(k) = above {
            self.slices.end = k + 1;
            self.up = k + 1 < self.depth && has_foreground(k);
        }
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
            shrink: 1,
            margin_mm: 20.0,
        };
        let sampled = f.coarse_slices(40);
        let coarse = labels.select(Axis(0), &sampled);
        let win = f.window(&coarse, &sampled, Some((1.0, 2.0)), 32).unwrap();
        assert_eq!(win.slices, 12..17);
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

    /// A slab grown two slices at a time over a volume whose foreground
    /// is on slices 3..=9 (worked by hand): down from 6..8 it takes 5, 4
    /// (4 has foreground), then 3, 2 (2 has none: it stops); up it takes
    /// 8, 9 (9 has), then 10 (the volume's last: it stops).
    #[test]
    fn the_slab_grows_until_a_slice_is_empty() {
        let fg = |k: usize| (3..=9).contains(&k);
        let mut g = Grow::new(6..8, 11);
        let mut rounds = Vec::new();
        loop {
            let ks = g.next(2);
            if ks.is_empty() {
                break;
            }
            g.advance(&ks, fg);
            rounds.push((ks, g.slices.clone()));
        }
        assert_eq!(
            rounds,
            vec![(vec![5, 4, 8, 9], 4..10), (vec![3, 2, 10], 2..11),]
        );
        // One slice at a time, stopping at the first empty one each way;
        // a slab at both ends of the volume does not grow.
        let mut g = Grow::new(5..6, 11);
        let mut seen = Vec::new();
        loop {
            let ks = g.next(1);
            if ks.is_empty() {
                break;
            }
            seen.extend(ks.iter().copied());
            g.advance(&ks, fg);
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![2, 3, 4, 6, 7, 8, 9, 10]);
        assert_eq!(g.slices, 2..11);
        assert!(Grow::new(0..11, 11).next(3).is_empty());
    }

    #[test]
    fn no_foreground_no_window() {
        let labels = Array3::<u8>::zeros((8, 16, 16));
        let f = FastMode::default();
        let ks = f.coarse_slices(8);
        assert_eq!(f.window(&labels.select(Axis(0), &ks), &ks, None, 32), None);
    }
}
