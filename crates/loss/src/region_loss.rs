//! Region-based training (KiTS21/KiTS23): one sigmoid output per region (a
//! set of labels, e.g. kidney_and_mass = {1, 2, 3}), each trained with the
//! reference method's loss carried over to its two-class problem.
//!
//! A sigmoid output `x` is the two-class softmax of the logits `[0, x]`:
//! `softmax([0, x]) = (1 - σ(x), σ(x))`. So each region's loss is
//! [`SegLoss`] on `[0, x]` against "in the region": the class-weighted
//! cross-entropy becomes class-weighted binary cross-entropy, and the
//! Lovász-Softmax over the classes present is the mean of the Lovász
//! extensions of the region's Jaccard loss and its complement's, with the
//! reference sorted-error gradient. The region losses are averaged. This
//! keeps the reference method's loss (and its tested code) unchanged per
//! region, instead of swapping in a different binary loss.

use candle_core::{DType, Result, Tensor, bail};

use crate::seg_loss::{LossParts, SegLoss, SegLossConfig};

/// The region-based loss: per region, [`SegLoss`] on `[0, x_r]` against
/// membership of the label in region `r`; the mean over regions.
#[derive(Debug, Clone)]
pub struct RegionLoss {
    regions: Vec<Vec<u32>>,
    losses: Vec<SegLoss>,
}

impl RegionLoss {
    /// `regions[r]` lists the labels of region `r` (output channel `r`);
    /// `weights[r]`, when given, the class weights `[outside, inside]` of
    /// region `r`'s cross-entropy (a tensor of 2 on the training device).
    pub fn new(
        cfg: SegLossConfig,
        regions: Vec<Vec<u32>>,
        weights: Option<Vec<Tensor>>,
    ) -> Result<RegionLoss> {
        if regions.is_empty() || regions.iter().any(|r| r.is_empty()) {
            bail!("region loss: every region needs at least one label, got {regions:?}");
        }
        if let Some(w) = &weights
            && w.len() != regions.len()
        {
            bail!(
                "region loss: {} weight pairs for {} regions",
                w.len(),
                regions.len()
            );
        }
        let losses = (0..regions.len())
            .map(|r| SegLoss::new(cfg, weights.as_ref().map(|w| w[r].clone())))
            .collect::<Result<_>>()?;
        Ok(RegionLoss { regions, losses })
    }

    /// The loss of `logits` `(B, R, H, W)` (one channel per region) for the
    /// labels `(B, H, W)` (u32); the parts are means over the regions.
    pub fn forward(&self, logits: &Tensor, labels: &Tensor) -> Result<LossParts> {
        let (_, r, _, _) = logits.dims4()?;
        if r != self.regions.len() {
            bail!(
                "region loss: logits have {r} channels for {} regions",
                self.regions.len()
            );
        }
        let mut parts: Option<(Tensor, Tensor, Tensor)> = None;
        for (i, (region, loss)) in self.regions.iter().zip(&self.losses).enumerate() {
            let x = logits.narrow(1, i, 1)?;
            let two = Tensor::cat(&[&x.zeros_like()?, &x], 1)?;
            let mut inside = labels.eq(region[0])?;
            for &v in &region[1..] {
                inside = inside.maximum(&labels.eq(v)?)?;
            }
            let p = loss.forward(&two, &inside.to_dtype(DType::U32)?)?;
            parts = Some(match parts {
                None => (p.total, p.ce, p.lovasz),
                Some((t, c, l)) => ((t + p.total)?, (c + p.ce)?, (l + p.lovasz)?),
            });
        }
        let (t, c, l) = parts.expect("at least one region");
        let n = 1.0 / self.regions.len() as f64;
        Ok(LossParts {
            total: t.affine(n, 0.0)?,
            ce: c.affine(n, 0.0)?,
            lovasz: l.affine(n, 0.0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Against the definition written out on the host: per region, binary
    /// cross-entropy of σ(x) (unweighted, mean over pixels) plus the Lovász
    /// extension of the Jaccard loss of each class present (errors
    /// |1[in] - p| sorted, the reference gradient), averaged.
    #[test]
    fn equals_the_two_class_loss_written_out() {
        let dev = Device::Cpu;
        // 1 × 2 regions × 2 × 3 pixels.
        let x: Vec<f32> = vec![
            0.3, -1.2, 2.0, 0.1, -0.4, 1.5, -0.7, 0.9, 0.2, -2.0, 1.1, 0.0,
        ];
        let labels: Vec<u32> = vec![0, 1, 2, 3, 1, 0];
        let logits = Tensor::from_vec(x.clone(), (1, 2, 2, 3), &dev).unwrap();
        let y = Tensor::from_vec(labels.clone(), (1, 2, 3), &dev).unwrap();
        let regions = vec![vec![1, 2, 3], vec![2]];
        let loss = RegionLoss::new(SegLossConfig::default(), regions.clone(), None).unwrap();
        let got = loss.forward(&logits, &y).unwrap();
        let mut want_ce = 0.0;
        let mut want_lv = 0.0;
        for (r, region) in regions.iter().enumerate() {
            let xs = &x[r * 6..(r + 1) * 6];
            let fg: Vec<bool> = labels.iter().map(|v| region.contains(v)).collect();
            let p: Vec<f64> = xs
                .iter()
                .map(|&v| 1.0 / (1.0 + (-(v as f64)).exp()))
                .collect();
            let ce: f64 = p
                .iter()
                .zip(&fg)
                .map(|(&p, &f)| -if f { p.ln() } else { (1.0 - p).ln() })
                .sum::<f64>()
                / 6.0;
            want_ce += ce / 2.0;
            // Lovász per class present: class 1 (inside) with prob p, class
            // 0 with 1 - p.
            let mut lv = Vec::new();
            for class in [false, true] {
                if !fg.contains(&class) {
                    continue;
                }
                let mut e: Vec<(f64, bool)> = p
                    .iter()
                    .zip(&fg)
                    .map(|(&p, &f)| {
                        let pc = if class { p } else { 1.0 - p };
                        let is = f == class;
                        ((if is { 1.0 } else { 0.0 } - pc).abs(), is)
                    })
                    .collect();
                e.sort_by(|a, b| b.0.total_cmp(&a.0));
                // The reference gradient: Jaccard loss after each prefix of
                // the sorted errors, differenced.
                let gts = e.iter().filter(|v| v.1).count() as f64;
                let (mut cum_in, mut cum_out, mut jac_prev, mut l) = (0.0, 0.0, 0.0, 0.0);
                for (err, is) in &e {
                    if *is {
                        cum_in += 1.0;
                    } else {
                        cum_out += 1.0;
                    }
                    let jac = 1.0 - (gts - cum_in) / (gts + cum_out);
                    l += err * (jac - jac_prev);
                    jac_prev = jac;
                }
                lv.push(l);
            }
            want_lv += lv.iter().sum::<f64>() / lv.len() as f64 / 2.0;
        }
        let v = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        assert!(
            (v(&got.ce) - want_ce).abs() < 1e-6,
            "ce {} vs {want_ce}",
            v(&got.ce)
        );
        assert!(
            (v(&got.lovasz) - want_lv).abs() < 1e-6,
            "lovasz {} vs {want_lv}",
            v(&got.lovasz)
        );
        assert!((v(&got.total) - (want_ce + want_lv)).abs() < 1e-6);
    }
}
