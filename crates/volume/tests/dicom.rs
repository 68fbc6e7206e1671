//! DICOM series against the values pydicom reads from the same files
//! (testdata/dicom/MANIFEST.tsv: pydicom's test files), and against series
//! written here with dicom-object.

use kseg_volume::dicom::{list_series, read_dicom_dir, read_series};
use kseg_volume::orient::Orientation;

use crate::support::testdata;

/// A folder holding only the fixture `name` (a single file).
fn alone(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = testdata(&format!("dicom/single/{name}"));
    std::fs::copy(&src, dir.path().join(name)).unwrap();
    dir
}

#[test]
fn the_ct_series_reads_as_pydicom_stacks_it() {
    let v = read_dicom_dir(testdata("dicom/series/ct_series_5"), None).unwrap();
    assert_eq!(v.data.dim(), (5, 16, 16));
    // MANIFEST: HU volume sum -177320, min -888, max 85.
    let sum: f64 = v.data.iter().map(|&x| f64::from(x)).sum();
    assert_eq!(sum, -177320.0);
    let (min, max) = v
        .data
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert_eq!((min, max), (-888.0, 85.0));
    // The first slice is the lowest position (file 3353: stored sum 244550,
    // intercept -1024 over 256 pixels), whatever the file names say.
    let first: f64 = v
        .data
        .index_axis(ndarray::Axis(0), 0)
        .iter()
        .map(|&x| f64::from(x))
        .sum();
    assert_eq!(first, 244550.0 - 1024.0 * 256.0);
    // NIfTI's affine: DICOM's LPS turned to RAS. IPP of file 3353 is
    // (-72.2, -143, -1.2375), rows run along +y (LPS), columns along +x, the
    // slice step 2.5 mm along +z.
    let a = v.header.affine();
    let want = [
        [0.0, 0.0, -0.488281, 72.2],
        [0.0, -0.488281, 0.0, 143.0],
        [2.5, 0.0, 0.0, -1.2375],
    ];
    for r in 0..3 {
        for c in 0..4 {
            assert!((a[r][c] - want[r][c]).abs() < 1e-4, "affine {a:?}");
        }
    }
    assert_eq!(Orientation::from_affine(&a).codes(), ['S', 'P', 'L']);
}

#[test]
fn a_study_with_a_gap_is_refused_naming_the_positions() {
    let dir = testdata("dicom/series/mixed_study");
    let series = list_series(&dir).unwrap();
    let ct: Vec<_> = series.iter().filter(|s| s.modality == "CT").collect();
    assert_eq!(ct.len(), 1);
    assert_eq!(ct[0].files.len(), 4);
    assert!(series.iter().any(|s| s.modality == "CR"));
    // CT2's positions (MANIFEST): -99.48, 103.02, 104.27, 105.52.
    let e = read_dicom_dir(&dir, None).unwrap_err().to_string();
    assert!(
        e.contains("not evenly spaced") && e.contains("-99.480") && e.contains("103.020"),
        "{e}"
    );
    // A series that is not there, by UID: the series are listed.
    let e = read_dicom_dir(&dir, Some("1.2.3.4"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no series 1.2.3.4") && e.contains("CT") && e.contains("CR"),
        "{e}"
    );
}

#[test]
fn transfer_syntaxes_decode_to_pydicoms_values_or_are_named() {
    // MANIFEST: stored sum 2125338 over 64 x 64 in every MR variant.
    for f in [
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
    ] {
        let dir = alone(f);
        let s = list_series(dir.path()).unwrap().remove(0);
        assert_eq!(s.modality, "MR");
        let v = read_series(&s).unwrap();
        assert_eq!(v.data.dim(), (1, 64, 64), "{f}");
        let sum: f64 = v.data.iter().map(|&x| f64::from(x)).sum();
        assert_eq!(sum, 2125338.0, "{f}");
        // Not CT: choosing by modality refuses it, listing the series.
        let e = read_dicom_dir(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("no CT series") && e.contains("MR"), "{e}");
    }
    // CT_small: stored sum 14826310, intercept -1024 over 128 x 128.
    let dir = alone("CT_small.dcm");
    let v = read_dicom_dir(dir.path(), None).unwrap();
    let sum: f64 = v.data.iter().map(|&x| f64::from(x)).sum();
    assert_eq!(sum, 14826310.0 - 1024.0 * 128.0 * 128.0);
    // Syntaxes this build cannot decode: an error naming the syntax.
    for (f, name) in [
        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS"),
        ("MR_small_jp2klossless.dcm", "JPEG 2000"),
    ] {
        let dir = alone(f);
        let s = list_series(dir.path()).unwrap().remove(0);
        let e = read_series(&s).unwrap_err().to_string();
        assert!(e.contains(f) && e.contains(name), "{f}: {e}");
    }
}

#[test]
fn bad_files_are_errors_naming_them() {
    for (f, what) in [
        ("MR_truncated.dcm", "MR_truncated.dcm"),
        ("rtplan_truncated.dcm", "not a readable DICOM file"),
        ("no_meta.dcm", "no DICOM files"),
    ] {
        let dir = alone(f);
        let err = list_series(dir.path()).and_then(|mut s| read_series(&s.remove(0)));
        let e = err.unwrap_err().to_string();
        assert!(e.contains(what), "{f}: {e}");
    }
}

/// A small CT-like volume `[slice, row, column]` in HU.
fn phantom(n: usize, rows: usize, cols: usize) -> ndarray::Array3<f32> {
    ndarray::Array3::from_shape_fn((n, rows, cols), |(k, r, c)| {
        ((k * 37 + r * 11 + c * 3) % 400) as f32 - 200.0
    })
}

/// Series written here, read back: file names shuffled and InstanceNumber
/// reversed change nothing (slices go by position); int16 and
/// uint16-plus-intercept storage give the same HU; a tilted orientation
/// reads with its affine (oblique, nearest axes).
#[test]
fn written_series_read_back_by_position_not_by_name_or_number() {
    use crate::support_dicom::{SeriesSpec, Storage, write_series};
    let hu = phantom(6, 12, 10);
    let spec = |storage, row_dir, col_dir| SeriesSpec {
        hu: &hu,
        origin: [-30.0, -20.0, 40.0],
        row_dir,
        col_dir,
        pixel_spacing: [0.7, 0.8],
        step: 2.0,
        storage,
        uid: "1.2.826.0.1.3680043.2.1125.777",
    };
    let axial = ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]);
    let tmp = tempfile::tempdir().unwrap();
    let ordered = tmp.path().join("ordered");
    let names: Vec<String> = (0..6).map(|k| format!("IM{k}")).collect();
    write_series(
        &ordered,
        &spec(Storage::I16, axial.0, axial.1),
        &names,
        &[1, 2, 3, 4, 5, 6],
    );
    let a = read_dicom_dir(&ordered, None).unwrap();
    assert_eq!(a.data, hu);
    // Names shuffled (lexical order 3, 0, 5, 1, 4, 2), numbers reversed.
    let shuffled = tmp.path().join("shuffled");
    let names: Vec<String> = ["d", "a", "f", "b", "e", "c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    write_series(
        &shuffled,
        &spec(Storage::U16Intercept, axial.0, axial.1),
        &names,
        &[6, 5, 4, 3, 2, 1],
    );
    let b = read_dicom_dir(&shuffled, None).unwrap();
    assert_eq!(b.data, hu);
    assert_eq!(b.header.affine(), a.header.affine());
    // Tilted 10° about the z axis.
    let (c, s) = (10f64.to_radians().cos(), 10f64.to_radians().sin());
    let tilted = tmp.path().join("tilted");
    write_series(
        &tilted,
        &spec(Storage::I16, [c, s, 0.0], [-s, c, 0.0]),
        &(0..6).map(|k| format!("t{k}")).collect::<Vec<_>>(),
        &[1, 2, 3, 4, 5, 6],
    );
    let t = read_dicom_dir(&tilted, None).unwrap();
    assert_eq!(t.data, hu);
    let o = Orientation::from_affine(&t.header.affine());
    assert!(o.is_oblique());
    assert_eq!(o.codes(), ['S', 'P', 'L']);
    // Column axis in RAS: -(row_dir)·0.8 in x and y.
    let aff = t.header.affine();
    assert!(
        (aff[0][2] + c * 0.8).abs() < 1e-4 && (aff[1][2] + s * 0.8).abs() < 1e-4,
        "{aff:?}"
    );
    // A missing slice: a gap named by its positions.
    std::fs::remove_file(shuffled.join("b")).unwrap();
    let e = read_dicom_dir(&shuffled, None).unwrap_err().to_string();
    assert!(e.contains("not evenly spaced"), "{e}");
    // A duplicate position.
    std::fs::copy(ordered.join("IM2"), ordered.join("IM2copy")).unwrap();
    let e = read_dicom_dir(&ordered, None).unwrap_err().to_string();
    assert!(e.contains("duplicate slice position"), "{e}");
    // Two CT series in one folder: an error listing both, --series picks.
    let two = tmp.path().join("two");
    write_series(
        &two.join("a"),
        &spec(Storage::I16, axial.0, axial.1),
        &(0..6).map(|k| format!("a{k}")).collect::<Vec<_>>(),
        &[1, 2, 3, 4, 5, 6],
    );
    let mut other = spec(Storage::I16, axial.0, axial.1);
    other.uid = "1.2.826.0.1.3680043.2.1125.778";
    write_series(
        &two.join("b"),
        &other,
        &(0..6).map(|k| format!("b{k}")).collect::<Vec<_>>(),
        &[1, 2, 3, 4, 5, 6],
    );
    let e = read_dicom_dir(&two, None).unwrap_err().to_string();
    assert!(
        e.contains("2 CT series") && e.contains(".777") && e.contains(".778"),
        "{e}"
    );
    assert_eq!(read_dicom_dir(&two, Some(other.uid)).unwrap().data, hu);
}
