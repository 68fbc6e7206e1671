//! The integration tests of kseg-loss: one harness (one test binary), a
//! module per topic. A new test of this crate goes into the module of its
//! topic, or a new module here; tests that run the `kseg` binary or the
//! whole pipeline go into the root's `tests/main.rs`. Shared helpers:
//! `tests/support/` at the workspace root.

#[path = "../../../tests/support/mod.rs"]
mod support;
#[path = "../../../tests/support/tensors.rs"]
mod tensors;

/// Weighted cross-entropy against PyTorch.
mod ce;
/// The CPU op of `SegLoss` against the candle-op composition.
mod fused_loss;
/// Values and gradients against the reference Lovász code and PyTorch (testdata/losses_reference.json), and finite differences.
mod losses_reference;
