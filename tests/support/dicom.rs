//! Writes DICOM CT series with dicom-object, for tests: one file per
//! slice, Explicit VR Little Endian, with chosen geometry and storage.
//! Included with `#[path]` by the harnesses that test DICOM reading.
#![allow(dead_code)]

use std::path::Path;

use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use ndarray::Array3;

/// How the pixel values are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Storage {
    /// Signed 16-bit, intercept 0.
    I16,
    /// Unsigned 16-bit with intercept -1024 (HU + 1024 stored).
    U16Intercept,
}

/// A series to write: `hu[k]` is the slice at `origin + k·step·normal`,
/// rows along `col_dir`, columns along `row_dir` (LPS, mm).
pub struct SeriesSpec<'a> {
    pub hu: &'a Array3<f32>,
    pub origin: [f64; 3],
    pub row_dir: [f64; 3],
    pub col_dir: [f64; 3],
    /// Between rows, between columns.
    pub pixel_spacing: [f64; 2],
    pub step: f64,
    pub storage: Storage,
    pub uid: &'a str,
}

pub fn ds(v: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(v.iter().map(|x| format!("{x:.6}")).collect())
}

/// Writes every slice of `spec` into `dir`, under the file name
/// `names[k]` and with InstanceNumber `numbers[k]`.
pub fn write_series(dir: &Path, spec: &SeriesSpec, names: &[String], numbers: &[u32]) {
    write_series_with(dir, spec, names, numbers, |_, _| {});
}

/// [`write_series`], with `edit(k, slice)` changing each slice's elements
/// (a malformed or hostile header) before it is written.
pub fn write_series_with(
    dir: &Path,
    spec: &SeriesSpec,
    names: &[String],
    numbers: &[u32],
    edit: impl Fn(usize, &mut InMemDicomObject),
) {
    std::fs::create_dir_all(dir).unwrap();
    let (n, rows, cols) = spec.hu.dim();
    let normal = [
        spec.row_dir[1] * spec.col_dir[2] - spec.row_dir[2] * spec.col_dir[1],
        spec.row_dir[2] * spec.col_dir[0] - spec.row_dir[0] * spec.col_dir[2],
        spec.row_dir[0] * spec.col_dir[1] - spec.row_dir[1] * spec.col_dir[0],
    ];
    for k in 0..n {
        let sop = format!("{}.{}", spec.uid, k + 1);
        let ipp: Vec<f64> = (0..3)
            .map(|d| spec.origin[d] + k as f64 * spec.step * normal[d])
            .collect();
        let mut obj = InMemDicomObject::new_empty();
        let mut put = |tag, vr, v: PrimitiveValue| {
            obj.put(DataElement::new(tag, vr, v));
        };
        put(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::CT_IMAGE_STORAGE),
        );
        put(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop.as_str()),
        );
        put(tags::MODALITY, VR::CS, PrimitiveValue::from("CT"));
        put(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(spec.uid),
        );
        put(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            PrimitiveValue::from("kseg test series"),
        );
        put(
            tags::INSTANCE_NUMBER,
            VR::IS,
            PrimitiveValue::from(numbers[k].to_string()),
        );
        put(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&ipp));
        let iop: Vec<f64> = spec.row_dir.iter().chain(&spec.col_dir).copied().collect();
        put(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&iop));
        put(tags::PIXEL_SPACING, VR::DS, ds(&spec.pixel_spacing));
        put(tags::SLICE_THICKNESS, VR::DS, ds(&[spec.step]));
        put(tags::ROWS, VR::US, dicom_value!(U16, [rows as u16]));
        put(tags::COLUMNS, VR::US, dicom_value!(U16, [cols as u16]));
        put(tags::SAMPLES_PER_PIXEL, VR::US, dicom_value!(U16, [1]));
        put(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            PrimitiveValue::from("MONOCHROME2"),
        );
        put(tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [16]));
        put(tags::BITS_STORED, VR::US, dicom_value!(U16, [16]));
        put(tags::HIGH_BIT, VR::US, dicom_value!(U16, [15]));
        let (repr, intercept) = match spec.storage {
            Storage::I16 => (1u16, 0.0),
            Storage::U16Intercept => (0u16, -1024.0),
        };
        put(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            dicom_value!(U16, [repr]),
        );
        put(tags::RESCALE_SLOPE, VR::DS, ds(&[1.0]));
        put(tags::RESCALE_INTERCEPT, VR::DS, ds(&[intercept]));
        let words: Vec<u16> = spec
            .hu
            .index_axis(ndarray::Axis(0), k)
            .iter()
            .map(|&v| match spec.storage {
                Storage::I16 => (v.round() as i16) as u16,
                Storage::U16Intercept => (v.round() + 1024.0) as u16,
            })
            .collect();
        put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(words.into()));
        edit(k, &mut obj);
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                    .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
                    .media_storage_sop_instance_uid(sop.as_str()),
            )
            .unwrap();
        file.write_to_file(dir.join(&names[k])).unwrap();
    }
}
