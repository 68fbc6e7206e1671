//! Resampling to a voxel size as an axis-aligned pre-map of the warp.
//!
//! Training at a fixed in-plane voxel size used to resample each slice
//! ([`crate::AugmentParams::at_spacing`] + [`crate::apply`]) and then
//! augment the result: two interpolations, two passes. A [`Resample`] in
//! [`crate::AugmentParams::resample`] describes the resampled image instead
//! of making it: the parameters are drawn for its size (the *frame*,
//! [`Resample::out_size`]) and each output pixel is traced through the
//! augmentation to the frame, then through the pre-map to the real source,
//! which is sampled once ([`crate::augment_resampled`]).

use serde::{Deserialize, Serialize};

use crate::error::{AugmentError, Result};

/// An axis-aligned map from a frame of `out_size` pixels (the augmentation's
/// input, never made) to the real source of `source_size` pixels.
///
/// Positions are in pixels with pixel centres at integers (the first pixel
/// spans `[-0.5, 0.5)`), `(row, column)` order. Frame position `p` lies at
/// source position `origin + scale · (p + 0.5)`, clamped to the source pixel
/// centres the frame covers, `[origin + 0.5, origin + scale · out - 0.5]`
/// per axis: torch's bilinear resize (`align_corners = false`) of that
/// source rectangle ([`Resample::map`]). Source positions more than half a
/// pixel outside the source read as the fill value (image) or 0 (label);
/// bilinear neighbours outside it read as the fill value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resample {
    /// The real source's `(height, width)`: the image `apply` is given.
    pub source_size: (usize, usize),
    /// The frame's `(height, width)`: the size the augmentation's
    /// parameters are drawn for ([`crate::AugmentParams::in_size`]).
    pub out_size: (usize, usize),
    /// Source pixels per frame pixel, `(rows, columns)`; finite, > 0.
    pub scale: (f64, f64),
    /// The source position of the frame's top-left corner (the edge, not
    /// the first pixel's centre), `(row, column)`; finite.
    pub origin: (f64, f64),
}

impl Resample {
    /// Resampling to a voxel size, the geometry of
    /// [`crate::AugmentParams::at_spacing`]: the frame is `out_size` pixels
    /// of `target_mm`, centred on the source's centre, from a source of
    /// `source_size` pixels of `spacing_mm` (rows, columns). As there, the
    /// frame's field of view is rounded to whole source pixels
    /// (`round(out · target / spacing)`, at least 1) and placed at the whole
    /// pixel `h / 2 - fov / 2` (integer halves).
    ///
    /// # Errors
    /// A zero size, or a spacing or target that is not finite and > 0.
    pub fn to_spacing(
        source_size: (usize, usize),
        spacing_mm: (f64, f64),
        target_mm: f64,
        out_size: (usize, usize),
    ) -> Result<Resample> {
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if !(pos(spacing_mm.0) && pos(spacing_mm.1) && pos(target_mm)) {
            return Err(AugmentError::Input(format!(
                "spacing {spacing_mm:?} mm and target {target_mm} mm must be finite and > 0"
            )));
        }
        check_sizes(source_size, out_size)?;
        let (h, w) = source_size;
        let (ch, cw) = fov_pixels(spacing_mm, target_mm, out_size);
        // at_spacing's crop, in source (unpadded) coordinates.
        let top = (h / 2) as f64 - (ch / 2) as f64;
        let left = (w / 2) as f64 - (cw / 2) as f64;
        let r = Resample {
            source_size,
            out_size,
            scale: (ch as f64 / out_size.0 as f64, cw as f64 / out_size.1 as f64),
            origin: (top - 0.5, left - 0.5),
        };
        r.validate()?;
        Ok(r)
    }

    /// Checks the sizes (non-zero) and the scale and origin (finite, scale
    /// > 0).
    pub fn validate(&self) -> Result<()> {
        check_sizes(self.source_size, self.out_size)?;
        let (sy, sx) = self.scale;
        let (oy, ox) = self.origin;
        if !(sy.is_finite() && sx.is_finite() && sy > 0.0 && sx > 0.0) {
            return Err(AugmentError::Input(format!(
                "resample scale {:?} must be finite and > 0",
                self.scale
            )));
        }
        if !(oy.is_finite() && ox.is_finite()) {
            return Err(AugmentError::Input(format!(
                "resample origin {:?} must be finite",
                self.origin
            )));
        }
        Ok(())
    }

    /// The source position of frame position `(row, column)` (see the
    /// type's documentation), as the warp computes it.
    pub fn map(&self, p: (f64, f64)) -> (f64, f64) {
        PreMap::new(self).map(p)
    }
}

fn check_sizes(source: (usize, usize), out: (usize, usize)) -> Result<()> {
    if source.0 == 0 || source.1 == 0 || out.0 == 0 || out.1 == 0 {
        return Err(AugmentError::Input(format!(
            "zero-size resample from {}x{} to {}x{}",
            source.0, source.1, out.0, out.1
        )));
    }
    Ok(())
}

/// The source pixels that `out_size` pixels of `target` mm span at
/// `spacing` mm, per axis (rounded, at least 1): the field of view of
/// [`Resample::to_spacing`] and [`crate::AugmentParams::at_spacing`].
pub(crate) fn fov_pixels(
    spacing: (f64, f64),
    target: f64,
    out_size: (usize, usize),
) -> (usize, usize) {
    (
        ((out_size.0 as f64 * target / spacing.0).round() as usize).max(1),
        ((out_size.1 as f64 * target / spacing.1).round() as usize).max(1),
    )
}

/// [`Resample::map`]'s constants, per axis `(rows, columns)`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PreMap {
    /// `origin + scale / 2`: the position of frame position 0.
    pub(crate) base: (f64, f64),
    pub(crate) scale: (f64, f64),
    lo: (f64, f64),
    hi: (f64, f64),
    /// The frame positions inside the frame's edge pixel centres where the
    /// map does not clamp (`base + scale · p` alone), lowest and highest:
    /// the warp's fast path.
    pub(crate) inner_lo: (f64, f64),
    pub(crate) inner_hi: (f64, f64),
}

impl PreMap {
    pub(crate) fn new(r: &Resample) -> PreMap {
        let axis = |origin: f64, scale: f64, n: usize| {
            let lo = origin + 0.5;
            // A frame narrower than a source pixel: its one centre.
            let hi = (origin + scale * n as f64 - 0.5).max(lo);
            let base = origin + 0.5 * scale;
            let inner_lo = ((lo - base) / scale).max(0.0);
            let inner_hi = ((hi - base) / scale).min(n as f64 - 1.0);
            (base, lo, hi, inner_lo, inner_hi)
        };
        let (by, loy, hiy, ily, ihy) = axis(r.origin.0, r.scale.0, r.out_size.0);
        let (bx, lox, hix, ilx, ihx) = axis(r.origin.1, r.scale.1, r.out_size.1);
        PreMap {
            base: (by, bx),
            scale: r.scale,
            lo: (loy, lox),
            hi: (hiy, hix),
            inner_lo: (ily, ilx),
            inner_hi: (ihy, ihx),
        }
    }

    /// Frame position → source position, `(row, column)`.
    #[inline(always)]
    pub(crate) fn map(&self, (y, x): (f64, f64)) -> (f64, f64) {
        (
            (self.base.0 + self.scale.0 * y)
                .max(self.lo.0)
                .min(self.hi.0),
            (self.base.1 + self.scale.1 * x)
                .max(self.lo.1)
                .min(self.hi.1),
        )
    }
}
