//! `kseg info`: one JSON object describing a NIfTI file or a case folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kseg_volume::{self as volume, CaseDir};
use serde_json::{Value, json};

/// The arguments of `kseg info` (see `kseg info --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct InfoArgs {
    /// A .nii, .nii.gz, .hdr or .img file, a case folder, or a folder of
    /// DICOM files (searched recursively).
    pub path: PathBuf,
    /// Also count the voxels of each value (for label files).
    #[arg(long)]
    pub labels: bool,
    /// The DICOM series to describe when a folder holds several CT series.
    #[arg(long, value_name = "UID")]
    pub series: Option<String>,
}

impl InfoArgs {
    /// Prints the JSON object.
    pub fn run(&self) -> Result<()> {
        let is_case = volume::case::is_case_folder(&self.path);
        let v = if self.path.is_dir() && !is_case {
            dicom_info(&self.path, self.series.as_deref())?
        } else if self.path.is_dir() {
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
        "inf_count": st.inf_count,
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

/// The series of a DICOM folder, and the volume of its CT series (or of
/// `series`) when one is chosen: shape `[slice, row, column]`, spacing,
/// affine (RAS), axis codes and HU statistics.
fn dicom_info(dir: &Path, series: Option<&str>) -> Result<Value> {
    let all = volume::dicom::list_series(dir).map_err(|e| super::not_an_input(dir, e))?;
    let listing: Vec<Value> = all
        .iter()
        .map(|s| {
            json!({
                "uid": s.uid,
                "description": s.description,
                "modality": s.modality,
                "files": s.files.len(),
            })
        })
        .collect();
    let mut out = json!({ "folder": dir.display().to_string(), "series": listing });
    let ct = all.iter().filter(|s| s.modality == "CT").count();
    if series.is_some() || ct == 1 {
        let v = volume::dicom::read_dicom_dir(dir, series)?;
        let o = volume::orient::Orientation::from_affine(&v.header.affine());
        let n = v.data.len() as f64;
        let (min, max, sum) = v
            .data
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY, 0.0), |(a, b, s), &x| {
                (a.min(f64::from(x)), b.max(f64::from(x)), s + f64::from(x))
            });
        out["volume"] = json!({
            "shape": v.header.shape(),
            "spacing_mm": v.header.spacing(),
            "affine": v.header.affine(),
            "axis_codes": o.codes().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "slice_axis": o.slice_axis(),
            "oblique": o.is_oblique(),
            "min": min,
            "max": max,
            "mean": sum / n,
        });
    }
    Ok(out)
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
        case.load(volume::LabelSet::Kits23)
            .with_context(|| format!("checking case {}", dir.display()))?;
        out["segmentation"] = image_json(seg, true)?;
    }
    Ok(out)
}
