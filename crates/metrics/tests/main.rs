//! The integration tests of kseg-metrics: one harness (one test binary), a
//! module per topic. The KiTS23 metrics against the official code's numbers
//! on real label files are in kseg-volume's tests (they read NIfTI files).

/// The KiTS Dice metric against hand-derived cases.
mod dice;
