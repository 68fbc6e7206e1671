//! Losses and the metric of the KiTS19 method, on candle: class-weighted
//! cross-entropy (PyTorch semantics), Lovász-Softmax with its sorted-error
//! gradient (exact, at training size, on CPU and CUDA), their combination,
//! and the KiTS19 per-case Dice.
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

mod ce;
mod check;
mod combined;
mod dice;
mod fused;
mod lovasz;

pub use ce::{cross_entropy_with_ignore, weighted_cross_entropy};
pub use combined::{LossParts, SegLoss, SegLossConfig, class_weights_from_counts};
pub use dice::{
    CaseDice, DiceAccumulator, DiceSummary, KitsDice, MetricError, dice_from_counts, kits_dice,
};
pub use lovasz::{Classes, LovaszConfig, lovasz_grad, lovasz_softmax, lovasz_softmax_host};
