//! CT intensity windowing: clip HU to a window, then z-score.

use serde::{Deserialize, Serialize};

use crate::error::{Result, VolumeError};

/// HU clip window and z-score parameters.
///
/// The default is docs/METHOD.md §4's: clip to [-79, 304] HU, then subtract 101 and
/// divide by 76.9 (KiTS19 foreground statistics).
///
/// ```
/// use kseg_volume::Intensity;
/// let w = Intensity::default();
/// assert_eq!(w.apply(101.0), 0.0);
/// assert_eq!(w.apply(-1000.0), w.apply(-79.0)); // clipped
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intensity {
    /// Lower end of the HU window.
    pub hu_min: f32,
    /// Upper end of the HU window.
    pub hu_max: f32,
    /// Mean subtracted after clipping.
    pub mean: f32,
    /// Standard deviation divided by after clipping.
    pub std: f32,
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity {
            hu_min: -79.0,
            hu_max: 304.0,
            mean: 101.0,
            std: 76.9,
        }
    }
}

impl Intensity {
    /// Checks that the window is a non-empty finite interval and `std > 0`.
    pub fn validate(&self) -> Result<()> {
        let all_finite = [self.hu_min, self.hu_max, self.mean, self.std]
            .iter()
            .all(|v| v.is_finite());
        if !all_finite || self.hu_min >= self.hu_max || self.std <= 0.0 {
            return Err(VolumeError::InvalidArgument(format!(
                "intensity window needs finite hu_min < hu_max and std > 0, got {self:?}"
            )));
        }
        Ok(())
    }

    /// Normalises one HU value. NaN (a voxel without a value) maps to the
    /// window's lower end, like air.
    #[inline]
    pub fn apply(&self, hu: f32) -> f32 {
        let v = if hu.is_nan() {
            self.hu_min
        } else {
            hu.clamp(self.hu_min, self.hu_max)
        };
        (v - self.mean) / self.std
    }

    /// Normalises values in place.
    pub fn apply_slice(&self, values: &mut [f32]) {
        for v in values {
            *v = self.apply(*v);
        }
    }

    /// The normalised value of air (-1000 HU): the natural fill value for
    /// pixels that augmentation brings in from outside the image.
    pub fn air(&self) -> f32 {
        self.apply(-1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_then_standardises() {
        let w = Intensity::default();
        // Hand-computed: (304 - 101) / 76.9 and (-79 - 101) / 76.9.
        assert!((w.apply(5000.0) - 2.639_792).abs() < 1e-5);
        assert!((w.apply(-5000.0) + 2.340_702).abs() < 1e-5);
        assert!((w.apply(177.9) - 1.0).abs() < 1e-6);
        assert_eq!(w.apply(f32::NAN), w.apply(-79.0));
        assert_eq!(w.air(), w.apply(-79.0));
    }

    #[test]
    fn rejects_bad_windows() {
        let bad = [
            Intensity {
                hu_min: 10.0,
                hu_max: 10.0,
                ..Default::default()
            },
            Intensity {
                std: 0.0,
                ..Default::default()
            },
            Intensity {
                mean: f32::NAN,
                ..Default::default()
            },
        ];
        for w in bad {
            assert!(w.validate().is_err(), "{w:?}");
        }
        Intensity::default().validate().unwrap();
    }
}
