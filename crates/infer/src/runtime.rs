//! The process runtime: CPU threads, device choice, and running work on
//! rayon's pool. Nothing here knows about runs or models.

use candle_core::Device;

use crate::error::{InferError, Result};

/// Fixes the CPU thread count for candle once, at program start.
///
/// candle 0.11.1 asks for its thread count on every matrix product and,
/// unless `RAYON_NUM_THREADS` is set, answers by parsing `/proc/cpuinfo`
/// (`num_cpus::get_physical`): about 5% of a CPU training step. This sets
/// `RAYON_NUM_THREADS` to the available parallelism when it is unset.
///
/// It also sets `CANDLE_NUM_THREADS=1` when unset: candle's element-wise
/// ops then run on the calling thread instead of candle's own worker pool,
/// whose workers spin between ops and took CPU from the rayon threads that
/// run the convolutions, BatchNorms and optimiser (on a 2-core machine
/// 13% of a training step's samples were such spinning; the 128² step got
/// about 10% faster, docs/PERFORMANCE.md). Set either variable to override.
///
/// # Safety
/// Call it first thing in `main`, before any thread is started (it changes
/// the environment).
pub unsafe fn init_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: as above.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Runs `f` on one of rayon's worker threads when `device` is the CPU (else
/// on the calling thread), and returns its result.
///
/// A CPU training step is hundreds of parallel regions (each convolution,
/// BatchNorm, the optimiser). Called from a thread outside rayon's pool,
/// each region is queued to the pool and the caller sleeps until it is done
/// (a futex wake-up per region); called from a worker, the worker takes
/// part in the region itself. On a 2-core machine the 128² step of
/// `examples/train_step.rs` got 5-10% faster (docs/PERFORMANCE.md).
/// `f` must not wait on anything that needs a free worker (such as a
/// channel fed by other rayon work): with one thread that would deadlock.
pub fn on_cpu_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// Picks a device by name: `cpu`, `cuda`, `cuda:N`, `metal`, or `auto`
/// (CUDA, then Metal, when compiled in and present; else the CPU).
pub fn device(name: &str) -> Result<Device> {
    let bad = |e: candle_core::Error| {
        InferError::Device(format!(
            "device {name:?}: {e} (build with --features cuda or metal for a GPU)"
        ))
    };
    match name {
        "" | "auto" => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).map_err(bad)
            } else if candle_core::utils::metal_is_available() {
                Device::new_metal(0).map_err(bad)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(bad),
        "metal" => Device::new_metal(0).map_err(bad),
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::new_cuda(i).map_err(bad),
            _ => Err(InferError::Device(format!(
                "device {name:?}: expected cpu, cuda, cuda:N, metal or auto"
            ))),
        },
    }
}

/// The device kind's name as runs report it: `cpu`, `cuda` or `metal`.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// Which ops a CUDA device runs where kseg has its own (convolution,
/// BatchNorm, the loss, AdamW): candle's (the default until a recorded
/// GPU run verifies kseg's) or kseg's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuOps {
    /// candle's own CUDA ops.
    #[default]
    Candle,
    /// kseg's CUDA ops (opt-in; docs/CUDA.md).
    Kseg,
}

impl GpuOps {
    /// Whether it is the default (`candle`).
    pub fn is_candle(&self) -> bool {
        *self == GpuOps::Candle
    }
}

/// Chooses the process's GPU ops (the one switch; `KSEG_GPU_OPS=kseg` in
/// the environment also turns kseg's on, for programs without a
/// configuration). The state lives in `kseg_model` (`kseg_model::set_gpu_ops`),
/// the lowest crate with device ops; `kseg_loss::set_gpu_ops` is set beside
/// it by the trainer, which depends on both.
pub fn set_gpu_ops(ops: GpuOps) {
    kseg_model::set_gpu_ops(ops == GpuOps::Kseg);
}

/// The process's GPU ops ([`set_gpu_ops`], or `KSEG_GPU_OPS`).
pub fn gpu_ops() -> GpuOps {
    if kseg_model::gpu_ops() {
        GpuOps::Kseg
    } else {
        GpuOps::Candle
    }
}

/// What the runtime set-up of a CUDA device does (GPU-DESIGN.md §3.1):
/// the memory pool keeps what it has (no release at every
/// synchronisation), no per-allocation events (kseg uses one stream), and
/// one precision switch: `tf32` allows TF32 in cuBLAS (and, through
/// `kseg_model`, the cuDNN math type of kseg's convolutions); off, f32
/// products use FMA math like PyTorch's f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaSetup {
    /// Allow TF32 tensor-core math in f32 products and convolutions.
    pub tf32: bool,
}

/// Sets a CUDA device up for training or inference ([`CudaSetup`]); other
/// devices are left alone. Call it once, right after making the device,
/// before any tensor lives on it.
pub fn setup_device(device: &Device, setup: CudaSetup) -> Result<()> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda_setup(dev, setup),
        _ => {
            let _ = setup;
            Ok(())
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_setup(dev: &candle_core::CudaDevice, setup: CudaSetup) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        InferError::Device(format!("cuda set-up: {what}: {e}"))
    };
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    // The default pool keeps freed memory for the next step (PyTorch's
    // caching allocator, in driver form).
    // SAFETY: the device ordinal comes from the live context; the pool
    // handle it returns belongs to that device.
    unsafe {
        let pool = result::device::get_default_mem_pool(ctx.cu_device())
            .map_err(|e| fail("memory pool", &e))?;
        let mut threshold = u64::MAX;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .map_err(|e| fail("pool release threshold", &e))?;
        // One stream: allocations need no events to order them.
        dev.disable_event_tracking();
    }
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(setup.tf32);
    kseg_model::set_tf32(setup.tf32);
    Ok(())
}
