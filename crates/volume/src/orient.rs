//! Voxel orientation: which world direction each array axis runs along,
//! read from the affine, and the reordering that brings any volume to
//! kseg's one internal layout, KiTS19's own: `[slice, row, column]` running
//! inferior, posterior and left (axis codes `I`, `P`, `L`).
//!
//! Axis codes are nibabel's (`aff2axcodes`): for each voxel axis, the world
//! axis of RAS+ it is closest to (`R`/`L`, `A`/`P`, `S`/`I`: the direction
//! its index grows in), found as nibabel's `io_orientation` does, from the
//! nearest rotation to the affine's normalised 3×3 (axes taken greedily, so
//! an oblique affine gets its nearest axes and is reported as oblique).
//!
//! ```
//! use kseg_volume::orient::Orientation;
//! // A RAS+ volume with slices last (dcm2niix, the Decathlon).
//! let ras = [[0.8, 0.0, 0.0, 0.0], [0.0, 0.8, 0.0, 0.0], [0.0, 0.0, 2.5, 0.0], [0.0, 0.0, 0.0, 1.0]];
//! let o = Orientation::from_affine(&ras);
//! assert_eq!(o.codes(), ['R', 'A', 'S']);
//! assert_eq!(o.slice_axis(), 2);
//! let a = ndarray::Array3::from_shape_fn((4, 5, 6), |(i, j, k)| (i * 100 + j * 10 + k) as u16);
//! let internal = o.to_internal(a.view());
//! assert_eq!(internal.dim(), (6, 5, 4));
//! assert_eq!(o.to_file(internal.view()), a);
//! ```

use ndarray::{Array3, ArrayView3, Axis};

/// The axis codes of kseg's internal layout (KiTS19's own).
pub const INTERNAL_CODES: [char; 3] = ['I', 'P', 'L'];

/// How a file's voxel axes lie in the world, and the reordering to and
/// from the internal layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orientation {
    codes: [char; 3],
    /// `perm[d]`: the file axis that becomes internal axis `d`.
    perm: [usize; 3],
    /// Whether internal axis `d` runs against its file axis.
    flip: [bool; 3],
    oblique: bool,
}

impl Orientation {
    /// The orientation of the voxel-to-world `affine` (nibabel's
    /// `img.affine`, RAS+ world).
    pub fn from_affine(affine: &[[f64; 4]; 4]) -> Orientation {
        let (ornt, oblique) = io_orientation(affine);
        let codes = ornt.map(|(w, sign)| axis_code(w, sign));
        // Internal axis d wants world axis [2, 1, 0][d] (S/I, A/P, R/L),
        // running to I, P, L: the negative direction of each.
        let mut perm = [0; 3];
        let mut flip = [false; 3];
        for (d, world) in [2usize, 1, 0].into_iter().enumerate() {
            let file_axis = ornt.iter().position(|&(w, _)| w == world).unwrap_or(d);
            perm[d] = file_axis;
            flip[d] = ornt[file_axis].1 > 0;
        }
        Orientation {
            codes,
            perm,
            flip,
            oblique,
        }
    }

    /// The orientation of the internal layout itself (nothing to reorder).
    pub fn internal() -> Orientation {
        Orientation {
            codes: INTERNAL_CODES,
            perm: [0, 1, 2],
            flip: [false; 3],
            oblique: false,
        }
    }

    /// The file's axis codes (`['R', 'A', 'S']` for RAS+).
    pub fn codes(&self) -> [char; 3] {
        self.codes
    }

    /// The file axis closest to superior-inferior: the slice axis.
    pub fn slice_axis(&self) -> usize {
        self.perm[0]
    }

    /// Whether the affine's axes are tilted against the world's (the
    /// nearest axes are used).
    pub fn is_oblique(&self) -> bool {
        self.oblique
    }

    /// Whether the file is already in the internal layout.
    pub fn is_internal(&self) -> bool {
        self.perm == [0, 1, 2] && self.flip == [false; 3]
    }

    /// The file axis and direction behind each internal axis: `(perm,
    /// flip)`.
    pub fn mapping(&self) -> ([usize; 3], [bool; 3]) {
        (self.perm, self.flip)
    }

    /// [`Orientation::to_internal`] taking the array: no copy at all when
    /// the file is already in the internal layout.
    pub fn into_internal<T: Clone>(&self, a: Array3<T>) -> Array3<T> {
        if self.is_internal() {
            a
        } else {
            self.to_internal(a.view())
        }
    }

    /// [`Orientation::to_file`] taking the array: no copy at all when the
    /// file is in the internal layout.
    pub fn into_file<T: Clone>(&self, a: Array3<T>) -> Array3<T> {
        if self.is_internal() {
            a
        } else {
            self.to_file(a.view())
        }
    }

    /// A file-layout array in the internal layout (a copy in C order; no
    /// copy work beyond the clone when already internal).
    pub fn to_internal<T: Clone>(&self, a: ArrayView3<T>) -> Array3<T> {
        permute(a, self.perm, self.flip)
    }

    /// An internal-layout array back in the file's layout (the inverse of
    /// [`Orientation::to_internal`]): file axis `a` holds internal axis
    /// `inv[a]`, reversed where that axis was.
    pub fn to_file<T: Clone>(&self, a: ArrayView3<T>) -> Array3<T> {
        let mut inv = [0; 3];
        for (d, &p) in self.perm.iter().enumerate() {
            inv[p] = d;
        }
        permute(a, inv, inv.map(|d| self.flip[d]))
    }

    /// A file-order triple (shape, spacing) in internal order.
    pub fn internal_order<T: Copy>(&self, v: [T; 3]) -> [T; 3] {
        self.perm.map(|a| v[a])
    }
}

/// `a` stored with axis `k` holding its axis `perm[k]`, reversed where
/// `flip[k]` (a copy in C order). With [`Header::reoriented`](crate::Header::reoriented) it writes a
/// volume in another orientation.
pub fn permute<T: Clone>(a: ArrayView3<T>, perm: [usize; 3], flip: [bool; 3]) -> Array3<T> {
    let mut v = a.permuted_axes(perm);
    for (k, _) in flip.iter().enumerate().filter(|(_, f)| **f) {
        v.invert_axis(Axis(k));
    }
    v.as_standard_layout().into_owned()
}

/// nibabel's code of world axis `w` (0 R/L, 1 A/P, 2 S/I) run in
/// direction `sign`.
fn axis_code(w: usize, sign: i8) -> char {
    let (pos, neg) = [('R', 'L'), ('A', 'P'), ('S', 'I')][w];
    if sign > 0 { pos } else { neg }
}

/// nibabel's `io_orientation`: for each voxel axis, the world axis it runs
/// closest to and the sign; and whether any axis is tilted.
fn io_orientation(affine: &[[f64; 4]; 4]) -> ([(usize, i8); 3], bool) {
    // Columns normalised by the voxel sizes.
    let mut rs = [[0.0f64; 3]; 3];
    for c in 0..3 {
        let zoom = (0..3).map(|r| affine[r][c].powi(2)).sum::<f64>().sqrt();
        let zoom = if zoom == 0.0 { 1.0 } else { zoom };
        for r in 0..3 {
            rs[r][c] = affine[r][c] / zoom;
        }
    }
    let mut r = polar_rotation(rs);
    let mut oblique = false;
    let mut out = [(0usize, 1i8); 3];
    let mut used = [false; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let col = [r[0][c], r[1][c], r[2][c]];
        let mut best = None;
        for (w, v) in col.iter().enumerate() {
            if !used[w] && best.is_none_or(|b: usize| v.abs() > col[b].abs()) {
                best = Some(w);
            }
        }
        let w = best.expect("three world axes for three voxel axes");
        let v = col[w];
        oblique |= v.abs() < 1.0 - 1e-6;
        *o = (w, if v < 0.0 { -1 } else { 1 });
        used[w] = true;
        for x in r[w].iter_mut() {
            *x = 0.0;
        }
    }
    (out, oblique)
}

/// The rotation nearest to `m` (the orthogonal factor of its polar
/// decomposition), by Newton's iteration `X ← (X + X⁻ᵀ) / 2`; `m` itself
/// when it is singular.
fn polar_rotation(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut x = m;
    for _ in 0..100 {
        let Some(inv_t) = inverse_transpose(&x) else {
            return m;
        };
        let mut next = [[0.0; 3]; 3];
        let mut change = 0.0f64;
        for r in 0..3 {
            for c in 0..3 {
                next[r][c] = 0.5 * (x[r][c] + inv_t[r][c]);
                change = change.max((next[r][c] - x[r][c]).abs());
            }
        }
        x = next;
        if change < 1e-15 {
            break;
        }
    }
    x
}

/// `(m⁻¹)ᵀ`, or `None` when `m` is singular.
fn inverse_transpose(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    // Cofactors: (m⁻¹)ᵀ = cof(m) / det(m).
    let cof = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
    };
    let det = (0..3).map(|c| m[0][c] * cof(0, c)).sum::<f64>();
    if det.abs() < 1e-12 {
        return None;
    }
    let mut out = [[0.0; 3]; 3];
    for (r, row) in out.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = cof(r, c) / det;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every signed permutation of the axes (48): the volume read through
    /// its orientation is the internal array, and goes back voxel for
    /// voxel.
    #[test]
    fn all_48_axis_orders_and_flips_read_to_one_internal_array() {
        let internal = Array3::from_shape_fn((3, 4, 5), |(i, j, k)| (i * 100 + j * 10 + k) as u16);
        // The internal layout's affine (KiTS19's): axis 0 → -z, 1 → -y, 2 → -x.
        let world_of_internal = [(2usize, -1.0f64), (1, -1.0), (0, -1.0)];
        let mut seen = std::collections::HashSet::new();
        for perm in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            for flips in 0..8u8 {
                // File axis a holds internal axis perm[a], reversed when
                // bit a of `flips` is set.
                let mut v = internal.view().permuted_axes(perm);
                let mut affine = [[0.0; 4]; 4];
                affine[3][3] = 1.0;
                for a in 0..3 {
                    let flip = flips >> a & 1 == 1;
                    if flip {
                        v.invert_axis(Axis(a));
                    }
                    let (w, s) = world_of_internal[perm[a]];
                    affine[w][a] = if flip { -s } else { s } * (a + 1) as f64;
                }
                let file = v.as_standard_layout().into_owned();
                let o = Orientation::from_affine(&affine);
                assert!(!o.is_oblique());
                assert_eq!(o.to_internal(file.view()), internal, "{perm:?} {flips}");
                assert_eq!(o.to_file(internal.view()), file, "{perm:?} {flips}");
                seen.insert(o.codes());
            }
        }
        assert_eq!(seen.len(), 48);
    }

    /// Axis codes as nibabel's `aff2axcodes` gives them for these affines.
    #[test]
    fn codes_match_nibabel() {
        let diag = |a: f64, b: f64, c: f64| {
            [
                [a, 0.0, 0.0, 0.0],
                [0.0, b, 0.0, 0.0],
                [0.0, 0.0, c, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        };
        // nibabel: aff2axcodes(np.diag([-2, 2, 2, 1])) == ('L', 'A', 'S').
        assert_eq!(
            Orientation::from_affine(&diag(-2.0, 2.0, 2.0)).codes(),
            ['L', 'A', 'S']
        );
        // KiTS19's affine: [[0,0,-0.78,0],[0,-0.78,0,0],[-5,0,0,0]] → ('I', 'P', 'L').
        let mut kits = [[0.0; 4]; 4];
        kits[0][2] = -0.78;
        kits[1][1] = -0.78;
        kits[2][0] = -5.0;
        kits[3][3] = 1.0;
        let o = Orientation::from_affine(&kits);
        assert_eq!(o.codes(), INTERNAL_CODES);
        assert!(o.is_internal());
        // A 20° tilt about z: nearest axes, reported oblique. nibabel:
        // aff2axcodes of [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]] is
        // ('R', 'A', 'S').
        let (c, s) = (20f64.to_radians().cos(), 20f64.to_radians().sin());
        let tilted = [
            [c, -s, 0.0, 0.0],
            [s, c, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let o = Orientation::from_affine(&tilted);
        assert_eq!(o.codes(), ['R', 'A', 'S']);
        assert!(o.is_oblique());
    }
}
