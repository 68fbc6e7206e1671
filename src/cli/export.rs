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
    #[arg(long)]
    pub out: PathBuf,
    /// The licence the weights are given under (recorded in the file).
    #[arg(long, default_value = "unspecified")]
    pub licence: String,
}

impl ExportArgs {
    /// Writes the bundle and says what is in it.
    pub fn run(&self) -> Result<()> {
        // The sources are inputs: the bundle never replaces one (under any
        // name or link; `write_bundle` writes through the one writer).
        for c in &self.checkpoint {
            kseg_volume::fs::protect(&kseg_infer::model_file(c), "checkpoint");
        }
        kseg_volume::fs::check_not_input(&self.out)?;
        let meta = kseg_infer::bundle::write_bundle(&self.checkpoint, &self.out, &self.licence)?;
        eprintln!(
            "{}: {} fold(s), label set {}, sha256 {}",
            self.out.display(),
            meta.folds.len(),
            meta.folds[0].labels.name(),
            &meta.sha256[..16]
        );
        Ok(())
    }
}
