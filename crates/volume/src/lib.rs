//! Volumes for kidney-tumour segmentation: NIfTI-1 I/O, KiTS19 case folders,
//! CT intensity windowing, 2.5D slice stacking, a memory-mapped slice cache,
//! seeded dataset splits and slice sampling, a synthetic KiTS-like case
//! generator, the KiTS Dice metric and atomic file writes. No candle here:
//! everything works on plain `ndarray` arrays.
//!
//! ```
//! use kseg_volume::{synth, CachedCase, Intensity};
//!
//! # fn main() -> Result<(), kseg_volume::VolumeError> {
//! let dir = tempfile::tempdir().unwrap();
//! let cfg = synth::SynthConfig { height: 32, width: 32, min_slices: 8, max_slices: 8, seed: 1, ..Default::default() };
//! let cases = synth::write_dataset(dir.path().join("data"), 1, &cfg)?;
//! let cached = CachedCase::open_or_build(&cases[0], dir.path().join("cache"))?;
//! let (x, y) = cached.sample(0, 1, &Intensity::default())?;
//! assert_eq!(x.shape(), &[3, 32, 32]); // the slice and its two neighbours
//! assert_eq!(y.unwrap().shape(), &[32, 32]);
//! # Ok(())
//! # }
//! ```

pub mod cache;
pub mod case;
pub mod dicom;
mod error;
pub mod fs;
pub mod intensity;
pub mod labels;
pub mod layout;
pub mod metric;
pub mod nifti_io;
pub mod orient;
pub mod postprocess;
mod rng;
pub mod sampling;
pub mod split;
pub mod stack;
pub mod stats;
pub mod surface;
pub mod synth;

pub use cache::{CacheStatus, CachedCase};
pub use case::{Case, CaseDir, find_predictions, list_cases};
pub use error::{Result, VolumeError};
pub use intensity::Intensity;
pub use labels::LabelSet;
pub use metric::{
    CaseDice, DiceAccumulator, DiceSummary, KitsDice, MetricError, dice_from_counts, kits_dice,
};
pub use nifti_io::{
    DType, Header, NiftiImage, Volume, check_output_path, read_header, read_image, read_labels,
    read_labels_internal, read_volume, read_volume_internal, write_volume,
};
pub use rng::sample_rng;
pub use sampling::{SliceRef, SliceSampler};
pub use split::Split;
pub use stack::{stack_indices, stack_sample, stack_slices};

/// The `nifti` crate, whose header type [`Header::nifti`] exposes.
pub use nifti;
