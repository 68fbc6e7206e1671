//! Writing NIfTI-1 files with a reference header's geometry, through a
//! temporary file and a rename.

use std::path::{Path, PathBuf};

use ndarray::ArrayView3;

use super::Header;
use crate::error::{Result, VolumeError};

/// Element types [`write_volume`] can store.
pub trait Storable: nifti::DataElement + bytemuck::Pod + Copy {}
impl Storable for u8 {}
impl Storable for i16 {}
impl Storable for f32 {}

/// Checks that [`write_volume`] can write `path`: a name ending in `.nii`
/// or `.nii.gz`, not a folder, in a folder that exists. Commands call it
/// before their work, so a bad output path fails at once.
pub fn check_output_path(path: &Path) -> Result<()> {
    let lower = path.to_string_lossy().to_ascii_lowercase();
    if !(lower.ends_with(".nii") || lower.ends_with(".nii.gz")) {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: a NIfTI output's name must end in .nii or .nii.gz",
            path.display()
        )));
    }
    if path.is_dir() {
        return Err(VolumeError::InvalidArgument(format!(
            "{} is a folder; a file path is needed",
            path.display()
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(VolumeError::missing(
            parent,
            "no such folder (the output's folder must exist)",
        ));
    }
    Ok(())
}

/// Writes `data` (C order, `[i, j, k]`) with the geometry of `reference`:
/// dims, pixdim, qform and sform (codes and parameters), units, description
/// and intent are copied, so nibabel and ITK compute the same affine; the
/// datatype is `T`'s, with no scaling and no extensions. `.nii.gz` paths are
/// gzipped.
///
/// The file is written to a temporary file beside `path` and renamed, so a
/// failed write never leaves a partial file behind. `path` must end in
/// `.nii` or `.nii.gz` (the format follows the name; nothing is appended).
pub fn write_volume<T: Storable>(
    path: impl AsRef<Path>,
    data: ArrayView3<T>,
    reference: &Header,
) -> Result<()> {
    let path = path.as_ref();
    check_output_path(path)?;
    let want = data.shape();
    let ref_shape = reference.shape();
    let get = |i: usize| ref_shape.get(i).copied().unwrap_or(1);
    let ref3 = [get(0), get(1), get(2)];
    if want != ref3 || (ref_shape.len() > 3 && ref_shape[3..].iter().any(|&d| d != 1)) {
        return Err(VolumeError::ShapeMismatch {
            path: path.to_path_buf(),
            got: want.to_vec(),
            other: PathBuf::from("<reference header>"),
            expected: ref_shape.to_vec(),
        });
    }
    let mut header = reference.raw.clone();
    header.dim = [
        3,
        want[0] as u16,
        want[1] as u16,
        want[2] as u16,
        1,
        1,
        1,
        1,
    ];
    header.cal_min = 0.0;
    header.cal_max = 0.0;
    write_with(path, &data, header)
}

/// Checks that every dimension of `data` fits a NIfTI-1 header, then
/// writes it with `header` (little-endian, `.gz` compressed by name)
/// through the one writer: what [`write_volume`] and [`write_channels`]
/// share.
fn write_with<A, S, D>(
    path: &Path,
    data: &ndarray::ArrayBase<S, D>,
    mut header: nifti::NiftiHeader,
) -> Result<()>
where
    S: ndarray::Data<Elem = A>,
    A: nifti::DataElement + bytemuck::Pod,
    D: ndarray::Dimension + ndarray::RemoveAxis,
{
    for (d, &n) in data.shape().iter().enumerate() {
        if n > i16::MAX as usize {
            return Err(VolumeError::InvalidArgument(format!(
                "dimension {d} of size {n} does not fit a NIfTI-1 header"
            )));
        }
    }
    header.endianness = nifti::Endianness::Little;
    header.sizeof_hdr = 348;
    crate::fs::write_atomic(path, |tmp| {
        let gz = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
        nifti::writer::WriterOptions::new(tmp)
            .reference_header(&header)
            .compress(gz)
            .write_nifti(data)
            .map_err(|e| VolumeError::format(path, format!("cannot write: {e}")))
    })
}

/// Writes `data` `[i, j, k, c]` (float32) as a 4D NIfTI whose first three
/// axes have the geometry of `reference` (its affine, units, description)
/// and whose fourth holds `c` channels (class probabilities: the fourth
/// dimension, pixdim 1), through the one writer like [`write_volume`].
pub fn write_channels(
    path: impl AsRef<Path>,
    data: ndarray::ArrayView4<f32>,
    reference: &Header,
) -> Result<()> {
    let path = path.as_ref();
    check_output_path(path)?;
    let want = data.shape();
    let ref_shape = reference.shape();
    let get = |i: usize| ref_shape.get(i).copied().unwrap_or(1);
    if want[..3] != [get(0), get(1), get(2)] {
        return Err(VolumeError::ShapeMismatch {
            path: path.to_path_buf(),
            got: want.to_vec(),
            other: PathBuf::from("<reference header>"),
            expected: ref_shape.to_vec(),
        });
    }
    let mut header = reference.raw.clone();
    header.dim = [
        4,
        want[0] as u16,
        want[1] as u16,
        want[2] as u16,
        want[3] as u16,
        1,
        1,
        1,
    ];
    header.pixdim[4] = 1.0;
    header.scl_slope = 1.0;
    header.scl_inter = 0.0;
    header.cal_min = 0.0;
    header.cal_max = 1.0;
    write_with(path, &data, header)
}
