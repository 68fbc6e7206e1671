//! Label sets: everything a dataset's labels mean, in one place (nnU-Net's
//! `LabelManager`).
//!
//! - `kits19`: 0 background, 1 kidney, 2 tumour (KiTS19), scored with the
//!   KiTS19 Dice ([`crate::dice`]).
//! - `kits23`: 0 background, 1 kidney, 2 tumour, 3 cyst (KiTS21, KiTS23),
//!   scored with the KiTS23 metrics of its three nested regions
//!   ([`crate::kits23`]); it can also be trained per region (one sigmoid
//!   output each).
//!
//! A [`LabelSet`] says which values label files may hold (readers check
//! every file against [`LabelSet::max_label`]), how many outputs a model
//! has and which activation they take, how probabilities decode to labels,
//! which labels are foreground and tumour, the regions' labels for a
//! region-based loss, and the [`Metric`] it is scored with. Adding a label
//! set is one more entry in [`DEFS`] (and a variant of the enum).

use ndarray::{Array2, ArrayView3};
use serde::{Deserialize, Serialize};

use crate::dice::DiceAccumulator;
use crate::kits23::Kits23Metric;
use crate::metric::Metric;

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

/// How a model's outputs become probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// A softmax over the labels (one output per label value).
    Softmax,
    /// One sigmoid per region (region-based training).
    Sigmoid,
}

/// A dataset's label values and what they mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSet {
    /// 0 background, 1 kidney, 2 tumour.
    #[default]
    Kits19,
    /// 0 background, 1 kidney, 2 tumour, 3 cyst.
    Kits23,
}

/// One label set's definition.
struct Def {
    name: &'static str,
    /// The name of each label value, background first.
    names: &'static [&'static str],
    /// The kidney (parenchyma) label.
    kidney: u8,
    /// The label scored as tumour.
    tumour: u8,
    /// The cyst label, where the set has one.
    cyst: Option<u8>,
    /// The regions a region-based model predicts (empty: no region
    /// training for this set).
    regions: &'static [Region],
    /// Region decoding: `(region, label)` pairs applied in order where the
    /// region's probability is above 0.5, each overwriting the last
    /// (nnU-Net's `regions_class_order`).
    decode_order: &'static [(usize, u8)],
    /// The accumulator its predictions are scored with.
    metric: fn() -> Box<dyn Metric>,
}

/// Every label set's definition, in the enum's order.
const DEFS: [Def; 2] = [
    Def {
        name: "kits19",
        names: &["background", "kidney", "tumour"],
        kidney: 1,
        tumour: 2,
        cyst: None,
        regions: &[],
        decode_order: &[],
        metric: || Box::new(DiceAccumulator::new()),
    },
    Def {
        name: "kits23",
        names: &["background", "kidney", "tumour", "cyst"],
        kidney: 1,
        tumour: 2,
        cyst: Some(3),
        regions: &KITS23_REGIONS,
        // Kidney where kidney_and_mass > 0.5, then cyst where mass > 0.5,
        // then tumour where tumor > 0.5 (KiTS23's order).
        decode_order: &[(0, 1), (1, 3), (2, 2)],
        metric: || Box::new(Kits23Metric::new()),
    },
];

/// A label set's name that is none of [`LabelSet::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown label set {0:?} (kits19 or kits23)")]
pub struct UnknownLabelSet(pub String);

impl LabelSet {
    /// Every label set.
    pub const ALL: [LabelSet; 2] = [LabelSet::Kits19, LabelSet::Kits23];

    fn def(self) -> &'static Def {
        &DEFS[self as usize]
    }

    /// The largest label value.
    pub fn max_label(self) -> u8 {
        (self.def().names.len() - 1) as u8
    }

    /// The number of label values (background included).
    pub fn num_labels(self) -> usize {
        self.def().names.len()
    }

    /// The name of each label value.
    pub fn names(self) -> &'static [&'static str] {
        self.def().names
    }

    /// Its name in configurations and on the command line.
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// The regions a region-based model of this set predicts, in output
    /// order (empty: the set has no region training).
    pub fn regions(self) -> &'static [Region] {
        self.def().regions
    }

    /// How many outputs a model predicting this set has: one per label, or
    /// with `regions` one per region (`None` where the set has no regions).
    pub fn outputs(self, regions: bool) -> Option<usize> {
        match regions {
            false => Some(self.num_labels()),
            true if self.regions().is_empty() => None,
            true => Some(self.regions().len()),
        }
    }

    /// The activation that turns a model's outputs into probabilities.
    pub fn activation(self, regions: bool) -> Activation {
        if regions {
            Activation::Sigmoid
        } else {
            Activation::Softmax
        }
    }

    /// The labels of one slice from its probabilities `[outputs, H, W]`:
    /// the label of highest probability (the first on ties), or for a
    /// region model the regions' labels in decoding order where their
    /// probability is above 0.5.
    pub fn decode(self, probs: ArrayView3<f32>, regions: bool) -> Array2<u8> {
        let (c, h, w) = probs.dim();
        if regions {
            let order = self.def().decode_order;
            return Array2::from_shape_fn((h, w), |(y, x)| {
                let mut label = 0;
                for &(r, value) in order {
                    if probs[[r, y, x]] > 0.5 {
                        label = value;
                    }
                }
                label
            });
        }
        Array2::from_shape_fn((h, w), |(y, x)| {
            let mut best = 0;
            for k in 1..c {
                if probs[[k, y, x]] > probs[[best, y, x]] {
                    best = k;
                }
            }
            best as u8
        })
    }

    /// Whether label `v` is foreground (any structure: what the
    /// largest-components clean-up keeps together).
    pub fn is_foreground(self, v: u8) -> bool {
        v != 0
    }

    /// Whether label `v` is tumour.
    pub fn is_tumour(self, v: u8) -> bool {
        v == self.def().tumour
    }

    /// Whether label `v` is kidney parenchyma (kidney without its lesions).
    pub fn is_kidney(self, v: u8) -> bool {
        v == self.def().kidney
    }

    /// The cyst label, where the set has one (KiTS23's 3).
    pub fn cyst(self) -> Option<u8> {
        self.def().cyst
    }

    /// Each region's labels, for a region-based loss (`RegionLoss`).
    pub fn region_labels(self) -> Vec<Vec<u32>> {
        self.regions()
            .iter()
            .map(|r| r.labels.iter().map(|&v| u32::from(v)).collect())
            .collect()
    }

    /// Per region, the voxels `[outside, inside]` it, from per-label voxel
    /// counts (a region's two-class counts, for its class weights).
    pub fn region_counts(self, label_counts: &[u64]) -> Vec<[u64; 2]> {
        let total: u64 = label_counts.iter().sum();
        self.regions()
            .iter()
            .map(|r| {
                let inside: u64 = (0..label_counts.len())
                    .filter(|&v| r.contains(v as u8))
                    .map(|v| label_counts[v])
                    .sum();
                [total - inside, inside]
            })
            .collect()
    }

    /// A fresh accumulator of the metric this set is scored with (KiTS19:
    /// kidney and tumour Dice; KiTS23: also the regions' Dice, surface
    /// Dice, HD95 and mean surface distance).
    pub fn metric(self) -> Box<dyn Metric> {
        (self.def().metric)()
    }
}

impl std::str::FromStr for LabelSet {
    type Err = UnknownLabelSet;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSet::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| UnknownLabelSet(s.to_string()))
    }
}

impl std::fmt::Display for LabelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn every_set_is_defined_in_the_enums_order() {
        for l in LabelSet::ALL {
            assert_eq!(l.to_string().parse::<LabelSet>().unwrap(), l);
            assert_eq!(
                serde_json::to_string(&l).unwrap(),
                format!("\"{}\"", l.name())
            );
        }
        assert_eq!(LabelSet::Kits19.max_label(), 2);
        assert_eq!(LabelSet::Kits23.max_label(), 3);
        assert_eq!(
            "kits21".parse::<LabelSet>().unwrap_err().to_string(),
            "unknown label set \"kits21\" (kits19 or kits23)"
        );
    }

    #[test]
    fn outputs_and_activation() {
        assert_eq!(LabelSet::Kits19.outputs(false), Some(3));
        assert_eq!(LabelSet::Kits19.outputs(true), None);
        assert_eq!(LabelSet::Kits23.outputs(false), Some(4));
        assert_eq!(LabelSet::Kits23.outputs(true), Some(3));
        assert_eq!(LabelSet::Kits23.activation(true), Activation::Sigmoid);
        assert_eq!(LabelSet::Kits19.activation(false), Activation::Softmax);
    }

    #[test]
    fn decoding_by_hand() {
        // Regions [kidney_and_mass, mass, tumor] at four pixels.
        let p = Array3::from_shape_vec(
            (3, 1, 4),
            vec![
                0.9, 0.9, 0.9, 0.2, // kidney_and_mass
                0.1, 0.8, 0.8, 0.9, // mass
                0.0, 0.3, 0.7, 0.9, // tumor
            ],
        )
        .unwrap();
        let labels = LabelSet::Kits23.decode(p.view(), true);
        // kidney; cyst (mass, no tumour); tumour; tumour overrides all.
        assert_eq!(labels.as_slice().unwrap(), &[1, 3, 2, 2]);
        // Softmax: argmax, the first of equal scores.
        let p =
            Array3::from_shape_vec((3, 1, 3), vec![0.5, 0.2, 0.3, 0.5, 0.7, 0.3, 0.0, 0.1, 0.4])
                .unwrap();
        assert_eq!(
            LabelSet::Kits19.decode(p.view(), false).as_slice().unwrap(),
            &[0, 1, 2]
        );
    }

    #[test]
    fn region_labels_and_counts() {
        assert_eq!(
            LabelSet::Kits23.region_labels(),
            vec![vec![1, 2, 3], vec![2, 3], vec![2]]
        );
        // 100 background, 10 kidney, 5 tumour, 2 cyst.
        assert_eq!(
            LabelSet::Kits23.region_counts(&[100, 10, 5, 2]),
            vec![[100, 17], [110, 7], [112, 5]]
        );
        assert!(LabelSet::Kits19.is_tumour(2) && !LabelSet::Kits19.is_tumour(1));
        assert!(LabelSet::Kits23.is_foreground(3) && !LabelSet::Kits23.is_foreground(0));
    }
}
