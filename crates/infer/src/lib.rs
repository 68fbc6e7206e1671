//! Running a trained kseg model: the model file ([`ModelMeta`] in a
//! safetensors file of PyTorch-named weights; [`save_model`],
//! [`read_meta`]), whole-volume inference ([`Segmenter`]: every slice
//! stacked with its neighbours, normalised, resampled to the training voxel
//! size or padded as in training, segmented in batches, optionally with
//! mirroring, decoded by the label set, brought back to the volume's grid),
//! the clean-up ([`postprocess`]), the lesion report ([`report`]), the one resampling to a voxel size that
//! training and inference share ([`resample`]), and the device runtime
//! ([`runtime`]). It needs neither the trainer nor its plots: a program that
//! depends on this crate alone loads a checkpoint and segments a volume.
//!
//! ```
//! use candle_core::{DType, Device};
//! use kseg_infer::{ModelMeta, Segmenter, save_model};
//! use kseg_model::{ResUNet, ResUNetConfig};
//! # fn main() -> kseg_infer::Result<()> {
//! // A small model file, as training writes one.
//! let cfg = ResUNetConfig { base_channels: 4, depth: 2, ..Default::default() };
//! let (_, varmap) = ResUNet::init(&cfg, 7, DType::F32, &Device::Cpu)?;
//! let dir = tempfile::tempdir().unwrap();
//! let file = dir.path().join("model.safetensors");
//! save_model(&varmap, &ModelMeta::new(cfg), &file)?;
//! // Load it and segment a 5-slice volume of HU values.
//! let seg = Segmenter::load(&file, &Device::Cpu, 4)?;
//! let hu = ndarray::Array3::<f32>::from_elem((5, 16, 16), -1000.0);
//! let labels = seg.segment_volume(hu.view())?;
//! assert_eq!(labels.dim(), (5, 16, 16));
//! # Ok(())
//! # }
//! ```

pub mod bundle;
mod error;
pub mod fast;
pub mod model_file;
pub mod onnx;
pub mod postprocess;
pub mod report;
pub mod resample;
pub mod runtime;
mod segmenter;

pub use error::{InferError, Result, candle_text};
pub use fast::{FastMode, Grow};
pub use model_file::{
    MAX_IN_PLANE, META_KEY, MODEL_FILE, ModelMeta, model_file, read_meta, save_model,
};
pub use runtime::{device, device_name, init_cpu_threads, on_cpu_pool};
pub use segmenter::Segmenter;
