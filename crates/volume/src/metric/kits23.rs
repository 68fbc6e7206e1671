//! The KiTS21/KiTS23 metrics: per case, Dice and surface Dice of three
//! nested regions (kidney_and_mass = {1, 2, 3}, mass = {2, 3}, tumor = {2}),
//! surface Dice at the official tolerances, with the official rules for
//! empty masks (both empty: 1 and 1; one empty: 0 and 0), as the official
//! `kits23/evaluation/metrics.py` computes them; plus the 95th-percentile
//! Hausdorff distance and the mean surface distance, which the official
//! score does not use. Ranked on the means over cases.

use serde::{Deserialize, Serialize};

use super::{MetricError, dice_from_counts};
use crate::surface::SurfaceDistances;

/// A KiTS region: the labels in it and its surface Dice tolerance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// The official name.
    pub name: &'static str,
    /// Labels in the region.
    pub labels: &'static [u8],
    /// Surface Dice tolerance in mm (the official
    /// `KITS_LABEL_TO_TOLERANCE`).
    pub tolerance_mm: f64,
}

impl Region {
    /// Whether label `v` is in the region.
    pub fn contains(&self, v: u8) -> bool {
        self.labels.contains(&v)
    }
}

/// The three KiTS23 regions, in the official order.
pub const KITS23_REGIONS: [Region; 3] = [
    Region {
        name: "kidney_and_mass",
        labels: &[1, 2, 3],
        tolerance_mm: 1.0330772532390826,
    },
    Region {
        name: "mass",
        labels: &[2, 3],
        tolerance_mm: 1.1328796488598762,
    },
    Region {
        name: "tumor",
        labels: &[2],
        tolerance_mm: 1.1498198361434828,
    },
];

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
