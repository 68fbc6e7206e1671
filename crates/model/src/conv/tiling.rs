//! How a convolution's work is cut up: tiles of output rows sized to a
//! core's cache ([`Tiling`]), work items spread over rayon's threads
//! ([`spread`]) and their partial sums added in a fixed order
//! ([`sum_parts`]).

use std::ops::Range;

use rayon::prelude::*;

use super::im2col::Geo;

/// How many patch values a tile aims at (512 KiB: the patches of a tile
/// stay in a core's L2 cache while the product reads them).
pub(super) const TILE_FLOATS: usize = 1 << 17;
/// The fewest output positions in a tile, so that reading the weights
/// once per tile stays cheap beside the tile's product.
pub(super) const TILE_MIN_COLS: usize = 512;

/// How the output rows of each sample are cut into tiles.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiling {
    pub(super) rows: usize,
    pub(super) tiles: usize,
}

impl Tiling {
    /// Tiles of at most `floats` patch values (but at least `min_cols`
    /// output positions, and whole output rows); when the samples do not
    /// share out evenly over the threads, a multiple of the threads (if
    /// there is more than one tile).
    pub(super) fn new(
        geo: &Geo,
        ckk: usize,
        b: usize,
        threads: usize,
        (floats, min_cols): (usize, usize),
    ) -> Tiling {
        let cols = (floats / ckk.max(1)).max(min_cols);
        let mut rows = (cols / geo.wo.max(1)).clamp(1, geo.ho.max(1));
        let mut tiles = geo.ho.div_ceil(rows);
        if threads > 1 && !b.is_multiple_of(threads) && tiles > 1 {
            tiles = tiles.next_multiple_of(threads).min(geo.ho);
            rows = geo.ho.div_ceil(tiles);
            tiles = geo.ho.div_ceil(rows);
        }
        Tiling { rows, tiles }
    }

    /// The output rows of tile `t`.
    pub(super) fn oys(&self, t: usize, ho: usize) -> Range<usize> {
        t * self.rows..((t + 1) * self.rows).min(ho)
    }
}

/// Runs `f(items, gemm_threads)` over `0..items`: in up to four contiguous
/// groups per thread, each with single-threaded products and taken by
/// whichever thread is free (a thread slowed by other work, such as the
/// trainer's augmentation workers, just takes fewer), when the items share
/// out evenly enough; else one range whose products use all the threads.
/// The groups depend only on the item and thread counts, and the results
/// come back in group order (sums over them are reproducible).
pub(super) fn spread<R: Send>(items: usize, f: impl Fn(Range<usize>, usize) -> R + Sync) -> Vec<R> {
    let threads = rayon::current_num_threads();
    if threads > 1 && items >= threads && (items.is_multiple_of(threads) || items >= 4 * threads) {
        let groups = items.min(4 * threads);
        (0..groups)
            .into_par_iter()
            .with_max_len(1)
            .map(|g| f(g * items / groups..(g + 1) * items / groups, 1))
            .collect()
    } else {
        vec![f(0..items, threads)]
    }
}

/// The element-wise sum of the per-group partial results [`spread`] returns
/// (each `len` long; zeros when there are none), added in group order so
/// that the sum is reproducible.
pub(super) fn sum_parts(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for p in parts {
        for (a, v) in sum.iter_mut().zip(&p) {
            *a += v;
        }
    }
    sum
}
