//! `kseg info`: one JSON object describing a NIfTI file or a case folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kseg_volume::{self as volume, CaseDir, NiftiImage};
use serde_json::{Value, json};

/// The arguments of `kseg info` (see `kseg info --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct InfoArgs {
    /// A .nii, .nii.gz, .hdr or .img file, or a case folder.
    pub path: PathBuf,
    /// Also count the voxels of each value (for label files).
    #[arg(long)]
    pub labels: bool,
}

impl InfoArgs {
    /// Prints the JSON object.
    pub fn run(&self) -> Result<()> {
        let v = if self.path.is_dir() {
            case_info(&self.path)?
        } else {
            file_info(&self.path, self.labels)?
        };
        super::print_line(&serde_json::to_string_pretty(&v)?)?;
        Ok(())
    }
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
