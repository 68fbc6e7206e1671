//! The reference method's training loss: weighted cross-entropy + λ ·
//! Lovász-Softmax.
//!
//! Layout (docs/ARCHITECTURE.md, "Where things go"): this file holds the
//! loss ([`SegLoss`]), which tries each device's fast path in turn (`cuda`,
//! then `cpu`: each module's `applies`, then its `seg_loss`) and falls back
//! to the candle-op composition; `seg_loss/op.rs` the custom op (`PartOp`,
//! one `impl` for every device); `seg_loss/cpu.rs` its CPU kernels, the
//! whole loss as one host computation; `seg_loss/cuda.rs` (with the `cuda`
//! feature) its CUDA kernels (`kernels/seg_loss.cu`); `seg_loss/mirror.rs`
//! (tests only) those kernels' arithmetic on the host.

use candle_core::{Result, Tensor, bail};
use serde::{Deserialize, Serialize};

use crate::ce::cross_entropy_with_ignore;
use crate::lovasz::{LovaszConfig, lovasz_softmax};

mod cpu;
#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // kernel launches: see the crate's unsafe rule (lib.rs)
mod cuda;
#[cfg(test)]
mod mirror;
mod op;

/// Class weights from label voxel counts (docs/METHOD.md §3): `w_c = 1 / sqrt(f_c)`
/// with `f_c` the class frequency, normalised to mean 1. A class with no
/// voxels is given the frequency of the rarest class that has some.
///
/// ```
/// // Frequencies 0.81, 0.18, 0.01 → 1/sqrt: 1.111, 2.357, 10 → mean 4.489.
/// let w = kseg_loss::class_weights_from_counts(&[81, 18, 1]).unwrap();
/// assert!((w[0] - 0.2475).abs() < 1e-3 && (w[2] - 2.2277).abs() < 1e-3);
/// ```
pub fn class_weights_from_counts(counts: &[u64]) -> Result<Vec<f32>> {
    let total: u64 = counts.iter().sum();
    let Some(&rarest) = counts.iter().filter(|&&n| n > 0).min() else {
        bail!("class weights: no labelled voxels in counts {counts:?}");
    };
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| 1.0 / ((n.max(rarest) as f64) / total as f64).sqrt())
        .collect();
    let mean = raw.iter().sum::<f64>() / raw.len() as f64;
    Ok(raw.iter().map(|w| (w / mean) as f32).collect())
}

/// Options of [`SegLoss`]. `Default`: λ = 1, Lovász over present classes
/// pooled over the batch, no ignore label.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegLossConfig {
    /// Weight of the Lovász term.
    pub lambda: f64,
    /// The Lovász-Softmax term's settings (its ignore label also applies to the cross-entropy).
    pub lovasz: LovaszConfig,
}

impl Default for SegLossConfig {
    fn default() -> Self {
        SegLossConfig {
            lambda: 1.0,
            lovasz: LovaszConfig::default(),
        }
    }
}

/// The terms of one loss evaluation.
#[derive(Debug, Clone)]
pub struct LossParts {
    /// `ce + λ · lovasz`: call `backward()` on this.
    pub total: Tensor,
    /// The class-weighted cross-entropy.
    pub ce: Tensor,
    /// The Lovász-Softmax term (before λ).
    pub lovasz: Tensor,
}

/// Weighted cross-entropy on the logits plus λ · Lovász-Softmax on their
/// softmax.
#[derive(Debug, Clone)]
pub struct SegLoss {
    cfg: SegLossConfig,
    weights: Option<Tensor>,
}

impl SegLoss {
    /// `weights`: `(C,)` class weights for the cross-entropy (see
    /// [`class_weights_from_counts`]), or `None` for a plain mean.
    pub fn new(cfg: SegLossConfig, weights: Option<Tensor>) -> Result<SegLoss> {
        if !cfg.lambda.is_finite() || cfg.lambda < 0.0 {
            bail!(
                "loss: lambda must be a finite non-negative number, got {}",
                cfg.lambda
            );
        }
        Ok(SegLoss { cfg, weights })
    }

    /// The loss's settings.
    pub fn config(&self) -> &SegLossConfig {
        &self.cfg
    }

    /// # Shapes
    /// `logits`: `(B, C, H, W)`; `labels`: `(B, H, W)` → scalars.
    ///
    /// On the CPU (f32 or f64 logits) the loss is computed on the host in
    /// f64 (one pass over the logits, then the Lovász sort), and each of
    /// [`LossParts`]' three scalars is one op whose backward is its exact
    /// gradient (`crates/loss/src/seg_loss/cpu.rs`); on CUDA with f32
    /// logits and kseg's GPU ops on ([`crate::set_gpu_ops`], with the
    /// `cuda` feature) the same computation runs on the device
    /// (`seg_loss/cuda.rs`); elsewhere it is [`SegLoss::forward_composed`]. The two agree to
    /// rounding (`crates/loss/tests/fused_loss.rs`).
    pub fn forward(&self, logits: &Tensor, labels: &Tensor) -> Result<LossParts> {
        let (weights, lambda, lovasz_cfg) =
            (self.weights.as_ref(), self.cfg.lambda, &self.cfg.lovasz);
        #[cfg(feature = "cuda")]
        if cuda::applies(logits, labels) {
            let [total, ce, lovasz] = cuda::seg_loss(logits, labels, weights, lambda, lovasz_cfg)?;
            return Ok(LossParts { total, ce, lovasz });
        }
        if cpu::applies(logits, labels) {
            let [total, ce, lovasz] = cpu::seg_loss(logits, labels, weights, lambda, lovasz_cfg)?;
            return Ok(LossParts { total, ce, lovasz });
        }
        self.forward_composed(logits, labels)
    }

    /// The same loss composed of candle ops ([`cross_entropy_with_ignore`]
    /// and [`lovasz_softmax`] on `softmax(logits)`), on any device: what
    /// [`SegLoss::forward`] runs off the CPU.
    ///
    /// [`cross_entropy_with_ignore`]: crate::cross_entropy_with_ignore
    /// [`lovasz_softmax`]: crate::lovasz_softmax
    pub fn forward_composed(&self, logits: &Tensor, labels: &Tensor) -> Result<LossParts> {
        let ce = cross_entropy_with_ignore(
            logits,
            labels,
            self.weights.as_ref(),
            self.cfg.lovasz.ignore,
        )?;
        let probs = candle_nn::ops::softmax(logits, 1)?;
        let lovasz = lovasz_softmax(&probs, labels, &self.cfg.lovasz)?;
        let total = (&ce + lovasz.affine(self.cfg.lambda, 0.0)?)?;
        Ok(LossParts { total, ce, lovasz })
    }
}
