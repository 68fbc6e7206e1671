//! The KiTS19 Dice against hand-derived cases and the official formulas
//! (starter_code/evaluation.py: kidney = pred > 0 vs gt > 0, tumour = > 1).

use kseg_metrics::{DiceAccumulator, MetricError, dice_from_counts, kits_dice};

/// The official script's formula, written out on a small volume.
fn official(pred: &[u8], gt: &[u8]) -> (f64, f64) {
    let d = |a: &dyn Fn(u8) -> bool| {
        let tp = pred
            .iter()
            .zip(gt)
            .filter(|(p, g)| a(**p) && a(**g))
            .count() as f64;
        let s = pred.iter().filter(|p| a(**p)).count() + gt.iter().filter(|g| a(**g)).count();
        2.0 * tp / s as f64
    };
    (d(&|v| v > 0), d(&|v| v > 1))
}

#[test]
fn agrees_with_the_official_formulas() {
    let gt = [0u8, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2, 0];
    let preds: [[u8; 12]; 3] = [
        [0, 1, 1, 1, 0, 2, 2, 1, 0, 1, 2, 2],
        [0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2, 0],
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
    ];
    for p in &preds {
        let d = kits_dice(p, &gt).unwrap();
        let (k, t) = official(p, &gt);
        assert!((d.kidney - k).abs() < 1e-12 && (d.tumour - t).abs() < 1e-12);
    }
    // Hand-derived for the first: kidney pred {1,2,3,5,6,7,9,10,11} (9),
    // gt {2,3,4,5,6,7,9,10} (8), both 7 -> 14/17; tumour pred {5,6,10,11},
    // gt {5,6,7,10}, both 3 -> 6/8.
    let d = kits_dice(&preds[0], &gt).unwrap();
    assert!((d.kidney - 14.0 / 17.0).abs() < 1e-12);
    assert!((d.tumour - 0.75).abs() < 1e-12);
    // Perfect prediction.
    let d = kits_dice(&preds[1], &gt).unwrap();
    assert_eq!((d.kidney, d.tumour), (1.0, 1.0));
}

#[test]
fn empty_cases_score_one_and_misses_zero() {
    assert_eq!(dice_from_counts(0, 0, 0), 1.0);
    let d = kits_dice(&[0, 0, 1], &[0, 0, 1]).unwrap();
    assert_eq!((d.kidney, d.tumour), (1.0, 1.0)); // no tumour anywhere
    let d = kits_dice(&[0, 0, 0], &[0, 2, 0]).unwrap();
    assert_eq!((d.kidney, d.tumour), (0.0, 0.0));
    let d = kits_dice(&[0, 2, 0], &[0, 1, 0]).unwrap();
    assert_eq!((d.kidney, d.tumour), (1.0, 0.0));
}

#[test]
fn accumulator_averages_cases() {
    let mut acc = DiceAccumulator::new();
    acc.update("a", &[1, 1, 0, 0], &[1, 0, 0, 0]).unwrap(); // kidney 2/3, tumour 1
    acc.update("b", &[2, 2, 0, 0], &[2, 0, 0, 0]).unwrap(); // kidney 2/3, tumour 2/3
    let s = acc.aggregate();
    assert_eq!(s.cases.len(), 2);
    assert!((s.kidney_mean - 2.0 / 3.0).abs() < 1e-12);
    assert!((s.tumour_mean - 5.0 / 6.0).abs() < 1e-12);
    assert!((s.composite - 0.75).abs() < 1e-12);
    let err = acc.update("c", &[0; 3], &[0; 4]).unwrap_err();
    assert_eq!(
        err,
        MetricError::LengthMismatch {
            case: "c".into(),
            pred: 3,
            truth: 4
        }
    );
    assert!(err.to_string().contains("case c"));
    acc.reset();
    assert!(acc.aggregate().kidney_mean.is_nan());
}
