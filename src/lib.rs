//! kseg: kidney and kidney-tumour segmentation on abdominal CT (KiTS19).
//!
//! This facade re-exports the workspace crates under short names:
//! - [`volume`]: NIfTI I/O, KiTS19 cases, windowing, 2.5D stacks, the slice
//!   cache, splits, sampling and the synthetic case generator.
//! - [`augment`]: the contest's augmentation chain as one warp, seeded and
//!   parallel.
//! - [`model`]: the Res-U-Net, PyTorch-checkpoint compatible.
//! - [`loss`]: weighted cross-entropy, Lovász-Softmax, their combination and
//!   the KiTS19 Dice metric.
//! - [`train`]: configuration, data loading, the training loop with
//!   checkpoints and exact resume, whole-volume inference, reporting.
pub mod cli;

pub use kseg_augment as augment;
pub use kseg_loss as loss;
pub use kseg_model as model;
pub use kseg_train as train;
pub use kseg_volume as volume;
