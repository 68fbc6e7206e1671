//! Resampling slices to a voxel size: the one place that defines it for
//! training and inference. A model trained at `data.spacing_mm` sees every
//! slice at that in-plane voxel size. Training takes a window of the
//! training size at it, centred on the slice, which the augmentation
//! composes into its own warp ([`window`]: the source is sampled once);
//! inference resamples whole slices to it ([`size_at`]) and back.

use kseg_augment::{AugmentError, Resample};

/// The training window: `out` pixels of `target` mm centred on a slice of
/// `size` pixels of `spacing` (rows, columns) mm, as a pre-map for
/// `kseg_augment::augment_resampled`.
pub fn window(
    size: (usize, usize),
    spacing: (f64, f64),
    target: f64,
    out: (usize, usize),
) -> Result<Resample, AugmentError> {
    Resample::to_spacing(size, spacing, target, out)
}

/// The size of a slice of `size` pixels of `spacing` (rows, columns) mm
/// resampled to pixels of `target` mm (each side rounded, at least 1).
pub fn size_at(size: (usize, usize), spacing: (f64, f64), target: f64) -> (usize, usize) {
    let side = |n: usize, s: f64| ((n as f64 * s / target).round() as usize).max(1);
    (side(size.0, spacing.0), side(size.1, spacing.1))
}

/// The inverse view: how many pixels of `spacing` mm a window of `size`
/// pixels of `target` mm covers (each side rounded, at least 1).
pub fn window_at(size: (usize, usize), spacing: (f64, f64), target: f64) -> (usize, usize) {
    let side = |n: usize, s: f64| ((n as f64 * target / s).round() as usize).max(1);
    (side(size.0, spacing.0), side(size.1, spacing.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_by_hand() {
        // 512 pixels of 0.78 mm at 1.56 mm: 256; a 128-pixel window at
        // 1.56 mm covers 256 pixels of 0.78 mm.
        assert_eq!(size_at((512, 500), (0.78, 0.78), 1.56), (256, 250));
        assert_eq!(window_at((128, 128), (0.78, 1.56), 1.56), (256, 128));
        assert_eq!(size_at((1, 1), (0.1, 0.1), 10.0), (1, 1));
    }
}
