//! AdamW's update on the CPU in f32: one fused parallel pass per variable.
//!
//! Performance-critical (the optimiser step of every CPU training step).

use candle_core::{DType, Result, Storage, Tensor, bail};
use rayon::prelude::*;

use super::AdamRule;

/// The values of a contiguous f32 CPU storage.
fn cpu_f32<'a>(s: &'a Storage, l: &candle_core::Layout) -> Option<&'a [f32]> {
    match s {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
            l.contiguous_offsets().map(|(a, b)| &v[a..b])
        }
        _ => None,
    }
}

/// Whether [`adamw`] takes this update: `p`, `g`, `m`, `v` all contiguous
/// f32 on the CPU, of one shape.
pub(super) fn applies(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let ok = |t: &Tensor| {
        t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() && t.dims() == p.dims()
    };
    [p, g, m, v].into_iter().all(ok)
}

/// The whole update in one parallel pass over `p`, `g`, `m`, `v` (new `p`,
/// `m`, `v`; see [`applies`]). A dozen tensor ops, each allocating a buffer
/// the size of the variable, become three buffers.
pub(super) fn adamw(
    rule: &AdamRule,
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    {
        let (ps, pl) = p.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (ms, ml) = m.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (Some(pv), Some(gv), Some(mv), Some(vv)) = (
            cpu_f32(&ps, pl),
            cpu_f32(&gs, gl),
            cpu_f32(&ms, ml),
            cpu_f32(&vs, vl),
        ) else {
            bail!("adamw: the CPU update needs contiguous f32 CPU tensors");
        };
        let n = pv.len();
        let (mut np, mut nm, mut nv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let (b1, b2) = (rule.beta1 as f32, rule.beta2 as f32);
        let (ib1, ib2) = ((1.0 - rule.beta1) as f32, (1.0 - rule.beta2) as f32);
        let (bc1, bc2) = (rule.bc1 as f32, rule.bc2 as f32);
        let (eps, lr, keep) = (rule.eps as f32, rule.lr as f32, (1.0 - rule.decay) as f32);
        const CHUNK: usize = 1 << 14;
        np.par_chunks_mut(CHUNK)
            .zip(nm.par_chunks_mut(CHUNK))
            .zip(nv.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(ci, ((op, om), ov))| {
                let o = ci * CHUNK;
                for j in 0..op.len() {
                    let gj = gv[o + j];
                    let mj = b1 * mv[o + j] + ib1 * gj;
                    let vj = b2 * vv[o + j] + ib2 * gj * gj;
                    om[j] = mj;
                    ov[j] = vj;
                    op[j] = pv[o + j] * keep - lr * ((mj / bc1) / ((vj / bc2).sqrt() + eps));
                }
            });
        let (dev, shape) = (p.device(), p.shape());
        Ok((
            Tensor::from_vec(np, shape, dev)?,
            Tensor::from_vec(nm, shape, dev)?,
            Tensor::from_vec(nv, shape, dev)?,
        ))
    }
}
