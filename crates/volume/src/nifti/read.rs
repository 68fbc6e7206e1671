//! The strict NIfTI-1 reader: a pre-check of the header (size, magic,
//! dims, datatype, offsets) before the `nifti` crate parses it, and voxel
//! decoding from every datatype and byte order in one pass, optionally
//! into the canonical layout ([`crate::orient`]).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use kseg_metrics::LabelSet;
use ndarray::{Array3, ArrayD, IxDyn, ShapeBuilder};
use nifti::NiftiHeader;

use super::header::datatype_name;
use super::{DType, Header, NiftiImage, Volume};
use crate::error::{Result, VolumeError};
use crate::layout::fortran_to_c_oriented;
use crate::orient::Orientation;

/// Size of a NIfTI-1 header on disk.
const HEADER_SIZE: usize = 348;
pub(super) const MAGIC_SINGLE: &[u8; 4] = b"n+1\0";
const MAGIC_PAIR: &[u8; 4] = b"ni1\0";

/// The raw bytes of a file's voxels and its validated header.
pub(crate) struct Raw {
    pub(crate) header: Header,
    pub(crate) bytes: Vec<u8>,
}

/// Opens a file, gunzipping it when it starts with the gzip magic. Also
/// returns the file's length when it is not gzipped (its voxel data can then
/// be checked against the header before anything is read).
fn open_maybe_gz(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    let mut file = File::open(path).map_err(|e| VolumeError::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = read_full(&mut file, &mut magic).map_err(|e| VolumeError::io(path, e))?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| VolumeError::io(path, e))?;
    let len = file.metadata().map_err(|e| VolumeError::io(path, e))?.len();
    let reader = BufReader::with_capacity(1 << 20, file);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok((Box::new(flate2::bufread::MultiGzDecoder::new(reader)), None))
    } else {
        Ok((Box::new(reader), Some(len)))
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Maps a read error to a message: gzip problems are data problems.
fn read_error(path: &Path, e: std::io::Error, what: &str) -> VolumeError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidInput => {
            VolumeError::format(
                path,
                format!("truncated or corrupt gzip stream while reading {what}: {e}"),
            )
        }
        std::io::ErrorKind::InvalidData => VolumeError::format(
            path,
            format!("corrupt gzip stream while reading {what}: {e}"),
        ),
        _ => VolumeError::io(path, e),
    }
}

/// Where the header and the voxels of `path` live.
fn file_pair(path: &Path) -> Result<(PathBuf, PathBuf, bool)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let with_suffix = |from: &str, to: &[&str]| -> Result<PathBuf> {
        let stem = &name[..name.len() - from.len()];
        for t in to {
            let p = path.with_file_name(format!("{stem}{t}"));
            if p.exists() {
                return Ok(p);
            }
        }
        Err(VolumeError::missing(
            path,
            format!("the other half of the pair ({stem}{})", to[0]),
        ))
    };
    for ext in [".hdr", ".hdr.gz"] {
        if lower.ends_with(ext) {
            let img = with_suffix(ext, &[".img", ".img.gz"])?;
            return Ok((path.to_path_buf(), img, true));
        }
    }
    for ext in [".img", ".img.gz"] {
        if lower.ends_with(ext) {
            let hdr = with_suffix(ext, &[".hdr", ".hdr.gz"])?;
            return Ok((hdr, path.to_path_buf(), true));
        }
    }
    // metadata, not exists(): a symbolic link loop or a folder that
    // cannot be searched is named as what it is, not as a missing file.
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VolumeError::missing(path, "no such file"));
        }
        Err(e) => return Err(VolumeError::io(path, e)),
    }
    Ok((path.to_path_buf(), path.to_path_buf(), false))
}

/// Reads and validates the 348-byte header from `r`.
fn parse_header(
    path: &Path,
    r: &mut dyn Read,
    pair: bool,
) -> Result<(NiftiHeader, DType, Vec<usize>)> {
    let mut buf = [0u8; HEADER_SIZE];
    let n = read_full(r, &mut buf).map_err(|e| read_error(path, e, "the header"))?;
    if n < HEADER_SIZE {
        return Err(VolumeError::format(
            path,
            format!("file ends after {n} bytes; a NIfTI-1 header needs {HEADER_SIZE}"),
        ));
    }
    let sizeof_le = i32::from_le_bytes(buf[0..4].try_into().unwrap());
    let sizeof_be = i32::from_be_bytes(buf[0..4].try_into().unwrap());
    if sizeof_le == 540 || sizeof_be == 540 {
        return Err(VolumeError::unsupported(
            path,
            "NIfTI-2 file (540-byte header); kseg reads NIfTI-1 only: convert it, e.g. \
             nibabel.save(nibabel.Nifti1Image(img.dataobj, img.affine), 'out.nii.gz')",
        ));
    }
    if sizeof_le != 348 && sizeof_be != 348 {
        return Err(VolumeError::format(
            path,
            format!(
                "not a NIfTI-1 file: sizeof_hdr is {sizeof_le} (expected 348); wrong magic or garbage header"
            ),
        ));
    }
    let magic = &buf[344..348];
    if magic != MAGIC_SINGLE && magic != MAGIC_PAIR {
        return Err(VolumeError::format(
            path,
            format!(
                "wrong magic {:?} (expected \"n+1\" or \"ni1\"); an Analyze 7.5 header is not supported",
                String::from_utf8_lossy(magic).trim_end_matches('\0')
            ),
        ));
    }
    if !pair && magic == MAGIC_PAIR {
        return Err(VolumeError::format(
            path,
            "magic \"ni1\" says the voxels are in a separate .img file; open the .hdr file",
        ));
    }
    // sizeof_hdr fixes the byte order; check dim[0] in it before the nifti
    // crate guesses the order from dim[0] itself.
    let dim0 = if sizeof_le == 348 {
        i16::from_le_bytes([buf[40], buf[41]])
    } else {
        i16::from_be_bytes([buf[40], buf[41]])
    };
    if !(1..=7).contains(&dim0) {
        return Err(VolumeError::format(
            path,
            format!("dim[0] = {dim0}: the number of dimensions must be 1 to 7"),
        ));
    }
    let raw = NiftiHeader::from_reader(&buf[..])
        .map_err(|e| VolumeError::format(path, format!("bad header: {e}")))?;
    let (dtype, shape) = validate_fields(path, &raw, pair)?;
    let header = Header {
        raw,
        dtype,
        shape,
        extension_codes: Vec::new(),
    };
    header.check_affine(path)?;
    Ok((header.raw, header.dtype, header.shape))
}

/// Checks the fields a reader relies on: dims, datatype, bitpix, vox_offset.
pub(super) fn validate_fields(
    path: &Path,
    raw: &NiftiHeader,
    pair: bool,
) -> Result<(DType, Vec<usize>)> {
    let ndim = raw.dim[0] as i16;
    if !(1..=7).contains(&ndim) {
        return Err(VolumeError::format(
            path,
            format!("dim[0] = {ndim}: the number of dimensions must be 1 to 7"),
        ));
    }
    let mut shape = Vec::with_capacity(ndim as usize);
    for d in 1..=ndim as usize {
        let v = raw.dim[d] as i16;
        if v < 1 {
            return Err(VolumeError::format(
                path,
                format!("dim[{d}] = {v}: every dimension must be at least 1"),
            ));
        }
        shape.push(v as usize);
    }
    let dtype = DType::from_code(raw.datatype).ok_or_else(|| {
        VolumeError::unsupported(path, format!("datatype {}", datatype_name(raw.datatype)))
    })?;
    if raw.bitpix as usize != dtype.size() * 8 {
        return Err(VolumeError::format(
            path,
            format!(
                "bitpix {} does not match datatype {} ({} bits)",
                raw.bitpix,
                dtype.name(),
                dtype.size() * 8
            ),
        ));
    }
    let vo = raw.vox_offset;
    if !vo.is_finite() || vo < 0.0 || vo.fract() != 0.0 || vo > 1e9 {
        return Err(VolumeError::format(path, format!("bad vox_offset {vo}")));
    }
    if !pair && (vo as usize) < HEADER_SIZE {
        return Err(VolumeError::format(
            path,
            format!("vox_offset {vo} points inside the 348-byte header"),
        ));
    }
    // The transform codes are 0 (unknown) to 4 (MNI-152); another value
    // is no NIfTI-1 code (nibabel drops such a transform), and using it
    // anyway would place the voxels by a guess.
    for (name, code) in [
        ("qform_code", raw.qform_code),
        ("sform_code", raw.sform_code),
    ] {
        if !(0..=4).contains(&code) {
            return Err(VolumeError::format(
                path,
                format!("{name} {code} is not a NIfTI-1 transform code (0 to 4)"),
            ));
        }
    }
    // A slope that asks for scaling needs a finite intercept (nibabel
    // refuses the file too); a slope of 0 or a non-finite one means "no
    // scaling" (NIfTI-1, nibabel).
    let (slope, inter) = (raw.scl_slope, raw.scl_inter);
    if slope != 0.0 && slope.is_finite() && !inter.is_finite() {
        return Err(VolumeError::format(
            path,
            format!(
                "scl_slope {slope} with scl_inter {inter}: the intercept must be a finite number"
            ),
        ));
    }
    Ok((dtype, shape))
}

/// Reads the extension block between the header and `vox_offset` and returns
/// the extension codes.
fn parse_extensions(path: &Path, bytes: &[u8], big_endian: bool) -> Result<Vec<i32>> {
    // bytes[0..4] is the "extender": byte 0 != 0 means extensions follow.
    if bytes.len() < 4 || bytes[0] == 0 {
        return Ok(Vec::new());
    }
    let int = |b: &[u8]| {
        let a: [u8; 4] = b.try_into().unwrap();
        if big_endian {
            i32::from_be_bytes(a)
        } else {
            i32::from_le_bytes(a)
        }
    };
    let mut codes = Vec::new();
    let mut at = 4;
    while at + 8 <= bytes.len() {
        let esize = int(&bytes[at..at + 4]);
        let ecode = int(&bytes[at + 4..at + 8]);
        if esize < 16 || esize % 16 != 0 || at + esize as usize > bytes.len() {
            return Err(VolumeError::format(
                path,
                format!(
                    "header extension {} at byte {} has size {esize}: must be a multiple of 16, at least 16, within vox_offset",
                    codes.len(),
                    HEADER_SIZE + at
                ),
            ));
        }
        codes.push(ecode);
        at += esize as usize;
    }
    Ok(codes)
}

/// Reads the header (validated) without the voxels.
pub fn read_header(path: impl AsRef<Path>) -> Result<Header> {
    let path = path.as_ref();
    let (hdr_path, _, pair) = file_pair(path)?;
    let (mut r, _) = open_maybe_gz(&hdr_path)?;
    let (raw, dtype, shape) = parse_header(&hdr_path, &mut r, pair)?;
    let mut extension_codes = Vec::new();
    if !pair {
        let len = raw.vox_offset as usize - HEADER_SIZE;
        let mut ext = vec![0u8; len.min(1 << 24)];
        let n = read_full(&mut r, &mut ext).map_err(|e| read_error(&hdr_path, e, "extensions"))?;
        ext.truncate(n);
        extension_codes =
            parse_extensions(&hdr_path, &ext, raw.endianness == nifti::Endianness::Big)?;
    }
    Ok(Header {
        raw,
        dtype,
        shape,
        extension_codes,
    })
}

/// A file opened and positioned at its first voxel, header validated.
struct DataStream {
    header: Header,
    reader: Box<dyn Read + Send>,
    /// The file holding the voxels (the `.img` of a pair).
    path: PathBuf,
    nbytes: usize,
}

impl DataStream {
    /// Opens `path` for a reader that decodes every voxel into `decoded`
    /// bytes (0: none): the memory that implies (the extension block, the
    /// stored voxels and their decoded copy) is checked against the limit
    /// ([`crate::limits`]) before anything is read past the header.
    fn open(path: &Path, decoded: usize) -> Result<DataStream> {
        let (hdr_path, img_path, pair) = file_pair(path)?;
        let (mut r, mut plain_len) = open_maybe_gz(&hdr_path)?;
        let (raw, dtype, shape) = parse_header(&hdr_path, &mut r, pair)?;
        let big = raw.endianness == nifti::Endianness::Big;
        let nbytes = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
        let Some(nbytes) = nbytes else {
            return Err(VolumeError::format(
                &hdr_path,
                format!(
                    "dims {shape:?} of {} describe more bytes than fit in memory",
                    dtype.name()
                ),
            ));
        };
        let vox_offset = raw.vox_offset as usize;
        let size_mismatch = |path: &Path, have: usize| {
            VolumeError::format(
                path,
                format!(
                    "file holds {have} bytes of voxel data, but dims {shape:?} of {} need {nbytes}",
                    dtype.name()
                ),
            )
        };
        // A plain single file's length tells at once whether the header
        // describes it (before the memory limit, which a lying header
        // would also fail, is asked).
        if !pair
            && let Some(len) = plain_len
            && len as usize >= vox_offset
            && len as usize - vox_offset != nbytes
        {
            return Err(size_mismatch(&hdr_path, len as usize - vox_offset));
        }
        let ext_len = if pair { 0 } else { vox_offset - HEADER_SIZE };
        let voxels: usize = shape.iter().product();
        let implied = crate::limits::bytes_of(&[voxels], decoded)
            .and_then(|d| d.checked_add(nbytes as u128 + ext_len as u128));
        crate::limits::check_bytes(
            &format!(
                "reading dims {shape:?} of {} (and vox_offset {vox_offset})",
                dtype.name()
            ),
            implied,
        )
        .map_err(|e| VolumeError::too_large(&hdr_path, e))?;
        let mut extension_codes = Vec::new();
        let data_path;
        if pair {
            data_path = img_path;
            (r, plain_len) = open_maybe_gz(&data_path)?;
            // Skip to vox_offset in the .img file.
            let skipped =
                std::io::copy(&mut (&mut r).take(vox_offset as u64), &mut std::io::sink())
                    .map_err(|e| read_error(&data_path, e, "the voxels"))?;
            if skipped < vox_offset as u64 {
                return Err(VolumeError::format(
                    &data_path,
                    format!("file ends at byte {skipped}, before vox_offset {vox_offset}"),
                ));
            }
        } else {
            data_path = hdr_path.clone();
            let ends_at = |n: usize| {
                VolumeError::format(
                    &hdr_path,
                    format!(
                        "file ends at byte {}, before vox_offset {vox_offset}",
                        HEADER_SIZE + n
                    ),
                )
            };
            // A plain file shorter than vox_offset: refused before the
            // extension block is read (or memory for it taken).
            if let Some(len) = plain_len
                && (len as usize) < vox_offset
            {
                return Err(ends_at((len as usize).saturating_sub(HEADER_SIZE)));
            }
            // The block grows only as data arrives (a gzip stream may end
            // early), and never past vox_offset.
            let mut ext = Vec::new();
            (&mut r)
                .take(ext_len as u64)
                .read_to_end(&mut ext)
                .map_err(|e| read_error(&hdr_path, e, "extensions"))?;
            let n = ext.len();
            if n < ext_len {
                return Err(ends_at(n));
            }
            extension_codes = parse_extensions(&hdr_path, &ext, big)?;
        }
        // Cheap check for plain files before allocating: the size must match.
        if let Some(len) = plain_len {
            let have = (len as usize).saturating_sub(vox_offset);
            if have != nbytes {
                return Err(size_mismatch(&data_path, have));
            }
        }
        Ok(DataStream {
            header: Header {
                raw,
                dtype,
                shape,
                extension_codes,
            },
            reader: r,
            path: data_path,
            nbytes,
        })
    }

    fn truncated(&self, got: usize) -> VolumeError {
        VolumeError::format(
            &self.path,
            format!(
                "truncated: {got} of {} bytes of voxel data (dims {:?} of {})",
                self.nbytes,
                self.header.shape,
                self.header.dtype.name()
            ),
        )
    }

    /// Checks that nothing follows the voxels.
    fn finish(mut self) -> Result<Header> {
        let mut extra = [0u8; 1];
        if read_full(&mut self.reader, &mut extra)
            .map_err(|e| read_error(&self.path, e, "the voxels"))?
            > 0
        {
            return Err(VolumeError::format(
                &self.path,
                format!(
                    "more voxel data than dims {:?} of {} describe ({} bytes)",
                    self.header.shape,
                    self.header.dtype.name(),
                    self.nbytes
                ),
            ));
        }
        Ok(self.header)
    }
}

/// The stored voxels of `path`, for a reader that then decodes each voxel
/// into `decoded` bytes (checked with the voxels against the memory limit).
pub(crate) fn read_raw(path: &Path, decoded: usize) -> Result<Raw> {
    let mut s = DataStream::open(path, decoded)?;
    let nbytes = s.nbytes;
    let mut bytes = Vec::new();
    // Within the limit (checked by `open`): reserved whole, so the read
    // never grows the buffer (an address-space cap gives this error, not
    // an abort), and reading stops at what the header describes.
    bytes
        .try_reserve_exact(nbytes)
        .map_err(|_| VolumeError::format(&s.path, format!("cannot allocate {nbytes} bytes")))?;
    (&mut s.reader)
        .take(nbytes as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(&s.path, e, "the voxels"))?;
    if bytes.len() < nbytes {
        return Err(s.truncated(bytes.len()));
    }
    Ok(Raw {
        header: s.finish()?,
        bytes,
    })
}

/// Reads voxel `i` of a byte buffer as f64: one zero-sized type per datatype
/// and byte order, so the decoding loops are monomorphised and inlined.
/// A stored voxel type: the value of voxel `i` of the raw bytes.
pub(crate) trait Voxel: Send + Sync {
    fn at(bytes: &[u8], i: usize) -> f64;
}

macro_rules! voxel_type {
    ($name:ident, $ty:ty, $from:ident) => {
        pub(crate) struct $name;
        impl Voxel for $name {
            #[inline(always)]
            fn at(bytes: &[u8], i: usize) -> f64 {
                const N: usize = std::mem::size_of::<$ty>();
                <$ty>::$from(bytes[i * N..i * N + N].try_into().unwrap()) as f64
            }
        }
    };
}
voxel_type!(U8v, u8, from_le_bytes);
voxel_type!(I8v, i8, from_le_bytes);
voxel_type!(U16le, u16, from_le_bytes);
voxel_type!(U16be, u16, from_be_bytes);
voxel_type!(I16le, i16, from_le_bytes);
voxel_type!(I16be, i16, from_be_bytes);
voxel_type!(U32le, u32, from_le_bytes);
voxel_type!(U32be, u32, from_be_bytes);
voxel_type!(I32le, i32, from_le_bytes);
voxel_type!(I32be, i32, from_be_bytes);
voxel_type!(U64le, u64, from_le_bytes);
voxel_type!(U64be, u64, from_be_bytes);
voxel_type!(I64le, i64, from_le_bytes);
voxel_type!(I64be, i64, from_be_bytes);
voxel_type!(F32le, f32, from_le_bytes);
voxel_type!(F32be, f32, from_be_bytes);
voxel_type!(F64le, f64, from_le_bytes);
voxel_type!(F64be, f64, from_be_bytes);

/// Calls `$f::<V, _, _>($args)` with the [`Voxel`] type of a datatype and
/// byte order: the one place that maps file formats to decoders.
macro_rules! with_voxel {
    ($dtype:expr, $big:expr, $f:ident, ($($arg:expr),*)) => {{
        use DType::*;
        match ($dtype, $big) {
            (U8, _) => $f::<U8v, _, _>($($arg),*),
            (I8, _) => $f::<I8v, _, _>($($arg),*),
            (U16, false) => $f::<U16le, _, _>($($arg),*),
            (U16, true) => $f::<U16be, _, _>($($arg),*),
            (I16, false) => $f::<I16le, _, _>($($arg),*),
            (I16, true) => $f::<I16be, _, _>($($arg),*),
            (U32, false) => $f::<U32le, _, _>($($arg),*),
            (U32, true) => $f::<U32be, _, _>($($arg),*),
            (I32, false) => $f::<I32le, _, _>($($arg),*),
            (I32, true) => $f::<I32be, _, _>($($arg),*),
            (U64, false) => $f::<U64le, _, _>($($arg),*),
            (U64, true) => $f::<U64be, _, _>($($arg),*),
            (I64, false) => $f::<I64le, _, _>($($arg),*),
            (I64, true) => $f::<I64be, _, _>($($arg),*),
            (F32, false) => $f::<F32le, _, _>($($arg),*),
            (F32, true) => $f::<F32be, _, _>($($arg),*),
            (F64, false) => $f::<F64le, _, _>($($arg),*),
            (F64, true) => $f::<F64be, _, _>($($arg),*),
        }
    }};
}
pub(crate) use with_voxel;

/// A float type voxels decode into.
pub trait Sample: Copy + Send + Sync + Default + 'static {
    /// `v` converted (saturating for integers).
    fn from_f64(v: f64) -> Self;
}
impl Sample for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl Sample for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Decodes raw voxels into floats in file (Fortran) order, applying
/// `scaling` in f64; parallel over chunks.
fn decode<T: Sample>(
    bytes: &[u8],
    dtype: DType,
    big: bool,
    scaling: Option<(f64, f64)>,
    out: &mut [T],
) {
    let (slope, inter) = scaling.unwrap_or((1.0, 0.0));
    let map = move |v: f64| T::from_f64(v * slope + inter);
    with_voxel!(dtype, big, fortran_into, (bytes, out, map))
}

fn fortran_into<V, T, F>(bytes: &[u8], out: &mut [T], map: F)
where
    V: Voxel,
    T: Send,
    F: Fn(f64) -> T + Sync + Copy,
{
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        for (j, o) in out.iter_mut().enumerate() {
            *o = map(V::at(bytes, c * CHUNK + j));
        }
    });
}

/// Reads any NIfTI-1 image (1 to 7 dimensions) as f64, scaled.
///
/// # Shapes
/// `data.shape() == header.shape()`, in NIfTI order, Fortran layout.
pub fn read_image(path: impl AsRef<Path>) -> Result<NiftiImage> {
    let path = path.as_ref();
    let raw = read_raw(path, std::mem::size_of::<f64>())?;
    let n: usize = raw.header.shape.iter().product();
    let mut data = vec![0f64; n];
    decode(
        &raw.bytes,
        raw.header.dtype,
        raw.header.is_big_endian(),
        raw.header.scaling(),
        &mut data,
    );
    let arr = ArrayD::from_shape_vec(IxDyn(&raw.header.shape).f(), data)
        .expect("shape and length agree by construction");
    Ok(NiftiImage {
        header: raw.header,
        data: arr,
    })
}

/// The 3D shape of a header, or an error for 1D and 2D images and true
/// 4D+ data.
fn shape3(path: &Path, header: &Header) -> Result<[usize; 3]> {
    let s = header.shape();
    if s.len() < 3 {
        // Read as 3D, a 96×96 image would be 96 slices of 96×1.
        return Err(VolumeError::unsupported(
            path,
            format!(
                "{}D image of shape {s:?}; kseg segments 3D volumes (store a single slice as a 3D volume of shape [1, H, W])",
                s.len()
            ),
        ));
    }
    if s.len() > 3 && s[3..].iter().any(|&d| d != 1) {
        return Err(VolumeError::unsupported(
            path,
            format!(
                "{}D volume of shape {s:?}; a 3D volume is needed (read_image reads N-D data)",
                s.len()
            ),
        ));
    }
    let get = |i: usize| s.get(i).copied().unwrap_or(1);
    Ok([get(0), get(1), get(2)])
}

/// Reads a 3D volume as f32 (scaled; NaN kept) in C order.
///
/// # Shapes
/// `data` is `[i, j, k]` = NIfTI `dim[1..=3]`; for KiTS19 `[slices, H, W]`.
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume<f32>> {
    read_volume_in(path.as_ref(), false).map(|(v, _)| v)
}

/// [`read_volume`] brought to the canonical layout ([`crate::orient`]:
/// slices first, KiTS19's orientation) in the same pass as the decoding,
/// with the orientation it came from. The header is the file's.
pub fn read_volume_canonical(path: impl AsRef<Path>) -> Result<(Volume<f32>, Orientation)> {
    read_volume_in(path.as_ref(), true)
}

fn read_volume_in(path: &Path, canonical: bool) -> Result<(Volume<f32>, Orientation)> {
    let raw = read_raw(path, std::mem::size_of::<f32>())?;
    let shape = shape3(path, &raw.header)?;
    let (o, layout) = layout_of(&raw.header, canonical);
    let data = match raw.header.scaling() {
        None => decode_to_c(&raw, shape, layout, |v| v as f32),
        Some((slope, inter)) => {
            decode_to_c(&raw, shape, layout, move |v| (v * slope + inter) as f32)
        }
    };
    let out_shape = layout.0.map(|a| shape[a]);
    Ok((
        Volume {
            header: raw.header,
            data: Array3::from_shape_vec(out_shape, data).expect("shape and length agree"),
        },
        o,
    ))
}

/// The orientation of `header` and the layout to read it in: the
/// canonical one, or the file's own.
fn layout_of(header: &Header, canonical: bool) -> (Orientation, Layout) {
    let o = Orientation::from_affine(&header.affine());
    let layout = if canonical { o.mapping() } else { FILE_ORDER };
    (o, layout)
}

/// Decodes raw voxels (any datatype and byte order) straight into a
/// C-ordered array, mapping each value (as f64) through `map`: one pass, no
/// intermediate array.
///
/// (Overlapping gzip inflation with this pass in a reader thread was tried
/// and measured slower on two cores once imaging and labels load in
/// parallel; see docs/PERFORMANCE.md.)
fn decode_to_c<T, F>(raw: &Raw, shape: [usize; 3], o: Layout, map: F) -> Vec<T>
where
    T: Copy + Send + Sync + Default,
    F: Fn(f64) -> T + Sync + Copy,
{
    with_voxel!(
        raw.header.dtype,
        raw.header.is_big_endian(),
        planes_to_c,
        (raw, (shape, o), map)
    )
}

/// The axis order an array is read into: the file's (`[i, j, k]`) or a
/// signed permutation of it (`(perm, flip)`, [`crate::orient`]).
type Layout = ([usize; 3], [bool; 3]);

/// The file's own axis order.
const FILE_ORDER: Layout = ([0, 1, 2], [false; 3]);

fn planes_to_c<V, T, F>(raw: &Raw, (shape, (perm, flip)): ([usize; 3], Layout), map: F) -> Vec<T>
where
    V: Voxel,
    T: Copy + Send + Sync + Default,
    F: Fn(f64) -> T + Sync + Copy,
{
    fortran_to_c_oriented(shape, perm, flip, |i| map(V::at(&raw.bytes, i)))
}

/// Reads a label volume of the label set `labels`: every value must be an
/// integer in `0..=labels.max_label()`.
///
/// Integer files of any width (KiTS19 has uint8 and uint16 label files) and
/// float files holding whole numbers are accepted. Anything else is an error
/// that names the file, the first bad voxel (NIfTI index, in file order) and
/// how many bad voxels there are.
pub fn read_labels(path: impl AsRef<Path>, labels: LabelSet) -> Result<Volume<u8>> {
    read_labels_in(path.as_ref(), labels, false).map(|(v, _)| v)
}

/// [`read_labels`] brought to the canonical layout in the same pass (see
/// [`read_volume_canonical`]).
pub fn read_labels_canonical(
    path: impl AsRef<Path>,
    labels: LabelSet,
) -> Result<(Volume<u8>, Orientation)> {
    read_labels_in(path.as_ref(), labels, true)
}

fn read_labels_in(
    path: &Path,
    labels: LabelSet,
    canonical: bool,
) -> Result<(Volume<u8>, Orientation)> {
    const BAD: u8 = u8::MAX;
    let max_label = labels.max_label();
    let raw = read_raw(path, 1)?;
    let shape = shape3(path, &raw.header)?;
    let (o, layout) = layout_of(&raw.header, canonical);
    let (slope, inter) = raw.header.scaling().unwrap_or((1.0, 0.0));
    let ok = move |v: f64| v >= 0.0 && v <= f64::from(max_label) && v.fract() == 0.0;
    let data = if raw.header.dtype == DType::U8 && raw.header.scaling().is_none() {
        // Most KiTS19 label files: a plain byte reorder.
        fortran_to_c_oriented(shape, layout.0, layout.1, |i| raw.bytes[i])
    } else {
        decode_to_c(&raw, shape, layout, move |v| {
            let v = v * slope + inter;
            if ok(v) { v as u8 } else { BAD }
        })
    };
    if data.iter().any(|&v| v > max_label) {
        // Rare path: find the first bad voxel in file order and its value,
        // decoding a chunk at a time (no f64 copy of the volume).
        const CHUNK: usize = 1 << 20;
        let size = raw.header.dtype.size();
        let mut first = None;
        let mut count = 0;
        let mut vals = vec![0f64; CHUNK.min(data.len())];
        for start in (0..data.len()).step_by(CHUNK) {
            let len = CHUNK.min(data.len() - start);
            decode(
                &raw.bytes[start * size..(start + len) * size],
                raw.header.dtype,
                raw.header.is_big_endian(),
                raw.header.scaling(),
                &mut vals[..len],
            );
            for (j, &v) in vals[..len].iter().enumerate() {
                if !ok(v) {
                    count += 1;
                    first.get_or_insert((start + j, v));
                }
            }
        }
        let (i, value) = first.expect("a bad voxel exists");
        let voxel = [
            i % shape[0],
            (i / shape[0]) % shape[1],
            i / (shape[0] * shape[1]),
        ];
        return Err(VolumeError::BadLabel {
            path: path.to_path_buf(),
            value,
            voxel,
            max_label,
            count,
        });
    }
    let out_shape = layout.0.map(|a| shape[a]);
    Ok((
        Volume {
            header: raw.header,
            data: Array3::from_shape_vec(out_shape, data).expect("shape and length agree"),
        },
        o,
    ))
}
