//! The integration tests of kseg-volume: one harness (one test binary), a
//! module per topic. A new test of this crate goes into the module of its
//! topic, or a new module here; tests that run the `kseg` binary or the
//! whole pipeline go into the root's `tests/main.rs`. Shared helpers:
//! `tests/support/` at the workspace root.

#[path = "../../../tests/support/mod.rs"]
mod support;
#[path = "../../../tests/support/dicom.rs"]
mod support_dicom;

/// The slice cache (build, reuse, invalidation) and the synthetic generator.
mod cache_and_synth;
/// DICOM series against pydicom's values and series written here.
mod dicom;
/// DICOM Segmentation output against highdicom's for the same series.
mod dicom_seg;
/// Malformed and hostile headers: sizes against the memory limit,
/// geometry checked where it is read, DICOM header fuzzing.
mod hostile;
/// Real KiTS19 label files (testdata/kits19) against their manifest.
mod kits19;
/// The KiTS23 metrics (Dice, surface Dice) against the official code's
/// values on real KiTS23 label files (testdata/kits23).
mod kits23;
/// NIfTI files written by other software against nibabel-read values.
mod nifti_manifest;
/// Outputs through the one writer: NIfTI names, long names, error texts.
mod write;
