//! [`SegLoss`](crate::SegLoss)'s CUDA kernels (with the `cuda` feature),
//! `kernels/seg_loss.cu` (`../shared/GPU-DESIGN.md` §3.4): the whole loss
//! on the device in f64, with no copy of the logits, probabilities or
//! gradients to the host. [`applies`] and [`seg_loss`] are what the loss
//! calls, [`value`] and [`grad`] are [`PartOp`]'s forward and backward.
//!
//! [`seg_loss`] launches, on the device's one stream:
//! 1. the pixel pass (`kseg_sl_pixels`): softmax, the cross-entropy's
//!    block partials and each pixel's weight, the segment counts, and one
//!    sort entry per (class, pixel);
//! 2. the LSD radix sort: per 8-bit digit (the key's 8 bytes, then the
//!    segment's) a tile histogram, its scan and a stable scatter;
//! 3. the segment table, the flag scans and the Jaccard pass (the Lovász
//!    gradient with respect to the probabilities, the loss partials);
//! 4. the final sums (ce, lovasz, total as device scalars).
//!
//! The only copy to the host is the pixel pass's status (two integers:
//! the first non-finite logit and the first label that is not a class),
//! so that bad input is an error as on the CPU, plus the `C` class weights
//! when given. The backward (`kseg_sl_backward`) reads the upstream
//! gradient on the device.
//!
//! The arithmetic (sort keys, radix passes, scans, Jaccard differences)
//! is mirrored on the host, step by step, in `mirror.rs`, whose tests
//! check it against `lovasz_softmax_host` without a GPU; the test below
//! checks these kernels against the CPU loss on a GPU.
//!
//! This file (and only it) may hold `unsafe` (kernel launches,
//! uninitialised device buffers), each block with a `// SAFETY:` comment.

use std::sync::Arc;

use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Result, Storage, Tensor, bail};

use super::op::{Part, PartOp, Saved};
use crate::check::{check_logits_labels, host_weights};
use crate::lovasz::{Classes, LovaszConfig};

/// The PTX of `kernels/seg_loss.cu`, written by `build.rs`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/seg_loss.ptx"));
/// The name the PTX is loaded under (once per device).
const MODULE: &str = "kseg_seg_loss";
/// Threads per block (`SL_THREADS`).
const THREADS: u32 = 256;
/// Entries (and pixels) per tile (`SL_TILE`).
const TILE: usize = 4096;
/// Bins of a radix digit (`SL_BINS`).
const BINS: usize = 256;
/// The most segment and group counters the pixel pass keeps in shared
/// memory (16 KiB).
const MAX_COUNTERS: usize = 4096;

/// What the backward needs, on the device.
pub(super) struct DeviceKept {
    /// `[B, C, H, W]`.
    dims: [usize; 4],
    /// Softmax probabilities, `(B, C, H, W)`, f64.
    probs: CudaSlice<f64>,
    /// The Lovász term's gradient with respect to `probs`.
    lovasz_grad: CudaSlice<f64>,
    /// `(B, H, W)` as contiguous u32.
    labels: Tensor,
    /// Each pixel's cross-entropy weight (0 where ignored).
    pix_w: CudaSlice<f64>,
    /// `[ce, lovasz, Σ weights, total]`.
    scal: CudaSlice<f64>,
    /// `[total, ce, lovasz]` as f32: the parts' values.
    out: CudaSlice<f32>,
    lambda: f64,
}

/// Whether [`seg_loss`] handles these inputs: kseg's CUDA ops on
/// ([`crate::gpu_ops`]: off until a recorded GPU run verifies them), f32
/// logits and the labels on one CUDA device, and sizes the kernels index
/// (`C·B·H·W` entries below 2^32, at most [`MAX_COUNTERS`] segments and
/// groups).
pub(super) fn applies(logits: &Tensor, labels: &Tensor) -> bool {
    let Ok((b, c, h, w)) = logits.dims4() else {
        return false;
    };
    crate::gpu_ops()
        && logits.device().is_cuda()
        && logits.device().same_device(labels.device())
        && logits.dtype() == DType::F32
        && c > 0
        && (b * c * h * w) < u32::MAX as usize
        && b * c + b <= MAX_COUNTERS
}

/// The contiguous values of `t` on CUDA, with what to call them in errors.
fn cuda_slice<T: candle_core::cuda_backend::CudaDType>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(
        &CudaStorage,
        candle_core::cuda_backend::cudarc::driver::CudaView<'_, T>,
    ) -> Result<()>,
) -> Result<()> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(s) = &*s else {
        bail!("loss: the {what} are not on a CUDA device")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("loss: the {what} are not contiguous")
    };
    let view = s.as_cuda_slice::<T>()?.slice(a..b);
    f(s, view)
}

/// A launch of `blocks` blocks of [`THREADS`] threads.
fn blocks(blocks: usize, shared_mem_bytes: u32) -> Result<LaunchConfig> {
    let Ok(grid) = u32::try_from(blocks.max(1)) else {
        bail!("loss: {blocks} blocks is beyond one launch")
    };
    Ok(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes,
    })
}

/// `[ce + λ · lovasz, ce, lovasz]` on CUDA (where [`applies`]), the same
/// loss as the CPU's `seg_loss` to rounding.
pub(super) fn seg_loss(
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
    lambda: f64,
    cfg: &LovaszConfig,
) -> Result<[Tensor; 3]> {
    let (b, c, h, w) = check_logits_labels(logits, labels, "loss")?;
    let (hw, n) = (h * w, b * h * w);
    let len = c * n;
    if len == 0 {
        bail!("loss: an empty input {:?}", logits.dims());
    }
    let logits_c = logits.contiguous()?;
    let labels_u = labels.to_dtype(DType::U32)?.contiguous()?;
    let weights = weights.map(|wt| host_weights(wt, c)).transpose()?;
    let per_image = cfg.per_image;
    let nseg = if per_image { b * c } else { c };
    let groups = if per_image { b } else { 1 };
    let (ignore, has_ignore) = (cfg.ignore.unwrap_or(0), i32::from(cfg.ignore.is_some()));
    let mut kept = None;
    cuda_slice::<f32>(&logits_c, "logits", |ls, x| {
        cuda_slice::<u32>(&labels_u, "labels", |_, lab| {
            let dev = &ls.device;
            let k = launch_forward(
                dev,
                &x,
                &lab,
                weights.as_deref(),
                Sizes {
                    dims: [b, c, h, w],
                    hw,
                    n,
                    len,
                    nseg,
                    groups,
                },
                (ignore, has_ignore),
                cfg,
                lambda,
            )?;
            kept = Some(k);
            Ok(())
        })
    })?;
    let Some((probs, lovasz_grad, pix_w, scal, out)) = kept else {
        bail!("loss: the CUDA forward produced nothing")
    };
    let kept = Arc::new(DeviceKept {
        dims: [b, c, h, w],
        probs,
        lovasz_grad,
        labels: labels_u,
        pix_w,
        scal,
        out,
        lambda,
    });
    let part = |part: Part| {
        logits.apply_op1(PartOp {
            saved: Saved::Cuda(kept.clone()),
            part,
        })
    };
    Ok([part(Part::Total)?, part(Part::Ce)?, part(Part::Lovasz)?])
}

/// The sizes every launch needs.
#[derive(Clone, Copy)]
struct Sizes {
    dims: [usize; 4],
    hw: usize,
    n: usize,
    len: usize,
    nseg: usize,
    groups: usize,
}

/// The forward's device buffers that the backward keeps: probabilities,
/// the Lovász gradient, pixel weights, `[ce, lovasz, Σw, total]`, the
/// three f32 values.
type Forward = (
    CudaSlice<f64>,
    CudaSlice<f64>,
    CudaSlice<f64>,
    CudaSlice<f64>,
    CudaSlice<f32>,
);

/// Every launch of the forward (see the module documentation).
#[allow(clippy::too_many_arguments)]
fn launch_forward(
    dev: &CudaDevice,
    x: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
    lab: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, u32>,
    weights: Option<&[f64]>,
    sz: Sizes,
    (ignore, has_ignore): (u32, i32),
    cfg: &LovaszConfig,
    lambda: f64,
) -> Result<Forward> {
    let Sizes {
        dims: [_, c, _, _],
        hw,
        n,
        len,
        nseg,
        groups,
    } = sz;
    let per_image = i32::from(cfg.per_image);
    let (nseg32, groups32) = (nseg as u32, groups as u32);
    let load = |name: &str| dev.get_or_load_custom_func(name, MODULE, PTX);

    // 1. The pixel pass.
    let pix_blocks = n.div_ceil(TILE);
    let has_w = i32::from(weights.is_some());
    let wbuf = dev.clone_htod(weights.unwrap_or(&[0.0]))?;
    // SAFETY: the pixel pass writes every value of `probs` (B·C·HW),
    // `pix_w` (N), `keys` and `vals` (C·N), and both values of each of its
    // blocks in `ce_part`, before anything reads them (the same for the
    // next four allocations).
    let probs = unsafe { dev.alloc::<f64>(len)? };
    // SAFETY: see above.
    let pix_w = unsafe { dev.alloc::<f64>(n)? };
    // SAFETY: see above.
    let mut keys = unsafe { dev.alloc::<u64>(len)? };
    // SAFETY: see above.
    let mut vals = unsafe { dev.alloc::<u32>(len)? };
    // SAFETY: see above.
    let ce_part = unsafe { dev.alloc::<f64>(2 * pix_blocks)? };
    let counts = dev.alloc_zeros::<u32>(nseg + groups)?;
    let status = dev.clone_htod(&[u32::MAX, u32::MAX])?;
    let func = load("kseg_sl_pixels")?;
    let mut bl = func.builder();
    bl.arg(x);
    bl.arg(lab);
    bl.arg(&wbuf);
    bl.arg(&has_w);
    bl.arg(&hw);
    bl.arg(&c);
    bl.arg(&n);
    bl.arg(&ignore);
    bl.arg(&has_ignore);
    bl.arg(&per_image);
    bl.arg(&nseg32);
    bl.arg(&groups32);
    bl.arg(&probs);
    bl.arg(&pix_w);
    bl.arg(&keys);
    bl.arg(&vals);
    bl.arg(&ce_part);
    bl.arg(&counts);
    bl.arg(&status);
    let cfg1 = blocks(pix_blocks, (4 * (nseg + groups)) as u32)?;
    // SAFETY: the arguments match `kseg_sl_pixels` in order and type
    // (usize is size_t); `x` holds B·C·HW values, `lab` N, `wbuf` C when
    // `has_w` (one, unread, otherwise), the outputs the sizes above,
    // `counts` nseg + groups (also the shared memory's size, below
    // MAX_COUNTERS by `applies`), `status` 2; labels are range-checked
    // before they index; one stream orders it all.
    unsafe { bl.launch(cfg1) }.w()?;
    let st = dev.clone_dtoh(&status)?;
    if st[0] != u32::MAX {
        let i = st[0] as usize;
        let v = dev.clone_dtoh(&x.slice(i..i + 1))?[0];
        let w = sz.dims[3];
        bail!(
            "loss: logit {v} at [{}, {}, {}, {}] is not finite",
            i / (c * hw),
            (i / hw) % c,
            (i % hw) / w,
            i % w
        );
    }
    if st[1] != u32::MAX {
        let i = st[1] as usize;
        let l = dev.clone_dtoh(&lab.slice(i..i + 1))?[0];
        bail!(
            "label value {l} at flat index {i} is not a class (input has {c} classes{})",
            cfg.ignore
                .map(|g| format!(", ignore label {g}"))
                .unwrap_or_default()
        );
    }

    // 2. The radix sort: the key's 8 bytes, then the segment's.
    let tiles = len.div_ceil(TILE);
    // SAFETY: each pass's scatter writes every one of the `len` entries
    // (a permutation) before the next pass or the Jaccard pass reads them.
    let mut keys2 = unsafe { dev.alloc::<u64>(len)? };
    // SAFETY: as for `keys2`.
    let mut vals2 = unsafe { dev.alloc::<u32>(len)? };
    // SAFETY: every histogram kernel writes all BINS · tiles values.
    let mut hist = unsafe { dev.alloc::<u32>(BINS * tiles)? };
    let seg_bytes = {
        let bits = usize::BITS - (nseg.max(1) - 1).leading_zeros();
        bits.div_ceil(8)
    };
    let passes = (0..8u32)
        .map(|byte| (0i32, 8 * byte))
        .chain((0..seg_bytes).map(|byte| (1i32, 8 * byte)));
    let (fh, fs, fsc) = (
        load("kseg_sl_hist")?,
        load("kseg_sl_scan")?,
        load("kseg_sl_scatter")?,
    );
    let hist_len = BINS * tiles;
    for (mode, shift) in passes {
        let mut bl = fh.builder();
        bl.arg(&keys);
        bl.arg(&vals);
        bl.arg(&len);
        bl.arg(&mode);
        bl.arg(&shift);
        bl.arg(&hw);
        bl.arg(&c);
        bl.arg(&n);
        bl.arg(&per_image);
        bl.arg(&mut hist);
        // SAFETY: the arguments match `kseg_sl_hist`; block t reads
        // entries below `len` and writes hist[d · tiles + t] for the grid's
        // `tiles` blocks and BINS digits; one stream.
        unsafe { bl.launch(blocks(tiles, 0)?) }.w()?;
        let mut bl = fs.builder();
        bl.arg(&mut hist);
        bl.arg(&hist_len);
        // SAFETY: the arguments match `kseg_sl_scan`; one block scans the
        // `hist_len` values in place.
        unsafe { bl.launch(blocks(1, 0)?) }.w()?;
        let mut bl = fsc.builder();
        bl.arg(&keys);
        bl.arg(&vals);
        bl.arg(&mut keys2);
        bl.arg(&mut vals2);
        bl.arg(&len);
        bl.arg(&mode);
        bl.arg(&shift);
        bl.arg(&hw);
        bl.arg(&c);
        bl.arg(&n);
        bl.arg(&per_image);
        bl.arg(&hist);
        // SAFETY: the arguments match `kseg_sl_scatter`; the scanned
        // histogram gives each entry a distinct destination below `len`
        // (a stable permutation); inputs and outputs are distinct buffers.
        unsafe { bl.launch(blocks(tiles, 0)?) }.w()?;
        std::mem::swap(&mut keys, &mut keys2);
        std::mem::swap(&mut vals, &mut vals2);
    }
    drop((keys2, vals2, hist));

    // 3. The segment table, the flag scans, the Jaccard pass.
    // SAFETY: kseg_sl_segments writes all `nseg` values of the three.
    let scale = unsafe { dev.alloc::<f64>(nseg)? };
    // SAFETY: as above.
    let fgb = unsafe { dev.alloc::<u32>(nseg)? };
    // SAFETY: as above.
    let vb = unsafe { dev.alloc::<u32>(nseg)? };
    let all = i32::from(cfg.classes == Classes::All);
    let func = load("kseg_sl_segments")?;
    let mut bl = func.builder();
    bl.arg(&counts);
    bl.arg(&nseg32);
    bl.arg(&groups32);
    bl.arg(&c);
    bl.arg(&per_image);
    bl.arg(&all);
    bl.arg(&scale);
    bl.arg(&fgb);
    bl.arg(&vb);
    // SAFETY: the arguments match `kseg_sl_segments`; one thread reads
    // nseg + groups counts and writes nseg values of each output.
    unsafe { bl.launch(blocks(1, 0)?) }.w()?;
    // SAFETY: kseg_sl_flag_tiles writes all 2 · tiles values.
    let mut offs = unsafe { dev.alloc::<u32>(2 * tiles)? };
    let func = load("kseg_sl_flag_tiles")?;
    let mut bl = func.builder();
    bl.arg(&vals);
    bl.arg(lab);
    bl.arg(&len);
    bl.arg(&n);
    bl.arg(&ignore);
    bl.arg(&has_ignore);
    bl.arg(&mut offs);
    // SAFETY: the arguments match `kseg_sl_flag_tiles`; block t reads
    // entries below `len` (values below C·N index the N labels) and writes
    // offs[t] and offs[tiles + t].
    unsafe { bl.launch(blocks(tiles, 0)?) }.w()?;
    for half in 0..2 {
        let mut view = offs.slice_mut(half * tiles..(half + 1) * tiles);
        let mut bl = fs.builder();
        bl.arg(&mut view);
        bl.arg(&tiles);
        // SAFETY: `kseg_sl_scan` over the `tiles` values of one half.
        unsafe { bl.launch(blocks(1, 0)?) }.w()?;
    }
    // SAFETY: the Jaccard pass writes the gradient at each entry's place
    // (every (class, pixel) once: all B·C·HW values) and one partial per
    // tile.
    let lovasz_grad = unsafe { dev.alloc::<f64>(len)? };
    // SAFETY: as above.
    let lv_part = unsafe { dev.alloc::<f64>(tiles)? };
    let func = load("kseg_sl_jaccard")?;
    let mut bl = func.builder();
    bl.arg(&keys);
    bl.arg(&vals);
    bl.arg(lab);
    bl.arg(&probs);
    bl.arg(&len);
    bl.arg(&hw);
    bl.arg(&c);
    bl.arg(&n);
    bl.arg(&ignore);
    bl.arg(&has_ignore);
    bl.arg(&per_image);
    bl.arg(&counts);
    bl.arg(&nseg32);
    bl.arg(&scale);
    bl.arg(&fgb);
    bl.arg(&vb);
    bl.arg(&offs);
    bl.arg(&lovasz_grad);
    bl.arg(&lv_part);
    // SAFETY: the arguments match `kseg_sl_jaccard`; block t reads
    // entries below `len`, segments below nseg, and writes inside
    // `lovasz_grad` (len values) and lv_part[t]; one stream.
    unsafe { bl.launch(blocks(tiles, 0)?) }.w()?;

    // 4. The sums.
    // SAFETY: kseg_sl_finish writes all 4 and all 3 values.
    let scal = unsafe { dev.alloc::<f64>(4)? };
    // SAFETY: as above.
    let out = unsafe { dev.alloc::<f32>(3)? };
    let func = load("kseg_sl_finish")?;
    let mut bl = func.builder();
    bl.arg(&ce_part);
    bl.arg(&pix_blocks);
    bl.arg(&lv_part);
    bl.arg(&tiles);
    bl.arg(&lambda);
    bl.arg(&scal);
    bl.arg(&out);
    // SAFETY: the arguments match `kseg_sl_finish`; one thread reads the
    // 2 · pix_blocks and `tiles` partials and writes `scal` and `out`.
    unsafe { bl.launch(blocks(1, 0)?) }.w()?;
    Ok((probs, lovasz_grad, pix_w, scal, out))
}

/// The index of `part` in the forward's `[total, ce, lovasz]`, and in
/// `kseg_sl_backward`'s `part` argument.
fn part_index(part: Part) -> usize {
    match part {
        Part::Total => 0,
        Part::Ce => 1,
        Part::Lovasz => 2,
    }
}

/// The device state of a CUDA [`PartOp`].
fn device_kept(op: &PartOp) -> Result<&DeviceKept> {
    match &op.saved {
        Saved::Cuda(k) => Ok(k),
        Saved::Host { .. } => bail!("loss: a host loss's op on a CUDA device"),
    }
}

/// [`PartOp`]'s forward on CUDA: its value as a device scalar (a copy on
/// the device of the forward's result).
pub(super) fn value(op: &PartOp, logits: &CudaStorage) -> Result<CudaStorage> {
    let kept = device_kept(op)?;
    let dev = &logits.device;
    let i = part_index(op.part);
    // SAFETY: the copy below writes the one value.
    let mut v = unsafe { dev.alloc::<f32>(1)? };
    dev.memcpy_dtod(&kept.out.slice(i..i + 1), &mut v)?;
    Ok(CudaStorage::wrap_cuda_slice(v, dev.clone()))
}

/// [`PartOp`]'s backward on CUDA: `grad_res · d part / d logits`, like
/// `arg` (f32).
pub(super) fn grad(op: &PartOp, arg: &Tensor, grad_res: &Tensor) -> Result<Tensor> {
    let kept = device_kept(op)?;
    let [b, c, h, w] = kept.dims;
    let (hw, n) = (h * w, b * h * w);
    let total = c * n;
    if arg.dims() != [b, c, h, w] {
        bail!(
            "loss backward: logits {:?}, not {:?}",
            arg.dims(),
            kept.dims
        );
    }
    let u = grad_res.to_dtype(DType::F32)?.contiguous()?;
    let mut out = None;
    cuda_slice::<f32>(&u, "upstream gradient", |us, uv| {
        cuda_slice::<u32>(&kept.labels, "labels", |_, lab| {
            let dev = &us.device;
            // SAFETY: the grid-stride loop writes all C values of every
            // one of the N pixels: all `total` values.
            let g = unsafe { dev.alloc::<f32>(total)? };
            let part = part_index(op.part) as i32;
            let func = dev.get_or_load_custom_func("kseg_sl_backward", MODULE, PTX)?;
            let mut bl = func.builder();
            bl.arg(&kept.probs);
            bl.arg(&kept.lovasz_grad);
            bl.arg(&lab);
            bl.arg(&kept.pix_w);
            bl.arg(&kept.scal);
            bl.arg(&uv);
            bl.arg(&kept.lambda);
            bl.arg(&part);
            bl.arg(&hw);
            bl.arg(&c);
            bl.arg(&n);
            bl.arg(&g);
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            if uv.len() != 1 {
                bail!("loss backward: an upstream gradient of {} values", uv.len());
            }
            // SAFETY: the arguments match `kseg_sl_backward` in order and
            // type; `probs`, `lovasz_grad` and `g` hold B·C·HW values,
            // `lab` and `pix_w` N, `scal` 4, `uv` 1; one stream.
            unsafe { bl.launch(cfg) }.w()?;
            out = Some(CudaStorage::wrap_cuda_slice(g, dev.clone()));
            Ok(())
        })
    })?;
    let Some(s) = out else {
        bail!("loss backward: nothing computed")
    };
    Ok(Tensor::from_storage(
        Storage::Cuda(s),
        arg.shape().clone(),
        BackpropOp::none(),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use crate::lovasz::{Classes, LovaszConfig};
    use crate::{SegLoss, SegLossConfig};

    /// Logits in [-2, 2) from a seeded xorshift (`quantum` > 0 rounds them
    /// for ties), labels below `classes`, one in `one_in` set to 7.
    fn inputs(seed: u64, dims: [usize; 4], quantum: f32, classes: u32) -> (Vec<f32>, Vec<u32>) {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let [b, c, h, w] = dims;
        let x = (0..b * c * h * w)
            .map(|_| {
                let v = 4.0 * ((next() >> 40) as f32 / (1u64 << 24) as f32) - 2.0;
                if quantum > 0.0 {
                    (v / quantum).round() * quantum
                } else {
                    v
                }
            })
            .collect();
        let l = (0..b * h * w)
            .map(|_| {
                let r = next();
                if r % 5 == 0 {
                    7
                } else {
                    ((r >> 8) % u64::from(classes)) as u32
                }
            })
            .collect();
        (x, l)
    }

    /// The CUDA loss (values and the gradient of each part through
    /// autograd) against the CPU loss, over the Lovász options, ties and
    /// ignored pixels; skipped without a GPU.
    #[test]
    fn cuda_loss_matches_the_cpu_loss() -> candle_core::Result<()> {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return Ok(());
        };
        crate::set_gpu_ops(true);
        for (ci, (dims, quantum, classes)) in [
            ([2, 3, 48, 48], 0.0, 3),
            ([3, 3, 9, 11], 0.5, 3),
            ([2, 3, 10, 10], 0.25, 2),
            ([4, 3, 64, 65], 0.0, 3),
        ]
        .into_iter()
        .enumerate()
        {
            let (xv, lv) = inputs(ci as u64 + 5, dims, quantum, classes);
            for classes_opt in [Classes::Present, Classes::All] {
                for per_image in [false, true] {
                    for ignore in [None, Some(7)] {
                        let lv: Vec<u32> = match ignore {
                            Some(_) => lv.clone(),
                            None => lv.iter().map(|&l| if l == 7 { 0 } else { l }).collect(),
                        };
                        let cfg = SegLossConfig {
                            lambda: 0.75,
                            lovasz: LovaszConfig {
                                classes: classes_opt,
                                per_image,
                                ignore,
                            },
                        };
                        let run = |dev: &Device, part: usize| -> candle_core::Result<_> {
                            let [b, c, h, w] = dims;
                            let x = Var::from_vec(xv.clone(), (b, c, h, w), dev)?;
                            let l = Tensor::from_vec(lv.clone(), (b, h, w), dev)?;
                            let wt = Tensor::new(&[0.4f32, 1.3, 2.1], dev)?;
                            let loss = SegLoss::new(cfg, Some(wt))?;
                            let p = loss.forward(&x, &l)?;
                            let t = [&p.total, &p.ce, &p.lovasz][part];
                            let g = t.affine(1.7, 0.0)?.backward()?;
                            let gx = g.get(&x).expect("gradient").clone();
                            Ok((
                                t.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                                gx.flatten_all()?.to_vec1::<f32>()?,
                            ))
                        };
                        for part in 0..3 {
                            let (gv, gg) = run(&gpu, part)?;
                            let (cv, cg) = run(&Device::Cpu, part)?;
                            let what = format!("case {ci} {:?} part {part}", cfg.lovasz);
                            assert!(
                                (gv - cv).abs() <= 1e-6 * cv.abs().max(1.0),
                                "{what}: value {gv} vs {cv}"
                            );
                            let scale = cg.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
                            let worst = gg
                                .iter()
                                .zip(&cg)
                                .map(|(a, b)| (a - b).abs())
                                .fold(0f32, f32::max);
                            assert!(
                                worst <= 1e-5 * scale,
                                "{what}: gradient off by {worst} (max {scale})"
                            );
                        }
                    }
                }
            }
        }
        crate::set_gpu_ops(false);
        Ok(())
    }

    /// Bad input is an error on the device as on the CPU; skipped without
    /// a GPU.
    #[test]
    fn cuda_loss_refuses_bad_labels_and_logits() -> candle_core::Result<()> {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("skipped: no CUDA device");
            return Ok(());
        };
        crate::set_gpu_ops(true);
        let loss = SegLoss::new(SegLossConfig::default(), None)?;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &gpu)?;
        let l = Tensor::from_vec([0u32, 1, 2, 5].repeat(4), (1, 4, 4), &gpu)?;
        let e = loss.forward(&x, &l).expect_err("label 5 of 3 classes");
        assert!(
            e.to_string().contains("label value 5 at flat index 3"),
            "{e}"
        );
        let mut xv = vec![0f32; 48];
        xv[21] = f32::NAN;
        let x = Tensor::from_vec(xv, (1, 3, 4, 4), &gpu)?;
        let l = Tensor::zeros((1, 4, 4), DType::U32, &gpu)?;
        let e = loss.forward(&x, &l).expect_err("a NaN logit");
        assert!(
            e.to_string().contains("at [0, 1, 1, 1] is not finite"),
            "{e}"
        );
        crate::set_gpu_ops(false);
        Ok(())
    }
}
