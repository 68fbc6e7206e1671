//! Every file in testdata/nifti/MANIFEST.md, checked against the values that
//! manifest lists (read with an independent struct/numpy decoder).

#![allow(clippy::needless_range_loop)] // index loops read best for 4x4 matrices

use crate::support::{close, testdata};
use kseg_volume::{DType, VolumeError, read_header, read_image, read_volume};
use ndarray::IxDyn;

struct Expect {
    file: &'static str,
    shape: &'static [usize],
    dtype: DType,
    big_endian: bool,
    min: f64,
    max: f64,
    /// Sum or mean of the non-NaN voxels, whichever the manifest gives.
    sum: Option<f64>,
    mean: Option<f64>,
    nan: usize,
    voxels: &'static [(&'static [usize], f64)],
    extensions: bool,
}

const E: Expect = Expect {
    file: "",
    shape: &[],
    dtype: DType::U8,
    big_endian: false,
    min: 0.0,
    max: 0.0,
    sum: None,
    mean: None,
    nan: 0,
    voxels: &[],
    extensions: false,
};

fn manifest() -> Vec<Expect> {
    vec![
        Expect {
            file: "nibabel/standard.nii.gz",
            shape: &[4, 5, 7],
            min: 0.0,
            max: 255.0,
            sum: Some(7650.0),
            ..E
        },
        Expect {
            file: "nibabel/functional.nii",
            shape: &[17, 21, 3, 20],
            dtype: DType::I16,
            min: 629.83,
            max: 5571.62,
            mean: Some(3637.41),
            voxels: &[(&[0, 0, 0, 0], 4004.137)],
            ..E
        },
        Expect {
            file: "nibabel/anatomical.nii",
            shape: &[33, 41, 25],
            dtype: DType::I16,
            big_endian: true,
            min: -610.0,
            max: 30393.0,
            sum: Some(284166082.0),
            voxels: &[(&[0, 0, 0], 10712.0), (&[16, 20, 12], 11881.0)],
            ..E
        },
        Expect {
            file: "nibabel/reoriented_anat_moved.nii",
            shape: &[21, 26, 22],
            dtype: DType::F32,
            big_endian: true,
            min: 0.0,
            max: 21199.936,
            sum: Some(32739769.45),
            voxels: &[(&[10, 13, 11], 8117.2202)],
            ..E
        },
        Expect {
            file: "nibabel/resampled_anat_moved.nii",
            shape: &[17, 21, 3],
            dtype: DType::F32,
            big_endian: true,
            min: 409.30,
            max: 13360.96,
            nan: 153,
            voxels: &[(&[0, 0, 0], f64::NAN)],
            ..E
        },
        Expect {
            file: "nibabel/example4d.nii.gz",
            shape: &[128, 96, 24, 2],
            dtype: DType::I16,
            min: 0.0,
            max: 1162.0,
            sum: Some(101985356.0),
            extensions: true,
            ..E
        },
        Expect {
            file: "nibabel/someones_anatomy.nii.gz",
            shape: &[57, 67, 56],
            min: 6.678,
            max: 96.555,
            mean: Some(45.984),
            // raw 6 scaled by 0.352459 / 6.678364
            voxels: &[(&[0, 0, 0], 6.0 * 0.352459 + 6.678364)],
            ..E
        },
        Expect {
            file: "nifti-rs/f32.nii.gz",
            shape: &[11, 11, 11],
            dtype: DType::F32,
            max: 1.0,
            sum: Some(166.0),
            voxels: &[(&[5, 5, 5], 1.0)],
            ..E
        },
        Expect {
            file: "nifti-rs/minimal.nii.gz",
            shape: &[64, 64, 10],
            big_endian: true,
            max: 63.0,
            sum: Some(1290240.0),
            voxels: &[(&[32, 32, 5], 32.0)],
            ..E
        },
        Expect {
            file: "nifti-rs/minimal.hdr",
            shape: &[64, 64, 10],
            big_endian: true,
            max: 63.0,
            sum: Some(1290240.0),
            voxels: &[(&[32, 32, 5], 32.0)],
            ..E
        },
        Expect {
            file: "nifti-rs/minimal_extended_hdr.nii",
            shape: &[8, 8],
            dtype: DType::F64,
            sum: Some(0.0),
            extensions: true,
            ..E
        },
        Expect {
            file: "nifti-rs/zstat1.nii.gz",
            shape: &[64, 64, 21],
            dtype: DType::F32,
            big_endian: true,
            min: -8.7108,
            max: 18.5825,
            sum: Some(11648.372),
            ..E
        },
    ]
}

#[test]
fn manifest_files_read_as_listed() {
    for e in manifest() {
        let path = testdata(&format!("nifti/{}", e.file));
        let img = read_image(&path).unwrap_or_else(|err| panic!("{}: {err}", e.file));
        let h = &img.header;
        assert_eq!(h.shape(), e.shape, "{}", e.file);
        assert_eq!(img.data.shape(), e.shape, "{}", e.file);
        assert_eq!(h.dtype(), e.dtype, "{}", e.file);
        assert_eq!(h.is_big_endian(), e.big_endian, "{}", e.file);
        assert_eq!(!h.extension_codes().is_empty(), e.extensions, "{}", e.file);
        let vals: Vec<f64> = img.data.iter().copied().filter(|v| !v.is_nan()).collect();
        assert_eq!(img.data.len() - vals.len(), e.nan, "{} NaN count", e.file);
        let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = vals.iter().sum();
        assert!(close(min, e.min, 1e-4), "{} min {min} vs {}", e.file, e.min);
        assert!(close(max, e.max, 1e-4), "{} max {max} vs {}", e.file, e.max);
        if let Some(s) = e.sum {
            assert!(close(sum, s, 1e-7), "{} sum {sum} vs {s}", e.file);
        }
        if let Some(m) = e.mean {
            let mean = sum / vals.len() as f64;
            assert!(close(mean, m, 1e-5), "{} mean {mean} vs {m}", e.file);
        }
        for (idx, want) in e.voxels {
            let got = img.data[IxDyn(idx)];
            if want.is_nan() {
                assert!(got.is_nan(), "{} {idx:?} = {got}, want NaN", e.file);
            } else {
                assert!(
                    close(got, *want, 1e-6),
                    "{} {idx:?} = {got}, want {want}",
                    e.file
                );
            }
        }
    }
}

#[test]
fn axis_order_files_hold_9i_3j_k() {
    // nifti-rs/27: v[i, j, k] = 9i + 3j + k for every datatype.
    for (f, dtype) in [
        ("uint8.nii", DType::U8),
        ("int16.nii", DType::I16),
        ("uint16.nii", DType::U16),
        ("float32.nii", DType::F32),
        ("float64.nii", DType::F64),
    ] {
        let path = testdata(&format!("nifti/nifti-rs/27/{f}"));
        let img = read_image(&path).unwrap();
        assert_eq!(img.header.dtype(), dtype);
        let vol = read_volume(&path).unwrap();
        assert!(vol.data.is_standard_layout());
        for i in 0..3 {
            for j in 0..3 {
                for k in 0..3 {
                    let want = (9 * i + 3 * j + k) as f64;
                    assert_eq!(img.data[IxDyn(&[i, j, k])], want, "{f} [{i},{j},{k}]");
                    assert_eq!(
                        f64::from(vol.data[[i, j, k]]),
                        want,
                        "{f} volume [{i},{j},{k}]"
                    );
                }
            }
        }
    }
}

#[test]
fn pair_and_single_file_agree() {
    let a = read_image(testdata("nifti/nifti-rs/minimal.hdr")).unwrap();
    let b = read_image(testdata("nifti/nifti-rs/minimal.img")).unwrap();
    let c = read_image(testdata("nifti/nifti-rs/minimal.nii.gz")).unwrap();
    assert_eq!(a.data, c.data);
    assert_eq!(b.data, c.data);
}

#[test]
fn nifti2_is_refused_with_a_clear_error() {
    let path = testdata("nifti/nibabel/example_nifti2.nii.gz");
    let err = read_image(&path).unwrap_err();
    assert!(matches!(err, VolumeError::Unsupported { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("NIfTI-2") && msg.contains("example_nifti2.nii.gz"),
        "{msg}"
    );
}

#[test]
fn true_4d_is_refused_by_the_3d_reader() {
    for f in ["nibabel/example4d.nii.gz", "nibabel/functional.nii"] {
        let err = read_volume(testdata(&format!("nifti/{f}"))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("4D") && msg.contains(f.rsplit('/').next().unwrap()),
            "{msg}"
        );
    }
    // 2D data is refused too: read as 3D, an 8×8 image would be 8 slices of
    // 8×1 (issue #21). The N-D reader takes it as it is.
    let f = testdata("nifti/nifti-rs/minimal_extended_hdr.nii");
    let msg = read_volume(&f).unwrap_err().to_string();
    assert!(msg.contains("2D image of shape [8, 8]"), "{msg}");
    assert_eq!(kseg_volume::read_image(&f).unwrap().data.shape(), [8, 8]);
}

fn assert_affine(file: &str, got: [[f64; 4]; 4], want: [[f64; 4]; 4]) {
    for r in 0..4 {
        for c in 0..4 {
            assert!(
                (got[r][c] - want[r][c]).abs() < 1e-6,
                "{file} [{r}][{c}]: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn affines_match_nibabel() {
    // Expected values: nibabel 5 `img.affine` (and `header.get_qform()`),
    // printed by a short script:
    //   nib.load(f).affine, nib.load(f).header.get_qform()
    let h = read_header(testdata("nifti/nifti-rs/zstat1.nii.gz")).unwrap(); // qform only
    assert!(h.sform_affine().is_none());
    let want = [
        [-4.0, 0.0, 0.0, 0.0],
        [0.0, 4.0, 0.0, 0.0],
        [0.0, 0.0, 6.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_affine("zstat1", h.affine(), want);

    let h = read_header(testdata("nifti/nibabel/anatomical.nii")).unwrap(); // BE, qfac -1
    let want = [
        [-2.0, 0.0, 0.0, 32.0],
        [0.0, 2.0, 0.0, -40.0],
        [0.0, 0.0, 2.0, -16.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_affine("anatomical sform", h.affine(), want);
    assert_affine("anatomical qform", h.qform_affine().unwrap(), want);

    // Oblique: qform and sform differ in the 8th digit, as in nibabel.
    let h = read_header(testdata("nifti/nibabel/example4d.nii.gz")).unwrap();
    let sform = [
        [-2.0, 0.0, 0.0, 117.8551025391],
        [0.0, 1.9737114906, -0.3555282354, -35.7229423523],
        [0.0, 0.3232076168, 2.1710817814, -7.2487983704],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let qform = [
        [-2.0, 0.0, 0.0, 117.8551025391],
        [0.0, 1.973711438, -0.3555282251, -35.7229423523],
        [0.0, 0.3232076105, 2.1710816877, -7.2487983704],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_affine("example4d sform", h.affine(), sform);
    assert_affine("example4d qform", h.qform_affine().unwrap(), qform);

    // No qform, no sform: Analyze-style fallback, x flipped, centred.
    let h = read_header(testdata("nifti/nifti-rs/minimal.nii.gz")).unwrap();
    let want = [
        [-3.0, 0.0, 0.0, 94.5],
        [0.0, 3.0, 0.0, -94.5],
        [0.0, 0.0, 3.0, -13.5],
        [0.0, 0.0, 0.0, 1.0],
    ];
    assert_affine("minimal", h.affine(), want);
}
