//! The losses of the KiTS19 reference method, on candle: class-weighted
//! cross-entropy (PyTorch semantics), Lovász-Softmax with its sorted-error
//! gradient (exact, at training size, on CPU and CUDA) and their
//! combination. Losses only: the metrics need no tensors and live in
//! `kseg-metrics`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use kseg_loss::{SegLoss, SegLossConfig};
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let logits = candle_core::Var::zeros((2, 3, 4, 4), DType::F32, &dev)?;
//! let labels = Tensor::zeros((2, 4, 4), DType::U32, &dev)?;
//! let weights = Tensor::new(&[0.5f32, 1.0, 1.5], &dev)?;
//! let loss = SegLoss::new(SegLossConfig::default(), Some(weights))?;
//! let parts = loss.forward(logits.as_tensor(), &labels)?;
//! let grads = parts.total.backward()?;
//! assert_eq!(grads.get(&logits).unwrap().dims(), &[2, 3, 4, 4]);
//! # Ok(())
//! # }
//! ```
//!
//! `unsafe` is denied but in a loss's CUDA kernels, `X/cuda.rs` (with the
//! `cuda` feature: launches and device buffers), each block with a
//! `// SAFETY:` comment.

#![deny(unsafe_code)]

mod ce;
mod check;
mod gpu;
mod lovasz;
mod region_loss;
mod seg_loss;

pub use ce::{cross_entropy_with_ignore, weighted_cross_entropy};
pub use gpu::{gpu_ops, set_gpu_ops};
pub use lovasz::{Classes, LovaszConfig, lovasz_grad, lovasz_softmax, lovasz_softmax_host};
pub use region_loss::RegionLoss;
pub use seg_loss::{LossParts, SegLoss, SegLossConfig, class_weights_from_counts};
