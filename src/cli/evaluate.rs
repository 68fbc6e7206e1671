//! `kseg evaluate`: the KiTS19 Dice of predictions against ground truth.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use kseg_volume::{self as volume, DiceAccumulator};
use serde_json::json;

/// The arguments of `kseg evaluate` (see `kseg evaluate --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct EvaluateArgs {
    /// The predictions: case_XXXXX.nii.gz files or case_XXXXX/ folders.
    #[arg(long)]
    pub pred: PathBuf,
    /// The ground truth: a KiTS19 data folder (case_XXXXX/segmentation.nii.gz).
    #[arg(long)]
    pub truth: PathBuf,
    /// JSON report: kidney_dice, tumour_dice, composite, cases.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Score the cases that have a prediction when some truth cases have
    /// none (they are named on stderr and in the report's `missing`).
    /// Default: a truth case without a prediction is an error.
    #[arg(long)]
    pub allow_missing: bool,
}

impl EvaluateArgs {
    /// Scores every prediction found, prints the CSV table and writes the
    /// JSON report when asked.
    pub fn run(&self) -> Result<()> {
        evaluate(
            &self.pred,
            &self.truth,
            self.out.as_deref(),
            self.allow_missing,
        )
    }
}

/// The ids of the truth folder's `case_*` folders that hold a
/// segmentation.
fn truth_cases(truth: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let entries = std::fs::read_dir(truth)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the truth folder: {e}", truth.display()))?;
    for e in entries {
        let e = e.map_err(|e| anyhow::anyhow!("{}: {e}", truth.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("case_") && e.path().join(volume::case::SEGMENTATION).is_file() {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Up to ten names and how many more.
fn some(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 10 {
        s.push_str(&format!(" and {} more", names.len() - 10));
    }
    s
}

fn evaluate(pred: &Path, truth: &Path, out: Option<&Path>, allow_missing: bool) -> Result<()> {
    if let Some(out) = out {
        let folder = out.parent().filter(|p| !p.as_os_str().is_empty());
        if folder.is_some_and(|f| !f.is_dir()) {
            bail!(
                "{}: no such folder for the report",
                folder.unwrap_or(out).display()
            );
        }
    }
    let predictions = volume::find_predictions(pred)?;
    let missing: Vec<String> = truth_cases(truth)?
        .into_iter()
        .filter(|id| !predictions.iter().any(|(p, _)| p == id))
        .collect();
    if !missing.is_empty() {
        if !allow_missing {
            bail!(
                "{}: no prediction for {} of the truth cases in {}: {} (--allow-missing scores the others)",
                pred.display(),
                missing.len(),
                truth.display(),
                some(&missing)
            );
        }
        eprintln!(
            "scoring {} cases; {} truth cases have no prediction: {}",
            predictions.len(),
            missing.len(),
            some(&missing)
        );
    }
    let mut acc = DiceAccumulator::new();
    for (id, pred_path) in predictions {
        let truth_path = truth.join(&id).join(volume::case::SEGMENTATION);
        if !truth_path.is_file() {
            bail!(
                "{}: no ground truth for prediction {} (looked for {})",
                truth.display(),
                pred_path.display(),
                truth_path.display()
            );
        }
        let (p, t) = (
            volume::read_labels(&pred_path, 2)?,
            volume::read_labels(&truth_path, 2)?,
        );
        if p.shape() != t.shape() {
            return Err(volume::VolumeError::ShapeMismatch {
                path: pred_path,
                got: p.shape().to_vec(),
                other: truth_path,
                expected: t.shape().to_vec(),
            }
            .into());
        }
        if let Some(why) = p.header.grid_mismatch(&t.header) {
            bail!(
                "{}: not on the grid of its truth {}: {why}",
                pred_path.display(),
                truth_path.display()
            );
        }
        let (ps, ts) = (
            p.data.as_slice().expect("standard layout"),
            t.data.as_slice().expect("standard layout"),
        );
        acc.update(&id, ps, ts)?;
    }
    let summary = acc.aggregate();
    println!("case,kidney_dice,tumour_dice");
    for c in &summary.cases {
        println!("{},{:.6},{:.6}", c.case, c.kidney, c.tumour);
    }
    eprintln!(
        "{} cases: kidney {:.4}, tumour {:.4}, composite {:.4}",
        summary.cases.len(),
        summary.kidney_mean,
        summary.tumour_mean,
        summary.composite
    );
    if let Some(out) = out {
        let report = json!({
            "kidney_dice": summary.kidney_mean,
            "tumour_dice": summary.tumour_mean,
            "composite": summary.composite,
            "cases": summary.cases,
            "missing": missing,
        });
        volume::fs::write_bytes_atomic(out, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}
