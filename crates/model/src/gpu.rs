//! The process-wide GPU switches of this crate's ops, set by the runtime
//! (`kseg_infer::runtime::set_gpu_ops`, `setup_device`): whether kseg's
//! own CUDA ops run where they exist (off by default until a recorded GPU
//! run verifies them; candle's ops run otherwise), and whether f32
//! convolutions may use TF32 tensor-core math.

use std::sync::atomic::{AtomicBool, Ordering};

static KSEG_OPS: AtomicBool = AtomicBool::new(false);
static TF32: AtomicBool = AtomicBool::new(false);

/// Turns kseg's CUDA ops on or off for this process.
pub fn set_gpu_ops(kseg: bool) {
    KSEG_OPS.store(kseg, Ordering::Relaxed);
}

/// Whether kseg's CUDA ops are on ([`set_gpu_ops`], or `KSEG_GPU_OPS=kseg`
/// in the environment).
pub fn gpu_ops() -> bool {
    KSEG_OPS.load(Ordering::Relaxed)
        || std::env::var_os("KSEG_GPU_OPS").is_some_and(|v| v == "kseg")
}

/// Allows (or forbids) TF32 math in kseg's f32 CUDA convolutions.
pub fn set_tf32(allow: bool) {
    TF32.store(allow, Ordering::Relaxed);
}

/// Whether TF32 math is allowed ([`set_tf32`]).
pub fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}
