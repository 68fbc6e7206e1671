//! The KiTS21/KiTS23 metrics: per case, Dice and surface Dice of three
//! nested regions (kidney_and_mass = {1, 2, 3}, mass = {2, 3}, tumor = {2}),
//! surface Dice at the official tolerances, with the official rules for
//! empty masks (both empty: 1 and 1; one empty: 0 and 0), as the official
//! `kits23/evaluation/metrics.py` computes them; plus the 95th-percentile
//! Hausdorff distance and the mean surface distance, which the official
//! score does not use. Ranked on the means over cases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::dice::{DiceAccumulator, MetricError, dice_from_counts};
pub use crate::labels::{KITS23_REGIONS, Region};
use crate::metric::{Evaluation, LabelGrid, Metric};
use crate::surface::SurfaceDistances;

/// One region's scores in one case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegionScore {
    /// Dice (both empty: 1).
    pub dice: f64,
    /// Surface Dice at the region's tolerance (both empty: 1; one: 0).
    pub surface_dice: f64,
    /// 95th-percentile Hausdorff distance, mm (both empty: 0; one empty:
    /// `None`, undefined).
    pub hd95: Option<f64>,
    /// Mean of the two directions' area-weighted mean surface distances, mm
    /// (both empty: 0; one empty: `None`).
    pub mean_surface_distance: Option<f64>,
}

/// Scores one case: `pred` and `truth` are label volumes in the same
/// C-order grid of `shape` (`[i, j, k]`), `spacing` the truth's voxel size
/// in mm (`pixdim[1..=3]`, what the official code takes).
pub fn kits23_case(
    case: &str,
    pred: &[u8],
    truth: &[u8],
    shape: [usize; 3],
    spacing: [f64; 3],
) -> Result<[RegionScore; 3], MetricError> {
    let n = shape.iter().product::<usize>();
    if pred.len() != truth.len() || pred.len() != n {
        return Err(MetricError::LengthMismatch {
            case: case.to_string(),
            pred: pred.len(),
            truth: truth.len(),
        });
    }
    // One pass over the voxels: how often each (prediction, truth) label
    // pair occurs. Every region's counts follow from it.
    let mut pairs = vec![0u64; 256 * 256];
    for (&p, &t) in pred.iter().zip(truth) {
        pairs[usize::from(p) * 256 + usize::from(t)] += 1;
    }
    Ok(KITS23_REGIONS.map(|r| {
        let (mut np, mut nt, mut both) = (0u64, 0u64, 0u64);
        for (i, &n) in pairs.iter().enumerate().filter(|(_, n)| **n > 0) {
            let (a, b) = (r.contains((i / 256) as u8), r.contains((i % 256) as u8));
            np += if a { n } else { 0 };
            nt += if b { n } else { 0 };
            both += if a && b { n } else { 0 };
        }
        match (np, nt) {
            (0, 0) => RegionScore {
                dice: 1.0,
                surface_dice: 1.0,
                hd95: Some(0.0),
                mean_surface_distance: Some(0.0),
            },
            (0, _) | (_, 0) => RegionScore {
                dice: 0.0,
                surface_dice: 0.0,
                hd95: None,
                mean_surface_distance: None,
            },
            _ => {
                let sd = SurfaceDistances::compute(
                    shape,
                    spacing,
                    |i| r.contains(truth[i]),
                    |i| r.contains(pred[i]),
                );
                let (a, b) = sd.average_distances();
                RegionScore {
                    dice: dice_from_counts(both, np, nt),
                    surface_dice: sd.surface_dice(r.tolerance_mm),
                    hd95: Some(sd.robust_hausdorff(95.0)),
                    mean_surface_distance: Some((a + b) / 2.0),
                }
            }
        }
    }))
}

/// One case's row: the scores of the three regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kits23Case {
    /// The case id.
    pub case: String,
    /// Scores per region, in [`KITS23_REGIONS`]' order.
    pub regions: [RegionScore; 3],
}

/// Means over cases of one region's scores: the same four numbers, HD95
/// and mean surface distance averaged over the cases where they are
/// defined (`None` when no case defines them).
pub type RegionMeans = RegionScore;

/// The aggregate over cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kits23Summary {
    /// Per case, in the order scored.
    pub cases: Vec<Kits23Case>,
    /// Means per region, in [`KITS23_REGIONS`]' order.
    pub means: [RegionMeans; 3],
    /// The mean of the three regions' mean Dice and mean surface Dice (six
    /// numbers): the ranking score.
    pub composite: f64,
}

/// Accumulates KiTS23 scores: `update` each case, `aggregate` at the end.
#[derive(Debug, Clone, Default)]
pub struct Kits23Accumulator {
    cases: Vec<Kits23Case>,
}

impl Kits23Accumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scores one case (see [`kits23_case`]) and records it.
    pub fn update(
        &mut self,
        case: &str,
        pred: &[u8],
        truth: &[u8],
        shape: [usize; 3],
        spacing: [f64; 3],
    ) -> Result<[RegionScore; 3], MetricError> {
        let s = kits23_case(case, pred, truth, shape, spacing)?;
        self.cases.push(Kits23Case {
            case: case.to_string(),
            regions: s,
        });
        Ok(s)
    }

    /// Means over the cases seen so far (NaN when there are none).
    pub fn aggregate(&self) -> Kits23Summary {
        let means = [0, 1, 2].map(|r| {
            let n = self.cases.len() as f64;
            let mean_of = |f: &dyn Fn(&RegionScore) -> Option<f64>| -> Option<f64> {
                let v: Vec<f64> = self.cases.iter().filter_map(|c| f(&c.regions[r])).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            RegionMeans {
                dice: self.cases.iter().map(|c| c.regions[r].dice).sum::<f64>() / n,
                surface_dice: self
                    .cases
                    .iter()
                    .map(|c| c.regions[r].surface_dice)
                    .sum::<f64>()
                    / n,
                hd95: mean_of(&|s| s.hd95),
                mean_surface_distance: mean_of(&|s| s.mean_surface_distance),
            }
        });
        let composite = means.iter().map(|m| m.dice + m.surface_dice).sum::<f64>() / 6.0;
        Kits23Summary {
            cases: self.cases.clone(),
            means,
            composite,
        }
    }

    /// Forgets every case.
    pub fn reset(&mut self) {
        self.cases.clear();
    }
}

impl Kits23Summary {
    /// The regions' means by name.
    pub fn means_by_name(&self) -> BTreeMap<String, RegionScore> {
        KITS23_REGIONS
            .iter()
            .zip(&self.means)
            .map(|(r, m)| (r.name.to_string(), *m))
            .collect()
    }

    /// The per-case table as CSV lines, the header first (HD95 and mean
    /// surface distance empty where undefined).
    pub fn csv(&self) -> Vec<String> {
        let mut header = vec!["case".to_string()];
        for r in &KITS23_REGIONS {
            for m in ["dice", "surface_dice", "hd95", "msd"] {
                header.push(format!("{}_{m}", r.name));
            }
        }
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        let mut lines = vec![header.join(",")];
        for c in &self.cases {
            let mut row = vec![c.case.clone()];
            for s in &c.regions {
                row.push(format!("{:.6}", s.dice));
                row.push(format!("{:.6}", s.surface_dice));
                row.push(opt(s.hd95));
                row.push(opt(s.mean_surface_distance));
            }
            lines.push(row.join(","));
        }
        lines
    }

    /// The means in one line.
    pub fn summary_line(&self) -> String {
        let words: Vec<String> = KITS23_REGIONS
            .iter()
            .zip(&self.means)
            .map(|(r, m)| format!("{} dice {:.4} sd {:.4}", r.name, m.dice, m.surface_dice))
            .collect();
        format!(
            "{} cases: {}; composite {:.4}",
            self.cases.len(),
            words.join(", "),
            self.composite
        )
    }

    /// The JSON report of the KiTS23 protocol.
    pub fn report(&self) -> Value {
        let regions: serde_json::Map<String, Value> = KITS23_REGIONS
            .iter()
            .zip(&self.means)
            .map(|(r, m)| (r.name.to_string(), json!(m)))
            .collect();
        let cases: Vec<Value> = self
            .cases
            .iter()
            .map(|c| {
                let mut v = json!({ "case": c.case });
                for (r, s) in KITS23_REGIONS.iter().zip(&c.regions) {
                    v[r.name] = json!(s);
                }
                v
            })
            .collect();
        json!({
            "protocol": "kits23",
            "tolerances_mm": KITS23_REGIONS.iter().map(|r| (r.name, r.tolerance_mm)).collect::<BTreeMap<_, _>>(),
            "regions": regions,
            "composite": self.composite,
            "cases": cases,
        })
    }
}

/// The KiTS23 protocol: the regions' scores, and the KiTS19 kidney and
/// tumour Dice beside them.
#[derive(Debug, Clone, Default)]
pub struct Kits23Metric {
    dice: DiceAccumulator,
    regions: Kits23Accumulator,
}

impl Kits23Metric {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Metric for Kits23Metric {
    fn update(
        &mut self,
        case: &str,
        pred: LabelGrid<'_>,
        truth: LabelGrid<'_>,
    ) -> Result<(), MetricError> {
        self.dice.update(case, pred.labels, truth.labels)?;
        self.regions
            .update(case, pred.labels, truth.labels, truth.shape, truth.spacing)?;
        Ok(())
    }

    fn aggregate(&self) -> Evaluation {
        Evaluation {
            protocol: "kits23",
            dice: self.dice.aggregate(),
            regions: Some(self.regions.aggregate()),
        }
    }

    fn reset(&mut self) {
        self.dice.reset();
        self.regions.reset();
    }
}
