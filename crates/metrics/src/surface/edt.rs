//! The exact Euclidean distance transform of a 3D grid with anisotropic
//! voxels (Felzenszwalb & Huttenlocher, "Distance Transforms of Sampled
//! Functions", 2012): the squared distance is separable, so it is computed
//! by three passes of the 1D lower envelope of parabolas, one per axis.
//! Exact, like scipy's `distance_transform_edt` (which the official KiTS
//! evaluation calls), not a chamfer approximation.
//!
//! No crate on crates.io computes an exact 3D transform with per-axis
//! spacing (`distance-transform` and `edt` are 2D or isotropic), so this is
//! our own; it is tested against a brute-force minimum over all sites.

use rayon::prelude::*;

/// Squared distances in mm² from every voxel to the nearest `site` voxel
/// of a C-order grid of `shape` with voxel sizes `spacing` (mm); infinity
/// everywhere when there is no site.
pub fn squared_edt(site: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let [n0, n1, n2] = shape;
    assert_eq!(site.len(), n0 * n1 * n2, "shape and mask disagree");
    let mut d: Vec<f64> = site
        .iter()
        .map(|&s| if s { 0.0 } else { f64::INFINITY })
        .collect();
    if d.is_empty() {
        return d;
    }
    // Axis 2: contiguous lines.
    let s2 = spacing[2] * spacing[2];
    d.par_chunks_mut(n2).for_each_init(
        || Envelope::new(n2),
        |env, line| {
            let f = line.to_vec();
            env.transform(&f, s2, line);
        },
    );
    // Axis 1: lines of stride n2 inside each plane.
    let s1 = spacing[1] * spacing[1];
    d.par_chunks_mut(n1 * n2).for_each_init(
        || (Envelope::new(n1), vec![0.0; n1], vec![0.0; n1]),
        |(env, f, out), plane| {
            for z in 0..n2 {
                for (y, v) in f.iter_mut().enumerate() {
                    *v = plane[y * n2 + z];
                }
                env.transform(f, s1, out);
                for (y, v) in out.iter().enumerate() {
                    plane[y * n2 + z] = *v;
                }
            }
        },
    );
    // Axis 0: lines of stride n1·n2. Each task takes one row index y and
    // writes its lines into a buffer of its own, copied back after.
    let s0 = spacing[0] * spacing[0];
    let src = &d;
    let rows: Vec<Vec<f64>> = (0..n1)
        .into_par_iter()
        .map_init(
            || (Envelope::new(n0), vec![0.0; n0]),
            |(env, f), y| {
                let mut row = vec![0.0; n0 * n2];
                for z in 0..n2 {
                    for (x, v) in f.iter_mut().enumerate() {
                        *v = src[(x * n1 + y) * n2 + z];
                    }
                    env.transform(f, s0, &mut row[z * n0..(z + 1) * n0]);
                }
                row
            },
        )
        .collect();
    for (y, row) in rows.iter().enumerate() {
        for z in 0..n2 {
            for x in 0..n0 {
                d[(x * n1 + y) * n2 + z] = row[z * n0 + x];
            }
        }
    }
    d
}

/// The lower envelope of the parabolas `s·(q - p)² + f(p)` of one line.
struct Envelope {
    /// Positions of the parabolas in the envelope.
    v: Vec<usize>,
    /// Where parabola `k` starts to be the lowest (`z[k]`..`z[k+1]`).
    z: Vec<f64>,
}

impl Envelope {
    fn new(n: usize) -> Envelope {
        Envelope {
            v: vec![0; n],
            z: vec![0.0; n + 1],
        }
    }

    /// `out[q] = min_p s·(q - p)² + f[p]` over the finite `f[p]`.
    fn transform(&mut self, f: &[f64], s: f64, out: &mut [f64]) {
        let n = f.len();
        let (v, z) = (&mut self.v, &mut self.z);
        // Number of parabolas in the envelope.
        let mut k = 0usize;
        for q in 0..n {
            if f[q].is_infinite() {
                continue;
            }
            let fq = f[q] + s * (q * q) as f64;
            loop {
                if k == 0 {
                    v[0] = q;
                    z[0] = f64::NEG_INFINITY;
                    z[1] = f64::INFINITY;
                    k = 1;
                    break;
                }
                let p = v[k - 1];
                let fp = f[p] + s * (p * p) as f64;
                // Where the parabolas of p and q meet.
                let meet = (fq - fp) / (2.0 * s * (q - p) as f64);
                if meet <= z[k - 1] {
                    k -= 1;
                } else {
                    v[k] = q;
                    z[k] = meet;
                    z[k + 1] = f64::INFINITY;
                    k += 1;
                    break;
                }
            }
        }
        if k == 0 {
            out.fill(f64::INFINITY);
            return;
        }
        let mut j = 0;
        for (q, o) in out.iter_mut().enumerate() {
            while z[j + 1] < q as f64 {
                j += 1;
            }
            let p = v[j];
            let dq = q as f64 - p as f64;
            *o = s * dq * dq + f[p];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Against the definition: the minimum over every site of the squared
    /// distance, on random anisotropic grids with few and many sites.
    #[test]
    fn matches_brute_force_on_random_grids() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for trial in 0..30 {
            let shape = [
                rng.random_range(1..9),
                rng.random_range(1..9),
                rng.random_range(1..9),
            ];
            let spacing = [
                rng.random_range(0.3..5.0),
                rng.random_range(0.3..5.0),
                rng.random_range(0.3..5.0),
            ];
            let n = shape.iter().product::<usize>();
            let density = [0.0, 0.02, 0.2, 0.9][trial % 4];
            let site: Vec<bool> = (0..n).map(|_| rng.random_bool(density)).collect();
            let got = squared_edt(&site, shape, spacing);
            let at = |i: usize| {
                [
                    i / (shape[1] * shape[2]),
                    i / shape[2] % shape[1],
                    i % shape[2],
                ]
            };
            for (i, g) in got.iter().enumerate() {
                let a = at(i);
                let want = (0..n)
                    .filter(|&j| site[j])
                    .map(|j| {
                        let b = at(j);
                        (0..3)
                            .map(|d| ((a[d] as f64 - b[d] as f64) * spacing[d]).powi(2))
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (g - want).abs() <= 1e-9 * want.max(1.0)
                        || (g.is_infinite() && want.is_infinite()),
                    "{shape:?} {spacing:?} voxel {a:?}: {g} vs {want}"
                );
            }
        }
    }
}
