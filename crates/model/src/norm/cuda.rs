//! `BnAct`'s CUDA kernels (with the `cuda` feature), `kernels/bn.cu`
//! (`../shared/GPU-DESIGN.md` §3.3): [`forward`] is the op's `cuda_fwd`
//! (training: two deterministic per-channel reductions, Σx then Σ(x−μ)²,
//! then one element-wise pass, normalise + residual + LeakyReLU), [`grads`]
//! its backward (one reduction, Σdz and Σdz·(x−μ), then one element-wise
//! pass writing dx and dr); [`applies`] and [`forward_act`] are what the
//! layer calls. The batch statistics go to the host (3·C floats) for the
//! op's [`Stats`] and the running-statistics update, as on the CPU; the
//! backward uploads them again (2·C floats). `mirror.rs` repeats the
//! kernels' arithmetic on the host and checks it against the CPU op
//! without a GPU; the tests below check the kernels on one.
//!
//! [`leaky_relu`] (`kernels/norm.cu`) is the first kernel, which proved
//! the path from a `.cu` file to a launch; its test stays.
//!
//! Like `host.rs`, this file may hold `unsafe` (kernel launches,
//! uninitialised device buffers), each block with a `// SAFETY:` comment.

use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Storage, Tensor, bail};

use super::BatchNorm2d;
use super::op::{BatchStats, BnAct, Stats};

/// The PTX of `kernels/norm.cu`, written by `build.rs`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"));
/// The name the PTX is loaded under (once per device).
const MODULE: &str = "kseg_norm";
/// The PTX of `kernels/bn.cu` (the fused op's kernels).
const BN_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/bn.ptx"));
/// The name `bn.ptx` is loaded under.
const BN_MODULE: &str = "kseg_bn";
/// Threads per block of the reductions (`BN_THREADS` in `bn.cu`).
const RED_THREADS: u32 = 256;
/// Values of one channel that one reduction block sums.
const CHUNK: usize = 8192;

/// Whether [`forward_act`] takes this input on CUDA: kseg's CUDA ops on
/// ([`crate::gpu_ops`]: off until a recorded GPU run verifies them),
/// contiguous f32 input (and parameters, residual) on CUDA, and a positive
/// slope (the backward reads the activation's side from the output's sign).
pub(super) fn applies(bn: &BatchNorm2d, x: &Tensor, residual: Option<&Tensor>, slope: f64) -> bool {
    slope > 0.0
        && crate::gpu_ops()
        && x.device().is_cuda()
        && x.dtype() == DType::F32
        && x.is_contiguous()
        && bn.running_mean.dtype() == DType::F32
        && residual.is_none_or(|r| r.dtype() == DType::F32 && r.device().is_cuda())
}

/// [`BatchNorm2d::forward_act`] as one [`BnAct`] on CUDA (where
/// [`applies`]): the same flow as the CPU's (`cpu::forward_act` is
/// device-generic): the op records the batch statistics on the host (3·C
/// floats copied back), from which the running statistics are updated.
pub(super) fn forward_act(
    bn: &BatchNorm2d,
    x: &Tensor,
    residual: Option<&Tensor>,
    slope: f64,
    train: bool,
) -> Result<Tensor> {
    super::cpu::forward_act(bn, x, residual, slope, train)
}

/// The contiguous f32 values of `s` under `l`.
fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("batch norm: the {what} must be contiguous")
    };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

/// A grid-stride launch configuration for `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        // The grid-stride loops cover what a capped grid does not.
        grid_dim: (
            (n as u64).div_ceil(BLOCK as u64).clamp(1, 1 << 16) as u32,
            1,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One reduction over every channel (`kseg_bn_partials_f32` then
/// `kseg_bn_combine_f32` with the same `mode`) into `out`.
#[allow(clippy::too_many_arguments)]
fn reduce(
    dev: &candle_core::CudaDevice,
    (x, y, dy): (&CudaView<f32>, &CudaView<f32>, &CudaView<f32>),
    mean: &CudaView<f32>,
    invstd: &CudaView<f32>,
    slope: f32,
    mode: i32,
    (hw, c, n): (usize, usize, usize),
    eps: f64,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let nchunks = n.div_ceil(CHUNK).max(1);
    if nchunks > u32::MAX as usize || c > 65535 {
        bail!("batch norm: {c} channels of {n} values are beyond one launch")
    }
    // SAFETY: every one of the 2·C·nchunks values is written by the
    // partials kernel (thread 0 of each block) before the combine reads it.
    let part = unsafe { dev.alloc::<f32>(2 * c * nchunks)? };
    let func = dev.get_or_load_custom_func("kseg_bn_partials_f32", BN_MODULE, BN_PTX)?;
    let mut b = func.builder();
    b.arg(x);
    b.arg(y);
    b.arg(dy);
    b.arg(mean);
    b.arg(&slope);
    b.arg(&mode);
    b.arg(&hw);
    b.arg(&c);
    b.arg(&n);
    b.arg(&CHUNK);
    b.arg(&part);
    let cfg = LaunchConfig {
        grid_dim: (nchunks as u32, c as u32, 1),
        block_dim: (RED_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `kseg_bn_partials_f32` in order and type
    // (usize is size_t on CUDA's 64-bit targets); `x`, `y`, `dy` hold the
    // B·C·hw values the kernel indexes (n = B·hw), `mean` C values (read
    // in modes 1 and 2 only), `part` 2·C·nchunks, with nchunks the grid's
    // x dimension; everything is ordered on the device's one stream.
    unsafe { b.launch(cfg) }.w()?;
    let func = dev.get_or_load_custom_func("kseg_bn_combine_f32", BN_MODULE, BN_PTX)?;
    let mut b = func.builder();
    let nf = n as f64;
    b.arg(&part);
    b.arg(&nchunks);
    b.arg(&c);
    b.arg(&nf);
    b.arg(&eps);
    b.arg(&mode);
    b.arg(invstd);
    b.arg(&mut *out);
    let cfg = LaunchConfig {
        grid_dim: ((c as u32).div_ceil(RED_THREADS), 1, 1),
        block_dim: (RED_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `kseg_bn_combine_f32` in order and type;
    // threads with ch ≥ C return, the others read `part` inside its
    // 2·C·nchunks values, `invstd` (C values, mode 2 only) and write `out`
    // inside its 3·C (modes 0, 1) or 2·C (mode 2) values; one stream.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// `BnAct`'s forward on CUDA (`r` already checked to have `x`'s shape);
/// in training it records the batch statistics in the op's [`Stats`]
/// (copied to the host: a synchronisation, 3·C floats).
pub(super) fn forward(
    op: &BnAct,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    r: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s1.device;
    let x = view(s1, l1, "input")?;
    let gb = view(s2, l2, "weight")?;
    let r = r.map(|(s, l)| view(s, l, "residual")).transpose()?;
    let (b, c, h, w) = l1.shape().dims4()?;
    if gb.len() != 2 * c {
        bail!("batch norm: {} affine values for {c} channels", gb.len());
    }
    let (hw, n, total) = (h * w, b * h * w, b * c * h * w);
    if total == 0 {
        bail!("batch norm: an empty input {:?}", l1.shape());
    }
    // The statistics as (buffer, offset) pairs: (mean, invstd).
    let ((mbuf, mo), (ibuf, io)): ((CudaSlice<f32>, usize), (CudaSlice<f32>, usize)) =
        match &op.stats {
            Stats::Batch(cell) => {
                // SAFETY: the combine of mode 0 writes the C values that
                // are read (`st[..C]`, the mean) before anything reads them.
                let mut st = unsafe { dev.alloc::<f32>(3 * c)? };
                reduce(
                    dev,
                    (&x, &x, &x),
                    &x,
                    &x,
                    0.0,
                    0,
                    (hw, c, n),
                    op.eps,
                    &mut st,
                )?;
                // SAFETY: the combine of mode 1 writes `vs[C..3C]` (var,
                // invstd), the only values read; `vs[..C]` is never used.
                let mut vs = unsafe { dev.alloc::<f32>(3 * c)? };
                let mean = st.slice(0..c);
                reduce(
                    dev,
                    (&x, &x, &x),
                    &mean,
                    &x,
                    0.0,
                    1,
                    (hw, c, n),
                    op.eps,
                    &mut vs,
                )?;
                let mean_h = dev.clone_dtoh(&mean)?;
                let vs_h = dev.clone_dtoh(&vs.slice(c..3 * c))?;
                // A recomputed forward (never done by candle) would find
                // the same statistics.
                let _ = cell.set(BatchStats {
                    mean: mean_h,
                    var: vs_h[..c].to_vec(),
                    invstd: vs_h[c..].to_vec(),
                });
                ((st, 0), (vs, 2 * c))
            }
            Stats::Running(s) => ((dev.clone_htod(&s.0)?, 0), (dev.clone_htod(&s.1)?, 0)),
        };
    if mbuf.len() < mo + c || ibuf.len() < io + c {
        bail!("batch norm: statistics for fewer than {c} channels");
    }
    let (mean, invstd) = (mbuf.slice(mo..mo + c), ibuf.slice(io..io + c));
    let func = dev.get_or_load_custom_func("kseg_bn_fwd_f32", BN_MODULE, BN_PTX)?;
    // SAFETY: the grid-stride loop below writes all `total` values of `y`
    // before anything reads them.
    let y = unsafe { dev.alloc::<f32>(total)? };
    let has_r: i32 = r.is_some().into();
    let rv = r.as_ref().unwrap_or(&x);
    let mut bld = func.builder();
    bld.arg(&x);
    bld.arg(rv);
    bld.arg(&has_r);
    bld.arg(&gb);
    bld.arg(&mean);
    bld.arg(&invstd);
    bld.arg(&y);
    bld.arg(&op.slope);
    bld.arg(&hw);
    bld.arg(&c);
    bld.arg(&total);
    // SAFETY: the arguments match `kseg_bn_fwd_f32` in order and type;
    // `x`, `r` (or `x` again, unread, without a residual) and `y` hold
    // `total` values, `gb` 2·C, `mean`, `invstd` C; the kernel indexes
    // below `total` and channels below C; one stream orders it all.
    unsafe { bld.launch(elementwise(total)) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        l1.shape().clone(),
    ))
}

/// An untracked tensor of the f32 values `s` on `dev`.
fn wrap(s: CudaSlice<f32>, dev: &candle_core::CudaDevice, shape: impl Into<Shape>) -> Tensor {
    let st = CudaStorage::wrap_cuda_slice(s, dev.clone());
    Tensor::from_storage(Storage::Cuda(st), shape, BackpropOp::none(), false)
}

/// `BnAct`'s gradients on CUDA with respect to `x`, `[gamma; beta]` and,
/// when `with_r`, `r` (the pre-activation gradient).
pub(super) fn grads(
    op: &BnAct,
    x: &Tensor,
    gb: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    with_r: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let (b, c, h, w) = x.dims4()?;
    let (hw, n, total) = (h * w, b * h * w, b * c * h * w);
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
    let (Storage::Cuda(xs), Storage::Cuda(ys), Storage::Cuda(dys), Storage::Cuda(gbs)) =
        (&*xs, &*ys, &*dys, &*gbs)
    else {
        bail!("batch norm backward: tensors on different devices")
    };
    let dev = &xs.device;
    let xv = view(xs, xl, "input")?;
    let yv = view(ys, yl, "output")?;
    let dyv = view(dys, dyl, "output gradient")?;
    let gbv = view(gbs, gbl, "weight")?;
    if yv.len() != total || dyv.len() != total || gbv.len() != 2 * c || total == 0 {
        bail!("batch norm backward: inconsistent sizes");
    }
    let (mean_h, invstd_h) = op.mean_invstd()?;
    if mean_h.len() != c || invstd_h.len() != c {
        bail!(
            "batch norm backward: statistics for {} channels, not {c}",
            mean_h.len()
        );
    }
    let mut mi = mean_h.to_vec();
    mi.extend_from_slice(invstd_h);
    let mi = dev.clone_htod(&mi)?;
    let (mean, invstd) = (mi.slice(0..c), mi.slice(c..2 * c));
    // SAFETY: the combine of mode 2 writes all 2·C values.
    let mut dgb = unsafe { dev.alloc::<f32>(2 * c)? };
    reduce(
        dev,
        (&xv, &yv, &dyv),
        &mean,
        &invstd,
        op.slope,
        2,
        (hw, c, n),
        0.0,
        &mut dgb,
    )?;
    // SAFETY: the grid-stride loop writes all `total` values of `dx` (and
    // of `dr` with a residual) before anything reads them.
    let dx = unsafe { dev.alloc::<f32>(total)? };
    let dr = if with_r {
        // SAFETY: as for `dx`.
        Some(unsafe { dev.alloc::<f32>(total)? })
    } else {
        None
    };
    let train: i32 = matches!(op.stats, Stats::Batch(_)).into();
    let nf = n as f32;
    let has_r: i32 = with_r.into();
    let func = dev.get_or_load_custom_func("kseg_bn_bwd_f32", BN_MODULE, BN_PTX)?;
    let mut bld = func.builder();
    bld.arg(&xv);
    bld.arg(&yv);
    bld.arg(&dyv);
    bld.arg(&gbv);
    bld.arg(&mean);
    bld.arg(&invstd);
    bld.arg(&dgb);
    bld.arg(&train);
    bld.arg(&nf);
    bld.arg(&op.slope);
    bld.arg(&hw);
    bld.arg(&c);
    bld.arg(&total);
    bld.arg(&dx);
    bld.arg(dr.as_ref().unwrap_or(&dx));
    bld.arg(&has_r);
    // SAFETY: the arguments match `kseg_bn_bwd_f32` in order and type;
    // `x`, `y`, `dy`, `dx` (and `dr`, or `dx` again, never written through
    // that argument without a residual) hold `total` values, `gb` and
    // `dgb` 2·C, `mean`, `invstd` C; one stream orders it all.
    unsafe { bld.launch(elementwise(total)) }.w()?;
    Ok((
        wrap(dx, dev, (b, c, h, w)),
        wrap(dgb, dev, (2, c)),
        dr.map(|dr| wrap(dr, dev, (b, c, h, w))),
    ))
}

/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;

/// `x >= 0 ? x : slope·x` of the contiguous f32 values of `s` under `l`,
/// in a new buffer on the same device (untracked: a kernel for the fused
/// op's `cuda_fwd`, which receives a storage and a layout like this).
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the proof kernel is launched by its test only")
)]
pub(super) fn leaky_relu(s: &CudaStorage, l: &Layout, slope: f32) -> Result<CudaStorage> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("leaky relu: the input must be contiguous")
    };
    let n = b - a;
    let dev = &s.device;
    let x = s.as_cuda_slice::<f32>()?.slice(a..b);
    if n == 0 {
        return Ok(CudaStorage::wrap_cuda_slice(
            dev.alloc_zeros::<f32>(0)?,
            dev.clone(),
        ));
    }
    let func = dev.get_or_load_custom_func("kseg_leaky_relu_f32", MODULE, PTX)?;
    // SAFETY: `y` is only read after the kernel below has written all of
    // its `n` values (the grid-stride loop covers every index below `n`).
    let y = unsafe { dev.alloc::<f32>(n)? };
    let mut builder = func.builder();
    builder.arg(&x);
    builder.arg(&y);
    builder.arg(&slope);
    builder.arg(&n);
    let cfg = LaunchConfig {
        // The grid-stride loop covers what a capped grid does not.
        grid_dim: ((n as u64).div_ceil(BLOCK as u64).min(1 << 16) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match `kseg_leaky_relu_f32(const float *x,
    // float *y, float slope, size_t n)` in order and type (usize is size_t
    // on the 64-bit targets CUDA supports); `x` and `y` hold `n` f32 values
    // each on this device, so the kernel reads and writes only inside them;
    // both are used on the device's one stream, which orders the launch
    // after their allocation and before any later use.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
}

#[cfg(test)]
mod tests {
    use candle_core::op::BackpropOp;
    use candle_core::{Device, Storage, Tensor};

    /// The proof kernel against the tensor-op LeakyReLU, on an input that
    /// starts inside its buffer (a narrowed view); skipped without a GPU.
    #[test]
    fn leaky_relu_kernel_matches_the_tensor_op() -> candle_core::Result<()> {
        let Ok(dev) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return Ok(());
        };
        let v: Vec<f32> = (0..3 * 5 * 7 * 9)
            .map(|i| (i as f32 - 470.0) / 13.0)
            .collect();
        let x = Tensor::from_vec(v, (3, 5, 7, 9), &dev)?.narrow(0, 1, 2)?;
        let want = crate::act::leaky_relu(&x, 0.2)?;
        let got = {
            let (s, l) = x.storage_and_layout();
            let Storage::Cuda(s) = &*s else {
                panic!("a CUDA tensor without CUDA storage")
            };
            let y = super::leaky_relu(s, l, 0.2)?;
            Tensor::from_storage(Storage::Cuda(y), x.shape(), BackpropOp::none(), false)
        };
        let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 1e-6, "kernel and tensor op differ by {diff}");
        Ok(())
    }

    /// The kernels' reduction constants are the mirror's.
    #[test]
    fn constants_match_the_mirror() {
        assert_eq!(super::RED_THREADS as usize, crate::norm::mirror::THREADS);
    }

    /// `BnAct` on CUDA against the CPU op (values, gradients through
    /// autograd, batch statistics), training and evaluation, with and
    /// without a residual; skipped without a GPU.
    #[test]
    fn bn_act_kernels_match_the_cpu_op() -> candle_core::Result<()> {
        use std::sync::{Arc, OnceLock};

        use crate::norm::mirror::{rel_diff, values};
        use crate::norm::op::{BnAct, Stats};
        use candle_core::Var;

        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return Ok(());
        };
        let check = |what: &str, a: &Tensor, b: &Tensor| -> candle_core::Result<()> {
            let a = a.flatten_all()?.to_vec1::<f32>()?;
            let b = b.flatten_all()?.to_vec1::<f32>()?;
            let d = rel_diff(&a, &b);
            assert!(d <= 1e-5, "{what}: CUDA and CPU differ by {d} (relative)");
            Ok(())
        };
        let eps = crate::norm::BatchNorm2d::EPS;
        for dims in [(1, 1, 7, 9), (3, 5, 17, 13), (8, 16, 65, 63)] {
            let (b, c, h, w) = dims;
            let len = b * c * h * w;
            let xv = values(len, 11, 1.5, 4.0);
            let rv = values(len, 12, -1.0, 2.0);
            let dyv = values(len, 13, -1.0, 2.0);
            let mut gbv = values(c, 14, 0.5, 1.0);
            gbv.extend(values(c, 15, -0.5, 1.0));
            let run_mean = values(c, 16, -0.5, 1.0);
            let run_var = values(c, 17, 0.5, 1.0);
            let run_invstd: Vec<f32> = run_var
                .iter()
                .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
                .collect();
            for residual in [false, true] {
                for train in [true, false] {
                    // (y, dx, dgb, dr, batch stats) on one device.
                    let run = |dev: &Device| -> candle_core::Result<_> {
                        let stats = if train {
                            Stats::Batch(Arc::new(OnceLock::new()))
                        } else {
                            Stats::Running(Arc::new((run_mean.clone(), run_invstd.clone())))
                        };
                        let op = BnAct {
                            eps,
                            slope: 0.2,
                            stats: stats.clone(),
                        };
                        let x = Var::from_vec(xv.clone(), dims, dev)?;
                        let r = Var::from_vec(rv.clone(), dims, dev)?;
                        let gb = Var::from_vec(gbv.clone(), (2, c), dev)?;
                        let dy = Tensor::from_vec(dyv.clone(), dims, dev)?;
                        let y = op.apply(&x, &gb, residual.then_some(r.as_tensor()))?;
                        let g = (&y * &dy)?.sum_all()?.backward()?;
                        let dx = g.get(&x).expect("dx").clone();
                        let dgb = g.get(&gb).expect("dgb").clone();
                        let dr = g.get(&r).cloned();
                        let st = match &stats {
                            Stats::Batch(cell) => {
                                let s = cell.get().expect("statistics recorded");
                                Some((s.mean.clone(), s.var.clone(), s.invstd.clone()))
                            }
                            Stats::Running(_) => None,
                        };
                        Ok((y, dx, dgb, dr, st))
                    };
                    let (y, dx, dgb, dr, st) = run(&gpu)?;
                    let (cy, cdx, cdgb, cdr, cst) = run(&Device::Cpu)?;
                    let what = format!("{dims:?} residual {residual} train {train}");
                    check(&format!("y {what}"), &y, &cy)?;
                    check(&format!("dx {what}"), &dx, &cdx)?;
                    check(&format!("dgamma {what}"), &dgb.get(0)?, &cdgb.get(0)?)?;
                    check(&format!("dbeta {what}"), &dgb.get(1)?, &cdgb.get(1)?)?;
                    match (dr, cdr) {
                        (Some(a), Some(b)) => check(&format!("dr {what}"), &a, &b)?,
                        (None, None) => {}
                        _ => panic!("dr {what}: on one device only"),
                    }
                    if let (Some(a), Some(b)) = (st, cst) {
                        for (name, u, v) in
                            [("mean", a.0, b.0), ("var", a.1, b.1), ("invstd", a.2, b.2)]
                        {
                            let d = rel_diff(&u, &v);
                            assert!(d <= 1e-5, "{name} {what}: CUDA and CPU differ by {d}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The layer on CUDA (`forward_act`, three training steps then one
    /// evaluation) against the CPU layer: outputs and running statistics;
    /// skipped without a GPU.
    #[test]
    fn bn_layer_running_stats_match_the_cpu() -> candle_core::Result<()> {
        use candle_core::DType;
        use candle_nn::{VarBuilder, VarMap};

        use crate::norm::BatchNorm2d;
        use crate::norm::mirror::{rel_diff, values};

        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return Ok(());
        };
        let (b, c, h, w) = (3, 5, 17, 13);
        let layer = |dev: &Device| -> candle_core::Result<(VarMap, BatchNorm2d)> {
            let vm = VarMap::new();
            let bn = BatchNorm2d::new(c, VarBuilder::from_varmap(&vm, DType::F32, dev))?;
            Ok((vm, bn))
        };
        let (_gvm, gbn) = layer(&gpu)?;
        let (_cvm, cbn) = layer(&Device::Cpu)?;
        let close = |what: &str, a: &Tensor, b: &Tensor| -> candle_core::Result<()> {
            let d = rel_diff(
                &a.flatten_all()?.to_vec1::<f32>()?,
                &b.flatten_all()?.to_vec1::<f32>()?,
            );
            assert!(d <= 1e-5, "{what}: CUDA and CPU differ by {d} (relative)");
            Ok(())
        };
        for step in 0..4u64 {
            let train = step < 3;
            let xv = values(b * c * h * w, 20 + step, 1.0 + step as f32, 3.0);
            let rv = values(b * c * h * w, 30 + step, -1.0, 2.0);
            let x = Tensor::from_vec(xv.clone(), (b, c, h, w), &gpu)?;
            let r = Tensor::from_vec(rv.clone(), (b, c, h, w), &gpu)?;
            let cx = Tensor::from_vec(xv, (b, c, h, w), &Device::Cpu)?;
            let cr = Tensor::from_vec(rv, (b, c, h, w), &Device::Cpu)?;
            let y = super::forward_act(&gbn, &x, Some(&r), 0.2, train)?;
            let cy = cbn.forward_act(&cx, Some(&cr), 0.2, train)?;
            close(&format!("y step {step}"), &y, &cy)?;
            close(
                "running mean",
                gbn.running_mean.as_tensor(),
                cbn.running_mean.as_tensor(),
            )?;
            close(
                "running var",
                gbn.running_var.as_tensor(),
                cbn.running_var.as_tensor(),
            )?;
        }
        Ok(())
    }
}
