//! The KiTS23 metrics against the official KiTS23 evaluation code's numbers
//! (testdata/kits23/kits23_official_metrics.json: `compute_metrics_for_case`
//! run unchanged on these files), within 1e-6.

use kseg_metrics::{KITS23_REGIONS, kits23_case};
use kseg_volume::LabelSet;
use kseg_volume::read_labels;
use serde_json::Value;

use crate::support::testdata;

#[test]
fn dice_and_surface_dice_match_the_official_code() {
    let official: Value = serde_json::from_str(
        &std::fs::read_to_string(testdata("kits23/kits23_official_metrics.json")).unwrap(),
    )
    .unwrap();
    for (r, name) in KITS23_REGIONS
        .iter()
        .zip(["kidney_and_mass", "mass", "tumor"])
    {
        assert_eq!(r.name, name);
        assert_eq!(
            r.tolerance_mm,
            official["tolerances_mm"][name].as_f64().unwrap()
        );
    }
    let pairs = official["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 21);
    let mut worst = 0.0f64;
    for pair in pairs {
        let file = |k: &str| testdata(&format!("kits23/{}", pair[k].as_str().unwrap()));
        let (pred, truth) = (
            read_labels(file("prediction"), LabelSet::Kits23).unwrap(),
            read_labels(file("truth"), LabelSet::Kits23).unwrap(),
        );
        let sp = truth.header.spacing();
        let scores = kits23_case(
            pair["case"].as_str().unwrap(),
            pred.data.as_slice().unwrap(),
            truth.data.as_slice().unwrap(),
            truth.shape(),
            [sp[0], sp[1], sp[2]],
        )
        .unwrap();
        for (r, s) in KITS23_REGIONS.iter().zip(&scores) {
            for (what, got) in [("dice", s.dice), ("surface_dice", s.surface_dice)] {
                let want = pair[what][r.name].as_f64().unwrap();
                worst = worst.max((got - want).abs());
                assert!(
                    (got - want).abs() < 1e-6,
                    "{} {} {what}: {got} vs official {want}",
                    pair["prediction"],
                    r.name
                );
            }
        }
    }
    eprintln!("largest difference from the official values: {worst:e}");
}

/// The surface-distance library's own 3D test cases (surface_distance_test.py,
/// `SurfaceDistance3DTest`), with its expected values.
#[test]
fn surface_distances_match_the_librarys_own_test_cases() {
    use kseg_metrics::surface::SurfaceDistances;
    // Two voxels 2 mm apart, spacing (3, 2, 1).
    let idx = |a: usize, b: usize, c: usize| (a * 128 + b) * 128 + c;
    let sd = SurfaceDistances::compute(
        [128, 128, 128],
        [3.0, 2.0, 1.0],
        |i| i == idx(50, 60, 70),
        |i| i == idx(50, 60, 72),
    );
    assert_eq!(sd.average_distances(), (1.5, 1.5));
    assert_eq!(sd.robust_hausdorff(100.0), 2.0);
    assert_eq!(sd.robust_hausdorff(95.0), 2.0);
    assert_eq!(sd.surface_dice(1.0), 0.5);
    // Two half-volumes, one a voxel (2 mm) thicker: expected to 3 places.
    let sd = SurfaceDistances::compute(
        [100, 100, 100],
        [2.0, 1.0, 1.0],
        |i| i / 10_000 < 50,
        |i| i / 10_000 < 51,
    );
    let (a, b) = sd.average_distances();
    assert!(
        (a - 0.322).abs() < 5e-4 && (b - 0.339).abs() < 5e-4,
        "{a} {b}"
    );
    assert_eq!(sd.robust_hausdorff(100.0), 2.0);
    assert_eq!(sd.robust_hausdorff(95.0), 2.0);
    assert!(
        (sd.surface_dice(1.0) - 0.836).abs() < 5e-4,
        "{}",
        sd.surface_dice(1.0)
    );
}

/// The KiTS rules for empty regions, and HD95 / mean distance columns.
#[test]
fn empty_regions_follow_the_official_rules() {
    let shape = [4, 6, 6];
    let n = 4 * 6 * 6;
    let mut truth = vec![0u8; n];
    truth[(2 * 6 + 3) * 6 + 3] = 1;
    let empty = vec![0u8; n];
    // kidney_and_mass: truth has it, the prediction not: 0 and 0; mass and
    // tumor: both empty: 1 and 1.
    let s = kits23_case("x", &empty, &truth, shape, [1.0; 3]).unwrap();
    assert_eq!((s[0].dice, s[0].surface_dice, s[0].hd95), (0.0, 0.0, None));
    assert_eq!(
        (s[1].dice, s[1].surface_dice, s[1].hd95),
        (1.0, 1.0, Some(0.0))
    );
    assert_eq!((s[2].dice, s[2].surface_dice), (1.0, 1.0));
    // Identical: 1, 1, HD95 0.
    let s = kits23_case("x", &truth, &truth, shape, [1.0; 3]).unwrap();
    assert_eq!(
        (s[0].dice, s[0].surface_dice, s[0].hd95),
        (1.0, 1.0, Some(0.0))
    );
}
