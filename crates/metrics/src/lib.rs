//! Scoring kidney-tumour segmentations, and what a label set means: the
//! KiTS19 per-case Dice, the KiTS21/KiTS23 metrics (Dice, surface Dice at
//! the official tolerances, HD95, mean surface distance) with exact surface
//! distances and a Euclidean distance transform, behind one [`Metric`]
//! trait; and [`LabelSet`], which owns a label set's labels and regions,
//! its model's output count and activation, decoding probabilities to
//! labels, the foreground and tumour predicates, the regions' labels for a
//! loss, and the metric it is scored with. No tensors, no files: plain
//! slices and ndarray arrays.
//!
//! ```
//! use kseg_metrics::{LabelGrid, LabelSet};
//! let truth = [0u8, 1, 1, 2, 2, 0];
//! let pred = [0u8, 1, 2, 2, 0, 0];
//! let grid = |labels| LabelGrid { labels, shape: [1, 1, 6], spacing: [1.0; 3] };
//! let mut metric = LabelSet::Kits19.metric();
//! metric.update("case_00000", grid(&pred[..]), grid(&truth[..])).unwrap();
//! let eval = metric.aggregate();
//! // kidney: 2*3/7, tumour: 2*1/4.
//! assert!((eval.dice.kidney_mean - 6.0 / 7.0).abs() < 1e-12);
//! assert!((eval.score() - (6.0 / 7.0 + 0.5) / 2.0).abs() < 1e-12);
//! ```

pub mod dice;
pub mod kits23;
mod labels;
mod metric;
pub mod surface;

pub use dice::{
    CaseDice, DiceAccumulator, DiceSummary, KitsDice, MetricError, dice_from_counts, kits_dice,
};
pub use kits23::{
    Kits23Accumulator, Kits23Case, Kits23Metric, Kits23Summary, RegionMeans, RegionScore,
    kits23_case,
};
pub use labels::{Activation, KITS23_REGIONS, LabelSet, Region, UnknownLabelSet};
pub use metric::{Evaluation, LabelGrid, Metric};
