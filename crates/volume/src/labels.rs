//! Label sets: which label values a dataset's segmentations hold.
//!
//! - `kits19`: 0 background, 1 kidney, 2 tumour (KiTS19).
//! - `kits23`: 0 background, 1 kidney, 2 tumour, 3 cyst (KiTS21, KiTS23).
//!
//! Readers check every label file against the set's largest value (a value
//! outside it is an error naming the value and a voxel).

use serde::{Deserialize, Serialize};

use crate::error::VolumeError;

/// A dataset's label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSet {
    /// 0 background, 1 kidney, 2 tumour.
    #[default]
    Kits19,
    /// 0 background, 1 kidney, 2 tumour, 3 cyst.
    Kits23,
}

impl LabelSet {
    /// The largest label value.
    pub fn max_label(self) -> u8 {
        match self {
            LabelSet::Kits19 => 2,
            LabelSet::Kits23 => 3,
        }
    }

    /// The number of label values (background included).
    pub fn num_labels(self) -> usize {
        self.max_label() as usize + 1
    }

    /// The name of each label value.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            LabelSet::Kits19 => &["background", "kidney", "tumour"],
            LabelSet::Kits23 => &["background", "kidney", "tumour", "cyst"],
        }
    }

    /// Its name in configurations and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            LabelSet::Kits19 => "kits19",
            LabelSet::Kits23 => "kits23",
        }
    }
}

impl std::str::FromStr for LabelSet {
    type Err = VolumeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kits19" => Ok(LabelSet::Kits19),
            "kits23" => Ok(LabelSet::Kits23),
            _ => Err(VolumeError::InvalidArgument(format!(
                "unknown label set {s:?} (kits19 or kits23)"
            ))),
        }
    }
}

impl std::fmt::Display for LabelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
