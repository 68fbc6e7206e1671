//! What to draw: the configuration, the drawn parameters, and the drawing.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{AugmentError, Result};
use crate::resample::{Resample, fov_pixels};

/// An optional random step: applied with probability `prob`, its factor
/// drawn uniformly from `range`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jitter {
    /// Probability that the jitter is applied to a sample.
    pub prob: f64,
    /// The range its factor or value is drawn from, uniformly.
    pub range: (f64, f64),
}

/// The augmentation chain's settings. `Default` is the reference method's chain (docs/METHOD.md
/// §1): rotation uniform in (-9°, 9°), horizontal flip with probability 0.5,
/// pad 12 px, crop area fraction in (0.92, 0.99) of the padded area and
/// aspect ratio H/W in (0.96, 1.04), resize to 512×512; outside the source
/// the image takes the normalised value of air (-1000 HU through the default
/// window) and the label 0. The nnU-Net-style extras are off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Rotation angle is uniform in (-max, max) degrees.
    pub max_rotation_deg: f64,
    /// Probability of a horizontal flip.
    pub flip_prob: f64,
    /// Padding on every side before the crop, in pixels.
    pub pad: usize,
    /// Crop area as a fraction of the padded area.
    pub crop_area: (f64, f64),
    /// Crop aspect ratio, height / width.
    pub crop_aspect: (f64, f64),
    /// Output `(height, width)`; `None` keeps the input size.
    pub out_size: Option<(usize, usize)>,
    /// Image value outside the source.
    pub fill: f32,
    /// Zoom about the centre (factor > 1 magnifies), part of the warp.
    pub scale: Option<Jitter>,
    /// Multiplies the image.
    pub brightness: Option<Jitter>,
    /// Scales deviations from the image mean.
    pub contrast: Option<Jitter>,
    /// Gamma on the image's min-max range.
    pub gamma: Option<Jitter>,
    /// Gaussian noise; `range` is the standard deviation's.
    pub noise: Option<Jitter>,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            max_rotation_deg: 9.0,
            flip_prob: 0.5,
            pad: 12,
            crop_area: (0.92, 0.99),
            crop_aspect: (0.96, 1.04),
            out_size: Some((512, 512)),
            fill: AugmentConfig::AIR_FILL,
            scale: None,
            brightness: None,
            contrast: None,
            gamma: None,
            noise: None,
        }
    }
}

impl AugmentConfig {
    /// The default `fill`: air (-1000 HU) after the reference method's
    /// intensity window (clip to [-79, 304] HU, then `(v - 101) / 76.9`),
    /// i.e. `(-79 - 101) / 76.9` in f32. kseg-train checks that it equals
    /// `kseg_volume::Intensity::default().air()`, bit for bit.
    pub const AIR_FILL: f32 = (-79.0f32 - 101.0) / 76.9;

    /// nnU-Net-like extras on top of the reference method's chain: scaling (p 0.2,
    /// 0.85-1.25), brightness (p 0.15, 0.75-1.25), contrast (p 0.15,
    /// 0.75-1.25), gamma (p 0.3, 0.7-1.5) and noise (p 0.1, sd 0-0.1).
    pub fn with_nnunet_extras(mut self) -> Self {
        self.scale = Some(Jitter {
            prob: 0.2,
            range: (0.85, 1.25),
        });
        self.brightness = Some(Jitter {
            prob: 0.15,
            range: (0.75, 1.25),
        });
        self.contrast = Some(Jitter {
            prob: 0.15,
            range: (0.75, 1.25),
        });
        self.gamma = Some(Jitter {
            prob: 0.3,
            range: (0.7, 1.5),
        });
        self.noise = Some(Jitter {
            prob: 0.1,
            range: (0.0, 0.1),
        });
        self
    }

    /// Checks every value; a NaN anywhere is an error.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(AugmentError::Config(msg));
        if !(self.max_rotation_deg.is_finite() && (0.0..=180.0).contains(&self.max_rotation_deg)) {
            return bad(format!(
                "max_rotation_deg must be in [0, 180], got {}",
                self.max_rotation_deg
            ));
        }
        if !(0.0..=1.0).contains(&self.flip_prob) {
            return bad(format!(
                "flip_prob must be in [0, 1], got {}",
                self.flip_prob
            ));
        }
        let (a0, a1) = self.crop_area;
        if !(a0 > 0.0 && a0 <= a1 && a1 <= 1.0) {
            return bad(format!(
                "crop_area must satisfy 0 < lo <= hi <= 1, got ({a0}, {a1})"
            ));
        }
        let (r0, r1) = self.crop_aspect;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return bad(format!(
                "crop_aspect must satisfy 0 < lo <= hi, finite, got ({r0}, {r1})"
            ));
        }
        if let Some((h, w)) = self.out_size
            && (h == 0 || w == 0)
        {
            return bad(format!("out_size must be positive, got {h}x{w}"));
        }
        if !self.fill.is_finite() {
            return bad(format!("fill must be finite, got {}", self.fill));
        }
        for (name, j) in [
            ("scale", self.scale),
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("gamma", self.gamma),
            ("noise", self.noise),
        ] {
            let Some(j) = j else { continue };
            let (lo, hi) = j.range;
            let min = if name == "noise" {
                0.0
            } else {
                f64::MIN_POSITIVE
            };
            if !((0.0..=1.0).contains(&j.prob) && lo >= min && lo <= hi && hi.is_finite()) {
                return bad(format!(
                    "{name}: prob must be in [0, 1] and range a finite interval >= {min}, got {j:?}"
                ));
            }
        }
        Ok(())
    }

    /// Draws the parameters for one `(height, width)` input. The draws come
    /// in a fixed order (angle, flip, crop area, crop aspect, crop position,
    /// then each extra), so a seed gives the same parameters everywhere.
    pub fn sample(&self, in_size: (usize, usize), rng: &mut impl Rng) -> Result<AugmentParams> {
        self.validate()?;
        let (h, w) = in_size;
        if h == 0 || w == 0 {
            return Err(AugmentError::Input(format!("zero-size image {h}x{w}")));
        }
        let m = self.max_rotation_deg;
        let angle_deg = if m > 0.0 {
            rng.random_range(-m..m)
        } else {
            0.0
        };
        let flip = rng.random::<f64>() < self.flip_prob;
        let uniform = |rng: &mut dyn rand::RngCore, (lo, hi): (f64, f64)| {
            if lo < hi {
                rng.random_range(lo..hi)
            } else {
                lo
            }
        };
        let crop_area = uniform(rng, self.crop_area);
        let crop_aspect = uniform(rng, self.crop_aspect);
        let (ph, pw) = (h + 2 * self.pad, w + 2 * self.pad);
        let area = crop_area * (ph * pw) as f64;
        // Rounded like torchvision's RandomResizedCrop; clamped to the padded
        // image instead of redrawn, so the drawn area and aspect stay uniform.
        let ch = ((area * crop_aspect).sqrt().round() as usize).clamp(1, ph);
        let cw = ((area / crop_aspect).sqrt().round() as usize).clamp(1, pw);
        let top = rng.random_range(0..=ph - ch);
        let left = rng.random_range(0..=pw - cw);
        let mut draw = |j: Option<Jitter>| -> Option<f64> {
            let j = j?;
            let apply = rng.random::<f64>() < j.prob;
            let v = uniform(rng, j.range);
            apply.then_some(v)
        };
        let scale = draw(self.scale);
        let brightness = draw(self.brightness);
        let contrast = draw(self.contrast);
        let gamma = draw(self.gamma);
        let noise_sd = draw(self.noise);
        let noise_seed = rng.random::<u64>();
        Ok(AugmentParams {
            angle_deg,
            flip,
            crop_area,
            crop_aspect,
            crop: CropRect {
                top,
                left,
                height: ch,
                width: cw,
            },
            pad: self.pad,
            in_size,
            out_size: self.out_size.unwrap_or(in_size),
            fill: self.fill,
            scale: scale.unwrap_or(1.0),
            brightness,
            contrast,
            gamma,
            noise: noise_sd.map(|sd| (sd, noise_seed)),
            resample: None,
        })
    }
}

/// A crop in padded coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropRect {
    /// First row of the crop in the padded image.
    pub top: usize,
    /// First column of the crop in the padded image.
    pub left: usize,
    /// Rows of the crop.
    pub height: usize,
    /// Columns of the crop.
    pub width: usize,
}

/// One draw: everything [`crate::apply`] needs, loggable and replayable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentParams {
    /// Counter-clockwise as displayed (rows downwards), torchvision's sense.
    pub angle_deg: f64,
    /// Whether the image is flipped horizontally.
    pub flip: bool,
    /// The drawn crop area fraction and aspect ratio (H/W).
    pub crop_area: f64,
    /// The crop's drawn aspect ratio H/W.
    pub crop_aspect: f64,
    /// The crop they give, in padded coordinates.
    pub crop: CropRect,
    /// Padding on every side before the crop, in pixels.
    pub pad: usize,
    /// The input's (height, width) the parameters were drawn for: the
    /// image's, or with `resample` the frame's (its `out_size`).
    pub in_size: (usize, usize),
    /// The output's (height, width).
    pub out_size: (usize, usize),
    /// The value of pixels from outside the image (normalised air).
    pub fill: f32,
    /// Zoom about the centre; 1 = none.
    pub scale: f64,
    /// Brightness factor, if drawn.
    pub brightness: Option<f64>,
    /// Contrast factor, if drawn.
    pub contrast: Option<f64>,
    /// Gamma, if drawn.
    pub gamma: Option<f64>,
    /// Standard deviation and the seed of the noise.
    pub noise: Option<(f64, u64)>,
    /// A pre-map from the input the parameters were drawn for (the frame)
    /// to the image `apply` is given, sampled once through both
    /// ([`crate::augment_resampled`]); `None` (the default): the image is
    /// the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample: Option<Resample>,
}

impl AugmentParams {
    /// Resampling to a voxel size: the output `out_size` pixels of
    /// `target` mm, centred on the input's centre, from an input of
    /// `in_size` pixels of `spacing` (rows, columns) mm; what falls outside
    /// the input is `fill`. Used before the augmentation when training at a
    /// fixed in-plane spacing (the input's field of view is cropped or
    /// padded to the output's). A second pass; [`Resample::to_spacing`] is
    /// the same geometry as a pre-map of the augmentation's one warp
    /// ([`AugmentParams::resampled`] for this resampling alone).
    pub fn at_spacing(
        in_size: (usize, usize),
        spacing: (f64, f64),
        target: f64,
        out_size: (usize, usize),
        fill: f32,
    ) -> AugmentParams {
        let (h, w) = in_size;
        // The output's field of view in input pixels.
        let (ch, cw) = fov_pixels(spacing, target, out_size);
        let pad = ch
            .saturating_sub(h)
            .div_ceil(2)
            .max(cw.saturating_sub(w).div_ceil(2));
        let mut p = AugmentParams::identity(in_size, pad, fill);
        p.crop = CropRect {
            top: (pad + h / 2).saturating_sub(ch / 2),
            left: (pad + w / 2).saturating_sub(cw / 2),
            height: ch,
            width: cw,
        };
        p.out_size = out_size;
        p
    }

    /// Parameters that return the input unchanged: no rotation, no flip,
    /// the crop is exactly the unpadded image, output size = input size.
    pub fn identity(in_size: (usize, usize), pad: usize, fill: f32) -> AugmentParams {
        let (h, w) = in_size;
        let (ph, pw) = (h + 2 * pad, w + 2 * pad);
        AugmentParams {
            angle_deg: 0.0,
            flip: false,
            crop_area: (h * w) as f64 / (ph * pw) as f64,
            crop_aspect: h as f64 / w as f64,
            crop: CropRect {
                top: pad,
                left: pad,
                height: h,
                width: w,
            },
            pad,
            in_size,
            out_size: in_size,
            fill,
            scale: 1.0,
            brightness: None,
            contrast: None,
            gamma: None,
            noise: None,
            resample: None,
        }
    }

    /// The resampling `r` alone, as one warp: identity parameters on its
    /// frame, the output the frame (e.g. inference's resize to a voxel
    /// size: `Resample::to_spacing` then [`crate::apply_image`]).
    pub fn resampled(r: Resample, fill: f32) -> AugmentParams {
        AugmentParams {
            resample: Some(r),
            ..AugmentParams::identity(r.out_size, 0, fill)
        }
    }
}
