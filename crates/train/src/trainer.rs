//! The training loop: it ties the data, augmentation, model, loss and
//! optimiser together, validates, checkpoints and reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::VarMap;
use kseg_infer::Segmenter;
use kseg_infer::runtime::{device, device_name, on_cpu_pool};
use kseg_loss::{LossParts, RegionLoss, SegLoss, class_weights_from_counts};
use kseg_metrics::LabelGrid;
use kseg_model::ResUNet;
use kseg_volume::CachedCase;
use kseg_volume::fs::{write_bytes_atomic, write_json_atomic};
use ndarray::{Array3, Axis};

use crate::checkpoint::{Best, Checkpoint, Checkpointer, TrainState};
use crate::config::{ClassWeights, OptimConfig, TrainConfig};
use crate::data::{Dataset, Loader};
use crate::error::{Result, TrainError, candle_text};
use crate::observe::{
    JsonLines, Observer, OverlaySlice, Progress, RunInfo, StepRecord, Summary, ValidationRecord,
    read_metric_lines,
};
use crate::optim::{AdamW, Optimiser, Sgd};
use crate::plots::Plots;
use crate::run_dir::{RunDir, RunLock};

/// A run: its folder, data, model, optimiser, loop state and observers.
pub struct Trainer {
    cfg: Arc<TrainConfig>,
    run: RunDir,
    device: Device,
    dataset: Arc<Dataset>,
    model: ResUNet,
    varmap: VarMap,
    trainable: Vec<Var>,
    optimiser: Box<dyn Optimiser>,
    loss: Loss,
    state: TrainState,
    checkpointer: Checkpointer,
    last_checkpoint: Option<PathBuf>,
    observers: Vec<Box<dyn Observer>>,
    /// Held for the trainer's life: no other process trains in `run`.
    _lock: RunLock,
}

impl Trainer {
    /// Starts a new run in `run_dir`, which must not hold one already. The
    /// configuration and the split are written there before the first step.
    pub fn new(cfg: TrainConfig, run_dir: &Path) -> Result<Trainer> {
        cfg.validate()?;
        let run = RunDir::new(run_dir);
        // A folder that is not a run is refused untouched here; in a run
        // folder, under the lock, a run started at the same moment cannot
        // write `config.json` between the check and the start.
        let lock = run.lock()?;
        if run.config().exists() {
            return Err(TrainError::Config {
                path: Some(run_dir.to_path_buf()),
                msg: "already holds a run (config.json); resume it with --resume or choose another --out".into(),
            });
        }
        let device = open_device(&cfg)?;
        let dataset = Dataset::prepare(&cfg.data)?;
        let (model, varmap) = ResUNet::init(&cfg.model, cfg.train.seed, DType::F32, &device)?;
        let state = TrainState {
            step: 0,
            epoch: 0.0,
            best: None,
            wall_seconds: 0.0,
            config: cfg.clone(),
        };
        // Everything that can refuse the configuration (the optimiser, the
        // loss) is built before the run's files are written: a start that
        // fails leaves a folder a corrected start can use, not a
        // `config.json` that says a run is there.
        let t = Trainer::assemble(cfg, run, lock, device, dataset, model, varmap, state)?;
        t.dataset.split.save(t.run.split())?;
        // The run folder is kseg's ([`RunDir::lock`]): an old log there is
        // a failed start's.
        match std::fs::remove_file(t.run.metrics()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(TrainError::io(&t.run.metrics(), e));
            }
            _ => {}
        }
        // Last: `config.json` is what says the folder holds a run.
        write_json_atomic(&t.run.config(), &*t.cfg)?;
        Ok(t)
    }

    /// Continues the run in `run_dir` from its latest checkpoint. `overrides`
    /// (`train.steps=2000`, `device=cpu`...) apply on top of the run's
    /// configuration; the model must stay the same.
    pub fn resume(run_dir: &Path, overrides: &[String]) -> Result<Trainer> {
        let run = RunDir::new(run_dir);
        // The folder must hold a run before anything is created in it.
        run.latest()?;
        let lock = run.lock()?;
        let ckpt = Checkpoint::open(run.latest()?)?;
        let state = ckpt.state.clone();
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
        let device = open_device(&cfg)?;
        let path = ckpt.dir.model();
        if ckpt.meta.model != cfg.model {
            return Err(TrainError::checkpoint(
                &path,
                format!(
                    "holds a model of {:?}; the run's config says {:?}",
                    ckpt.meta.model, cfg.model
                ),
            ));
        }
        check_checkpoint_agrees(&ckpt, &cfg)?;
        let (model, varmap) = ResUNet::load(&cfg.model, &path, DType::F32, &device)
            .map_err(|e| TrainError::checkpoint(&path, candle_text(&e)))?;
        let dataset = Dataset::prepare(&cfg.data)?;
        // The run's saved split must be the one the data gives now.
        let saved = kseg_volume::Split::load(run.split())?;
        if (&dataset.split.train, &dataset.split.val) != (&saved.train, &saved.val) {
            return Err(TrainError::Config {
                path: Some(run.split()),
                msg: "the data's split differs from the run's split".into(),
            });
        }
        // The metrics log keeps what an uninterrupted run's would hold.
        let metrics = run.metrics();
        let kept = read_metric_lines(&metrics, state.step)?;
        let text: String = kept.iter().map(|(line, _)| format!("{line}\n")).collect();
        write_bytes_atomic(&metrics, text.as_bytes())?;
        if cfg != state.config {
            write_json_atomic(&run.config(), &cfg)?;
        }
        let mut state = state;
        state.config = cfg.clone();
        let mut t = Trainer::assemble(cfg, run, lock, device, dataset, model, varmap, state)?;
        let opt_path = ckpt.dir.optimiser();
        t.optimiser
            .load(&opt_path)
            .map_err(|e| TrainError::checkpoint(&opt_path, e.to_string()))?;
        if t.optimiser.step_count() != t.state.step as u64 {
            return Err(TrainError::checkpoint(
                &opt_path,
                format!(
                    "holds the optimiser state after {} steps; state.json says {} (the checkpoint's files come from different steps)",
                    t.optimiser.step_count(),
                    t.state.step
                ),
            ));
        }
        t.last_checkpoint = Some(ckpt.dir.path().to_path_buf());
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: TrainConfig,
        run: RunDir,
        lock: RunLock,
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
        let loss = Loss::new(&cfg, &dataset.class_counts, &device)?;
        let checkpointer = Checkpointer::new(&run, cfg.train.keep_checkpoints)?;
        Ok(Trainer {
            cfg: Arc::new(cfg),
            run,
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
            _lock: lock,
        })
    }

    /// Adds the standard observers: progress on stderr, `metrics.jsonl`,
    /// and the PNG plots in `<run>/plots`.
    pub fn with_default_observers(mut self) -> Result<Trainer> {
        let every = self.cfg.train.log_every;
        self.observers.push(Box::new(Progress::new(every)));
        self.observers
            .push(Box::new(JsonLines::new(&self.run.metrics(), every)?));
        self.observers
            .push(Box::new(Plots::new(&self.run, self.state.step)?));
        Ok(self)
    }

    /// Adds an observer of the run's events.
    pub fn add_observer(&mut self, o: Box<dyn Observer>) {
        self.observers.push(o);
    }

    /// The configuration the run trains with.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The run folder.
    pub fn run_dir(&self) -> &Path {
        self.run.root()
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
            run_dir: self.run.root().to_path_buf(),
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
        let clock = Clock {
            session: Instant::now(),
            before: self.state.wall_seconds,
        };
        let mut loader = Loader::spawn(self.dataset.clone(), self.cfg.clone(), first, total);
        let mut last_val: Option<ValidationRecord> = None;
        while self.state.step < total {
            let rec = self.train_step(&mut loader, &clock)?;
            self.notify(|o| o.on_step(&rec))?;
            if let Some(v) = self.after_step(&clock)? {
                last_val = Some(v);
            }
        }
        drop(loader);
        let v = match last_val {
            Some(v) => v,
            None => self.validate()?, // resumed at the end: report anyway
        };
        let summary = self.summary(&v);
        write_json_atomic(&self.run.summary(), &summary)?;
        self.notify(|o| o.on_end(&summary))?;
        Ok(summary)
    }

    /// One optimisation step on the loader's next batch.
    fn train_step(&mut self, loader: &mut Loader, clock: &Clock) -> Result<StepRecord> {
        let t0 = Instant::now();
        let step = self.state.step;
        let total = self.cfg.train.steps;
        let b = self.cfg.train.batch_size;
        let batch = loader.next_batch()?;
        debug_assert_eq!(batch.step, step);
        let (x, y) = batch.to_tensors(&self.device)?;
        let lr = self.cfg.schedule.lr(self.cfg.optim.lr(), step, total);
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
        self.state.wall_seconds = clock.seconds();
        Ok(StepRecord {
            step: self.state.step,
            epoch: self.state.epoch,
            loss,
            ce,
            lovasz,
            lr,
            grad_norm,
            samples_per_s: b as f64 / t0.elapsed().as_secs_f64(),
        })
    }

    /// Validates and checkpoints when the step calls for it; the
    /// validation, if one ran.
    fn after_step(&mut self, clock: &Clock) -> Result<Option<ValidationRecord>> {
        let s = self.state.step;
        let last = s == self.cfg.train.steps;
        let every = self.cfg.train.validate_every;
        let mut is_best = false;
        let mut val = None;
        if last || (every > 0 && s.is_multiple_of(every)) {
            let v = self.validate()?;
            is_best = v.is_best;
            self.notify(|o| o.on_validation(&v))?;
            val = Some(v);
        }
        if last || is_best || s.is_multiple_of(self.cfg.train.checkpoint_every) {
            self.state.wall_seconds = clock.seconds();
            let meta = self.cfg.model_meta(s);
            let dir = self.checkpointer.save(
                &self.varmap,
                &meta,
                self.optimiser.as_ref(),
                &self.state,
                is_best,
            )?;
            let path = dir.path().to_path_buf();
            self.last_checkpoint = Some(path.clone());
            self.notify(|o| o.on_checkpoint(s, &path))?;
        }
        Ok(val)
    }

    /// The run's summary after its last validation `v`.
    fn summary(&self, v: &ValidationRecord) -> Summary {
        let best = self.state.best.unwrap_or(Best {
            step: v.step,
            kidney: v.evaluation.dice.kidney_mean,
            tumour: v.evaluation.dice.tumour_mean,
            composite: v.score(),
        });
        let last_checkpoint = self.last_checkpoint.clone().unwrap_or_else(|| {
            self.run
                .step_checkpoint(self.state.step)
                .path()
                .to_path_buf()
        });
        let best_dir = self.run.best_checkpoint().path().to_path_buf();
        let b = self.cfg.train.batch_size;
        Summary {
            kidney_dice: v.evaluation.dice.kidney_mean,
            tumour_dice: v.evaluation.dice.tumour_mean,
            composite: v.score(),
            regions: v.region_means(),
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
            validation: v.evaluation.dice.clone(),
            config: (*self.cfg).clone(),
        }
    }

    /// Whole-volume inference on the validation cases, per-case Dice, and
    /// the overlay slices; updates the best record.
    fn validate(&mut self) -> Result<ValidationRecord> {
        let t0 = Instant::now();
        let meta = self.cfg.model_meta(self.state.step);
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
        let mut metric = self.cfg.data.labels.metric();
        let mut overlays = Vec::new();
        for (i, case) in self.dataset.val[..n].iter().enumerate() {
            let pred = seg.segment_cached(case)?;
            let truth = case.labels()?;
            let sp = &case.meta().spacing;
            let grid = |labels| LabelGrid {
                labels,
                shape: case.shape(),
                spacing: [sp[0], sp[1], sp[2]],
            };
            metric.update(
                case.id(),
                grid(pred.as_slice().expect("standard layout")),
                grid(truth.as_slice().expect("standard layout")),
            )?;
            if i < self.cfg.train.overlay_slices {
                overlays.push(self.overlay(case, &pred, &truth)?);
            }
        }
        let evaluation = metric.aggregate();
        let mut record = ValidationRecord {
            step: self.state.step,
            evaluation,
            seconds: t0.elapsed().as_secs_f64(),
            is_best: false,
            overlays,
        };
        let score = record.score();
        record.is_best = n > 0 && self.state.best.is_none_or(|b| score > b.composite);
        if record.is_best {
            self.state.best = Some(Best {
                step: self.state.step,
                kidney: record.evaluation.dice.kidney_mean,
                tumour: record.evaluation.dice.tumour_mean,
                composite: score,
            });
        }
        Ok(record)
    }

    /// The slice of `case` with the most tumour (else kidney) voxels.
    fn overlay(
        &self,
        case: &CachedCase,
        pred: &Array3<u8>,
        truth: &Array3<u8>,
    ) -> Result<OverlaySlice> {
        let labels = self.cfg.data.labels;
        let score = |k: usize| {
            truth
                .index_axis(Axis(0), k)
                .iter()
                .map(|&v| {
                    if labels.is_tumour(v) {
                        1000u64
                    } else {
                        u64::from(labels.is_foreground(v))
                    }
                })
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

/// The run's device, set up for it: on CUDA the runtime set-up
/// (`kseg_infer::runtime::setup_device`: the pool keeps its memory, no
/// per-allocation events, the TF32 switch) and the GPU-ops switch.
fn open_device(cfg: &TrainConfig) -> Result<Device> {
    let device = device(&cfg.device)?;
    kseg_infer::runtime::set_gpu_ops(cfg.gpu_ops);
    kseg_loss::set_gpu_ops(cfg.gpu_ops == kseg_infer::runtime::GpuOps::Kseg);
    kseg_infer::runtime::setup_device(&device, kseg_infer::runtime::CudaSetup { tf32: cfg.tf32 })?;
    Ok(device)
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

/// The training loss: the reference method's over the label set's classes,
/// or per region (`loss.regions`).
enum Loss {
    Softmax(SegLoss),
    Regions(RegionLoss),
}

impl Loss {
    /// The loss `cfg` asks for, with class weights from the training
    /// cases' label counts when they are `auto`.
    fn new(cfg: &TrainConfig, counts: &[u64], device: &Device) -> Result<Loss> {
        let tensor = |w: Vec<f32>| -> Result<Tensor> {
            let n = w.len();
            Ok(Tensor::from_vec(w, n, device)?)
        };
        if !cfg.loss.regions {
            let weights = match &cfg.loss.class_weights {
                ClassWeights::Auto => Some(class_weights_from_counts(counts)?),
                ClassWeights::None => None,
                ClassWeights::Fixed(w) => Some(w.clone()),
            };
            let weights = weights.map(tensor).transpose()?;
            return Ok(Loss::Softmax(SegLoss::new(cfg.loss.seg(), weights)?));
        }
        let labels = cfg.data.labels;
        let weights = labels
            .region_counts(counts)
            .into_iter()
            .map(|c| {
                Ok(match &cfg.loss.class_weights {
                    ClassWeights::Auto => Some(tensor(class_weights_from_counts(&c)?)?),
                    ClassWeights::None => None,
                    ClassWeights::Fixed(w) => Some(tensor(w.clone())?),
                })
            })
            .collect::<Result<Option<Vec<Tensor>>>>()?;
        let labels = labels.region_labels();
        Ok(Loss::Regions(RegionLoss::new(
            cfg.loss.seg(),
            labels,
            weights,
        )?))
    }

    fn forward(&self, logits: &Tensor, labels: &Tensor) -> candle_core::Result<LossParts> {
        match self {
            Loss::Softmax(l) => l.forward(logits, labels),
            Loss::Regions(l) => l.forward(logits, labels),
        }
    }
}

/// Forward, loss, backward, gradient clipping and the optimiser's update
/// on one batch.
fn optimise(
    model: &ResUNet,
    loss_fn: &Loss,
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

/// Checks that a checkpoint's files belong together before it is resumed:
/// the model file was written at the step `state.json` names (and the
/// folder's name says), for the label set, regions and context `cfg` (the
/// run's configuration with the resume's overrides) trains. A
/// copied or mixed-up file is refused, naming it.
fn check_checkpoint_agrees(ckpt: &Checkpoint, cfg: &TrainConfig) -> Result<()> {
    let (state, meta, model) = (&ckpt.state, &ckpt.meta, ckpt.dir.model());
    if meta.step != state.step {
        return Err(TrainError::checkpoint(
            &model,
            format!(
                "was written after {} steps; {} says {} (the checkpoint's files come from different steps)",
                meta.step,
                ckpt.dir.state().display(),
                state.step
            ),
        ));
    }
    if let Some(named) = crate::run_dir::step_of_dir(ckpt.dir.path())
        && named != state.step
    {
        return Err(TrainError::checkpoint(
            &ckpt.dir.state(),
            format!("says step {}; its folder is step {named}", state.step),
        ));
    }
    let run = (cfg.data.labels, cfg.loss.regions, cfg.data.context);
    let file = (meta.labels, meta.regions, meta.context);
    if run != file {
        return Err(TrainError::checkpoint(
            &model,
            format!(
                "holds a model for labels {:?}, regions {}, context {}; the run trains labels {:?}, regions {}, context {}",
                file.0, file.1, file.2, run.0, run.1, run.2
            ),
        ));
    }
    Ok(())
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

/// Training seconds of the run: those of earlier sessions plus this one's.
struct Clock {
    session: Instant,
    before: f64,
}

impl Clock {
    fn seconds(&self) -> f64 {
        self.before + self.session.elapsed().as_secs_f64()
    }
}
