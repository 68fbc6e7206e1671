//! Malformed and hostile headers, built byte by byte (NIfTI) or with
//! dicom-object (DICOM) in the test itself: every size is checked against
//! the memory limit (`kseg_volume::limits`) before anything of that size
//! exists, every geometry is validated where it is read, and a seeded
//! fuzz loop over DICOM header fields finds no panic. The expectations are
//! the NIfTI-1 and DICOM standards' own rules (and nibabel's reading of
//! them), not kseg's earlier output.

use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use kseg_volume::dicom::read_dicom_dir;
use kseg_volume::{LabelSet, VolumeError, read_header, read_image, read_labels, read_volume};

use crate::support::testdata;
use crate::support_dicom::{SeriesSpec, Storage, ds, write_series, write_series_with};

/// 3×3×3 uint8, sform_code 2 (identity), qform_code 0, pixdim 1
/// (nifti-rs's fixture; byte offsets are the NIfTI-1 header's).
const U8_3X3X3: &str = "nifti/nifti-rs/27/uint8.nii";

fn edited(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(testdata(U8_3X3X3)).unwrap();
    edit(&mut b);
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

fn put_f32(b: &mut [u8], at: usize, v: &[f32]) {
    for (i, x) in v.iter().enumerate() {
        b[at + 4 * i..at + 4 * i + 4].copy_from_slice(&x.to_le_bytes());
    }
}

fn put_i16(b: &mut [u8], at: usize, v: i16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

// NIfTI-1 header offsets.
const PIXDIM: usize = 76;
const SCL_SLOPE: usize = 112;
const QFORM_CODE: usize = 252;
const SFORM_CODE: usize = 254;
const QUATERN_B: usize = 256;
const SROW_X: usize = 280;

/// Both readers of a header (header only, and voxels) refuse `p`, naming
/// it and saying each of `want`.
fn refused(p: &Path, want: &[&str]) {
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    for e in [
        read_header(p).unwrap_err(),
        read_volume(p).unwrap_err(),
        read_labels(p, LabelSet::Kits19).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(msg.contains(&name), "want {name} in: {msg}");
        for w in want {
            assert!(msg.contains(w), "want {w:?} in: {msg}");
        }
    }
}

/// F10: an affine that places no voxel (NaN, all zero, singular; from the
/// sform, the qform or pixdim) is an error where the header is read, not
/// axis codes guessed from it.
#[test]
fn affines_that_place_no_voxel_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The fixture itself reads (the identity sform).
    assert_eq!(read_volume(testdata(U8_3X3X3)).unwrap().shape(), [3, 3, 3]);
    let p = edited(d, "sform_nan.nii", |b| put_f32(b, SROW_X, &[f32::NAN]));
    refused(&p, &["sform", "not a finite number"]);
    let p = edited(d, "sform_zero.nii", |b| put_f32(b, SROW_X, &[0.0; 12]));
    refused(&p, &["sform", "voxel size of 0 along axis 0"]);
    // Rows x and y equal: the columns (1,1,0), (0,0,0)... a plane.
    let p = edited(d, "sform_singular.nii", |b| {
        put_f32(
            b,
            SROW_X,
            &[1.0, 2.0, 3.0, 0.0, 2.0, 4.0, 6.0, 0.0, 1.0, 1.0, 1.0, 0.0],
        )
    });
    refused(&p, &["sform", "one plane"]);
    // No sform; a qform (identity rotation) with pixdim[2] NaN.
    let qform = |b: &mut Vec<u8>| {
        put_i16(b, SFORM_CODE, 0);
        put_i16(b, QFORM_CODE, 1);
        put_f32(b, QUATERN_B, &[0.0; 6]);
    };
    let p = edited(d, "qform_nan.nii", |b| {
        qform(b);
        put_f32(b, PIXDIM + 8, &[f32::NAN]);
    });
    refused(&p, &["qform", "not a finite number"]);
    // The same qform with pixdim 1 reads: x, y, z are the file's axes.
    let p = edited(d, "qform_ok.nii", qform);
    let h = read_header(&p).unwrap();
    assert_eq!(h.affine()[0][0], 1.0);
    assert_eq!(h.affine()[1][1], 1.0);
    // Neither: pixdim gives the axes, and a pixdim of 0 gives none.
    let p = edited(d, "pixdim_zero.nii", |b| {
        put_i16(b, SFORM_CODE, 0);
        put_f32(b, PIXDIM + 12, &[0.0]);
    });
    refused(
        &p,
        &["pixdim (no sform or qform)", "voxel size of 0 along axis 2"],
    );
}

/// F23: fields nibabel refuses or ignores are not used silently: a slope
/// with a NaN intercept (nibabel: "valid slope but invalid intercept"),
/// and a transform code outside NIfTI-1's 0..=4.
#[test]
fn invalid_scaling_and_transform_codes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = edited(d, "inter_nan.nii", |b| {
        put_f32(b, SCL_SLOPE, &[2.0, f32::NAN]);
    });
    refused(&p, &["scl_slope 2", "scl_inter NaN"]);
    let p = edited(d, "inter_inf.nii", |b| {
        put_f32(b, SCL_SLOPE, &[-1.0, f32::INFINITY]);
    });
    refused(&p, &["scl_inter inf"]);
    let p = edited(d, "sform99.nii", |b| put_i16(b, SFORM_CODE, 99));
    refused(&p, &["sform_code 99", "0 to 4"]);
    let p = edited(d, "qform_neg.nii", |b| put_i16(b, QFORM_CODE, -2));
    refused(&p, &["qform_code -2"]);
    // A NaN (or 0) slope means "no scaling" (NIfTI-1, nibabel), whatever
    // the intercept: the stored values are read as they are.
    let p = edited(d, "slope_nan.nii", |b| {
        put_f32(b, SCL_SLOPE, &[f32::NAN, f32::NAN]);
    });
    let plain = read_image(testdata(U8_3X3X3)).unwrap();
    assert_eq!(read_image(&p).unwrap().data, plain.data);
    // A valid slope and intercept scale, as before: v * 2 - 1.
    let p = edited(d, "scaled.nii", |b| put_f32(b, SCL_SLOPE, &[2.0, -1.0]));
    let scaled = read_image(&p).unwrap();
    assert_eq!(scaled.data, plain.data.mapv(|v| v * 2.0 - 1.0));
}

/// A NIfTI-1 header of `dims` int16 voxels, identity sform, vox_offset
/// `vox_offset`, followed by `tail` bytes.
fn header_only(dims: [i16; 3], vox_offset: f32, tail: usize) -> Vec<u8> {
    let mut b = std::fs::read(testdata(U8_3X3X3)).unwrap();
    b.truncate(348);
    for (i, d) in dims.iter().enumerate() {
        put_i16(&mut b, 42 + 2 * i, *d);
    }
    put_i16(&mut b, 70, 4); // int16
    put_i16(&mut b, 72, 16);
    put_f32(&mut b, 108, &[vox_offset]);
    b.resize(348 + tail, 0);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn too_large(e: VolumeError, name: &str, want: &str) {
    let msg = e.to_string();
    assert!(
        matches!(e, VolumeError::TooLarge { .. }),
        "not a size error: {msg}"
    );
    assert!(
        msg.contains(name) && msg.contains(want) && msg.contains("KSEG_MAX_BYTES"),
        "want {name}, {want:?} and the setting in: {msg}"
    );
}

/// F8d: an honest 1024³ int16 header (2 GiB of voxels; 6 GiB with its
/// float32 copy, 10 GiB with a float64 one) is refused by the default 4 GiB
/// limit before a byte of voxels is inflated, whatever the stream holds.
/// Reading only the stored voxels (`kseg info`'s statistics) implies 2
/// GiB, within the limit: the stream then ends early and says so.
#[test]
fn a_header_beyond_the_memory_limit_is_refused_before_inflating() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bomb.nii.gz");
    std::fs::write(&p, gzip(&header_only([1024, 1024, 1024], 352.0, 4 + 64))).unwrap();
    // 1024³ · (2 + 4) bytes, and the 4 between the header and vox_offset.
    too_large(
        read_volume(&p).unwrap_err(),
        "bomb.nii.gz",
        "6442450948 bytes",
    );
    // 1024³ · (2 + 8) + 4 bytes.
    too_large(
        read_image(&p).unwrap_err(),
        "bomb.nii.gz",
        "10737418244 bytes",
    );
    let e = kseg_volume::stats::read_stats(&p, false).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // F8a: a plain file far shorter than its vox_offset (1e9) is refused
    // before the extension block is read: no memory of that size.
    let p = dir.path().join("voxoffset.nii");
    std::fs::write(&p, header_only([3, 3, 3], 1e9, 1000)).unwrap();
    let e = read_image(&p).unwrap_err().to_string();
    assert!(
        e.contains("voxoffset.nii")
            && e.contains("file ends at byte 1348, before vox_offset 1000000000"),
        "{e}"
    );
    // The same in a gzip stream: the block grows only as data arrives.
    let p = dir.path().join("voxoffset.nii.gz");
    std::fs::write(&p, gzip(&header_only([3, 3, 3], 1e9, 1000))).unwrap();
    let e = read_image(&p).unwrap_err().to_string();
    assert!(e.contains("file ends at byte 1348"), "{e}");
}

/// A small CT-like volume `[slice, row, column]` in HU.
fn phantom(n: usize, rows: usize, cols: usize) -> ndarray::Array3<f32> {
    ndarray::Array3::from_shape_fn((n, rows, cols), |(k, r, c)| {
        ((k * 37 + r * 11 + c * 3) % 400) as f32 - 200.0
    })
}

const UID: &str = "1.2.826.0.1.3680043.2.1125.901";

fn spec<'a>(hu: &'a ndarray::Array3<f32>, row_dir: [f64; 3], col_dir: [f64; 3]) -> SeriesSpec<'a> {
    SeriesSpec {
        hu,
        origin: [-30.0, -20.0, 40.0],
        row_dir,
        col_dir,
        pixel_spacing: [0.8, 0.8],
        step: 2.0,
        storage: Storage::U16Intercept,
        uid: UID,
    }
}

const X: [f64; 3] = [1.0, 0.0, 0.0];
const Y: [f64; 3] = [0.0, 1.0, 0.0];

fn names(n: usize) -> (Vec<String>, Vec<u32>) {
    (
        (0..n).map(|k| format!("IM{k:03}")).collect(),
        (1..=n as u32).collect(),
    )
}

fn write(dir: &Path, spec: &SeriesSpec, edit: impl Fn(usize, &mut InMemDicomObject)) {
    let (names, numbers) = names(spec.hu.dim().0);
    write_series_with(dir, spec, &names, &numbers, edit);
}

fn err(dir: &Path) -> String {
    read_dicom_dir(dir, None).unwrap_err().to_string()
}

/// F8b: headers claiming 4096×4096 pixels in 65 slices (4.4 GB as float32;
/// no real pixels) are refused by the limit before the volume exists.
#[test]
fn dicom_sizes_beyond_the_memory_limit_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let hu = phantom(65, 2, 2);
    let dir = tmp.path().join("huge");
    write(&dir, &spec(&hu, X, Y), |_, o| {
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            dicom_value!(U16, [4096]),
        ));
        o.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            dicom_value!(U16, [4096]),
        ));
    });
    // 65 · 4096 · 4096 · 4 bytes.
    too_large(
        read_dicom_dir(&dir, None).unwrap_err(),
        "IM000",
        "4362076160 bytes",
    );
}

/// F16: direction cosines that are not unit vectors (2, 0, 0 / 0, 0.5, 0:
/// their cross product is a unit normal) or not at right angles are
/// refused, naming the slice; PixelSpacing alone gives the voxel size.
#[test]
fn orientations_that_are_not_unit_vectors_at_right_angles_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hu = phantom(4, 6, 5);
    let d = tmp.path().join("scaled");
    write_series(
        &d,
        &spec(&hu, [2.0, 0.0, 0.0], [0.0, 0.5, 0.0]),
        &names(4).0,
        &names(4).1,
    );
    let e = err(&d);
    assert!(
        e.contains("IM0")
            && e.contains("not two unit vectors at right angles")
            && e.contains("lengths 2.0000 and 0.5000"),
        "{e}"
    );
    let d = tmp.path().join("skew");
    let skew = [0.6, 0.8, 0.0];
    write_series(&d, &spec(&hu, X, skew), &names(4).0, &names(4).1);
    let e = err(&d);
    assert!(e.contains("cosine 0.6000"), "{e}");
    // Unit vectors at right angles, tilted 30° about x, read.
    let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let d = tmp.path().join("ok");
    write_series(&d, &spec(&hu, X, [0.0, c, s]), &names(4).0, &names(4).1);
    let v = read_dicom_dir(&d, None).unwrap();
    assert_eq!(v.data, hu);
    // Column axis (between rows, 0.8 mm along col_dir; RAS flips y).
    let a = v.header.affine();
    assert!(
        (a[1][1] + c * 0.8).abs() < 1e-4 && (a[2][1] - s * 0.8).abs() < 1e-4,
        "{a:?}"
    );
}

/// F15: a gantry tilt (IOP tilted 20° about x while IPP steps along z) is
/// refused: the grid `normal × step` would put slice 11 9.4 mm from where
/// its ImagePositionPatient says.
#[test]
fn a_gantry_tilt_is_refused_not_stacked_along_the_normal() {
    let tmp = tempfile::tempdir().unwrap();
    let hu = phantom(12, 6, 5);
    let (c, s) = (20f64.to_radians().cos(), 20f64.to_radians().sin());
    let d = tmp.path().join("tilt");
    let origin = [-30.0, -20.0, 40.0];
    write(&d, &spec(&hu, X, [0.0, c, -s]), |k, o| {
        let ipp = [origin[0], origin[1], origin[2] + 2.0 * k as f64];
        o.put(DataElement::new(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            ds(&ipp),
        ));
    });
    let e = err(&d);
    // Normal (0, s, c): a 2 mm step in z is 2c along it and 2s within the
    // plane: 0.684 mm per 1.879 mm, 20 degrees.
    assert!(
        e.contains("gantry tilt")
            && e.contains("0.684 mm")
            && e.contains("1.879 mm")
            && e.contains("20.00 degrees"),
        "{e}"
    );
}

/// F14: a CT slice without RescaleSlope or RescaleIntercept (type 1 in the
/// CT image IOD) is refused, not read as slope 1, intercept 0 (HU shifted
/// by the 1024 the storage adds); bad values are refused too.
#[test]
fn a_ct_slice_without_its_rescale_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hu = phantom(4, 6, 5);
    for (name, tag, value) in [
        ("no_slope", tags::RESCALE_SLOPE, None),
        ("no_intercept", tags::RESCALE_INTERCEPT, None),
        ("zero_slope", tags::RESCALE_SLOPE, Some("0")),
        ("nan_intercept", tags::RESCALE_INTERCEPT, Some("NaN")),
    ] {
        let d = tmp.path().join(name);
        write(&d, &spec(&hu, X, Y), |k, o| {
            if k == 2 {
                match value {
                    None => {
                        o.remove_element(tag);
                    }
                    Some(v) => {
                        o.put(DataElement::new(tag, VR::DS, PrimitiveValue::from(v)));
                    }
                }
            }
        });
        let e = err(&d);
        assert!(e.contains("IM002"), "{name}: {e}");
        let want = match (tag == tags::RESCALE_SLOPE, value) {
            (true, None) => "no RescaleSlope",
            (false, None) => "no RescaleIntercept",
            (true, Some(_)) => "RescaleSlope 0",
            (false, Some(_)) => "RescaleIntercept \"NaN\" is not a finite number",
        };
        assert!(e.contains(want), "{name}: want {want:?} in {e}");
    }
    // An MR series may leave them out: stored values are the values.
    let d = tmp.path().join("mr");
    let mut mr = spec(&hu, X, Y);
    mr.storage = Storage::I16;
    write(&d, &mr, |_, o| {
        o.put(DataElement::new(
            tags::MODALITY,
            VR::CS,
            PrimitiveValue::from("MR"),
        ));
        o.remove_element(tags::RESCALE_SLOPE);
        o.remove_element(tags::RESCALE_INTERCEPT);
    });
    assert_eq!(read_dicom_dir(&d, Some(UID)).unwrap().data, hu);
}

/// F13: slices that are symbolic links are slices (12 read as 12, not 10),
/// a link to the series folder reads the series, and a link loop or a
/// broken link is an error naming it.
#[cfg(unix)]
#[test]
fn symlinked_slices_are_read_and_broken_links_named() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let hu = phantom(12, 6, 5);
    let store = tmp.path().join("store");
    write_series(&store, &spec(&hu, X, Y), &names(12).0, &names(12).1);
    let d = tmp.path().join("linked");
    std::fs::create_dir(&d).unwrap();
    for k in 0..12 {
        let name = format!("IM{k:03}");
        if k == 0 || k == 11 {
            symlink(store.join(&name), d.join(&name)).unwrap();
        } else {
            std::fs::copy(store.join(&name), d.join(&name)).unwrap();
        }
    }
    assert_eq!(read_dicom_dir(&d, None).unwrap().data, hu);
    let link = tmp.path().join("series_link");
    symlink(&store, &link).unwrap();
    assert_eq!(read_dicom_dir(&link, None).unwrap().data, hu);
    // A link back to the folder above: a loop, named.
    symlink(&d, d.join("again")).unwrap();
    let e = err(&d);
    assert!(
        e.contains("again") && e.contains("reached twice through symbolic links"),
        "{e}"
    );
    std::fs::remove_file(d.join("again")).unwrap();
    // A broken link: named, not passed over.
    symlink(tmp.path().join("gone"), d.join("IM099")).unwrap();
    let e = err(&d);
    assert!(e.contains("IM099") && e.contains("No such file"), "{e}");
}

/// Seeded fuzzing of DICOM headers: random values (zero, huge, negative,
/// NaN, garbage text, missing) in the fields the reader relies on, in one
/// or all slices, must give an error or a volume of the claimed size,
/// never a panic. `KSEG_FUZZ_CASES` and `KSEG_FUZZ_SEED` as for NIfTI.
#[test]
fn random_dicom_header_fields_never_panic() {
    use rand::{Rng, SeedableRng};
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let cases = env("KSEG_FUZZ_CASES", 150);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(env("KSEG_FUZZ_SEED", 2024));
    let hu = phantom(3, 4, 4);
    let fields = [
        (tags::ROWS, VR::US),
        (tags::COLUMNS, VR::US),
        (tags::IMAGE_ORIENTATION_PATIENT, VR::DS),
        (tags::IMAGE_POSITION_PATIENT, VR::DS),
        (tags::PIXEL_SPACING, VR::DS),
        (tags::RESCALE_SLOPE, VR::DS),
        (tags::RESCALE_INTERCEPT, VR::DS),
        (tags::NUMBER_OF_FRAMES, VR::IS),
        (tags::BITS_ALLOCATED, VR::US),
        (tags::SAMPLES_PER_PIXEL, VR::US),
        (tags::PIXEL_REPRESENTATION, VR::US),
        (tags::SLICE_THICKNESS, VR::DS),
        (tags::MODALITY, VR::CS),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for case in 0..cases {
        let dir = tmp.path().join(format!("c{case}"));
        let edits: Vec<(usize, Option<usize>, u8, u64, f64)> = (0..rng.random_range(1..4))
            .map(|_| {
                (
                    rng.random_range(0..fields.len()),
                    rng.random_bool(0.5).then(|| rng.random_range(0..3)),
                    rng.random_range(0..6),
                    rng.random(),
                    rng.random_range(-1e3..1e3),
                )
            })
            .collect();
        write(&dir, &spec(&hu, X, Y), |k, o| {
            for &(f, slice, kind, bits, x) in &edits {
                if slice.is_some_and(|s| s != k) {
                    continue;
                }
                let (tag, vr) = fields[f];
                let value = match (vr, kind) {
                    (_, 0) => {
                        o.remove_element(tag);
                        continue;
                    }
                    (VR::US, 1) => dicom_value!(U16, [u16::MAX]),
                    (VR::US, 2) => dicom_value!(U16, [0]),
                    (VR::US, _) => dicom_value!(U16, [bits as u16]),
                    (_, 1) => PrimitiveValue::from("NaN"),
                    (_, 2) => PrimitiveValue::from(format!("{}", bits as f64 * 1e300)),
                    (_, 3) => PrimitiveValue::from("x\\y\\"),
                    _ => ds(&[x, x * 0.5, 1.0 - x, x, 0.0, x * x][..1 + (bits % 6) as usize]),
                };
                o.put(DataElement::new(tag, vr, value));
            }
        });
        let got = std::panic::catch_unwind(|| read_dicom_dir(&dir, None));
        match got {
            Err(_) => panic!("case {case} panicked: {edits:?}"),
            Ok(Ok(v)) => {
                let (n, r, c) = v.data.dim();
                assert!(
                    n * r * c <= 3 * 4 * 4 * 8,
                    "case {case}: {:?}",
                    v.data.dim()
                );
            }
            Ok(Err(_)) => {}
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A case folder `dir/id` with 4×6×5 imaging on `img` and labels (a
/// kidney block) on `seg`; the labels are written as `seg_name`.
fn write_case(
    dir: &Path,
    id: &str,
    img: &kseg_volume::Header,
    seg: &kseg_volume::Header,
    seg_name: &str,
) -> PathBuf {
    let case = dir.join(id);
    std::fs::create_dir_all(&case).unwrap();
    let hu = ndarray::Array3::<i16>::from_elem((4, 6, 5), -100);
    kseg_volume::write_volume(case.join("imaging.nii.gz"), hu.view(), img).unwrap();
    let mut lab = ndarray::Array3::<u8>::zeros((4, 6, 5));
    lab.slice_mut(ndarray::s![1..3, 2..5, 1..4]).fill(1);
    let gz = case.join("labels.tmp.nii.gz");
    kseg_volume::write_volume(&gz, lab.view(), seg).unwrap();
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::remove_file(&gz).unwrap();
    let bytes = if seg_name.ends_with(".gz") {
        bytes
    } else {
        // Gunzipped here (the plain file as any other writer makes it).
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain)
            .unwrap();
        plain
    };
    std::fs::write(case.join(seg_name), bytes).unwrap();
    case
}

fn kits(spacing: [f32; 3]) -> kseg_volume::Header {
    kseg_volume::Header::kits_like([4, 6, 5], spacing, kseg_volume::DType::I16).unwrap()
}

/// `h` with its sform's offset moved by `dx` mm along x.
fn shifted(h: &kseg_volume::Header, dx: f32) -> kseg_volume::Header {
    let mut raw = h.nifti().clone();
    raw.srow_x[3] += dx;
    raw.qform_code = 0;
    kseg_volume::Header::from_nifti(raw).unwrap()
}

/// F17: labels on another voxel grid than their imaging (shifted 80 mm,
/// or twice the voxel size; same shape and axis codes) are refused by the
/// case loader training uses, as `kseg evaluate` refuses them.
#[test]
fn labels_on_another_grid_than_their_imaging_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let base = kits([2.0, 0.8, 0.8]);
    let same = write_case(
        tmp.path(),
        "case_00000",
        &base,
        &base,
        "segmentation.nii.gz",
    );
    let loaded = kseg_volume::CaseDir::open(&same)
        .unwrap()
        .load(LabelSet::Kits19)
        .unwrap();
    assert_eq!(
        loaded
            .labels
            .unwrap()
            .data
            .iter()
            .filter(|&&v| v == 1)
            .count(),
        2 * 3 * 3
    );
    for (id, seg, want) in [
        ("case_00001", shifted(&base, 80.0), "80.000 mm apart"),
        ("case_00002", kits([4.0, 1.6, 1.6]), "mm apart"),
    ] {
        let case = write_case(tmp.path(), id, &base, &seg, "segmentation.nii.gz");
        let e = kseg_volume::CaseDir::open(&case)
            .unwrap()
            .load(LabelSet::Kits19)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(id)
                && e.contains("segmentation.nii.gz")
                && e.contains("voxel grid")
                && e.contains(want),
            "{e}"
        );
    }
}

/// F19 and F18: a truth case stored as `segmentation.nii` (which a case
/// folder may hold) counts as a truth case, so a missing prediction for
/// it is named; a truth whose pixdim is 0 or NaN (distances in mm from
/// it) is refused, not scored 0.966 or NaN.
#[test]
fn truth_cases_in_plain_nii_count_and_truth_pixdim_is_checked() {
    use kseg_volume::evaluate_folder;
    let tmp = tempfile::tempdir().unwrap();
    let truth = tmp.path().join("truth");
    let pred = tmp.path().join("pred");
    std::fs::create_dir_all(&pred).unwrap();
    let base = kits([2.0, 0.8, 0.8]);
    write_case(&truth, "case_00000", &base, &base, "segmentation.nii.gz");
    let plain = write_case(&truth, "case_00001", &base, &base, "segmentation.nii");
    std::fs::copy(
        truth.join("case_00000/segmentation.nii.gz"),
        pred.join("case_00000.nii.gz"),
    )
    .unwrap();
    let e = evaluate_folder(&pred, &truth, LabelSet::Kits19, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no prediction for 1") && e.contains("case_00001"),
        "{e}"
    );
    let subset = evaluate_folder(&pred, &truth, LabelSet::Kits19, true).unwrap();
    assert_eq!(subset.missing, vec!["case_00001".to_string()]);
    // Its prediction is scored against segmentation.nii: a perfect one.
    std::fs::copy(
        plain.join("segmentation.nii"),
        pred.join("case_00001.nii.gz"),
    )
    .unwrap();
    let all = evaluate_folder(&pred, &truth, LabelSet::Kits23, false).unwrap();
    assert!(all.missing.is_empty());
    // Truth pixdim 0 and NaN (the sform still places the voxels).
    for (id, v) in [("case_00002", 0.0f32), ("case_00003", f32::NAN)] {
        let mut raw = base.nifti().clone();
        raw.pixdim[2] = v;
        let bad = kseg_volume::Header::from_nifti(raw).unwrap();
        write_case(&truth, id, &bad, &bad, "segmentation.nii.gz");
        std::fs::copy(
            truth.join(id).join("segmentation.nii.gz"),
            pred.join(format!("{id}.nii.gz")),
        )
        .unwrap();
        let e = evaluate_folder(&pred, &truth, LabelSet::Kits23, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(id) && e.contains("is not a voxel size"), "{e}");
        std::fs::remove_file(pred.join(format!("{id}.nii.gz"))).unwrap();
        std::fs::remove_dir_all(truth.join(id)).unwrap();
    }
}

/// F25: an input that is a symbolic link loop is named as one (ELOOP),
/// not reported as a missing file; a missing file still is.
#[cfg(unix)]
#[test]
fn a_symlink_loop_input_is_named_as_a_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.nii.gz");
    let b = tmp.path().join("b.nii.gz");
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let e = read_volume(&a).unwrap_err().to_string();
    assert!(
        e.contains("a.nii.gz") && e.contains("symbolic links"),
        "{e}"
    );
    assert!(!e.contains("missing"), "{e}");
    let e = read_volume(tmp.path().join("none.nii.gz"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing: no such file"), "{e}");
}

/// F24: the truth folder as its own prediction folder (the predictions
/// found are the truth files themselves) used to score Dice 1 without a
/// word; it is refused, naming the file. Truth cases that hold their own
/// predictions (`case_X/prediction.nii.gz`) are still scored.
#[test]
fn a_truth_folder_is_not_scored_against_itself() {
    use kseg_volume::evaluate_folder;
    let tmp = tempfile::tempdir().unwrap();
    let truth = tmp.path().join("truth");
    let base = kits([2.0, 0.8, 0.8]);
    write_case(&truth, "case_00000", &base, &base, "segmentation.nii.gz");
    let e = evaluate_folder(&truth, &truth, LabelSet::Kits19, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("case_00000") && e.contains("is the ground truth file") && e.contains("itself"),
        "{e}"
    );
    std::fs::copy(
        truth.join("case_00000/segmentation.nii.gz"),
        truth.join("case_00000/prediction.nii.gz"),
    )
    .unwrap();
    let ok = evaluate_folder(&truth, &truth, LabelSet::Kits19, false).unwrap();
    assert!(ok.missing.is_empty());
}
