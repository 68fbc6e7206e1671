//! [`BnAct`]: BatchNorm2d, the residual add and LeakyReLU as one CPU op
//! with a hand-written backward.
//!
//! Performance-critical: after editing, run `cargo test -p kseg-model` and
//! `cargo bench --bench model` before and after (docs/ARCHITECTURE.md).

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use crate::act::{leaky, leaky_grad};
use crate::host::{f32_slice, lane_sums, lane_sums3, storage_f32};

/// Batch statistics of one training forward: per channel mean and biased
/// variance (for the running statistics) and 1/sqrt(var + eps).
#[derive(Debug)]
pub(super) struct BatchStats {
    pub(super) mean: Vec<f32>,
    pub(super) var: Vec<f32>,
    pub(super) invstd: Vec<f32>,
}

#[derive(Debug, Clone)]
pub(super) enum Stats {
    /// Training: computed by the forward, read by the backward.
    Batch(Arc<OnceLock<BatchStats>>),
    /// Evaluation: (mean, 1/sqrt(var + eps)) of the running statistics.
    Running(Arc<(Vec<f32>, Vec<f32>)>),
}

/// `act(gamma · (x - mean) · invstd + beta [+ r])` as one custom op: arg 1
/// `x` `(B, C, H, W)`, arg 2 `[gamma; beta]` `(2, C)`, optional arg 3 `r`
/// like `x`. Its backward recomputes `x̂` from `x` and the saved statistics
/// and reads the activation's slope from the sign of the output.
#[derive(Debug, Clone)]
pub struct BnAct {
    /// Added to the variance before its square root.
    pub(super) eps: f64,
    pub(super) slope: f32,
    pub(super) stats: Stats,
}

impl BnAct {
    fn mean_invstd(&self) -> Result<(&[f32], &[f32])> {
        Ok(match &self.stats {
            Stats::Batch(s) => match s.get() {
                Some(s) => (&s.mean, &s.invstd),
                None => bail!("batch norm: backward before forward"),
            },
            Stats::Running(s) => (&s.0, &s.1),
        })
    }

    fn fwd(
        &self,
        x: &[f32],
        xl: &Layout,
        gb: &[f32],
        r: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = xl.shape().dims4()?;
        if gb.len() != 2 * c {
            bail!("batch norm: {} affine values for {c} channels", gb.len());
        }
        let hw = h * w;
        if let Stats::Batch(cell) = &self.stats {
            let n = (b * hw) as f64;
            let sums: Vec<(f64, f64)> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let (mut s, mut s2) = (0f64, 0f64);
                    for bi in 0..b {
                        let p = &x[(bi * c + ch) * hw..][..hw];
                        // f32 partial sums over a plane, f64 across planes.
                        let [ps, ps2] = lane_sums(p, |v| [v, v * v]);
                        s += ps as f64;
                        s2 += ps2 as f64;
                    }
                    (s, s2)
                })
                .collect();
            // Two-pass variance per channel for accuracy: the mean first,
            // then the squared deviations.
            let mean: Vec<f64> = sums.iter().map(|&(s, _)| s / n).collect();
            let var: Vec<f64> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let m = mean[ch] as f32;
                    let mut acc = 0f64;
                    for bi in 0..b {
                        let p = &x[(bi * c + ch) * hw..][..hw];
                        acc += lane_sums(p, |v| [(v - m) * (v - m)])[0] as f64;
                    }
                    acc / n
                })
                .collect();
            let stats = BatchStats {
                mean: mean.iter().map(|&v| v as f32).collect(),
                var: var.iter().map(|&v| v as f32).collect(),
                invstd: var
                    .iter()
                    .map(|&v| (1.0 / (v + self.eps).sqrt()) as f32)
                    .collect(),
            };
            // A recomputed forward (never done by candle) would find the
            // same statistics.
            let _ = cell.set(stats);
        }
        let (mean, invstd) = self.mean_invstd()?;
        let slope = self.slope;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hw).enumerate().for_each(|(plane, o)| {
            let ch = plane % c;
            let scale = gb[ch] * invstd[ch];
            let shift = gb[c + ch] - mean[ch] * scale;
            let xp = &x[plane * hw..][..hw];
            let act = leaky(slope);
            match r {
                Some(r) => {
                    let rp = &r[plane * hw..][..hw];
                    for ((o, &xv), &rv) in o.iter_mut().zip(xp).zip(rp) {
                        *o = act(xv * scale + shift + rv);
                    }
                }
                None => {
                    for (o, &xv) in o.iter_mut().zip(xp) {
                        *o = act(xv * scale + shift);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    /// Gradients with respect to `x`, `[gamma; beta]` and, when `with_r`,
    /// `r` (the pre-activation gradient).
    fn grads(
        &self,
        x: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        with_r: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (b, c, h, w) = x.dims4()?;
        let hw = h * w;
        let (xt, yt, dyt, gbt) = (
            x.contiguous()?,
            y.contiguous()?,
            dy.contiguous()?,
            gb.contiguous()?,
        );
        let (xs, xl) = xt.storage_and_layout();
        let (ys, yl) = yt.storage_and_layout();
        let (dys, dyl) = dyt.storage_and_layout();
        let (gbs, gbl) = gbt.storage_and_layout();
        let x = storage_f32(&xs, xl, "input")?;
        let y = storage_f32(&ys, yl, "output")?;
        let dy = storage_f32(&dys, dyl, "output gradient")?;
        let gbv = storage_f32(&gbs, gbl, "weight")?;
        if y.len() != x.len() || dy.len() != x.len() || gbv.len() != 2 * c {
            bail!("batch norm backward: inconsistent sizes");
        }
        let (mean, invstd) = self.mean_invstd()?;
        let slope = self.slope;
        // Per channel: sum(dz) (= d beta) and sum(dz · x̂) (= d gamma).
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (m, is) = (mean[ch], invstd[ch]);
                let dz = leaky_grad(slope);
                let (mut sd, mut sdx) = (0f64, 0f64);
                for bi in 0..b {
                    let o = (bi * c + ch) * hw;
                    let [a, a2] =
                        lane_sums3(&x[o..o + hw], &y[o..o + hw], &dy[o..o + hw], |xv, yv, g| {
                            let d = dz(yv, g);
                            [d, d * (xv - m)]
                        });
                    sd += a as f64;
                    sdx += (a2 * is) as f64;
                }
                (sd, sdx)
            })
            .collect();
        let n = (b * hw) as f32;
        let train = matches!(self.stats, Stats::Batch(_));
        let mut dx = vec![0f32; x.len()];
        let mut dr = if with_r {
            vec![0f32; x.len()]
        } else {
            Vec::new()
        };
        let plane_grad = |plane: usize, dxp: &mut [f32], mut drp: Option<&mut [f32]>| {
            let ch = plane % c;
            let dz = leaky_grad(slope);
            let (m, is, g) = (mean[ch], invstd[ch], gbv[ch]);
            let o = plane * hw;
            // Training: dx = γσ⁻¹(dz − mean(dz) − x̂·mean(dz·x̂));
            // evaluation: dx = γσ⁻¹·dz.
            let (md, mdx) = if train {
                (sums[ch].0 as f32 / n, sums[ch].1 as f32 / n)
            } else {
                (0.0, 0.0)
            };
            // dx = k·d + k0 + k1·x with the constants folded.
            let k = g * is;
            let k1 = -k * is * mdx;
            let k0 = -k * md - k1 * m;
            let src = x[o..o + hw].iter().zip(&y[o..o + hw]).zip(&dy[o..o + hw]);
            match drp.as_deref_mut() {
                Some(drp) => {
                    for ((dxv, drv), ((&xv, &yv), &gv)) in dxp.iter_mut().zip(drp).zip(src) {
                        let d = dz(yv, gv);
                        *dxv = k * d + k0 + k1 * xv;
                        *drv = d;
                    }
                }
                None => {
                    for (dxv, ((&xv, &yv), &gv)) in dxp.iter_mut().zip(src) {
                        *dxv = k * dz(yv, gv) + k0 + k1 * xv;
                    }
                }
            }
        };
        if with_r {
            dx.par_chunks_mut(hw)
                .zip(dr.par_chunks_mut(hw))
                .enumerate()
                .for_each(|(plane, (dxp, drp))| plane_grad(plane, dxp, Some(drp)));
        } else {
            dx.par_chunks_mut(hw)
                .enumerate()
                .for_each(|(plane, dxp)| plane_grad(plane, dxp, None));
        }
        let dev = gb.device();
        let mut dgb: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
        dgb.extend(sums.iter().map(|s| s.0 as f32));
        Ok((
            Tensor::from_vec(dx, (b, c, h, w), dev)?,
            Tensor::from_vec(dgb, (2, c), dev)?,
            if with_r {
                Some(Tensor::from_vec(dr, (b, c, h, w), dev)?)
            } else {
                None
            },
        ))
    }
}

impl CustomOp2 for BnAct {
    fn name(&self) -> &'static str {
        "kseg-bn-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd(
            f32_slice(s1, l1, "batch norm input")?,
            l1,
            f32_slice(s2, l2, "batch norm weight")?,
            None,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dgb, _) = self.grads(x, gb, y, dy, false)?;
        Ok((Some(dx), Some(dgb)))
    }
}

impl CustomOp3 for BnAct {
    fn name(&self) -> &'static str {
        "kseg-bn-add-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l3.shape() != l1.shape() {
            bail!(
                "batch norm: residual {:?} does not match the input {:?}",
                l3.shape(),
                l1.shape()
            );
        }
        self.fwd(
            f32_slice(s1, l1, "batch norm input")?,
            l1,
            f32_slice(s2, l2, "batch norm weight")?,
            Some(f32_slice(s3, l3, "batch norm residual")?),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        _r: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgb, dr) = self.grads(x, gb, y, dy, true)?;
        Ok((Some(dx), Some(dgb), dr))
    }
}
