//! `kseg info` and `kseg synth` from the outside, against nibabel/numpy
//! values from the fixtures' manifests.

use std::process::Command;

use crate::support::testdata;
use serde_json::Value;

/// Runs the `kseg` binary.
fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kseg"))
        .args(args)
        .output()
        .unwrap()
}

fn kseg(args: &[&str]) -> Value {
    let out = run(args);
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
    // Label counts of a file that holds no labels: refused, naming it.
    let o = run(&["info", "--labels", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("resampled_anat_moved.nii") && err.contains("not a label file"),
        "{err}"
    );
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
    let o = run(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--cases",
        "2",
        "--seed",
        "4",
        "--size",
        "32",
        "48",
        "--slices",
        "5",
        "7",
    ]);
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
        let o = run(&[sub, "--help"]);
        assert!(o.status.success() && !o.stdout.is_empty());
    }
    // The field of view and tumour size reach the generator (its settings
    // stamp), and impossible ones are refused with what is wrong.
    let zoomed = dir.path().join("zoomed");
    let synth = |fov: [&str; 2]| {
        let out = zoomed.to_str().unwrap();
        let mut a = vec!["synth", "--out", out, "--cases", "1", "--size", "32", "32"];
        a.extend(["--slices", "4", "4", "--fov", fov[0], fov[1]]);
        run(&[&a[..], &["--tumour-radius", "14", "36"]].concat())
    };
    let o = synth(["240", "280"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stamp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(zoomed.join("synth.json")).unwrap()).unwrap();
    assert_eq!(stamp["fov_mm"], serde_json::json!([240.0, 280.0]));
    assert_eq!(stamp["tumour_radius_mm"], serde_json::json!([14.0, 36.0]));
    let o = synth(["10", "20"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("field of view"),
        "{err}"
    );
    // The coverage reaches it too; a repeated pair (whose values clap
    // appends, the second pair then ignored) is refused, naming the option.
    let long = dir.path().join("long");
    let out = long.to_str().unwrap();
    let base = ["synth", "--out", out, "--cases", "1", "--size", "32", "32"];
    let o = run(&[
        &base[..],
        &["--slices", "8", "8", "--coverage", "400", "500"],
    ]
    .concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stamp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(long.join("synth.json")).unwrap()).unwrap();
    assert_eq!(stamp["coverage_mm"], serde_json::json!([400.0, 500.0]));
    let again = dir.path().join("again");
    let base = ["synth", "--out", again.to_str().unwrap(), "--cases", "1"];
    let o = run(&[&base[..], &["--slices", "8", "8", "--slices", "16", "16"]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--slices takes two values"), "{err}");
    assert!(!again.join("case_00000").exists());
}

#[test]
fn augment_writes_a_grid_png() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = run(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--cases",
        "1",
        "--size",
        "32",
        "48",
        "--slices",
        "6",
        "6",
    ]);
    assert!(o.status.success());
    let case = data.join("case_00000");
    let png = dir.path().join("grid.png");
    let augment = |slice: &str, n: &str| {
        run(&[
            "augment",
            "--case",
            case.to_str().unwrap(),
            "--slice",
            slice,
            "--seed",
            "3",
            "--n",
            n,
            "--out",
            png.to_str().unwrap(),
        ])
    };
    let o = augment("9", "8");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("slice 9 is out of range (6 slices)"), "{err}");
    assert!(!png.exists(), "no output on failure");
    let o = augment("2", "8");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // 9 tiles (the original + 8) in a 3x3 grid of 32x48 tiles, 4 px apart.
    let img = image::open(&png).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (3 * 48 + 2 * 4, 3 * 32 + 2 * 4)
    );
    // The grid is reproducible for a seed.
    let first = std::fs::read(&png).unwrap();
    assert!(augment("2", "8").status.success());
    assert_eq!(std::fs::read(&png).unwrap(), first);
    // An --out in a folder that does not exist: the error named the
    // temporary file (`.grid.png.XXXXXX.tmp`), not the output.
    let gone = dir.path().join("gone/grid.png");
    let o = run(&[
        "augment",
        "--case",
        case.to_str().unwrap(),
        "--slice",
        "2",
        "--out",
        gone.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("gone/grid.png"), "{err}");
    let own = err.replace(dir.path().to_str().unwrap(), "TMP");
    assert!(!own.contains(".tmp") && !own.contains(".kseg-"), "{err}");
}

#[test]
fn evaluate_scores_predictions_like_the_official_formula() {
    use kseg::volume::{read_labels, write_volume};
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth");
    let o = run(&[
        "synth",
        "--out",
        truth.to_str().unwrap(),
        "--cases",
        "2",
        "--size",
        "32",
        "32",
        "--slices",
        "20",
        "24",
    ]);
    assert!(o.status.success());
    let pred = dir.path().join("pred");
    std::fs::create_dir_all(pred.join("case_00001")).unwrap();
    // case_00000: the truth itself (file form). case_00001: tumour called
    // kidney and one kidney slice erased (folder form).
    let t0 = read_labels(
        truth.join("case_00000/segmentation.nii.gz"),
        kseg::volume::LabelSet::Kits19,
    )
    .unwrap();
    write_volume(pred.join("case_00000.nii.gz"), t0.data.view(), &t0.header).unwrap();
    let t1 = read_labels(
        truth.join("case_00001/segmentation.nii.gz"),
        kseg::volume::LabelSet::Kits19,
    )
    .unwrap();
    let mut p1 = t1.data.mapv(|v| v.min(1));
    let k = (0..p1.dim().0)
        .find(|&k| p1.index_axis(ndarray::Axis(0), k).iter().any(|&v| v > 0))
        .unwrap();
    p1.index_axis_mut(ndarray::Axis(0), k).fill(0);
    write_volume(
        pred.join("case_00001/prediction.nii.gz"),
        p1.view(),
        &t1.header,
    )
    .unwrap();
    // Dice written out here: 2|A∩B| / (|A| + |B|).
    let dice = |a: &dyn Fn(u8) -> bool, p: &ndarray::Array3<u8>, t: &ndarray::Array3<u8>| {
        let both = p
            .iter()
            .zip(t.iter())
            .filter(|(x, y)| a(**x) && a(**y))
            .count() as f64;
        let n = p.iter().filter(|x| a(**x)).count() + t.iter().filter(|y| a(**y)).count();
        if n == 0 { 1.0 } else { 2.0 * both / n as f64 }
    };
    let k1 = dice(&|v| v > 0, &p1, &t1.data);
    let u1 = dice(&|v| v == 2, &p1, &t1.data);
    assert!(k1 < 1.0 && u1 == 0.0);
    let report = dir.path().join("report.json");
    let o = run(&[
        "evaluate",
        "--pred",
        pred.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = String::from_utf8(o.stdout).unwrap();
    assert!(
        csv.starts_with("case,kidney_dice,tumour_dice\ncase_00000,1.000000,1.000000\ncase_00001,"),
        "{csv}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!((v["kidney_dice"].as_f64().unwrap() - (1.0 + k1) / 2.0).abs() < 1e-12);
    assert!((v["tumour_dice"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert!((v["composite"].as_f64().unwrap() - ((1.0 + k1) / 2.0 + 0.5) / 2.0).abs() < 1e-12);
    assert_eq!(v["cases"][1]["case"], "case_00001");
    // A shape mismatch is an error naming both files; the report stays.
    let before = std::fs::read(&report).unwrap();
    let small = ndarray::Array3::<u8>::zeros((2, 32, 32));
    let h = kseg::volume::Header::kits_like([2, 32, 32], [1.0, 1.0, 1.0], kseg::volume::DType::U8)
        .unwrap();
    write_volume(pred.join("case_00000.nii.gz"), small.view(), &h).unwrap();
    let o = run(&[
        "evaluate",
        "--pred",
        pred.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("case_00000.nii.gz")
            && err.contains("segmentation.nii.gz")
            && err.contains("[2, 32, 32]"),
        "{err}"
    );
    assert_eq!(std::fs::read(&report).unwrap(), before);
    // A prediction without truth.
    std::fs::copy(
        pred.join("case_00001/prediction.nii.gz"),
        pred.join("case_00007.nii.gz"),
    )
    .unwrap();
    std::fs::remove_file(pred.join("case_00000.nii.gz")).unwrap();
    let args = [
        "evaluate",
        "--pred",
        pred.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ];
    let o = run(&[&args[..], &["--allow-missing"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no ground truth for prediction"));
    std::fs::remove_file(pred.join("case_00007.nii.gz")).unwrap();
    // A truth case without a prediction: an error naming it (it used to
    // score the subset without a word)...
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no prediction for 1 of the truth cases") && err.contains("case_00000"),
        "{err}"
    );
    // ...or, asked for, the subset scored with the missing case named on
    // stderr and in the report.
    let o = run(&[
        &args[..],
        &["--allow-missing", "--out", report.to_str().unwrap()],
    ]
    .concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("1 truth cases have no prediction: case_00000"),
        "{err}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["missing"], serde_json::json!(["case_00000"]));
    assert_eq!(v["cases"].as_array().unwrap().len(), 1);
    // A prediction on another grid than its truth's: shifted 50 mm, or
    // with an axis flipped. Same voxels, so only the geometry can tell.
    for (name, edit) in [
        (
            "shifted",
            &(|h: &mut kseg::volume::nifti::NiftiHeader| h.srow_x[3] += 50.0) as &dyn Fn(&mut _),
        ),
        ("flipped", &|h: &mut kseg::volume::nifti::NiftiHeader| {
            h.srow_y = h.srow_y.map(|v| -v);
        }),
    ] {
        let mut raw = t0.header.nifti().clone();
        raw.sform_code = 1;
        edit(&mut raw);
        let h = kseg::volume::Header::from_nifti(raw).unwrap();
        write_volume(pred.join("case_00000.nii.gz"), t0.data.view(), &h).unwrap();
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("case_00000.nii.gz") && err.contains("not on the grid"),
            "{name}: {err}"
        );
    }
}

/// `kseg info FILE | head -c 10`: a closed standard output ends the program
/// quietly (exit 0, nothing on stderr), as Unix tools do, instead of a
/// panic (`println!`'s "failed printing to stdout", exit 101).
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::process::Stdio;
    let f = testdata("kits19/case_00004/segmentation.nii.gz");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kseg"))
        .args(["info", "--labels", f.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the program writes: its write gets EPIPE
    // (Rust ignores SIGPIPE, so the error reaches the program).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kseg evaluate --protocol kits23` on real KiTS23 files: the per-case
/// region scores are the official code's, the means are their means.
#[test]
fn evaluate_kits23_matches_the_official_metrics() {
    let official: Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("kits23/kits23_official_metrics.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pred = dir.path().join("pred");
    std::fs::create_dir(&pred).unwrap();
    let cases = ["case_00002", "case_00200", "case_00400"];
    for c in cases {
        std::fs::copy(
            testdata(&format!("kits23/{c}/pred_shifted.nii.gz")),
            pred.join(format!("{c}.nii.gz")),
        )
        .unwrap();
    }
    let report = dir.path().join("r.json");
    let truth = testdata("kits23");
    let o = run(&[
        "evaluate",
        "--protocol",
        "kits23",
        "--pred",
        pred.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = String::from_utf8(o.stdout).unwrap();
    assert!(csv.starts_with("case,kidney_and_mass_dice,kidney_and_mass_surface_dice,kidney_and_mass_hd95,kidney_and_mass_msd,mass_dice,"), "{csv}");
    assert_eq!(csv.lines().count(), 4);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["protocol"], "kits23");
    let mut sums = [[0.0; 2]; 3];
    for (i, c) in cases.iter().enumerate() {
        let want = official["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["case"] == *c
                    && p["prediction"]
                        .as_str()
                        .unwrap()
                        .ends_with("pred_shifted.nii.gz")
            })
            .unwrap();
        assert_eq!(v["cases"][i]["case"], *c);
        for (r, region) in ["kidney_and_mass", "mass", "tumor"].iter().enumerate() {
            for (m, metric) in ["dice", "surface_dice"].iter().enumerate() {
                let got = v["cases"][i][region][metric].as_f64().unwrap();
                let w = want[metric][region].as_f64().unwrap();
                assert!(
                    (got - w).abs() < 1e-6,
                    "{c} {region} {metric}: {got} vs {w}"
                );
                sums[r][m] += w;
            }
            assert!(v["cases"][i][region]["hd95"].as_f64().unwrap() > 0.0);
        }
    }
    for (r, region) in ["kidney_and_mass", "mass", "tumor"].iter().enumerate() {
        let mean = v["regions"][region]["dice"].as_f64().unwrap();
        assert!((mean - sums[r][0] / 3.0).abs() < 1e-6);
        let mean = v["regions"][region]["surface_dice"].as_f64().unwrap();
        assert!((mean - sums[r][1] / 3.0).abs() < 1e-6);
    }
    let composite: f64 = sums.iter().flatten().sum::<f64>() / 18.0;
    assert!((v["composite"].as_f64().unwrap() - composite).abs() < 1e-6);
    // The KiTS19 protocol refuses cyst labels, naming the file and value.
    let o = run(&[
        "evaluate",
        "--pred",
        pred.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("label value 3") && err.contains("0..=2"),
        "{err}"
    );
}

/// `kseg info` reports the axis codes nibabel's `aff2axcodes` gives (values
/// read with nibabel 5), the slice axis and obliqueness.
#[test]
fn info_reports_axis_codes_as_nibabel() {
    for (file, codes, slice_axis) in [
        ("nifti/nibabel/anatomical.nii", ["L", "A", "S"], 2),
        (
            "nifti/nibabel/reoriented_anat_moved.nii",
            ["R", "A", "S"],
            2,
        ),
        ("nifti/nibabel/someones_anatomy.nii.gz", ["R", "A", "S"], 2),
        ("nifti/nibabel/standard.nii.gz", ["R", "A", "S"], 2),
        ("nifti/nifti-rs/minimal.nii.gz", ["L", "A", "S"], 2),
        ("kits19/case_00004/segmentation.nii.gz", ["I", "P", "L"], 0),
        ("kits19/case_00015/segmentation.nii.gz", ["I", "P", "L"], 0),
    ] {
        let v = kseg(&["info", testdata(file).to_str().unwrap()]);
        assert_eq!(v["axis_codes"], serde_json::json!(codes), "{file}");
        assert_eq!(v["slice_axis"], slice_axis, "{file}");
        assert_eq!(v["oblique"], false, "{file}");
    }
}

/// `kseg info` on a DICOM folder: its series, and the CT volume as pydicom
/// stacks it (testdata/dicom/MANIFEST.tsv: 5 slices of 16 × 16, HU sum
/// -177320, min -888, max 85).
#[test]
fn info_describes_a_dicom_series() {
    let v = kseg(&[
        "info",
        testdata("dicom/series/ct_series_5").to_str().unwrap(),
    ]);
    assert_eq!(v["series"].as_array().unwrap().len(), 1);
    assert_eq!(v["series"][0]["modality"], "CT");
    assert_eq!(v["series"][0]["files"], 5);
    let vol = &v["volume"];
    assert_eq!(vol["shape"], serde_json::json!([5, 16, 16]));
    assert_eq!(
        (vol["min"].as_f64(), vol["max"].as_f64()),
        (Some(-888.0), Some(85.0))
    );
    assert!((vol["mean"].as_f64().unwrap() * 1280.0 + 177320.0).abs() < 1e-6);
    assert_eq!(vol["axis_codes"], serde_json::json!(["S", "P", "L"]));
}

/// `kseg info` on a float volume holding +inf and -inf reported min, max
/// and mean as null without a word: they cover the finite voxels and
/// `inf_count` counts the others.
#[test]
fn info_counts_infinite_voxels_apart() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("inf.nii");
    let data = ndarray::Array3::from_shape_vec(
        (1, 2, 3),
        vec![1.0f32, 2.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 3.0],
    )
    .unwrap();
    let h = kseg::volume::Header::kits_like([1, 2, 3], [1.0; 3], kseg::volume::DType::F32).unwrap();
    kseg::volume::write_volume(&f, data.view(), &h).unwrap();
    let v = kseg(&["info", f.to_str().unwrap()]);
    // Finite voxels 1, 2, 3: min 1, max 3, mean 2.
    assert_eq!(
        (&v["min"], &v["max"], &v["mean"]),
        (
            &serde_json::json!(1.0),
            &serde_json::json!(3.0),
            &serde_json::json!(2.0)
        )
    );
    assert_eq!(v["nan_count"], 1);
    assert_eq!(v["inf_count"], 2);
}

/// `kseg evaluate --out` naming a ground truth or a prediction it scores
/// replaced that file with the report: refused, the file intact.
#[test]
fn evaluate_never_writes_its_report_over_what_it_scores() {
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth");
    let o = run(&[
        "synth",
        "--out",
        truth.to_str().unwrap(),
        "--cases",
        "1",
        "--size",
        "32",
        "32",
        "--slices",
        "4",
        "4",
    ]);
    assert!(o.status.success());
    let seg = truth.join("case_00000/segmentation.nii.gz");
    let pred = dir.path().join("pred");
    std::fs::create_dir(&pred).unwrap();
    let p = pred.join("case_00000.nii.gz");
    std::fs::copy(&seg, &p).unwrap();
    let before = std::fs::read(&seg).unwrap();
    for (out, what) in [(&seg, "ground truth"), (&p, "prediction")] {
        let o = run(&[
            "evaluate",
            "--pred",
            pred.to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("the output is the {what}")), "{err}");
    }
    assert_eq!(std::fs::read(&seg).unwrap(), before);
    assert_eq!(std::fs::read(&p).unwrap(), before);
}
