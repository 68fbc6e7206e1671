//! `kseg export`: one file holding a model or an ensemble of folds, with
//! the preprocessing, clean-up, label set, provenance, licence and a
//! checksum (`kseg_infer::bundle`).

use std::path::PathBuf;

use anyhow::Result;

/// The arguments of `kseg export` (see `kseg export --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// A model.safetensors or its checkpoint folder; repeat it for every
    /// fold of an ensemble.
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// The bundle to write (e.g. model.kseg).
    #[arg(long, required_unless_present = "onnx")]
    pub out: Option<PathBuf>,
    /// Also (or only) write each checkpoint as an ONNX graph (opset 17,
    /// dynamic batch and in-plane size, logits out; the preprocessing and
    /// decoding in its metadata): this file for one checkpoint, NAME.foldK.onnx
    /// for each of several.
    #[arg(long, value_name = "FILE.onnx")]
    pub onnx: Option<PathBuf>,
    /// The licence the weights are given under (recorded in the file).
    #[arg(long, default_value = "unspecified")]
    pub licence: String,
}

impl ExportArgs {
    /// Writes the bundle and says what is in it.
    pub fn run(&self) -> Result<()> {
        // The sources are inputs: no output replaces one (under any name or
        // link; everything is written through the one writer).
        for c in &self.checkpoint {
            kseg_volume::fs::protect(&kseg_infer::model_file(c), "checkpoint");
        }
        let onnx: Vec<(PathBuf, PathBuf)> = match &self.onnx {
            None => Vec::new(),
            Some(o) if self.checkpoint.len() == 1 => vec![(self.checkpoint[0].clone(), o.clone())],
            Some(o) => self
                .checkpoint
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    let stem = o.file_stem().map(|s| s.to_os_string()).unwrap_or_default();
                    let mut name = stem;
                    name.push(format!(".fold{k}.onnx"));
                    (c.clone(), o.with_file_name(name))
                })
                .collect(),
        };
        for path in self.out.iter().chain(onnx.iter().map(|(_, o)| o)) {
            kseg_volume::fs::check_not_input(path)?;
        }
        if let Some(out) = &self.out {
            let meta = kseg_infer::bundle::write_bundle(&self.checkpoint, out, &self.licence)?;
            eprintln!(
                "{}: {} fold(s), label set {}, sha256 {}",
                out.display(),
                meta.folds.len(),
                meta.folds[0].labels.name(),
                &meta.sha256[..16]
            );
        }
        for (c, o) in &onnx {
            let s = kseg_infer::onnx::export_onnx(c, o)?;
            eprintln!(
                "{}: ONNX opset {}, {} nodes, {} weight tensors",
                o.display(),
                kseg_infer::onnx::OPSET,
                s.nodes,
                s.initializers
            );
        }
        Ok(())
    }
}
