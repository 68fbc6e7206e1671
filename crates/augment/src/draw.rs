//! One training sample's augmentation: draw, then apply.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rand::Rng;

use crate::config::{AugmentConfig, AugmentParams};
use crate::error::Result;
use crate::warp::apply;

/// One augmented sample and the parameters that made it.
pub type Augmented = (Array3<f32>, Array2<u8>, AugmentParams);

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
    let (x, y) = apply(&params, image, label)?;
    Ok((x, y, params))
}
