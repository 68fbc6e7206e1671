//! The KiTS19 metric: per-case Dice of kidney (label > 0) and tumour
//! (label 2) on whole volumes, averaged over cases; the composite score is
//! the mean of the two (docs/METHOD.md §5, as the official `evaluation.py`).
//! The KiTS21/KiTS23 metrics (Dice and surface Dice of three regions) are in
//! [`crate::kits23`].

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::metric::{Evaluation, LabelGrid, Metric};

/// What can go wrong when scoring a case.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricError {
    /// A prediction and its truth of different sizes.
    #[error("case {case}: prediction has {pred} voxels, ground truth {truth}")]
    LengthMismatch {
        /// The case.
        case: String,
        /// Voxels of the prediction.
        pred: usize,
        /// Voxels of the truth.
        truth: usize,
    },
}

/// Dice `2|A∩B| / (|A|+|B|)` from counts. Both sets empty → 1: a correct
/// "nothing here" is a perfect answer (the official script divides 0 by 0;
/// we document 1 instead).
pub fn dice_from_counts(intersection: u64, pred: u64, truth: u64) -> f64 {
    if pred + truth == 0 {
        1.0
    } else {
        2.0 * intersection as f64 / (pred + truth) as f64
    }
}

/// Kidney and tumour Dice of one case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KitsDice {
    /// Dice of `label > 0` (kidney and tumour together).
    pub kidney: f64,
    /// Dice of `label == 2`.
    pub tumour: f64,
}

/// Scores one whole volume (any layout, as long as both use the same).
///
/// ```
/// let truth = [0u8, 1, 1, 2, 2, 0];
/// let pred = [0u8, 1, 2, 2, 0, 0];
/// let d = kseg_metrics::kits_dice(&pred, &truth).unwrap();
/// // kidney: pred>0 {1,2,3}, truth>0 {1,2,3,4}: 2*3/7.
/// assert!((d.kidney - 6.0 / 7.0).abs() < 1e-12);
/// // tumour: pred=2 {2,3}, truth=2 {3,4}: 2*1/4.
/// assert!((d.tumour - 0.5).abs() < 1e-12);
/// ```
pub fn kits_dice(pred: &[u8], truth: &[u8]) -> Result<KitsDice, MetricError> {
    kits_dice_case("", pred, truth)
}

pub(crate) fn kits_dice_case(
    case: &str,
    pred: &[u8],
    truth: &[u8],
) -> Result<KitsDice, MetricError> {
    if pred.len() != truth.len() {
        return Err(MetricError::LengthMismatch {
            case: case.to_string(),
            pred: pred.len(),
            truth: truth.len(),
        });
    }
    // [kidney pred, kidney truth, kidney both, tumour pred, tumour truth, tumour both]
    let mut n = [0u64; 6];
    for (&p, &t) in pred.iter().zip(truth) {
        let (pk, tk, pt, tt) = (p > 0, t > 0, p == 2, t == 2);
        n[0] += u64::from(pk);
        n[1] += u64::from(tk);
        n[2] += u64::from(pk && tk);
        n[3] += u64::from(pt);
        n[4] += u64::from(tt);
        n[5] += u64::from(pt && tt);
    }
    Ok(KitsDice {
        kidney: dice_from_counts(n[2], n[0], n[1]),
        tumour: dice_from_counts(n[5], n[3], n[4]),
    })
}

/// One row of the per-case table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseDice {
    /// The case id.
    pub case: String,
    /// Kidney Dice (label > 0).
    pub kidney: f64,
    /// Tumour Dice (label 2).
    pub tumour: f64,
}

/// The aggregate over cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiceSummary {
    /// Per case, in the order scored.
    pub cases: Vec<CaseDice>,
    /// Mean kidney Dice.
    pub kidney_mean: f64,
    /// Mean tumour Dice.
    pub tumour_mean: f64,
    /// `(kidney_mean + tumour_mean) / 2`.
    pub composite: f64,
}

/// Accumulates per-case Dice: `update` each case, `aggregate` at the end,
/// `reset` for the next evaluation (MONAI's metric pattern).
#[derive(Debug, Clone, Default)]
pub struct DiceAccumulator {
    cases: Vec<CaseDice>,
}

impl DiceAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scores one case's whole volume and records it.
    pub fn update(
        &mut self,
        case: &str,
        pred: &[u8],
        truth: &[u8],
    ) -> Result<KitsDice, MetricError> {
        let d = kits_dice_case(case, pred, truth)?;
        self.cases.push(CaseDice {
            case: case.to_string(),
            kidney: d.kidney,
            tumour: d.tumour,
        });
        Ok(d)
    }

    /// Means over the cases seen so far (NaN means when there are none).
    pub fn aggregate(&self) -> DiceSummary {
        let n = self.cases.len() as f64;
        let kidney_mean = self.cases.iter().map(|c| c.kidney).sum::<f64>() / n;
        let tumour_mean = self.cases.iter().map(|c| c.tumour).sum::<f64>() / n;
        DiceSummary {
            cases: self.cases.clone(),
            kidney_mean,
            tumour_mean,
            composite: (kidney_mean + tumour_mean) / 2.0,
        }
    }

    /// Forgets every case.
    pub fn reset(&mut self) {
        self.cases.clear();
    }
}

impl DiceSummary {
    /// The per-case table as CSV lines, the header first.
    pub fn csv(&self) -> Vec<String> {
        let mut lines = vec!["case,kidney_dice,tumour_dice".to_string()];
        lines.extend(
            self.cases
                .iter()
                .map(|c| format!("{},{:.6},{:.6}", c.case, c.kidney, c.tumour)),
        );
        lines
    }

    /// The means in one line.
    pub fn summary_line(&self) -> String {
        format!(
            "{} cases: kidney {:.4}, tumour {:.4}, composite {:.4}",
            self.cases.len(),
            self.kidney_mean,
            self.tumour_mean,
            self.composite
        )
    }

    /// The JSON report of the KiTS19 protocol.
    pub fn report(&self) -> Value {
        json!({
            "protocol": "kits19",
            "kidney_dice": self.kidney_mean,
            "tumour_dice": self.tumour_mean,
            "composite": self.composite,
            "cases": self.cases,
        })
    }
}

/// The KiTS19 protocol.
impl Metric for DiceAccumulator {
    fn update(
        &mut self,
        case: &str,
        pred: LabelGrid<'_>,
        truth: LabelGrid<'_>,
    ) -> Result<(), MetricError> {
        DiceAccumulator::update(self, case, pred.labels, truth.labels).map(drop)
    }

    fn aggregate(&self) -> Evaluation {
        Evaluation {
            protocol: "kits19",
            dice: DiceAccumulator::aggregate(self),
            regions: None,
        }
    }

    fn reset(&mut self) {
        DiceAccumulator::reset(self)
    }
}
