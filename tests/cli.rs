//! `kseg info` and `kseg synth` from the outside, against nibabel/numpy
//! values from the fixtures' manifests.

mod common;

use std::process::Command;

use common::testdata;
use serde_json::Value;

fn kseg(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kseg"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn info_reports_header_and_statistics() {
    let f = testdata("nifti/nibabel/anatomical.nii");
    let v = kseg(&["info", f.to_str().unwrap()]);
    assert_eq!(v["shape"], serde_json::json!([33, 41, 25]));
    assert_eq!(v["dtype"], "int16");
    assert_eq!(v["spacing_mm"], serde_json::json!([2.0, 2.0, 2.0]));
    assert_eq!(v["min"], -610.0);
    assert_eq!(v["max"], 30393.0);
    // Manifest: sum 284166082 over 33*41*25 voxels.
    let mean = v["mean"].as_f64().unwrap();
    assert!((mean - 284166082.0 / 33825.0).abs() < 1e-6, "{mean}");
    assert_eq!(v["nan_count"], 0);
    // nibabel: img.affine
    assert_eq!(
        v["affine"],
        serde_json::json!([
            [-2.0, 0.0, 0.0, 32.0],
            [0.0, 2.0, 0.0, -40.0],
            [0.0, 0.0, 2.0, -16.0],
            [0.0, 0.0, 0.0, 1.0]
        ])
    );
    assert!(v.get("label_counts").is_none());

    let f = testdata("nifti/nibabel/resampled_anat_moved.nii");
    let v = kseg(&["info", f.to_str().unwrap()]);
    assert_eq!(v["nan_count"], 153);
    assert!((v["min"].as_f64().unwrap() - 409.30).abs() < 0.01);
    assert!((v["max"].as_f64().unwrap() - 13360.96).abs() < 0.01);
}

#[test]
fn info_counts_labels_of_a_real_kits19_file() {
    // testdata/kits19/MANIFEST.tsv: case_00004 counts (16656969, 115306, 4941).
    let f = testdata("kits19/case_00004/segmentation.nii.gz");
    let v = kseg(&["info", "--labels", f.to_str().unwrap()]);
    assert_eq!(v["shape"], serde_json::json!([64, 512, 512]));
    assert_eq!(v["dtype"], "uint8");
    assert_eq!(
        v["label_counts"],
        serde_json::json!({"0": 16656969, "1": 115306, "2": 4941})
    );
    let f = testdata("kits19/case_00015/segmentation.nii.gz");
    let v = kseg(&["info", "--labels", f.to_str().unwrap()]);
    assert_eq!(v["dtype"], "uint16");
    assert_eq!(
        v["label_counts"],
        serde_json::json!({"0": 19377949, "1": 271289, "2": 11562})
    );
}

#[test]
fn synth_then_info_on_a_case_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let o = Command::new(env!("CARGO_BIN_EXE_kseg"))
        .args([
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--cases",
            "2",
            "--seed",
            "4",
        ])
        .args(["--size", "32", "48", "--slices", "5", "7"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let case = out.join("case_00001");
    let v = kseg(&["info", case.to_str().unwrap()]);
    assert_eq!(v["case"], "case_00001");
    let shape = v["imaging"]["shape"].as_array().unwrap();
    assert!((5..=7).contains(&shape[0].as_u64().unwrap()));
    assert_eq!(&shape[1..], &[32, 48]);
    assert_eq!(v["imaging"]["dtype"], "int16");
    assert_eq!(v["segmentation"]["shape"], v["imaging"]["shape"]);
    let counts = v["segmentation"]["label_counts"].as_object().unwrap();
    let total: u64 = counts.values().map(|c| c.as_u64().unwrap()).sum();
    let n: u64 = shape.iter().map(|d| d.as_u64().unwrap()).product();
    assert_eq!(total, n);
    assert!(counts.keys().all(|k| ["0", "1", "2"].contains(&k.as_str())));
    // --help exists for each subcommand.
    for sub in ["info", "synth"] {
        let o = Command::new(env!("CARGO_BIN_EXE_kseg"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(o.status.success() && !o.stdout.is_empty());
    }
}

#[test]
fn augment_writes_a_grid_png() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = Command::new(env!("CARGO_BIN_EXE_kseg"))
        .args([
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--cases",
            "1",
            "--size",
            "32",
            "48",
        ])
        .args(["--slices", "6", "6"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let case = data.join("case_00000");
    let png = dir.path().join("grid.png");
    let run = |slice: &str, n: &str| {
        Command::new(env!("CARGO_BIN_EXE_kseg"))
            .args([
                "augment",
                "--case",
                case.to_str().unwrap(),
                "--slice",
                slice,
                "--seed",
                "3",
            ])
            .args(["--n", n, "--out", png.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = run("9", "8");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("slice 9 is out of range (6 slices)"), "{err}");
    assert!(!png.exists(), "no output on failure");
    let o = run("2", "8");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // 9 tiles (the original + 8) in a 3x3 grid of 32x48 tiles, 4 px apart.
    let img = image::open(&png).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (3 * 48 + 2 * 4, 3 * 32 + 2 * 4)
    );
    // The grid is reproducible for a seed.
    let first = std::fs::read(&png).unwrap();
    assert!(run("2", "8").status.success());
    assert_eq!(std::fs::read(&png).unwrap(), first);
}
