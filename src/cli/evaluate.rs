//! `kseg evaluate`: predictions against ground truth, with the KiTS19
//! metric (kidney and tumour Dice) or the KiTS21/KiTS23 metrics (Dice and
//! surface Dice of three regions, plus HD95 and mean surface distance).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use kseg_volume::{self as volume, FolderEvaluation, LabelSet};
use serde_json::json;

use super::print_line;

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
    /// kits19: kidney and tumour Dice (labels 0..=2). kits23: Dice, surface
    /// Dice (the official tolerances), HD95 and mean surface distance of
    /// the regions kidney_and_mass, mass and tumor (labels 0..=3).
    #[arg(long, default_value = "kits19", value_parser = ["kits19", "kits23"])]
    pub protocol: String,
}

impl EvaluateArgs {
    /// Scores every prediction found, prints the CSV table and writes the
    /// JSON report when asked.
    pub fn run(&self) -> Result<()> {
        let labels: LabelSet = self.protocol.parse()?;
        evaluate(
            &self.pred,
            &self.truth,
            self.out.as_deref(),
            self.allow_missing,
            labels,
        )
    }
}

fn evaluate(
    pred: &Path,
    truth: &Path,
    out: Option<&Path>,
    allow_missing: bool,
    labels: LabelSet,
) -> Result<()> {
    if let Some(out) = out {
        // The report never replaces what it scores (a wrong --out).
        for (_, p) in volume::find_predictions(pred).unwrap_or_default() {
            volume::fs::protect(&p, "prediction");
        }
        for case in volume::list_cases(truth).unwrap_or_default() {
            if let Some(t) = &case.segmentation {
                volume::fs::protect(t, "ground truth");
            }
        }
        volume::fs::check_not_input(out)?;
        let folder = out.parent().filter(|p| !p.as_os_str().is_empty());
        if folder.is_some_and(|f| !f.is_dir()) {
            bail!(
                "{}: no such folder for the report",
                folder.unwrap_or(out).display()
            );
        }
    }
    let FolderEvaluation {
        evaluation,
        missing,
    } = volume::evaluate_folder(pred, truth, labels, allow_missing)?;
    if !missing.is_empty() {
        eprintln!(
            "scoring {} cases; {} truth cases have no prediction: {}",
            evaluation.len(),
            missing.len(),
            volume::case::some_ids(&missing)
        );
    }
    for line in evaluation.csv() {
        print_line(&line)?;
    }
    eprintln!("{}", evaluation.summary_line());
    if let Some(out) = out {
        let mut report = evaluation.report();
        report["missing"] = json!(missing);
        volume::fs::write_json_atomic(out, &report)?;
    }
    Ok(())
}
