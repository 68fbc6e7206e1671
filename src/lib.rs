//! kseg: kidney and kidney-tumour segmentation on abdominal CT (KiTS19).
//!
//! This facade re-exports the workspace crates under short names:
//! - [`volume`]: NIfTI I/O, KiTS19 cases, windowing, 2.5D stacks, the slice
//!   cache, splits, sampling and the synthetic case generator.
pub use kseg_volume as volume;
