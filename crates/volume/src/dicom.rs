//! DICOM CT series, read with the dicom-rs crates: a folder searched
//! recursively, files grouped by SeriesInstanceUID, slices ordered by their
//! position along the slice normal (never by file name or InstanceNumber),
//! stored values made HU by RescaleSlope/RescaleIntercept, and the result a
//! [`Volume`] whose header carries NIfTI's affine (DICOM's LPS turned to
//! RAS), so predictions written as NIfTI lie where the CT lies.
//!
//! The volume is stored `[slice, row, column]` (slices in increasing
//! position along `row direction × column direction`), and like any volume
//! it is brought to the internal layout by its affine ([`crate::orient`]).
//! Every slice must share orientation, pixel spacing and size, and the
//! positions must be evenly spaced: a gap, a duplicate position or a
//! missing slice is an error naming the positions.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use ndarray::Array3;
use rayon::prelude::*;

use crate::error::{Result, VolumeError};
use crate::nifti::{DType, Header, Volume};

/// One series of a folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// SeriesInstanceUID.
    pub uid: String,
    /// SeriesDescription (empty when absent).
    pub description: String,
    /// Modality (CT, MR, CR...).
    pub modality: String,
    /// Its files, sorted by path (not yet by position).
    pub files: Vec<PathBuf>,
}

/// Whether `path` starts as a DICOM Part 10 file: 128 bytes of preamble,
/// then `DICM`.
pub fn is_dicom_file(path: &Path) -> bool {
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[128..] == b"DICM"
}

/// Every file under `dir`, recursively, symbolic links followed (a link to
/// a slice is that slice; a broken link or a link loop is an error naming
/// it, never a slice silently left out).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    walk_in(dir, out, &mut seen)
}

fn walk_in(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(|e| VolumeError::io(dir, e))?;
    if !seen.insert(real.clone()) {
        return Err(VolumeError::format(
            dir,
            format!(
                "reached twice through symbolic links (a loop, or two links to one folder): this folder is {}, already searched",
                real.display()
            ),
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| VolumeError::io(dir, e))?;
    for e in entries {
        let e = e.map_err(|e| VolumeError::io(dir, e))?;
        let path = e.path();
        let mut kind = e.file_type().map_err(|e| VolumeError::io(&path, e))?;
        if kind.is_symlink() {
            kind = std::fs::metadata(&path)
                .map_err(|e| VolumeError::io(&path, e))?
                .file_type();
        }
        if kind.is_dir() {
            walk_in(&path, out, seen)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Opens the header of a DICOM file (everything before the pixel data).
pub(crate) fn open_header(path: &Path) -> Result<DefaultDicomObject> {
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| VolumeError::format(path, format!("not a readable DICOM file: {e}")))
}

/// A text element, trimmed, or "" when absent.
pub(crate) fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string()
        })
        .unwrap_or_default()
}

/// The series of the DICOM files under `dir` (searched recursively; files
/// without the DICM prefix are not DICOM files and are passed over).
pub fn list_series(dir: impl AsRef<Path>) -> Result<Vec<Series>> {
    let dir = dir.as_ref();
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let dicom: Vec<PathBuf> = files.into_iter().filter(|p| is_dicom_file(p)).collect();
    if dicom.is_empty() {
        return Err(VolumeError::NoDicom {
            path: dir.to_path_buf(),
        });
    }
    let heads: Vec<(PathBuf, String, String, String)> = dicom
        .par_iter()
        .map(|p| {
            let obj = open_header(p)?;
            let uid = text(&obj, tags::SERIES_INSTANCE_UID);
            if uid.is_empty() {
                return Err(VolumeError::format(p, "no SeriesInstanceUID"));
            }
            Ok((
                p.clone(),
                uid,
                text(&obj, tags::SERIES_DESCRIPTION),
                text(&obj, tags::MODALITY),
            ))
        })
        .collect::<Result<_>>()?;
    let mut by_uid: BTreeMap<String, Series> = BTreeMap::new();
    for (path, uid, description, modality) in heads {
        by_uid
            .entry(uid.clone())
            .or_insert_with(|| Series {
                uid,
                description,
                modality,
                files: Vec::new(),
            })
            .files
            .push(path);
    }
    Ok(by_uid.into_values().collect())
}

/// The series of `dir` to read: `uid` when given, else the one CT series.
/// Several CT series (or none) without `uid`: an error listing each
/// series with its description, modality and slice count.
pub fn choose_series(dir: impl AsRef<Path>, uid: Option<&str>) -> Result<Series> {
    let dir = dir.as_ref();
    let all = list_series(dir)?;
    let listing = || {
        all.iter()
            .map(|s| {
                format!(
                    "{} ({}, {:?}, {} files)",
                    s.uid,
                    s.modality,
                    s.description,
                    s.files.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if let Some(uid) = uid {
        return all.iter().find(|s| s.uid == uid).cloned().ok_or_else(|| {
            VolumeError::missing(
                dir,
                format!("no series {uid}; the series are: {}", listing()),
            )
        });
    }
    let ct: Vec<&Series> = all.iter().filter(|s| s.modality == "CT").collect();
    match ct.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(VolumeError::format(
            dir,
            format!("no CT series; the series are: {}", listing()),
        )),
        _ => Err(VolumeError::format(
            dir,
            format!(
                "{} CT series; choose one with --series UID: {}",
                ct.len(),
                listing()
            ),
        )),
    }
}

/// One slice's geometry and scaling.
struct Slice {
    path: PathBuf,
    /// ImageOrientationPatient: row direction, column direction.
    iop: [f64; 6],
    /// ImagePositionPatient.
    ipp: [f64; 3],
    /// PixelSpacing: between rows, between columns.
    spacing: [f64; 2],
    rows: usize,
    cols: usize,
    slope: f64,
    intercept: f64,
    thickness: Option<f64>,
}

/// How far from 1 a direction cosine's length, and from 0 the cosine
/// between the two, may be (DS values carry about six digits).
const IOP_TOLERANCE: f64 = 1e-3;

pub(crate) fn floats(
    obj: &DefaultDicomObject,
    path: &Path,
    tag: dicom_core::Tag,
    name: &str,
    n: usize,
) -> Result<Vec<f64>> {
    let v = obj
        .element_opt(tag)
        .ok()
        .flatten()
        .ok_or_else(|| VolumeError::format(path, format!("no {name}")))?
        .to_multi_float64()
        .map_err(|e| VolumeError::format(path, format!("{name} is not numbers: {e}")))?;
    if v.len() != n || v.iter().any(|x| !x.is_finite()) {
        return Err(VolumeError::format(
            path,
            format!("{name} must be {n} finite numbers, got {v:?}"),
        ));
    }
    Ok(v)
}

fn optional_float(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_float64().ok())
        .filter(|v| v.is_finite())
}

/// Most rows or columns of a slice kseg reads (an allocation is never
/// sized by an unchecked header).
const MAX_SIDE: usize = 4096;

fn read_slice_header(path: &Path) -> Result<Slice> {
    let obj = open_header(path)?;
    let frames = optional_float(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1.0);
    if frames != 1.0 {
        return Err(VolumeError::unsupported(
            path,
            format!("a multi-frame image ({frames} frames); kseg reads one slice per file"),
        ));
    }
    let iop = floats(
        &obj,
        path,
        tags::IMAGE_ORIENTATION_PATIENT,
        "ImageOrientationPatient",
        6,
    )?;
    let ipp = floats(
        &obj,
        path,
        tags::IMAGE_POSITION_PATIENT,
        "ImagePositionPatient",
        3,
    )?;
    let spacing = floats(&obj, path, tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    let size = |tag, name: &str| -> Result<usize> {
        let v = obj
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .ok_or_else(|| VolumeError::format(path, format!("no {name}")))?
            as usize;
        if v == 0 || v > MAX_SIDE {
            return Err(VolumeError::format(
                path,
                format!("{name} {v} is outside 1..={MAX_SIDE}"),
            ));
        }
        Ok(v)
    };
    if spacing.iter().any(|&s| s <= 0.0) {
        return Err(VolumeError::format(
            path,
            format!("PixelSpacing {spacing:?} must be positive"),
        ));
    }
    // Direction cosines: two unit vectors at right angles, else the
    // affine's voxel sizes and axes would not be PixelSpacing's.
    let (r, c) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    let (lr, lc, cos) = (dot(r, r).sqrt(), dot(c, c).sqrt(), dot(r, c));
    if (lr - 1.0).abs() > IOP_TOLERANCE
        || (lc - 1.0).abs() > IOP_TOLERANCE
        || cos.abs() > IOP_TOLERANCE
    {
        return Err(VolumeError::format(
            path,
            format!(
                "ImageOrientationPatient {iop:?} is not two unit vectors at right angles (lengths {lr:.4} and {lc:.4}, cosine {cos:.4})"
            ),
        ));
    }
    // RescaleSlope and RescaleIntercept turn stored values into HU: type 1
    // in the CT image IOD, so a CT slice without them is refused, not read
    // as slope 1, intercept 0. Other modalities may leave them out.
    let ct = text(&obj, tags::MODALITY) == "CT";
    let rescale = |tag, name: &str, default: f64| -> Result<f64> {
        match obj.element_opt(tag).ok().flatten() {
            None if !ct => Ok(default),
            None => Err(VolumeError::format(
                path,
                format!("no {name}: a CT slice needs RescaleSlope and RescaleIntercept to give HU"),
            )),
            Some(e) => match e.to_float64() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(VolumeError::format(
                    path,
                    format!(
                        "{name} {:?} is not a finite number",
                        e.to_str().unwrap_or_default()
                    ),
                )),
            },
        }
    };
    let slope = rescale(tags::RESCALE_SLOPE, "RescaleSlope", 1.0)?;
    if slope == 0.0 {
        return Err(VolumeError::format(
            path,
            "RescaleSlope 0 maps every pixel to one value",
        ));
    }
    let intercept = rescale(tags::RESCALE_INTERCEPT, "RescaleIntercept", 0.0)?;
    Ok(Slice {
        path: path.to_path_buf(),
        iop: iop.try_into().expect("6 values"),
        ipp: ipp.try_into().expect("3 values"),
        spacing: spacing.try_into().expect("2 values"),
        rows: size(tags::ROWS, "Rows")?,
        cols: size(tags::COLUMNS, "Columns")?,
        slope,
        intercept,
        thickness: optional_float(&obj, tags::SLICE_THICKNESS).filter(|t| *t > 0.0),
    })
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The name of a transfer syntax UID (the UID itself when unknown).
fn syntax_name(uid: &str) -> String {
    use dicom_transfer_syntax_registry::TransferSyntaxIndex;
    use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let uid = uid.trim_end_matches(['\0', ' ']);
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) => format!("{} ({uid})", ts.name()),
        None => uid.to_string(),
    }
}

/// A slice's pixels in HU (row-major), through its own rescale.
fn read_pixels(s: &Slice) -> Result<Vec<f32>> {
    let obj = dicom_object::open_file(&s.path)
        .map_err(|e| VolumeError::format(&s.path, format!("not a readable DICOM file: {e}")))?;
    let syntax = syntax_name(obj.meta().transfer_syntax());
    let decoded = obj.decode_pixel_data().map_err(|e| {
        VolumeError::format(
            &s.path,
            format!("cannot decode the pixel data (transfer syntax {syntax}): {e}"),
        )
    })?;
    if decoded.samples_per_pixel() != 1 {
        return Err(VolumeError::unsupported(
            &s.path,
            format!(
                "{} samples per pixel; CT has 1",
                decoded.samples_per_pixel()
            ),
        ));
    }
    let stored: Vec<f64> = decoded
        .to_vec_with_options(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        .map_err(|e| {
            VolumeError::format(
                &s.path,
                format!("cannot convert the pixel data ({syntax}): {e}"),
            )
        })?;
    if stored.len() != s.rows * s.cols {
        return Err(VolumeError::format(
            &s.path,
            format!(
                "{} pixel values for {} x {} pixels",
                stored.len(),
                s.rows,
                s.cols
            ),
        ));
    }
    Ok(stored
        .iter()
        .map(|&v| (v * s.slope + s.intercept) as f32)
        .collect())
}

/// Reads `series` as a volume `[slice, row, column]` in HU with NIfTI's
/// affine (RAS+).
pub fn read_series(series: &Series) -> Result<Volume<f32>> {
    let mut slices: Vec<Slice> = series
        .files
        .par_iter()
        .map(|p| read_slice_header(p))
        .collect::<Result<_>>()?;
    let first = &slices[0];
    let (row_dir, col_dir) = (
        [first.iop[0], first.iop[1], first.iop[2]],
        [first.iop[3], first.iop[4], first.iop[5]],
    );
    let normal = cross(row_dir, col_dir);
    if (dot(normal, normal).sqrt() - 1.0).abs() > 1e-3 {
        return Err(VolumeError::format(
            &first.path,
            format!(
                "ImageOrientationPatient {:?} is not two unit vectors at right angles",
                first.iop
            ),
        ));
    }
    for s in &slices[1..] {
        if s.iop
            .iter()
            .zip(&first.iop)
            .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            return Err(VolumeError::format(
                &s.path,
                format!(
                    "orientation {:?} differs from {:?} of {}",
                    s.iop,
                    first.iop,
                    first.path.display()
                ),
            ));
        }
        if (s.rows, s.cols) != (first.rows, first.cols)
            || s.spacing
                .iter()
                .zip(&first.spacing)
                .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            return Err(VolumeError::format(
                &s.path,
                format!(
                    "{} x {} pixels of {:?} mm differ from {} x {} of {:?} mm in {}",
                    s.rows,
                    s.cols,
                    s.spacing,
                    first.rows,
                    first.cols,
                    first.spacing,
                    first.path.display()
                ),
            ));
        }
    }
    // Order by position along the normal.
    slices.sort_by(|a, b| dot(a.ipp, normal).total_cmp(&dot(b.ipp, normal)));
    let pos: Vec<f64> = slices.iter().map(|s| dot(s.ipp, normal)).collect();
    let gaps: Vec<f64> = pos.windows(2).map(|w| w[1] - w[0]).collect();
    let step = if gaps.is_empty() {
        slices[0].thickness.unwrap_or(1.0)
    } else {
        let mut g = gaps.clone();
        g.sort_by(f64::total_cmp);
        g[g.len() / 2]
    };
    let tol = (0.01 * step).max(0.01);
    // Each step from a slice to the next must run along the normal: a step
    // that also moves within the slice plane is a gantry tilt (or a
    // sheared series), which a grid of `normal × step` would misplace.
    for (i, w) in slices.windows(2).enumerate() {
        let d = [0, 1, 2].map(|a| w[1].ipp[a] - w[0].ipp[a]);
        let along = dot(d, normal);
        let inplane = [0, 1, 2].map(|a| d[a] - along * normal[a]);
        let shift = dot(inplane, inplane).sqrt();
        if shift > tol {
            return Err(VolumeError::unsupported(
                &slices[i + 1].path,
                format!(
                    "slice positions step {:.3} mm within the slice plane per {:.3} mm along the normal (gantry tilt or shear, {:.2} degrees, from {}): kseg reads slices stacked along the normal; correct the tilt first (e.g. dcm2niix does)",
                    shift,
                    along,
                    shift.atan2(along.abs()).to_degrees(),
                    w[0].path.display()
                ),
            ));
        }
    }
    for (i, g) in gaps.iter().enumerate() {
        if *g < tol {
            return Err(VolumeError::format(
                &slices[i + 1].path,
                format!(
                    "duplicate slice position {:.3} mm along the normal (also {})",
                    pos[i + 1],
                    slices[i].path.display()
                ),
            ));
        }
        if (g - step).abs() > tol {
            return Err(VolumeError::format(
                &slices[i + 1].path,
                format!(
                    "slice positions are not evenly spaced: {:.3} mm from {:.3} to {:.3} (the series' step is {:.3} mm); a gap or a missing slice",
                    g,
                    pos[i],
                    pos[i + 1],
                    step
                ),
            ));
        }
    }
    let (nk, nr, nc) = (slices.len(), slices[0].rows, slices[0].cols);
    crate::limits::check(
        &format!("a volume of {nk} slices of {nr} x {nc} pixels (float32)"),
        &[nk, nr, nc],
        std::mem::size_of::<f32>(),
    )
    .map_err(|e| VolumeError::too_large(&slices[0].path, e))?;
    // Each slice decoded straight into its plane of the volume (no second
    // copy of the whole volume).
    let mut data = vec![0f32; nk * nr * nc];
    data.par_chunks_mut(nr * nc)
        .zip(slices.par_iter())
        .try_for_each(|(plane, s)| -> Result<()> {
            plane.copy_from_slice(&read_pixels(s)?);
            Ok(())
        })?;
    // LPS affine of [slice, row, column], then RAS.
    let [dr, dc] = slices[0].spacing;
    let o = slices[0].ipp;
    let cols = [
        normal.map(|v| v * step),
        col_dir.map(|v| v * dr),
        row_dir.map(|v| v * dc),
    ];
    let ras = [-1.0, -1.0, 1.0];
    let header = Header::kits_like(
        [nk, nr, nc],
        [step as f32, dr as f32, dc as f32],
        DType::I16,
    )?;
    let mut raw = header.nifti().clone();
    let row = |r: usize| {
        [
            // `+ 0.0` turns -0.0 into 0.0.
            (ras[r] * cols[0][r] + 0.0) as f32,
            (ras[r] * cols[1][r] + 0.0) as f32,
            (ras[r] * cols[2][r] + 0.0) as f32,
            (ras[r] * o[r] + 0.0) as f32,
        ]
    };
    (raw.srow_x, raw.srow_y, raw.srow_z) = (row(0), row(1), row(2));
    raw.sform_code = 1;
    raw.qform_code = 0;
    let mut descrip = format!("kseg from DICOM series {}", series.uid).into_bytes();
    descrip.resize(80, 0);
    raw.descrip = descrip;
    Ok(Volume {
        header: Header::from_nifti(raw)?,
        data: Array3::from_shape_vec((nk, nr, nc), data).expect("sizes agree"),
    })
}

/// Reads the CT series of the DICOM folder `dir` (`uid` chooses one when
/// there are several).
pub fn read_dicom_dir(dir: impl AsRef<Path>, uid: Option<&str>) -> Result<Volume<f32>> {
    read_series(&choose_series(dir, uid)?)
}
