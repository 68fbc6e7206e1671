//! With the `cuda` feature, compiles `kernels/*.cu` to PTX in `OUT_DIR`
//! (`kernels/norm.cu` → `$OUT_DIR/norm.ptx`), which `src/*/cuda.rs`
//! includes with `include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"))` and
//! loads with `CudaDevice::get_or_load_custom_func`. Without the feature
//! it does nothing and needs nothing.
//!
//! The compiler is cudaforge's, as candle-kernels uses it: nvcc from
//! `$NVCC`, else `PATH`, else `$CUDA_HOME/bin`, for the architecture in
//! `$CUDA_COMPUTE_CAP` (else what `nvidia-smi` reports; 90 gives PTX for
//! `compute_90a`, like candle's own kernels). `source scripts/cuda-env.sh`
//! sets all of it up on any Linux machine.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // Cargo builds this script with the package's features (and also sets
    // CARGO_FEATURE_CUDA): without `cuda` there is nothing to compile.
    #[cfg(feature = "cuda")]
    if let Err(e) = ptx() {
        panic!("{e}");
    }
}

/// `kernels/*.cu` → `$OUT_DIR/*.ptx`.
#[cfg(feature = "cuda")]
fn ptx() -> Result<(), String> {
    println!("cargo::rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "PATH"] {
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
                "kseg-model (feature cuda): compiling kernels/*.cu to PTX failed: {e}\n\
                 It needs nvcc (on PATH, or $NVCC, or $CUDA_HOME/bin) and the target \
                 architecture in $CUDA_COMPUTE_CAP (e.g. 90 for H100/H200, 80 for \
                 A100) when nvidia-smi cannot tell it. Without a CUDA install, \
                 `source scripts/cuda-env.sh` sets both up from PyPI (docs/CUDA.md)."
            )
        })
}
