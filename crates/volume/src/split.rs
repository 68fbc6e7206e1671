//! Seeded train/validation splits, saved as JSON so that every run of a
//! study uses the same cases.

use std::collections::HashSet;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, VolumeError};
use crate::fs::write_json_atomic;

/// A train/validation split of case ids.
///
/// ```
/// use kseg_volume::Split;
/// let ids: Vec<String> = (0..210).map(|i| format!("case_{i:05}")).collect();
/// let s = Split::random(&ids, 30, 42).unwrap();
/// assert_eq!((s.train.len(), s.val.len()), (180, 30));
/// assert_eq!(s, Split::random(&ids, 30, 42).unwrap()); // seeded
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// The RNG seed the split was drawn with.
    pub seed: u64,
    /// Training case ids.
    pub train: Vec<String>,
    /// Validation case ids.
    pub val: Vec<String>,
    /// Case folders of the data that have no labels and so are in neither
    /// list (KiTS19's test cases 210-299, or a folder missing its
    /// segmentation): named so that nothing is left out without a word.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlabelled: Vec<String>,
}

impl Split {
    /// Shuffles the (sorted, de-duplicated) ids with ChaCha8 seeded by `seed`
    /// and takes the first `n_val` as validation cases. Both lists come back
    /// sorted. The result depends only on the set of ids and the seed.
    pub fn random(ids: &[String], n_val: usize, seed: u64) -> Result<Split> {
        let mut ids: Vec<String> = ids.to_vec();
        ids.sort();
        ids.dedup();
        if n_val > ids.len() {
            return Err(VolumeError::InvalidArgument(format!(
                "cannot take {n_val} validation cases from {} cases",
                ids.len()
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        ids.shuffle(&mut rng);
        let mut val = ids.split_off(ids.len() - n_val);
        let mut train = ids;
        train.sort();
        val.sort();
        Ok(Split {
            seed,
            train,
            val,
            unlabelled: Vec::new(),
        })
    }

    /// Writes the split as pretty JSON (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_json_atomic(path.as_ref(), self)
    }

    /// Reads a split file and checks it: no id twice, no id in both lists.
    pub fn load(path: impl AsRef<Path>) -> Result<Split> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| VolumeError::io(path, e))?;
        let split: Split = serde_json::from_str(&text)
            .map_err(|e| VolumeError::format(path, format!("not a split file: {e}")))?;
        let mut seen = HashSet::new();
        for id in split.train.iter().chain(&split.val) {
            if !seen.insert(id) {
                return Err(VolumeError::format(
                    path,
                    format!("case {id} appears twice in the split"),
                ));
            }
        }
        Ok(split)
    }

    /// Loads `path` if it exists, else makes a random split and saves it.
    pub fn load_or_create(
        path: impl AsRef<Path>,
        ids: &[String],
        n_val: usize,
        seed: u64,
    ) -> Result<Split> {
        let path = path.as_ref();
        if path.exists() {
            Split::load(path)
        } else {
            let s = Split::random(ids, n_val, seed)?;
            s.save(path)?;
            Ok(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case_{i:05}")).collect()
    }

    #[test]
    fn split_is_a_partition_and_seeded() {
        let a = Split::random(&ids(210), 30, 7).unwrap();
        let b = Split::random(&ids(210), 30, 8).unwrap();
        assert_ne!(a.val, b.val);
        let mut all: Vec<_> = a.train.iter().chain(&a.val).cloned().collect();
        all.sort();
        assert_eq!(all, ids(210));
        // Order of the input does not matter.
        let mut rev = ids(210);
        rev.reverse();
        assert_eq!(Split::random(&rev, 30, 7).unwrap(), a);
        assert!(Split::random(&ids(3), 4, 0).is_err());
    }

    #[test]
    fn save_load_round_trip_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("split.json");
        let s = Split::random(&ids(10), 3, 1).unwrap();
        s.save(&p).unwrap();
        assert_eq!(Split::load(&p).unwrap(), s);
        std::fs::write(&p, r#"{"seed":1,"train":["a","b"],"val":["b"]}"#).unwrap();
        let e = Split::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("appears twice") && e.contains("split.json"),
            "{e}"
        );
    }
}
