//! kseg: kidney and kidney-tumour segmentation on abdominal CT (KiTS19).
//!
//! This facade re-exports the workspace crates under short names:
//! - [`metrics`]: the KiTS19 Dice and the KiTS23 metrics behind one
//!   `Metric` trait, and the label sets (`LabelSet`).
//! - [`volume`]: NIfTI and DICOM I/O, orientation, KiTS19 cases, windowing,
//!   2.5D stacks, the slice cache, splits, sampling, the synthetic case
//!   generator, folder evaluation and atomic writes.
//! - [`augment`]: the contest's augmentation chain as one warp, seeded and
//!   parallel.
//! - [`model`]: the Res-U-Net, PyTorch-checkpoint compatible.
//! - [`loss`]: weighted cross-entropy, Lovász-Softmax and their combination.
//! - [`infer`]: the model file, whole-volume inference (`Segmenter`),
//!   clean-up and the device runtime.
//! - [`train`]: configuration, data loading, the training loop with
//!   checkpoints and exact resume, reporting.
pub mod cli;
mod presets;

pub use presets::{PRESETS, preset};

pub use kseg_augment as augment;
pub use kseg_infer as infer;
pub use kseg_loss as loss;
pub use kseg_metrics as metrics;
pub use kseg_model as model;
pub use kseg_train as train;
pub use kseg_volume as volume;

/// mimalloc's `mi_option_purge_delay` (its `mi_option_e`, 15 in mimalloc 2
/// and 3; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Process-wide CPU settings of the kseg binaries and examples, which use
/// mimalloc as their global allocator: [`infer::init_cpu_threads`], and
/// mimalloc keeps the pages it frees instead of returning them to the OS a
/// second after they fall idle (mimalloc 3's default; unless
/// `MIMALLOC_PURGE_DELAY` is set). candle allocates a fresh buffer for
/// every op, and returned pages come back zeroed by the kernel at the next
/// step (12-16% of a training step's profile was the kernel clearing
/// pages). Measured on a 2-core machine with both settings: the 1×3×512²
/// default-model step 4.0-4.2 → 3.3 s, peak memory 2.05 → 2.50 GB
/// (docs/PERFORMANCE.md).
///
/// # Safety
/// Call it first thing in `main`, before any thread is started.
pub unsafe fn init_cpu_runtime() {
    // SAFETY: the caller guarantees no other thread exists yet (the
    // environment and mimalloc's options are not thread-safe to change).
    unsafe {
        infer::init_cpu_threads();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}
