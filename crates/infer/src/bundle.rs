//! The single-file model (`kseg export`, `kseg predict --model`): one
//! safetensors file holding every fold's weights (`fold{i}.{name}`, f32)
//! and, under the metadata key [`BUNDLE_KEY`], a JSON [`BundleMeta`]: each
//! fold's [`ModelMeta`] (network, preprocessing, clean-up, label set), the
//! kseg version, provenance (each source file's SHA-256, the run's
//! configuration and validation scores when its run folder is beside it),
//! a licence, and the SHA-256 of every tensor's name and bytes, which
//! [`read_bundle`] checks before anything is built. A truncated or altered
//! file is refused, never half-used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{InferError, Result};
use crate::model_file::{ModelMeta, model_file, read_meta};

/// The safetensors metadata key of a bundle's [`BundleMeta`].
pub const BUNDLE_KEY: &str = "kseg_bundle";
/// The bundle format this build reads and writes.
pub const BUNDLE_FORMAT: u32 = 1;

/// Where one fold came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The model file it was exported from.
    pub source: String,
    /// That file's SHA-256.
    pub sha256: String,
    /// The run's `config.json`, when the model sits in a run folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// The run's validation scores (`summary.json`), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<serde_json::Value>,
}

/// A bundle's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleMeta {
    /// [`BUNDLE_FORMAT`].
    pub format: u32,
    /// The kseg version that wrote it.
    pub kseg_version: String,
    /// Each fold's metadata, in fold order.
    pub folds: Vec<ModelMeta>,
    /// Each fold's provenance.
    pub provenance: Vec<Provenance>,
    /// The licence the weights are given under.
    pub licence: String,
    /// SHA-256 over this metadata (every field but this one, as compact
    /// JSON) and every tensor (sorted by name: name, a 0 byte, shape as
    /// little-endian u64s, the f32 bytes): any edit to the weights, the
    /// preprocessing, the clean-up or the provenance is refused on load.
    pub sha256: String,
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| InferError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| InferError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(h.finalize()))
}

/// The bundle's checksum (see [`BundleMeta::sha256`]) of `meta` (its own
/// `sha256` left out) and the tensors.
fn bundle_sha256<'a>(
    meta: &BundleMeta,
    tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>,
) -> String {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    let unsummed = BundleMeta {
        sha256: String::new(),
        ..meta.clone()
    };
    h.update(serde_json::to_string(&unsummed).expect("bundle metadata serialises"));
    h.update([0u8]);
    for (name, shape, data) in sorted {
        h.update(name.as_bytes());
        h.update([0u8]);
        for &d in shape {
            h.update((d as u64).to_le_bytes());
        }
        h.update(data);
    }
    hex(h.finalize())
}

/// A JSON file beside a model in its run folder (`run/checkpoints/X/`).
fn run_json(model: &Path, name: &str) -> Option<serde_json::Value> {
    let run = model.parent()?.parent()?.parent()?;
    let text = std::fs::read_to_string(run.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the bundle of the model files (or checkpoint folders)
/// `checkpoints` to `out` (atomically). Models that could not be averaged
/// (see [`crate::Segmenter::load_ensemble`]) are refused.
pub fn write_bundle(checkpoints: &[PathBuf], out: &Path, licence: &str) -> Result<BundleMeta> {
    if checkpoints.is_empty() {
        return Err(InferError::Other(
            "a bundle needs at least one checkpoint".into(),
        ));
    }
    let mut folds = Vec::new();
    let mut provenance = Vec::new();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, c) in checkpoints.iter().enumerate() {
        let path = model_file(c);
        let meta = read_meta(&path)?;
        if let Some(first) = folds.first()
            && let Some(what) = crate::segmenter::disagreement(first, &meta)
        {
            return Err(InferError::checkpoint(
                &path,
                format!(
                    "cannot join a bundle with {}: {what}",
                    model_file(&checkpoints[0]).display()
                ),
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| InferError::io(&path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| InferError::checkpoint(&path, format!("truncated or damaged ({e:?})")))?;
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(InferError::checkpoint(
                    &path,
                    format!("tensor {name} is {:?}, not f32", view.dtype()),
                ));
            }
            owned.push((
                format!("fold{i}.{name}"),
                view.shape().to_vec(),
                view.data().to_vec(),
            ));
        }
        provenance.push(Provenance {
            source: path.display().to_string(),
            sha256: sha256_file(&path)?,
            config: run_json(&path, "config.json"),
            validation: run_json(&path, "summary.json").map(|s| {
                let keep = ["kidney_dice", "tumour_dice", "composite", "steps"];
                serde_json::Value::Object(
                    keep.iter()
                        .filter_map(|k| s.get(*k).map(|v| ((*k).to_string(), v.clone())))
                        .collect(),
                )
            }),
        });
        folds.push(meta);
    }
    let mut meta = BundleMeta {
        format: BUNDLE_FORMAT,
        kseg_version: env!("CARGO_PKG_VERSION").to_string(),
        folds,
        provenance,
        licence: licence.to_string(),
        sha256: String::new(),
    };
    meta.sha256 = bundle_sha256(
        &meta,
        owned
            .iter()
            .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
    );
    let views = owned
        .iter()
        .map(|(n, s, d)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| InferError::checkpoint(out, e.to_string()))?;
    let json = serde_json::to_string(&meta).expect("bundle metadata serialises");
    let info = HashMap::from([(BUNDLE_KEY.to_string(), json)]);
    let bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| InferError::checkpoint(out, e.to_string()))?;
    kseg_volume::fs::write_bytes_atomic(out, &bytes)?;
    Ok(meta)
}

/// Reads and checks a bundle: the safetensors file whole, its metadata
/// (format, every fold's metadata validated, one tensor set per fold) and
/// the checksum of its tensors. Returns the metadata and the file's bytes.
pub fn read_bundle(path: &Path) -> Result<(BundleMeta, Vec<u8>)> {
    let md = std::fs::metadata(path).map_err(|e| InferError::io(path, e))?;
    if !md.is_file() {
        return Err(InferError::checkpoint(
            path,
            "not a file (a model bundle is one file)",
        ));
    }
    kseg_volume::limits::check_bytes("a model bundle", Some(u128::from(md.len())))
        .map_err(|e| InferError::checkpoint(path, e.to_string()))?;
    let bytes = std::fs::read(path).map_err(|e| InferError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        InferError::checkpoint(
            path,
            format!("truncated, damaged or not a kseg model bundle ({e:?})"),
        )
    })?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| InferError::checkpoint(path, format!("damaged header ({e:?})")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(BUNDLE_KEY))
        .ok_or_else(|| {
            InferError::checkpoint(
                path,
                "no kseg bundle metadata (a model file? use --checkpoint)",
            )
        })?;
    let meta: BundleMeta = serde_json::from_str(json)
        .map_err(|e| InferError::checkpoint(path, format!("bad bundle metadata: {e}")))?;
    if meta.format != BUNDLE_FORMAT {
        return Err(InferError::checkpoint(
            path,
            format!(
                "bundle format {} is not supported by this kseg (it reads {BUNDLE_FORMAT})",
                meta.format
            ),
        ));
    }
    if meta.folds.is_empty() || meta.provenance.len() != meta.folds.len() {
        return Err(InferError::checkpoint(path, "a bundle without folds"));
    }
    for (i, f) in meta.folds.iter().enumerate() {
        f.validate()
            .map_err(|e| InferError::checkpoint(path, format!("fold {i}: {e}")))?;
        if let Some(what) = crate::segmenter::disagreement(&meta.folds[0], f) {
            return Err(InferError::checkpoint(path, format!("fold {i}: {what}")));
        }
    }
    let tensors = st.tensors();
    let sum = bundle_sha256(
        &meta,
        tensors
            .iter()
            .map(|(n, v)| (n.as_str(), v.shape(), v.data())),
    );
    if sum != meta.sha256 {
        return Err(InferError::checkpoint(
            path,
            "checksum mismatch: the weights or the metadata were altered or damaged",
        ));
    }
    // Weights that would predict nonsense (as a model file's are checked).
    for (name, view) in &tensors {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(InferError::checkpoint(
                path,
                format!("tensor {name} is {:?}, not f32", view.dtype()),
            ));
        }
        let bad = |v: f32| !v.is_finite() || (name.ends_with("running_var") && v < 0.0);
        if let Some(i) = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .position(bad)
        {
            return Err(InferError::checkpoint(
                path,
                format!(
                    "tensor {name} holds a non-finite value (or a negative running variance) at index {i}"
                ),
            ));
        }
    }
    for (name, _) in &tensors {
        let fold = name
            .strip_prefix("fold")
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, _)| i.parse::<usize>().ok());
        if fold.is_none_or(|i| i >= meta.folds.len()) {
            return Err(InferError::checkpoint(
                path,
                format!("tensor {name} belongs to no fold"),
            ));
        }
    }
    Ok((meta, bytes))
}
