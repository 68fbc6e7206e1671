//! `kseg cv`: k-fold cross-validation, nnU-Net's way: one run per fold
//! (`FOLDER/fold_K`, `data.folds` and `data.fold` set), each resumable,
//! then every case predicted by the fold that did not train on it and the
//! pooled out-of-fold predictions scored with the run's protocol
//! (`FOLDER/oof/`, `FOLDER/cv_summary.json`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kseg_infer::Segmenter;
use kseg_train::{TrainConfig, Trainer};
use kseg_volume as volume;

use super::train::TrainArgs;

/// The arguments of `kseg cv` (see `kseg cv --help`).
#[derive(clap::Args, Debug, Clone)]
pub struct CvArgs {
    /// The configuration, data and overrides of every fold's run, as for
    /// `kseg train`; `--out` is the cross-validation folder.
    #[command(flatten)]
    pub train: TrainArgs,
    /// Folds (nnU-Net: 5).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
}

impl CvArgs {
    /// Trains (or resumes, or skips when finished) every fold, then scores
    /// the pooled out-of-fold predictions.
    pub fn run(&self) -> Result<()> {
        if self.train.resume.is_some() {
            anyhow::bail!("kseg cv resumes by itself: run it again with the same --out");
        }
        let Some(out) = self.train.out.clone() else {
            anyhow::bail!("kseg cv needs --out FOLDER (one run per fold goes into it)");
        };
        let mut cfg = self.train.config()?;
        cfg.data.folds = self.folds;
        cfg.data.fold = 0;
        cfg.validate()?;
        std::fs::create_dir_all(&out).with_context(|| {
            format!(
                "{}: cannot create the cross-validation folder",
                out.display()
            )
        })?;
        let mut folds = Vec::new();
        for k in 0..self.folds {
            let dir = out.join(format!("fold_{k}"));
            let summary = train_fold(&cfg, k, &dir)?;
            folds.push((k, dir, summary));
        }
        // Every case predicted by the fold that validated it.
        let data = kseg_train::data::data_dir(&cfg.data)?;
        let oof = out.join("oof");
        std::fs::create_dir_all(&oof)
            .with_context(|| format!("{}: cannot create the folder", oof.display()))?;
        let device = kseg_infer::device(&cfg.device)?;
        for (k, dir, _) in &folds {
            let split = volume::Split::load(dir.join("split.json"))?;
            let model = dir.join("checkpoints").join(last_step(dir)?);
            let seg = Segmenter::load(&model, &device, 8)?;
            for id in &split.val {
                predict_case(&seg, &data.join(id), &oof.join(format!("{id}.nii.gz")))
                    .with_context(|| format!("fold {k}: case {id}"))?;
            }
        }
        let pooled = volume::evaluate_folder(&oof, &data, cfg.data.labels, false)?;
        let per_fold: Vec<serde_json::Value> = folds
            .iter()
            .map(|(k, dir, s)| {
                serde_json::json!({
                    "fold": k,
                    "run": dir.display().to_string(),
                    "kidney_dice": s["kidney_dice"],
                    "tumour_dice": s["tumour_dice"],
                    "composite": s["composite"],
                    "validation": s["validation"],
                })
            })
            .collect();
        let report = serde_json::json!({
            "folds": per_fold,
            "pooled": pooled.evaluation.report(),
            "pooled_score": pooled.evaluation.score(),
            "cases": pooled.evaluation.len(),
        });
        volume::fs::write_json_atomic(&out.join("cv_summary.json"), &report)?;
        for (k, _, s) in &folds {
            eprintln!("fold {k}: composite {}", s["composite"]);
        }
        eprintln!(
            "pooled out-of-fold ({} cases): {}; {}",
            pooled.evaluation.len(),
            pooled.evaluation.summary_line(),
            out.join("cv_summary.json").display()
        );
        Ok(())
    }
}

/// Fold `k`'s run in `dir`: its summary when it has finished, else resumed
/// from its latest checkpoint, else started.
fn train_fold(cfg: &TrainConfig, k: usize, dir: &Path) -> Result<serde_json::Value> {
    let summary = dir.join("summary.json");
    let trainer = if summary.is_file() {
        eprintln!("fold {k}: finished already ({})", summary.display());
        None
    } else if dir.join("checkpoints").join("latest.json").is_file() {
        eprintln!("fold {k}: resuming {}", dir.display());
        Some(
            Trainer::resume(dir, &[])
                .with_context(|| format!("cannot resume fold {k} in {}", dir.display()))?,
        )
    } else {
        let mut c = cfg.clone();
        c.data.fold = k;
        Some(Trainer::new(c, dir)?)
    };
    if let Some(t) = trainer {
        t.with_default_observers()?.run()?;
    }
    let text = std::fs::read_to_string(&summary)
        .with_context(|| format!("{}: cannot read the fold's summary", summary.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run summary", summary.display()))
}

/// The newest `step_*` checkpoint folder of a run.
fn last_step(run: &Path) -> Result<PathBuf> {
    let latest = run.join("checkpoints").join("latest.json");
    let text = std::fs::read_to_string(&latest)
        .with_context(|| format!("{}: cannot read", latest.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", latest.display()))?;
    let name = v["dir"]
        .as_str()
        .with_context(|| format!("{}: names no checkpoint", latest.display()))?;
    Ok(PathBuf::from(name))
}

/// Segments one case folder's imaging into `out`, as `kseg predict` does.
fn predict_case(seg: &Segmenter, case: &Path, out: &Path) -> Result<()> {
    let case = volume::CaseDir::open(case)?;
    let (vol, o) = volume::read_volume_canonical(&case.imaging)?;
    let sp = o.internal_order(vol.header.spacing3().map(f64::abs));
    let labels = seg.segment_volume_at(vol.data.view(), Some((sp[1], sp[2])))?;
    volume::write_volume(out, o.into_file(labels).view(), &vol.header)?;
    Ok(())
}
