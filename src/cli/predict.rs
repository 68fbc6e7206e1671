//! `kseg predict`: whole-volume segmentation with a trained checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kseg_infer::{Segmenter, device as pick_device};
use kseg_volume::orient::Orientation;
use kseg_volume::{self as volume, CaseDir, Volume};

/// The arguments of `kseg predict` (see `kseg predict --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct PredictArgs {
    /// A model.safetensors or its checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An imaging file (NIfTI, in any orientation), a case folder, a
    /// folder of case folders, or a folder of DICOM files (searched
    /// recursively; its CT series, or the one --series names).
    #[arg(long)]
    pub input: PathBuf,
    /// The SeriesInstanceUID to segment when a DICOM folder holds more
    /// than one CT series.
    #[arg(long, value_name = "UID")]
    pub series: Option<String>,
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
            self.series.as_deref(),
            &self.output,
            self.lcc,
            self.mirror,
            &self.device,
            self.batch,
        )
    }
}

/// Marks a case's imaging and ground truth as inputs: no output of this
/// process may replace them (`kseg_volume::fs::protect`).
fn protect_case(case: &CaseDir) {
    volume::fs::protect(&case.imaging, "input image");
    if let Some(truth) = &case.segmentation {
        volume::fs::protect(truth, "ground truth");
    }
}

/// What a prediction reads: a NIfTI file or a folder of DICOM files.
enum Source {
    Nifti(PathBuf),
    Dicom(PathBuf),
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Nifti(p) | Source::Dicom(p) => p,
        }
    }

    /// The volume in the internal layout and the orientation it came from.
    fn read(&self, series: Option<&str>) -> Result<(Volume<f32>, Orientation)> {
        Ok(match self {
            Source::Nifti(p) => volume::read_volume_canonical(p)?,
            Source::Dicom(dir) => {
                let mut v = volume::dicom::read_dicom_dir(dir, series)
                    .map_err(|e| super::not_an_input(dir, e))?;
                let o = Orientation::from_affine(&v.header.affine());
                v.data = o.into_internal(std::mem::take(&mut v.data));
                (v, o)
            }
        })
    }
}

/// Whether `dir` holds case folders (`case_*`).
fn has_cases(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("case_") && e.path().is_dir())
    })
}

/// The (input, output file) pairs of a prediction, every output checked
/// before any work: a NIfTI name, not a folder, not an input image or a
/// ground truth (they are protected for the rest of the process), no two
/// alike; and whether `output` is a folder of predictions.
fn jobs(input: &Path, output: &Path) -> Result<(Vec<(Source, PathBuf)>, bool)> {
    let case_folder = volume::case::is_case_folder(input);
    let folder_of_cases = input.is_dir() && !case_folder && has_cases(input);
    let jobs: Vec<(Source, PathBuf)> = if folder_of_cases {
        if output.exists() && !output.is_dir() {
            anyhow::bail!(
                "{}: exists and is not a folder (a folder of cases is predicted into a folder)",
                output.display()
            );
        }
        let cases = volume::list_cases(input)?;
        cases.iter().for_each(protect_case);
        cases
            .into_iter()
            .map(|c| {
                // The folder's own name, bytes and all: two names that are
                // not UTF-8 must not become one output.
                let mut name = c
                    .dir
                    .file_name()
                    .map_or_else(|| c.id.clone().into(), |n| n.to_os_string());
                name.push(".nii.gz");
                (Source::Nifti(c.imaging), output.join(name))
            })
            .collect()
    } else if case_folder {
        let case = CaseDir::open(input)?;
        protect_case(&case);
        vec![(Source::Nifti(case.imaging), output.to_path_buf())]
    } else if input.is_dir() {
        vec![(Source::Dicom(input.to_path_buf()), output.to_path_buf())]
    } else {
        volume::fs::protect(input, "input image");
        // The imaging file of a case folder: its ground truth is an input
        // too.
        if let Some(dir) = input.parent()
            && volume::case::is_case_folder(dir)
            && let Ok(case) = CaseDir::open(dir)
        {
            protect_case(&case);
        }
        vec![(Source::Nifti(input.to_path_buf()), output.to_path_buf())]
    };
    let mut seen = std::collections::HashSet::new();
    for (src, dst) in &jobs {
        if !seen.insert(dst) {
            anyhow::bail!(
                "{}: two inputs would be predicted to this one file (the second is {})",
                dst.display(),
                src.path().display()
            );
        }
        volume::fs::check_not_input(dst)?;
        if !folder_of_cases {
            volume::check_output_path(dst)?;
        }
    }
    Ok((jobs, folder_of_cases))
}

#[allow(clippy::too_many_arguments)]
fn predict(
    checkpoint: &Path,
    input: &Path,
    series: Option<&str>,
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
        let (vol, o) = src.read(series)?;
        let src = src.path();
        if o.is_oblique() {
            eprintln!(
                "{}: oblique affine; segmenting along its nearest axes {:?}",
                src.display(),
                o.codes()
            );
        }
        let sp = o.internal_order({
            let s = vol.header.spacing();
            let get = |i: usize| s.get(i).map_or(1.0, |v| v.abs());
            [get(0), get(1), get(2)]
        });
        let labels = seg.segment_volume_at(vol.data.view(), Some((sp[1], sp[2])))?;
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
