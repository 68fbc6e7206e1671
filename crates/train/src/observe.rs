//! Reporting: what the trainer tells observers, and the observers kseg
//! ships (a progress bar, a JSON-lines log, PNG plots).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use kseg_metrics::{DiceSummary, Evaluation, RegionMeans};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// One training step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps done after this one (1-based).
    pub step: usize,
    /// Samples seen / training slices.
    pub epoch: f64,
    /// The total loss.
    pub loss: f64,
    /// The cross-entropy part.
    pub ce: f64,
    /// The Lovász part.
    pub lovasz: f64,
    /// The learning rate of this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Samples per second over the last `log_every` steps.
    pub samples_per_s: f64,
}

/// A slice shown in the overlay figure.
#[derive(Debug, Clone)]
pub struct OverlaySlice {
    /// The case id.
    pub case: String,
    /// The slice index.
    pub slice: usize,
    /// The middle channel, normalised.
    pub image: Array2<f32>,
    /// Its ground truth.
    pub truth: Array2<u8>,
    /// The prediction.
    pub pred: Array2<u8>,
}

/// One validation.
#[derive(Debug, Clone)]
pub struct ValidationRecord {
    /// The step validated after.
    pub step: usize,
    /// The label set's metric over the validation cases: per-case and
    /// mean Dice (kidney: label > 0, tumour: label 2; for KiTS23 labels
    /// these are the kidney_and_mass and tumor regions' Dice) and, for
    /// KiTS23 label sets, the official metrics of the three regions.
    pub evaluation: Evaluation,
    /// Wall time of the validation.
    pub seconds: f64,
    /// Whether it is the best so far.
    pub is_best: bool,
    /// Slices to draw.
    pub overlays: Vec<OverlaySlice>,
}

impl ValidationRecord {
    /// The score the best checkpoint is chosen by: the KiTS23 composite
    /// (mean of the regions' Dice and surface Dice) for KiTS23 labels, else
    /// the KiTS19 composite.
    pub fn score(&self) -> f64 {
        self.evaluation.score()
    }

    /// The regions' means by name, for reports.
    pub fn region_means(&self) -> Option<BTreeMap<String, RegionMeans>> {
        self.evaluation.region_means()
    }
}

/// What a run ends with; written as `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Means over the validation cases at the end of the run.
    pub kidney_dice: f64,
    /// Mean tumour Dice at the end.
    pub tumour_dice: f64,
    /// The score at the end: mean of kidney and tumour Dice (KiTS19), or of
    /// the three regions' Dice and surface Dice (KiTS23).
    pub composite: f64,
    /// KiTS23 labels: each region's mean Dice, surface Dice, HD95 and mean
    /// surface distance at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<BTreeMap<String, RegionMeans>>,
    /// Step of the best validation.
    pub best_step: usize,
    /// Its composite.
    pub best_composite: f64,
    /// Its checkpoint folder.
    pub best_checkpoint: PathBuf,
    /// The newest checkpoint folder.
    pub last_checkpoint: PathBuf,
    /// Steps done.
    pub steps: usize,
    /// Epochs done.
    pub epochs: f64,
    /// Training seconds over all sessions of the run (resumes included).
    pub wall_seconds: f64,
    /// Training throughput over the run.
    pub samples_per_second: f64,
    /// The device kind.
    pub device: String,
    /// Trainable parameters.
    pub parameters: usize,
    /// The last validation.
    pub validation: DiceSummary,
    /// The configuration the run trained with.
    pub config: crate::TrainConfig,
}

/// Facts about the run, at its start.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The step this session starts at.
    pub first_step: usize,
    /// The step it ends at.
    pub total_steps: usize,
    /// Samples per batch.
    pub batch_size: usize,
    /// Training cases.
    pub train_cases: usize,
    /// Validation cases.
    pub val_cases: usize,
    /// Training slices.
    pub train_slices: usize,
    /// Trainable parameters.
    pub parameters: usize,
    /// The device kind.
    pub device: String,
}

/// Receives the run's events. Every method has a do-nothing default.
pub trait Observer {
    /// Called once, before the first step.
    fn on_start(&mut self, _info: &RunInfo) -> Result<()> {
        Ok(())
    }
    /// Called every step.
    fn on_step(&mut self, _rec: &StepRecord) -> Result<()> {
        Ok(())
    }
    /// Called after each validation.
    fn on_validation(&mut self, _rec: &ValidationRecord) -> Result<()> {
        Ok(())
    }
    /// Called after each checkpoint, with its folder.
    fn on_checkpoint(&mut self, _step: usize, _path: &Path) -> Result<()> {
        Ok(())
    }
    /// Called once, after `summary.json` is written.
    fn on_end(&mut self, _summary: &Summary) -> Result<()> {
        Ok(())
    }
}

/// A progress bar on stderr (step, loss, learning rate, samples/s, ETA);
/// where stderr is not a terminal, one line every `every` steps instead.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    every: usize,
}

impl Progress {
    /// A progress display; `every`: steps between lines when not on a terminal.
    pub fn new(every: usize) -> Progress {
        Progress {
            bar: None,
            every: every.max(1),
        }
    }
}

impl Observer for Progress {
    fn on_start(&mut self, info: &RunInfo) -> Result<()> {
        eprintln!(
            "kseg train: {} train / {} val cases ({} training slices), {} parameters on {}, steps {}..{} of batch {}; run folder {}",
            info.train_cases,
            info.val_cases,
            info.train_slices,
            info.parameters,
            info.device,
            info.first_step,
            info.total_steps,
            info.batch_size,
            info.run_dir.display()
        );
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::new(info.total_steps as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template"),
            );
            bar.set_position(info.first_step as u64);
            bar.reset_eta();
            self.bar = Some(bar);
        }
        Ok(())
    }

    fn on_step(&mut self, r: &StepRecord) -> Result<()> {
        let msg = format!(
            "loss {:.4} (ce {:.4}, lovasz {:.4}) lr {:.2e} {:.1} samples/s",
            r.loss, r.ce, r.lovasz, r.lr, r.samples_per_s
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step as u64);
                bar.set_message(msg);
            }
            None if r.step.is_multiple_of(self.every) => eprintln!("step {} {msg}", r.step),
            None => {}
        }
        Ok(())
    }

    fn on_validation(&mut self, r: &ValidationRecord) -> Result<()> {
        let scores = match r.region_means() {
            Some(m) => {
                m.iter()
                    .map(|(name, m)| format!("{name} {:.4}/{:.4}", m.dice, m.surface_dice))
                    .collect::<Vec<_>>()
                    .join(" ")
                    + " (Dice/surface Dice)"
            }
            None => format!(
                "kidney {:.4} tumour {:.4}",
                r.evaluation.dice.kidney_mean, r.evaluation.dice.tumour_mean
            ),
        };
        let line = format!(
            "validation at step {}: {scores} composite {:.4}{} ({:.1} s)",
            r.step,
            r.score(),
            if r.is_best { " (best)" } else { "" },
            r.seconds
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
        Ok(())
    }

    fn on_end(&mut self, s: &Summary) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        eprintln!(
            "done: {} steps in {:.0} s ({:.1} samples/s); kidney Dice {:.4}, tumour Dice {:.4}, composite {:.4}; best {:.4} at step {} ({})",
            s.steps,
            s.wall_seconds,
            s.samples_per_second,
            s.kidney_dice,
            s.tumour_dice,
            s.composite,
            s.best_composite,
            s.best_step,
            s.best_checkpoint.display()
        );
        Ok(())
    }
}

/// Appends one JSON object per line to `<run>/metrics.jsonl`: step records
/// every `every` steps (`"kind": "step"`) and every validation
/// (`"kind": "validation"`).
pub struct JsonLines {
    path: PathBuf,
    file: std::fs::File,
    every: usize,
}

impl JsonLines {
    /// Appends to `path` (created if missing), one line every `every` steps.
    pub fn new(path: &Path, every: usize) -> Result<JsonLines> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        Ok(JsonLines {
            path: path.to_path_buf(),
            file,
            every: every.max(1),
        })
    }

    fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| TrainError::io(&self.path, e))
    }
}

impl Observer for JsonLines {
    fn on_step(&mut self, r: &StepRecord) -> Result<()> {
        if !r.step.is_multiple_of(self.every) {
            return Ok(());
        }
        let mut v = serde_json::to_value(r).expect("record serialises");
        v["kind"] = "step".into();
        self.write(v)
    }

    fn on_validation(&mut self, r: &ValidationRecord) -> Result<()> {
        let mut v = serde_json::json!({
            "kind": "validation",
            "step": r.step,
            "kidney_dice": r.evaluation.dice.kidney_mean,
            "tumour_dice": r.evaluation.dice.tumour_mean,
            "composite": r.score(),
            "is_best": r.is_best,
            "seconds": r.seconds,
            "cases": r.evaluation.dice.cases,
        });
        if let Some(m) = r.region_means() {
            v["regions"] = serde_json::json!(m);
        }
        self.write(v)
    }

    fn on_end(&mut self, _s: &Summary) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Reads back the records of a metrics log up to step `upto` (for resume:
/// the log then holds what an uninterrupted run's would).
pub fn read_metrics(path: &Path, upto: usize) -> Result<Vec<serde_json::Value>> {
    Ok(read_metric_lines(path, upto)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// [`read_metrics`] with each record's line as it was written, so a resume
/// can keep the text byte for byte (parsing and printing a float again may
/// change its last digit).
pub fn read_metric_lines(path: &Path, upto: usize) -> Result<Vec<(String, serde_json::Value)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let v = serde_json::from_str::<serde_json::Value>(l).ok()?;
            Some((l.to_string(), v))
        })
        .filter(|(_, v)| v["step"].as_u64().is_some_and(|s| s as usize <= upto))
        .collect())
}
