//! Folder evaluation (nnU-Net's `compute_metrics_on_folder`): every
//! prediction in a folder against its case's ground truth, scored with the
//! label set's metric ([`LabelSet::metric`]). `kseg evaluate` is this
//! function and a report; training's validation scores through the same
//! [`kseg_metrics::Metric`].

use std::path::Path;

use kseg_metrics::{Evaluation, LabelGrid, LabelSet, Metric};

use crate::case::{CASE_PREFIX, SEGMENTATION, find_in, find_predictions, some_ids};
use crate::error::{Result, VolumeError};
use crate::nifti::{Volume, read_labels};

/// The scores of a folder of predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderEvaluation {
    /// Per case and means.
    pub evaluation: Evaluation,
    /// Truth cases that had no prediction (only with `allow_missing`).
    pub missing: Vec<String>,
}

/// The ids of the truth folder's `case_*` folders that hold a
/// segmentation, in id order.
pub fn truth_cases(truth: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let entries = std::fs::read_dir(truth).map_err(|e| VolumeError::Evaluation {
        path: truth.to_path_buf(),
        msg: format!("cannot read the truth folder: {e}"),
    })?;
    for e in entries {
        let e = e.map_err(|e| VolumeError::io(truth, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        // segmentation.nii.gz or segmentation.nii, as a case folder has it.
        if name.starts_with(CASE_PREFIX) && find_in(&e.path(), SEGMENTATION).is_some() {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Scores every prediction in `pred` ([`find_predictions`]) against
/// `truth/<case>/segmentation.nii.gz` with the metric of `labels`, reading
/// both with the set's label check. A truth case without a prediction is
/// an error unless `allow_missing` (then it is listed in
/// [`FolderEvaluation::missing`]); a prediction without a truth, or off its
/// truth's voxel grid, is an error.
pub fn evaluate_folder(
    pred: &Path,
    truth: &Path,
    labels: LabelSet,
    allow_missing: bool,
) -> Result<FolderEvaluation> {
    let predictions = find_predictions(pred)?;
    let missing: Vec<String> = truth_cases(truth)?
        .into_iter()
        .filter(|id| !predictions.iter().any(|(p, _)| p == id))
        .collect();
    if !missing.is_empty() && !allow_missing {
        return Err(VolumeError::Evaluation {
            path: pred.to_path_buf(),
            msg: format!(
                "no prediction for {} of the truth cases in {}: {} (--allow-missing scores the others)",
                missing.len(),
                truth.display(),
                some_ids(&missing)
            ),
        });
    }
    let mut metric = labels.metric();
    for (id, pred_path) in predictions {
        let Some(truth_path) = find_in(&truth.join(&id), SEGMENTATION) else {
            let truth_path = truth.join(&id).join(SEGMENTATION);
            return Err(VolumeError::Evaluation {
                path: truth.to_path_buf(),
                msg: format!(
                    "no ground truth for prediction {} (looked for {})",
                    pred_path.display(),
                    truth_path.display()
                ),
            });
        };
        // The truth file itself as its own prediction (--pred and --truth
        // the same folder, or a link to it) would score 1 without a word.
        if let (Ok(a), Ok(b)) = (
            std::fs::canonicalize(&pred_path),
            std::fs::canonicalize(&truth_path),
        ) && a == b
        {
            return Err(VolumeError::Evaluation {
                path: pred_path.clone(),
                msg: format!(
                    "the prediction is the ground truth file {} itself (are --pred and --truth the same folder?); nothing is scored against itself",
                    truth_path.display()
                ),
            });
        }
        let (p, t) = (
            read_labels(&pred_path, labels)?,
            read_labels(&truth_path, labels)?,
        );
        score_pair(metric.as_mut(), &id, (&pred_path, &p), (&truth_path, &t))?;
    }
    Ok(FolderEvaluation {
        evaluation: metric.aggregate(),
        missing,
    })
}

/// Checks that a prediction lies on its truth's grid and scores it.
fn score_pair(
    metric: &mut dyn Metric,
    id: &str,
    (pred_path, p): (&Path, &Volume<u8>),
    (truth_path, t): (&Path, &Volume<u8>),
) -> Result<()> {
    if p.shape() != t.shape() {
        return Err(VolumeError::ShapeMismatch {
            path: pred_path.to_path_buf(),
            got: p.shape().to_vec(),
            other: truth_path.to_path_buf(),
            expected: t.shape().to_vec(),
        });
    }
    if let Some(why) = p.header.grid_mismatch(&t.header) {
        return Err(VolumeError::Evaluation {
            path: pred_path.to_path_buf(),
            msg: format!(
                "not on the grid of its truth {}: {why}",
                truth_path.display()
            ),
        });
    }
    // Distances in mm from the truth's voxel size, as the official code
    // does: a size of 0 or NaN would make every distance 0 or NaN.
    let spacing = t.header.spacing3();
    if spacing.iter().any(|s| !(s.is_finite() && *s != 0.0)) {
        return Err(VolumeError::format(
            truth_path,
            format!(
                "pixdim[1..=3] {spacing:?} is not a voxel size (finite, not 0): distances in mm need it"
            ),
        ));
    }
    Ok(metric.update(id, grid(p, spacing), grid(t, spacing))?)
}

/// A label volume as the metrics see it, with the voxel size `spacing`.
fn grid(v: &Volume<u8>, spacing: [f64; 3]) -> LabelGrid<'_> {
    LabelGrid {
        labels: v.data.as_slice().expect("standard layout"),
        shape: v.shape(),
        spacing,
    }
}
