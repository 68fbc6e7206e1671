//! The one shape of every evaluation protocol: a [`Metric`] accumulates
//! per-case scores (`update` each case, `aggregate` at the end, `reset` for
//! the next evaluation, as MONAI's `Cumulative` metrics), and its
//! aggregate is an [`Evaluation`] that reports itself as a CSV table and a
//! JSON report. [`crate::LabelSet::metric`] gives the one a label set is
//! scored with; `kseg evaluate` and training's validation both score
//! through it.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::dice::{DiceSummary, MetricError};
use crate::kits23::{Kits23Summary, RegionScore};

/// One case's label volume on its grid: C-order voxels of `shape`
/// (`[i, j, k]`), voxel size `spacing` in mm.
#[derive(Debug, Clone, Copy)]
pub struct LabelGrid<'a> {
    /// The labels, `shape[0] * shape[1] * shape[2]` of them.
    pub labels: &'a [u8],
    /// The grid's size.
    pub shape: [usize; 3],
    /// The voxel size, mm (`pixdim[1..=3]` of a NIfTI file).
    pub spacing: [f64; 3],
}

/// An evaluation protocol's accumulator.
pub trait Metric: Send {
    /// Scores one case: its prediction against its truth, on the same grid
    /// (distances use the truth's spacing, as the official KiTS23 code).
    fn update(
        &mut self,
        case: &str,
        pred: LabelGrid<'_>,
        truth: LabelGrid<'_>,
    ) -> Result<(), MetricError>;

    /// The scores of the cases seen so far and their means (NaN means when
    /// there are none).
    fn aggregate(&self) -> Evaluation;

    /// Forgets every case.
    fn reset(&mut self);
}

/// What a [`Metric`] aggregates to: always the KiTS19 kidney and tumour
/// Dice, and for the KiTS23 protocol the regions' scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The protocol's name (`kits19`, `kits23`).
    pub protocol: &'static str,
    /// Kidney (label > 0) and tumour Dice per case and their means.
    pub dice: DiceSummary,
    /// The KiTS23 regions' scores (`kits23` only).
    pub regions: Option<Kits23Summary>,
}

impl Evaluation {
    /// The cases scored.
    pub fn len(&self) -> usize {
        self.dice.cases.len()
    }

    /// Whether no case was scored.
    pub fn is_empty(&self) -> bool {
        self.dice.cases.is_empty()
    }

    /// The protocol's ranking score: the mean of the regions' Dice and
    /// surface Dice means (KiTS23), else the mean of kidney and tumour
    /// Dice (KiTS19).
    pub fn score(&self) -> f64 {
        self.regions
            .as_ref()
            .map_or(self.dice.composite, |r| r.composite)
    }

    /// The regions' means by name (KiTS23).
    pub fn region_means(&self) -> Option<BTreeMap<String, RegionScore>> {
        self.regions.as_ref().map(Kits23Summary::means_by_name)
    }

    /// The per-case table as CSV lines, the header first.
    pub fn csv(&self) -> Vec<String> {
        match &self.regions {
            Some(r) => r.csv(),
            None => self.dice.csv(),
        }
    }

    /// One line of means, for a terminal.
    pub fn summary_line(&self) -> String {
        match &self.regions {
            Some(r) => r.summary_line(),
            None => self.dice.summary_line(),
        }
    }

    /// The JSON report (`kseg evaluate --out`): the protocol, its means,
    /// its composite and every case.
    pub fn report(&self) -> Value {
        match &self.regions {
            Some(r) => r.report(),
            None => self.dice.report(),
        }
    }
}
