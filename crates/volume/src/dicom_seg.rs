//! DICOM Segmentation output (Segmentation IOD, `BINARY`), written with
//! dicom-rs (`dicom-object` builds and encodes the data set; no bytes are
//! assembled by hand): one segment per structure of the label set, frames
//! that reference their source CT slices, in the source series' study and
//! frame of reference, as highdicom and dcmqi write them.
//!
//! The labels are the DICOM volume's (`[slice, row, column]`, slices in
//! increasing position along the slice normal, as [`crate::dicom`] reads
//! the series); [`write_segmentation`] reads the series' headers again,
//! orders them by the same rule, and checks that they match the labels
//! before anything is written. Empty frames are left out (as the standard
//! allows); a segmentation with no voxel at all keeps one empty frame,
//! since a SEG holds at least one.

use std::path::Path;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use ndarray::ArrayView3;
use rayon::prelude::*;

use crate::LabelSet;
use crate::dicom::{Series, cross, dot, floats, open_header, text};
use crate::error::{Result, VolumeError};

/// A coded concept (code value, coding scheme, meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// CodeValue, e.g. `64033007`.
    pub value: &'static str,
    /// CodingSchemeDesignator, e.g. `SCT` (SNOMED CT).
    pub scheme: &'static str,
    /// CodeMeaning.
    pub meaning: &'static str,
}

const ORGAN: Code = Code {
    value: "91772007",
    scheme: "SCT",
    meaning: "Organ",
};
const ABNORMAL: Code = Code {
    value: "49755003",
    scheme: "SCT",
    meaning: "Morphologically Abnormal Structure",
};
const KIDNEY: Code = Code {
    value: "64033007",
    scheme: "SCT",
    meaning: "Kidney",
};
const NEOPLASM: Code = Code {
    value: "108369006",
    scheme: "SCT",
    meaning: "Neoplasm",
};
const CYST: Code = Code {
    value: "367643001",
    scheme: "SCT",
    meaning: "Cyst",
};

/// One segment: the voxels of one label value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDef {
    /// The label value whose voxels form the segment.
    pub label: u8,
    /// SegmentLabel.
    pub name: &'static str,
    /// SegmentedPropertyCategoryCodeSequence.
    pub category: Code,
    /// SegmentedPropertyTypeCodeSequence.
    pub kind: Code,
    /// AnatomicRegionSequence.
    pub region: Code,
    /// RecommendedDisplayCIELabValue (DICOM-scaled L*, a*, b*).
    pub lab: [u16; 3],
}

/// The segments of a label set: kidney (SCT Organ / Kidney), kidney
/// tumour (SCT Morphologically Abnormal Structure / Neoplasm, in the
/// kidney) and, for KiTS23, kidney cyst (… / Cyst, in the kidney): the
/// codes highdicom's and dcmqi's examples and TotalSegmentator use.
pub fn segments_for(set: LabelSet) -> Vec<SegmentDef> {
    let mut out = vec![
        SegmentDef {
            label: 1,
            name: "kidney",
            category: ORGAN,
            kind: KIDNEY,
            region: KIDNEY,
            // sRGB (185, 102, 83).
            lab: [34298, 40955, 39426],
        },
        SegmentDef {
            label: 2,
            name: "kidney tumour",
            category: ABNORMAL,
            kind: NEOPLASM,
            region: KIDNEY,
            // sRGB (255, 255, 0).
            lab: [63660, 27357, 57177],
        },
    ];
    if let Some(cyst) = set.cyst() {
        out.push(SegmentDef {
            label: cyst,
            name: "kidney cyst",
            category: ABNORMAL,
            kind: CYST,
            region: KIDNEY,
            // sRGB (0, 151, 206).
            lab: [38397, 29408, 23266],
        });
    }
    out
}

/// The algorithm that made the segmentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Algorithm {
    /// AlgorithmName and Manufacturer's Model Name (`kseg`).
    pub name: String,
    /// AlgorithmVersion and SoftwareVersions (kseg's version).
    pub version: String,
    /// The model's identity (the checkpoint's SHA-256), as
    /// AlgorithmParameters and DeviceSerialNumber.
    pub model: String,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegSummary {
    /// Frames in the file.
    pub frames: usize,
    /// Voxels of each segment, in the segments' order.
    pub voxels: Vec<usize>,
}

/// One source slice, as the SEG references it.
struct Source {
    sop_class: String,
    sop_instance: String,
    ipp: [f64; 3],
}

fn code_item(c: &Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(c.value)),
        DataElement::new(
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            PrimitiveValue::from(c.scheme),
        ),
        DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(c.meaning)),
    ])
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn ds(v: f64) -> String {
    // DS holds at most 16 characters: the shortest exact form, else as
    // many digits as fit.
    let s = format!("{v}");
    if s.len() <= 16 {
        return s;
    }
    (0..=12)
        .rev()
        .map(|p| format!("{v:.p$e}"))
        .find(|s| s.len() <= 16)
        .unwrap_or_else(|| format!("{v:.0e}"))
}

fn ds_multi(v: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(v.iter().map(|&x| ds(x)).collect())
}

/// A new UID under the `2.25` root (a random 128-bit number, as UUID-derived
/// UIDs are made).
pub fn new_uid() -> String {
    format!("2.25.{}", rand::random::<u128>())
}

/// The date and time now in UTC as `YYYYMMDD` and `HHMMSS` (DICOM's DA
/// and TM; run folder names).
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

/// Writes `labels` (the series' DICOM volume layout) as a DICOM
/// Segmentation of `series` to `path` (atomically), with one segment per
/// entry of `segments`.
pub fn write_segmentation(
    path: &Path,
    series: &Series,
    labels: ArrayView3<u8>,
    segments: &[SegmentDef],
    algo: &Algorithm,
) -> Result<SegSummary> {
    let (nk, nr, nc) = labels.dim();
    if segments.is_empty() {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: a segmentation needs at least one segment",
            path.display()
        )));
    }
    let heads: Vec<_> = series
        .files
        .par_iter()
        .map(|p| open_header(p).map(|o| (p.clone(), o)))
        .collect::<Result<_>>()?;
    let Some((first_path, first)) = heads.first() else {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: series {} has no files",
            path.display(),
            series.uid
        )));
    };
    let iop = floats(
        first,
        first_path,
        tags::IMAGE_ORIENTATION_PATIENT,
        "ImageOrientationPatient",
        6,
    )?;
    let normal = cross([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    let mut sources = heads
        .iter()
        .map(|(p, o)| {
            let ipp = floats(
                o,
                p,
                tags::IMAGE_POSITION_PATIENT,
                "ImagePositionPatient",
                3,
            )?;
            let sop_instance = text(o, tags::SOP_INSTANCE_UID);
            let sop_class = text(o, tags::SOP_CLASS_UID);
            if sop_instance.is_empty() || sop_class.is_empty() {
                return Err(VolumeError::format(
                    p,
                    "no SOPInstanceUID or SOPClassUID: a segmentation cannot reference it",
                ));
            }
            Ok(Source {
                sop_class,
                sop_instance,
                ipp: [ipp[0], ipp[1], ipp[2]],
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // The reader's order: by position along the normal.
    sources.sort_by(|a, b| dot(a.ipp, normal).total_cmp(&dot(b.ipp, normal)));
    let size = |tag, name: &str| {
        first
            .element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u32>().ok())
            .map(|v| v as usize)
            .ok_or_else(|| VolumeError::format(first_path, format!("no {name}")))
    };
    let (rows, cols) = (size(tags::ROWS, "Rows")?, size(tags::COLUMNS, "Columns")?);
    if (sources.len(), rows, cols) != (nk, nr, nc) {
        return Err(VolumeError::InvalidArgument(format!(
            "{}: the labels are {nk} x {nr} x {nc} voxels, series {} is {} slices of {rows} x {cols}",
            path.display(),
            series.uid,
            sources.len()
        )));
    }
    let frame_of_ref = text(first, tags::FRAME_OF_REFERENCE_UID);
    if frame_of_ref.is_empty() {
        return Err(VolumeError::format(
            first_path,
            "no FrameOfReferenceUID: a segmentation could not be placed in the study",
        ));
    }
    let spacing = floats(first, first_path, tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    let step = if sources.len() > 1 {
        dot(sources[1].ipp, normal) - dot(sources[0].ipp, normal)
    } else {
        1.0
    };
    let thickness = first
        .element_opt(tags::SLICE_THICKNESS)
        .ok()
        .flatten()
        .and_then(|e| e.to_float64().ok())
        .filter(|t| t.is_finite() && *t > 0.0)
        .unwrap_or(step.abs());

    // The frames: per segment, each slice holding some of its voxels.
    let mut frames: Vec<(usize, usize)> = Vec::new();
    let mut voxels = vec![0usize; segments.len()];
    for (si, s) in segments.iter().enumerate() {
        for k in 0..nk {
            let n = labels
                .index_axis(ndarray::Axis(0), k)
                .iter()
                .filter(|&&v| v == s.label)
                .count();
            voxels[si] += n;
            if n > 0 {
                frames.push((si, k));
            }
        }
    }
    if frames.is_empty() {
        frames.push((0, 0));
    }
    let plane = nr * nc;
    let mut bits = vec![0u8; (frames.len() * plane).div_ceil(8).next_multiple_of(2)];
    for (fi, &(si, k)) in frames.iter().enumerate() {
        let label = segments[si].label;
        for (j, &v) in labels.index_axis(ndarray::Axis(0), k).iter().enumerate() {
            if v == label {
                let b = fi * plane + j;
                bits[b / 8] |= 1 << (b % 8);
            }
        }
    }

    let (date, time) = utc_now();
    let seg_uid = new_uid();
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag: Tag, vr: VR, v: PrimitiveValue| {
        obj.put(DataElement::new(tag, vr, v));
    };
    put(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(uids::SEGMENTATION_STORAGE),
    );
    put(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(seg_uid.as_str()),
    );
    put(
        tags::IMAGE_TYPE,
        VR::CS,
        dicom_value!(Strs, ["DERIVED", "PRIMARY"]),
    );
    for (tag, v) in [
        (tags::INSTANCE_CREATION_DATE, &date),
        (tags::CONTENT_DATE, &date),
    ] {
        put(tag, VR::DA, PrimitiveValue::from(v.as_str()));
    }
    for (tag, v) in [
        (tags::INSTANCE_CREATION_TIME, &time),
        (tags::CONTENT_TIME, &time),
    ] {
        put(tag, VR::TM, PrimitiveValue::from(v.as_str()));
    }
    put(tags::MODALITY, VR::CS, PrimitiveValue::from("SEG"));
    put(
        tags::MANUFACTURER,
        VR::LO,
        PrimitiveValue::from(algo.name.as_str()),
    );
    put(
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        PrimitiveValue::from(algo.name.as_str()),
    );
    put(
        tags::DEVICE_SERIAL_NUMBER,
        VR::LO,
        PrimitiveValue::from(algo.model.chars().take(64).collect::<String>()),
    );
    put(
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        PrimitiveValue::from(algo.version.as_str()),
    );
    put(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(new_uid()),
    );
    put(tags::SERIES_NUMBER, VR::IS, PrimitiveValue::from("900"));
    put(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        PrimitiveValue::from(format!("{} segmentation", algo.name)),
    );
    put(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from("1"));
    put(
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        PrimitiveValue::from(frame_of_ref.as_str()),
    );
    put(
        tags::POSITION_REFERENCE_INDICATOR,
        VR::LO,
        PrimitiveValue::Empty,
    );
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("MONOCHROME2"),
    );
    put(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from(frames.len().to_string()),
    );
    put(tags::ROWS, VR::US, PrimitiveValue::from(nr as u16));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(nc as u16));
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(1u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(1u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(0u16));
    put(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    );
    put(
        tags::LOSSY_IMAGE_COMPRESSION,
        VR::CS,
        PrimitiveValue::from("00"),
    );
    put(
        tags::SEGMENTATION_TYPE,
        VR::CS,
        PrimitiveValue::from("BINARY"),
    );
    put(tags::SEGMENTS_OVERLAP, VR::CS, PrimitiveValue::from("NO"));
    put(tags::CONTENT_LABEL, VR::CS, PrimitiveValue::from("KSEG"));
    put(
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        PrimitiveValue::from("kidney and kidney tumour segmentation"),
    );
    put(
        tags::CONTENT_CREATOR_NAME,
        VR::PN,
        PrimitiveValue::from(algo.name.as_str()),
    );
    put(
        tags::PRESENTATION_LUT_SHAPE,
        VR::CS,
        PrimitiveValue::from("IDENTITY"),
    );
    // Patient and study, from the source (type 2: empty when absent).
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_INSTANCE_UID, VR::UI),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ] {
        let v = text(first, tag);
        put(
            tag,
            vr,
            if v.is_empty() {
                PrimitiveValue::Empty
            } else {
                PrimitiveValue::from(v)
            },
        );
    }
    if text(first, tags::STUDY_INSTANCE_UID).is_empty() {
        return Err(VolumeError::format(
            first_path,
            "no StudyInstanceUID: the segmentation could not join the study",
        ));
    }

    // The segments.
    let algo_item = InMemDicomObject::from_element_iter([
        seq(
            tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
            vec![code_item(&Code {
                value: "123110",
                scheme: "DCM",
                meaning: "Artificial Intelligence",
            })],
        ),
        DataElement::new(
            tags::ALGORITHM_NAME,
            VR::LO,
            PrimitiveValue::from(algo.name.as_str()),
        ),
        DataElement::new(
            tags::ALGORITHM_VERSION,
            VR::LO,
            PrimitiveValue::from(algo.version.as_str()),
        ),
        DataElement::new(
            tags::ALGORITHM_PARAMETERS,
            VR::LT,
            PrimitiveValue::from(format!("model sha256 {}", algo.model)),
        ),
    ]);
    let seg_items = segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::SEGMENT_NUMBER,
                    VR::US,
                    PrimitiveValue::from((i + 1) as u16),
                ),
                DataElement::new(tags::SEGMENT_LABEL, VR::LO, PrimitiveValue::from(s.name)),
                DataElement::new(
                    tags::SEGMENT_ALGORITHM_TYPE,
                    VR::CS,
                    PrimitiveValue::from("AUTOMATIC"),
                ),
                DataElement::new(
                    tags::SEGMENT_ALGORITHM_NAME,
                    VR::LO,
                    PrimitiveValue::from(algo.name.as_str()),
                ),
                seq(
                    tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
                    vec![algo_item.clone()],
                ),
                seq(
                    tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    vec![code_item(&s.category)],
                ),
                seq(
                    tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                    vec![code_item(&s.kind)],
                ),
                seq(tags::ANATOMIC_REGION_SEQUENCE, vec![code_item(&s.region)]),
                DataElement::new(
                    tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
                    VR::US,
                    PrimitiveValue::U16(s.lab.into_iter().collect()),
                ),
            ])
        })
        .collect();
    obj.put(seq(tags::SEGMENT_SEQUENCE, seg_items));

    // Dimensions: segment, then position.
    let dim_uid = new_uid();
    let dim = |pointer: Tag, group: Tag, label: &str| {
        InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                PrimitiveValue::from(dim_uid.as_str()),
            ),
            DataElement::new(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::Tags([pointer].into_iter().collect()),
            ),
            DataElement::new(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::Tags([group].into_iter().collect()),
            ),
            DataElement::new(
                tags::DIMENSION_DESCRIPTION_LABEL,
                VR::LO,
                PrimitiveValue::from(label),
            ),
        ])
    };
    obj.put(seq(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([DataElement::new(
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            PrimitiveValue::from(dim_uid.as_str()),
        )])],
    ));
    obj.put(seq(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dim(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Referenced Segment Number",
            ),
            dim(
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "Image Position Patient",
            ),
        ],
    ));

    // Shared functional groups: orientation and pixel measures.
    obj.put(seq(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            seq(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([DataElement::new(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    VR::DS,
                    ds_multi(&iop),
                )])],
            ),
            seq(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    DataElement::new(
                        tags::SLICE_THICKNESS,
                        VR::DS,
                        PrimitiveValue::from(ds(thickness)),
                    ),
                    DataElement::new(
                        tags::SPACING_BETWEEN_SLICES,
                        VR::DS,
                        PrimitiveValue::from(ds(step.abs())),
                    ),
                    DataElement::new(tags::PIXEL_SPACING, VR::DS, ds_multi(&spacing)),
                ])],
            ),
        ])],
    ));

    // References to the source images.
    let source_ref = |s: &Source, purpose: bool| {
        let mut item = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(s.sop_class.as_str()),
            ),
            DataElement::new(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(s.sop_instance.as_str()),
            ),
        ]);
        if purpose {
            item.put(DataElement::new(
                tags::SPATIAL_LOCATIONS_PRESERVED,
                VR::CS,
                PrimitiveValue::from("YES"),
            ));
            item.put(seq(
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                vec![code_item(&Code {
                    value: "121322",
                    scheme: "DCM",
                    meaning: "Source image for image processing operation",
                })],
            ));
        }
        item
    };
    obj.put(seq(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(series.uid.as_str()),
            ),
            seq(
                tags::REFERENCED_INSTANCE_SEQUENCE,
                sources.iter().map(|s| source_ref(s, false)).collect(),
            ),
        ])],
    ));
    obj.put(seq(
        tags::SOURCE_IMAGE_SEQUENCE,
        sources.iter().map(|s| source_ref(s, false)).collect(),
    ));
    let per_frame = frames
        .iter()
        .map(|&(si, k)| {
            let s = &sources[k];
            InMemDicomObject::from_element_iter([
                seq(
                    tags::DERIVATION_IMAGE_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([
                        seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source_ref(s, true)]),
                        seq(
                            tags::DERIVATION_CODE_SEQUENCE,
                            vec![code_item(&Code {
                                value: "113076",
                                scheme: "DCM",
                                meaning: "Segmentation",
                            })],
                        ),
                    ])],
                ),
                seq(
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([DataElement::new(
                        tags::DIMENSION_INDEX_VALUES,
                        VR::UL,
                        dicom_value!(U32, [(si + 1) as u32, (k + 1) as u32]),
                    )])],
                ),
                seq(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([DataElement::new(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        ds_multi(&s.ipp),
                    )])],
                ),
                seq(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([DataElement::new(
                        tags::REFERENCED_SEGMENT_NUMBER,
                        VR::US,
                        PrimitiveValue::from((si + 1) as u16),
                    )])],
                ),
            ])
        })
        .collect();
    obj.put(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(bits),
    ));

    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_version_name(
                    format!("KSEG_{}", algo.version.replace('.', "_"))
                        .chars()
                        .take(16)
                        .collect::<String>(),
                ),
        )
        .map_err(|e| {
            VolumeError::InvalidArgument(format!("{}: DICOM file meta: {e}", path.display()))
        })?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| {
        VolumeError::InvalidArgument(format!(
            "{}: encoding the segmentation: {e}",
            path.display()
        ))
    })?;
    crate::fs::write_bytes_atomic(path, &bytes)?;
    Ok(SegSummary {
        frames: frames.len(),
        voxels,
    })
}

#[cfg(test)]
mod tests {
    use super::ds;

    /// DS values fit in 16 characters and keep what precision fits.
    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        for v in [
            0.0,
            5.343622,
            -1.2345678901234e-10,
            -123_456_789.123_456_79,
            1e300,
            -0.1 / 3.0,
        ] {
            let s = ds(v);
            assert!(s.len() <= 16, "{v}: {s:?}");
            let back: f64 = s.parse().unwrap();
            assert!((back - v).abs() <= 1e-6 * v.abs().max(1e-300), "{v}: {s}");
        }
        assert_eq!(ds(5.343622), "5.343622");
    }
}
