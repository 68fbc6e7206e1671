//! `kseg train`, and what it shares with the `train_kits19` example: the
//! arguments and how a run is started or resumed from them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kseg_train::{RunDir, Summary, TrainConfig, Trainer};

/// Arguments of a training run.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// A KiTS19 `data/` folder (case_XXXXX/imaging.nii.gz +
    /// segmentation.nii.gz). Without it: synthetic KiTS-like cases, made
    /// once and cached.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A configuration file (TOML or JSON) to start from.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A built-in configuration to start from: kits19, synthetic-cpu,
    /// kits23 or synthetic-kits23 (configs/NAME.toml).
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// The run folder (default: runs/<date-time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint.
    #[arg(long, conflicts_with_all = ["data_dir", "config", "preset", "out"])]
    pub resume: Option<PathBuf>,
    /// Training steps (same as --set train.steps=N).
    #[arg(long)]
    pub steps: Option<usize>,
    /// cpu, cuda, cuda:N, metal or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// Override any configuration value: --set train.batch_size=4
    /// --set optim.lr=0.0005 (repeatable; values are JSON or strings).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl TrainArgs {
    /// The overrides, the shorthand flags last.
    fn all_overrides(&self) -> Vec<String> {
        let mut o = self.overrides.clone();
        if let Some(s) = self.steps {
            o.push(format!("train.steps={s}"));
        }
        if let Some(d) = &self.device {
            o.push(format!("device={d}"));
        }
        o
    }

    /// The configuration of a new run: `--config` or `--preset`, else the
    /// reference method's setup when `--data-dir` is given
    /// (`configs/kits23.toml` when the folder holds KiTS23's `kits23.json`,
    /// else `configs/kits19.toml`), else the synthetic CPU setup
    /// (`configs/synthetic-cpu.toml`); then `--data-dir` and the overrides.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut cfg = match (&self.config, &self.preset, &self.data_dir) {
            (Some(path), _, _) => TrainConfig::from_file(path)?,
            (None, Some(name), _) => crate::preset(name)?,
            // The KiTS23 repository's dataset/ folder holds kits23.json.
            (None, None, Some(d)) if d.join("kits23.json").is_file() => {
                eprintln!(
                    "{} holds kits23.json: KiTS23 labels, region-based training (configs/kits23.toml)",
                    d.display()
                );
                crate::preset("kits23")?
            }
            (None, None, Some(_)) => crate::preset("kits19")?,
            (None, None, None) => crate::preset("synthetic-cpu")?,
        };
        if let Some(d) = &self.data_dir {
            cfg.data.data_dir = Some(d.clone());
        }
        cfg.apply_overrides(&self.all_overrides())?;
        Ok(cfg)
    }

    /// Starts (or resumes) the run and trains it to the end.
    pub fn run(&self) -> Result<(PathBuf, Summary)> {
        let trainer = match &self.resume {
            Some(dir) => Trainer::resume(dir, &self.all_overrides())
                .with_context(|| format!("cannot resume the run in {}", dir.display()))?,
            None => {
                let cfg = self.config()?;
                let out = self.out.clone().unwrap_or_else(default_run_dir);
                Trainer::new(cfg, &out)?
            }
        };
        let mut trainer = trainer.with_default_observers()?;
        let summary = trainer.run()?;
        Ok((trainer.run_dir().to_path_buf(), summary))
    }
}

/// `runs/<YYYYmmdd-HHMMSS>` in UTC.
pub fn default_run_dir() -> PathBuf {
    let (date, time) = kseg_volume::utc_now();
    PathBuf::from(format!("runs/{date}-{time}"))
}

/// `kseg train`: trains, then prints the summary file's path (stdout) and
/// the Dice (stderr).
pub(super) fn run_command(args: &TrainArgs) -> Result<()> {
    let (dir, s) = args.run()?;
    super::print_line(&RunDir::new(dir).summary().display().to_string())?;
    eprintln!(
        "kidney Dice {:.4}, tumour Dice {:.4}, composite {:.4}; best checkpoint {}",
        s.kidney_dice,
        s.tumour_dice,
        s.composite,
        s.best_checkpoint.display()
    );
    Ok(())
}
