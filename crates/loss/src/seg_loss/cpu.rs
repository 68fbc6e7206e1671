//! [`SegLoss`](crate::SegLoss)'s CPU kernels: the loss as one host
//! computation. [`applies`] and [`seg_loss`] are what the loss
//! (`seg_loss.rs`) calls; [`value`] and [`grad`] are [`PartOp`]'s forward
//! and backward.
//!
//! Performance-critical: after editing, run `cargo test -p kseg-loss` and
//! `cargo bench -p kseg-loss --bench loss` before and after
//! (docs/ARCHITECTURE.md).
//!
//! Built from candle ops, the combined loss is about twenty graph nodes
//! (log-softmax, gather, index-select, products, casts, sums, the softmax,
//! the Lovász surrogate), each with its own buffers and its own backward,
//! whose gradients candle adds up one by one. At the 128² preset's
//! 4×3×128×128 logits that came to about a fifth of a training step
//! (docs/PERFORMANCE.md). Here the same loss is one pass over the logits,
//! the Lovász sort, and one pass in the backward, all in f64:
//!
//! 1. per pixel, the softmax (in place, over a copy of the logits) and the
//!    cross-entropy's weighted sums `Σ w·log p[y]` and `Σ w`;
//! 2. [`lovasz_softmax_host`] on those probabilities;
//! 3. each part's value as one custom op on the logits, whose backward
//!    forms the gradient from what was kept: for the cross-entropy
//!    `w_i / Σw · (p_k - [k = y_i])`, for the Lovász term the softmax's
//!    Jacobian applied to its gradient `G` with respect to the
//!    probabilities, `p_k (G_k - Σ_j p_j G_j)`.
//!
//! The sums are taken per fixed chunk of pixels and the chunks' partial
//! sums added in order, so the result does not depend on the thread count
//! or scheduling.

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, WithDType, bail};
use rayon::prelude::*;

use super::op::{Kept, Part, PartOp, Saved};
use crate::check::{check_finite, check_logits_labels, host_labels, host_weights};
use crate::lovasz::{LovaszConfig, lovasz_softmax_host};

/// Pixels (or gradient values) per parallel work item.
const CHUNK: usize = 4096;

/// Whether [`seg_loss`] handles these inputs.
pub(super) fn applies(logits: &Tensor, labels: &Tensor) -> bool {
    logits.device().is_cpu()
        && labels.device().is_cpu()
        && matches!(logits.dtype(), DType::F32 | DType::F64)
}

impl Kept {
    /// `u · d part / d logits`, `(B, C, H, W)` flattened.
    fn grad<T: WithDType>(&self, part: Part, u: f64) -> Vec<T> {
        let [_, c, h, w] = self.dims;
        let hw = h * w;
        // Per pixel, Σ_j p_j G_j (the Lovász term's softmax Jacobian).
        let dots: Vec<f64> = match part {
            Part::Ce => Vec::new(),
            Part::Total | Part::Lovasz => (0..self.labels.len())
                .into_par_iter()
                .with_min_len(CHUNK)
                .map(|q| {
                    let (bi, s) = (q / hw, q % hw);
                    (0..c)
                        .map(|k| {
                            let i = (bi * c + k) * hw + s;
                            self.probs[i] * self.lovasz_grad[i]
                        })
                        .sum()
                })
                .collect(),
        };
        let mut out = vec![T::zero(); self.probs.len()];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, dst)| {
            for (j, d) in dst.iter_mut().enumerate() {
                let i = ci * CHUNK + j;
                let (plane, s) = (i / hw, i % hw);
                let (bi, k) = (plane / c, plane % c);
                let q = bi * hw + s;
                let p = self.probs[i];
                let ce = || {
                    let hit = if self.labels[q] as usize == k {
                        1.0
                    } else {
                        0.0
                    };
                    self.ce_scale[q] * (p - hit)
                };
                let lovasz = || p * (self.lovasz_grad[i] - dots[q]);
                let g = match part {
                    Part::Ce => ce(),
                    Part::Lovasz => lovasz(),
                    Part::Total => ce() + self.lambda * lovasz(),
                };
                *d = T::from_f64(u * g);
            }
        });
        out
    }
}

/// The host state and value of a CPU [`PartOp`].
fn host(op: &PartOp) -> Result<(&Kept, f64)> {
    match &op.saved {
        Saved::Host { kept, value } => Ok((kept, *value)),
        #[cfg(feature = "cuda")]
        Saved::Cuda(_) => bail!("loss: a device loss's op on the CPU"),
    }
}

/// [`PartOp`]'s forward: its value, computed already, as a CPU scalar in
/// the logits' dtype.
pub(super) fn value(op: &PartOp) -> Result<CpuStorage> {
    let (kept, value) = host(op)?;
    Ok(match kept.dtype {
        DType::F64 => CpuStorage::F64(vec![value]),
        _ => CpuStorage::F32(vec![value as f32]),
    })
}

/// [`PartOp`]'s backward: `grad_res · d part / d logits`, like `arg`.
pub(super) fn grad(op: &PartOp, arg: &Tensor, grad_res: &Tensor) -> Result<Tensor> {
    let (kept, _) = host(op)?;
    let u = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    match kept.dtype {
        DType::F64 => Tensor::from_vec(kept.grad::<f64>(op.part, u), arg.shape(), arg.device()),
        _ => Tensor::from_vec(kept.grad::<f32>(op.part, u), arg.shape(), arg.device()),
    }
}

/// The logits as f64 on the host, `(B, C, H, W)` flattened.
fn host_logits(logits: &Tensor) -> Result<Vec<f64>> {
    let logits = logits.contiguous()?;
    let (storage, layout) = logits.storage_and_layout();
    let Some((a, b)) = layout.contiguous_offsets() else {
        bail!("loss: logits are not contiguous after contiguous()");
    };
    Ok(match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => v[a..b].par_iter().map(|&x| f64::from(x)).collect(),
        Storage::Cpu(CpuStorage::F64(v)) => v[a..b].to_vec(),
        _ => bail!(
            "loss: the fused CPU loss takes f32 or f64 logits on the CPU, got {:?} on {:?}",
            logits.dtype(),
            logits.device().location()
        ),
    })
}

/// `[ce + λ · lovasz, ce, lovasz]` for CPU logits in f32 or f64 (see the
/// module documentation); the same loss as the candle-op composition
/// [`SegLoss::forward_composed`](crate::SegLoss::forward_composed).
pub(super) fn seg_loss(
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
    lambda: f64,
    lovasz_cfg: &LovaszConfig,
) -> Result<[Tensor; 3]> {
    let (b, c, h, w) = check_logits_labels(logits, labels, "loss")?;
    let (labels_host, _) = host_labels(labels, c, lovasz_cfg.ignore)?;
    let weights = weights.map(|wt| host_weights(wt, c)).transpose()?;
    let x = host_logits(logits)?;
    let hw = h * w;
    check_finite(&x, [b, c, h, w], "loss: logit")?;
    let n = b * hw;
    // One pass per work item (a chunk of one image's pixels, and that chunk
    // of each class plane): the softmax in place of the logits, each
    // pixel's CE weight, and the item's Σ w·log p[y] and Σ w.
    let mut probs = x;
    let mut pix_w = vec![0f64; n];
    let mut items = Vec::new();
    for ((bi, image), image_w) in probs
        .chunks_mut(c * hw)
        .enumerate()
        .zip(pix_w.chunks_mut(hw))
    {
        let mut planes: Vec<_> = image.chunks_mut(hw).map(|p| p.chunks_mut(CHUNK)).collect();
        for (ci, w) in image_w.chunks_mut(CHUNK).enumerate() {
            let chunk: Vec<&mut [f64]> = planes
                .iter_mut()
                .map(|p| p.next().expect("as many chunks per plane"))
                .collect();
            items.push((bi * hw + ci * CHUNK, chunk, w));
        }
    }
    let sums: Vec<(f64, f64)> = items
        .into_par_iter()
        .map(|(q0, mut planes, pix_w)| {
            let (mut num, mut den) = (0f64, 0f64);
            for (j, pw) in pix_w.iter_mut().enumerate() {
                let l = labels_host[q0 + j];
                let m = planes
                    .iter()
                    .map(|p| p[j])
                    .fold(f64::NEG_INFINITY, f64::max);
                let (mut sum, mut x_l) = (0f64, 0f64);
                for (k, p) in planes.iter_mut().enumerate() {
                    if k == l as usize {
                        x_l = p[j];
                    }
                    p[j] = (p[j] - m).exp();
                    sum += p[j];
                }
                for p in planes.iter_mut() {
                    p[j] /= sum;
                }
                if Some(l) == lovasz_cfg.ignore {
                    continue;
                }
                *pw = weights.as_ref().map_or(1.0, |wt| wt[l as usize]);
                num += *pw * (x_l - m - sum.ln());
                den += *pw;
            }
            (num, den)
        })
        .collect();
    let (num, den) = sums
        .iter()
        .fold((0f64, 0f64), |(a, b), (x, y)| (a + x, b + y));
    // No pixel with weight (all ignored, or only zero-weight classes):
    // nothing to learn from, 0 with a zero gradient.
    // Each pixel's weight becomes its share of the sum (the weights are
    // all 0 when the sum is).
    let ce = if den > 0.0 { -num / den } else { 0.0 };
    let mut ce_scale = pix_w;
    if den > 0.0 {
        ce_scale.par_iter_mut().for_each(|pw| *pw /= den);
    }
    let (lovasz, lovasz_grad) = lovasz_softmax_host(&probs, &labels_host, [b, c, h, w], lovasz_cfg);
    let kept = Arc::new(Kept {
        dims: [b, c, h, w],
        dtype: logits.dtype(),
        probs,
        lovasz_grad,
        labels: labels_host,
        ce_scale,
        lambda,
    });
    let part = |part: Part, value: f64| {
        logits.apply_op1(PartOp {
            saved: Saved::Host {
                kept: kept.clone(),
                value,
            },
            part,
        })
    };
    Ok([
        part(Part::Total, ce + lambda * lovasz)?,
        part(Part::Ce, ce)?,
        part(Part::Lovasz, lovasz)?,
    ])
}
