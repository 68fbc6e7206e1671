//! The `kseg` command line: one module per command, each holding its
//! arguments (clap) and what it does; `src/main.rs` parses, dispatches and
//! reports errors. The crates do the work: these modules are glue.

use std::io::Write;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod augment;
mod cv;
mod evaluate;
mod export;
mod info;
mod predict;
mod synth;
mod train;

pub use augment::AugmentArgs;
pub use cv::CvArgs;
pub use evaluate::EvaluateArgs;
pub use export::ExportArgs;
pub use info::InfoArgs;
pub use predict::PredictArgs;
pub use synth::SynthArgs;
pub use train::{TrainArgs, default_run_dir};

/// The `kseg` command and its arguments.
#[derive(Parser)]
#[command(
    name = "kseg",
    version,
    about = "Kidney and kidney-tumour segmentation on abdominal CT (KiTS19)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print one JSON object describing a NIfTI file or a KiTS19 case folder.
    ///
    /// For a file: shape (NIfTI dim order), dtype, spacing_mm, affine (4x4,
    /// as nibabel's img.affine), min, max, mean (after scl_slope/scl_inter;
    /// NaN voxels ignored and counted in nan_count, +-inf ones in
    /// inf_count). For a case folder: the
    /// same for imaging and segmentation (with label_counts), after checking
    /// that their shapes agree and the labels are 0, 1, 2 or 3 (KiTS19's,
    /// or KiTS23's with cysts).
    Info(InfoArgs),
    /// Write a PNG grid of augmented samples of one slice, the label drawn
    /// over the middle channel (kidney green, tumour red); the first tile is
    /// the slice as it is.
    Augment(AugmentArgs),
    /// Score predictions against ground truth. `--protocol kits19`
    /// (default): per-case kidney (label > 0) and tumour (label 2) Dice on
    /// whole volumes, their means and the composite. `--protocol kits23`:
    /// per case and region (kidney_and_mass {1,2,3}, mass {2,3}, tumor {2})
    /// Dice and surface Dice at the official tolerances, as the official
    /// KiTS23 code computes them (both empty: 1 and 1; one empty: 0 and 0),
    /// plus HD95 and mean surface distance in mm (not in the official
    /// score); the composite is the mean of the six region means. Prints
    /// the per-case table as CSV; `--out` also writes a JSON report.
    ///
    /// A prediction for case `case_XXXXX` is `PRED/case_XXXXX.nii.gz` (or
    /// `.nii`), or `PRED/case_XXXXX/prediction.nii.gz` or
    /// `PRED/case_XXXXX/segmentation.nii.gz`; its truth is
    /// `TRUTH/case_XXXXX/segmentation.nii.gz`. Every prediction found is
    /// scored; a truth case without prediction (unless --allow-missing), a
    /// prediction without truth, a shape or grid mismatch, or labels
    /// outside the protocol's set are errors.
    Evaluate(EvaluateArgs),
    /// Train the Res-U-Net: the same run as `cargo run --example
    /// train_kits19`, from a configuration file and overrides. Without
    /// --config and --data-dir: the synthetic CPU setup. The run folder gets
    /// config.json, split.json, metrics.jsonl, plots/, checkpoints/ and, at
    /// the end, summary.json.
    Train(TrainArgs),
    /// k-fold cross-validation (nnU-Net's): one run per fold in
    /// OUT/fold_K (a seeded case-level split, every fold recorded in each
    /// run's split.json; a finished fold is skipped, an interrupted one
    /// resumed), then every case predicted by the fold that validated it
    /// (OUT/oof/) and the pooled out-of-fold predictions scored with the
    /// run's protocol: OUT/cv_summary.json with each fold and the pool.
    Cv(CvArgs),
    /// Segment whole volumes with a trained checkpoint: a uint8 label
    /// volume (0 background, 1 kidney, 2 tumour) with the input's geometry.
    ///
    /// INPUT may be an imaging file (OUTPUT: the file to write), a case
    /// folder (OUTPUT: a file), or a folder of case folders (OUTPUT: a
    /// folder that gets case_XXXXX.nii.gz for each, ready for `kseg
    /// evaluate`). The checkpoint (a model.safetensors or its checkpoint
    /// folder) carries the model configuration and the preprocessing of
    /// training (intensity window, stack depth, in-plane resampling).
    Predict(PredictArgs),
    /// Write one file holding a model or the folds of an ensemble, with
    /// their preprocessing, clean-up, label set, provenance (each source's
    /// SHA-256, its run's configuration and validation scores), a licence
    /// and a checksum checked on load: `kseg predict --model FILE` gives
    /// what `kseg predict --checkpoint A --checkpoint B ...` gives.
    Export(ExportArgs),
    /// Write synthetic KiTS-like cases (int16 HU imaging, uint8 labels) in
    /// KiTS19's layout: OUT/case_00000/{imaging,segmentation}.nii.gz, ...
    Synth(SynthArgs),
}

impl Cli {
    /// Runs the command.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Info(a) => a.run(),
            Command::Augment(a) => a.run(),
            Command::Evaluate(a) => a.run(),
            Command::Train(a) => train::run_command(&a),
            Command::Cv(a) => a.run(),
            Command::Predict(a) => a.run(),
            Command::Synth(a) => a.run(),
            Command::Export(a) => a.run(),
        }
    }
}

/// A folder that is neither a case folder nor a DICOM folder: say what
/// was looked for; other errors pass unchanged.
pub(crate) fn not_an_input(dir: &std::path::Path, e: kseg_volume::VolumeError) -> anyhow::Error {
    if matches!(e, kseg_volume::VolumeError::NoDicom { .. }) {
        anyhow::anyhow!(
            "{}: missing imaging.nii.gz: not a case folder (imaging.nii.gz), a folder of case_* folders, or a folder of DICOM files",
            dir.display()
        )
    } else {
        e.into()
    }
}

/// Writes `text` and a newline to standard output. Unlike `println!`, a
/// closed pipe (`kseg info FILE | head`) is an error the caller can see,
/// not a panic.
pub(crate) fn print_line(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}
