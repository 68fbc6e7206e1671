//! The `kseg` command line: glue over the workspace crates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kseg::volume::{self, CaseDir, NiftiImage, synth};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "kseg",
    version,
    about = "Kidney and kidney-tumour segmentation on abdominal CT (KiTS19)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print one JSON object describing a NIfTI file or a KiTS19 case folder.
    ///
    /// For a file: shape (NIfTI dim order), dtype, spacing_mm, affine (4x4,
    /// as nibabel's img.affine), min, max, mean (after scl_slope/scl_inter;
    /// NaN voxels ignored and counted in nan_count). For a case folder: the
    /// same for imaging and segmentation (with label_counts), after checking
    /// that their shapes agree and the labels are 0, 1 or 2.
    Info {
        /// A .nii, .nii.gz, .hdr or .img file, or a case folder.
        path: PathBuf,
        /// Also count the voxels of each value (for label files).
        #[arg(long)]
        labels: bool,
    },
    /// Write synthetic KiTS-like cases (int16 HU imaging, uint8 labels) in
    /// KiTS19's layout: OUT/case_00000/{imaging,segmentation}.nii.gz, ...
    Synth {
        /// Output folder (the KiTS19 `data/` equivalent).
        #[arg(long)]
        out: PathBuf,
        /// Number of cases.
        #[arg(long, default_value_t = 8)]
        cases: usize,
        /// Seed: the same seed gives the same cases.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// In-plane size H W.
        #[arg(long, num_args = 2, value_names = ["H", "W"], default_values_t = [128, 128])]
        size: Vec<usize>,
        /// Slice-count range A B (inclusive).
        #[arg(long, num_args = 2, value_names = ["A", "B"], default_values_t = [32, 64])]
        slices: Vec<usize>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { path, labels } => {
            let v = if path.is_dir() {
                case_info(&path)?
            } else {
                file_info(&path, labels)?
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Synth {
            out,
            cases,
            seed,
            size,
            slices,
        } => {
            let cfg = synth::SynthConfig {
                height: size[0],
                width: size[1],
                min_slices: slices[0],
                max_slices: slices[1],
                seed,
            };
            let start = std::time::Instant::now();
            let dirs = synth::write_dataset(&out, cases, &cfg)?;
            for d in &dirs {
                eprintln!("{}", d.dir.display());
            }
            eprintln!(
                "wrote {} synthetic cases to {} in {:.1} s",
                dirs.len(),
                out.display(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

fn image_json(img: &NiftiImage, labels: bool, path: &Path) -> Result<Value> {
    let h = &img.header;
    let (mut min, mut max, mut sum, mut n, mut nan) =
        (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0u64, 0u64);
    for &v in img.data.iter() {
        if v.is_nan() {
            nan += 1;
        } else {
            min = min.min(v);
            max = max.max(v);
            sum += v;
            n += 1;
        }
    }
    let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    let mut out = json!({
        "file": path.display().to_string(),
        "shape": h.shape(),
        "dtype": h.dtype().name(),
        "spacing_mm": h.spacing(),
        "affine": h.affine(),
        "min": num(min),
        "max": num(max),
        "mean": num(if n > 0 { sum / n as f64 } else { f64::NAN }),
        "nan_count": nan,
    });
    if labels {
        let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
        for &v in img.data.iter() {
            if v.fract() != 0.0 || !v.is_finite() {
                bail!(
                    "{}: not a label file: voxel value {v} is not a whole number",
                    path.display()
                );
            }
            *counts.entry(v as i64).or_default() += 1;
        }
        let counts: serde_json::Map<String, Value> = counts
            .into_iter()
            .map(|(k, c)| (k.to_string(), json!(c)))
            .collect();
        out["label_counts"] = Value::Object(counts);
    }
    Ok(out)
}

fn file_info(path: &Path, labels: bool) -> Result<Value> {
    let img = volume::read_image(path)?;
    image_json(&img, labels, path)
}

fn case_info(dir: &Path) -> Result<Value> {
    let case = CaseDir::open(dir)?;
    let imaging = volume::read_image(&case.imaging)?;
    let mut out = json!({
        "case": case.id,
        "imaging": image_json(&imaging, false, &case.imaging)?,
    });
    if let Some(seg) = &case.segmentation {
        // Checks values (0..=2) and shape agreement with the imaging.
        case.load()
            .with_context(|| format!("checking case {}", dir.display()))?;
        let labels = volume::read_image(seg)?;
        out["segmentation"] = image_json(&labels, true, seg)?;
    }
    Ok(out)
}
