//! The data side of a run: cases (KiTS19 or synthetic) behind their slice
//! caches, the split, the slice sampler, and a loader thread that augments
//! batches ahead of the training loop.
//!
//! Batch `s` is a pure function of `(seed, s)`: sample `i` draws its slice
//! and its augmentation from `sample_rng(seed, s, i)`. So a resumed run sees
//! the batches an uninterrupted one would, whatever the thread count.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use kseg_volume::{CachedCase, CaseDir, SliceSampler, Split, list_cases, sample_rng, synth};
use rayon::prelude::*;

use crate::config::{DataConfig, TrainConfig};
use crate::error::{Result, TrainError};

/// The cases of a run, opened through their caches, and the split.
pub struct Dataset {
    /// Where the cases live.
    pub data_dir: PathBuf,
    /// The training and validation case ids.
    pub split: Split,
    /// Training cases, in the split's order.
    pub train: Vec<CachedCase>,
    /// Validation cases, in the split's order.
    pub val: Vec<CachedCase>,
    /// Voxel counts of each label value of the set (0, 1, 2; KiTS23 also
    /// 3) over the training cases.
    pub class_counts: Vec<u64>,
    sampler: SliceSampler,
}

/// The folder of cases a data configuration trains on: `data_dir`, or the
/// synthetic cases (made where missing).
pub fn data_dir(cfg: &DataConfig) -> Result<PathBuf> {
    match &cfg.data_dir {
        Some(d) => Ok(d.clone()),
        None => ensure_synthetic(cfg),
    }
}

impl Dataset {
    /// Finds or makes the cases, opens (building where needed) their caches
    /// and loads or creates the split.
    ///
    /// Errors name the folder or file: a missing data folder, a case of the
    /// split that is not in the data, a case without labels in the split.
    pub fn prepare(cfg: &DataConfig) -> Result<Dataset> {
        let data_dir = data_dir(cfg)?;
        let cases = list_cases(&data_dir)?;
        let labelled: Vec<&CaseDir> = cases.iter().filter(|c| c.segmentation.is_some()).collect();
        if labelled.is_empty() {
            return Err(TrainError::config(
                &data_dir,
                format!(
                    "none of its {} case folders has a segmentation ({}): training needs labelled cases",
                    cases.len(),
                    kseg_volume::case::SEGMENTATION
                ),
            ));
        }
        let cache_dir = cfg
            .cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join(".kseg-cache"));
        let ids: Vec<String> = labelled.iter().map(|c| c.id.clone()).collect();
        // The cached split is named after the labelled case set, so that
        // cases added to (or removed from) the folder make a new split
        // instead of being left out of training by an old one.
        let split_file = cfg.split_file.clone().unwrap_or_else(|| {
            let which = if cfg.folds > 0 {
                format!("k{}-fold{}", cfg.folds, cfg.fold)
            } else {
                format!("val{}", cfg.n_val)
            };
            cache_dir.join(format!(
                "split-seed{}-{which}-{}cases-{:016x}.json",
                cfg.split_seed,
                ids.len(),
                case_set_hash(&ids)
            ))
        });
        std::fs::create_dir_all(&cache_dir).map_err(|e| match &cfg.cache_dir {
            Some(_) => TrainError::io(&cache_dir, e),
            // A read-only dataset: say where the default put the caches
            // and how to put them elsewhere.
            None => TrainError::config(
                &cache_dir,
                format!(
                    "cannot create the case cache ({e}); by default it is made inside the data folder: set data.cache_dir to a writable folder (--set data.cache_dir=PATH)"
                ),
            ),
        })?;
        let mut split = if cfg.folds > 0 {
            if split_file.exists() {
                Split::load(&split_file)?
            } else {
                let s = Split::kfold(&ids, cfg.folds, cfg.fold, cfg.split_seed)?;
                s.save(&split_file)?;
                s
            }
        } else {
            Split::load_or_create(&split_file, &ids, cfg.n_val, cfg.split_seed)?
        };
        split.unlabelled = cases
            .iter()
            .filter(|c| c.segmentation.is_none())
            .map(|c| c.id.clone())
            .collect();
        if !split.unlabelled.is_empty() {
            eprintln!(
                "{}: {} case folders have no segmentation and are left out (listed in the run's split.json): {}",
                data_dir.display(),
                split.unlabelled.len(),
                kseg_volume::case::some_ids(&split.unlabelled)
            );
        }
        if split.train.is_empty() {
            return Err(TrainError::config(
                &split_file,
                "the split has no training cases",
            ));
        }
        let find = |id: &String| -> Result<&CaseDir> {
            let case = cases.iter().find(|c| &c.id == id).ok_or_else(|| {
                TrainError::config(
                    &split_file,
                    format!(
                        "case {id} is in the split but not in {}",
                        data_dir.display()
                    ),
                )
            })?;
            if case.segmentation.is_none() {
                return Err(TrainError::config(
                    &split_file,
                    format!("case {id} is in the split but has no segmentation.nii.gz"),
                ));
            }
            Ok(case)
        };
        let open = |ids: &[String]| -> Result<Vec<CachedCase>> {
            let dirs = ids.iter().map(find).collect::<Result<Vec<_>>>()?;
            dirs.par_iter()
                .map(|c| Ok(CachedCase::open_or_build(c, &cache_dir, cfg.labels)?))
                .collect()
        };
        let train = open(&split.train)?;
        let val = open(&split.val)?;
        let mut class_counts = vec![0u64; cfg.labels.num_labels()];
        for c in &train {
            for (n, m) in class_counts.iter_mut().zip(&c.meta().label_counts) {
                *n += m;
            }
        }
        let sampler_cases: Vec<(usize, Vec<usize>)> = train
            .iter()
            .map(|c| (c.num_slices(), c.foreground_slices().to_vec()))
            .collect();
        let sampler = SliceSampler::new(&sampler_cases, cfg.foreground_fraction)?;
        Ok(Dataset {
            data_dir,
            split,
            train,
            val,
            class_counts,
            sampler,
        })
    }

    /// Training slices in all (one epoch is this many samples).
    pub fn train_slices(&self) -> usize {
        self.sampler.len()
    }
}

/// FNV-1a over the sorted case ids: names the default split file after the
/// case set it splits.
fn case_set_hash(ids: &[String]) -> u64 {
    let mut sorted: Vec<&str> = ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in sorted {
        for b in id.bytes().chain(std::iter::once(0)) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The synthetic data folder, with any missing case generated (a second run
/// finds them all and generates nothing).
fn ensure_synthetic(cfg: &DataConfig) -> Result<PathBuf> {
    let s = &cfg.synthetic;
    let g = &s.generator;
    let dir = s.dir.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "data/synth-{}x{}-z{}-{}-fov{}-{}-r{}-{}-seed{}{}",
            g.height,
            g.width,
            g.min_slices,
            g.max_slices,
            g.fov_mm.0,
            g.fov_mm.1,
            g.tumour_radius_mm.0,
            g.tumour_radius_mm.1,
            g.seed,
            // Cases with cysts are other cases: a folder of their own.
            if g.cysts { "-cysts" } else { "" }
        ))
    });
    let missing: Vec<usize> = (0..s.cases)
        .filter(|&i| {
            let d = dir.join(synth::case_id(i));
            !(d.join(kseg_volume::case::IMAGING).is_file()
                && d.join(kseg_volume::case::SEGMENTATION).is_file())
        })
        .collect();
    // One case at a time: each is generated in parallel over its slices.
    for i in missing {
        let case = synth::generate_case(g, i)?;
        synth::write_case(&case, dir.join(synth::case_id(i)))?;
    }
    // Cases beyond `cases` (from an earlier, larger run) are left out.
    let keep: Vec<String> = (0..s.cases).map(synth::case_id).collect();
    let extra = std::fs::read_dir(&dir)
        .map_err(|e| TrainError::io(&dir, e))?
        .filter_map(|e| e.ok())
        .any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("case_") && !keep.contains(&n)
        });
    if extra {
        return Err(TrainError::Config {
            path: Some(dir),
            msg: format!(
                "holds more case folders than data.synthetic.cases = {}; remove them or point data.synthetic.dir elsewhere",
                s.cases
            ),
        });
    }
    Ok(dir)
}

/// One training batch on the host.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The step this batch is for.
    pub step: usize,
    /// `(B, C, H, W)`, row-major.
    pub images: Vec<f32>,
    /// `(B, H, W)`, values 0..=2.
    pub labels: Vec<u32>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
}

impl Batch {
    /// The batch as device tensors: images f32 `(B, C, H, W)`, labels u32
    /// `(B, H, W)`. The one place where host data becomes tensors.
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let [b, c, h, w] = self.shape;
        let x = Tensor::from_slice(&self.images, (b, c, h, w), device)?;
        let y = Tensor::from_slice(&self.labels, (b, h, w), device)?;
        Ok((x, y))
    }
}

/// Makes batch `step`: slices drawn by the sampler, stacked with their
/// neighbours, normalised and augmented, samples in parallel.
pub fn make_batch(ds: &Dataset, cfg: &TrainConfig, step: usize) -> Result<Batch> {
    let b = cfg.train.batch_size;
    let n = cfg.data.context;
    let samples: Vec<(ndarray::Array3<f32>, ndarray::Array2<u8>)> = (0..b)
        .into_par_iter()
        .map(|i| {
            let mut rng = sample_rng(cfg.train.seed, step as u64, i as u64);
            let r = ds.sampler.sample(&mut rng);
            let case = &ds.train[r.case];
            let (x, y) = case.sample(r.slice, n, &cfg.data.intensity)?;
            let y = y.expect("training cases have labels");
            // At a fixed voxel size the resampling and the augmentation
            // are one warp (the source is sampled once).
            let a = match (cfg.data.spacing_mm, cfg.augment.out_size) {
                (Some(t), Some(out)) => {
                    // The case's in-plane voxel size (canonical order).
                    let sp = &case.meta().spacing;
                    let (_, h, w) = x.dim();
                    let r = kseg_infer::resample::window((h, w), (sp[1], sp[2]), t, out)?;
                    kseg_augment::augment_resampled(&cfg.augment, &r, x.view(), y.view(), &mut rng)?
                }
                _ => kseg_augment::augment(&cfg.augment, x.view(), y.view(), &mut rng)?,
            };
            Ok((a.image, a.label))
        })
        .collect::<Result<_>>()?;
    let (c, h, w) = samples[0].0.dim();
    let mut images = Vec::with_capacity(b * c * h * w);
    let mut labels = Vec::with_capacity(b * h * w);
    for (x, y) in &samples {
        images.extend(x.iter());
        labels.extend(y.iter().map(|&v| u32::from(v)));
    }
    Ok(Batch {
        step,
        images,
        labels,
        shape: [b, c, h, w],
    })
}

/// Batches `first..last` made on a background thread, at most `prefetch`
/// ahead of the consumer. Dropping the loader stops the thread.
pub struct Loader {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts making batches `first..last` of `ds` on a thread.
    pub fn spawn(ds: Arc<Dataset>, cfg: Arc<TrainConfig>, first: usize, last: usize) -> Loader {
        let (tx, rx): (SyncSender<Result<Batch>>, _) = sync_channel(cfg.train.prefetch);
        let handle = std::thread::Builder::new()
            .name("kseg-loader".into())
            .spawn(move || {
                for step in first..last {
                    let batch = make_batch(&ds, &cfg, step);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            })
            .expect("spawn the loader thread");
        Loader {
            rx: Some(rx),
            handle: Some(handle),
        }
    }

    /// The next batch, in step order.
    pub fn next_batch(&mut self) -> Result<Batch> {
        self.rx
            .as_ref()
            .and_then(|rx| rx.recv().ok())
            .unwrap_or_else(|| Err(TrainError::Other("the batch loader stopped".into())))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
