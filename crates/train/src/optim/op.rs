//! AdamW's update as three in-place ops (the design's §3.5): the first
//! moment, the second moment, then the parameter. `cpu_fwd` is the host
//! mirror of the CUDA kernels (`kernels/adamw.cu`), in their order of
//! operations; on the CPU the fused one-pass `cpu::adamw` is what runs,
//! and the tests check that these ops give its values bit for bit.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, bail};

use super::AdamRule;

/// `m ← β1·m + (1−β1)·g` (first) or `v ← β2·v + (1−β2)·g²` (second),
/// in place on the moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Moment {
    pub(crate) second: bool,
    /// β and 1 − β, each rounded from f64 (as the fused CPU pass does).
    pub(crate) beta: f32,
    pub(crate) one_minus_beta: f32,
}

impl Moment {
    /// The first (`second` false) or second moment's update for `beta`.
    pub(crate) fn of(second: bool, beta: f64) -> Moment {
        Moment {
            second,
            beta: beta as f32,
            one_minus_beta: (1.0 - beta) as f32,
        }
    }
}

/// `p ← p·(1 − lr·wd) − lr·(m/bc1) / (√(v/bc2) + ε)`, in place on the
/// parameter, from the moments already updated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Update {
    pub(crate) keep: f32,
    pub(crate) lr: f32,
    pub(crate) bc1: f32,
    pub(crate) bc2: f32,
    pub(crate) eps: f32,
}

impl Update {
    pub(crate) fn of(rule: &AdamRule) -> Update {
        Update {
            keep: (1.0 - rule.decay) as f32,
            lr: rule.lr as f32,
            bc1: rule.bc1 as f32,
            bc2: rule.bc2 as f32,
            eps: rule.eps as f32,
        }
    }
}

/// The contiguous f32 values of a CPU storage, or an error naming the op.
fn f32s<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("{op}: needs contiguous f32 tensors"),
    }
}

fn f32s_mut<'a>(op: &str, s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => bail!("{op}: needs contiguous f32 tensors"),
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "kseg-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let g = f32s(self.name(), s2, l2)?;
        let m = f32s_mut(self.name(), s1, l1)?;
        if m.len() != g.len() {
            bail!(
                "{}: {} moments for {} gradients",
                self.name(),
                m.len(),
                g.len()
            );
        }
        let (b, ib) = (self.beta, self.one_minus_beta);
        for (m, &g) in m.iter_mut().zip(g) {
            *m = if self.second {
                b * *m + ib * g * g
            } else {
                b * *m + ib * g
            };
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        super::cuda::moment(self, s1, l1, s2, l2)
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "kseg-adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (m, v) = (f32s(self.name(), s2, l2)?, f32s(self.name(), s3, l3)?);
        let p = f32s_mut(self.name(), s1, l1)?;
        if p.len() != m.len() || p.len() != v.len() {
            bail!("{}: sizes {} {} {}", self.name(), p.len(), m.len(), v.len());
        }
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            *p = *p * self.keep - self.lr * ((m / self.bc1) / ((v / self.bc2).sqrt() + self.eps));
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        super::cuda::update(self, s1, l1, s2, l2, s3, l3)
    }
}
