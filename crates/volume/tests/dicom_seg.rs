//! kseg's DICOM Segmentation against the one highdicom 0.28.2 wrote for
//! the same 12-slice CT series and labels (testdata/dicom_seg/README.md):
//! the same frames (segment, referenced source slice, position), the same
//! masks bit for bit, the same segment codes, and the modules highdicom
//! writes present in ours.

use std::collections::BTreeMap;
use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, open_file};
use kseg_volume::dicom_seg::{Algorithm, segments_for, write_segmentation};
use kseg_volume::orient::Orientation;
use kseg_volume::{LabelSet, dicom};

use crate::support::testdata;

fn text(o: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    o.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(|c: char| c == ' ' || c == '\0').to_string())
        .unwrap_or_default()
}

fn item(o: &InMemDicomObject, tag: dicom_core::Tag) -> &InMemDicomObject {
    &o.element(tag).expect("sequence").items().expect("items")[0]
}

/// (segment label, referenced SOP instance) → the frame's mask, and the
/// frame's position, of a binary SEG file.
type Frames = BTreeMap<(String, String), (Vec<bool>, String)>;

fn frames(path: &Path) -> (DefaultDicomObject, Frames) {
    let obj = open_file(path).unwrap();
    let rows = obj.element(tags::ROWS).unwrap().to_int::<usize>().unwrap();
    let cols = obj
        .element(tags::COLUMNS)
        .unwrap()
        .to_int::<usize>()
        .unwrap();
    let n = obj
        .element(tags::NUMBER_OF_FRAMES)
        .unwrap()
        .to_int::<usize>()
        .unwrap();
    let segs: BTreeMap<u16, String> = obj
        .element(tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s.element(tags::SEGMENT_NUMBER)
                    .unwrap()
                    .to_int::<u16>()
                    .unwrap(),
                text(s, tags::SEGMENT_LABEL),
            )
        })
        .collect();
    let bits = obj
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .to_vec();
    let per = obj
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(per.len(), n, "{}", path.display());
    let mut out = Frames::new();
    for (f, fg) in per.iter().enumerate() {
        let seg = item(fg, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .element(tags::REFERENCED_SEGMENT_NUMBER)
            .unwrap()
            .to_int::<u16>()
            .unwrap();
        let src = item(
            item(fg, tags::DERIVATION_IMAGE_SEQUENCE),
            tags::SOURCE_IMAGE_SEQUENCE,
        );
        let sop = text(src, tags::REFERENCED_SOP_INSTANCE_UID);
        let pos = item(fg, tags::PLANE_POSITION_SEQUENCE)
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        let mask = (0..rows * cols)
            .map(|j| {
                let b = f * rows * cols + j;
                bits[b / 8] >> (b % 8) & 1 == 1
            })
            .collect();
        out.insert((segs[&seg].clone(), sop), (mask, format!("{pos:.3?}")));
    }
    (obj, out)
}

#[test]
fn segmentation_matches_highdicom_frame_for_frame() {
    let dir = testdata("dicom_seg");
    let series = dicom::choose_series(dir.join("series"), None).unwrap();
    let ct = dicom::read_series(&series).unwrap();
    // The labels (KiTS19 layout) on the series' grid: both through the
    // internal layout.
    let labels = kseg_volume::read_labels(dir.join("labels.nii.gz"), LabelSet::Kits19).unwrap();
    let lo = Orientation::from_affine(&labels.header.affine());
    let co = Orientation::from_affine(&ct.header.affine());
    let internal = lo.into_internal(labels.data);
    let on_ct = co.into_file(internal);
    assert_eq!(on_ct.dim(), ct.data.dim());

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("seg.dcm");
    let algo = Algorithm {
        name: "kseg".into(),
        version: "0.1.0".into(),
        model: "ab".repeat(32),
    };
    let segs = segments_for(LabelSet::Kits19);
    let summary = write_segmentation(&out, &series, on_ct.view(), &segs, &algo).unwrap();
    let (ours, our_frames) = frames(&out);
    let (theirs, their_frames) = frames(&dir.join("highdicom_seg.dcm"));
    assert_eq!(summary.frames, 22);
    // highdicom labels the tumour segment "kidney tumour", as we do.
    let keys = |f: &Frames| f.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&our_frames), keys(&their_frames));
    for (k, (mask, pos)) in &their_frames {
        let (m, p) = &our_frames[k];
        assert!(m == mask, "frame {k:?}: masks differ");
        assert_eq!(p, pos, "frame {k:?}: positions differ");
    }
    // The same study, frame of reference and segment codes.
    for tag in [
        tags::STUDY_INSTANCE_UID,
        tags::FRAME_OF_REFERENCE_UID,
        tags::PATIENT_ID,
        tags::PATIENT_NAME,
        tags::SOP_CLASS_UID,
        tags::MODALITY,
        tags::SEGMENTATION_TYPE,
        tags::ROWS,
        tags::COLUMNS,
        tags::BITS_ALLOCATED,
    ] {
        assert_eq!(text(&ours, tag), text(&theirs, tag), "{tag}");
    }
    let codes = |o: &InMemDicomObject| -> Vec<Vec<String>> {
        o.element(tags::SEGMENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .map(|s| {
                [
                    tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                ]
                .into_iter()
                .map(|t| text(item(s, t), tags::CODE_VALUE))
                .collect()
            })
            .collect()
    };
    assert_eq!(codes(&ours), codes(&theirs));
    // Every top-level attribute highdicom writes is in ours (modules).
    let mine: std::collections::BTreeSet<_> = ours.tags().collect();
    let missing: Vec<_> = theirs
        .tags()
        .filter(|t| !mine.contains(t) && *t != tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
        .collect();
    assert!(
        missing.is_empty(),
        "attributes highdicom writes and we do not: {missing:?}"
    );
    // The shared pixel measures.
    let pm = |o: &InMemDicomObject| {
        let m = item(
            item(o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE),
            tags::PIXEL_MEASURES_SEQUENCE,
        );
        m.element(tags::PIXEL_SPACING)
            .unwrap()
            .to_multi_float64()
            .unwrap()
    };
    assert_eq!(pm(&ours), pm(&theirs));
}

#[test]
fn segmentation_refuses_labels_of_another_grid() {
    let dir = testdata("dicom_seg");
    let series = dicom::choose_series(dir.join("series"), None).unwrap();
    let labels = ndarray::Array3::<u8>::zeros((11, 64, 64));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("seg.dcm");
    let algo = Algorithm {
        name: "kseg".into(),
        version: "0".into(),
        model: String::new(),
    };
    let e = write_segmentation(
        &out,
        &series,
        labels.view(),
        &segments_for(LabelSet::Kits19),
        &algo,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("11 x 64 x 64") && e.contains("12 slices"), "{e}");
    assert!(!out.exists());
}
