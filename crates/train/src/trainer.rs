//! The training loop: it ties the data, augmentation, model, loss and
//! optimiser together, validates, checkpoints and reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::VarMap;
use kseg_loss::{DiceAccumulator, SegLoss, class_weights_from_counts};
use kseg_model::ResUNet;
use kseg_volume::CachedCase;
use ndarray::{Array3, Axis};

use crate::checkpoint::{
    Best, Checkpointer, ModelMeta, TrainState, latest, model_path, read_meta, read_state,
};
use crate::config::{ClassWeights, OptimConfig, TrainConfig};
use crate::data::{Dataset, Loader};
use crate::error::{Result, TrainError, write_atomic};
use crate::infer::Segmenter;
use crate::observe::{
    JsonLines, Observer, OverlaySlice, Progress, RunInfo, StepRecord, Summary, ValidationRecord,
    read_metrics,
};
use crate::optim::{AdamW, Optimiser, Sgd};
use crate::plots::Plots;

/// The file names in a run folder.
pub const CONFIG_FILE: &str = "config.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const SPLIT_FILE: &str = "split.json";

/// Fixes the CPU thread count for candle once, at program start.
///
/// candle 0.11.1 asks for its thread count on every matrix product and,
/// unless `RAYON_NUM_THREADS` is set, answers by parsing `/proc/cpuinfo`
/// (`num_cpus::get_physical`): about 5% of a CPU training step. This sets
/// `RAYON_NUM_THREADS` to the available parallelism when it is unset.
///
/// It also sets `CANDLE_NUM_THREADS=1` when unset: candle's element-wise
/// ops then run on the calling thread instead of candle's own worker pool,
/// whose workers spin between ops and took CPU from the rayon threads that
/// run the convolutions, BatchNorms and optimiser (on a 2-core machine
/// 13% of a training step's samples were such spinning; the 128² step got
/// about 10% faster, docs/PERFORMANCE.md). Set either variable to override.
///
/// # Safety
/// Call it first thing in `main`, before any thread is started (it changes
/// the environment).
pub unsafe fn init_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: as above.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Runs `f` on one of rayon's worker threads when `device` is the CPU (else
/// on the calling thread), and returns its result.
///
/// A CPU training step is hundreds of parallel regions (each convolution,
/// BatchNorm, the optimiser). Called from a thread outside rayon's pool,
/// each region is queued to the pool and the caller sleeps until it is done
/// (a futex wake-up per region); called from a worker, the worker takes
/// part in the region itself. On a 2-core machine the 128² step of
/// `examples/train_step.rs` got 5-10% faster (docs/PERFORMANCE.md).
/// `f` must not wait on anything that needs a free worker (such as a
/// channel fed by other rayon work): with one thread that would deadlock.
pub fn on_cpu_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// Picks a device by name: `cpu`, `cuda`, `cuda:N`, `metal`, or `auto`
/// (CUDA, then Metal, when compiled in and present; else the CPU).
pub fn device(name: &str) -> Result<Device> {
    let bad = |e: candle_core::Error| TrainError::Config {
        path: None,
        msg: format!("device {name:?}: {e} (build with --features cuda or metal for a GPU)"),
    };
    match name {
        "" | "auto" => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).map_err(bad)
            } else if candle_core::utils::metal_is_available() {
                Device::new_metal(0).map_err(bad)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(bad),
        "metal" => Device::new_metal(0).map_err(bad),
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::new_cuda(i).map_err(bad),
            _ => Err(TrainError::Config {
                path: None,
                msg: format!("device {name:?}: expected cpu, cuda, cuda:N, metal or auto"),
            }),
        },
    }
}

fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// A run: its folder, data, model, optimiser, loop state and observers.
pub struct Trainer {
    cfg: Arc<TrainConfig>,
    run_dir: PathBuf,
    device: Device,
    dataset: Arc<Dataset>,
    model: ResUNet,
    varmap: VarMap,
    trainable: Vec<Var>,
    optimiser: Box<dyn Optimiser>,
    loss: SegLoss,
    state: TrainState,
    checkpointer: Checkpointer,
    last_checkpoint: Option<PathBuf>,
    observers: Vec<Box<dyn Observer>>,
}

impl Trainer {
    /// Starts a new run in `run_dir`, which must not hold one already. The
    /// configuration and the split are written there before the first step.
    pub fn new(cfg: TrainConfig, run_dir: &Path) -> Result<Trainer> {
        cfg.validate()?;
        if run_dir.join(CONFIG_FILE).exists() {
            return Err(TrainError::Config {
                path: Some(run_dir.to_path_buf()),
                msg: "already holds a run (config.json); resume it with --resume or choose another --out".into(),
            });
        }
        std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        let device = device(&cfg.device)?;
        let dataset = Dataset::prepare(&cfg.data)?;
        let (model, varmap) = ResUNet::init(&cfg.model, cfg.train.seed, DType::F32, &device)?;
        let json = serde_json::to_string_pretty(&cfg).expect("config serialises");
        write_atomic(&run_dir.join(CONFIG_FILE), (json + "\n").as_bytes())?;
        let split = serde_json::to_string_pretty(&dataset.split).expect("split serialises");
        write_atomic(&run_dir.join(SPLIT_FILE), (split + "\n").as_bytes())?;
        let _ = std::fs::remove_file(run_dir.join(METRICS_FILE));
        let state = TrainState {
            step: 0,
            epoch: 0.0,
            best: None,
            wall_seconds: 0.0,
            config: cfg.clone(),
        };
        Trainer::assemble(cfg, run_dir, device, dataset, model, varmap, state)
    }

    /// Continues the run in `run_dir` from its latest checkpoint. `overrides`
    /// (`train.steps=2000`, `device=cpu`...) apply on top of the run's
    /// configuration; the model must stay the same.
    pub fn resume(run_dir: &Path, overrides: &[String]) -> Result<Trainer> {
        let ckpt = latest(run_dir)?;
        let state = read_state(&ckpt)?;
        let mut cfg = state.config.clone();
        cfg.apply_overrides(overrides)?;
        if cfg.model != state.config.model {
            return Err(TrainError::Config {
                path: None,
                msg: format!(
                    "overrides change the model of the run in {} ({:?} -> {:?})",
                    run_dir.display(),
                    state.config.model,
                    cfg.model
                ),
            });
        }
        let device = device(&cfg.device)?;
        let path = model_path(&ckpt);
        let meta = read_meta(&path)?;
        if meta.model != cfg.model {
            return Err(TrainError::checkpoint(
                &path,
                format!(
                    "holds a model of {:?}; the run's config says {:?}",
                    meta.model, cfg.model
                ),
            ));
        }
        let (model, varmap) = ResUNet::load(&cfg.model, &path, DType::F32, &device)
            .map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
        let dataset = Dataset::prepare(&cfg.data)?;
        // The run's saved split must be the one the data gives now.
        let saved = kseg_volume::Split::load(run_dir.join(SPLIT_FILE))?;
        if (&dataset.split.train, &dataset.split.val) != (&saved.train, &saved.val) {
            return Err(TrainError::Config {
                path: Some(run_dir.join(SPLIT_FILE)),
                msg: "the data's split differs from the run's split".into(),
            });
        }
        // The metrics log keeps what an uninterrupted run's would hold.
        let metrics = run_dir.join(METRICS_FILE);
        let kept = read_metrics(&metrics, state.step)?;
        let text: String = kept.iter().map(|v| format!("{v}\n")).collect();
        write_atomic(&metrics, text.as_bytes())?;
        if cfg != state.config {
            let json = serde_json::to_string_pretty(&cfg).expect("config serialises");
            write_atomic(&run_dir.join(CONFIG_FILE), (json + "\n").as_bytes())?;
        }
        let mut state = state;
        state.config = cfg.clone();
        let mut t = Trainer::assemble(cfg, run_dir, device, dataset, model, varmap, state)?;
        let opt_path = ckpt.join(crate::checkpoint::OPTIMISER_FILE);
        t.optimiser
            .load(&opt_path)
            .map_err(|e| TrainError::checkpoint(&opt_path, e.to_string()))?;
        t.last_checkpoint = Some(ckpt);
        Ok(t)
    }

    fn assemble(
        cfg: TrainConfig,
        run_dir: &Path,
        device: Device,
        dataset: Dataset,
        model: ResUNet,
        varmap: VarMap,
        state: TrainState,
    ) -> Result<Trainer> {
        let vars = varmap.data().lock().expect("varmap lock").clone();
        let trainable = crate::optim::trainable(&vars);
        let optimiser: Box<dyn Optimiser> = match cfg.optim {
            OptimConfig::AdamW(c) => Box::new(AdamW::new(&vars, c)?),
            OptimConfig::Sgd(c) => Box::new(Sgd::new(&vars, c)?),
        };
        let weights = match &cfg.loss.class_weights {
            ClassWeights::Auto => Some(class_weights_from_counts(&dataset.class_counts)?),
            ClassWeights::None => None,
            ClassWeights::Fixed(w) => Some(w.clone()),
        };
        let weights = weights
            .map(|w| Tensor::from_vec(w, 3, &device))
            .transpose()?;
        let loss = SegLoss::new(cfg.loss.seg(), weights)?;
        let checkpointer = Checkpointer::new(run_dir, cfg.train.keep_checkpoints)?;
        Ok(Trainer {
            cfg: Arc::new(cfg),
            run_dir: run_dir.to_path_buf(),
            device,
            dataset: Arc::new(dataset),
            model,
            varmap,
            trainable: trainable.into_iter().map(|(_, v)| v).collect(),
            optimiser,
            loss,
            state,
            checkpointer,
            last_checkpoint: None,
            observers: Vec::new(),
        })
    }

    /// Adds the standard observers: progress on stderr, `metrics.jsonl`,
    /// and the PNG plots in `<run>/plots`.
    pub fn with_default_observers(mut self) -> Result<Trainer> {
        let every = self.cfg.train.log_every;
        self.observers.push(Box::new(Progress::new(every)));
        self.observers.push(Box::new(JsonLines::new(
            &self.run_dir.join(METRICS_FILE),
            every,
        )?));
        self.observers
            .push(Box::new(Plots::new(&self.run_dir, self.state.step)?));
        Ok(self)
    }

    pub fn add_observer(&mut self, o: Box<dyn Observer>) {
        self.observers.push(o);
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Steps done so far.
    pub fn step(&self) -> usize {
        self.state.step
    }

    fn notify(&mut self, f: impl Fn(&mut dyn Observer) -> Result<()>) -> Result<()> {
        for o in &mut self.observers {
            f(o.as_mut())?;
        }
        Ok(())
    }

    /// Trains up to `train.steps`, validating and checkpointing on the way,
    /// and writes `summary.json`.
    pub fn run(&mut self) -> Result<Summary> {
        let total = self.cfg.train.steps;
        let first = self.state.step;
        let info = RunInfo {
            run_dir: self.run_dir.clone(),
            first_step: first,
            total_steps: total,
            batch_size: self.cfg.train.batch_size,
            train_cases: self.dataset.train.len(),
            val_cases: self.dataset.val.len(),
            train_slices: self.dataset.train_slices(),
            parameters: ResUNet::num_parameters(&self.varmap),
            device: device_name(&self.device),
        };
        self.notify(|o| o.on_start(&info))?;
        let session = Instant::now();
        let wall_before = self.state.wall_seconds;
        let mut loader = Loader::spawn(self.dataset.clone(), self.cfg.clone(), first, total);
        let mut last_val: Option<ValidationRecord> = None;
        let base_lr = self.cfg.optim.lr();
        let b = self.cfg.train.batch_size;
        while self.state.step < total {
            let t0 = Instant::now();
            let step = self.state.step;
            let batch = loader.next_batch()?;
            debug_assert_eq!(batch.step, step);
            let (x, y) = batch.to_tensors(&self.device)?;
            let lr = self.cfg.schedule.lr(base_lr, step, total);
            self.optimiser.set_lr(lr);
            let (model, loss_fn, trainable) = (&self.model, &self.loss, &self.trainable);
            let (optimiser, clip) = (&mut self.optimiser, self.cfg.train.grad_clip);
            let done = on_cpu_pool(&self.device, || {
                optimise(model, loss_fn, optimiser.as_mut(), trainable, clip, &x, &y)
            })?;
            let (loss, ce, lovasz, grad_norm) = (done.loss, done.ce, done.lovasz, done.grad_norm);
            if let Some((what, value)) = done.failed {
                return Err(TrainError::NonFinite {
                    what,
                    step: step + 1,
                    value,
                    ce,
                    lovasz,
                    last_good: self.last_checkpoint.clone(),
                });
            }
            self.state.step += 1;
            self.state.epoch = (self.state.step * b) as f64 / self.dataset.train_slices() as f64;
            self.state.wall_seconds = wall_before + session.elapsed().as_secs_f64();
            let rec = StepRecord {
                step: self.state.step,
                epoch: self.state.epoch,
                loss,
                ce,
                lovasz,
                lr,
                grad_norm,
                samples_per_s: b as f64 / t0.elapsed().as_secs_f64(),
            };
            self.notify(|o| o.on_step(&rec))?;

            let s = self.state.step;
            let last = s == total;
            let every = self.cfg.train.validate_every;
            let mut is_best = false;
            if last || (every > 0 && s % every == 0) {
                let v = self.validate()?;
                is_best = v.is_best;
                self.notify(|o| o.on_validation(&v))?;
                last_val = Some(v);
            }
            if last || is_best || s % self.cfg.train.checkpoint_every == 0 {
                self.state.wall_seconds = wall_before + session.elapsed().as_secs_f64();
                let meta = ModelMeta::from_config(&self.cfg, s);
                let path = self.checkpointer.save(
                    &self.varmap,
                    &meta,
                    self.optimiser.as_ref(),
                    &self.state,
                    is_best,
                )?;
                self.last_checkpoint = Some(path.clone());
                self.notify(|o| o.on_checkpoint(s, &path))?;
            }
        }
        drop(loader);
        let v = match last_val {
            Some(v) => v,
            None => self.validate()?, // resumed at the end: report anyway
        };
        let best = self.state.best.unwrap_or(Best {
            step: v.step,
            kidney: v.dice.kidney_mean,
            tumour: v.dice.tumour_mean,
            composite: v.dice.composite,
        });
        let ckpts = self.run_dir.join("checkpoints");
        let last_checkpoint = self
            .last_checkpoint
            .clone()
            .unwrap_or_else(|| ckpts.join(format!("step_{:06}", self.state.step)));
        let best_dir = ckpts.join("best");
        let summary = Summary {
            kidney_dice: v.dice.kidney_mean,
            tumour_dice: v.dice.tumour_mean,
            composite: v.dice.composite,
            best_step: best.step,
            best_composite: best.composite,
            best_checkpoint: if best_dir.is_dir() {
                best_dir
            } else {
                last_checkpoint.clone()
            },
            last_checkpoint,
            steps: self.state.step,
            epochs: self.state.epoch,
            wall_seconds: self.state.wall_seconds,
            samples_per_second: (self.state.step * b) as f64 / self.state.wall_seconds.max(1e-9),
            device: device_name(&self.device),
            parameters: ResUNet::num_parameters(&self.varmap),
            validation: v.dice.clone(),
            config: (*self.cfg).clone(),
        };
        let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
        write_atomic(&self.run_dir.join(SUMMARY_FILE), (json + "\n").as_bytes())?;
        self.notify(|o| o.on_end(&summary))?;
        Ok(summary)
    }

    /// Whole-volume inference on the validation cases, per-case Dice, and
    /// the overlay slices; updates the best record.
    fn validate(&mut self) -> Result<ValidationRecord> {
        let t0 = Instant::now();
        let meta = ModelMeta::from_config(&self.cfg, self.state.step);
        let seg = Segmenter::new(
            self.model.clone(),
            meta,
            self.device.clone(),
            self.cfg.train.val_batch_size,
        );
        let n = self
            .cfg
            .data
            .max_val_cases
            .unwrap_or(usize::MAX)
            .min(self.dataset.val.len());
        let mut acc = DiceAccumulator::new();
        let mut overlays = Vec::new();
        for (i, case) in self.dataset.val[..n].iter().enumerate() {
            let pred = seg.segment_cached(case)?;
            let truth = labels_of(case)?;
            acc.update(
                case.id(),
                pred.as_slice().expect("standard layout"),
                truth.as_slice().expect("standard layout"),
            )?;
            if i < self.cfg.train.overlay_slices {
                overlays.push(self.overlay(case, &pred, &truth)?);
            }
        }
        let dice = acc.aggregate();
        let is_best = n > 0 && self.state.best.is_none_or(|b| dice.composite > b.composite);
        if is_best {
            self.state.best = Some(Best {
                step: self.state.step,
                kidney: dice.kidney_mean,
                tumour: dice.tumour_mean,
                composite: dice.composite,
            });
        }
        Ok(ValidationRecord {
            step: self.state.step,
            dice,
            seconds: t0.elapsed().as_secs_f64(),
            is_best,
            overlays,
        })
    }

    /// The slice of `case` with the most tumour (else kidney) voxels.
    fn overlay(
        &self,
        case: &CachedCase,
        pred: &Array3<u8>,
        truth: &Array3<u8>,
    ) -> Result<OverlaySlice> {
        let score = |k: usize| {
            truth
                .index_axis(Axis(0), k)
                .iter()
                .map(|&v| [0u64, 1, 1000][v as usize])
                .sum::<u64>()
        };
        let k = (0..truth.dim().0)
            .max_by_key(|&k| (score(k), k))
            .unwrap_or(0);
        let mut image = case.hu_slice(k)?;
        let int = self.cfg.data.intensity;
        image.mapv_inplace(|v| int.apply(v));
        Ok(OverlaySlice {
            case: case.id().to_string(),
            slice: k,
            image,
            truth: truth.index_axis(Axis(0), k).to_owned(),
            pred: pred.index_axis(Axis(0), k).to_owned(),
        })
    }
}

/// What one optimisation step measured. `failed` names what was not finite
/// (and its value); the update was then not applied.
struct StepDone {
    loss: f64,
    ce: f64,
    lovasz: f64,
    grad_norm: f64,
    failed: Option<(&'static str, f64)>,
}

/// Forward, loss, backward, gradient clipping and the optimiser's update
/// on one batch.
fn optimise(
    model: &ResUNet,
    loss_fn: &SegLoss,
    optimiser: &mut dyn Optimiser,
    trainable: &[Var],
    clip: Option<f64>,
    x: &Tensor,
    y: &Tensor,
) -> Result<StepDone> {
    let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let mut done = StepDone {
        loss: f64::NAN,
        ce: f64::NAN,
        lovasz: f64::NAN,
        grad_norm: f64::NAN,
        failed: None,
    };
    let logits = model.forward_t(x, true)?;
    // Diverged weights give non-finite logits, which the loss would refuse
    // with a less useful message.
    let peak = scalar(&logits.abs()?.sum_all()?)?;
    if !peak.is_finite() {
        done.failed = Some(("the network's output", peak));
        return Ok(done);
    }
    let parts = loss_fn.forward(&logits, y)?;
    done.loss = scalar(&parts.total)?;
    done.ce = scalar(&parts.ce)?;
    done.lovasz = scalar(&parts.lovasz)?;
    if !done.loss.is_finite() {
        done.failed = Some(("loss", done.loss));
        return Ok(done);
    }
    let mut grads = parts.total.backward()?;
    done.grad_norm = global_norm(&grads, trainable)?;
    if !done.grad_norm.is_finite() {
        done.failed = Some(("gradient norm", done.grad_norm));
        return Ok(done);
    }
    if let Some(clip) = clip
        && done.grad_norm > clip
    {
        let f = clip / done.grad_norm;
        for v in trainable {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * f)?);
            }
        }
    }
    optimiser.step(&grads)?;
    Ok(done)
}

/// The labels of a cached case, `[slices, H, W]`.
pub fn labels_of(case: &CachedCase) -> Result<Array3<u8>> {
    let [d, h, w] = case.shape();
    let mut out = Array3::zeros((d, h, w));
    for k in 0..d {
        let Some(l) = case.label_slice(k)? else {
            return Err(TrainError::Other(format!(
                "{}: validation case without labels",
                case.path().display()
            )));
        };
        out.index_axis_mut(Axis(0), k).assign(&l);
    }
    Ok(out)
}

/// `sqrt(Σ‖g‖²)` over the variables that have a gradient.
fn global_norm(grads: &candle_core::backprop::GradStore, vars: &[Var]) -> Result<f64> {
    let mut sq: Option<Tensor> = None;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let s = g.sqr()?.sum_all()?.to_dtype(DType::F64)?;
            sq = Some(match sq {
                Some(a) => (a + s)?,
                None => s,
            });
        }
    }
    Ok(match sq {
        Some(s) => s.to_scalar::<f64>()?.sqrt(),
        None => 0.0,
    })
}
