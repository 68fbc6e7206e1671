//! `BnAct`'s CPU kernels: BatchNorm2d, the residual add and LeakyReLU in
//! one pass with a hand-written backward. [`forward`] is the op's
//! `cpu_fwd`, [`grads`] its backward; [`applies`] and [`forward_act`] are
//! what the layer (`norm.rs`) calls.
//!
//! Performance-critical: after editing, run `cargo test -p kseg-model` and
//! `cargo bench --bench model` before and after (docs/ARCHITECTURE.md).

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::BatchNorm2d;
use super::op::{BatchStats, BnAct, Stats};
use crate::act::{leaky, leaky_grad};
use crate::host::{f32_slice, lane_sums, lane_sums3, storage_f32};

/// Whether [`forward_act`] takes this input: on the CPU, f32 input,
/// parameters and residual, and a positive slope (the fused backward reads
/// the activation's side from the sign of the output, which needs a
/// positive slope; 0, ReLU, takes the tensor ops).
pub(super) fn applies(bn: &BatchNorm2d, x: &Tensor, residual: Option<&Tensor>, slope: f64) -> bool {
    slope > 0.0
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && bn.running_mean.dtype() == DType::F32
        && residual.is_none_or(|r| r.dtype() == DType::F32)
}

/// [`BatchNorm2d::forward_act`] as one [`BnAct`] (where [`applies`]); in
/// training it then updates the running statistics from the batch's.
pub(super) fn forward_act(
    bn: &BatchNorm2d,
    x: &Tensor,
    residual: Option<&Tensor>,
    slope: f64,
    train: bool,
) -> Result<Tensor> {
    let (b, c, h, w) = bn.check_fused(x, residual)?;
    let gb = bn.gamma_beta()?;
    let stats = if train {
        Stats::Batch(Arc::new(OnceLock::new()))
    } else {
        let mean = bn.running_mean.to_vec1::<f32>()?;
        let invstd = bn
            .running_var
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| (1.0 / (v as f64 + BatchNorm2d::EPS).sqrt()) as f32)
            .collect();
        Stats::Running(Arc::new((mean, invstd)))
    };
    let op = BnAct {
        eps: BatchNorm2d::EPS,
        slope: slope as f32,
        stats: stats.clone(),
    };
    let y = op.apply(x, &gb, residual)?;
    if let Stats::Batch(batch) = stats {
        let Some(batch) = batch.get() else {
            bail!("batch norm: the fused op did not record its statistics")
        };
        let dev = x.device();
        let mean = Tensor::from_vec(batch.mean.clone(), c, dev)?;
        let var = Tensor::from_vec(batch.var.clone(), c, dev)?;
        bn.update_running(mean, var, (b * h * w) as f64)?;
    }
    Ok(y)
}

/// `BnAct`'s forward on the CPU (`r`: the `CustomOp3`'s third argument,
/// already checked to have `x`'s shape); in training it records the
/// batch statistics in the op's [`Stats`].
pub(super) fn forward(
    op: &BnAct,
    s1: &CpuStorage,
    xl: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    r: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let x = f32_slice(s1, xl, "batch norm input")?;
    let gb = f32_slice(s2, l2, "batch norm weight")?;
    let r = r
        .map(|(s3, l3)| f32_slice(s3, l3, "batch norm residual"))
        .transpose()?;
    let (b, c, h, w) = xl.shape().dims4()?;
    if gb.len() != 2 * c {
        bail!("batch norm: {} affine values for {c} channels", gb.len());
    }
    let hw = h * w;
    if let Stats::Batch(cell) = &op.stats {
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
                .map(|&v| (1.0 / (v + op.eps).sqrt()) as f32)
                .collect(),
        };
        // A recomputed forward (never done by candle) would find the
        // same statistics.
        let _ = cell.set(stats);
    }
    let (mean, invstd) = op.mean_invstd()?;
    let slope = op.slope;
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

/// `BnAct`'s gradients on the CPU with respect to `x`, `[gamma; beta]`
/// and, when `with_r`, `r` (the pre-activation gradient).
pub(super) fn grads(
    op: &BnAct,
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
    let (mean, invstd) = op.mean_invstd()?;
    let slope = op.slope;
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
    let train = matches!(op.stats, Stats::Batch(_));
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
