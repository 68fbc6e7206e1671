// The CUDA kernels of src/norm/cuda.rs, compiled to PTX by build.rs (with
// the `cuda` feature) and loaded as the module "kseg_norm".
//
// For now one kernel, which proves the path from this folder to a launch:
// LeakyReLU, the activation pass of the fused BnAct forward to come.

// y[i] = x[i] >= 0 ? x[i] : slope * x[i] for i < n (a grid-stride loop,
// so any grid covers any n).
extern "C" __global__ void kseg_leaky_relu_f32(
    const float *x, float *y, const float slope, const size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x) {
        const float v = x[i];
        y[i] = v >= 0.0f ? v : slope * v;
    }
}
