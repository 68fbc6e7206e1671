//! `kseg predict`: whole-volume segmentation with a trained checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kseg_infer::report::{LesionReport, ReportRules, Side, lesion_report};
use kseg_infer::{Segmenter, device as pick_device};
use kseg_volume::orient::Orientation;
use kseg_volume::{self as volume, CaseDir, Volume};

/// The arguments of `kseg predict` (see `kseg predict --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct PredictArgs {
    /// A model.safetensors or its checkpoint folder; repeat it for an
    /// ensemble (e.g. the folds of a cross-validation), whose class
    /// probabilities are averaged over the models (and mirrors) before
    /// decoding. Models that disagree on label set, regions, outputs,
    /// stack, window, in-plane or voxel size are refused.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub checkpoint: Vec<PathBuf>,
    /// A model bundle written by `kseg export` (one file: every fold,
    /// the preprocessing, clean-up and label set), checked whole before
    /// use.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// An imaging file (NIfTI, in any orientation), a case folder, a
    /// folder of case folders, or a folder of DICOM files (searched
    /// recursively; its CT series, or the one --series names).
    #[arg(long)]
    pub input: PathBuf,
    /// The SeriesInstanceUID to segment when a DICOM folder holds more
    /// than one CT series.
    #[arg(long, value_name = "UID")]
    pub series: Option<String>,
    /// The label file to write (NIfTI: .nii or .nii.gz), or a folder for
    /// a folder of cases. For a DICOM input, a name ending in .dcm writes
    /// a DICOM Segmentation of the source series instead (one segment per
    /// structure, frames referencing their CT slices).
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
    /// Slices per forward pass. Default: 2 on the CPU (its activations
    /// fit in cache-friendlier, half-as-large buffers and it is no slower;
    /// docs/PERFORMANCE.md), 8 on a GPU.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Write the lesion report (JSON: kidneys, tumours, cysts, quality
    /// flags, review; docs/METHOD.md §5c) to this file, or for a folder of
    /// cases into this folder (one CASE.json each and reports.csv). It
    /// measures the mirror agreement, which costs one more forward pass
    /// per slice without mirroring.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Also write the class probabilities the labels are decoded from
    /// (softmax, or the region sigmoids; averaged over mirrors and the
    /// models of an ensemble; before the clean-up) as a 4D float32 NIfTI
    /// (FILE.nii.gz: the input's geometry, the classes along the 4th axis).
    /// One volume only (not a folder of cases).
    #[arg(long, value_name = "FILE.nii.gz")]
    pub save_probabilities: Option<PathBuf>,
    /// Fast mode (opt-in): a coarse pass over every 8th slice
    /// (--fast-stride) finds the kidneys, then only the slab of slices around them, cropped in-plane
    /// to their box and a 120 mm margin (--fast-margin), is segmented at
    /// full resolution, growing a slice at a time until a slice has no
    /// foreground; the rest is background. What it costs in Dice and buys in time is
    /// in docs/PERFORMANCE.md. Not with --report or --save-probabilities
    /// (they need every slice whole).
    #[arg(long, conflicts_with_all = ["report", "save_probabilities"])]
    pub fast: bool,
    /// The fast mode's in-plane margin around the kidneys' box, in mm
    /// (default 120: at 60 a synthetic-cpu model lost 0.03 tumour Dice on
    /// held-out cases, at 30 another lost 0.03 kidney Dice; the network,
    /// trained on whole slices, needs the context: docs/PERFORMANCE.md).
    #[arg(long, value_name = "MM", requires = "fast")]
    pub fast_margin: Option<f64>,
    /// The fast mode's coarse pass segments every N-th slice (and the
    /// last; default 8). A larger N makes the coarse pass cheaper; a
    /// kidney shorter than N slices may be missed.
    #[arg(long, value_name = "N", requires = "fast")]
    pub fast_stride: Option<usize>,
    /// The fast mode's coarse pass sees slices N times smaller in each
    /// in-plane axis (default 1: full resolution; 2: a quarter of the work
    /// per slice, for models trained at 512², unmeasured there: on a
    /// synthetic-cpu model trained at 128² it found foreground everywhere
    /// and was slower than the full pass). A model of a fixed input size is
    /// always given its own.
    #[arg(long, value_name = "N", requires = "fast")]
    pub fast_shrink: Option<usize>,
    /// The arithmetic of the convolutions on the CPU: f32, int8 or bf16
    /// (both opt-in; int8: weights quantized per output channel, each
    /// slice's activations per layer, about twice as fast as f32 on a CPU
    /// with AVX-512 VNNI; bf16: the products' operands rounded to bf16,
    /// the sums in f32, 1.3 to 1.6 times as fast on 512² slices on a CPU
    /// with AVX512-BF16, no faster on small ones;
    /// each within a few thousandths of f32's Dice: docs/PERFORMANCE.md).
    /// Without those instructions they run the same arithmetic on a
    /// portable kernel, slower than f32, and say so. CPU only.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// Treat every entry of the --input folder as one case: each
    /// subfolder a DICOM study or a case folder, each NIfTI file a
    /// volume; predicted into the --output folder. (A folder of case_*
    /// folders is such a batch without it.) A batch loads the model once,
    /// reads the next case while one runs, reports each case's time and
    /// the time left, skips a case that fails (exit status 1 at the end),
    /// and writes summary.json and summary.csv into the output folder.
    #[arg(long)]
    pub folder: bool,
    /// The output format of a batch (--folder, or a folder of cases):
    /// nifti (CASE.nii.gz) or dicom-seg (CASE.dcm, DICOM studies only).
    #[arg(long, value_enum, default_value_t = Format::Nifti)]
    pub format: Format,
}

/// `--precision`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionArg {
    /// f32 throughout (the default).
    F32,
    /// int8 convolutions (the classifier stays f32).
    Int8,
    /// bf16 products, f32 sums (the classifier stays f32).
    Bf16,
}

impl PrecisionArg {
    /// The frozen network's precision.
    fn precision(self) -> kseg_model::Precision {
        match self {
            PrecisionArg::F32 => kseg_model::Precision::F32,
            PrecisionArg::Int8 => kseg_model::Precision::Int8,
            PrecisionArg::Bf16 => kseg_model::Precision::Bf16,
        }
    }
}

/// `kseg predict`'s slices per forward pass on the CPU.
pub const CPU_BATCH: usize = 2;
/// `kseg predict`'s slices per forward pass on a GPU.
pub const GPU_BATCH: usize = 8;

/// The output format of a batch.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// NIfTI label volumes (`CASE.nii.gz`).
    Nifti,
    /// DICOM Segmentations (`CASE.dcm`).
    DicomSeg,
}

impl PredictArgs {
    /// Segments every input and writes the label volumes.
    pub fn run(&self) -> Result<()> {
        predict(
            &self.checkpoint,
            self.model.as_deref(),
            &self.input,
            self.series.as_deref(),
            &self.output,
            self.lcc,
            self.mirror,
            &self.device,
            self.batch,
            self.report.as_deref(),
            self.folder,
            self.format,
            self.save_probabilities.as_deref(),
            self.precision,
            self.fast.then(|| {
                let d = kseg_infer::FastMode::default();
                kseg_infer::FastMode {
                    margin_mm: self.fast_margin.unwrap_or(d.margin_mm),
                    stride: self.fast_stride.unwrap_or(d.stride),
                    shrink: self.fast_shrink.unwrap_or(d.shrink),
                }
            }),
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

/// A folder's own name, bytes and all (no two folders share an output).
fn own_name(path: &Path) -> std::ffi::OsString {
    path.file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default()
}

/// The output name's extension of a batch's format.
fn format_ext(format: Format) -> &'static str {
    match format {
        Format::Nifti => ".nii.gz",
        Format::DicomSeg => ".dcm",
    }
}

/// The entries of a `--folder` batch: each subfolder (a case folder or a
/// DICOM study) and each NIfTI file, by name, with its output name.
fn folder_entries(
    input: &Path,
    output: &Path,
    report: Option<&Path>,
    format: Format,
) -> Result<Vec<(Source, PathBuf)>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(input)
        .with_context(|| format!("{}: cannot list the folder", input.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("{}: cannot list the folder", input.display()))?;
    entries.sort();
    let mut jobs = Vec::new();
    // The output folder (and a report folder) inside the input is no case.
    let not_cases: Vec<PathBuf> = [Some(output), report]
        .into_iter()
        .flatten()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.')
            || std::fs::canonicalize(&path).is_ok_and(|c| not_cases.contains(&c))
        {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        let (src, stem) = if path.is_dir() {
            if volume::case::is_case_folder(&path) {
                let case = CaseDir::open(&path)?;
                protect_case(&case);
                (Source::Nifti(case.imaging), own_name(&path))
            } else {
                (Source::Dicom(path.clone()), own_name(&path))
            }
        } else if lower.ends_with(".nii.gz") || lower.ends_with(".nii") {
            let stem = name[..name.len() - if lower.ends_with(".gz") { 7 } else { 4 }].to_string();
            volume::fs::protect(&path, "input image");
            // (A name that is not UTF-8 is shown lossily here: two such
            // names that become one output are refused below.)
            (Source::Nifti(path.clone()), stem.into())
        } else {
            continue;
        };
        let mut out_name: std::ffi::OsString = stem;
        out_name.push(format_ext(format));
        jobs.push((src, output.join(out_name)));
    }
    if jobs.is_empty() {
        anyhow::bail!(
            "{}: no case folder, DICOM study folder or NIfTI file to predict",
            input.display()
        );
    }
    Ok(jobs)
}

/// The (input, output file) pairs of a prediction, every output checked
/// before any work: a NIfTI name, not a folder, not an input image or a
/// ground truth (they are protected for the rest of the process), no two
/// alike; and whether `output` is a folder of predictions.
fn jobs(
    input: &Path,
    output: &Path,
    report: Option<&Path>,
    folder: bool,
    format: Format,
) -> Result<(Vec<(Source, PathBuf)>, bool)> {
    let case_folder = volume::case::is_case_folder(input);
    let folder_of_cases = input.is_dir() && !case_folder && has_cases(input);
    let into_folder = folder || folder_of_cases;
    if folder && !input.is_dir() {
        anyhow::bail!("{}: --folder takes a folder", input.display());
    }
    if into_folder && output.exists() && !output.is_dir() {
        anyhow::bail!(
            "{}: exists and is not a folder (a folder of cases is predicted into a folder)",
            output.display()
        );
    }
    let jobs: Vec<(Source, PathBuf)> = if folder {
        folder_entries(input, output, report, format)?
    } else if folder_of_cases {
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
                name.push(format_ext(format));
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
    // A DICOM input's files are inputs too: no output may replace one.
    for (src, _) in &jobs {
        if let Source::Dicom(dir) = src
            && let Ok(all) = volume::dicom::list_series(dir)
        {
            for f in all.iter().flat_map(|s| &s.files) {
                volume::fs::protect(f, "input image");
            }
        }
    }
    for (src, dst) in &jobs {
        if is_dicom_seg(dst) {
            if !seen.insert(dst) {
                anyhow::bail!(
                    "{}: two inputs would be predicted to this one file (the second is {})",
                    dst.display(),
                    src.path().display()
                );
            }
            volume::fs::check_not_input(dst)?;
            if !matches!(src, Source::Dicom(_)) {
                if into_folder {
                    // A batch reports it for that case and goes on.
                    continue;
                }
                anyhow::bail!(
                    "{}: a DICOM Segmentation references its source CT series, and {} is not a DICOM folder; write NIfTI (.nii.gz) for a NIfTI input",
                    dst.display(),
                    src.path().display()
                );
            }
            if dst.is_dir() {
                anyhow::bail!("{} is a folder; a file path is needed", dst.display());
            }
            let parent = dst
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !into_folder && !parent.is_dir() {
                anyhow::bail!(
                    "{}: no such folder (the output's folder must exist)",
                    parent.display()
                );
            }
            continue;
        }
        if !seen.insert(dst) {
            anyhow::bail!(
                "{}: two inputs would be predicted to this one file (the second is {})",
                dst.display(),
                src.path().display()
            );
        }
        volume::fs::check_not_input(dst)?;
        if !into_folder {
            volume::check_output_path(dst)?;
        }
    }
    Ok((jobs, into_folder))
}

/// What a prediction needs besides its input and output.
struct Ctx<'a> {
    seg: &'a Segmenter,
    save_probabilities: Option<&'a Path>,
    series: Option<&'a str>,
    model_hash: &'a str,
    reports: Option<&'a Reports>,
}

/// What one case gave.
struct Outcome {
    /// Voxels per label value (background first).
    counts: Vec<usize>,
    shape: Vec<usize>,
    segment_s: f64,
    write_s: f64,
    review: Option<bool>,
}

/// Segments one volume (read already) and writes its output and report.
fn predict_one(
    ctx: &Ctx,
    src: &Source,
    dst: &Path,
    (vol, o): (Volume<f32>, Orientation),
) -> Result<Outcome> {
    let seg = ctx.seg;
    let src_path = src.path();
    if is_dicom_seg(dst) && !matches!(src, Source::Dicom(_)) {
        anyhow::bail!(
            "{}: a DICOM Segmentation needs a DICOM input, and {} is not a DICOM folder",
            dst.display(),
            src_path.display()
        );
    }
    if o.is_oblique() {
        eprintln!(
            "{}: oblique affine; segmenting along its nearest axes {:?}",
            src_path.display(),
            o.codes()
        );
    }
    let t0 = std::time::Instant::now();
    let sp = o.internal_order({
        let s = vol.header.spacing();
        let get = |i: usize| s.get(i).map_or(1.0, |v| v.abs());
        [get(0), get(1), get(2)]
    });
    let mut probs = None;
    let (labels, quality) = if ctx.reports.is_some() {
        let (l, q) = seg.segment_volume_quality(vol.data.view(), Some((sp[1], sp[2])))?;
        if ctx.save_probabilities.is_some() {
            // The report's labels are the plain path's: the probabilities
            // of the same prediction.
            probs = Some(
                seg.segment_volume_probs(vol.data.view(), Some((sp[1], sp[2])))?
                    .1,
            );
        }
        (l, Some(q))
    } else if ctx.save_probabilities.is_some() {
        let (l, p) = seg.segment_volume_probs(vol.data.view(), Some((sp[1], sp[2])))?;
        probs = Some(p);
        (l, None)
    } else {
        (
            seg.segment_volume_at(vol.data.view(), Some((sp[1], sp[2])))?,
            None,
        )
    };
    let segment_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let labels = o.into_file(labels);
    if is_dicom_seg(dst) {
        let series_info = volume::dicom::choose_series(src_path, ctx.series)
            .map_err(|e| super::not_an_input(src_path, e))?;
        let algo = volume::dicom_seg::Algorithm {
            name: "kseg".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            model: ctx.model_hash.to_string(),
        };
        let segs = volume::dicom_seg::segments_for(seg.meta().labels);
        volume::dicom_seg::write_segmentation(dst, &series_info, labels.view(), &segs, &algo)?;
    } else {
        volume::write_volume(dst, labels.view(), &vol.header)?;
    }
    if let (Some(path), Some(p)) = (ctx.save_probabilities, probs) {
        // [C, slices, H, W] (internal layout) → [i, j, k, C] (the file's).
        let chans: Vec<ndarray::Array3<f32>> =
            p.outer_iter().map(|c| o.into_file(c.to_owned())).collect();
        let views: Vec<_> = chans
            .iter()
            .map(|c| c.view().insert_axis(ndarray::Axis(3)))
            .collect();
        let stacked = ndarray::concatenate(ndarray::Axis(3), &views)
            .context("stacking the class probabilities")?;
        volume::write_channels(path, stacked.view(), &vol.header)?;
    }
    let mut review = None;
    if let (Some(r), Some(q)) = (ctx.reports, quality) {
        let image = o.into_file(vol.data);
        let rep = lesion_report(
            labels.view(),
            &vol.header.affine(),
            seg.meta().labels,
            Some(image.view()),
            q,
            &ReportRules::default(),
        );
        r.write(src_path, dst, &rep)?;
        review = Some(rep.review.flag);
    }
    let mut counts = vec![0usize; seg.meta().labels.names().len()];
    for &v in labels.iter() {
        if let Some(c) = counts.get_mut(v as usize) {
            *c += 1;
        }
    }
    Ok(Outcome {
        counts,
        shape: vol.header.shape().to_vec(),
        segment_s,
        write_s: t1.elapsed().as_secs_f64(),
        review,
    })
}

/// "kidney 123, tumour 4" of an outcome.
fn counts_text(seg: &Segmenter, out: &Outcome) -> String {
    let names = seg.meta().labels.names();
    (1..names.len())
        .map(|v| format!("{} {}", names[v], out.counts[v]))
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(clippy::too_many_arguments)]
fn predict(
    checkpoints: &[PathBuf],
    bundle: Option<&Path>,
    input: &Path,
    series: Option<&str>,
    output: &Path,
    lcc: Option<usize>,
    mirror: Option<bool>,
    device: &str,
    batch: Option<usize>,
    report: Option<&Path>,
    folder: bool,
    format: Format,
    save_probabilities: Option<&Path>,
    precision: PrecisionArg,
    fast: Option<kseg_infer::FastMode>,
) -> Result<()> {
    let (jobs, into_folder) = jobs(input, output, report, folder, format)?;
    if let Some(p) = save_probabilities {
        if into_folder {
            anyhow::bail!(
                "{}: --save-probabilities takes one volume, not a folder of cases",
                p.display()
            );
        }
        volume::check_output_path(p)?;
        volume::fs::check_not_input(p)?;
        if jobs.iter().any(|(_, d)| d == p) {
            anyhow::bail!(
                "{}: the probabilities would overwrite the labels",
                p.display()
            );
        }
    }
    if let Some(r) = report {
        for (src, dst) in &jobs {
            if r == dst.as_path() {
                anyhow::bail!(
                    "{}: the report would overwrite the prediction of {}; choose another --report",
                    r.display(),
                    src.path().display()
                );
            }
        }
    }
    if let Some(r) = report
        && !into_folder
    {
        volume::fs::check_not_input(r)?;
    }
    let reports = report.map(|r| Reports::new(r, into_folder)).transpose()?;
    let dev = pick_device(device)?;
    let precision = precision.precision();
    if precision != kseg_model::Precision::F32 && !dev.is_cpu() {
        anyhow::bail!(
            "--precision {} runs on the CPU only: add --device cpu (the GPU path is f32)",
            precision.name()
        );
    }
    let batch = batch.unwrap_or(if dev.is_cpu() { CPU_BATCH } else { GPU_BATCH });
    let mut seg = match bundle {
        Some(b) => Segmenter::load_bundle(b, &dev, batch)?,
        None => Segmenter::load_ensemble(checkpoints, &dev, batch)?,
    };
    let model_hash = if let (Some(b), true) = (bundle, jobs.iter().any(|(_, d)| is_dicom_seg(d))) {
        kseg_infer::bundle::sha256_file(b)?
    } else if jobs.iter().any(|(_, d)| is_dicom_seg(d)) {
        checkpoints
            .iter()
            .map(|c| Ok(kseg_infer::bundle::sha256_file(&kseg_infer::model_file(c))?))
            .collect::<Result<Vec<_>>>()?
            .join("+")
    } else {
        String::new()
    };
    if precision != kseg_model::Precision::F32 {
        seg.set_precision(precision)?;
        let missing = match precision {
            kseg_model::Precision::Int8 => {
                (!kseg_model::int8_accelerated()).then_some("AVX-512 VNNI")
            }
            kseg_model::Precision::Bf16 => {
                (!kseg_model::bf16_accelerated()).then_some("AVX512-BF16")
            }
            kseg_model::Precision::F32 => None,
        };
        if let Some(missing) = missing {
            eprintln!(
                "note: this CPU lacks {missing}: --precision {} runs its portable kernel \
                 (the same arithmetic, slower than f32)",
                precision.name()
            );
        }
    }
    if let Some(n) = lcc {
        seg.set_keep_largest((n > 0).then_some(n));
    }
    if let Some(m) = mirror {
        seg.set_mirror(m);
    }
    if let Some(f) = fast {
        if !(f.margin_mm.is_finite() && f.margin_mm >= 0.0) {
            anyhow::bail!(
                "--fast-margin {}: a margin is a finite number of mm, 0 or more",
                f.margin_mm
            );
        }
        if f.stride == 0 {
            anyhow::bail!("--fast-stride 0: the coarse pass takes every N-th slice, N 1 or more");
        }
        if !(1..=16).contains(&f.shrink) {
            anyhow::bail!(
                "--fast-shrink {}: the coarse pass's slices are N times smaller, N from 1 to 16",
                f.shrink
            );
        }
        seg.set_fast(Some(f));
    }
    let keep = seg.meta().keep_largest;
    let kept = keep
        .map(|n| format!(", {n} largest components kept"))
        .unwrap_or_default();
    let ctx = Ctx {
        seg: &seg,
        save_probabilities,
        series,
        model_hash: &model_hash,
        reports: reports.as_ref(),
    };
    if !into_folder {
        for (src, dst) in &jobs {
            let t0 = std::time::Instant::now();
            // Read into the internal layout (KiTS19's orientation),
            // segmented there, written back voxel for voxel in the input's.
            let out = predict_one(&ctx, src, dst, src.read(series)?)?;
            eprintln!(
                "{} -> {}: {:?} voxels, {}{kept} ({:.1} s)",
                src.path().display(),
                dst.display(),
                out.shape,
                counts_text(&seg, &out),
                t0.elapsed().as_secs_f64()
            );
        }
        if let Some(r) = &reports {
            r.finish()?;
        }
        return Ok(());
    }
    std::fs::create_dir_all(output)
        .with_context(|| format!("{}: cannot create the output folder", output.display()))?;
    let n = jobs.len();
    let start = std::time::Instant::now();
    let mut rows: Vec<serde_json::Value> = Vec::with_capacity(n);
    let mut failed = 0usize;
    std::thread::scope(|scope| {
        // The reader: the next case is read while the current one runs (a
        // rendezvous channel: at most one case waits).
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        let jobs_ref = &jobs;
        scope.spawn(move || {
            for (i, (src, _)) in jobs_ref.iter().enumerate() {
                let t = std::time::Instant::now();
                let read = src.read(series);
                if tx.send((i, read, t.elapsed().as_secs_f64())).is_err() {
                    break;
                }
            }
        });
        for (i, read, read_s) in rx {
            let (src, dst) = &jobs[i];
            let name = src.path().display().to_string();
            let result = read.and_then(|v| predict_one(&ctx, src, dst, v));
            let done = i + 1;
            let elapsed = start.elapsed().as_secs_f64();
            let eta = elapsed / done as f64 * (n - done) as f64;
            let mut row = serde_json::json!({
                "input": name,
                "output": dst.display().to_string(),
                "read_s": read_s,
            });
            match result {
                Ok(out) => {
                    eprintln!(
                        "[{done}/{n}] {name} -> {}: {}{kept} (read {read_s:.1} s, segment {:.1} s, write {:.1} s; {:.0} s left)",
                        dst.display(),
                        counts_text(&seg, &out),
                        out.segment_s,
                        out.write_s,
                        eta
                    );
                    let names = seg.meta().labels.names();
                    row["status"] = "ok".into();
                    row["segment_s"] = out.segment_s.into();
                    row["write_s"] = out.write_s.into();
                    row["shape"] = serde_json::json!(out.shape);
                    row["voxels"] = names
                        .iter()
                        .zip(&out.counts)
                        .skip(1)
                        .map(|(k, v)| ((*k).to_string(), serde_json::json!(v)))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                    if let Some(r) = out.review {
                        row["review"] = r.into();
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("[{done}/{n}] {name}: failed: {e:#} ({eta:.0} s left)");
                    row["status"] = "failed".into();
                    row["error"] = format!("{e:#}").into();
                }
            }
            rows.push(row);
        }
    });
    if let Some(r) = &reports {
        r.finish()?;
    }
    write_summary(output, &rows, start.elapsed().as_secs_f64())?;
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {n} cases failed (each named above; {}/summary.json lists them)",
            output.display()
        );
    }
    eprintln!(
        "{n} cases in {:.1} s; {}/summary.json",
        start.elapsed().as_secs_f64(),
        output.display()
    );
    Ok(())
}

/// A batch's `summary.json` and `summary.csv` in `output`.
fn write_summary(output: &Path, rows: &[serde_json::Value], wall_s: f64) -> Result<()> {
    let ok = rows.iter().filter(|r| r["status"] == "ok").count();
    volume::fs::write_json_atomic(
        &output.join("summary.json"),
        &serde_json::json!({
            "cases": rows.len(),
            "succeeded": ok,
            "failed": rows.len() - ok,
            "wall_seconds": wall_s,
            "results": rows,
        }),
    )?;
    let mut csv =
        String::from("input,output,status,read_s,segment_s,write_s,voxels,review,error\n");
    for r in rows {
        let voxels = r["voxels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let num = |k: &str| r[k].as_f64().map(|v| format!("{v:.3}")).unwrap_or_default();
        let text = |k: &str| match &r[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            v => v.to_string(),
        };
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            csv_field(&text("input")),
            csv_field(&text("output")),
            text("status"),
            num("read_s"),
            num("segment_s"),
            num("write_s"),
            csv_field(&voxels),
            text("review"),
            csv_field(&text("error"))
        ));
    }
    volume::fs::write_bytes_atomic(&output.join("summary.csv"), csv.as_bytes())?;
    Ok(())
}

/// Whether `path` names a DICOM Segmentation output (`.dcm`).
fn is_dicom_seg(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("dcm"))
}

/// Where the lesion reports go: one file, or a folder of `CASE.json` and
/// `reports.csv`.
struct Reports {
    path: PathBuf,
    folder: bool,
    rows: std::cell::RefCell<Vec<String>>,
}

impl Reports {
    /// Checks the report's path before any work.
    fn new(path: &Path, folder: bool) -> Result<Reports> {
        if folder {
            if path.exists() && !path.is_dir() {
                anyhow::bail!(
                    "{}: exists and is not a folder (a folder of cases is reported into a folder)",
                    path.display()
                );
            }
            std::fs::create_dir_all(path)
                .with_context(|| format!("{}: cannot create the report folder", path.display()))?;
        } else if path.is_dir() {
            anyhow::bail!(
                "{}: is a folder; --report takes a file name for one volume",
                path.display()
            );
        }
        Ok(Reports {
            path: path.to_path_buf(),
            folder,
            rows: Default::default(),
        })
    }

    /// Writes one case's report (atomically) and keeps its table row.
    fn write(&self, src: &Path, dst: &Path, rep: &LesionReport) -> Result<()> {
        let file = if self.folder {
            // The output's own name, bytes and all (outputs are distinct),
            // without .nii.gz / .nii / .dcm.
            let mut stem = dst
                .file_stem()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            if Path::new(&stem).extension().is_some_and(|e| e == "nii") {
                stem = Path::new(&stem)
                    .file_stem()
                    .map(|n| n.to_os_string())
                    .unwrap_or_default();
            }
            stem.push(".json");
            self.path.join(stem)
        } else {
            self.path.clone()
        };
        let json = serde_json::json!({
            "input": src.display().to_string(),
            "output": dst.display().to_string(),
            "report": rep,
        });
        volume::fs::write_json_atomic(&file, &json)?;
        let (left, right) = [Side::Left, Side::Right]
            .map(|side| {
                rep.kidneys
                    .iter()
                    .filter(|k| k.side == side)
                    .map(|k| k.volume_ml)
                    .sum::<f64>()
            })
            .into();
        let largest = rep.tumours.first().map_or(0.0, |t| t.axial_diameter_mm);
        self.rows.borrow_mut().push(format!(
            "{},{},{:.3},{:.3},{},{:.3},{:.2},{},{}",
            csv_field(&src.display().to_string()),
            rep.kidneys.len(),
            left,
            right,
            rep.tumours.len(),
            rep.total_tumour_volume_ml,
            largest,
            rep.review.flag,
            csv_field(&rep.review.reasons.join("; "))
        ));
        eprintln!(
            "{}: report {}{}",
            src.display(),
            file.display(),
            if rep.review.flag {
                format!(" (review: {})", rep.review.reasons.join("; "))
            } else {
                String::new()
            }
        );
        Ok(())
    }

    /// For a folder: the table over every case.
    fn finish(&self) -> Result<()> {
        if !self.folder {
            return Ok(());
        }
        let mut csv = String::from(
            "input,kidneys,left_kidney_ml,right_kidney_ml,tumours,tumour_ml,largest_tumour_axial_mm,review,reasons\n",
        );
        for row in self.rows.borrow().iter() {
            csv.push_str(row);
            csv.push('\n');
        }
        volume::fs::write_bytes_atomic(&self.path.join("reports.csv"), csv.as_bytes())?;
        Ok(())
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
