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
    /// With k-fold cross-validation ([`Split::kfold`]): every fold's
    /// validation cases, so that each fold's run records all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<Vec<String>>,
    /// The fold this split validates on (its `val`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<usize>,
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
            folds: Vec::new(),
            fold: None,
        })
    }

    /// Fold `fold` of a seeded `k`-fold case-level split (nnU-Net's
    /// cross-validation): the (sorted, de-duplicated) ids shuffled with
    /// ChaCha8 seeded by `seed`, position `i` going to fold `i mod k`;
    /// `val` is that fold's cases, `train` all others, and `folds` lists
    /// every fold (each sorted). Every case is validated in exactly one
    /// fold; the folds' sizes differ by at most one.
    ///
    /// ```
    /// use kseg_volume::Split;
    /// let ids: Vec<String> = (0..11).map(|i| format!("case_{i:05}")).collect();
    /// let s = Split::kfold(&ids, 5, 2, 7).unwrap();
    /// assert_eq!((s.folds.len(), &s.val, s.fold), (5, &s.folds[2], Some(2)));
    /// assert_eq!(s.train.len() + s.val.len(), 11);
    /// ```
    pub fn kfold(ids: &[String], k: usize, fold: usize, seed: u64) -> Result<Split> {
        let mut ids: Vec<String> = ids.to_vec();
        ids.sort();
        ids.dedup();
        if k < 2 || k > ids.len() {
            return Err(VolumeError::InvalidArgument(format!(
                "{k} folds of {} cases: cross-validation needs 2 to {} folds",
                ids.len(),
                ids.len()
            )));
        }
        if fold >= k {
            return Err(VolumeError::InvalidArgument(format!(
                "fold {fold} of {k}: folds are numbered 0 to {}",
                k - 1
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        ids.shuffle(&mut rng);
        let mut folds = vec![Vec::new(); k];
        for (i, id) in ids.into_iter().enumerate() {
            folds[i % k].push(id);
        }
        for f in &mut folds {
            f.sort();
        }
        let val = folds[fold].clone();
        let mut train: Vec<String> = folds
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != fold)
            .flat_map(|(_, f)| f.iter().cloned())
            .collect();
        train.sort();
        Ok(Split {
            seed,
            train,
            val,
            unlabelled: Vec::new(),
            folds,
            fold: Some(fold),
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

    /// Over all folds every case is validated once, never trained on in
    /// its own fold; seeded; sizes within one; bad k or fold refused.
    #[test]
    fn kfold_partitions_the_cases() {
        let all = ids(23);
        let mut seen = Vec::new();
        for f in 0..5 {
            let s = Split::kfold(&all, 5, f, 3).unwrap();
            assert!(s.val.iter().all(|v| !s.train.contains(v)));
            assert_eq!(s.train.len() + s.val.len(), 23);
            assert!(s.val.len() == 4 || s.val.len() == 5, "{}", s.val.len());
            assert_eq!(s.val, s.folds[f]);
            assert_eq!(s, Split::kfold(&all, 5, f, 3).unwrap());
            seen.extend(s.val.clone());
        }
        seen.sort();
        assert_eq!(seen, all);
        assert_ne!(
            Split::kfold(&all, 5, 0, 4).unwrap().val,
            Split::kfold(&all, 5, 0, 3).unwrap().val
        );
        assert!(
            Split::kfold(&all, 5, 5, 3)
                .unwrap_err()
                .to_string()
                .contains("fold 5 of 5")
        );
        assert!(Split::kfold(&all, 1, 0, 3).is_err());
        assert!(Split::kfold(&ids(3), 4, 0, 3).is_err());
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
