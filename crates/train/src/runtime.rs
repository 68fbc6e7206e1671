//! The process runtime: CPU threads, device choice, and running work on
//! rayon's pool. Nothing here knows about runs or models.

use candle_core::Device;

use crate::error::{Result, TrainError};

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
    let bad = |e: candle_core::Error| TrainError::Config {
        path: None,
        msg: format!("device {name:?}: {e} (build with --features cuda or metal for a GPU)"),
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
            _ => Err(TrainError::Config {
                path: None,
                msg: format!("device {name:?}: expected cpu, cuda, cuda:N, metal or auto"),
            }),
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
