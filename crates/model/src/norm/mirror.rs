//! A host mirror of `kernels/bn.cu` (the CUDA `BnAct`): the same
//! arithmetic in the same order (per-thread f32 sums over a block's
//! chunk, the fixed shared-memory tree, the f64 combine in chunk order,
//! the element-wise passes without FMA), checked against the CPU op, so
//! that the kernels' formulas and reduction are tested without a GPU.
//! `cuda.rs`'s GPU test then checks the kernels against the CPU op too.

use std::sync::{Arc, OnceLock};

use candle_core::{Device, Result, Tensor};

use super::cpu;
use super::op::{BnAct, Stats};

/// `BN_THREADS` of `bn.cu`.
pub(super) const THREADS: usize = 256;

/// `kseg_bn_partials_f32` for every block `(k, ch)`: `part[(ch·nchunks +
/// k)·2 + {0, 1}]`.
#[allow(clippy::too_many_arguments)]
fn partials(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    mean: &[f32],
    slope: f32,
    mode: u8,
    (hw, c, n): (usize, usize, usize),
    chunk: usize,
) -> (Vec<f32>, usize) {
    let nchunks = n.div_ceil(chunk).max(1);
    let mut part = vec![0f32; 2 * c * nchunks];
    for ch in 0..c {
        let m = if mode == 0 { 0.0 } else { mean[ch] };
        for k in 0..nchunks {
            let end = ((k + 1) * chunk).min(n);
            let mut sa = [0f32; THREADS];
            let mut sb = [0f32; THREADS];
            for tid in 0..THREADS {
                let (mut a, mut b) = (0f32, 0f32);
                let mut t = k * chunk + tid;
                while t < end {
                    let bi = t / hw;
                    let i = (bi * c + ch) * hw + (t - bi * hw);
                    let xv = x[i];
                    match mode {
                        0 => a += xv,
                        1 => {
                            let d = xv - m;
                            a += d * d;
                        }
                        _ => {
                            let g = dy[i];
                            let dz = if y[i] >= 0.0 { g } else { slope * g };
                            a += dz;
                            b += dz * (xv - m);
                        }
                    }
                    t += THREADS;
                }
                sa[tid] = a;
                sb[tid] = b;
            }
            let mut s = THREADS / 2;
            while s > 0 {
                for tid in 0..s {
                    sa[tid] += sa[tid + s];
                    sb[tid] += sb[tid + s];
                }
                s >>= 1;
            }
            part[(ch * nchunks + k) * 2] = sa[0];
            part[(ch * nchunks + k) * 2 + 1] = sb[0];
        }
    }
    (part, nchunks)
}

/// `kseg_bn_combine_f32` for every channel.
#[allow(clippy::too_many_arguments)]
fn combine(
    part: &[f32],
    nchunks: usize,
    c: usize,
    n: f64,
    eps: f64,
    mode: u8,
    invstd: &[f32],
    out: &mut [f32],
) {
    for ch in 0..c {
        let (mut sa, mut sb) = (0f64, 0f64);
        for k in 0..nchunks {
            sa += part[(ch * nchunks + k) * 2] as f64;
            sb += part[(ch * nchunks + k) * 2 + 1] as f64;
        }
        match mode {
            0 => out[ch] = (sa / n) as f32,
            1 => {
                let var = sa / n;
                out[c + ch] = var as f32;
                out[2 * c + ch] = (1.0 / (var + eps).sqrt()) as f32;
            }
            _ => {
                out[ch] = (sb * invstd[ch] as f64) as f32;
                out[c + ch] = sa as f32;
            }
        }
    }
}

/// The training statistics as the forward's launches compute them:
/// `[mean; var; invstd]`, `3·C` floats.
pub(super) fn batch_stats(
    x: &[f32],
    dims: (usize, usize, usize),
    eps: f64,
    chunk: usize,
) -> Vec<f32> {
    let (_, c, n) = dims;
    let mut stats = vec![0f32; 3 * c];
    let (p, k) = partials(x, x, x, &[], 0.0, 0, dims, chunk);
    combine(&p, k, c, n as f64, eps, 0, &[], &mut stats);
    let (p, k) = partials(x, x, x, &stats[..c], 0.0, 1, dims, chunk);
    combine(&p, k, c, n as f64, eps, 1, &[], &mut stats);
    stats
}

/// `kseg_bn_fwd_f32`.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    x: &[f32],
    r: Option<&[f32]>,
    gb: &[f32],
    mean: &[f32],
    invstd: &[f32],
    slope: f32,
    hw: usize,
    c: usize,
) -> Vec<f32> {
    (0..x.len())
        .map(|i| {
            let ch = (i / hw) % c;
            let scale = gb[ch] * invstd[ch];
            let shift = gb[c + ch] - mean[ch] * scale;
            let mut z = x[i] * scale + shift;
            if let Some(r) = r {
                z += r[i];
            }
            if z >= 0.0 { z } else { slope * z }
        })
        .collect()
}

/// The backward's launches: `(dx, d[gamma; beta], dr)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    gb: &[f32],
    mean: &[f32],
    invstd: &[f32],
    train: bool,
    slope: f32,
    dims: (usize, usize, usize),
    chunk: usize,
    with_r: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let (hw, c, n) = dims;
    let (p, k) = partials(x, y, dy, mean, slope, 2, dims, chunk);
    let mut dgb = vec![0f32; 2 * c];
    combine(&p, k, c, n as f64, 0.0, 2, invstd, &mut dgb);
    let nf = n as f32;
    let mut dx = vec![0f32; x.len()];
    let mut dr = vec![0f32; if with_r { x.len() } else { 0 }];
    for i in 0..x.len() {
        let ch = (i / hw) % c;
        let is = invstd[ch];
        let kk = gb[ch] * is;
        let md = if train { dgb[c + ch] / nf } else { 0.0 };
        let mdx = if train { dgb[ch] / nf } else { 0.0 };
        let k1 = -kk * is * mdx;
        let k0 = -kk * md - k1 * mean[ch];
        let g = dy[i];
        let dz = if y[i] >= 0.0 { g } else { slope * g };
        dx[i] = kk * dz + k0 + k1 * x[i];
        if with_r {
            dr[i] = dz;
        }
    }
    (dx, dgb, with_r.then_some(dr))
}

/// Deterministic values in about `[lo, lo + span)`.
pub(super) fn values(len: usize, seed: u64, lo: f32, span: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + span * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// `max |a − b| / max(|b|, tiny)` over the values.
pub(super) fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    let d = rel_diff(got, want);
    assert!(
        d <= 1e-5,
        "{what}: mirror and CPU op differ by {d} (relative)"
    );
}

/// The mirror against the CPU `BnAct` on one case.
fn case(
    dims: (usize, usize, usize, usize),
    residual: bool,
    train: bool,
    chunk: usize,
) -> Result<()> {
    let (b, c, h, w) = dims;
    let len = b * c * h * w;
    let (hw, n) = (h * w, b * h * w);
    let slope = 0.2f32;
    let eps = super::BatchNorm2d::EPS;
    let dev = Device::Cpu;
    let xv = values(len, 1, 1.5, 4.0);
    let rv = values(len, 2, -1.0, 2.0);
    let dyv = values(len, 3, -1.0, 2.0);
    let mut gbv = values(c, 4, 0.5, 1.0);
    gbv.extend(values(c, 5, -0.5, 1.0));
    let x = Tensor::from_vec(xv.clone(), dims, &dev)?;
    let r = Tensor::from_vec(rv.clone(), dims, &dev)?;
    let dy = Tensor::from_vec(dyv.clone(), dims, &dev)?;
    let gb = Tensor::from_vec(gbv.clone(), (2, c), &dev)?;
    let running = (values(c, 6, -0.5, 1.0), values(c, 7, 0.5, 1.0));
    let stats = if train {
        Stats::Batch(Arc::new(OnceLock::new()))
    } else {
        let invstd = running
            .1
            .iter()
            .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
            .collect();
        Stats::Running(Arc::new((running.0.clone(), invstd)))
    };
    let op = BnAct {
        eps,
        slope,
        stats: stats.clone(),
    };
    let y = op.clone().apply(&x, &gb, residual.then_some(&r))?;
    let (dx, dgb, dr) = cpu::grads(&op, &x, &gb, &y, &dy, residual)?;
    let (mean, invstd) = match &stats {
        Stats::Batch(cell) => {
            let s = cell.get().expect("the CPU forward records its statistics");
            let got = batch_stats(&xv, (hw, c, n), eps, chunk);
            check("mean", &got[..c], &s.mean);
            check("var", &got[c..2 * c], &s.var);
            check("invstd", &got[2 * c..], &s.invstd);
            (got[..c].to_vec(), got[2 * c..].to_vec())
        }
        Stats::Running(s) => (s.0.clone(), s.1.clone()),
    };
    let my = forward(
        &xv,
        residual.then_some(&rv[..]),
        &gbv,
        &mean,
        &invstd,
        slope,
        hw,
        c,
    );
    check("y", &my, &y.flatten_all()?.to_vec1::<f32>()?);
    let yv = y.flatten_all()?.to_vec1::<f32>()?;
    let (mdx, mdgb, mdr) = backward(
        &xv,
        &yv,
        &dyv,
        &gbv,
        &mean,
        &invstd,
        train,
        slope,
        (hw, c, n),
        chunk,
        residual,
    );
    check("dx", &mdx, &dx.flatten_all()?.to_vec1::<f32>()?);
    check("dgamma", &mdgb[..c], &dgb.get(0)?.to_vec1::<f32>()?);
    check("dbeta", &mdgb[c..], &dgb.get(1)?.to_vec1::<f32>()?);
    match (mdr, dr) {
        (Some(a), Some(b)) => check("dr", &a, &b.flatten_all()?.to_vec1::<f32>()?),
        (None, None) => {}
        _ => panic!("dr: present in one of mirror and CPU op only"),
    }
    Ok(())
}

#[test]
fn mirror_matches_the_cpu_op() -> Result<()> {
    // 8192: the kernels' chunk (one block per channel here); 64: several
    // blocks per channel, the last one partial.
    for chunk in [8192, 64] {
        for dims in [(1, 1, 7, 9), (3, 5, 17, 13)] {
            for residual in [false, true] {
                for train in [true, false] {
                    case(dims, residual, train, chunk)?;
                }
            }
        }
    }
    Ok(())
}
