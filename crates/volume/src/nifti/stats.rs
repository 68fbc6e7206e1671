//! Voxel statistics of a NIfTI file (`kseg info`): range, mean, NaN count
//! and, for label files, the count of each value, in one parallel pass over
//! the voxels as stored (no decoded copy of the volume).
//!
//! Performance-critical: `kseg info --labels` on KiTS19's largest label file
//! is timed against nibabel plus numpy by `benches/compare/info_labels.sh`
//! (docs/PERFORMANCE.md).

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::{DType, Header, Voxel, read_raw, with_voxel};
#[allow(unused_imports)]
use super::{
    F32be, F32le, F64be, F64le, I8v, I16be, I16le, I32be, I32le, I64be, I64le, U8v, U16be, U16le,
    U32be, U32le, U64be, U64le,
};
use crate::error::{Result, VolumeError};

/// What [`read_stats`] finds in a file's voxels (values after the header's
/// scaling).
#[derive(Debug, Clone, PartialEq)]
pub struct VoxelStats {
    /// Smallest finite value (`None`: no such value).
    pub min: Option<f64>,
    /// Largest finite value.
    pub max: Option<f64>,
    /// Mean of the finite values.
    pub mean: Option<f64>,
    /// Voxels whose value is NaN.
    pub nan_count: u64,
    /// Voxels whose value is +inf or -inf (left out of min, max and mean,
    /// which they would make infinite or NaN).
    pub inf_count: u64,
    /// Voxels of each value, when asked for.
    pub label_counts: Option<BTreeMap<i64, u64>>,
}

/// Voxels per parallel task.
const CHUNK: usize = 1 << 18;

/// One chunk's share of the statistics.
#[derive(Clone)]
struct Part {
    min: f64,
    max: f64,
    sum: f64,
    n: u64,
    nan: u64,
    inf: u64,
    /// Whole values 0..=255 (every label file's), by value.
    small: Box<[u64; 256]>,
    /// Other whole values.
    other: BTreeMap<i64, u64>,
    /// The first value that is not a whole number, with its voxel index.
    not_whole: Option<(usize, f64)>,
}

impl Part {
    fn new() -> Part {
        Part {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            n: 0,
            nan: 0,
            inf: 0,
            small: Box::new([0; 256]),
            other: BTreeMap::new(),
            not_whole: None,
        }
    }
}

fn chunk_stats<V, F, G>(bytes: &[u8], count: usize, (map, labels): (F, G)) -> Vec<Part>
where
    V: Voxel,
    F: Fn(f64) -> f64 + Sync + Send + Copy,
    G: Fn() -> bool + Sync + Send + Copy,
{
    let labels = labels();
    let chunks = count.div_ceil(CHUNK);
    (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut p = Part::new();
            for i in c * CHUNK..((c + 1) * CHUNK).min(count) {
                let v = map(V::at(bytes, i));
                if !v.is_finite() {
                    if v.is_nan() {
                        p.nan += 1;
                    } else {
                        p.inf += 1;
                    }
                    if labels && p.not_whole.is_none() {
                        p.not_whole = Some((i, v));
                    }
                    continue;
                }
                p.min = p.min.min(v);
                p.max = p.max.max(v);
                p.sum += v;
                p.n += 1;
                if labels {
                    if (0.0..256.0).contains(&v) && v.fract() == 0.0 {
                        p.small[v as usize] += 1;
                    } else if v.is_finite() && v.fract() == 0.0 {
                        *p.other.entry(v as i64).or_default() += 1;
                    } else if p.not_whole.is_none() {
                        p.not_whole = Some((i, v));
                    }
                }
            }
            p
        })
        .collect()
}

/// Reads `path` and computes its [`VoxelStats`]; with `labels`, counts
/// each value and refuses a value that is not a whole number (not a label
/// file), naming it.
pub fn read_stats(path: impl AsRef<Path>, labels: bool) -> Result<(Header, VoxelStats)> {
    let path = path.as_ref();
    let raw = read_raw(path, 0)?;
    let count: usize = raw.header.shape().iter().product();
    let (slope, inter) = raw.header.scaling().unwrap_or((1.0, 0.0));
    let map = move |v: f64| v * slope + inter;
    let want = move || labels;
    let dtype: DType = raw.header.dtype();
    let parts: Vec<Part> = with_voxel!(
        dtype,
        raw.header.is_big_endian(),
        chunk_stats,
        (&raw.bytes, count, (map, want))
    );
    // Combined in chunk order, so the sum (and the mean) is the same on
    // every run and any number of threads.
    let mut all = Part::new();
    for p in parts {
        all.min = all.min.min(p.min);
        all.max = all.max.max(p.max);
        all.sum += p.sum;
        all.n += p.n;
        all.nan += p.nan;
        all.inf += p.inf;
        for (a, b) in all.small.iter_mut().zip(p.small.iter()) {
            *a += b;
        }
        for (k, v) in p.other {
            *all.other.entry(k).or_default() += v;
        }
        all.not_whole = all.not_whole.or(p.not_whole);
    }
    if let Some((i, v)) = all.not_whole {
        return Err(VolumeError::format(
            path,
            format!("not a label file: voxel {i} (file order) has value {v}, not a whole number"),
        ));
    }
    let label_counts = labels.then(|| {
        let mut counts = all.other;
        for (v, &n) in all.small.iter().enumerate() {
            if n > 0 {
                counts.insert(v as i64, n);
            }
        }
        counts
    });
    let some = |v: f64| (all.n > 0).then_some(v);
    let stats = VoxelStats {
        min: some(all.min),
        max: some(all.max),
        mean: some(all.sum / all.n.max(1) as f64),
        nan_count: all.nan,
        inf_count: all.inf,
        label_counts,
    };
    Ok((raw.header, stats))
}
