//! Memory-layout helpers.

use rayon::prelude::*;

/// Converts a 3D array stored in Fortran order (`i` fastest, as NIfTI stores
/// voxels) into C order (`k` fastest), keeping the index `[i, j, k]`.
///
/// # Shapes
/// `src.len() == dims[0] * dims[1] * dims[2]`; the output has the same length.
#[cfg(test)]
pub(crate) fn fortran_to_c_3d<T: Copy + Send + Sync + Default>(
    src: &[T],
    dims: [usize; 3],
) -> Vec<T> {
    assert_eq!(
        src.len(),
        dims.iter().product::<usize>(),
        "length does not match dims"
    );
    fortran_to_c_with(dims, |i| src[i])
}

/// Builds a C-ordered `[i, j, k]` array whose element at Fortran flat index
/// `f = i + n0 * (j + n1 * k)` is `get(f)`: decoding and reordering in one
/// pass, with no intermediate array.
pub(crate) fn fortran_to_c_with<T, F>(dims: [usize; 3], get: F) -> Vec<T>
where
    T: Copy + Send + Sync + Default,
    F: Fn(usize) -> T + Sync,
{
    let mut out = vec![T::default(); dims.iter().product()];
    fortran_planes_to_c(&mut out, dims, 0, dims[2], get);
    out
}

/// [`fortran_to_c_with`] under a signed permutation of the axes: the
/// C-ordered output has axis `d` running along file axis `perm[d]`
/// (reversed where `flip[d]`), so `out[d0, d1, d2]` is `get(f)` for the
/// Fortran flat index `f` of that file voxel. Reorientation in the same
/// pass as the decoding: no second copy.
///
/// # Shapes
/// `dims` is the file's; the output has `[dims[perm[0]], dims[perm[1]],
/// dims[perm[2]]]`.
pub(crate) fn fortran_to_c_oriented<T, F>(
    dims: [usize; 3],
    perm: [usize; 3],
    flip: [bool; 3],
    get: F,
) -> Vec<T>
where
    T: Copy + Send + Sync + Default,
    F: Fn(usize) -> T + Sync,
{
    if perm == [0, 1, 2] && flip == [false; 3] {
        return fortran_to_c_with(dims, get);
    }
    let stride = [1, dims[0], dims[0] * dims[1]];
    let out_dims = perm.map(|a| dims[a]);
    // Signed file strides of the output axes, and the file index of the
    // output's first voxel.
    let step: [isize; 3] =
        [0, 1, 2].map(|d| stride[perm[d]] as isize * if flip[d] { -1 } else { 1 });
    let base: usize = (0..3)
        .filter(|&d| flip[d])
        .map(|d| (out_dims[d] - 1) * stride[perm[d]])
        .sum();
    let mut out = vec![T::default(); out_dims.iter().product()];
    if out.is_empty() {
        return out;
    }
    let plane = out_dims[1] * out_dims[2];
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(d0, chunk)| {
            for d1 in 0..out_dims[1] {
                let mut f = base as isize + d0 as isize * step[0] + d1 as isize * step[1];
                for o in &mut chunk[d1 * out_dims[2]..(d1 + 1) * out_dims[2]] {
                    *o = get(f as usize);
                    f += step[2];
                }
            }
        });
    out
}

/// Fills the planes `k0..k1` (third index) of the C-ordered `[i, j, k]`
/// array `out` with `get(f)`, where `f = i + n0 * (j + n1 * (k - k0))` is
/// the Fortran flat index relative to the first plane: what a reader that
/// streams a NIfTI file plane by plane has in hand.
///
/// Blocked so that reads and writes both stay in cache, and parallel over
/// blocks of `i`, each of which owns a disjoint run of the output.
pub(crate) fn fortran_planes_to_c<T, F>(
    out: &mut [T],
    dims: [usize; 3],
    k0: usize,
    k1: usize,
    get: F,
) where
    T: Copy + Send + Sync,
    F: Fn(usize) -> T + Sync,
{
    let [n0, n1, n2] = dims;
    assert_eq!(out.len(), n0 * n1 * n2, "length does not match dims");
    assert!(k0 <= k1 && k1 <= n2, "planes {k0}..{k1} outside 0..{n2}");
    if out.is_empty() || k0 == k1 {
        return;
    }
    // Tiles of BI (i) x BK (k) for each j: the tile's reads are BK runs of BI
    // consecutive source elements, its writes BI runs of BK consecutive
    // output elements; both fit in L1 and the TLB.
    const BI: usize = 32;
    const BK: usize = 16;
    let plane = n1 * n2;
    out.par_chunks_mut(BI * plane)
        .enumerate()
        .for_each(|(bi, chunk)| {
            let i0 = bi * BI;
            let bl = chunk.len() / plane;
            for j in 0..n1 {
                for kt in (k0..k1).step_by(BK) {
                    let kt1 = (kt + BK).min(k1);
                    for di in 0..bl {
                        let at = di * plane + j * n2;
                        let row = &mut chunk[at + kt..at + kt1];
                        let base = i0 + di + n0 * (j + n1 * (kt - k0));
                        for (t, r) in row.iter_mut().enumerate() {
                            *r = get(base + t * n0 * n1);
                        }
                    }
                }
            }
        });
}

/// The inverse of [`fortran_to_c_3d`].
#[cfg(test)]
pub(crate) fn c_to_fortran_3d<T: Copy + Send + Sync + Default>(
    src: &[T],
    dims: [usize; 3],
) -> Vec<T> {
    let [n0, n1, n2] = dims;
    assert_eq!(src.len(), n0 * n1 * n2, "length does not match dims");
    let mut out = vec![T::default(); src.len()];
    if out.is_empty() {
        return out;
    }
    // Output plane k (fixed third index) is contiguous in Fortran order.
    let plane = n0 * n1;
    out.par_chunks_mut(plane).enumerate().for_each(|(k, o)| {
        for j in 0..n1 {
            for i in 0..n0 {
                o[i + n0 * j] = src[(i * n1 + j) * n2 + k];
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_match_the_index_formulas() {
        let dims = [37, 5, 7];
        // Fortran order: value at flat index i + n0*(j + n1*k) encodes (i,j,k).
        let code = |i: usize, j: usize, k: usize| (i * 10_000 + j * 100 + k) as u32;
        let mut f = vec![0u32; 37 * 5 * 7];
        for k in 0..7 {
            for j in 0..5 {
                for i in 0..37 {
                    f[i + 37 * (j + 5 * k)] = code(i, j, k);
                }
            }
        }
        let c = fortran_to_c_3d(&f, dims);
        for i in 0..37 {
            for j in 0..5 {
                for k in 0..7 {
                    assert_eq!(c[(i * 5 + j) * 7 + k], code(i, j, k));
                }
            }
        }
        assert_eq!(c_to_fortran_3d(&c, dims), f);
    }

    #[test]
    fn plane_chunks_assemble_the_whole() {
        let dims = [5, 4, 37];
        let f: Vec<u32> = (0..5 * 4 * 37).collect();
        let whole = fortran_to_c_3d(&f, dims);
        let mut parts = vec![0u32; f.len()];
        let plane = 5 * 4;
        for (k0, k1) in [(0, 16), (16, 17), (17, 37)] {
            let chunk = &f[k0 * plane..k1 * plane];
            fortran_planes_to_c(&mut parts, dims, k0, k1, |i| chunk[i]);
        }
        assert_eq!(parts, whole);
    }

    /// The fused reorientation equals decoding in the file's order and
    /// then permuting and flipping with ndarray, for all 48 signed
    /// permutations.
    #[test]
    fn oriented_decoding_equals_decoding_then_permuting() {
        let dims = [3, 4, 5];
        let src: Vec<u32> = (0..60).collect();
        let c = ndarray::Array3::from_shape_vec(dims, fortran_to_c_3d(&src, dims)).unwrap();
        for perm in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            for bits in 0..8u8 {
                let flip = [0, 1, 2].map(|d| bits >> d & 1 == 1);
                let mut v = c.view().permuted_axes(perm);
                for (d, _) in flip.iter().enumerate().filter(|(_, f)| **f) {
                    v.invert_axis(ndarray::Axis(d));
                }
                let want: Vec<u32> = v.iter().copied().collect();
                assert_eq!(
                    fortran_to_c_oriented(dims, perm, flip, |i| src[i]),
                    want,
                    "{perm:?} {flip:?}"
                );
            }
        }
    }
}
