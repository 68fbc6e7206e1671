// BnAct's CUDA kernels (src/norm/cuda.rs), compiled to PTX by build.rs
// with the `cuda` feature and loaded as the module "kseg_bn":
// BatchNorm2d + optional residual + LeakyReLU, forward and backward.
//
// Layout: x, y, dy, r are contiguous (B, C, H, W); a channel's n = B·hw
// values are indexed t = bi·hw + j, at (bi·C + ch)·hw + j. gb is
// [gamma; beta], 2·C floats.
//
// The reductions are deterministic (no atomics): block (k, ch) sums the
// channel's values t in [k·chunk, (k+1)·chunk): thread `tid` takes
// t = k·chunk + tid + s·BN_THREADS for s = 0, 1, … in f32, then a fixed
// shared-memory tree (strides 128, 64, …, 1) combines the threads; one
// thread per channel then adds the blocks' partials in order k = 0, 1, …
// in f64. src/norm/mirror.rs repeats exactly this order on the host.
// The element-wise arithmetic uses __f*_rn (no contraction into FMA) so
// that it rounds like the CPU op's.

#define BN_THREADS 256

// Per (chunk, channel) partial sums a, b (f32), written to
// part[(ch·nchunks + k)·2 + {0, 1}]. mode 0: a = x; mode 1: a = (x − m)²;
// mode 2: dz = y ≥ 0 ? dy : slope·dy, a = dz, b = dz·(x − m). (b = 0
// otherwise.) `mean` holds C floats (read in modes 1 and 2); y and dy are
// read in mode 2 only.
extern "C" __global__ void kseg_bn_partials_f32(
    const float *x, const float *y, const float *dy, const float *mean,
    const float slope, const int mode, const size_t hw, const size_t c,
    const size_t n, const size_t chunk, float *part) {
    __shared__ float sa[BN_THREADS];
    __shared__ float sb[BN_THREADS];
    const size_t k = blockIdx.x;
    const size_t ch = blockIdx.y;
    const size_t nchunks = gridDim.x;
    const unsigned tid = threadIdx.x;
    const float m = mode == 0 ? 0.0f : mean[ch];
    float a = 0.0f, b = 0.0f;
    const size_t end = (k + 1) * chunk < n ? (k + 1) * chunk : n;
    for (size_t t = k * chunk + tid; t < end; t += BN_THREADS) {
        const size_t bi = t / hw;
        const size_t i = (bi * c + ch) * hw + (t - bi * hw);
        const float xv = x[i];
        if (mode == 0) {
            a = __fadd_rn(a, xv);
        } else if (mode == 1) {
            const float d = __fsub_rn(xv, m);
            a = __fadd_rn(a, __fmul_rn(d, d));
        } else {
            const float g = dy[i];
            const float dz = y[i] >= 0.0f ? g : __fmul_rn(slope, g);
            a = __fadd_rn(a, dz);
            b = __fadd_rn(b, __fmul_rn(dz, __fsub_rn(xv, m)));
        }
    }
    sa[tid] = a;
    sb[tid] = b;
    __syncthreads();
    for (unsigned s = BN_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            sa[tid] = __fadd_rn(sa[tid], sa[tid + s]);
            sb[tid] = __fadd_rn(sb[tid], sb[tid + s]);
        }
        __syncthreads();
    }
    if (tid == 0) {
        part[(ch * nchunks + k) * 2] = sa[0];
        part[(ch * nchunks + k) * 2 + 1] = sb[0];
    }
}

// One thread per channel: the partials added in chunk order in f64.
// mode 0: out[ch] = mean = Σa / n (the stats buffer's first C floats);
// mode 1: out[C + ch] = var = Σa / n, out[2C + ch] = 1/sqrt(var + eps);
// mode 2: out = d[gamma; beta]: out[ch] = Σb · invstd[ch], out[C + ch] = Σa.
extern "C" __global__ void kseg_bn_combine_f32(
    const float *part, const size_t nchunks, const size_t c, const double n,
    const double eps, const int mode, const float *invstd, float *out) {
    const size_t ch = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double sa = 0.0, sb = 0.0;
    for (size_t k = 0; k < nchunks; ++k) {
        sa += (double)part[(ch * nchunks + k) * 2];
        sb += (double)part[(ch * nchunks + k) * 2 + 1];
    }
    if (mode == 0) {
        out[ch] = (float)(sa / n);
    } else if (mode == 1) {
        const double var = sa / n;
        out[c + ch] = (float)var;
        out[2 * c + ch] = (float)(1.0 / sqrt(var + eps));
    } else {
        out[ch] = (float)(sb * (double)invstd[ch]);
        out[c + ch] = (float)sa;
    }
}

// y = leaky(x·scale + shift [+ r]), scale = γ·invstd, shift = β − μ·scale
// (r read only when has_r).
extern "C" __global__ void kseg_bn_fwd_f32(
    const float *x, const float *r, const int has_r, const float *gb,
    const float *mean, const float *invstd, float *y, const float slope,
    const size_t hw, const size_t c, const size_t total) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)blockDim.x * gridDim.x) {
        const size_t ch = (i / hw) % c;
        const float scale = __fmul_rn(gb[ch], invstd[ch]);
        const float shift = __fsub_rn(gb[c + ch], __fmul_rn(mean[ch], scale));
        float z = __fadd_rn(__fmul_rn(x[i], scale), shift);
        if (has_r) z = __fadd_rn(z, r[i]);
        y[i] = z >= 0.0f ? z : __fmul_rn(slope, z);
    }
}

// dx = k·dz + k0 + k1·x with k = γ·invstd and, in training (train ≠ 0),
// k1 = −k·invstd·mean(dz·x̂), k0 = −k·mean(dz) − k1·μ (both 0 otherwise),
// the means read from dgb (kseg_bn_combine_f32 mode 2) over n; dr = dz
// when has_r.
extern "C" __global__ void kseg_bn_bwd_f32(
    const float *x, const float *y, const float *dy, const float *gb,
    const float *mean, const float *invstd, const float *dgb, const int train,
    const float n, const float slope, const size_t hw, const size_t c,
    const size_t total, float *dx, float *dr, const int has_r) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)blockDim.x * gridDim.x) {
        const size_t ch = (i / hw) % c;
        const float is = invstd[ch];
        const float k = __fmul_rn(gb[ch], is);
        const float md = train ? __fdiv_rn(dgb[c + ch], n) : 0.0f;
        const float mdx = train ? __fdiv_rn(dgb[ch], n) : 0.0f;
        const float k1 = __fmul_rn(__fmul_rn(-k, is), mdx);
        const float k0 = __fsub_rn(__fmul_rn(-k, md), __fmul_rn(k1, mean[ch]));
        const float g = dy[i];
        const float dz = y[i] >= 0.0f ? g : __fmul_rn(slope, g);
        dx[i] = __fadd_rn(__fadd_rn(__fmul_rn(k, dz), k0), __fmul_rn(k1, x[i]));
        if (has_r) dr[i] = dz;
    }
}
