//! Augmenting many samples in parallel, reproducibly.

use ndarray::{Array2, Array3};
use rayon::prelude::*;

use crate::config::{AugmentConfig, AugmentParams};
use crate::error::Result;
use crate::warp::apply;

/// One augmented sample and the parameters that made it.
pub type Augmented = (Array3<f32>, Array2<u8>, AugmentParams);

/// Augments `samples` in parallel (rayon). Sample `i` draws from
/// `kseg_volume::sample_rng(seed, epoch, first_index + i)`, so the batch is
/// the same whatever the number of threads.
///
/// # Shapes
/// Each sample: `(C, H, W)` f32 and `(H, W)` u8 → the configured output size.
pub fn augment_batch(
    cfg: &AugmentConfig,
    samples: &[(Array3<f32>, Array2<u8>)],
    seed: u64,
    epoch: u64,
    first_index: u64,
) -> Result<Vec<Augmented>> {
    cfg.validate()?;
    samples
        .par_iter()
        .enumerate()
        .map(|(i, (img, lab))| {
            let mut rng = kseg_volume::sample_rng(seed, epoch, first_index + i as u64);
            let (_, h, w) = img.dim();
            let params = cfg.sample((h, w), &mut rng)?;
            let (x, y) = apply(&params, img.view(), lab.view())?;
            Ok((x, y, params))
        })
        .collect()
}
