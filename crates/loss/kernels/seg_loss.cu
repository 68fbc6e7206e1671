// SegLoss's CUDA kernels (src/seg_loss/cuda.rs), compiled to PTX by
// build.rs with the `cuda` feature and loaded as the module
// "kseg_seg_loss": class-weighted cross-entropy + λ · Lovász-Softmax on
// (B, C, H, W) f32 logits, in f64, with no host round trip of the data
// (../shared/GPU-DESIGN.md §3.4).
//
// The arithmetic is the host's, step by step as src/seg_loss/mirror.rs
// writes it (its tests check it against lovasz_softmax_host):
//
// 1. kseg_sl_pixels: per pixel q = b·HW + s, the softmax (f64), the
//    cross-entropy's weighted sums (block partials), the pixel's CE
//    weight, the per-segment counts, and one sort entry per (class,
//    pixel): entry e = k·N + q, key !bits(|[y = k] − p_k|) (ignored:
//    all ones), value e.
// 2. An LSD radix sort, 8-bit digits (kseg_sl_hist, kseg_sl_scan,
//    kseg_sl_scatter per pass): the key's 8 bytes, then the segment's
//    (class, or image·C + class with per_image). Each pass is stable, so
//    each segment ends up ordered by (key, entry): the host's order, ties
//    by pixel index.
// 3. kseg_sl_segments: per segment its scale 1/(K · groups) and the
//    flag counts of the segments before it; kseg_sl_flag_tiles and
//    kseg_sl_scan: the tiles' flag sums, scanned; kseg_sl_jaccard: per
//    sorted position the inclusive scans of the fg and valid flags, the
//    Jaccard difference g = J_i − J_{i−1}, the loss partial per tile and
//    the gradient with respect to the probabilities.
// 4. kseg_sl_finish: the partials added in order; ce, lovasz, total.
// 5. kseg_sl_backward: the gradient with respect to the logits (the
//    softmax's Jacobian applied per pixel), times the upstream scalar.
//
// Every reduction has a fixed order (no floating-point atomics); the
// integer counts use atomics, which are exact. Sizes: entries C·N < 2^32
// (checked by the caller).

#define SL_THREADS 256
#define SL_WARPS (SL_THREADS / 32)
// Entries per tile of the radix passes, the flag scans and the loss
// partials (mirror.rs: TILE).
#define SL_TILE 4096
#define SL_BINS 256

typedef unsigned long long u64;

// The segment of entry v (entry = k·n + q): its class, or with per_image
// image·C + class.
__device__ __forceinline__ unsigned sl_segment(unsigned v, size_t hw, size_t c, size_t n,
                                               int per_image) {
    const size_t k = v / n;
    const size_t q = v - k * n;
    return per_image ? (unsigned)((q / hw) * c + k) : (unsigned)k;
}

// A fixed shared-memory tree over SL_THREADS doubles (strides 128, 64, …,
// 1); returns the sum in thread 0 (others: unspecified).
__device__ double sl_block_sum(double v, double *sh) {
    const unsigned tid = threadIdx.x;
    sh[tid] = v;
    __syncthreads();
    for (unsigned s = SL_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) sh[tid] = sh[tid] + sh[tid + s];
        __syncthreads();
    }
    const double r = sh[0];
    __syncthreads();
    return r;
}

// 1. The pixel pass. Block j takes pixels [j·SL_TILE, (j+1)·SL_TILE),
// thread t the pixels j·SL_TILE + t + i·SL_THREADS in turn.
// weights: C doubles (read when has_w). status[0]: the smallest flat
// logit index that is not finite, status[1]: the smallest pixel whose
// label is neither a class nor the ignore label (both start at
// 0xffffffff). counts: seg_g[nseg] (foreground pixels of each segment)
// then grp_v[groups] (valid pixels of each group), zeroed by the caller.
// part: (num, den) per block. The dynamic shared memory holds
// nseg + groups unsigned counters.
extern "C" __global__ void kseg_sl_pixels(
    const float *logits, const unsigned *labels, const double *weights, const int has_w,
    const size_t hw, const size_t c, const size_t n, const unsigned ignore,
    const int has_ignore, const int per_image, const unsigned nseg, const unsigned groups,
    double *probs, double *pix_w, u64 *keys, unsigned *vals, double *part,
    unsigned *counts, unsigned *status) {
    extern __shared__ unsigned sl_counts[];
    __shared__ double sh[SL_THREADS];
    const unsigned tid = threadIdx.x;
    for (unsigned i = tid; i < nseg + groups; i += SL_THREADS) sl_counts[i] = 0;
    __syncthreads();
    double num = 0.0, den = 0.0;
    const size_t q0 = (size_t)blockIdx.x * SL_TILE;
    const size_t end = q0 + SL_TILE < n ? q0 + SL_TILE : n;
    for (size_t q = q0 + tid; q < end; q += SL_THREADS) {
        const size_t bi = q / hw;
        const size_t s = q - bi * hw;
        const unsigned l = labels[q];
        const bool ignored = has_ignore && l == ignore;
        const bool bad = !ignored && (size_t)l >= c;
        if (bad) atomicMin(&status[1], (unsigned)q);
        // The softmax as the host's: max, exp(x − m) summed in class
        // order, each divided by the sum.
        double m = -INFINITY;
        bool finite = true;
        for (size_t k = 0; k < c; ++k) {
            const double x = (double)logits[(bi * c + k) * hw + s];
            if (!isfinite(x)) {
                finite = false;
                atomicMin(&status[0], (unsigned)((bi * c + k) * hw + s));
            }
            m = fmax(m, x);
        }
        double sum = 0.0, x_l = 0.0;
        for (size_t k = 0; k < c; ++k) {
            const size_t i = (bi * c + k) * hw + s;
            const double x = (double)logits[i];
            if (k == l) x_l = x;
            const double e = exp(x - m);
            probs[i] = e;
            sum += e;
        }
        for (size_t k = 0; k < c; ++k) {
            const size_t i = (bi * c + k) * hw + s;
            const double p = probs[i] / sum;
            probs[i] = p;
            const size_t e = k * n + q;
            vals[e] = (unsigned)e;
            if (ignored) {
                keys[e] = ~0ull;
            } else {
                const double target = k == l ? 1.0 : 0.0;
                keys[e] = ~(u64)__double_as_longlong(fabs(target - p));
            }
        }
        double w = 0.0;
        if (!ignored && !bad && finite) {
            w = has_w ? weights[l] : 1.0;
            num += w * (x_l - m - log(sum));
            den += w;
            const unsigned g = per_image ? (unsigned)bi : 0u;
            atomicAdd(&sl_counts[per_image ? g * c + l : l], 1u);
            atomicAdd(&sl_counts[nseg + g], 1u);
        }
        pix_w[q] = w;
    }
    __syncthreads();
    for (unsigned i = tid; i < nseg + groups; i += SL_THREADS) {
        if (sl_counts[i]) atomicAdd(&counts[i], sl_counts[i]);
    }
    num = sl_block_sum(num, sh);
    den = sl_block_sum(den, sh);
    if (tid == 0) {
        part[2 * blockIdx.x] = num;
        part[2 * blockIdx.x + 1] = den;
    }
}

// The radix digit of entry (key, val): mode 0 the key's byte at `shift`,
// mode 1 the segment's.
__device__ __forceinline__ unsigned sl_digit(u64 key, unsigned val, int mode, unsigned shift,
                                             size_t hw, size_t c, size_t n, int per_image) {
    if (mode == 0) return (unsigned)((key >> shift) & 0xff);
    return (sl_segment(val, hw, c, n, per_image) >> shift) & 0xff;
}

// 2a. One tile's digit histogram, stored digit-major: hist[d·tiles + t].
extern "C" __global__ void kseg_sl_hist(const u64 *keys, const unsigned *vals, const size_t len,
                                        const int mode, const unsigned shift, const size_t hw,
                                        const size_t c, const size_t n, const int per_image,
                                        unsigned *hist) {
    __shared__ unsigned h[SL_BINS];
    const unsigned tid = threadIdx.x;
    const size_t t = blockIdx.x, tiles = gridDim.x;
    h[tid] = 0;
    __syncthreads();
    const size_t end = (t + 1) * SL_TILE < len ? (t + 1) * SL_TILE : len;
    for (size_t i = t * SL_TILE + tid; i < end; i += SL_THREADS) {
        atomicAdd(&h[sl_digit(keys[i], vals[i], mode, shift, hw, c, n, per_image)], 1u);
    }
    __syncthreads();
    hist[(size_t)tid * tiles + t] = h[tid];
}

// An exclusive scan of `len` unsigned values in place, by one block of
// SL_THREADS threads: thread t scans its contiguous run of
// ceil(len / SL_THREADS) values after the runs before it.
extern "C" __global__ void kseg_sl_scan(unsigned *data, const size_t len) {
    __shared__ unsigned run[SL_THREADS];
    const unsigned tid = threadIdx.x;
    const size_t per = (len + SL_THREADS - 1) / SL_THREADS;
    const size_t a = tid * per < len ? tid * per : len;
    const size_t b = a + per < len ? a + per : len;
    unsigned s = 0;
    for (size_t i = a; i < b; ++i) s += data[i];
    run[tid] = s;
    __syncthreads();
    if (tid == 0) {
        unsigned acc = 0;
        for (unsigned i = 0; i < SL_THREADS; ++i) {
            const unsigned v = run[i];
            run[i] = acc;
            acc += v;
        }
    }
    __syncthreads();
    unsigned acc = run[tid];
    for (size_t i = a; i < b; ++i) {
        const unsigned v = data[i];
        data[i] = acc;
        acc += v;
    }
}

// 2b. One tile's stable scatter. The tile is taken in chunks of
// SL_THREADS entries in order; within a chunk an entry's rank among the
// earlier entries of its digit is its rank among its warp's peers
// (__match_any_sync) after the earlier warps' counts of that digit.
// hist: the scanned histogram (the first destination of each digit in
// this tile).
extern "C" __global__ void kseg_sl_scatter(const u64 *keys, const unsigned *vals, u64 *keys_out,
                                           unsigned *vals_out, const size_t len, const int mode,
                                           const unsigned shift, const size_t hw, const size_t c,
                                           const size_t n, const int per_image,
                                           const unsigned *hist) {
    __shared__ unsigned base[SL_BINS];
    __shared__ unsigned wc[SL_WARPS][SL_BINS];
    __shared__ unsigned tot[SL_BINS];
    const unsigned tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t t = blockIdx.x, tiles = gridDim.x;
    base[tid] = hist[(size_t)tid * tiles + t];
    const size_t end = (t + 1) * SL_TILE < len ? (t + 1) * SL_TILE : len;
    for (size_t start = t * SL_TILE; start < end; start += SL_THREADS) {
        for (unsigned w = 0; w < SL_WARPS; ++w) wc[w][tid] = 0;
        __syncthreads();
        const size_t i = start + tid;
        const bool valid = i < end;
        u64 key = 0;
        unsigned val = 0, d = SL_BINS;  // SL_BINS: no entry (never a digit)
        if (valid) {
            key = keys[i];
            val = vals[i];
            d = sl_digit(key, val, mode, shift, hw, c, n, per_image);
        }
        const unsigned peers = __match_any_sync(0xffffffffu, d);
        const unsigned rank = __popc(peers & ((1u << lane) - 1u));
        if (valid && rank == 0) wc[warp][d] = __popc(peers);
        __syncthreads();
        // Thread tid as digit tid: the earlier warps' counts, and the
        // chunk's total.
        unsigned acc = 0;
        for (unsigned w = 0; w < SL_WARPS; ++w) {
            const unsigned v = wc[w][tid];
            wc[w][tid] = acc;
            acc += v;
        }
        tot[tid] = acc;
        __syncthreads();
        if (valid) {
            const unsigned dst = base[d] + wc[warp][d] + rank;
            keys_out[dst] = key;
            vals_out[dst] = val;
        }
        __syncthreads();
        base[tid] += tot[tid];
        __syncthreads();
    }
}

// 3a. One thread: per segment its scale (mirror.rs: 1/(K · groups) for
// the classes a group uses, 0 otherwise) and the foreground and valid
// entries of the segments before it (fgb[s], vb[s]), which turn the
// whole-array scans into per-segment ones. counts as kseg_sl_pixels
// left them.
extern "C" __global__ void kseg_sl_segments(const unsigned *counts, const unsigned nseg,
                                            const unsigned groups, const size_t c,
                                            const int per_image, const int all_classes,
                                            double *scale, unsigned *fgb, unsigned *vb) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const unsigned *seg_g = counts;
    const unsigned *grp_v = counts + nseg;
    unsigned f = 0, v = 0;
    for (unsigned s = 0; s < nseg; ++s) {
        const unsigned g = per_image ? s / (unsigned)c : 0u;
        fgb[s] = f;
        vb[s] = v;
        f += seg_g[s];
        v += grp_v[g];
        scale[s] = 0.0;
    }
    for (unsigned g = 0; g < groups; ++g) {
        if (grp_v[g] == 0) continue;
        const unsigned s0 = per_image ? g * (unsigned)c : 0u;
        unsigned used = 0;
        for (size_t k = 0; k < c; ++k) used += (all_classes || seg_g[s0 + k] > 0) ? 1u : 0u;
        for (size_t k = 0; k < c; ++k) {
            if (all_classes || seg_g[s0 + k] > 0) {
                scale[s0 + k] = 1.0 / ((double)used * (double)groups);
            }
        }
    }
}

// The flags of a sorted entry: valid (not ignored) and foreground (valid
// with label = the entry's class).
__device__ __forceinline__ void sl_flags(unsigned v, const unsigned *labels, size_t n,
                                         unsigned ignore, int has_ignore, unsigned *fg,
                                         unsigned *valid) {
    const size_t k = v / n;
    const unsigned l = labels[v - k * n];
    const bool ok = !(has_ignore && l == ignore);
    *valid = ok ? 1u : 0u;
    *fg = (ok && (size_t)l == k) ? 1u : 0u;
}

// 3b. Per tile, its sums of the fg and valid flags: sums[t], sums[tiles + t].
extern "C" __global__ void kseg_sl_flag_tiles(const unsigned *vals, const unsigned *labels,
                                              const size_t len, const size_t n,
                                              const unsigned ignore, const int has_ignore,
                                              unsigned *sums) {
    __shared__ unsigned sf[SL_THREADS];
    __shared__ unsigned sv[SL_THREADS];
    const unsigned tid = threadIdx.x;
    const size_t t = blockIdx.x, tiles = gridDim.x;
    const size_t end = (t + 1) * SL_TILE < len ? (t + 1) * SL_TILE : len;
    unsigned f = 0, v = 0;
    for (size_t i = t * SL_TILE + tid; i < end; i += SL_THREADS) {
        unsigned a, b;
        sl_flags(vals[i], labels, n, ignore, has_ignore, &a, &b);
        f += a;
        v += b;
    }
    sf[tid] = f;
    sv[tid] = v;
    __syncthreads();
    for (unsigned s = SL_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            sf[tid] += sf[tid + s];
            sv[tid] += sv[tid + s];
        }
        __syncthreads();
    }
    if (tid == 0) {
        sums[t] = sf[0];
        sums[tiles + t] = sv[0];
    }
}

// J after cum_fg foreground and cum_bg background entries of a segment
// with gts foreground entries: 1 − I/U, 0 where U = 0 (mirror.rs: jaccard).
__device__ __forceinline__ double sl_jaccard(unsigned gts, unsigned cum_fg, unsigned cum_bg) {
    const unsigned uni = gts + cum_bg;
    if (uni == 0) return 0.0;
    return 1.0 - (double)(gts - cum_fg) / (double)uni;
}

// 3c. Per sorted position i (tile t = one block, in chunks of SL_THREADS
// with a block scan of the flags): g = J_i − J_{i−1} within the segment,
// the loss partial Σ e·g·scale per tile (partials[t]) and grad[p] =
// g · sign(p − target) · scale (0 where the error is 0, and for ignored
// entries or unused classes) at the entry's place p in (B, C, H, W).
// offs: the exclusive scans of the tiles' flag sums (fg: offs[t], valid:
// offs[tiles + t]). Every entry is written once, so grad needs no
// zeroing.
extern "C" __global__ void kseg_sl_jaccard(
    const u64 *keys, const unsigned *vals, const unsigned *labels, const double *probs,
    const size_t len, const size_t hw, const size_t c, const size_t n, const unsigned ignore,
    const int has_ignore, const int per_image, const unsigned *counts, const unsigned nseg,
    const double *scale, const unsigned *fgb, const unsigned *vb, const unsigned *offs,
    double *grad, double *partials) {
    __shared__ unsigned sf[SL_THREADS];
    __shared__ unsigned sv[SL_THREADS];
    __shared__ unsigned carry[2];
    __shared__ double sh[SL_THREADS];
    const unsigned tid = threadIdx.x;
    const size_t t = blockIdx.x, tiles = gridDim.x;
    if (tid == 0) {
        carry[0] = offs[t];
        carry[1] = offs[tiles + t];
    }
    const size_t end = (t + 1) * SL_TILE < len ? (t + 1) * SL_TILE : len;
    const unsigned *seg_g = counts;
    double acc = 0.0;
    for (size_t start = t * SL_TILE; start < end; start += SL_THREADS) {
        const size_t i = start + tid;
        const bool in = i < end;
        unsigned v = 0, f = 0, ok = 0;
        if (in) {
            v = vals[i];
            sl_flags(v, labels, n, ignore, has_ignore, &f, &ok);
        }
        sf[tid] = f;
        sv[tid] = ok;
        __syncthreads();
        // Hillis-Steele inclusive scan (exact: integers).
        for (unsigned s = 1; s < SL_THREADS; s <<= 1) {
            const unsigned af = tid >= s ? sf[tid - s] : 0u;
            const unsigned av = tid >= s ? sv[tid - s] : 0u;
            __syncthreads();
            sf[tid] += af;
            sv[tid] += av;
            __syncthreads();
        }
        const unsigned cum_f = carry[0] + sf[tid];
        const unsigned cum_v = carry[1] + sv[tid];
        __syncthreads();
        if (tid == SL_THREADS - 1) {
            carry[0] += sf[tid];
            carry[1] += sv[tid];
        }
        if (in) {
            const unsigned seg = sl_segment(v, hw, c, n, per_image);
            const size_t k = v / n;
            const size_t q = v - k * n;
            const size_t bi = q / hw;
            const size_t p = (bi * c + k) * hw + (q - bi * hw);
            const double sc = scale[seg];
            double gr = 0.0;
            if (ok && sc != 0.0) {
                // Within the segment: the counts up to and including i,
                // and up to i − 1.
                const unsigned f1 = cum_f - fgb[seg], v1 = cum_v - vb[seg];
                const unsigned f0 = f1 - f, v0 = v1 - ok;
                const unsigned gts = seg_g[seg];
                const double g = sl_jaccard(gts, f1, v1 - f1) - sl_jaccard(gts, f0, v0 - f0);
                const double e = __longlong_as_double((long long)~keys[i]);
                acc += e * g * sc;
                const double target = f ? 1.0 : 0.0;
                const double sign = e == 0.0 ? 0.0 : (probs[p] > target ? 1.0 : -1.0);
                gr = g * sign * sc;
            }
            grad[p] = gr;
        }
        __syncthreads();
    }
    acc = sl_block_sum(acc, sh);
    if (tid == 0) partials[t] = acc;
}

// 4. One thread: ce = −Σnum / Σden (0 without weight), lovasz = Σ
// partials, both sums in block order; scal = [ce, lovasz, den, total],
// out = the same three scalars as f32 [total, ce, lovasz].
extern "C" __global__ void kseg_sl_finish(const double *ce_part, const size_t ce_blocks,
                                          const double *lv_part, const size_t lv_tiles,
                                          const double lambda, double *scal, float *out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double num = 0.0, den = 0.0, lv = 0.0;
    for (size_t j = 0; j < ce_blocks; ++j) {
        num += ce_part[2 * j];
        den += ce_part[2 * j + 1];
    }
    for (size_t j = 0; j < lv_tiles; ++j) lv += lv_part[j];
    const double ce = den > 0.0 ? -num / den : 0.0;
    const double total = ce + lambda * lv;
    scal[0] = ce;
    scal[1] = lv;
    scal[2] = den;
    scal[3] = total;
    out[0] = (float)total;
    out[1] = (float)ce;
    out[2] = (float)lv;
}

// 5. The gradient of one part with respect to the logits, times the
// upstream f32 scalar *u: per pixel (one thread), for each class,
// ce: pix_w/den · (p − [k = y]); lovasz: p · (G_k − Σ_j p_j G_j);
// part 0 = ce + λ · lovasz, 1 = ce, 2 = lovasz.
extern "C" __global__ void kseg_sl_backward(const double *probs, const double *lgrad,
                                            const unsigned *labels, const double *pix_w,
                                            const double *scal, const float *u,
                                            const double lambda, const int part,
                                            const size_t hw, const size_t c, const size_t n,
                                            float *out) {
    const double uu = (double)*u;
    const double den = scal[2];
    for (size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x; q < n;
         q += (size_t)gridDim.x * blockDim.x) {
        const size_t bi = q / hw;
        const size_t s = q - bi * hw;
        double dot = 0.0;
        if (part != 1) {
            for (size_t k = 0; k < c; ++k) {
                const size_t i = (bi * c + k) * hw + s;
                dot += probs[i] * lgrad[i];
            }
        }
        const double cs = den > 0.0 ? pix_w[q] / den : 0.0;
        const unsigned l = labels[q];
        for (size_t k = 0; k < c; ++k) {
            const size_t i = (bi * c + k) * hw + s;
            const double p = probs[i];
            const double ce = cs * (p - ((size_t)l == k ? 1.0 : 0.0));
            const double lv = p * (lgrad[i] - dot);
            const double g = part == 1 ? ce : (part == 2 ? lv : ce + lambda * lv);
            out[i] = (float)(uu * g);
        }
    }
}
