//! Build-script support for kseg's CUDA crates (kseg-model, kseg-loss,
//! kseg-train): [`compile_kernels`] compiles the calling crate's
//! `kernels/*.cu` to PTX in `OUT_DIR` (`kernels/norm.cu` →
//! `$OUT_DIR/norm.ptx`), which its `src/**/cuda.rs` includes with
//! `include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"))` and loads with
//! `CudaDevice::get_or_load_custom_func`.
//!
//! The compiler is cudaforge's, as candle-kernels uses it: nvcc from
//! `$NVCC`, else `PATH`, else `$CUDA_HOME/bin`, for the architecture in
//! `$CUDA_COMPUTE_CAP` (else what `nvidia-smi` reports; 90 gives PTX for
//! `compute_90a`, like candle's own kernels). `source scripts/cuda-env.sh`
//! sets all of it up on any Linux machine, without a GPU.
//!
//! A crate's `build.rs`, with this crate as an optional build-dependency
//! enabled by its `cuda` feature:
//!
//! ```ignore
//! fn main() {
//!     println!("cargo::rerun-if-changed=build.rs");
//!     #[cfg(feature = "cuda")]
//!     if let Err(e) = kseg_ptx::compile_kernels("kseg-loss") {
//!         panic!("{e}");
//!     }
//! }
//! ```

/// Compiles `kernels/*.cu` of the crate being built (the build script's
/// working directory) to `$OUT_DIR/*.ptx` and tells Cargo when to do it
/// again. `package` names the crate in the error, which says what the
/// compile needs.
pub fn compile_kernels(package: &str) -> Result<(), String> {
    println!("cargo::rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP", "PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    cudaforge::KernelBuilder::new()
        .source_dir("kernels")
        .arg("-std=c++17")
        .arg("-O3")
        .build_ptx()
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{package} (feature cuda): compiling kernels/*.cu to PTX failed: {e}\n\
                 It needs nvcc (on PATH, or $NVCC, or $CUDA_HOME/bin) and the target \
                 architecture in $CUDA_COMPUTE_CAP (e.g. 90 for H100/H200, 80 for \
                 A100) when nvidia-smi cannot tell it. Without a CUDA install, \
                 `source scripts/cuda-env.sh` sets both up from PyPI (docs/CUDA.md)."
            )
        })
}
