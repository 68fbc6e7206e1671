//! The NIfTI-1 header model: the voxel datatypes, and [`Header`], a parsed
//! and validated header with the facts derived from it (shape, spacing,
//! affine as nibabel reports it), and the header of the same voxels in
//! another axis order ([`Header::reoriented`]).

use std::path::Path;

use nifti::NiftiHeader;

use super::read::{MAGIC_SINGLE, validate_fields};
use crate::error::{Result, VolumeError};

/// The voxel datatypes this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// unsigned 8-bit
    U8,
    /// signed 8-bit
    I8,
    /// unsigned 16-bit
    U16,
    /// signed 16-bit
    I16,
    /// unsigned 32-bit
    U32,
    /// signed 32-bit
    I32,
    /// unsigned 64-bit
    U64,
    /// signed 64-bit
    I64,
    /// 32-bit float
    F32,
    /// 64-bit float
    F64,
}

impl DType {
    /// The datatype for a NIfTI `datatype` code, if supported.
    pub fn from_code(code: i16) -> Option<DType> {
        Some(match code {
            2 => DType::U8,
            256 => DType::I8,
            512 => DType::U16,
            4 => DType::I16,
            768 => DType::U32,
            8 => DType::I32,
            1280 => DType::U64,
            1024 => DType::I64,
            16 => DType::F32,
            64 => DType::F64,
            _ => return None,
        })
    }

    /// The NIfTI `datatype` code.
    pub fn code(self) -> i16 {
        match self {
            DType::U8 => 2,
            DType::I8 => 256,
            DType::U16 => 512,
            DType::I16 => 4,
            DType::U32 => 768,
            DType::I32 => 8,
            DType::U64 => 1280,
            DType::I64 => 1024,
            DType::F32 => 16,
            DType::F64 => 64,
        }
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// The numpy-style name: `"uint8"`, `"int16"`, `"float32"`...
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::U32 => "uint32",
            DType::I32 => "int32",
            DType::U64 => "uint64",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// Whether the type holds integers.
    pub fn is_integer(self) -> bool {
        !matches!(self, DType::F32 | DType::F64)
    }
}

pub(super) fn datatype_name(code: i16) -> String {
    match code {
        0 => "unknown (0)".into(),
        1 => "binary (1)".into(),
        32 => "complex64 (32)".into(),
        128 => "RGB24 (128)".into(),
        1536 => "float128 (1536)".into(),
        1792 => "complex128 (1792)".into(),
        2048 => "complex256 (2048)".into(),
        2304 => "RGBA32 (2304)".into(),
        c => format!("code {c}"),
    }
}

/// A parsed and validated NIfTI-1 header, with the facts derived from it.
#[derive(Debug, Clone)]
pub struct Header {
    pub(super) raw: NiftiHeader,
    pub(super) dtype: DType,
    pub(super) shape: Vec<usize>,
    pub(super) extension_codes: Vec<i32>,
}

impl Header {
    /// Validates a header built in code the way a file's header is
    /// validated.
    pub fn from_nifti(raw: NiftiHeader) -> Result<Header> {
        let (dtype, shape) = validate_fields(Path::new("<header>"), &raw, false)?;
        let h = Header {
            raw,
            dtype,
            shape,
            extension_codes: Vec::new(),
        };
        h.check_affine(Path::new("<header>"))?;
        Ok(h)
    }

    /// Which field [`Header::affine`] comes from, in words.
    fn affine_source(&self) -> String {
        if self.raw.sform_code > 0 {
            format!("the sform (sform_code {})", self.raw.sform_code)
        } else if self.raw.qform_code > 0 {
            format!(
                "the qform (qform_code {}, quatern_b/c/d and pixdim)",
                self.raw.qform_code
            )
        } else {
            "pixdim (no sform or qform)".to_string()
        }
    }

    /// Checks the affine every reader places the voxels by
    /// ([`Header::affine`]): finite, and its three axes of non-zero length
    /// and not (nearly) in one plane, so that the axes and the voxel size
    /// can be told. The one check of a NIfTI geometry, made where a header
    /// is read.
    pub(super) fn check_affine(&self, path: &Path) -> Result<()> {
        let m = self.affine();
        let bad = |what: String| {
            Err(VolumeError::format(
                path,
                format!(
                    "{what} in the affine from {}: the voxels have no position in space",
                    self.affine_source()
                ),
            ))
        };
        if m.iter().take(3).flatten().any(|v| !v.is_finite()) {
            return bad("a value that is not a finite number".to_string());
        }
        let col = |c: usize| [m[0][c], m[1][c], m[2][c]];
        let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        let norms = [0, 1, 2].map(|c| norm(col(c)));
        if let Some(axis) = norms.iter().position(|&n| n == 0.0) {
            return bad(format!("a voxel size of 0 along axis {axis}"));
        }
        let (a, b, c) = (col(0), col(1), col(2));
        let det = a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
            + a[2] * (b[0] * c[1] - b[1] * c[0]);
        // |det| / (|a||b||c|) is the sine-like volume of the unit axes: 1
        // for right angles, 0 when they lie in one plane.
        if (det / (norms[0] * norms[1] * norms[2])).abs() < 1e-6 {
            return bad("axes in one plane (a singular matrix)".to_string());
        }
        Ok(())
    }

    /// A header laid out like KiTS19's files: dims `[slices, H, W]`, voxel
    /// size `spacing` = `[slice, row, column]` mm, and the KiTS19 orientation
    /// (slice index along -z, rows along -y, columns along -x), stored both
    /// as sform (code 2, aligned) and as the equivalent qform (code 1).
    pub fn kits_like(shape: [usize; 3], spacing: [f32; 3], dtype: DType) -> Result<Header> {
        if shape.iter().any(|&d| d == 0 || d > i16::MAX as usize)
            || spacing.iter().any(|s| !s.is_finite() || *s <= 0.0)
        {
            return Err(VolumeError::InvalidArgument(format!(
                "cannot make a header for shape {shape:?} and spacing {spacing:?}"
            )));
        }
        let [sz, sy, sx] = spacing;
        let mut descrip = b"kseg synthetic KiTS-like case".to_vec();
        descrip.resize(80, 0);
        let half = std::f32::consts::FRAC_1_SQRT_2;
        let raw = NiftiHeader {
            dim: [
                3,
                shape[0] as u16,
                shape[1] as u16,
                shape[2] as u16,
                1,
                1,
                1,
                1,
            ],
            datatype: dtype.code(),
            bitpix: (dtype.size() * 8) as i16,
            pixdim: [1.0, sz, sy, sx, 1.0, 1.0, 1.0, 1.0],
            vox_offset: 352.0,
            scl_slope: 1.0,
            scl_inter: 0.0,
            xyzt_units: 2,
            qform_code: 1,
            sform_code: 2,
            quatern_b: -half,
            quatern_c: 0.0,
            quatern_d: half,
            srow_x: [0.0, 0.0, -sx, 0.0],
            srow_y: [0.0, -sy, 0.0, 0.0],
            srow_z: [-sz, 0.0, 0.0, 0.0],
            descrip,
            magic: *MAGIC_SINGLE,
            endianness: nifti::Endianness::Little,
            ..NiftiHeader::default()
        };
        Header::from_nifti(raw)
    }

    /// The full header as parsed by the `nifti` crate.
    pub fn nifti(&self) -> &NiftiHeader {
        &self.raw
    }

    /// The shape in NIfTI order (`dim[1..=dim[0]]`).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The datatype stored on disk.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the file is big-endian.
    pub fn is_big_endian(&self) -> bool {
        self.raw.endianness == nifti::Endianness::Big
    }

    /// Voxel sizes (`pixdim[1..=ndim]`), in the file's units (KiTS19: mm).
    pub fn spacing(&self) -> Vec<f64> {
        (1..=self.shape.len())
            .map(|d| f64::from(self.raw.pixdim[d]))
            .collect()
    }

    /// The voxel size of the first three axes (`pixdim[1..=3]`, mm).
    pub fn spacing3(&self) -> [f64; 3] {
        [1, 2, 3].map(|d| f64::from(self.raw.pixdim[d]))
    }

    /// `(slope, intercept)` when the header asks for scaling. A slope of 0 (or
    /// a non-finite one) means "no scaling", as in nibabel; so does (1, 0).
    pub fn scaling(&self) -> Option<(f64, f64)> {
        let slope = f64::from(self.raw.scl_slope);
        let inter = f64::from(self.raw.scl_inter);
        if slope == 0.0 || !slope.is_finite() {
            return None;
        }
        let inter = if inter.is_finite() { inter } else { 0.0 };
        if slope == 1.0 && inter == 0.0 {
            None
        } else {
            Some((slope, inter))
        }
    }

    /// Codes of the header extensions (empty when there are none).
    pub fn extension_codes(&self) -> &[i32] {
        &self.extension_codes
    }

    /// The sform affine, when `sform_code > 0`.
    pub fn sform_affine(&self) -> Option<[[f64; 4]; 4]> {
        if self.raw.sform_code <= 0 {
            return None;
        }
        let r = |row: &[f32; 4]| row.map(f64::from);
        Some([
            r(&self.raw.srow_x),
            r(&self.raw.srow_y),
            r(&self.raw.srow_z),
            [0.0, 0.0, 0.0, 1.0],
        ])
    }

    /// The qform affine (from the quaternion, `pixdim` and `qoffset`), when
    /// `qform_code > 0`. Follows the NIfTI-1 standard and nibabel: a
    /// `pixdim[0]` other than -1 counts as `qfac = 1`.
    pub fn qform_affine(&self) -> Option<[[f64; 4]; 4]> {
        if self.raw.qform_code <= 0 {
            return None;
        }
        let h = &self.raw;
        let (b, c, d) = (
            f64::from(h.quatern_b),
            f64::from(h.quatern_c),
            f64::from(h.quatern_d),
        );
        // As nifti1_io (and so ITK): a 180° rotation stored with rounding
        // error (1 - |bcd|² below 1e-7) is renormalised with a = 0.
        let sq = 1.0 - (b * b + c * c + d * d);
        let (a, b, c, d) = if sq < 1e-7 {
            let norm = (b * b + c * c + d * d).sqrt();
            (0.0, b / norm, c / norm, d / norm)
        } else {
            (sq.sqrt(), b, c, d)
        };
        let rot = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if h.pixdim[0] == -1.0 { -1.0 } else { 1.0 };
        let zooms = [
            f64::from(h.pixdim[1]),
            f64::from(h.pixdim[2]),
            f64::from(h.pixdim[3]) * qfac,
        ];
        let offset = [
            f64::from(h.quatern_x),
            f64::from(h.quatern_y),
            f64::from(h.quatern_z),
        ];
        let mut m = [[0.0; 4]; 4];
        for r in 0..3 {
            for col in 0..3 {
                m[r][col] = rot[r][col] * zooms[col];
            }
            m[r][3] = offset[r];
        }
        m[3][3] = 1.0;
        Some(m)
    }

    /// Where the voxel grids of `self` and `other` part, in words, or
    /// `None` when they are the same grid: same 3D shape, and every corner
    /// voxel of the volume at the same place in the world ([`Header::affine`])
    /// within a hundredth of the smallest voxel size (float32 headers
    /// round; a shift, flip or another spacing does not pass).
    pub fn grid_mismatch(&self, other: &Header) -> Option<String> {
        let (a, b) = (self.shape(), other.shape());
        let get = |s: &[usize], i: usize| s.get(i).copied().unwrap_or(1);
        let (sa, sb) = (
            [get(a, 0), get(a, 1), get(a, 2)],
            [get(b, 0), get(b, 1), get(b, 2)],
        );
        if sa != sb {
            return Some(format!("shape {sa:?} vs {sb:?}"));
        }
        let (ma, mb) = (self.affine(), other.affine());
        let smallest = self
            .spacing()
            .iter()
            .chain(other.spacing().iter())
            .take(6)
            .map(|v| v.abs())
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let tol = if smallest.is_finite() {
            smallest / 100.0
        } else {
            1e-3
        };
        let mut worst = (0.0f64, [0usize; 3]);
        for corner in 0..8 {
            let ijk = [0, 1, 2].map(|d| {
                if corner >> d & 1 == 1 {
                    sa[d].saturating_sub(1)
                } else {
                    0
                }
            });
            let at = |m: &[[f64; 4]; 4]| {
                [0, 1, 2].map(|r| (0..3).map(|c| m[r][c] * ijk[c] as f64).sum::<f64>() + m[r][3])
            };
            let (pa, pb) = (at(&ma), at(&mb));
            let d = (0..3).map(|r| (pa[r] - pb[r]).powi(2)).sum::<f64>().sqrt();
            if d > worst.0 || d.is_nan() {
                worst = (d, ijk);
            }
        }
        (worst.0 > tol || worst.0.is_nan()).then(|| {
            format!(
                "voxel {:?} lies {:.3} mm apart in the two (tolerance {tol:.4} mm)",
                worst.1, worst.0
            )
        })
    }

    /// The voxel-to-world affine that nibabel's `img.affine` reports: the
    /// sform if `sform_code > 0`, else the qform if `qform_code > 0`, else the
    /// Analyze-style fallback (`pixdim` zooms, x flipped, origin at the
    /// centre).
    pub fn affine(&self) -> [[f64; 4]; 4] {
        if let Some(m) = self.sform_affine() {
            return m;
        }
        if let Some(m) = self.qform_affine() {
            return m;
        }
        let mut m = [[0.0; 4]; 4];
        for (axis, row) in m.iter_mut().take(3).enumerate() {
            let n = self.shape.get(axis).copied().unwrap_or(1) as f64;
            let mut zoom = if axis < self.shape.len() {
                f64::from(self.raw.pixdim[axis + 1])
            } else {
                1.0
            };
            if axis == 0 {
                zoom = -zoom;
            }
            row[axis] = zoom;
            row[3] = -(n - 1.0) / 2.0 * zoom;
        }
        m[3][3] = 1.0;
        m
    }

    /// The header of [`permute`](crate::orient::permute)`(data, perm, flip)`: dims, voxel sizes and an
    /// sform that keep every voxel where it is in the world (the qform is
    /// cleared, so the sform is the affine every reader uses).
    pub fn reoriented(&self, perm: [usize; 3], flip: [bool; 3]) -> Result<Header> {
        let a = self.affine();
        let shape = self.shape();
        let n = |d: usize| shape.get(d).copied().unwrap_or(1);
        let mut raw = self.nifti().clone();
        let mut cols = [[0.0f64; 3]; 3];
        let mut offset = [a[0][3], a[1][3], a[2][3]];
        for k in 0..3 {
            let p = perm[k];
            let sign = if flip[k] { -1.0 } else { 1.0 };
            if flip[k] {
                for (r, o) in offset.iter_mut().enumerate() {
                    *o += a[r][p] * (n(p) - 1) as f64;
                }
            }
            for r in 0..3 {
                cols[k][r] = sign * a[r][p];
            }
            raw.dim[k + 1] = n(p) as u16;
            raw.pixdim[k + 1] = cols[k].iter().map(|x| x * x).sum::<f64>().sqrt() as f32;
        }
        let row = |r: usize| {
            [
                cols[0][r] as f32,
                cols[1][r] as f32,
                cols[2][r] as f32,
                offset[r] as f32,
            ]
        };
        (raw.srow_x, raw.srow_y, raw.srow_z) = (row(0), row(1), row(2));
        raw.sform_code = raw.sform_code.max(1);
        raw.qform_code = 0;
        Header::from_nifti(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reoriented header keeps every voxel where it was in the world:
    /// checked voxel by voxel against the original affine.
    #[test]
    fn reoriented_headers_keep_voxels_in_place() {
        let h = Header::kits_like([4, 5, 6], [2.5, 0.8, 0.7], DType::I16).unwrap();
        let a = h.affine();
        let world = |m: &[[f64; 4]; 4], i: [usize; 3]| -> [f64; 3] {
            [0, 1, 2].map(|r| (0..3).map(|c| m[r][c] * i[c] as f64).sum::<f64>() + m[r][3])
        };
        for (perm, flip) in [
            ([2, 1, 0], [true, true, true]),
            ([1, 2, 0], [false, true, false]),
        ] {
            let r = h.reoriented(perm, flip).unwrap();
            let b = r.affine();
            let n = [4, 5, 6];
            for i in [[0, 0, 0], [3, 4, 5], [1, 2, 3]] {
                // The voxel `i` of the original is at index j of the copy.
                let mut j = [0; 3];
                for k in 0..3 {
                    let v = i[perm[k]];
                    j[k] = if flip[k] { n[perm[k]] - 1 - v } else { v };
                }
                let (p, q) = (world(&a, i), world(&b, j));
                for d in 0..3 {
                    assert!(
                        (p[d] - q[d]).abs() < 1e-4,
                        "{perm:?} {flip:?} {i:?}: {p:?} vs {q:?}"
                    );
                }
            }
            assert_eq!(r.shape(), perm.map(|p| n[p]));
        }
    }
}
