//! The device-independent half of the cuDNN convolution (`cuda.rs`, with
//! the `cudnn` feature): the plan-cache key, the algorithm-selection
//! policy (heuristics, benchmark, deterministic) as pure functions over
//! records, the grow-only workspace rule and the output-size arithmetic.
//! Kept free of CUDA so that the CPU build tests it.

#![cfg_attr(not(feature = "cudnn"), allow(dead_code))]

use candle_core::DType;

/// Which of the three cuDNN calls a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Direction {
    /// `y = W ⋆ x` (`cudnnConvolutionForward`).
    Forward,
    /// `dx` from `dy` and `W` (`cudnnConvolutionBackwardData`).
    BackwardData,
    /// `dW` from `x` and `dy` (`cudnnConvolutionBackwardFilter`).
    BackwardFilter,
}

/// The math type of a plan: strict FP32 FMA, or TF32 tensor cores allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Math {
    /// `CUDNN_FMA_MATH`: no TF32 (comparable with PyTorch's f32).
    Fma,
    /// `CUDNN_DEFAULT_MATH`: TF32 allowed on Ampere and newer.
    Tf32,
}

impl Math {
    /// The math type that [`crate::tf32`]'s switch asks for.
    pub(super) fn current() -> Math {
        if crate::tf32() { Math::Tf32 } else { Math::Fma }
    }
}

/// What identifies one plan (descriptors and algorithm) on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) dtype: DType,
    pub(super) math: Math,
    pub(super) dir: Direction,
}

impl Key {
    /// The output plane `(ho, wo)`: `(h + 2·pad − k) / stride + 1` each way
    /// (cuDNN's `cudnnGetConvolutionNdForwardOutputDim` with dilation 1).
    pub(super) fn out_hw(&self) -> (usize, usize) {
        (
            out_len(self.h, self.k, self.stride, self.pad),
            out_len(self.w, self.k, self.stride, self.pad),
        )
    }

    /// `[n, c, h, w]` of the input.
    pub(super) fn x_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// `[o, c, k, k]` of the weight.
    pub(super) fn w_dims(&self) -> [usize; 4] {
        [self.o, self.c, self.k, self.k]
    }

    /// `[n, o, ho, wo]` of the output.
    pub(super) fn y_dims(&self) -> [usize; 4] {
        let (ho, wo) = self.out_hw();
        [self.n, self.o, ho, wo]
    }
}

/// One output length of a convolution (dilation 1); the caller has checked
/// `len + 2·pad ≥ k` and `stride ≥ 1`.
pub(super) fn out_len(len: usize, k: usize, stride: usize, pad: usize) -> usize {
    (len + 2 * pad - k) / stride + 1
}

/// Row-major (contiguous) strides of `dims`.
pub(super) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// How an algorithm is chosen for a new plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Policy {
    /// Time every candidate and keep the fastest (`KSEG_CUDNN_BENCHMARK=1`).
    pub(super) benchmark: bool,
    /// Only deterministic algorithms (`KSEG_CUDNN_DETERMINISTIC=1`).
    pub(super) deterministic: bool,
}

impl Policy {
    /// The policy the environment asks for.
    pub(super) fn from_env() -> Policy {
        let on = |v: &str| std::env::var_os(v).is_some_and(|v| v == "1");
        Policy {
            benchmark: on("KSEG_CUDNN_BENCHMARK"),
            deterministic: on("KSEG_CUDNN_DETERMINISTIC"),
        }
    }
}

/// The largest workspace a candidate may ask for (1 GiB).
pub(super) const MAX_WORKSPACE: usize = 1 << 30;

/// What is known of one candidate algorithm (`algo` indexes the
/// direction's candidate list, in preference order).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Record {
    pub(super) algo: usize,
    /// Measured time (benchmark mode), `None` when not timed or it failed.
    pub(super) time_ms: Option<f32>,
    /// Workspace bytes, `None` when cuDNN does not support it here.
    pub(super) workspace: Option<usize>,
    pub(super) deterministic: bool,
}

impl Record {
    /// Usable under `policy`: supported, within [`MAX_WORKSPACE`], and
    /// deterministic if asked.
    fn usable(&self, policy: Policy) -> bool {
        self.workspace.is_some_and(|w| w <= MAX_WORKSPACE)
            && (!policy.deterministic || self.deterministic)
    }
}

/// The algorithm to use: in benchmark mode the fastest usable timed record
/// (ties: the smaller workspace); otherwise cuDNN's heuristic choice if it
/// is usable, else the first usable record (list order = preference).
/// `None` when nothing is usable.
pub(super) fn choose(
    policy: Policy,
    heuristic: Option<usize>,
    records: &[Record],
) -> Option<usize> {
    let usable = || records.iter().filter(move |r| r.usable(policy));
    if policy.benchmark {
        let best = usable()
            .filter_map(|r| r.time_ms.map(|t| (t, r.workspace.unwrap_or(0), r.algo)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        if let Some((_, _, algo)) = best {
            return Some(algo);
        }
    }
    if let Some(h) = heuristic
        && usable().any(|r| r.algo == h)
    {
        return Some(h);
    }
    usable().next().map(|r| r.algo)
}

/// A grow-only size: the per-device workspace is reallocated only when a
/// plan needs more than it has, never shrunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct GrowOnly {
    pub(super) bytes: usize,
}

impl GrowOnly {
    /// Asks for `need` bytes: `Some(new size)` when the buffer must be
    /// reallocated (to at least 256 bytes), `None` when it is big enough.
    pub(super) fn need(&mut self, need: usize) -> Option<usize> {
        if need <= self.bytes && self.bytes > 0 {
            return None;
        }
        self.bytes = need.max(self.bytes).max(256);
        Some(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::super::cpu::Dims;
    use super::super::im2col::Geo;
    use super::{Direction, GrowOnly, Key, Math, Policy, Record, choose, out_len, strides};

    fn key() -> Key {
        Key {
            n: 3,
            c: 5,
            h: 15,
            w: 17,
            o: 7,
            k: 3,
            stride: 1,
            pad: 1,
            dtype: DType::F32,
            math: Math::Fma,
            dir: Direction::Forward,
        }
    }

    #[test]
    fn same_shape_same_key_any_change_another() {
        use std::collections::HashSet;
        assert_eq!(key(), key());
        let changes: Vec<fn(&mut Key)> = vec![
            |k| k.n += 1,
            |k| k.c += 1,
            |k| k.h += 1,
            |k| k.w += 1,
            |k| k.o += 1,
            |k| k.k = 1,
            |k| k.stride = 2,
            |k| k.pad = 0,
            |k| k.dtype = DType::F16,
            |k| k.math = Math::Tf32,
            |k| k.dir = Direction::BackwardData,
            |k| k.dir = Direction::BackwardFilter,
        ];
        let mut set = HashSet::from([key()]);
        for f in &changes {
            let mut k = key();
            f(&mut k);
            assert_ne!(k, key());
            assert!(set.insert(k), "{k:?} collides");
        }
        assert!(!set.insert(key()));
        assert_eq!(set.len(), changes.len() + 1);
    }

    #[test]
    fn workspace_only_grows() {
        let mut ws = GrowOnly::default();
        assert_eq!(ws.need(0), Some(256));
        assert_eq!(ws.need(100), None);
        assert_eq!(ws.need(1000), Some(1000));
        assert_eq!(ws.need(10), None);
        assert_eq!(ws.need(1000), None);
        assert_eq!(ws.need(1001), Some(1001));
        assert_eq!(ws.bytes, 1001);
    }

    fn rec(algo: usize, t: Option<f32>, ws: Option<usize>, det: bool) -> Record {
        Record {
            algo,
            time_ms: t,
            workspace: ws,
            deterministic: det,
        }
    }

    #[test]
    fn selection_policy() {
        let heur = Policy {
            benchmark: false,
            deterministic: false,
        };
        let bench = Policy {
            benchmark: true,
            deterministic: false,
        };
        let det = Policy {
            benchmark: false,
            deterministic: true,
        };
        let bench_det = Policy {
            benchmark: true,
            deterministic: true,
        };
        let rs = [
            rec(0, Some(1.0), Some(0), false),
            rec(1, Some(3.0), Some(10), true),
            rec(2, None, None, true),
            rec(3, Some(2.0), Some(super::MAX_WORKSPACE + 1), true),
            rec(4, Some(2.0), Some(50), true),
            rec(5, Some(2.0), Some(40), true),
        ];
        // Heuristics: cuDNN's pick, else the first usable.
        assert_eq!(choose(heur, Some(4), &rs), Some(4));
        assert_eq!(choose(heur, Some(0), &rs), Some(0));
        assert_eq!(choose(heur, Some(2), &rs), Some(0)); // unsupported pick
        assert_eq!(choose(heur, Some(3), &rs), Some(0)); // too much workspace
        assert_eq!(choose(heur, None, &rs), Some(0));
        // Deterministic: algorithm 0 is excluded.
        assert_eq!(choose(det, Some(0), &rs), Some(1));
        assert_eq!(choose(det, Some(5), &rs), Some(5));
        // Benchmark: fastest; ties by the smaller workspace.
        assert_eq!(choose(bench, Some(4), &rs), Some(0));
        assert_eq!(choose(bench_det, Some(4), &rs), Some(5));
        // Benchmark with nothing timed falls back to heuristics.
        let untimed: Vec<Record> = rs
            .iter()
            .map(|r| Record {
                time_ms: None,
                ..*r
            })
            .collect();
        assert_eq!(choose(bench, Some(4), &untimed), Some(4));
        // Nothing usable.
        assert_eq!(choose(det, Some(0), &rs[..1]), None);
        assert_eq!(choose(heur, Some(2), &rs[2..3]), None);
    }

    #[test]
    fn output_size_matches_the_cpu_dims() {
        for (h, w, k, stride, pad) in [
            (15, 17, 3, 1, 1),
            (15, 17, 3, 2, 1),
            (15, 17, 1, 1, 0),
            (15, 17, 1, 2, 0),
            (16, 16, 3, 2, 1),
            (9, 6, 5, 2, 2),
            (2, 3, 5, 2, 2),
            (11, 10, 3, 3, 1),
            (1, 1, 5, 1, 2),
        ] {
            let geo = Geo::new(h, w, k, stride, pad);
            let d = Dims {
                b: 3,
                c: 2,
                o: 4,
                geo,
            };
            let key = Key {
                n: d.b,
                c: d.c,
                h,
                w,
                o: d.o,
                k,
                stride,
                pad,
                ..key()
            };
            assert_eq!(
                key.out_hw(),
                (geo.ho, geo.wo),
                "{h}x{w} k{k} s{stride} p{pad}"
            );
            assert_eq!(key.y_dims(), [3, 4, geo.ho, geo.wo]);
            assert_eq!(d.n(), geo.ho * geo.wo);
            assert_eq!(out_len(h, k, stride, pad), geo.ho);
        }
        assert_eq!(strides(&[3, 5, 15, 17]), vec![5 * 15 * 17, 15 * 17, 17, 1]);
        assert_eq!(key().x_dims(), [3, 5, 15, 17]);
        assert_eq!(key().w_dims(), [7, 5, 3, 3]);
    }
}
