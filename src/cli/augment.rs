//! `kseg augment`: a PNG grid of augmented samples of one slice.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use kseg_augment::{AugmentConfig, AugmentParams, apply};
use kseg_volume::{self as volume, CaseDir};

/// The arguments of `kseg augment` (see `kseg augment --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct AugmentArgs {
    /// A case folder (imaging.nii.gz + segmentation.nii.gz).
    #[arg(long)]
    pub case: PathBuf,
    /// The slice (index along the first axis).
    #[arg(long)]
    pub slice: usize,
    /// RNG seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of augmented samples.
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// Output size H W of each sample (default: the input's size).
    #[arg(long, num_args = 2, value_names = ["H", "W"])]
    pub size: Option<Vec<usize>>,
    /// Neighbours on each side in the 2.5D stack.
    #[arg(long, default_value_t = 1)]
    pub neighbours: usize,
    /// The PNG to write.
    #[arg(long)]
    pub out: PathBuf,
}

impl AugmentArgs {
    /// Writes the grid.
    pub fn run(&self) -> Result<()> {
        augment_grid(
            &self.case,
            self.slice,
            self.seed,
            self.n,
            self.size.clone(),
            self.neighbours,
            &self.out,
        )
    }
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
    let case_dir = CaseDir::open(case)?;
    let loaded = case_dir.load(kseg_volume::LabelSet::Kits19)?;
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
    // The tiles (image stack and label) and the grid image they make,
    // checked against the memory limit before any is drawn.
    let (c, (th, tw)) = (x.dim().0, out_size);
    kseg_volume::limits::check(
        &format!("{} tiles of {th}x{tw} (--n, --size)", n.saturating_add(1)),
        &[n.saturating_add(1), th, tw],
        c * std::mem::size_of::<f32>() + 1 + 3,
    )?;
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
            kseg_train::plots::overlay_rgb(mid, yi.view(), (lo, hi))
        })
        .collect();
    kseg_train::plots::write_png(out, &kseg_train::plots::grid(&images, cols))?;
    eprintln!(
        "wrote {} ({} samples of {th}x{tw} + the original)",
        out.display(),
        n
    );
    Ok(())
}
