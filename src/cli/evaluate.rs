//! `kseg evaluate`: predictions against ground truth, with the KiTS19
//! metric (kidney and tumour Dice) or the KiTS21/KiTS23 metrics (Dice and
//! surface Dice of three regions, plus HD95 and mean surface distance).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use kseg_volume::metric::{KITS23_REGIONS, Kits23Accumulator};
use kseg_volume::{self as volume, DiceAccumulator, LabelSet, Volume};
use serde_json::{Value, json};

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

fn evaluate(
    pred: &Path,
    truth: &Path,
    out: Option<&Path>,
    allow_missing: bool,
    labels: LabelSet,
) -> Result<()> {
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
                volume::case::some_ids(&missing)
            );
        }
        eprintln!(
            "scoring {} cases; {} truth cases have no prediction: {}",
            predictions.len(),
            missing.len(),
            volume::case::some_ids(&missing)
        );
    }
    let mut scorer = Scorer::new(labels);
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
            volume::read_labels(&pred_path, labels.max_label())?,
            volume::read_labels(&truth_path, labels.max_label())?,
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
        scorer.update(&id, &p, &t)?;
    }
    scorer.report(out, &missing)
}

/// The per-case scores of one protocol.
enum Scorer {
    Kits19(DiceAccumulator),
    Kits23(Kits23Accumulator),
}

impl Scorer {
    fn new(labels: LabelSet) -> Scorer {
        match labels {
            LabelSet::Kits19 => Scorer::Kits19(DiceAccumulator::new()),
            LabelSet::Kits23 => Scorer::Kits23(Kits23Accumulator::new()),
        }
    }

    fn update(&mut self, id: &str, p: &Volume<u8>, t: &Volume<u8>) -> Result<()> {
        let (ps, ts) = (
            p.data.as_slice().expect("standard layout"),
            t.data.as_slice().expect("standard layout"),
        );
        match self {
            Scorer::Kits19(acc) => {
                acc.update(id, ps, ts)?;
            }
            Scorer::Kits23(acc) => {
                // Distances in mm from the truth's voxel size, as the
                // official code does.
                let sp = t.header.spacing();
                acc.update(id, ps, ts, t.shape(), [sp[0], sp[1], sp[2]])?;
            }
        }
        Ok(())
    }

    /// Prints the CSV table and a summary line, and writes the JSON report.
    fn report(&self, out: Option<&Path>, missing: &[String]) -> Result<()> {
        let report = match self {
            Scorer::Kits19(acc) => kits19_report(acc)?,
            Scorer::Kits23(acc) => kits23_report(acc)?,
        };
        if let Some(out) = out {
            let mut report = report;
            report["missing"] = json!(missing);
            volume::fs::write_json_atomic(out, &report)?;
        }
        Ok(())
    }
}

fn kits19_report(acc: &DiceAccumulator) -> Result<Value> {
    let summary = acc.aggregate();
    print_line("case,kidney_dice,tumour_dice")?;
    for c in &summary.cases {
        print_line(&format!("{},{:.6},{:.6}", c.case, c.kidney, c.tumour))?;
    }
    eprintln!(
        "{} cases: kidney {:.4}, tumour {:.4}, composite {:.4}",
        summary.cases.len(),
        summary.kidney_mean,
        summary.tumour_mean,
        summary.composite
    );
    Ok(json!({
        "protocol": "kits19",
        "kidney_dice": summary.kidney_mean,
        "tumour_dice": summary.tumour_mean,
        "composite": summary.composite,
        "cases": summary.cases,
    }))
}

fn kits23_report(acc: &Kits23Accumulator) -> Result<Value> {
    let summary = acc.aggregate();
    let mut header = vec!["case".to_string()];
    for r in &KITS23_REGIONS {
        for m in ["dice", "surface_dice", "hd95", "msd"] {
            header.push(format!("{}_{m}", r.name));
        }
    }
    print_line(&header.join(","))?;
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    for c in &summary.cases {
        let mut row = vec![c.case.clone()];
        for s in &c.regions {
            row.push(format!("{:.6}", s.dice));
            row.push(format!("{:.6}", s.surface_dice));
            row.push(opt(s.hd95));
            row.push(opt(s.mean_surface_distance));
        }
        print_line(&row.join(","))?;
    }
    let words: Vec<String> = KITS23_REGIONS
        .iter()
        .zip(&summary.means)
        .map(|(r, m)| format!("{} dice {:.4} sd {:.4}", r.name, m.dice, m.surface_dice))
        .collect();
    eprintln!(
        "{} cases: {}; composite {:.4}",
        summary.cases.len(),
        words.join(", "),
        summary.composite
    );
    let regions: serde_json::Map<String, Value> = KITS23_REGIONS
        .iter()
        .zip(&summary.means)
        .map(|(r, m)| (r.name.to_string(), json!(m)))
        .collect();
    let cases: Vec<Value> = summary
        .cases
        .iter()
        .map(|c| {
            let mut v = json!({ "case": c.case });
            for (r, s) in KITS23_REGIONS.iter().zip(&c.regions) {
                v[r.name] = json!(s);
            }
            v
        })
        .collect();
    Ok(json!({
        "protocol": "kits23",
        "tolerances_mm": KITS23_REGIONS.iter().map(|r| (r.name, r.tolerance_mm)).collect::<std::collections::BTreeMap<_, _>>(),
        "regions": regions,
        "composite": summary.composite,
        "cases": cases,
    }))
}
