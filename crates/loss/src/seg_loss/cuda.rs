//! [`SegLoss`](crate::SegLoss)'s CUDA kernels (with the `cuda` feature):
//! none yet, so [`applies`] is false and a CUDA loss is
//! [`SegLoss::forward_composed`](crate::SegLoss::forward_composed). The
//! device loss (fused cross-entropy + Lovász with a device radix sort,
//! `../shared/GPU-DESIGN.md` §3.4) goes here: [`applies`] and
//! [`seg_loss`] are what the loss calls, [`value`] and [`grad`] are
//! [`PartOp`]'s forward and backward. Its kernels would sit in
//! `crates/loss/kernels/`, compiled by a `build.rs` like kseg-model's.
//! The arithmetic those kernels follow (sort keys, an 8-bit LSD radix sort,
//! the scan-based Jaccard gradient) is mirrored on the host, step by step,
//! in `mirror.rs`, whose tests check it against `lovasz_softmax_host`.
//!
//! This file (and only it) may hold `unsafe` (kernel launches, device
//! buffers), each block with a `// SAFETY:` comment.

use candle_core::{CudaStorage, Result, Tensor, bail};

use super::op::PartOp;
use crate::lovasz::LovaszConfig;

/// Whether [`seg_loss`] handles these inputs: never yet.
/// With a kernel, this also asks the runtime's switch, [`crate::gpu_ops`]
/// (kseg's own CUDA ops stay off until a recorded GPU run verifies them).
pub(super) fn applies(_logits: &Tensor, _labels: &Tensor) -> bool {
    false
}

/// `[ce + λ · lovasz, ce, lovasz]` on CUDA (where [`applies`]).
pub(super) fn seg_loss(
    _logits: &Tensor,
    _labels: &Tensor,
    _weights: Option<&Tensor>,
    _lambda: f64,
    _lovasz_cfg: &LovaszConfig,
) -> Result<[Tensor; 3]> {
    bail!("loss: no CUDA kernel yet (seg_loss::cuda::applies is false)")
}

/// [`PartOp`]'s forward on CUDA: its value as a device scalar.
pub(super) fn value(_op: &PartOp, _logits: &CudaStorage) -> Result<CudaStorage> {
    bail!("loss: no CUDA kernel yet (seg_loss::cuda::applies is false)")
}

/// [`PartOp`]'s backward on CUDA.
pub(super) fn grad(_op: &PartOp, _arg: &Tensor, _grad_res: &Tensor) -> Result<Tensor> {
    bail!("loss: no CUDA backward yet (seg_loss::cuda::applies is false)")
}
