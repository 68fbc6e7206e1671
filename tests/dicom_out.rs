//! Prediction outputs. `kseg predict --input DICOM_DIR --output result.dcm`: a DICOM
//! Segmentation whose frames, read back with dicom-rs, are the NIfTI
//! prediction of the same series voxel for voxel, each at its source
//! slice (found from the slice's own ImagePositionPatient and the NIfTI
//! affine).

use std::collections::BTreeMap;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, open_file};
use kseg::volume::{self, LabelSet};

use crate::bad_input::{kseg, model_with_meta, predict_fails};
use crate::support::testdata;

fn first(o: &InMemDicomObject, tag: dicom_core::Tag) -> &InMemDicomObject {
    &o.element(tag).unwrap().items().unwrap()[0]
}

fn uid(o: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    o.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

#[test]
fn predict_writes_a_dicom_segmentation_of_the_series() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_meta(tmp.path(), "model.safetensors", |_| {});
    let series = testdata("dicom_seg/series");
    let run = |out: &std::path::Path| {
        let o = kseg()
            .arg("predict")
            .arg("--checkpoint")
            .arg(&model)
            .arg("--input")
            .arg(&series)
            .arg("--output")
            .arg(out)
            .args(["--device", "cpu"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let (dcm, nii) = (tmp.path().join("seg.dcm"), tmp.path().join("seg.nii.gz"));
    run(&dcm);
    run(&nii);
    let labels = volume::read_labels(&nii, LabelSet::Kits19).unwrap();
    let a = labels.header.affine();
    // SOP Instance UID → ImagePositionPatient of each source slice.
    let mut ipp = BTreeMap::new();
    for e in std::fs::read_dir(&series).unwrap() {
        let o = open_file(e.unwrap().path()).unwrap();
        let p = o
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        ipp.insert(uid(&o, tags::SOP_INSTANCE_UID), p);
    }
    let seg = open_file(&dcm).unwrap();
    assert_eq!(uid(&seg, tags::MODALITY), "SEG");
    let (rows, cols) = (
        seg.element(tags::ROWS).unwrap().to_int::<usize>().unwrap(),
        seg.element(tags::COLUMNS)
            .unwrap()
            .to_int::<usize>()
            .unwrap(),
    );
    let (nk, nr, nc) = labels.data.dim();
    assert_eq!((rows, cols), (nr, nc));
    let bits = seg
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .to_vec();
    let frames = seg
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (f, fg) in frames.iter().enumerate() {
        let segment = first(fg, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .element(tags::REFERENCED_SEGMENT_NUMBER)
            .unwrap()
            .to_int::<u8>()
            .unwrap();
        let sop = uid(
            first(
                first(fg, tags::DERIVATION_IMAGE_SEQUENCE),
                tags::SOURCE_IMAGE_SEQUENCE,
            ),
            tags::REFERENCED_SOP_INSTANCE_UID,
        );
        // The slice whose NIfTI position is the source's (LPS → RAS).
        let p = &ipp[&sop];
        let k = (0..nk)
            .find(|&k| {
                let x = [
                    a[0][0] * k as f64 + a[0][3],
                    a[1][0] * k as f64 + a[1][3],
                    a[2][0] * k as f64 + a[2][3],
                ];
                (x[0] + p[0]).abs() < 1e-3
                    && (x[1] + p[1]).abs() < 1e-3
                    && (x[2] - p[2]).abs() < 1e-3
            })
            .expect("a slice at the source's position");
        // Segments 1, 2: labels 1, 2 (kidney, tumour).
        for r in 0..nr {
            for c in 0..nc {
                let b = f * nr * nc + r * nc + c;
                let bit = bits[b / 8] >> (b % 8) & 1 == 1;
                assert_eq!(
                    bit,
                    labels.data[[k, r, c]] == segment,
                    "frame {f} at {k},{r},{c}"
                );
            }
        }
        seen.insert((segment, k));
    }
    // Every non-empty (label, slice) has its frame.
    for label in [1u8, 2] {
        for k in 0..nk {
            if labels
                .data
                .index_axis(ndarray::Axis(0), k)
                .iter()
                .any(|&v| v == label)
            {
                assert!(
                    seen.contains(&(label, k)),
                    "no frame for label {label} slice {k}"
                );
            }
        }
    }
    assert!(
        frames.len() >= 2,
        "the test model predicted (almost) nothing"
    );
    // A source slice as the output: refused, the slice untouched.
    let slice = std::fs::read_dir(&series)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let copy = tmp.path().join("study");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&series).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let target = copy.join(slice.file_name().unwrap());
    let before = std::fs::read(&target).unwrap();
    predict_fails(&model, &copy, &target, &["the output is the input image"]);
    assert_eq!(std::fs::read(&target).unwrap(), before);
    // A NIfTI input has no series to reference: refused.
    let img = tmp.path().join("ct.nii.gz");
    volume::write_volume(&img, labels.data.mapv(f32::from).view(), &labels.header).unwrap();
    predict_fails(
        &model,
        &img,
        &tmp.path().join("x.dcm"),
        &["x.dcm", "not a DICOM folder"],
    );
    assert!(!tmp.path().join("x.dcm").exists());
}

/// `kseg predict --folder`: every entry one case (DICOM studies, a NIfTI
/// file, a folder that is neither), the model loaded once; the bad entry
/// is reported and skipped, the others written, summary.json and
/// summary.csv list every case, and the exit status is 1.
#[test]
fn a_folder_batch_skips_a_bad_case_and_summarises_every_case() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_meta(tmp.path(), "model.safetensors", |_| {});
    let input = tmp.path().join("studies");
    for study in ["study_a", "study_b"] {
        let d = input.join(study);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(testdata("dicom_seg/series")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    }
    std::fs::create_dir_all(input.join("notes")).unwrap();
    std::fs::write(input.join("notes/readme.txt"), "no images here").unwrap();
    let out = tmp.path().join("out");
    let run = |format: &str| {
        kseg()
            .arg("predict")
            .arg("--checkpoint")
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .args(["--folder", "--format", format, "--device", "cpu"])
            .output()
            .unwrap()
    };
    let o = run("dicom-seg");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("[3/3]") && err.contains("notes: failed"),
        "{err}"
    );
    assert!(err.contains("1 of 3 cases failed"), "{err}");
    for study in ["study_a", "study_b"] {
        let seg = open_file(out.join(format!("{study}.dcm"))).unwrap();
        assert_eq!(uid(&seg, tags::MODALITY), "SEG");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        (summary["cases"].as_u64(), summary["failed"].as_u64()),
        (Some(3), Some(1))
    );
    let results = summary["results"].as_array().unwrap();
    let status: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, ["failed", "ok", "ok"], "{summary}");
    assert!(results[0]["error"].as_str().unwrap().contains("notes"));
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    // The output folder inside the input folder is no case: a rerun into
    // it succeeds.
    std::fs::remove_dir_all(input.join("notes")).unwrap();
    let inner = input.join("out");
    for _ in 0..2 {
        let o = kseg()
            .arg("predict")
            .arg("--checkpoint")
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&inner)
            .args(["--folder", "--device", "cpu"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::remove_dir_all(&inner).unwrap();
    // NIfTI outputs of the same studies: the same voxel counts per label.
    let o = run("nifti");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let labels = volume::read_labels(out.join("study_a.nii.gz"), LabelSet::Kits19).unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let kidney = labels.data.iter().filter(|&&v| v == 1).count() as u64;
    assert_eq!(
        summary["results"][0]["voxels"]["kidney"].as_u64(),
        Some(kidney)
    );
}

/// `kseg predict` with two checkpoints: an ensemble of a model with
/// itself predicts what the model alone does; one whose intensity window
/// differs is refused with one line naming both files.
#[test]
fn an_ensemble_of_checkpoints_predicts_and_refuses_a_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let a = model_with_meta(tmp.path(), "a.safetensors", |_| {});
    let b = model_with_meta(tmp.path(), "b.safetensors", |m| m.intensity.hu_max = 400.0);
    let series = testdata("dicom_seg/series");
    let predict = |ckpts: &[&std::path::Path], out: &std::path::Path| {
        let mut c = kseg();
        c.arg("predict");
        for k in ckpts {
            c.arg("--checkpoint").arg(k);
        }
        c.arg("--input").arg(&series).arg("--output").arg(out);
        c.args(["--device", "cpu"]).output().unwrap()
    };
    let (one, two) = (tmp.path().join("one.nii.gz"), tmp.path().join("two.nii.gz"));
    assert!(predict(&[&a], &one).status.success());
    let o = predict(&[&a, &a], &two);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l1 = volume::read_labels(&one, LabelSet::Kits19).unwrap();
    let l2 = volume::read_labels(&two, LabelSet::Kits19).unwrap();
    assert_eq!(l1.data, l2.data);
    let bad = tmp.path().join("bad.nii.gz");
    let o = predict(&[&a, &b], &bad);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("b.safetensors")
            && err.contains("a.safetensors")
            && err.contains("intensity window"),
        "{err}"
    );
    assert!(!bad.exists());
}

/// `kseg export` of two checkpoints, then `kseg predict --model`: the
/// same labels as `--checkpoint A --checkpoint B`; a bundle with one byte
/// of its weights changed, or cut short, is refused with one line.
#[test]
fn a_bundle_predicts_as_its_checkpoints_and_refuses_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let a = model_with_meta(tmp.path(), "a.safetensors", |_| {});
    // b: other weights (seed 5) under a's metadata, step 7.
    let mut meta = kseg::infer::read_meta(&a).unwrap();
    meta.step = 7;
    let (_, vm) = kseg::model::ResUNet::init(
        &meta.model,
        5,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let b = tmp.path().join("b.safetensors");
    kseg::infer::save_model(&vm, &meta, &b).unwrap();
    let bundle = tmp.path().join("model.kseg");
    let o = kseg()
        .arg("export")
        .arg("--checkpoint")
        .arg(&a)
        .arg("--checkpoint")
        .arg(&b)
        .arg("--out")
        .arg(&bundle)
        .args(["--licence", "CC-BY-4.0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let series = testdata("dicom_seg/series");
    let predict = |args: &[&std::ffi::OsStr], out: &std::path::Path| {
        kseg()
            .arg("predict")
            .args(args)
            .arg("--input")
            .arg(&series)
            .arg("--output")
            .arg(out)
            .args(["--device", "cpu"])
            .output()
            .unwrap()
    };
    let (x, y) = (tmp.path().join("x.nii.gz"), tmp.path().join("y.nii.gz"));
    let o = predict(
        &[
            "--checkpoint".as_ref(),
            a.as_os_str(),
            "--checkpoint".as_ref(),
            b.as_os_str(),
        ],
        &x,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = predict(&["--model".as_ref(), bundle.as_os_str()], &y);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lx = volume::read_labels(&x, LabelSet::Kits19).unwrap();
    let ly = volume::read_labels(&y, LabelSet::Kits19).unwrap();
    assert_eq!(lx.data, ly.data);
    // The licence and both folds are in the file's metadata.
    let (meta, _) = kseg::infer::bundle::read_bundle(&bundle).unwrap();
    assert_eq!((meta.folds.len(), meta.licence.as_str()), (2, "CC-BY-4.0"));
    assert_eq!(meta.folds[1].step, 7);
    // The bundle over one of its sources (through another spelling of
    // its path): refused, the checkpoint untouched.
    let before = std::fs::read(&a).unwrap();
    let o = kseg()
        .arg("export")
        .arg("--checkpoint")
        .arg(&a)
        .arg("--out")
        .arg(tmp.path().join(".").join("a.safetensors"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read(&a).unwrap(), before);
    // The metadata edited in place (every fold's window, same length).
    let mut edited = std::fs::read(&bundle).unwrap();
    let pat = b"hu_max\\\":304.0";
    let hits: Vec<usize> = (0..edited.len() - pat.len())
        .filter(|&i| &edited[i..i + pat.len()] == pat)
        .collect();
    assert_eq!(hits.len(), 2, "both folds' windows in the metadata");
    for at in hits {
        // After `hu_max\":`.
        edited[at + 9..at + 14].copy_from_slice(b"305.0");
    }
    let meta_edit = tmp.path().join("edited.kseg");
    std::fs::write(&meta_edit, &edited).unwrap();
    // One byte of the last tensor flipped; the file cut short.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    let altered = tmp.path().join("altered.kseg");
    std::fs::write(&altered, &bytes).unwrap();
    let cut = tmp.path().join("cut.kseg");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    for (file, want) in [
        (&altered, "checksum mismatch"),
        (&cut, "truncated"),
        (&meta_edit, "checksum mismatch"),
    ] {
        let out = tmp.path().join("z.nii.gz");
        let o = predict(&["--model".as_ref(), file.as_os_str()], &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(want) && err.contains(file.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
        assert!(!out.exists());
    }
}

/// `--save-probabilities`: a 4D float32 NIfTI with the input's first three
/// dimensions and the classes fourth (read here from its bytes), whose
/// values are probabilities (each voxel's sum is 1) whose argmax is the
/// written label.
#[test]
fn saved_probabilities_are_the_labels_distribution() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_meta(tmp.path(), "model.safetensors", |_| {});
    let series = testdata("dicom_seg/series");
    let (labels_path, probs_path) = (tmp.path().join("l.nii.gz"), tmp.path().join("p.nii.gz"));
    let o = kseg()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&model)
        .arg("--input")
        .arg(&series)
        .arg("--output")
        .arg(&labels_path)
        .arg("--save-probabilities")
        .arg(&probs_path)
        .args(["--lcc", "0", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let labels = volume::read_labels(&labels_path, LabelSet::Kits19).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&probs_path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    let i16_at = |o: usize| i16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let dims: Vec<i16> = (0..5).map(|k| i16_at(40 + 2 * k)).collect();
    let (d, h, w) = labels.data.dim();
    assert_eq!(dims, [4, d as i16, h as i16, w as i16, 3]);
    assert_eq!(i16_at(70), 16, "float32");
    let off = f32::from_le_bytes(bytes[108..112].try_into().unwrap()) as usize;
    let vals: Vec<f32> = bytes[off..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(vals.len(), d * h * w * 3);
    // Fortran order: i fastest, the class slowest.
    let at = |i: usize, j: usize, k: usize, c: usize| vals[((c * w + k) * h + j) * d + i];
    for i in 0..d {
        for j in 0..h {
            for k in 0..w {
                let p = [at(i, j, k, 0), at(i, j, k, 1), at(i, j, k, 2)];
                assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{p:?}");
                let arg = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap() as u8;
                assert_eq!(arg, labels.data[[i, j, k]], "at {i},{j},{k}: {p:?}");
            }
        }
    }
}
