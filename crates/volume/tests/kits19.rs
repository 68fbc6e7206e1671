//! The three real KiTS19 label files in testdata/kits19, checked against
//! MANIFEST.tsv (headers and counts read with numpy), and written back with
//! their geometry.

#![allow(clippy::needless_range_loop)] // index loops read best for 4x4 matrices

use crate::support::testdata;
use kseg_volume::LabelSet;
use kseg_volume::{self, DType, read_header, read_labels, write_volume};

struct Row {
    case: String,
    dim: Vec<usize>,
    dtype: DType,
    pixdim: [f64; 3],
    qform_code: i16,
    sform_code: i16,
    srow: [[f64; 4]; 3],
    counts: [u64; 3],
    fg: (usize, usize, usize),
    tumour: (usize, usize, usize),
}

fn nums(s: &str) -> Vec<f64> {
    s.trim_matches(|c| "[]()".contains(c))
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect()
}

fn manifest() -> Vec<Row> {
    let text = std::fs::read_to_string(testdata("kits19/MANIFEST.tsv")).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let dim = nums(f[col("dim")]);
            let pix = nums(f[col("pixdim[0..3]")]);
            let srow = |n: &str| {
                let v = nums(f[col(n)]);
                [v[0], v[1], v[2], v[3]]
            };
            let c = nums(f[col("label_counts(0,1,2)")]);
            let fg = nums(f[col("fg_slice_range_i(min,max,n)")]);
            let t = nums(f[col("tumor_slice_range_i")]);
            Row {
                case: f[col("case")].to_string(),
                dim: dim[1..].iter().map(|&d| d as usize).collect(),
                dtype: if f[col("datatype")].starts_with("512") {
                    DType::U16
                } else {
                    DType::U8
                },
                pixdim: [pix[1], pix[2], pix[3]],
                qform_code: f[col("qform_code")].parse().unwrap(),
                sform_code: f[col("sform_code")].parse().unwrap(),
                srow: [srow("srow_x"), srow("srow_y"), srow("srow_z")],
                counts: [c[0] as u64, c[1] as u64, c[2] as u64],
                fg: (fg[0] as usize, fg[1] as usize, fg[2] as usize),
                tumour: (t[0] as usize, t[1] as usize, t[2] as usize),
            }
        })
        .collect()
}

fn slice_range(labels: &ndarray::Array3<u8>, pred: impl Fn(u8) -> bool) -> (usize, usize, usize) {
    let ks: Vec<usize> = labels
        .outer_iter()
        .enumerate()
        .filter(|(_, p)| p.iter().any(|&v| pred(v)))
        .map(|(k, _)| k)
        .collect();
    (ks[0], *ks.last().unwrap(), ks.len())
}

#[test]
fn label_files_match_the_manifest() {
    let rows = manifest();
    assert_eq!(rows.len(), 3);
    for r in rows {
        let path = testdata(&format!("kits19/{}/segmentation.nii.gz", r.case));
        let v = read_labels(&path, LabelSet::Kits19).unwrap();
        let h = &v.header;
        assert_eq!(h.shape(), r.dim.as_slice(), "{}", r.case);
        assert_eq!(v.shape().to_vec(), r.dim, "{}", r.case);
        assert_eq!(h.dtype(), r.dtype, "{}", r.case);
        for (a, b) in h.spacing().iter().zip(r.pixdim) {
            assert!((a - b).abs() < 1e-5, "{} spacing {a} vs {b}", r.case);
        }
        assert_eq!(h.nifti().qform_code, r.qform_code);
        assert_eq!(h.nifti().sform_code, r.sform_code);
        let aff = h.affine();
        if r.sform_code > 0 {
            for i in 0..3 {
                for j in 0..4 {
                    assert!((aff[i][j] - r.srow[i][j]).abs() < 1e-5, "{} affine", r.case);
                }
            }
        } else {
            // qform only (the uint16 files): nibabel gives, for case_00015,
            // [[0, 0, -0.70507812, 0], [0, -0.70507812, 0, 0], [-3, 0, 0, 0]].
            let want = [
                [0.0, 0.0, -0.70507812, 0.0],
                [0.0, -0.70507812, 0.0, 0.0],
                [-3.0, 0.0, 0.0, 0.0],
            ];
            for i in 0..3 {
                for j in 0..4 {
                    assert!(
                        (aff[i][j] - want[i][j]).abs() < 1e-6,
                        "{} qform affine {aff:?}",
                        r.case
                    );
                }
            }
        }
        let mut counts = [0u64; 3];
        for &l in v.data.iter() {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, r.counts, "{}", r.case);
        assert_eq!(
            slice_range(&v.data, |l| l > 0),
            r.fg,
            "{} foreground slices",
            r.case
        );
        assert_eq!(
            slice_range(&v.data, |l| l == 2),
            r.tumour,
            "{} tumour slices",
            r.case
        );
    }
}

#[test]
fn labels_written_with_reference_geometry_read_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["case_00004", "case_00015", "case_00061"] {
        let src = testdata(&format!("kits19/{case}/segmentation.nii.gz"));
        let v = read_labels(&src, LabelSet::Kits19).unwrap();
        let out = dir.path().join(format!("{case}.nii.gz"));
        write_volume(&out, v.data.view(), &v.header).unwrap();
        let back = read_labels(&out, LabelSet::Kits19).unwrap();
        assert_eq!(back.data, v.data, "{case} voxels");
        assert_eq!(back.header.dtype(), DType::U8);
        let (a, b) = (v.header.nifti(), back.header.nifti());
        assert_eq!(a.dim, b.dim, "{case}");
        assert_eq!(a.pixdim, b.pixdim, "{case}");
        assert_eq!(
            (a.qform_code, a.sform_code),
            (b.qform_code, b.sform_code),
            "{case}"
        );
        assert_eq!(
            (
                a.quatern_b,
                a.quatern_c,
                a.quatern_d,
                a.quatern_x,
                a.quatern_y,
                a.quatern_z
            ),
            (
                b.quatern_b,
                b.quatern_c,
                b.quatern_d,
                b.quatern_x,
                b.quatern_y,
                b.quatern_z
            ),
            "{case}"
        );
        assert_eq!(
            (a.srow_x, a.srow_y, a.srow_z),
            (b.srow_x, b.srow_y, b.srow_z),
            "{case}"
        );
        assert_eq!(a.xyzt_units, b.xyzt_units, "{case}");
        assert_eq!(v.header.affine(), back.header.affine(), "{case}");
        assert_eq!(back.header.scaling(), None);
    }
    // Nothing but the outputs is left in the folder (no temporary files).
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "case_00004.nii.gz",
            "case_00015.nii.gz",
            "case_00061.nii.gz"
        ]
    );
}

#[test]
fn uint16_labels_load_as_a_case() {
    // A case folder with only a segmentation is missing its imaging.
    let err = kseg_volume::CaseDir::open(testdata("kits19/case_00015")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("imaging.nii.gz") && msg.contains("case_00015"),
        "{msg}"
    );
    let h = read_header(testdata("kits19/case_00015/segmentation.nii.gz")).unwrap();
    assert_eq!(h.dtype(), DType::U16);
}
