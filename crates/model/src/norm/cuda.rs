//! `BnAct`'s CUDA kernels (with the `cuda` feature). None of the fused op
//! yet, so [`applies`] is false and a CUDA BatchNorm is candle's ops; its
//! kernels (batch statistics, normalise + residual + LeakyReLU, backward:
//! `../shared/GPU-DESIGN.md` §3.3) go here: [`forward`] is the op's
//! `cuda_fwd`, [`grads`] its backward, [`applies`] and [`forward_act`]
//! what the layer calls.
//!
//! One kernel is here already, [`leaky_relu`] (`kernels/norm.cu`, compiled
//! to PTX by `build.rs`), which proves the path from a `.cu` file to a
//! launch; its test runs on a GPU (`cargo test -p kseg-model --features
//! cuda`) and passes without one.
//!
//! Like `host.rs`, this file may hold `unsafe` (kernel launches,
//! uninitialised device buffers), each block with a `// SAFETY:` comment.

// Only the test launches the proof kernel until the fused forward does.
#![cfg_attr(
    not(test),
    expect(dead_code, reason = "the proof kernel is launched by its test only")
)]

use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result, Shape, Tensor, bail};

use super::BatchNorm2d;
use super::op::BnAct;

/// The PTX of `kernels/norm.cu`, written by `build.rs`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"));
/// The name the PTX is loaded under (once per device).
const MODULE: &str = "kseg_norm";

/// Whether [`forward_act`] takes this input on CUDA: never yet.
/// With a kernel, this also asks the runtime's switch, [`crate::gpu_ops`]
/// (kseg's own CUDA ops stay off until a recorded GPU run verifies them).
pub(super) fn applies(
    _bn: &BatchNorm2d,
    _x: &Tensor,
    _residual: Option<&Tensor>,
    _slope: f64,
) -> bool {
    false
}

/// [`BatchNorm2d::forward_act`] as one [`BnAct`] on CUDA (where
/// [`applies`]).
pub(super) fn forward_act(
    _bn: &BatchNorm2d,
    _x: &Tensor,
    _residual: Option<&Tensor>,
    _slope: f64,
    _train: bool,
) -> Result<Tensor> {
    bail!("batch norm: no fused CUDA op yet (norm::cuda::applies is false)")
}

/// `BnAct`'s forward on CUDA.
pub(super) fn forward(
    _op: &BnAct,
    _s1: &CudaStorage,
    _l1: &Layout,
    _s2: &CudaStorage,
    _l2: &Layout,
    _r: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    bail!("batch norm: no fused CUDA kernel yet (norm::cuda::applies is false)")
}

/// `BnAct`'s gradients on CUDA.
pub(super) fn grads(
    _op: &BnAct,
    _x: &Tensor,
    _gb: &Tensor,
    _y: &Tensor,
    _dy: &Tensor,
    _with_r: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    bail!("batch norm: no fused CUDA backward yet (norm::cuda::applies is false)")
}

/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;

/// `x >= 0 ? x : slope·x` of the contiguous f32 values of `s` under `l`,
/// in a new buffer on the same device (untracked: a kernel for the fused
/// op's `cuda_fwd`, which receives a storage and a layout like this).
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
}
