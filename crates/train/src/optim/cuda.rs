//! AdamW's update on CUDA: the three in-place ops of `op.rs` as kernels
//! (`kernels/adamw.cu`, built to PTX by `build.rs`). Opt-in (the
//! `gpu_ops = "kseg"` switch, [`kseg_infer::runtime::gpu_ops`]) until a
//! recorded GPU run verifies it.
//!
//! `unsafe` here is the kernel launches and the uninitialised output
//! allocations of cudarc; each block says why it is sound.

use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result, Tensor, bail};

use super::AdamRule;
use super::op::{Moment, Update};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));
const MODULE: &str = "kseg_adamw";

/// Whether the CUDA update takes this variable: the kseg GPU ops are on,
/// and `p`, `g`, `m`, `v` are contiguous f32 CUDA tensors of one shape.
pub(super) fn applies(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let ok = |t: &Tensor| {
        t.device().is_cuda()
            && t.dtype() == candle_core::DType::F32
            && t.is_contiguous()
            && t.dims() == p.dims()
    };
    kseg_infer::runtime::gpu_ops() == kseg_infer::runtime::GpuOps::Kseg
        && [p, g, m, v].into_iter().all(ok)
}

/// One AdamW update in place: `m`, `v`, then `p` (three launches).
pub(super) fn adamw(rule: &AdamRule, p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<()> {
    m.inplace_op2(g, &Moment::of(false, rule.beta1))?;
    v.inplace_op2(g, &Moment::of(true, rule.beta2))?;
    p.inplace_op3(m, v, &Update::of(rule))
}

fn contiguous(op: &str, l: &Layout) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(o) => Ok(o),
        None => bail!("{op}: needs contiguous tensors"),
    }
}

fn config(n: usize) -> Result<(LaunchConfig, u32)> {
    let Ok(n32) = u32::try_from(n) else {
        bail!("adamw: {n} values is beyond one launch (2^32)")
    };
    Ok((LaunchConfig::for_num_elems(n32), n32))
}

pub(super) fn moment(
    op: &Moment,
    s1: &mut CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<()> {
    let (a1, b1) = contiguous("adamw", l1)?;
    let (a2, b2) = contiguous("adamw", l2)?;
    if b1 - a1 != b2 - a2 {
        bail!("adamw: {} moments for {} gradients", b1 - a1, b2 - a2);
    }
    let dev = s1.device.clone();
    let name = if op.second {
        "kseg_adamw_second"
    } else {
        "kseg_adamw_first"
    };
    let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let (cfg, n) = config(b1 - a1)?;
    let g = s2.as_cuda_slice::<f32>()?.slice(a2..b2);
    let m = s1.as_cuda_slice_mut::<f32>()?;
    let mut m = m.slice_mut(a1..b1);
    let (beta, ibeta) = (op.beta, op.one_minus_beta);
    let mut b = func.builder();
    b.arg(&mut m);
    b.arg(&g);
    b.arg(&n);
    b.arg(&beta);
    b.arg(&ibeta);
    // SAFETY: the kernel reads `n` values of `g` and reads and writes `n`
    // values of `m`, both views of exactly `n` f32s on this device; the
    // launch is ordered on the device's one stream.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

pub(super) fn update(
    op: &Update,
    s1: &mut CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<()> {
    let (a1, b1) = contiguous("adamw", l1)?;
    let (a2, b2) = contiguous("adamw", l2)?;
    let (a3, b3) = contiguous("adamw", l3)?;
    let n = b1 - a1;
    if b2 - a2 != n || b3 - a3 != n {
        bail!("adamw: sizes {n} {} {}", b2 - a2, b3 - a3);
    }
    let dev = s1.device.clone();
    let func = dev.get_or_load_custom_func("kseg_adamw_update", MODULE, PTX)?;
    let (cfg, n) = config(n)?;
    let m = s2.as_cuda_slice::<f32>()?.slice(a2..b2);
    let v = s3.as_cuda_slice::<f32>()?.slice(a3..b3);
    let p = s1.as_cuda_slice_mut::<f32>()?;
    let mut p = p.slice_mut(a1..b1);
    let mut b = func.builder();
    b.arg(&mut p);
    b.arg(&m);
    b.arg(&v);
    b.arg(&n);
    b.arg(&op.keep);
    b.arg(&op.lr);
    b.arg(&op.bc1);
    b.arg(&op.bc2);
    b.arg(&op.eps);
    // SAFETY: the kernel reads `n` values of `m` and `v` and reads and
    // writes `n` values of `p`, all views of exactly `n` f32s on this
    // device; the launch is ordered on the device's one stream.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}
