//! CT volumes for kidney-tumour segmentation, as hospitals have them and as
//! training reads them: NIfTI-1 reading and writing (`nifti`), DICOM CT
//! series (`dicom`, with dicom-rs), orientation from the affine and the
//! canonical layout (`orient`), KiTS19 case folders, CT intensity windowing,
//! 2.5D slice stacking, a memory-mapped slice cache, seeded dataset splits
//! and slice sampling, a synthetic KiTS-like case generator, folder
//! evaluation (`evaluate`, scoring with `kseg-metrics`) and atomic file
//! writes (`fs`). No candle here: everything works on plain `ndarray`
//! arrays.
//!
//! ```
//! use kseg_volume::{synth, CachedCase, Intensity, LabelSet};
//!
//! # fn main() -> Result<(), kseg_volume::VolumeError> {
//! let dir = tempfile::tempdir().unwrap();
//! let cfg = synth::SynthConfig { height: 32, width: 32, min_slices: 8, max_slices: 8, seed: 1, ..Default::default() };
//! let cases = synth::write_dataset(dir.path().join("data"), 1, &cfg)?;
//! let cached = CachedCase::open_or_build(&cases[0], dir.path().join("cache"), LabelSet::Kits19)?;
//! let (x, y) = cached.sample(0, 1, &Intensity::default())?;
//! assert_eq!(x.shape(), &[3, 32, 32]); // the slice and its two neighbours
//! assert_eq!(y.unwrap().shape(), &[32, 32]);
//! # Ok(())
//! # }
//! ```

pub mod cache;
pub mod case;
pub mod dicom;
pub mod dicom_seg;
mod error;
pub mod evaluate;
pub mod fs;
pub mod intensity;
mod layout;
pub mod limits;
pub mod nifti;
pub mod orient;
mod rng;
pub mod sampling;
pub mod split;
pub mod stack;
pub mod synth;

pub use self::nifti::stats;
pub use self::nifti::{
    DType, Header, NiftiImage, Volume, check_output_path, read_header, read_image, read_labels,
    read_labels_canonical, read_volume, read_volume_canonical, write_channels, write_volume,
};
pub use cache::{CacheStatus, CachedCase};
pub use case::{Case, CaseDir, find_predictions, list_cases};
pub use dicom_seg::utc_now;
pub use error::{Result, VolumeError};
pub use evaluate::{FolderEvaluation, evaluate_folder};
pub use intensity::Intensity;
/// The label sets volumes are read with (from `kseg-metrics`).
pub use kseg_metrics::LabelSet;
pub use rng::sample_rng;
pub use sampling::{SliceRef, SliceSampler};
pub use split::Split;
pub use stack::{stack_indices, stack_sample, stack_slices};
