//! `kseg synth`: synthetic KiTS-like cases in KiTS19's layout.

use std::path::PathBuf;

use anyhow::Result;
use kseg_volume::synth;

/// The arguments of `kseg synth` (see `kseg synth --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Output folder (the KiTS19 `data/` equivalent).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 8)]
    pub cases: usize,
    /// Seed: the same seed gives the same cases.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// In-plane size H W.
    #[arg(long, num_args = 2, value_names = ["H", "W"], default_values_t = [128, 128])]
    pub size: Vec<usize>,
    /// Slice-count range A B (inclusive).
    #[arg(long, num_args = 2, value_names = ["A", "B"], default_values_t = [32, 64])]
    pub slices: Vec<usize>,
    /// Range of the field of view in mm, drawn per case (smaller: the
    /// kidneys cover more pixels; `train_kits19`'s preset uses 240 280).
    /// Default: the generator's, 340 420.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub fov: Option<Vec<f32>>,
    /// Range of a tumour's radius in mm (`train_kits19`'s preset: 14
    /// 36). Default: the generator's, 8 32.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub tumour_radius: Option<Vec<f32>>,
    /// Also draw renal cysts (label 3, the KiTS23 label set).
    #[arg(long)]
    pub cysts: bool,
    /// Range of the scan's length along the body in mm, drawn per case
    /// (the slice spacing is that over the slice count, within 0.5-5 mm):
    /// 400 500 with --slices 128 128 is a whole abdomen, the kidneys a
    /// quarter of its slices. Default: the generator's, 150 260 (the
    /// kidneys' region).
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub coverage: Option<Vec<f32>>,
}

impl SynthArgs {
    /// Writes the cases.
    pub fn run(&self) -> Result<()> {
        // A repeated option appends its values; only one pair is meant.
        let lens = [
            ("--size", Some(self.size.len())),
            ("--slices", Some(self.slices.len())),
            ("--fov", self.fov.as_ref().map(Vec::len)),
            ("--tumour-radius", self.tumour_radius.as_ref().map(Vec::len)),
            ("--coverage", self.coverage.as_ref().map(Vec::len)),
        ];
        for (name, n) in lens {
            if let Some(n) = n.filter(|&n| n != 2) {
                anyhow::bail!("kseg synth: {name} takes two values, once (given {n} values)");
            }
        }
        let d = synth::SynthConfig::default();
        let pair = |v: &Option<Vec<f32>>, d| v.as_ref().map_or(d, |v| (v[0], v[1]));
        let cfg = synth::SynthConfig {
            height: self.size[0],
            width: self.size[1],
            min_slices: self.slices[0],
            max_slices: self.slices[1],
            seed: self.seed,
            fov_mm: pair(&self.fov, d.fov_mm),
            tumour_radius_mm: pair(&self.tumour_radius, d.tumour_radius_mm),
            cysts: self.cysts,
            coverage_mm: pair(&self.coverage, d.coverage_mm),
        };
        let start = std::time::Instant::now();
        let dirs = synth::write_dataset(&self.out, self.cases, &cfg)?;
        for d in &dirs {
            eprintln!("{}", d.dir.display());
        }
        eprintln!(
            "wrote {} synthetic cases to {} in {:.1} s",
            dirs.len(),
            self.out.display(),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
