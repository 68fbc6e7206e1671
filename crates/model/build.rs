//! With the `cuda` feature, compiles `kernels/*.cu` to PTX in `OUT_DIR`
//! (kseg-ptx: nvcc through cudaforge; `source scripts/cuda-env.sh` sets it
//! up on any Linux machine). Without the feature it does nothing and needs
//! nothing.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // Cargo builds this script with the package's features: without
    // `cuda` there is nothing to compile.
    #[cfg(feature = "cuda")]
    if let Err(e) = kseg_ptx::compile_kernels("kseg-model") {
        panic!("{e}");
    }
}
