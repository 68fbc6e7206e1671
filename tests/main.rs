//! The root's integration tests: one harness (one test binary) for what
//! runs the `kseg` binary or the whole pipeline. Tests of one crate live in
//! that crate's `tests/` (docs/ARCHITECTURE.md, "Where things go"); shared
//! helpers are in `tests/support/`.

mod support;
#[path = "support/dicom.rs"]
mod support_dicom;
#[path = "support/tensors.rs"]
mod tensors;

/// Bad input to the binary and the readers: one clear error naming the
/// file, exit status 1, no panic, nothing written. New bad-input cases go
/// here.
mod bad_input;
/// The `kseg` commands end to end (info, synth, augment, evaluate,
/// predict) on fixtures and synthetic cases.
mod cli;
/// Outputs for the reading room: `kseg predict` writing a DICOM
/// Segmentation of a DICOM series.
mod dicom_out;
/// Training end to end: the run folder, exact resume, checkpoints,
/// validation, inference from a checkpoint.
mod train;
