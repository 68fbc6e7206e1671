//! Lovász-Softmax (Berman, Rannen Triki and Blaschko, CVPR 2018).
//!
//! Per class `c`, the errors `e = |[y = c] - p_c|` are sorted in descending
//! order and the loss is `dot(e_sorted, g)` with `g = lovasz_grad(fg_sorted)`,
//! the discrete derivative of the Jaccard loss along the sorted order. The
//! gradient treats `g` and the order as constants: `dL/de_sorted = g / K`
//! (`K` the number of classes averaged), which is the exact gradient wherever
//! the order is locally constant, as in the reference implementation
//! (`bermanmaxim/LovaszSoftmax`, `lovasz_softmax`).
//!
//! # How it runs
//! Sorting millions of errors is done on the host: candle's CUDA argsort
//! fails past 8192 elements per row and its cumsum is O(n²) in memory. The
//! probabilities are copied to the host once, each (image, class) group is
//! sorted in parallel (rayon; a stable order, ties broken by pixel index),
//! `g` is computed with integer counts and f64 Jaccard differences, and the
//! exact gradient with respect to the probabilities is formed there. The
//! result is applied on the input's device as the surrogate
//! `value + (sum(probs * G) - detach(sum(probs * G)))`, whose value is the
//! loss and whose gradient is exactly `G` times the upstream gradient,
//! through candle's ordinary (correct) mul/sum backward. One device→host
//! copy of the probabilities and one host→device copy of `G` per call.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::check::{check_finite, check_logits_labels, host_labels};

/// Which classes the loss averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classes {
    /// Classes with at least one (non-ignored) pixel in the labels.
    #[default]
    Present,
    /// Every class.
    All,
}

/// Options of [`lovasz_softmax`]. `Default`: present classes, all pixels of
/// the batch pooled, no ignore label (the reference's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LovaszConfig {
    /// Which classes the loss averages over.
    pub classes: Classes,
    /// Compute the loss per image and average over images.
    pub per_image: bool,
    /// A label value whose pixels are left out.
    pub ignore: Option<u32>,
}

/// The gradient of the Lovász extension of the Jaccard loss for one class,
/// given the ground truth along the errors sorted in descending order:
/// `I = G - cumsum(fg)`, `U = G + cumsum(1 - fg)`, `J = 1 - I/U`,
/// `g = [J[0], J[1] - J[0], J[2] - J[1], ...]`.
///
/// Counts are integers and `J` is computed in f64: in f32 the differences
/// lose 1-2% of the gradient at a million pixels.
///
/// ```
/// // fg sorted by error: [1, 0, 1]: G = 2.
/// let g = kseg_loss::lovasz_grad(&[true, false, true]);
/// // J = [1 - 1/2, 1 - 1/3, 1 - 0/3] = [0.5, 0.6667, 1.0]
/// assert!((g[0] - 0.5).abs() < 1e-12);
/// assert!((g[1] - (2.0 / 3.0 - 0.5)).abs() < 1e-12);
/// assert!((g[2] - 1.0 / 3.0).abs() < 1e-12);
/// ```
pub fn lovasz_grad(fg_sorted: &[bool]) -> Vec<f64> {
    let gts = fg_sorted.iter().filter(|&&f| f).count() as u64;
    let mut steps = JaccardSteps::new(gts);
    fg_sorted.iter().map(|&f| steps.next(f)).collect()
}

/// [`lovasz_grad`] one sorted pixel at a time: `G` is the number of
/// foreground pixels, and each call returns the next `g`.
struct JaccardSteps {
    gts: u64,
    cum_fg: u64,
    cum_bg: u64,
    prev: f64,
}

impl JaccardSteps {
    fn new(gts: u64) -> JaccardSteps {
        JaccardSteps {
            gts,
            cum_fg: 0,
            cum_bg: 0,
            prev: 0.0,
        }
    }

    fn next(&mut self, fg: bool) -> f64 {
        if fg {
            self.cum_fg += 1;
        } else {
            self.cum_bg += 1;
        }
        let inter = (self.gts - self.cum_fg) as f64;
        let union = (self.gts + self.cum_bg) as f64;
        let j = 1.0 - inter / union;
        let g = j - self.prev;
        self.prev = j;
        g
    }
}

/// Loss and gradient with respect to the probabilities, on the host.
///
/// `probs`: `(B, C, H, W)` flattened; `labels`: `(B, H, W)` flattened.
/// Returns the loss and `dL/dprobs` (same layout as `probs`).
pub fn lovasz_softmax_host(
    probs: &[f64],
    labels: &[u32],
    dims: [usize; 4],
    cfg: &LovaszConfig,
) -> (f64, Vec<f64>) {
    let [b, c, h, w] = dims;
    let hw = h * w;
    assert_eq!(probs.len(), b * c * hw, "probs length");
    assert_eq!(labels.len(), b * hw, "labels length");
    // Groups of images whose pixels are pooled.
    let groups: Vec<Vec<usize>> = if cfg.per_image {
        (0..b).map(|i| vec![i]).collect()
    } else {
        vec![(0..b).collect()]
    };
    let n_groups = groups.len() as f64;
    // (group, class) jobs for the classes each group uses.
    let mut jobs = Vec::new();
    for (gi, imgs) in groups.iter().enumerate() {
        let mut present = vec![false; c];
        for &i in imgs {
            for &l in &labels[i * hw..(i + 1) * hw] {
                if Some(l) != cfg.ignore {
                    present[l as usize] = true;
                }
            }
        }
        let used: Vec<usize> = match cfg.classes {
            Classes::Present => (0..c).filter(|&k| present[k]).collect(),
            Classes::All => (0..c).collect(),
        };
        // All pixels ignored: the group contributes 0 (as the reference).
        let any_pixel = imgs.iter().any(|&i| {
            labels[i * hw..(i + 1) * hw]
                .iter()
                .any(|&l| Some(l) != cfg.ignore)
        });
        if !any_pixel {
            continue;
        }
        let k = used.len();
        for class in used {
            jobs.push((gi, class, 1.0 / (k as f64 * n_groups)));
        }
    }
    // Each job: sort its pixels by error, compute g, its loss share and the
    // gradient of its class plane in each of the group's images.
    let results: Vec<(f64, Vec<f64>)> = jobs
        .par_iter()
        .map(|&(gi, class, scale)| {
            let imgs = &groups[gi];
            // Sort keys: errors are >= 0, so their f64 bit patterns order
            // like the values; inverted for a descending order, with the
            // pixel's index in the group (`t`, in pixel order) below them to
            // break ties. The two lowest bits carry what the gradient needs:
            // whether the pixel is of the class, and whether `p` is above
            // its target (`d|t - p|/dp = sign(p - t)`, 0 where the error is).
            // One u128 per pixel sorts faster than tuples with a closure.
            let mut keys: Vec<u128> = Vec::with_capacity(imgs.len() * hw);
            let mut gts = 0u64;
            for (pos, &i) in imgs.iter().enumerate() {
                let plane = &probs[(i * c + class) * hw..][..hw];
                for (s, (&l, &p)) in labels[i * hw..][..hw].iter().zip(plane).enumerate() {
                    if Some(l) == cfg.ignore {
                        continue;
                    }
                    let fg = l as usize == class;
                    gts += u64::from(fg);
                    let target = if fg { 1.0 } else { 0.0 };
                    let e = (target - p).abs();
                    let t = (pos * hw + s) as u128;
                    keys.push(
                        (u128::from(!e.to_bits()) << 64)
                            | t << 2
                            | u128::from(fg) << 1
                            | u128::from(p > target),
                    );
                }
            }
            keys.par_sort_unstable();
            let mut steps = JaccardSteps::new(gts);
            let mut loss = 0.0;
            let mut grad = vec![0.0; imgs.len() * hw];
            for k in keys {
                let e = f64::from_bits(!((k >> 64) as u64));
                let g = steps.next(k & 2 != 0);
                loss += e * g;
                let sign = if e == 0.0 {
                    0.0
                } else if k & 1 != 0 {
                    1.0
                } else {
                    -1.0
                };
                grad[(k as u64 >> 2) as usize] = g * sign * scale;
            }
            (loss * scale, grad)
        })
        .collect();
    let mut grad = vec![0.0; probs.len()];
    let mut loss = 0.0;
    for (&(gi, class, _), (l, g)) in jobs.iter().zip(results) {
        loss += l;
        for (pos, &i) in groups[gi].iter().enumerate() {
            grad[(i * c + class) * hw..][..hw].copy_from_slice(&g[pos * hw..][..hw]);
        }
    }
    (loss, grad)
}

/// Lovász-Softmax loss of softmax probabilities against labels.
///
/// Pass probabilities, not logits: `candle_nn::ops::softmax(&logits, 1)`
/// (not `softmax_last_dim`, which drops gradients). No class present, or all
/// pixels ignored, gives 0 with a zero gradient.
///
/// # Shapes
/// `probs`: `(B, C, H, W)` f32 or f64 on any device; `labels`: `(B, H, W)`
/// integer with values in `0..C` (or the ignore label) → scalar.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use kseg_loss::{lovasz_softmax, LovaszConfig};
/// # fn main() -> candle_core::Result<()> {
/// // Labels [0, 1, 1, 0] with p(class 1) = [.2, .7, .4, .1] (docs/METHOD.md §3's hand
/// // case): 0.3875.
/// let p1 = [0.2f64, 0.7, 0.4, 0.1];
/// let p0: Vec<f64> = p1.iter().map(|p| 1.0 - p).collect();
/// let probs = Tensor::from_vec([p0, p1.to_vec()].concat(), (1, 2, 1, 4), &Device::Cpu)?;
/// let labels = Tensor::new(&[[[0u32, 1, 1, 0]]], &Device::Cpu)?;
/// let loss = lovasz_softmax(&probs, &labels, &LovaszConfig::default())?;
/// assert!((loss.to_scalar::<f64>()? - 0.3875).abs() < 1e-12);
/// # Ok(())
/// # }
/// ```
pub fn lovasz_softmax(probs: &Tensor, labels: &Tensor, cfg: &LovaszConfig) -> Result<Tensor> {
    let (b, c, h, w) = check_logits_labels(probs, labels, "Lovász-Softmax")?;
    let (labels_host, _) = host_labels(labels, c, cfg.ignore)?;
    let probs_host = probs
        .detach()
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f64>()?;
    check_finite(&probs_host, [b, c, h, w], "Lovász-Softmax: probability")?;
    let (value, grad) = lovasz_softmax_host(&probs_host, &labels_host, [b, c, h, w], cfg);
    let grad = Tensor::from_vec(grad, probs.shape(), &Device::Cpu)?
        .to_dtype(probs.dtype())?
        .to_device(probs.device())?;
    let surrogate = (probs * grad)?.sum_all()?;
    (&surrogate - surrogate.detach())?.affine(1.0, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_sums_to_the_jaccard_of_everything_wrong() {
        // Sum of g is J at the end: 1 - 0/U = 1 whenever G > 0.
        let g = lovasz_grad(&[false, true, true, false, true]);
        assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // No foreground: J = 1 - 0/U = 1 at every step, g = [1, 0, 0].
        assert_eq!(lovasz_grad(&[false, false, false]), vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn one_hot_probabilities_give_one_minus_mean_iou() {
        // 1 image, 3 classes, 6 pixels. Prediction (one-hot) vs truth:
        // truth [0,0,1,1,2,2], pred [0,1,1,1,2,0].
        // IoU: class 0: |{0}| / |{0,1,5}| = 1/3; class 1: 2/3; class 2: 1/2.
        let truth = [0u32, 0, 1, 1, 2, 2];
        let pred = [0usize, 1, 1, 1, 2, 0];
        let mut probs = vec![0.0; 18];
        for (s, &k) in pred.iter().enumerate() {
            probs[k * 6 + s] = 1.0;
        }
        let (loss, _) = lovasz_softmax_host(&probs, &truth, [1, 3, 1, 6], &LovaszConfig::default());
        let miou = (1.0 / 3.0 + 2.0 / 3.0 + 0.5) / 3.0;
        assert!((loss - (1.0 - miou)).abs() < 1e-12, "{loss}");
    }

    #[test]
    fn ties_do_not_change_the_value() {
        // Several equal errors in different orders of the pixels.
        let labels = [1u32, 0, 1, 0, 1, 1, 0, 0];
        let p1 = [0.5, 0.5, 0.5, 0.5, 0.2, 0.8, 0.8, 0.2];
        let value = |perm: &[usize]| {
            let l: Vec<u32> = perm.iter().map(|&i| labels[i]).collect();
            let q1: Vec<f64> = perm.iter().map(|&i| p1[i]).collect();
            let q0: Vec<f64> = q1.iter().map(|p| 1.0 - p).collect();
            lovasz_softmax_host(
                &[q0, q1].concat(),
                &l,
                [1, 2, 1, 8],
                &LovaszConfig::default(),
            )
            .0
        };
        let a = value(&[0, 1, 2, 3, 4, 5, 6, 7]);
        let b = value(&[3, 2, 1, 0, 7, 6, 5, 4]);
        let c = value(&[1, 3, 0, 2, 5, 4, 7, 6]);
        assert!(
            (a - b).abs() < 1e-12 && (a - c).abs() < 1e-12,
            "{a} {b} {c}"
        );
    }

    #[test]
    fn nothing_present_or_all_ignored_is_zero() {
        let probs = vec![0.5; 8];
        let (l, g) = lovasz_softmax_host(
            &probs,
            &[255; 4],
            [1, 2, 1, 4],
            &LovaszConfig {
                ignore: Some(255),
                ..Default::default()
            },
        );
        assert_eq!(l, 0.0);
        assert!(g.iter().all(|&x| x == 0.0));
    }
}
