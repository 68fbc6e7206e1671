//! Bad input: each gives an error that names the file and the problem, from
//! the library and from the CLI (non-zero exit, no panic, no partial file).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::testdata;
use kseg::volume::{
    self, CaseDir, DType, Header, VolumeError, read_image, read_labels, read_volume, write_volume,
};
use ndarray::Array3;

fn kseg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kseg"))
}

/// Runs `kseg info` on `path`: it must fail cleanly, naming the file and
/// saying `what`.
fn cli_fails(args: &[&str], path: &Path, what: &str) {
    let out = kseg().arg("info").args(args).arg(path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}: exit 0", path.display());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        err.contains(&*name) && err.contains(what),
        "want {name} and {what:?} in: {err}"
    );
    assert!(out.stdout.is_empty(), "printed output on failure");
}

fn lib_fails(err: VolumeError, path: &Path, what: &str) {
    let msg = err.to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        msg.contains(&*name) && msg.contains(what),
        "want {name} and {what:?} in: {msg}"
    );
}

fn copy_with(src: &Path, dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(src).unwrap();
    edit(&mut bytes);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const U8_3X3X3: &str = "nifti/nifti-rs/27/uint8.nii";

#[test]
fn fuzzer_crashes_are_errors() {
    for e in std::fs::read_dir(testdata("nifti/malformed")).unwrap() {
        let p = e.unwrap().path();
        lib_fails(read_image(&p).unwrap_err(), &p, "not a NIfTI-1 file");
        cli_fails(&[], &p, "not a NIfTI-1 file");
    }
}

#[test]
fn truncated_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let src = testdata("kits19/case_00004/segmentation.nii.gz");
    let len = std::fs::metadata(&src).unwrap().len() as usize;
    for (name, keep) in [
        ("half.nii.gz", len / 2),
        ("header_only.nii.gz", 60),
        ("no_trailer.nii.gz", len - 4),
    ] {
        let p = copy_with(&src, dir.path(), name, |b| b.truncate(keep));
        lib_fails(read_labels(&p, 2).unwrap_err(), &p, "gzip");
        cli_fails(&[], &p, "gzip");
    }
}

#[test]
fn wrong_magic_and_bad_header_fields() {
    let dir = tempfile::tempdir().unwrap();
    let src = testdata(U8_3X3X3);
    let p = copy_with(&src, dir.path(), "magic.nii", |b| {
        b[344..348].copy_from_slice(b"xyz\0")
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "wrong magic");
    cli_fails(&[], &p, "wrong magic");
    let p = copy_with(&src, dir.path(), "ni1.nii", |b| {
        b[344..348].copy_from_slice(b"ni1\0")
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "separate .img");
    let p = copy_with(&src, dir.path(), "dim0.nii", |b| {
        b[40..42].copy_from_slice(&9i16.to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "dim[0] = 9");
    let p = copy_with(&src, dir.path(), "negdim.nii", |b| {
        b[44..46].copy_from_slice(&(-3i16).to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "dim[2] = -3");
    let p = copy_with(&src, dir.path(), "complex.nii", |b| {
        b[70..72].copy_from_slice(&32i16.to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "complex64");
    let p = copy_with(&src, dir.path(), "bitpix.nii", |b| {
        b[72..74].copy_from_slice(&16i16.to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "bitpix 16");
    let p = copy_with(&src, dir.path(), "voxoff.nii", |b| {
        b[108..112].copy_from_slice(&100f32.to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "vox_offset");
    let p = copy_with(&src, dir.path(), "short.nii", |b| b.truncate(200));
    lib_fails(read_image(&p).unwrap_err(), &p, "348");
    cli_fails(&[], &p, "348");
    let p = copy_with(&src, dir.path(), "empty.nii", |b| b.clear());
    lib_fails(read_image(&p).unwrap_err(), &p, "after 0 bytes");
}

#[test]
fn dims_that_do_not_match_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = testdata(U8_3X3X3);
    // 4x3x3 uint8 needs 36 bytes, the file holds 27.
    let big = copy_with(&src, dir.path(), "big.nii", |b| {
        b[42..44].copy_from_slice(&4i16.to_le_bytes())
    });
    lib_fails(read_image(&big).unwrap_err(), &big, "need 36");
    cli_fails(&[], &big, "need 36");
    let small = copy_with(&src, dir.path(), "small.nii", |b| {
        b[42..44].copy_from_slice(&2i16.to_le_bytes())
    });
    lib_fails(read_image(&small).unwrap_err(), &small, "need 18");
    // The same inside gzip, where the size is unknown until the end.
    let bytes = std::fs::read(&big).unwrap();
    let gz = dir.path().join("big.nii.gz");
    std::fs::write(&gz, gzip(&bytes)).unwrap();
    lib_fails(
        read_image(&gz).unwrap_err(),
        &gz,
        "truncated: 27 of 36 bytes",
    );
    let bytes = std::fs::read(&small).unwrap();
    let gz = dir.path().join("small.nii.gz");
    std::fs::write(&gz, gzip(&bytes)).unwrap();
    lib_fails(read_image(&gz).unwrap_err(), &gz, "more voxel data");
    // A header that claims terabytes must fail fast, without allocating them.
    let huge = copy_with(&src, dir.path(), "huge.nii", |b| {
        for d in 1..=3 {
            b[40 + 2 * d..42 + 2 * d].copy_from_slice(&30000i16.to_le_bytes());
        }
    });
    lib_fails(read_image(&huge).unwrap_err(), &huge, "need 27000000000000");
    let bytes = std::fs::read(&huge).unwrap();
    let gz = dir.path().join("huge.nii.gz");
    std::fs::write(&gz, gzip(&bytes)).unwrap();
    lib_fails(read_image(&gz).unwrap_err(), &gz, "truncated");
}

#[test]
fn random_header_corruption_never_panics() {
    // 2,000 seeded single- and multi-byte corruptions of a valid file's
    // header: each read must return (Ok or Err), never panic.
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let orig = std::fs::read(testdata(U8_3X3X3)).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let p = dir.path().join("fuzz.nii");
    for _ in 0..2000 {
        let mut b = orig.clone();
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..352);
            b[at] = rng.random();
        }
        std::fs::write(&p, &b).unwrap();
        let _ = read_image(&p);
        let _ = read_volume(&p);
    }
}

fn synth_like(shape: [usize; 3]) -> (Array3<i16>, Header) {
    let img = Array3::from_shape_fn(shape, |(z, y, x)| (z * 100 + y * 10 + x) as i16);
    (
        img,
        Header::kits_like(shape, [2.0, 0.8, 0.8], DType::I16).unwrap(),
    )
}

#[test]
fn imaging_and_labels_of_different_shape() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case_00001");
    std::fs::create_dir(&case).unwrap();
    let (img, h) = synth_like([4, 8, 8]);
    write_volume(case.join("imaging.nii.gz"), img.view(), &h).unwrap();
    let (_, h2) = synth_like([5, 8, 8]);
    write_volume(
        case.join("segmentation.nii.gz"),
        Array3::<u8>::zeros((5, 8, 8)).view(),
        &h2,
    )
    .unwrap();
    let err = CaseDir::open(&case).unwrap().load().unwrap_err();
    assert!(matches!(err, VolumeError::ShapeMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("segmentation.nii.gz") && msg.contains("imaging.nii.gz"),
        "{msg}"
    );
    assert!(
        msg.contains("[5, 8, 8]") && msg.contains("[4, 8, 8]"),
        "{msg}"
    );
    cli_fails(&[], &case, "does not match");
}

#[test]
fn label_values_outside_the_classes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, h) = synth_like([2, 3, 4]);
    let mut labels = Array3::<u8>::zeros((2, 3, 4));
    labels[[1, 2, 3]] = 3;
    labels[[0, 1, 1]] = 7;
    let p = dir.path().join("segmentation.nii.gz");
    write_volume(&p, labels.view(), &h).unwrap();
    let err = read_labels(&p, 2).unwrap_err();
    match &err {
        VolumeError::BadLabel {
            value,
            voxel,
            count,
            ..
        } => {
            // First bad voxel in file (Fortran) order is [0,1,1] (value 7).
            assert_eq!((*value, *voxel, *count), (7.0, [0, 1, 1], 2));
        }
        e => panic!("{e:?}"),
    }
    lib_fails(err, &p, "label value 7");
    // A uint16 label file with 300 (real KiTS19 files are uint16 in places).
    let f = dir.path().join("u16.nii");
    let src = testdata("nifti/nifti-rs/27/uint16.nii");
    std::fs::copy(&src, &f).unwrap();
    // Fortran order: the first voxel past 2 is [1, 0, 0] = 9.
    lib_fails(
        read_labels(&f, 2).unwrap_err(),
        &f,
        "label value 9 at voxel [1, 0, 0]",
    );
    // A float label file with a fractional value.
    let f = testdata("nifti/nifti-rs/zstat1.nii.gz");
    lib_fails(read_labels(&f, 2).unwrap_err(), &f, "is not a class");
}

#[test]
fn missing_files_and_cases() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.nii.gz");
    lib_fails(read_image(&p).unwrap_err(), &p, "no such file");
    cli_fails(&[], &p, "no such file");
    let hdr = dir.path().join("lonely.hdr");
    std::fs::copy(testdata("nifti/nifti-rs/minimal.hdr"), &hdr).unwrap();
    lib_fails(
        read_image(&hdr).unwrap_err(),
        &hdr,
        "other half of the pair",
    );
    let case = dir.path().join("case_00009");
    lib_fails(CaseDir::open(&case).unwrap_err(), &case, "does not exist");
    std::fs::create_dir(&case).unwrap();
    lib_fails(CaseDir::open(&case).unwrap_err(), &case, "imaging.nii.gz");
    cli_fails(&[], &case, "imaging.nii.gz");
    let err = volume::list_cases(dir.path().join("empty_data")).unwrap_err();
    assert!(err.to_string().contains("empty_data"), "{err}");
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (_, h) = synth_like([2, 3, 4]);
    let p = dir.path().join("pred.nii.gz");
    std::fs::write(&p, b"previous content").unwrap();
    let err = write_volume(&p, Array3::<u8>::zeros((2, 3, 5)).view(), &h).unwrap_err();
    assert!(matches!(err, VolumeError::ShapeMismatch { .. }), "{err:?}");
    // The old file is untouched and no temporary file is left.
    assert_eq!(std::fs::read(&p).unwrap(), b"previous content");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let err = write_volume(
        dir.path().join("no/such/dir/x.nii"),
        Array3::<u8>::zeros((2, 3, 4)).view(),
        &h,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");
    // `kseg synth` with a bad size refuses before creating anything.
    let out = dir.path().join("synth_out");
    let o = kseg()
        .args(["synth", "--out"])
        .arg(&out)
        .args(["--size", "8", "8"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("16..=4096"));
    assert!(!out.exists());
}
