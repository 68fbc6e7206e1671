// AdamW's update as three in-place element-wise kernels, the arithmetic of
// the CPU rule (crates/train/src/optim/op.rs mirrors it on the host, in the
// same order): m <- b1*m + (1-b1)*g; v <- b2*v + (1-b2)*g*g;
// p <- p*keep - lr*((m/bc1) / (sqrt(v/bc2) + eps)), keep = 1 - lr*wd.

extern "C" __global__ void kseg_adamw_first(float *m, const float *g, unsigned int n,
                                            float b1, float ib1) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        m[i] = b1 * m[i] + ib1 * g[i];
    }
}

extern "C" __global__ void kseg_adamw_second(float *v, const float *g, unsigned int n,
                                             float b2, float ib2) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float gi = g[i];
        v[i] = b2 * v[i] + ib2 * gi * gi;
    }
}

extern "C" __global__ void kseg_adamw_update(float *p, const float *m, const float *v,
                                             unsigned int n, float keep, float lr, float bc1,
                                             float bc2, float eps) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        p[i] = p[i] * keep - lr * ((m[i] / bc1) / (sqrtf(v[i] / bc2) + eps));
    }
}
