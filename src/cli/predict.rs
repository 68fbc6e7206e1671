//! `kseg predict`: whole-volume segmentation with a trained checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kseg_train::{Segmenter, device as pick_device};
use kseg_volume::{self as volume, CaseDir};

/// The arguments of `kseg predict` (see `kseg predict --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct PredictArgs {
    /// A model.safetensors or its checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An imaging file, a case folder or a folder of case folders.
    #[arg(long)]
    pub input: PathBuf,
    /// The label file to write, or a folder for a folder of cases.
    #[arg(long)]
    pub output: PathBuf,
    /// Keep only the N largest connected foreground components (2 for
    /// two kidneys); 0 turns it off. Default: what the checkpoint's
    /// training validated with (`postprocess.keep_largest`, off unless
    /// set).
    #[arg(long, value_name = "N")]
    pub lcc: Option<usize>,
    /// Mirroring test-time augmentation (true/false): average each
    /// slice's class probabilities with its mirror image's, at twice
    /// the cost. Default: what the checkpoint's training validated
    /// with (`postprocess.mirror`).
    #[arg(long, value_name = "BOOL")]
    pub mirror: Option<bool>,
    /// cpu, cuda, cuda:N, metal or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Slices per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

impl PredictArgs {
    /// Segments every input and writes the label volumes.
    pub fn run(&self) -> Result<()> {
        predict(
            &self.checkpoint,
            &self.input,
            &self.output,
            self.lcc,
            self.mirror,
            &self.device,
            self.batch,
        )
    }
}

/// Whether `a` and `b` name the same existing file (hard links and
/// symbolic links included).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The (imaging file, output file) pairs of a prediction, every output
/// checked before any work: a NIfTI name, not a folder, not an input; and
/// whether `output` is a folder of predictions.
fn jobs(input: &Path, output: &Path) -> Result<(Vec<(PathBuf, PathBuf)>, bool)> {
    let folder_of_cases = input.is_dir()
        && !input.join(volume::case::IMAGING).exists()
        && !input.join("imaging.nii").exists();
    let jobs: Vec<(PathBuf, PathBuf)> = if folder_of_cases {
        if output.exists() && !output.is_dir() {
            anyhow::bail!(
                "{}: exists and is not a folder (a folder of cases is predicted into a folder)",
                output.display()
            );
        }
        volume::list_cases(input)?
            .into_iter()
            .map(|c| (c.imaging, output.join(format!("{}.nii.gz", c.id))))
            .collect()
    } else if input.is_dir() {
        vec![(CaseDir::open(input)?.imaging, output.to_path_buf())]
    } else {
        vec![(input.to_path_buf(), output.to_path_buf())]
    };
    for (src, dst) in &jobs {
        if same_file(src, dst) {
            anyhow::bail!(
                "{}: the output is the input image {}; choose another --output",
                dst.display(),
                src.display()
            );
        }
        if !folder_of_cases {
            volume::check_output_path(dst)?;
        }
    }
    Ok((jobs, folder_of_cases))
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
    let (jobs, into_folder) = jobs(input, output)?;
    let dev = pick_device(device)?;
    let mut seg = Segmenter::load(checkpoint, &dev, batch)?;
    if let Some(n) = lcc {
        seg.set_keep_largest((n > 0).then_some(n));
    }
    if let Some(m) = mirror {
        seg.set_mirror(m);
    }
    let keep = seg.meta().keep_largest;
    if into_folder {
        std::fs::create_dir_all(output)
            .with_context(|| format!("{}: cannot create the output folder", output.display()))?;
    }
    for (src, dst) in &jobs {
        let t0 = std::time::Instant::now();
        // Read into the internal layout (KiTS19's orientation), segmented
        // there, written back voxel for voxel in the input's.
        let (vol, o) = volume::read_volume_internal(src)?;
        if o.is_oblique() {
            eprintln!(
                "{}: oblique affine; segmenting along its nearest axes {:?}",
                src.display(),
                o.codes()
            );
        }
        let labels = seg.segment_volume(vol.data.view())?;
        let labels = o.into_file(labels);
        volume::write_volume(dst, labels.view(), &vol.header)?;
        let names = seg.meta().labels.names();
        let counts: Vec<String> = (1..names.len())
            .map(|v| {
                let n = labels.iter().filter(|&&x| x as usize == v).count();
                format!("{} {n}", names[v])
            })
            .collect();
        eprintln!(
            "{} -> {}: {:?} voxels, {}{} ({:.1} s)",
            src.display(),
            dst.display(),
            vol.header.shape(),
            counts.join(", "),
            keep.map(|n| format!(", {n} largest components kept"))
                .unwrap_or_default(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
