//! The integration tests of kseg-model: one harness (one test binary), a
//! module per topic. A new test of this crate goes into the module of its
//! topic, or a new module here; tests that run the `kseg` binary or the
//! whole pipeline go into the root's `tests/main.rs`. Shared helpers:
//! `tests/support/` at the workspace root.

#[path = "../../../tests/support/mod.rs"]
mod support;
#[path = "../../../tests/support/tensors.rs"]
mod tensors;

/// The convolution's CPU op against candle's conv2d (the definition: in the crate).
mod conv;
/// The fused BatchNorm op against candle's BatchNorm and PyTorch's rules.
mod norm;
/// The whole Res-U-Net: PyTorch interop logits, parameter counts, initialisation, checkpoints.
mod resunet;
