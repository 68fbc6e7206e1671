//! BatchNorm2d fused with the residual add and LeakyReLU that follow it.
//!
//! Every BatchNorm of the Res-U-Net is followed by `LeakyReLU(bn(x))` or
//! `LeakyReLU(bn(x) + residual)`. candle's `BatchNorm` in training mode is a
//! chain of tensor ops (transpose + copy, subtract, square, divide, multiply,
//! add, transpose back) whose autograd keeps several activation-sized
//! intermediates, and the activation adds three more. On the CPU in f32,
//! [`BatchNorm2d::forward_act`] computes `act(bn(x) [+ r])` in one custom op
//! ([`BnAct`]) that keeps only its input and output and has a hand-written
//! backward; elsewhere (CUDA, Metal, f64) it is candle's `BatchNorm` followed
//! by the same add and activation as tensor ops. Both update the running
//! statistics like PyTorch (momentum 0.1, unbiased running variance).

use std::sync::{Arc, OnceLock};

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, ModuleT, Result, Shape, Tensor, Var, bail,
};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder};
use rayon::prelude::*;

use crate::blocks::leaky_relu;
use crate::conv::{f32_slice, storage_f32};

/// PyTorch's `BatchNorm2d` (eps 1e-5, momentum 0.1, affine; names `weight`,
/// `bias`, `running_mean`, `running_var`).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    inner: BatchNorm,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm2d {
    pub const EPS: f64 = 1e-5;
    pub const MOMENTUM: f64 = 0.1;

    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let inner = candle_nn::batch_norm(
            c,
            BatchNormConfig {
                eps: Self::EPS,
                remove_mean: true,
                affine: true,
                momentum: Self::MOMENTUM,
            },
            vb,
        )?;
        // The running statistics are variables of the VarMap: these share
        // their storage, so updating them updates what a checkpoint saves.
        Ok(BatchNorm2d {
            running_mean: Var::from_tensor(inner.running_mean())?,
            running_var: Var::from_tensor(inner.running_var())?,
            inner,
        })
    }

    /// `LeakyReLU_slope(bn(x) + residual)`; `slope` 1 is the identity, no
    /// `residual` adds nothing. In training mode the batch statistics are
    /// used and the running ones updated.
    ///
    /// # Shapes
    /// `x` and `residual`: `(B, C, H, W)`.
    pub fn forward_act(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        slope: f64,
        train: bool,
    ) -> Result<Tensor> {
        // The fused backward reads the activation's side from the sign of
        // the output, which needs a positive slope (0, ReLU, takes the
        // tensor ops).
        let fused = slope > 0.0
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.running_mean.dtype() == DType::F32
            && residual.is_none_or(|r| r.dtype() == DType::F32);
        if !fused {
            let y = self.inner.forward_t(x, train)?;
            let y = match residual {
                Some(r) => (y + r)?,
                None => y,
            };
            return if slope == 1.0 {
                Ok(y)
            } else {
                leaky_relu(&y, slope)
            };
        }
        let (b, c, h, w) = x.dims4()?;
        if c != self.running_mean.dim(0)? {
            bail!(
                "batch norm: input has {c} channels, the layer {}",
                self.running_mean.dim(0)?
            );
        }
        if let Some(r) = residual
            && r.dims() != x.dims()
        {
            bail!(
                "batch norm: residual {:?} does not match the input {:?}",
                r.dims(),
                x.dims()
            );
        }
        let (weight, bias) = self
            .inner
            .weight_and_bias()
            .expect("BatchNorm2d is built affine");
        let gb = Tensor::stack(&[weight, bias], 0)?;
        let stats = if train {
            Stats::Batch(Arc::new(OnceLock::new()))
        } else {
            let mean = self.running_mean.to_vec1::<f32>()?;
            let invstd = self
                .running_var
                .to_vec1::<f32>()?
                .iter()
                .map(|&v| (1.0 / (v as f64 + Self::EPS).sqrt()) as f32)
                .collect();
            Stats::Running(Arc::new((mean, invstd)))
        };
        let op = BnAct {
            slope: slope as f32,
            stats: stats.clone(),
        };
        let x = x.contiguous()?;
        let y = match residual {
            Some(r) => x.apply_op3(&gb, &r.contiguous()?, op)?,
            None => x.apply_op2(&gb, op)?,
        };
        if let Stats::Batch(batch) = stats {
            let Some(batch) = batch.get() else {
                bail!("batch norm: the fused op did not record its statistics")
            };
            let n = (b * h * w) as f64;
            let m = Self::MOMENTUM;
            let dev = x.device();
            let mean = Tensor::from_vec(batch.mean.clone(), c, dev)?;
            let var = Tensor::from_vec(batch.var.clone(), c, dev)?;
            let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
            let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
            let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (var * (m * unbias))?)?;
            self.running_mean.set(&rm)?;
            self.running_var.set(&rv)?;
        }
        Ok(y)
    }
}

/// LeakyReLU as a closure that holds its slope by value. Made inside each
/// parallel closure: a slope read through a captured reference, and only
/// on the negative side, kept the per-plane loops from vectorising (scalar
/// loads and branches; the 128² training step was 20% slower).
#[inline(always)]
fn leaky(slope: f32) -> impl Fn(f32) -> f32 + Copy {
    move |z| if z >= 0.0 { z } else { slope * z }
}

/// The gradient through [`leaky`], read off the sign of its output `y`.
#[inline(always)]
fn leaky_grad(slope: f32) -> impl Fn(f32, f32) -> f32 + Copy {
    move |y, g| if y >= 0.0 { g } else { slope * g }
}

/// Lanes of the per-plane sums: independent partial sums that the compiler
/// keeps in vector registers (one running f32 sum waits an add's latency
/// per element and does not vectorise).
const LANES: usize = 16;

/// `Σ f(v)` over `p` for each of the `K` outputs of `f`, in [`LANES`]
/// partial sums.
#[inline(always)]
pub(crate) fn lane_sums<const K: usize>(p: &[f32], f: impl Fn(f32) -> [f32; K]) -> [f32; K] {
    let mut acc = [[0f32; LANES]; K];
    let chunks = p.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for (l, &v) in ch.iter().enumerate() {
            let t = f(v);
            for k in 0..K {
                acc[k][l] += t[k];
            }
        }
    }
    let mut out = acc.map(|a| a.iter().sum::<f32>());
    for &v in rest {
        let t = f(v);
        for k in 0..K {
            out[k] += t[k];
        }
    }
    out
}

/// [`lane_sums`] of `f(a, b, c)` over three planes of the same length.
#[inline(always)]
fn lane_sums3<const K: usize>(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> [f32; K],
) -> [f32; K] {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [[0f32; LANES]; K];
    let full = n / LANES * LANES;
    for ((ca, cb), cc) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
        .zip(c[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let t = f(ca[l], cb[l], cc[l]);
            for k in 0..K {
                acc[k][l] += t[k];
            }
        }
    }
    let mut out = acc.map(|s| s.iter().sum::<f32>());
    for i in full..n {
        let t = f(a[i], b[i], c[i]);
        for k in 0..K {
            out[k] += t[k];
        }
    }
    out
}

/// Batch statistics of one training forward: per channel mean and biased
/// variance (for the running statistics) and 1/sqrt(var + eps).
#[derive(Debug)]
struct BatchStats {
    mean: Vec<f32>,
    var: Vec<f32>,
    invstd: Vec<f32>,
}

#[derive(Debug, Clone)]
enum Stats {
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
    slope: f32,
    stats: Stats,
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
                    .map(|&v| (1.0 / (v + BatchNorm2d::EPS).sqrt()) as f32)
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
