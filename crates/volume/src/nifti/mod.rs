//! Reading and writing NIfTI-1 files.
//!
//! Headers are parsed by the [`nifti`] crate after a strict pre-check of our
//! own (size, magic, dims, datatype, offsets), so that malformed or hostile
//! files give an error that names the file and the problem instead of a panic
//! or an unbounded allocation. Voxel data is decoded here, in one pass, from
//! any supported datatype and byte order, with `scl_slope`/`scl_inter`
//! applied.
//!
//! # What is read
//! - NIfTI-1 single files (`.nii`, `.nii.gz`) and header/image pairs
//!   (`.hdr` + `.img`, either part optionally gzipped), little- or big-endian.
//! - Datatypes uint8, int8, uint16, int16, uint32, int32, uint64, int64,
//!   float32, float64. Complex, RGB and float128 data are refused.
//! - Any dimensionality 1 to 7 through [`read_image`]; [`read_volume`] and
//!   [`read_labels`] want 3D (trailing dimensions of size 1 are dropped, fewer
//!   than three dimensions are padded with 1) and refuse true 4D data.
//! - NIfTI-2 files are detected and refused with a clear error: KiTS19 and
//!   the tools around it write NIfTI-1, and refusing is safer than a half
//!   reader. Analyze 7.5 headers (no magic) are refused likewise.
//!
//! # Array order
//! Arrays are indexed in NIfTI order `[i, j, k]` (for KiTS19 that is
//! `[slice, row, column]`), the same indices nibabel's `get_fdata()` uses.
//! [`read_image`] returns a Fortran-ordered view of the file's bytes;
//! [`read_volume`] and [`read_labels`] return C-ordered arrays so that one
//! axial slice is contiguous.

//!
//! # Files
//! `header.rs` the header model ([`DType`], [`Header`]); `read.rs` the
//! strict reader; `write.rs` the writer; `stats.rs` voxel statistics in one
//! pass over the stored voxels.

use ndarray::{Array3, ArrayD};

mod header;
mod read;
pub mod stats;
mod write;

/// The `nifti` crate's raw header, which [`Header::nifti`] exposes.
pub use ::nifti::NiftiHeader;
pub use header::{DType, Header};
#[allow(unused_imports)]
pub(crate) use read::{
    F32be, F32le, F64be, F64le, I8v, I16be, I16le, I32be, I32le, I64be, I64le, U8v, U16be, U16le,
    U32be, U32le, U64be, U64le,
};
pub use read::{
    Sample, read_header, read_image, read_labels, read_labels_canonical, read_volume,
    read_volume_canonical,
};
pub(crate) use read::{Voxel, read_raw, with_voxel};
pub use write::{Storable, check_output_path, write_channels, write_volume};

/// An N-dimensional image as stored in a file, values scaled.
///
/// `data` is indexed in NIfTI order and laid out in Fortran order (the
/// file's own), so it costs no copy.
#[derive(Debug, Clone)]
pub struct NiftiImage {
    /// The header.
    pub header: Header,
    /// Voxel values after scaling, in NIfTI index order.
    pub data: ArrayD<f64>,
}

/// A 3D volume in C order (`[i, j, k]`, `k` fastest; for KiTS19 `[slice, row,
/// column]`), with the header it came from.
#[derive(Debug, Clone)]
pub struct Volume<T> {
    /// The header.
    pub header: Header,
    /// Voxel values, `[slices, H, W]` for KiTS19.
    pub data: Array3<T>,
}

impl<T> Volume<T> {
    /// The shape `[i, j, k]`.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[0], s[1], s[2]]
    }
}
