//! The integration tests of kseg-infer: one harness (one test binary), a
//! module per topic (docs/ARCHITECTURE.md, "Where things go").

/// The ONNX export run by an independent runtime (tract) against kseg's
/// own forward pass.
mod onnx;
