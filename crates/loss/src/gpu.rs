//! The process-wide switch of this crate's CUDA ops, set by the runtime:
//! whether kseg's own device loss runs where it exists (off by default
//! until a recorded GPU run verifies it).

use std::sync::atomic::{AtomicBool, Ordering};

static KSEG_OPS: AtomicBool = AtomicBool::new(false);

/// Turns kseg's CUDA loss on or off for this process.
pub fn set_gpu_ops(kseg: bool) {
    KSEG_OPS.store(kseg, Ordering::Relaxed);
}

/// Whether kseg's CUDA ops are on ([`set_gpu_ops`], or `KSEG_GPU_OPS=kseg`
/// in the environment).
pub fn gpu_ops() -> bool {
    KSEG_OPS.load(Ordering::Relaxed)
        || std::env::var_os("KSEG_GPU_OPS").is_some_and(|v| v == "kseg")
}
