//! The KiTS19 contest's augmentation: rotation by θ ~ U(-9°, 9°),
//! horizontal flip with probability 0.5, and pad-and-random-resized-crop,
//! applied to an image of any channel count and its label together, as one
//! warp (one interpolation, one pass over memory). Drawing the parameters is
//! separate from applying them, every random function takes an explicit
//! RNG ([`augment`] draws and applies for one sample with its own
//! generator, so batches made in parallel do not depend on the thread count).
//! Beyond the reference method, off by default: scaling, brightness, contrast, gamma and
//! Gaussian noise. Resampling to a voxel size composes with the warp
//! ([`Resample`], [`augment_resampled`]): a training sample at a fixed
//! in-plane spacing is still sampled once.
//!
//! ```
//! use kseg_augment::{apply, AugmentConfig};
//! use ndarray::{Array2, Array3};
//!
//! let cfg = AugmentConfig { out_size: Some((64, 64)), ..AugmentConfig::default() };
//! let image = Array3::<f32>::zeros((3, 64, 64));
//! let label = Array2::<u8>::zeros((64, 64));
//! let mut rng = kseg_volume::sample_rng(42, 0, 0);
//! let params = cfg.sample((64, 64), &mut rng).unwrap();
//! assert!(params.angle_deg.abs() < 9.0);
//! let (x, y) = apply(&params, image.view(), label.view()).unwrap();
//! assert_eq!((x.dim(), y.dim()), ((3, 64, 64), (64, 64)));
//! ```

mod augment;
mod config;
mod error;
mod resample;
mod warp;

pub use augment::{Augmented, augment, augment_resampled};
pub use config::{AugmentConfig, AugmentParams, CropRect, Jitter};
pub use error::{AugmentError, Result};
pub use resample::Resample;
pub use warp::{apply, apply_image};
