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
}

impl EvaluateArgs {
    /// Scores every prediction found, prints the CSV table and writes the
    /// JSON report when asked.
    pub fn run(&self) -> Result<()> {
        evaluate(&self.pred, &self.truth, self.out.as_deref())
    }
}

fn evaluate(pred: &Path, truth: &Path, out: Option<&Path>) -> Result<()> {
    let mut acc = DiceAccumulator::new();
    for (id, pred_path) in volume::find_predictions(pred)? {
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
        });
        volume::fs::write_bytes_atomic(out, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}
