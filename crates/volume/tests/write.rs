//! Outputs through the one writer (`kseg_volume::fs`): every NIfTI name
//! writes its data under that name, long names work, and errors name the
//! output, never a temporary file.

use std::path::Path;

use kseg_volume::{DType, Header, read_volume, write_volume};
use ndarray::Array3;

/// A 3×4×5 volume whose voxel (i, j, k) holds 20·i + 5·j + k (0..60).
fn ramp() -> (Array3<u8>, Header) {
    let data = Array3::from_shape_fn((3, 4, 5), |(i, j, k)| (20 * i + 5 * j + k) as u8);
    let header = Header::kits_like([3, 4, 5], [2.0, 0.5, 0.5], DType::U8).unwrap();
    (data, header)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `--output X.nii` used to leave a 0-byte `X.nii` and the data in a
/// hidden `.X.nii.XXXXXX.nii` (the `nifti` crate renamed the temporary
/// file it was given).
#[test]
fn every_nifti_name_holds_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (data, header) = ramp();
    let long_gz = format!("{}.nii.gz", "g".repeat(255 - 7));
    let long_nii = format!("{}.nii", "n".repeat(255 - 4));
    let names = [
        "out.nii",
        "OUT.NII",
        "a.b.nii",
        "c.nii.gz",
        "D.NII.GZ",
        long_gz.as_str(),
        long_nii.as_str(),
    ];
    for name in names {
        let path = dir.path().join(name);
        write_volume(&path, data.view(), &header).unwrap();
        // 348-byte header, 4 extension bytes, 60 voxels for a plain file.
        if !name.to_ascii_lowercase().ends_with(".gz") {
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 352 + 60, "{name}");
        }
        let back = read_volume(&path).unwrap();
        assert_eq!(back.data.shape(), [3, 4, 5], "{name}");
        for ((i, j, k), &v) in back.data.indexed_iter() {
            assert_eq!(v, (20 * i + 5 * j + k) as f32, "{name} at {:?}", (i, j, k));
        }
    }
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listing(dir.path()), want, "nothing stray");
}

/// Names of 240-255 bytes used to fail with "File name too long" (the
/// temporary name was the output's name plus 20 bytes).
#[test]
fn a_255_byte_name_is_written() {
    let dir = tempfile::tempdir().unwrap();
    for len in [240, 250, 255] {
        let name = format!("{}.json", "x".repeat(len - 5));
        let path = dir.path().join(&name);
        kseg_volume::fs::write_bytes_atomic(&path, b"{}\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}\n");
        let d = dir.path().join("y".repeat(len));
        kseg_volume::fs::write_dir_atomic(&d, |t| {
            kseg_volume::fs::write_bytes_atomic(&t.join("state.json"), b"1")
        })
        .unwrap();
        assert_eq!(std::fs::read(d.join("state.json")).unwrap(), b"1");
    }
    assert_eq!(listing(dir.path()).len(), 6);
}

/// A NIfTI output in a folder that does not exist: the error names the
/// output, not `.p.nii.gz.XXXXXX.tmp.nii.gz`.
#[test]
fn a_write_error_names_the_output_not_a_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let (data, header) = ramp();
    let gone = dir.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let path = gone.join("p.nii.gz");
    // The folder goes away between the command's check and its write.
    std::fs::remove_dir(&gone).unwrap();
    let e = kseg_volume::fs::write_atomic(&path, |tmp| write_volume(tmp, data.view(), &header))
        .unwrap_err()
        .to_string();
    let own = e.replace(&*dir.path().to_string_lossy(), "TMP");
    assert!(own.starts_with("TMP/gone/p.nii.gz: "), "{e}");
    assert!(!own.contains(".kseg-") && !own.contains(".tmp"), "{e}");
}
