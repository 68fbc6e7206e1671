//! Host mirrors of the device Lovász term's arithmetic
//! (`../shared/GPU-DESIGN.md` §3.4), written step by step as the CUDA
//! kernels do it, so that the CPU test suite checks the algorithm against
//! [`lovasz_softmax_host`](crate::lovasz_softmax_host) and
//! [`lovasz_grad`](crate::lovasz_grad) without a GPU:
//!
//! 1. [`sort_keys`] (the pixel kernel's part): one entry per (class,
//!    pixel), `entry = class · N + pixel` (`N = B·H·W`), key
//!    `!f64_bits(|[y = c] − p_c|)` (descending error, exactly the host's),
//!    `u64::MAX` for an ignored pixel; the value is the entry's index.
//! 2. [`radix_sort`]: an LSD radix sort, 8-bit digits, each pass a
//!    per-tile histogram (digit-major), an exclusive scan of it and a
//!    stable scatter, over the key's 8 bytes and then the segment's
//!    (class, or image·C + class with `per_image`). Stable and started in
//!    entry order, it orders each segment by (key, pixel): the host's order.
//! 3. [`counts`] (the pixel kernel's), [`segment_table`]
//!    (`kseg_sl_segments`: each segment's scale and the flag counts of
//!    the segments before it), then [`lovasz_from_sorted`]: the tiles'
//!    flag sums scanned, per position the inclusive scans of the sorted fg
//!    and valid flags within its segment, `I = G − cum_fg`,
//!    `U = G + cum_bg`, `J = 1 − I/U` (0 where `U = 0`), `g_i = J_i −
//!    J_{i−1}` (both from the scans), the loss partials per tile and the
//!    gradient scatter.
//!
//! The kernels are `crates/loss/kernels/seg_loss.cu`; their constants are
//! checked against this file's below.
//!
//! Test-only: the device code follows it, and the tests below compare it
//! with the host loss.

use crate::lovasz::{Classes, LovaszConfig};

/// Entries per block (tile) in a radix pass and in the loss partials.
pub(super) const TILE: usize = 4096;
/// Bins of an 8-bit digit.
const BINS: usize = 256;

/// The pixel pass's sort keys and values: `(keys, vals)` of `C·N` entries,
/// entry `k·N + q` for class `k` and pixel `q = b·H·W + s`.
pub(super) fn sort_keys(
    probs: &[f64],
    labels: &[u32],
    dims: [usize; 4],
    ignore: Option<u32>,
) -> (Vec<u64>, Vec<u32>) {
    let [b, c, h, w] = dims;
    let hw = h * w;
    let n = b * hw;
    let mut keys = vec![0u64; c * n];
    let mut vals = vec![0u32; c * n];
    for k in 0..c {
        for q in 0..n {
            let i = k * n + q;
            vals[i] = i as u32;
            let l = labels[q];
            if Some(l) == ignore {
                keys[i] = u64::MAX;
                continue;
            }
            let p = probs[((q / hw) * c + k) * hw + q % hw];
            let target = if l as usize == k { 1.0 } else { 0.0 };
            keys[i] = !(target - p).abs().to_bits();
        }
    }
    (keys, vals)
}

/// The segment of entry `v`: its class, or with `per_image` image·C + class.
pub(super) fn segment(v: u32, dims: [usize; 4], per_image: bool) -> usize {
    let [b, c, h, w] = dims;
    let n = b * h * w;
    let (k, q) = (v as usize / n, v as usize % n);
    if per_image { (q / (h * w)) * c + k } else { k }
}

/// The number of segments.
pub(super) fn segments(dims: [usize; 4], per_image: bool) -> usize {
    if per_image {
        dims[0] * dims[1]
    } else {
        dims[1]
    }
}

/// Threads per block of the kernels (`SL_THREADS` in `seg_loss.cu`).
pub(super) const THREADS: usize = 256;
/// Lanes of a warp.
const WARP: usize = 32;

/// One LSD pass as the device does it: histogram per tile (stored
/// digit-major, `hist[d · tiles + t]`, `kseg_sl_hist`), an exclusive scan
/// over the whole histogram (`kseg_sl_scan`), and the stable scatter of
/// `kseg_sl_scatter`: each tile in chunks of [`THREADS`] entries, an
/// entry's destination the tile's running offset of its digit, plus the
/// earlier warps' counts of that digit in the chunk, plus its rank among
/// its warp's peers of that digit (`__match_any_sync`).
fn radix_pass(
    keys: &[u64],
    vals: &[u32],
    digit: impl Fn(u64, u32) -> usize,
    keys_out: &mut [u64],
    vals_out: &mut [u32],
) {
    let len = keys.len();
    let tiles = len.div_ceil(TILE);
    let mut hist = vec![0u32; BINS * tiles];
    for t in 0..tiles {
        for i in t * TILE..len.min((t + 1) * TILE) {
            hist[digit(keys[i], vals[i]) * tiles + t] += 1;
        }
    }
    exclusive_scan(&mut hist);
    for t in 0..tiles {
        let end = len.min((t + 1) * TILE);
        let mut base: Vec<u32> = (0..BINS).map(|d| hist[d * tiles + t]).collect();
        for start in (t * TILE..end).step_by(THREADS) {
            let chunk: Vec<usize> = (start..end.min(start + THREADS)).collect();
            let d: Vec<usize> = chunk.iter().map(|&i| digit(keys[i], vals[i])).collect();
            // Per warp and digit, the count (then the earlier warps' sum).
            let mut wc = vec![[0u32; BINS]; THREADS / WARP];
            let mut rank = vec![0u32; chunk.len()];
            for (j, &dj) in d.iter().enumerate() {
                let (warp, lane0) = (j / WARP, j / WARP * WARP);
                rank[j] = d[lane0..j].iter().filter(|&&x| x == dj).count() as u32;
                wc[warp][dj] += 1;
            }
            let mut tot = [0u32; BINS];
            for bin in 0..BINS {
                for w in wc.iter_mut() {
                    let v = w[bin];
                    w[bin] = tot[bin];
                    tot[bin] += v;
                }
            }
            for (j, &i) in chunk.iter().enumerate() {
                let dst = (base[d[j]] + wc[j / WARP][d[j]] + rank[j]) as usize;
                keys_out[dst] = keys[i];
                vals_out[dst] = vals[i];
            }
            for bin in 0..BINS {
                base[bin] += tot[bin];
            }
        }
    }
}

/// `kseg_sl_scan`: an exclusive scan in place.
fn exclusive_scan(data: &mut [u32]) {
    let mut acc = 0u32;
    for x in data.iter_mut() {
        let v = *x;
        *x = acc;
        acc += v;
    }
}

/// Bytes of the segment digit: enough for `segments - 1`.
pub(super) fn segment_bytes(segments: usize) -> u32 {
    let bits = usize::BITS - (segments.max(1) - 1).leading_zeros();
    bits.div_ceil(8)
}

/// Sorts `(keys, vals)` by (segment, key), stably: 8 passes over the key's
/// bytes (lowest first), then [`segment_bytes`] passes over the segment's.
pub(super) fn radix_sort(
    mut keys: Vec<u64>,
    mut vals: Vec<u32>,
    dims: [usize; 4],
    per_image: bool,
) -> (Vec<u64>, Vec<u32>) {
    let mut k2 = vec![0u64; keys.len()];
    let mut v2 = vec![0u32; vals.len()];
    for byte in 0..8 {
        radix_pass(
            &keys,
            &vals,
            |k, _| ((k >> (8 * byte)) & 0xff) as usize,
            &mut k2,
            &mut v2,
        );
        std::mem::swap(&mut keys, &mut k2);
        std::mem::swap(&mut vals, &mut v2);
    }
    for byte in 0..segment_bytes(segments(dims, per_image)) {
        radix_pass(
            &keys,
            &vals,
            |_, v| (segment(v, dims, per_image) >> (8 * byte)) & 0xff,
            &mut k2,
            &mut v2,
        );
        std::mem::swap(&mut keys, &mut k2);
        std::mem::swap(&mut vals, &mut v2);
    }
    (keys, vals)
}

/// `J` after `cum_fg` foreground and `cum_bg` background pixels of a class
/// with `gts` foreground pixels: `1 − I/U`, 0 before any pixel (`U = 0`).
pub(super) fn jaccard(gts: u32, cum_fg: u32, cum_bg: u32) -> f64 {
    let union = gts + cum_bg;
    if union == 0 {
        return 0.0;
    }
    1.0 - f64::from(gts - cum_fg) / f64::from(union)
}

/// [`lovasz_grad`](crate::lovasz_grad) from an inclusive scan: `g_i = J_i −
/// J_{i−1}`, each from the scan alone (no dependency between positions).
/// `valid`: pixels not ignored (an ignored one counts in neither).
pub(super) fn scan_grad(fg: &[bool], valid: &[bool]) -> Vec<f64> {
    let scan = |f: &dyn Fn(usize) -> bool| {
        let mut acc = 0u32;
        (0..fg.len())
            .map(|i| {
                acc += u32::from(f(i));
                acc
            })
            .collect::<Vec<u32>>()
    };
    let cum_fg = scan(&|i| fg[i] && valid[i]);
    let cum_v = scan(&|i| valid[i]);
    let gts = cum_fg.last().copied().unwrap_or(0);
    (0..fg.len())
        .map(|i| {
            let j = jaccard(gts, cum_fg[i], cum_v[i] - cum_fg[i]);
            let prev = if i == 0 {
                0.0
            } else {
                jaccard(gts, cum_fg[i - 1], cum_v[i - 1] - cum_fg[i - 1])
            };
            j - prev
        })
        .collect()
}

/// The pixel pass's counts (`kseg_sl_pixels`): per segment its
/// foreground pixels (`seg_g`, `nseg` values), then per group its valid
/// pixels (`grp_v`).
pub(super) fn counts(labels: &[u32], dims: [usize; 4], cfg: &LovaszConfig) -> Vec<u32> {
    let [_, c, h, w] = dims;
    let nseg = segments(dims, cfg.per_image);
    let mut out = vec![0u32; nseg + groups(dims, cfg.per_image)];
    for (q, &l) in labels.iter().enumerate() {
        if Some(l) == cfg.ignore {
            continue;
        }
        let g = if cfg.per_image { q / (h * w) } else { 0 };
        out[if cfg.per_image { g * c } else { 0 } + l as usize] += 1;
        out[nseg + g] += 1;
    }
    out
}

/// The number of groups whose pixels are pooled: the images with
/// `per_image`, else one.
pub(super) fn groups(dims: [usize; 4], per_image: bool) -> usize {
    if per_image { dims[0] } else { 1 }
}

/// `kseg_sl_segments`: per segment its scale (`1/(K · groups)` for the
/// classes its group uses, 0 otherwise), and the foreground and valid
/// entries of the segments before it.
pub(super) fn segment_table(
    counts: &[u32],
    dims: [usize; 4],
    cfg: &LovaszConfig,
) -> (Vec<f64>, Vec<u32>, Vec<u32>) {
    let c = dims[1];
    let nseg = segments(dims, cfg.per_image);
    let ngroups = groups(dims, cfg.per_image);
    let (seg_g, grp_v) = counts.split_at(nseg);
    let group = |s: usize| if cfg.per_image { s / c } else { 0 };
    let (mut fgb, mut vb) = (vec![0u32; nseg], vec![0u32; nseg]);
    let (mut f, mut v) = (0u32, 0u32);
    for s in 0..nseg {
        fgb[s] = f;
        vb[s] = v;
        f += seg_g[s];
        v += grp_v[group(s)];
    }
    let all = cfg.classes == Classes::All;
    let mut scale = vec![0f64; nseg];
    for (g, &valid) in grp_v.iter().enumerate() {
        if valid == 0 {
            continue;
        }
        let s0 = if cfg.per_image { g * c } else { 0 };
        let used = (0..c).filter(|&k| all || seg_g[s0 + k] > 0).count();
        for k in (0..c).filter(|&k| all || seg_g[s0 + k] > 0) {
            scale[s0 + k] = 1.0 / (used as f64 * ngroups as f64);
        }
    }
    (scale, fgb, vb)
}

/// The Jaccard pass over the sorted entries as `kseg_sl_flag_tiles`,
/// `kseg_sl_scan`, `kseg_sl_jaccard` and `kseg_sl_finish` do it: the
/// tiles' flag sums scanned, then per tile in chunks of [`THREADS`] an
/// inclusive scan of the fg and valid flags after the tile's offset, each
/// position's `g = J_i − J_{i−1}` within its segment (the counts before
/// the segment subtracted), the tile's loss partial and the gradient
/// scatter; the partials added in tile order. Returns the loss and
/// `dL/dprobs`, `(B, C, H, W)`, as
/// [`lovasz_softmax_host`](crate::lovasz_softmax_host) does.
pub(super) fn lovasz_from_sorted(
    keys: &[u64],
    vals: &[u32],
    probs: &[f64],
    labels: &[u32],
    dims: [usize; 4],
    cfg: &LovaszConfig,
) -> (f64, Vec<f64>) {
    let [b, c, h, w] = dims;
    let hw = h * w;
    let n = b * hw;
    let len = keys.len();
    let nseg = segments(dims, cfg.per_image);
    let counts = counts(labels, dims, cfg);
    let (scale, fgb, vb) = segment_table(&counts, dims, cfg);
    let flags = |v: u32| {
        let l = labels[v as usize % n];
        let ok = Some(l) != cfg.ignore;
        (u32::from(ok && l as usize == v as usize / n), u32::from(ok))
    };
    let tiles = len.div_ceil(TILE);
    // kseg_sl_flag_tiles, then the two halves scanned.
    let mut sums = vec![0u32; 2 * tiles];
    for (i, &v) in vals.iter().enumerate() {
        let (f, ok) = flags(v);
        sums[i / TILE] += f;
        sums[tiles + i / TILE] += ok;
    }
    let (fg_offs, v_offs) = sums.split_at_mut(tiles);
    exclusive_scan(fg_offs);
    exclusive_scan(v_offs);
    let mut grad = vec![0f64; probs.len()];
    let mut partials = vec![0f64; tiles];
    for t in 0..tiles {
        let (mut cf, mut cv) = (fg_offs[t], v_offs[t]);
        for i in t * TILE..len.min((t + 1) * TILE) {
            let v = vals[i];
            let (f, ok) = flags(v);
            cf += f;
            cv += ok;
            let s = segment(v, dims, cfg.per_image);
            let (k, q) = (v as usize / n, v as usize % n);
            let p = ((q / hw) * c + k) * hw + q % hw;
            let sc = scale[s];
            if ok == 0 || sc == 0.0 {
                grad[p] = 0.0;
                continue;
            }
            let (f1, v1) = (cf - fgb[s], cv - vb[s]);
            let (f0, v0) = (f1 - f, v1 - ok);
            let gts = counts[s];
            let g = jaccard(gts, f1, v1 - f1) - jaccard(gts, f0, v0 - f0);
            let e = f64::from_bits(!keys[i]);
            partials[t] += e * g * sc;
            let target = if f == 1 { 1.0 } else { 0.0 };
            let sign = if e == 0.0 {
                0.0
            } else if probs[p] > target {
                1.0
            } else {
                -1.0
            };
            grad[p] = g * sign * sc;
        }
    }
    debug_assert_eq!(counts.len(), nseg + groups(dims, cfg.per_image));
    (partials.iter().sum(), grad)
}

/// The whole device Lovász term on the host: keys, sort, Jaccard pass.
pub(super) fn lovasz_device_mirror(
    probs: &[f64],
    labels: &[u32],
    dims: [usize; 4],
    cfg: &LovaszConfig,
) -> (f64, Vec<f64>) {
    let (keys, vals) = sort_keys(probs, labels, dims, cfg.ignore);
    let (keys, vals) = radix_sort(keys, vals, dims, cfg.per_image);
    lovasz_from_sorted(&keys, &vals, probs, labels, dims, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lovasz::{lovasz_grad, lovasz_softmax_host};

    /// xorshift64*: reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn unif(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn below(&mut self, n: u32) -> u32 {
            (self.next() % u64::from(n)) as u32
        }
    }

    /// Softmax over the class planes of `logits`, `(B, C, H, W)`.
    fn softmax(x: &[f64], dims: [usize; 4]) -> Vec<f64> {
        let [b, c, h, w] = dims;
        let hw = h * w;
        let mut p = x.to_vec();
        for bi in 0..b {
            for s in 0..hw {
                let at = |k: usize| (bi * c + k) * hw + s;
                let m = (0..c).map(|k| x[at(k)]).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..c).map(|k| (x[at(k)] - m).exp()).sum();
                for k in 0..c {
                    p[at(k)] = (x[at(k)] - m).exp() / sum;
                }
            }
        }
        p
    }

    /// Probabilities and labels: random logits (`quantum` > 0 rounds them
    /// to multiples of it, for many ties; 0 keeps them continuous, and a
    /// negative value makes them all equal), labels below `classes`, some
    /// set to `ignore`.
    fn case(
        seed: u64,
        dims: [usize; 4],
        quantum: f64,
        classes: u32,
        ignore: Option<(u32, u32)>,
    ) -> (Vec<f64>, Vec<u32>) {
        let mut rng = Rng(seed | 1);
        let [b, c, h, w] = dims;
        let x: Vec<f64> = (0..b * c * h * w)
            .map(|_| {
                let v = 4.0 * rng.unif() - 2.0;
                if quantum > 0.0 {
                    (v / quantum).round() * quantum
                } else if quantum < 0.0 {
                    0.3
                } else {
                    v
                }
            })
            .collect();
        let labels = (0..b * h * w)
            .map(|_| match ignore {
                Some((label, one_in)) if rng.below(one_in) == 0 => label,
                _ => rng.below(classes),
            })
            .collect();
        (softmax(&x, dims), labels)
    }

    /// The host's sort order per (group, class) job (`lovasz.rs`' key:
    /// descending error, ties by the pixel's index in its group, ignored
    /// pixels left out), as entry indices.
    fn host_order(
        probs: &[f64],
        labels: &[u32],
        dims: [usize; 4],
        cfg: &LovaszConfig,
    ) -> Vec<Vec<u32>> {
        let [b, c, h, w] = dims;
        let (hw, n) = (h * w, b * h * w);
        let groups: Vec<Vec<usize>> = if cfg.per_image {
            (0..b).map(|i| vec![i]).collect()
        } else {
            vec![(0..b).collect()]
        };
        let mut out = Vec::new();
        for imgs in &groups {
            for class in 0..c {
                let mut keys: Vec<(u128, u32)> = Vec::new();
                for (pos, &i) in imgs.iter().enumerate() {
                    for s in 0..hw {
                        let l = labels[i * hw + s];
                        if Some(l) == cfg.ignore {
                            continue;
                        }
                        let p = probs[(i * c + class) * hw + s];
                        let target = if l as usize == class { 1.0 } else { 0.0 };
                        let e: f64 = (target - p).abs();
                        let t = (pos * hw + s) as u128;
                        let entry = (class * n + i * hw + s) as u32;
                        keys.push(((u128::from(!e.to_bits()) << 64) | t << 2, entry));
                    }
                }
                keys.sort_unstable();
                out.push(keys.into_iter().map(|(_, e)| e).collect());
            }
        }
        out
    }

    fn configs() -> Vec<LovaszConfig> {
        let mut out = Vec::new();
        for classes in [Classes::Present, Classes::All] {
            for per_image in [false, true] {
                for ignore in [None, Some(7)] {
                    out.push(LovaszConfig {
                        classes,
                        per_image,
                        ignore,
                    });
                }
            }
        }
        out
    }

    /// (dims, quantum, label classes, ignore (label, 1 in n)) per case.
    type Case = ([usize; 4], f64, u32, Option<(u32, u32)>);

    fn cases() -> Vec<Case> {
        vec![
            // Continuous errors, several tiles (3 · 2 · 48 · 48 > TILE).
            ([2, 3, 48, 48], 0.0, 3, Some((7, 5))),
            // Many ties; constant logits (every error tied per class).
            ([3, 3, 9, 11], 0.5, 3, Some((7, 3))),
            ([2, 3, 8, 8], -1.0, 3, Some((7, 4))),
            // Class 2 absent; only one class present.
            ([2, 3, 10, 10], 0.25, 2, Some((7, 6))),
            ([2, 3, 5, 5], 0.0, 1, None),
            // Every pixel ignored (per image, some images only).
            ([2, 3, 4, 4], 0.0, 3, Some((7, 1))),
            ([4, 3, 3, 3], 0.0, 3, Some((7, 2))),
        ]
    }

    #[test]
    fn radix_order_is_the_host_sort_order() {
        for (ci, (dims, quantum, classes, ignore)) in cases().into_iter().enumerate() {
            let (probs, labels) = case(ci as u64 + 11, dims, quantum, classes, ignore);
            for cfg in configs() {
                let (keys, vals) = sort_keys(&probs, &labels, dims, cfg.ignore);
                // A stable sort by (segment, key) in entry order.
                let mut idx: Vec<usize> = (0..keys.len()).collect();
                idx.sort_by_key(|&i| (segment(vals[i], dims, cfg.per_image), keys[i]));
                let (sk, sv) = radix_sort(keys.clone(), vals.clone(), dims, cfg.per_image);
                assert_eq!(sv, idx.iter().map(|&i| vals[i]).collect::<Vec<_>>());
                assert_eq!(sk, idx.iter().map(|&i| keys[i]).collect::<Vec<_>>());
                // Each segment's non-ignored entries: the host's order.
                let n = dims[0] * dims[2] * dims[3];
                let mut per_seg = vec![Vec::new(); segments(dims, cfg.per_image)];
                for &v in &sv {
                    if Some(labels[v as usize % n]) != cfg.ignore {
                        per_seg[segment(v, dims, cfg.per_image)].push(v);
                    }
                }
                assert_eq!(
                    per_seg,
                    host_order(&probs, &labels, dims, &cfg),
                    "case {ci} {cfg:?}"
                );
            }
        }
    }

    /// The kernels' tile, block and bin sizes are the mirror's.
    #[test]
    fn kernel_constants_are_the_mirror_s() {
        let cu = include_str!("../../kernels/seg_loss.cu");
        for (name, v) in [
            ("SL_TILE", TILE),
            ("SL_THREADS", THREADS),
            ("SL_BINS", BINS),
        ] {
            let line = format!("#define {name} {v}");
            assert!(
                cu.lines().any(|l| l.trim() == line),
                "seg_loss.cu lacks `{line}`"
            );
        }
    }

    #[test]
    fn radix_sort_handles_several_segment_bytes() {
        assert_eq!(segment_bytes(1), 0);
        assert_eq!(segment_bytes(3), 1);
        assert_eq!(segment_bytes(256), 1);
        assert_eq!(segment_bytes(257), 2);
        // 100 images · 3 classes = 300 segments: two segment passes.
        let dims = [100, 3, 2, 3];
        let (probs, labels) = case(5, dims, 0.5, 3, Some((7, 4)));
        let (keys, vals) = sort_keys(&probs, &labels, dims, Some(7));
        let mut idx: Vec<usize> = (0..keys.len()).collect();
        idx.sort_by_key(|&i| (segment(vals[i], dims, true), keys[i]));
        let (_, sv) = radix_sort(keys, vals.clone(), dims, true);
        assert_eq!(sv, idx.iter().map(|&i| vals[i]).collect::<Vec<_>>());
    }

    #[test]
    fn scan_grad_is_lovasz_grad() {
        let mut rng = Rng(3);
        for len in [1usize, 2, 5, 64, 1000] {
            for density in [0u32, 1, 3, 10] {
                let fg: Vec<bool> = (0..len)
                    .map(|_| density > 0 && rng.below(density) == 0)
                    .collect();
                let want = lovasz_grad(&fg);
                let got = scan_grad(&fg, &vec![true; len]);
                for (a, b) in want.iter().zip(&got) {
                    assert!((a - b).abs() <= 1e-12, "{len} {density}: {a} {b}");
                }
                // Ignored pixels in between change nothing and get g = 0.
                let valid: Vec<bool> = (0..2 * len).map(|i| i % 2 == 0).collect();
                let fg2: Vec<bool> = (0..2 * len).map(|i| i % 2 == 0 && fg[i / 2]).collect();
                let got2 = scan_grad(&fg2, &valid);
                for (i, g) in got2.iter().enumerate() {
                    let want = if i % 2 == 0 { want[i / 2] } else { 0.0 };
                    assert!((want - g).abs() <= 1e-12, "{len} {density} {i}");
                }
            }
        }
    }

    #[test]
    fn device_mirror_is_the_host_loss() {
        for (ci, (dims, quantum, classes, ignore)) in cases().into_iter().enumerate() {
            let (probs, labels) = case(ci as u64 + 101, dims, quantum, classes, ignore);
            for cfg in configs() {
                // Without an ignore label, label 7 is no pixel's: class 0.
                let labels: Vec<u32> = match cfg.ignore {
                    Some(_) => labels.clone(),
                    None => labels.iter().map(|&l| if l == 7 { 0 } else { l }).collect(),
                };
                let (want, want_g) = lovasz_softmax_host(&probs, &labels, dims, &cfg);
                let (got, got_g) = lovasz_device_mirror(&probs, &labels, dims, &cfg);
                assert!(
                    (want - got).abs() <= 1e-12,
                    "case {ci} {cfg:?}: {want} {got}"
                );
                let worst = want_g
                    .iter()
                    .zip(&got_g)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(worst <= 1e-12, "case {ci} {cfg:?}: gradient off by {worst}");
            }
        }
    }
}
