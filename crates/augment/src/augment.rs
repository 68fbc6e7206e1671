//! One training sample's augmentation: draw, then apply.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rand::Rng;

use crate::config::{AugmentConfig, AugmentParams};
use crate::error::Result;
use crate::resample::Resample;
use crate::warp::apply;

/// One augmented sample and the parameters that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmented {
    /// `(C, out_h, out_w)`.
    pub image: Array3<f32>,
    /// `(out_h, out_w)`.
    pub label: Array2<u8>,
    /// The draw (with the pre-map, if any), replayable with [`apply`].
    pub params: AugmentParams,
}

/// Draws parameters for `image` from `rng` ([`AugmentConfig::sample`]) and
/// applies them to the image and its label ([`apply`]): what the trainer
/// does for every sample, with a generator that depends only on the run's
/// seed, the step and the sample's index in the batch
/// (`kseg_volume::sample_rng`), so batches made in parallel are the same
/// whatever the thread count.
///
/// # Shapes
/// `image`: `(C, H, W)` f32, `label`: `(H, W)` u8 → the configured output
/// size.
pub fn augment(
    cfg: &AugmentConfig,
    image: ArrayView3<f32>,
    label: ArrayView2<u8>,
    rng: &mut impl Rng,
) -> Result<Augmented> {
    let (_, h, w) = image.dim();
    let params = cfg.sample((h, w), rng)?;
    let (image, label) = apply(&params, image, label)?;
    Ok(Augmented {
        image,
        label,
        params,
    })
}

/// [`augment`] of the image `resample` makes, in one warp: the parameters
/// are drawn as for an image of `resample.out_size` (the same draws from
/// `rng` as [`augment`] of the resampled image), and each output pixel is
/// traced through them and the pre-map to the source, sampled once. The
/// returned parameters carry the pre-map.
///
/// # Shapes
/// `image`: `(C, H, W)` f32, `label`: `(H, W)` u8, `(H, W)` =
/// `resample.source_size` → the configured output size (else
/// `resample.out_size`).
///
/// ```
/// use kseg_augment::{AugmentConfig, Resample, augment_resampled};
/// use ndarray::{Array2, Array3};
///
/// // A 3 × 300 × 280 slice of 0.7 × 0.8 mm, trained at 0.78 mm on 256²:
/// let (image, label) = (Array3::<f32>::zeros((3, 300, 280)), Array2::<u8>::zeros((300, 280)));
/// let cfg = AugmentConfig { out_size: Some((256, 256)), ..AugmentConfig::default() };
/// let r = Resample::to_spacing((300, 280), (0.7, 0.8), 0.78, (256, 256)).unwrap();
/// let mut rng = kseg_volume::sample_rng(42, 0, 0);
/// let a = augment_resampled(&cfg, &r, image.view(), label.view(), &mut rng).unwrap();
/// assert_eq!((a.image.dim(), a.label.dim()), ((3, 256, 256), (256, 256)));
/// assert_eq!(a.params.in_size, (256, 256));
/// ```
pub fn augment_resampled(
    cfg: &AugmentConfig,
    resample: &Resample,
    image: ArrayView3<f32>,
    label: ArrayView2<u8>,
    rng: &mut impl Rng,
) -> Result<Augmented> {
    let mut params = cfg.sample(resample.out_size, rng)?;
    params.resample = Some(*resample);
    let (image, label) = apply(&params, image, label)?;
    Ok(Augmented {
        image,
        label,
        params,
    })
}
