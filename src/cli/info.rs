//! `kseg info`: one JSON object describing a NIfTI file or a case folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kseg_volume::{self as volume, CaseDir};
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

/// The JSON of one file: header facts and voxel statistics (one parallel
/// pass over the stored voxels, `kseg_volume::stats`).
fn image_json(path: &Path, labels: bool) -> Result<Value> {
    let (h, st) = volume::stats::read_stats(path, labels)?;
    let o = volume::orient::Orientation::from_affine(&h.affine());
    let num = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => json!(v),
        _ => Value::Null,
    };
    let mut out = json!({
        "file": path.display().to_string(),
        "shape": h.shape(),
        "dtype": h.dtype().name(),
        "spacing_mm": h.spacing(),
        "affine": h.affine(),
        "axis_codes": o.codes().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "slice_axis": o.slice_axis(),
        "oblique": o.is_oblique(),
        "min": num(st.min),
        "max": num(st.max),
        "mean": num(st.mean),
        "nan_count": st.nan_count,
    });
    if let Some(counts) = st.label_counts {
        let counts: serde_json::Map<String, Value> = counts
            .into_iter()
            .map(|(k, c)| (k.to_string(), json!(c)))
            .collect();
        out["label_counts"] = Value::Object(counts);
    }
    Ok(out)
}

fn file_info(path: &Path, labels: bool) -> Result<Value> {
    image_json(path, labels)
}

fn case_info(dir: &Path) -> Result<Value> {
    let case = CaseDir::open(dir)?;
    let mut out = json!({
        "case": case.id,
        "imaging": image_json(&case.imaging, false)?,
    });
    if let Some(seg) = &case.segmentation {
        // Checks values (KiTS19's 0..=2 or KiTS23's 3, cyst) and shape
        // agreement with the imaging.
        case.load_with(volume::LabelSet::Kits23)
            .with_context(|| format!("checking case {}", dir.display()))?;
        out["segmentation"] = image_json(seg, true)?;
    }
    Ok(out)
}
