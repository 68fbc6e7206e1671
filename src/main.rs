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
    /// Write a PNG grid of augmented samples of one slice, the label drawn
    /// over the middle channel (kidney green, tumour red); the first tile is
    /// the slice as it is.
    Augment {
        /// A case folder (imaging.nii.gz + segmentation.nii.gz).
        #[arg(long)]
        case: PathBuf,
        /// The slice (index along the first axis).
        #[arg(long)]
        slice: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Number of augmented samples.
        #[arg(long, default_value_t = 8)]
        n: usize,
        /// Output size H W of each sample (default: the input's size).
        #[arg(long, num_args = 2, value_names = ["H", "W"])]
        size: Option<Vec<usize>>,
        /// Neighbours on each side in the 2.5D stack.
        #[arg(long, default_value_t = 1)]
        neighbours: usize,
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Score predictions against ground truth with the KiTS19 metric:
    /// per-case kidney (label > 0) and tumour (label 2) Dice on whole
    /// volumes, their means and the composite. Prints the per-case table as
    /// CSV; `--out` also writes a JSON report.
    ///
    /// A prediction for case `case_XXXXX` is `PRED/case_XXXXX.nii.gz` (or
    /// `.nii`), or `PRED/case_XXXXX/prediction.nii.gz` or
    /// `PRED/case_XXXXX/segmentation.nii.gz`; its truth is
    /// `TRUTH/case_XXXXX/segmentation.nii.gz`. Every prediction found is
    /// scored; a prediction without truth, a shape mismatch or labels
    /// outside 0..=2 are errors.
    Evaluate {
        #[arg(long)]
        pred: PathBuf,
        #[arg(long)]
        truth: PathBuf,
        /// JSON report: kidney_dice, tumour_dice, composite, cases.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Train the Res-U-Net: the same run as `cargo run --example
    /// train_kits19`, from a configuration file and overrides. Without
    /// --config and --data-dir: the synthetic CPU setup. The run folder gets
    /// config.json, split.json, metrics.jsonl, plots/, checkpoints/ and, at
    /// the end, summary.json.
    Train(kseg::cli::TrainArgs),
    /// Segment whole volumes with a trained checkpoint: a uint8 label
    /// volume (0 background, 1 kidney, 2 tumour) with the input's geometry.
    ///
    /// INPUT may be an imaging file (OUTPUT: the file to write), a case
    /// folder (OUTPUT: a file), or a folder of case folders (OUTPUT: a
    /// folder that gets case_XXXXX.nii.gz for each, ready for `kseg
    /// evaluate`). The checkpoint (a model.safetensors or its checkpoint
    /// folder) carries the model configuration and the preprocessing of
    /// training (intensity window, stack depth, in-plane resampling).
    Predict {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Keep only the N largest connected foreground components (2 for
        /// two kidneys); 0 turns it off. Default: what the checkpoint's
        /// training validated with (`postprocess.keep_largest`, off unless
        /// set).
        #[arg(long, value_name = "N")]
        lcc: Option<usize>,
        /// Mirroring test-time augmentation (true/false): average each
        /// slice's class probabilities with its mirror image's, at twice
        /// the cost. Default: what the checkpoint's training validated
        /// with (`postprocess.mirror`).
        #[arg(long, value_name = "BOOL")]
        mirror: Option<bool>,
        /// cpu, cuda, cuda:N, metal or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Slices per forward pass.
        #[arg(long, default_value_t = 8)]
        batch: usize,
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
        /// Range of the field of view in mm, drawn per case (smaller: the
        /// kidneys cover more pixels; `train_kits19`'s preset uses 240 280).
        /// Default: the generator's, 340 420.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        fov: Option<Vec<f32>>,
        /// Range of a tumour's radius in mm (`train_kits19`'s preset: 14
        /// 36). Default: the generator's, 8 32.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        tumour_radius: Option<Vec<f32>>,
    },
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { kseg::init_cpu_runtime() };
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
        Command::Augment {
            case,
            slice,
            seed,
            n,
            size,
            neighbours,
            out,
        } => augment_grid(&case, slice, seed, n, size, neighbours, &out)?,
        Command::Evaluate { pred, truth, out } => evaluate(&pred, &truth, out.as_deref())?,
        Command::Train(args) => {
            let (dir, s) = args.run()?;
            println!("{}", dir.join(kseg::train::trainer::SUMMARY_FILE).display());
            eprintln!(
                "kidney Dice {:.4}, tumour Dice {:.4}, composite {:.4}; best checkpoint {}",
                s.kidney_dice,
                s.tumour_dice,
                s.composite,
                s.best_checkpoint.display()
            );
        }
        Command::Predict {
            checkpoint,
            input,
            output,
            lcc,
            mirror,
            device,
            batch,
        } => predict(&checkpoint, &input, &output, lcc, mirror, &device, batch)?,
        Command::Synth {
            out,
            cases,
            seed,
            size,
            slices,
            fov,
            tumour_radius,
        } => {
            let d = synth::SynthConfig::default();
            let pair = |v: Option<Vec<f32>>, d| v.map_or(d, |v| (v[0], v[1]));
            let cfg = synth::SynthConfig {
                height: size[0],
                width: size[1],
                min_slices: slices[0],
                max_slices: slices[1],
                seed,
                fov_mm: pair(fov, d.fov_mm),
                tumour_radius_mm: pair(tumour_radius, d.tumour_radius_mm),
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
        // Small whole numbers (every label file) are counted in an array.
        let mut small = [0u64; 256];
        let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
        for &v in img.data.iter() {
            if v.fract() != 0.0 || !v.is_finite() {
                bail!(
                    "{}: not a label file: voxel value {v} is not a whole number",
                    path.display()
                );
            }
            if (0.0..256.0).contains(&v) {
                small[v as usize] += 1;
            } else {
                *counts.entry(v as i64).or_default() += 1;
            }
        }
        for (v, &n) in small.iter().enumerate() {
            if n > 0 {
                counts.insert(v as i64, n);
            }
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

fn augment_grid(
    case: &Path,
    slice: usize,
    seed: u64,
    n: usize,
    size: Option<Vec<usize>>,
    neighbours: usize,
    out: &Path,
) -> Result<()> {
    use kseg::augment::{AugmentConfig, AugmentParams, apply};
    let case_dir = CaseDir::open(case)?;
    let loaded = case_dir.load()?;
    let Some(labels) = loaded.labels else {
        bail!("{}: no segmentation.nii.gz to draw", case.display());
    };
    let depth = loaded.imaging.shape()[0];
    if slice >= depth {
        bail!(
            "{}: slice {slice} is out of range ({depth} slices)",
            case.display()
        );
    }
    let window = volume::Intensity::default();
    let (x, y) = volume::stack_sample(
        loaded.imaging.data.view(),
        labels.data.view(),
        slice,
        neighbours,
        &window,
    )?;
    let (_, h, w) = x.dim();
    let out_size = match size.as_deref() {
        Some([oh, ow]) => (*oh, *ow),
        _ => (h, w),
    };
    let cfg = AugmentConfig {
        out_size: Some(out_size),
        ..AugmentConfig::default()
    };
    let mut tiles = vec![apply(
        &AugmentParams {
            out_size,
            ..AugmentParams::identity((h, w), cfg.pad, cfg.fill)
        },
        x.view(),
        y.view(),
    )?];
    for i in 0..n {
        let mut rng = volume::sample_rng(seed, 0, i as u64);
        let p = cfg.sample((h, w), &mut rng)?;
        tiles.push(apply(&p, x.view(), y.view())?);
    }
    let cols = (tiles.len() as f64).sqrt().ceil() as usize;
    // Grey levels span the window: air (fill) black, its top white.
    let (lo, hi) = (window.apply(window.hu_min), window.apply(window.hu_max));
    let images: Vec<image::RgbImage> = tiles
        .iter()
        .map(|(xi, yi)| {
            let mid = xi.index_axis(ndarray::Axis(0), xi.dim().0 / 2);
            kseg::train::plots::overlay_rgb(mid, yi.view(), (lo, hi))
        })
        .collect();
    let (th, tw) = out_size;
    kseg::train::plots::write_png(out, &kseg::train::plots::grid(&images, cols))?;
    eprintln!(
        "wrote {} ({} samples of {th}x{tw} + the original)",
        out.display(),
        n
    );
    Ok(())
}

fn predict(
    checkpoint: &Path,
    input: &Path,
    output: &Path,
    lcc: Option<usize>,
    mirror: Option<bool>,
    device: &str,
    batch: usize,
) -> Result<()> {
    use kseg::train::{Segmenter, device as pick_device};
    let dev = pick_device(device)?;
    let mut seg = Segmenter::load(checkpoint, &dev, batch)?;
    if let Some(n) = lcc {
        seg.set_keep_largest((n > 0).then_some(n));
    }
    if let Some(m) = mirror {
        seg.set_mirror(m);
    }
    let keep = seg.meta().keep_largest;
    // (imaging file, output file) pairs.
    let jobs: Vec<(PathBuf, PathBuf)> = if input.is_dir()
        && !input.join(volume::case::IMAGING).exists()
        && !input.join("imaging.nii").exists()
    {
        let cases = volume::list_cases(input)?;
        std::fs::create_dir_all(output)
            .with_context(|| format!("{}: cannot create the output folder", output.display()))?;
        cases
            .into_iter()
            .map(|c| (c.imaging, output.join(format!("{}.nii.gz", c.id))))
            .collect()
    } else if input.is_dir() {
        vec![(CaseDir::open(input)?.imaging, output.to_path_buf())]
    } else {
        vec![(input.to_path_buf(), output.to_path_buf())]
    };
    for (src, dst) in &jobs {
        let t0 = std::time::Instant::now();
        let vol = volume::read_volume(src)?;
        let labels = seg.segment_volume(vol.data.view())?;
        volume::write_volume(dst, labels.view(), &vol.header)?;
        let count = |v: u8| labels.iter().filter(|&&x| x == v).count();
        eprintln!(
            "{} -> {}: {:?} voxels, kidney {}, tumour {}{} ({:.1} s)",
            src.display(),
            dst.display(),
            vol.shape(),
            count(1),
            count(2),
            keep.map(|n| format!(", {n} largest components kept"))
                .unwrap_or_default(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The prediction files in `pred`, by case id, in id order.
fn find_predictions(pred: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut found = BTreeMap::new();
    let entries = std::fs::read_dir(pred)
        .with_context(|| format!("{}: cannot list predictions", pred.display()))?;
    for e in entries {
        let path = e
            .with_context(|| format!("{}: cannot list predictions", pred.display()))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with("case_") {
            continue;
        }
        let hit = if path.is_dir() {
            [
                "prediction.nii.gz",
                "segmentation.nii.gz",
                "prediction.nii",
                "segmentation.nii",
            ]
            .iter()
            .map(|f| path.join(f))
            .find(|p| p.is_file())
            .map(|p| (name.clone(), p))
        } else {
            [".nii.gz", ".nii"]
                .iter()
                .find_map(|ext| name.strip_suffix(ext))
                .map(|id| (id.to_string(), path.clone()))
        };
        if let Some((id, p)) = hit {
            if let Some(prev) = found.insert(id.clone(), p.clone()) {
                bail!(
                    "{}: two predictions for {id}: {} and {}",
                    pred.display(),
                    prev.display(),
                    p.display()
                );
            }
        }
    }
    if found.is_empty() {
        bail!(
            "{}: no predictions (case_XXXXX.nii.gz or case_XXXXX/prediction.nii.gz) found",
            pred.display()
        );
    }
    Ok(found.into_iter().collect())
}

fn evaluate(pred: &Path, truth: &Path, out: Option<&Path>) -> Result<()> {
    use kseg::loss::DiceAccumulator;
    let mut acc = DiceAccumulator::new();
    for (id, pred_path) in find_predictions(pred)? {
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
        kseg::train::write_atomic(out, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}
