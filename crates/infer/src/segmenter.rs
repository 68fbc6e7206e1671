//! Whole-volume inference: every slice of a volume, stacked with its
//! neighbours, normalised and brought to the network's size as in training,
//! segmented in batches, and the labels brought back to the volume's grid.

use std::ops::Range;
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use kseg_augment::{AugmentParams, apply_image};
use kseg_metrics::Activation;
use kseg_model::{FreezeOptions, FrozenNet, Precision, ResUNet};
use kseg_volume::{CachedCase, stack_slices};
use ndarray::{Array2, Array3, ArrayView3, s};
use rayon::prelude::*;

use crate::error::{InferError, Result, candle_text};
use crate::fast::FastMode;
use crate::model_file::{ModelMeta, model_file, read_meta};
use crate::report::Quality;

/// One network of a segmenter: the model, and on the CPU its frozen
/// inference form ([`FrozenNet`]: BatchNorm folded, fused epilogues,
/// reused buffers), which is what runs there.
#[derive(Clone)]
struct Net {
    model: ResUNet,
    frozen: Option<std::sync::Arc<FrozenNet>>,
}

impl Net {
    fn new(model: ResUNet) -> Net {
        Net {
            model,
            frozen: None,
        }
    }

    /// Freezes the model in f32 when it runs on the CPU, unless
    /// `KSEG_INFER=graph` asks for the training graph's evaluation mode
    /// (for comparison).
    fn freeze(&mut self, device: &Device) -> candle_core::Result<()> {
        if self.frozen.is_none() {
            self.frozen = self.frozen_f32(device)?;
        }
        Ok(())
    }

    /// What [`Net::freeze`] freezes: the model in f32 on the CPU, unless
    /// `KSEG_INFER=graph`; else nothing.
    fn frozen_f32(
        &self,
        device: &Device,
    ) -> candle_core::Result<Option<std::sync::Arc<FrozenNet>>> {
        let graph = std::env::var_os("KSEG_INFER").is_some_and(|v| v == "graph");
        Ok(if device.is_cpu() && !graph {
            Some(std::sync::Arc::new(FrozenNet::new(&self.model)?))
        } else {
            None
        })
    }

    /// The model frozen in a lower precision (the CPU only).
    fn frozen_in(&self, precision: Precision) -> candle_core::Result<std::sync::Arc<FrozenNet>> {
        let opts = FreezeOptions {
            precision,
            ..Default::default()
        };
        Ok(std::sync::Arc::new(FrozenNet::with_options(
            &self.model,
            opts,
        )?))
    }

    /// Whether it runs in a precision other than f32.
    fn is_lowered(&self) -> bool {
        self.frozen
            .as_ref()
            .is_some_and(|f| f.options().precision != Precision::F32)
    }

    /// The logits of `x`: the frozen network on the CPU, else the model's
    /// evaluation-mode forward.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.frozen {
            Some(f) if x.device().is_cpu() => f.forward(x),
            _ => self.model.forward_t(x, false),
        }
    }
}

/// A model with its preprocessing, ready to segment volumes.
#[derive(Clone)]
pub struct Segmenter {
    model: Net,
    /// Further models of an ensemble (folds), averaged with `model`.
    others: Vec<Net>,
    meta: ModelMeta,
    device: Device,
    batch: usize,
    /// The model file it was loaded from (named in errors).
    source: Option<std::path::PathBuf>,
    /// The fast mode of [`Segmenter::segment_with`] (`None`: every slice
    /// at full resolution).
    fast: Option<FastMode>,
}

impl Segmenter {
    /// A segmenter of `model` with the preprocessing of `meta`, `batch` slices per forward pass.
    /// It runs the model's evaluation-mode forward (the training graph's
    /// arithmetic, as the trainer's validation); [`Segmenter::freeze`]
    /// switches the CPU to the inference engine.
    pub fn new(model: ResUNet, meta: ModelMeta, device: Device, batch: usize) -> Segmenter {
        Segmenter {
            model: Net::new(model),
            others: Vec::new(),
            meta,
            device,
            batch: batch.max(1),
            source: None,
            fast: None,
        }
    }

    /// On the CPU, runs every model through its frozen inference form
    /// ([`FrozenNet`]: BatchNorm folded into the convolutions, bias,
    /// residual and activation fused into each product, Winograd weights
    /// transformed once, activation buffers reused): the same logits
    /// within rounding (1e-4), faster and in less memory. What
    /// [`Segmenter::load`] and the other loaders do; `KSEG_INFER=graph`
    /// keeps the training graph (for comparison).
    pub fn freeze(mut self) -> Result<Segmenter> {
        let device = self.device.clone();
        for net in std::iter::once(&mut self.model).chain(&mut self.others) {
            net.freeze(&device)?;
        }
        Ok(self)
    }

    /// Loads a kseg model file (or checkpoint folder): weights and the
    /// preprocessing recorded in its metadata.
    pub fn load(checkpoint: &Path, device: &Device, batch: usize) -> Result<Segmenter> {
        let path = model_file(checkpoint);
        let meta = read_meta(&path)?;
        let (model, varmap) = ResUNet::load(&meta.model, &path, DType::F32, device)
            .map_err(|e| InferError::checkpoint(&path, candle_text(&e)))?;
        check_weights(&varmap).map_err(|e| InferError::checkpoint(&path, e))?;
        let mut seg = Segmenter::new(model, meta, device.clone(), batch);
        seg.source = Some(path);
        seg.freeze()
    }

    /// An ensemble of the model files (or checkpoint folders) `checkpoints`:
    /// the class probabilities (softmax, or the region sigmoids) of every
    /// model, and of every mirror image with mirroring, averaged before
    /// decoding. The first file's clean-up and mirroring apply. Models
    /// that disagree on what they take or give (label set, regions,
    /// outputs, stack, intensity window, in-plane size or voxel size, the
    /// padding multiple) are refused, naming both files.
    pub fn load_ensemble(
        checkpoints: &[std::path::PathBuf],
        device: &Device,
        batch: usize,
    ) -> Result<Segmenter> {
        let Some((first, rest)) = checkpoints.split_first() else {
            return Err(InferError::Other(
                "an ensemble needs at least one checkpoint".into(),
            ));
        };
        let mut seg = Segmenter::load(first, device, batch)?;
        let first_path = model_file(first);
        for c in rest {
            let path = model_file(c);
            let meta = read_meta(&path)?;
            if let Some(what) = disagreement(&seg.meta, &meta) {
                return Err(InferError::checkpoint(
                    &path,
                    format!(
                        "cannot join an ensemble with {}: {what}",
                        first_path.display()
                    ),
                ));
            }
            let (model, varmap) = ResUNet::load(&meta.model, &path, DType::F32, device)
                .map_err(|e| InferError::checkpoint(&path, candle_text(&e)))?;
            check_weights(&varmap).map_err(|e| InferError::checkpoint(&path, e))?;
            let mut net = Net::new(model);
            net.freeze(device)?;
            seg.others.push(net);
        }
        Ok(seg)
    }

    /// The ensemble of a model bundle (`kseg export`): the file read whole
    /// and checked ([`crate::bundle::read_bundle`]: format, metadata,
    /// checksum) before any model is built; the first fold's clean-up and
    /// mirroring apply.
    pub fn load_bundle(path: &Path, device: &Device, batch: usize) -> Result<Segmenter> {
        let (meta, bytes) = crate::bundle::read_bundle(path)?;
        let vb = candle_nn::VarBuilder::from_slice_safetensors(&bytes, DType::F32, device)
            .map_err(|e| InferError::checkpoint(path, candle_text(&e)))?;
        let mut models = Vec::with_capacity(meta.folds.len());
        for (i, fold) in meta.folds.iter().enumerate() {
            let model = ResUNet::new(&fold.model, vb.pp(format!("fold{i}"))).map_err(|e| {
                InferError::checkpoint(path, format!("fold {i}: {}", candle_text(&e)))
            })?;
            models.push(model);
        }
        let mut models = models.into_iter();
        let first = models
            .next()
            .ok_or_else(|| InferError::checkpoint(path, "a bundle without folds"))?;
        let mut seg = Segmenter::new(first, meta.folds[0].clone(), device.clone(), batch);
        seg.others = models.map(Net::new).collect();
        seg.source = Some(path.to_path_buf());
        seg.freeze()
    }

    /// The number of models averaged (1 without an ensemble).
    pub fn members(&self) -> usize {
        1 + self.others.len()
    }

    /// The checkpoint's metadata (model, preprocessing, clean-up).
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// Overrides the clean-up recorded in the checkpoint (`None`: off).
    pub fn set_keep_largest(&mut self, keep: Option<usize>) {
        self.meta.keep_largest = keep;
    }

    /// Overrides the mirroring test-time augmentation recorded in the
    /// checkpoint.
    pub fn set_mirror(&mut self, mirror: bool) {
        self.meta.mirror = mirror;
    }

    /// The arithmetic of every model's convolutions on the CPU: f32 (the
    /// loaders' default), int8 ([`Precision::Int8`], opt-in: weights per
    /// output channel, each slice's activations per layer, exact integer
    /// products on AVX-512 VNNI where the CPU has it, else the same
    /// arithmetic slower; see [`kseg_model::int8_accelerated`]) or bf16
    /// ([`Precision::Bf16`], opt-in: the products' operands rounded to
    /// bf16, the sums in f32, on AVX512-BF16 where the CPU has it, else
    /// the same products slower; see [`kseg_model::bf16_accelerated`]).
    /// A lower precision runs the frozen engine whatever `KSEG_INFER` says
    /// (it has no training-graph form); back to f32, the models in a lower
    /// precision are frozen in f32 as the loaders freeze them, and the
    /// others are left as they were. Every model is switched or none (an
    /// error leaves them all as they were). What each costs in Dice and
    /// buys in time is in docs/PERFORMANCE.md. A lower precision on
    /// another device is refused.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision != Precision::F32 && !self.device.is_cpu() {
            return Err(InferError::Device(format!(
                "{} inference runs on the CPU only (--device cpu); the GPU path is f32",
                precision.name()
            )));
        }
        let device = self.device.clone();
        let nets = || std::iter::once(&self.model).chain(&self.others);
        let frozen = match precision {
            Precision::Int8 | Precision::Bf16 => nets()
                .map(|n| n.frozen_in(precision).map(Some))
                .collect::<candle_core::Result<Vec<_>>>()?,
            Precision::F32 => nets()
                .map(|n| {
                    if n.is_lowered() {
                        n.frozen_f32(&device)
                    } else {
                        Ok(n.frozen.clone())
                    }
                })
                .collect::<candle_core::Result<Vec<_>>>()?,
        };
        let all = std::iter::once(&mut self.model).chain(&mut self.others);
        for (net, f) in all.zip(frozen) {
            net.frozen = f;
        }
        Ok(())
    }

    /// Turns the fast mode on (`Some`) or off for the plain segmentation
    /// ([`Segmenter::segment_with`] and what calls it): a coarse pass over
    /// every `stride`-th slice finds the foreground, then only the slab of
    /// slices around it, cropped in-plane to its box and a margin, is
    /// segmented at full resolution; the rest is background (see
    /// [`crate::fast`]). A model with a fixed input size (`in_plane`) is
    /// not cropped, only the slab is used. The quality and probability
    /// paths always segment every slice whole.
    pub fn set_fast(&mut self, fast: Option<FastMode>) {
        self.fast = fast;
    }

    /// Per-class scores whose argmax is the prediction: the logits, or with
    /// mirroring the sum of the class probabilities of `x` and of its
    /// mirror image (mirrored back), i.e. twice their mean. For a region
    /// model the probabilities are the regions' sigmoids.
    fn scores(&self, x: &Tensor) -> Result<Tensor> {
        crate::runtime::on_cpu_pool(&self.device, || self.scores_here(x))
    }

    /// The probabilities of the network's outputs: softmax over classes,
    /// or each region's sigmoid.
    fn probabilities(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        match self.meta.labels.activation(self.meta.regions) {
            Activation::Sigmoid => candle_nn::ops::sigmoid(logits),
            Activation::Softmax => candle_nn::ops::softmax(logits, 1),
        }
    }

    /// [`Segmenter::scores`], and with `quality` also the probabilities of
    /// the slices and of their mirror images (mirrored back), computed
    /// even without mirroring (one more forward pass then); the scores are
    /// those of [`Segmenter::scores`] either way.
    fn scores_quality(&self, x: &Tensor, quality: bool) -> Result<(Tensor, Option<[Tensor; 2]>)> {
        if !quality {
            return Ok((self.scores(x)?, None));
        }
        crate::runtime::on_cpu_pool(&self.device, || {
            let w = x.dim(3)?;
            let rev: Vec<u32> = (0..w as u32).rev().collect();
            let rev = Tensor::from_vec(rev, w, x.device())?;
            if !self.others.is_empty() {
                // As `scores_here`: Σ over models of (p + q) with
                // mirroring, Σ p without; and the means of p and of q.
                let (mut scores, mut ps, mut qs) = (None, None, None);
                for model in std::iter::once(&self.model).chain(&self.others) {
                    let p = self.probabilities(&model.forward(x)?)?;
                    let mirrored = model.forward(&x.index_select(&rev, 3)?)?;
                    let q = self.probabilities(&mirrored)?.index_select(&rev, 3)?;
                    let term = if self.meta.mirror {
                        (&p + &q)?
                    } else {
                        p.clone()
                    };
                    scores = Some(add(scores, term)?);
                    ps = Some(add(ps, p)?);
                    qs = Some(add(qs, q)?);
                }
                let k = 1.0 / self.members() as f64;
                let (Some(scores), Some(p), Some(q)) = (scores, ps, qs) else {
                    unreachable!("at least one model")
                };
                return Ok((scores, Some([(p * k)?, (q * k)?])));
            }
            let logits = self.model.forward(x)?;
            let mirrored = self.model.forward(&x.index_select(&rev, 3)?)?;
            let p = self.probabilities(&logits)?;
            let q = self.probabilities(&mirrored)?.index_select(&rev, 3)?;
            let scores = if self.meta.mirror { (&p + &q)? } else { logits };
            Ok((scores, Some([p, q])))
        })
    }

    /// [`Segmenter::scores`] on the calling thread. An ensemble's scores
    /// are Σ over its models of the probabilities (plus the mirrored
    /// probabilities with mirroring).
    fn scores_here(&self, x: &Tensor) -> Result<Tensor> {
        if !self.others.is_empty() {
            let w = x.dim(3)?;
            let rev: Vec<u32> = (0..w as u32).rev().collect();
            let rev = Tensor::from_vec(rev, w, x.device())?;
            let mut acc = None;
            for model in std::iter::once(&self.model).chain(&self.others) {
                let p = self.probabilities(&model.forward(x)?)?;
                let term = if self.meta.mirror {
                    let mirrored = model.forward(&x.index_select(&rev, 3)?)?;
                    (p + self.probabilities(&mirrored)?.index_select(&rev, 3)?)?
                } else {
                    p
                };
                acc = Some(add(acc, term)?);
            }
            return acc.ok_or_else(|| InferError::Other("an ensemble without models".into()));
        }
        let logits = self.model.forward(x)?;
        if !self.meta.mirror {
            return Ok(logits);
        }
        let w = x.dim(3)?;
        let rev: Vec<u32> = (0..w as u32).rev().collect();
        let rev = Tensor::from_vec(rev, w, x.device())?;
        let mirrored = self.model.forward(&x.index_select(&rev, 3)?)?;
        let p = self.probabilities(&logits)?;
        let q = self.probabilities(&mirrored)?.index_select(&rev, 3)?;
        Ok((p + q)?)
    }

    /// Segments a volume of HU values (then keeps the largest foreground
    /// components when the checkpoint says so).
    ///
    /// # Shapes
    /// `hu`: `[slices, H, W]` → labels `[slices, H, W]` (the checkpoint's
    /// label set: 0, 1, 2, and 3 for KiTS23's cysts).
    pub fn segment_volume(&self, hu: ArrayView3<f32>) -> Result<Array3<u8>> {
        self.segment_volume_at(hu, None)
    }

    /// [`Segmenter::segment_volume`] of a volume whose in-plane voxel size
    /// (rows, columns; mm) is `spacing`: a model trained at a fixed spacing
    /// (`data.spacing_mm`) resamples the slices to it and needs it.
    pub fn segment_volume_at(
        &self,
        hu: ArrayView3<f32>,
        spacing: Option<(f64, f64)>,
    ) -> Result<Array3<u8>> {
        let (d, h, w) = hu.dim();
        let (n, int) = (self.meta.context, self.meta.intensity);
        self.segment_with(d, (h, w), spacing, |k| Ok(stack_slices(hu, k, n, &int)?))
    }

    /// [`Segmenter::segment_volume_at`] with the prediction's
    /// [`Quality`]: the foreground Dice between the prediction of the
    /// slices and of their mirror images, and the mean normalised entropy
    /// of the class probabilities over the predicted foreground (both on
    /// the network's grid, before the clean-up). Without mirroring this
    /// costs one more forward pass per slice; the labels are those of
    /// [`Segmenter::segment_volume_at`].
    pub fn segment_volume_quality(
        &self,
        hu: ArrayView3<f32>,
        spacing: Option<(f64, f64)>,
    ) -> Result<(Array3<u8>, Quality)> {
        let (d, h, w) = hu.dim();
        let (n, int) = (self.meta.context, self.meta.intensity);
        let (labels, q) = self.run(d, (h, w), spacing, true, |k| {
            Ok(stack_slices(hu, k, n, &int)?)
        })?;
        Ok((labels, q.finish()))
    }

    /// [`Segmenter::segment_volume_at`] with the class probabilities the
    /// labels are decoded from (softmax, or the region sigmoids; averaged
    /// over mirrors and models), `[C, slices, H, W]` on the volume's grid
    /// (before the clean-up); the labels are those of
    /// [`Segmenter::segment_volume_at`]. Memory: C floats per voxel, checked
    /// against the memory limit first.
    pub fn segment_volume_probs(
        &self,
        hu: ArrayView3<f32>,
        spacing: Option<(f64, f64)>,
    ) -> Result<(Array3<u8>, ndarray::Array4<f32>)> {
        let (d, h, w) = hu.dim();
        let c = self.meta.model.num_classes;
        kseg_volume::limits::check("class probabilities", &[c, d, h, w], 4)
            .map_err(|e| InferError::Other(e.to_string()))?;
        let mut probs = ndarray::Array4::<f32>::zeros((c, d, h, w));
        let (n, int) = (self.meta.context, self.meta.intensity);
        let (labels, _) = self.run_collect(
            d,
            (h, w),
            spacing,
            false,
            |k| Ok(stack_slices(hu, k, n, &int)?),
            Some(&mut probs),
        )?;
        Ok((labels, probs))
    }

    /// Segments a cached case (the validation path).
    pub fn segment_cached(&self, case: &CachedCase) -> Result<Array3<u8>> {
        let [d, h, w] = case.shape();
        let (n, int) = (self.meta.context, self.meta.intensity);
        let sp = &case.meta().spacing;
        self.segment_with(d, (h, w), Some((sp[1], sp[2])), |k| {
            Ok(case.stack(k, n, &int)?)
        })
    }

    /// Segments `depth` slices of size `(h, w)` and in-plane voxel size
    /// `spacing` (mm, when known) whose normalised stacks `stack(k)` gives
    /// (`[2n+1, h, w]`).
    pub fn segment_with(
        &self,
        depth: usize,
        (h, w): (usize, usize),
        spacing: Option<(f64, f64)>,
        stack: impl Fn(usize) -> Result<Array3<f32>> + Sync,
    ) -> Result<Array3<u8>> {
        let Some(fast) = self.fast else {
            return Ok(self.run(depth, (h, w), spacing, false, stack)?.0);
        };
        let mut out = Array3::<u8>::zeros((depth, h, w));
        let mut sums = QualitySums::default();
        let coarse = fast.coarse_slices(depth);
        let whole = (0..h, 0..w);
        // A model of a fixed input size is only ever given whole slices
        // at its own size.
        let fixed = self.meta.in_plane.is_some();
        let shrink = if fixed { 1 } else { fast.shrink.max(1) };
        self.pass(
            &mut out,
            &coarse,
            whole.clone(),
            shrink,
            spacing,
            false,
            &stack,
            None,
            &mut sums,
        )?;
        let multiple = 1usize << self.meta.model.depth;
        // The window from the coarse labels cleaned up as the final ones
        // will be: a speck of false foreground far from the kidneys (the
        // coarser the pass, the more of them) would widen it for nothing.
        let mut sampled = out.select(ndarray::Axis(0), &coarse);
        self.clean_up(&mut sampled);
        let Some(win) = fast.window(&sampled, &coarse, spacing, multiple) else {
            return Ok(Array3::zeros((depth, h, w)));
        };
        let plane = if fixed {
            whole.clone()
        } else {
            (win.rows, win.cols)
        };
        // Whole slices at full resolution: the coarse pass's are already
        // segmented as the full pass would; otherwise every slice of the
        // slab is segmented anew.
        let reuse = plane == whole && shrink == 1;
        // The slab first, then a batch beyond each growing end at a time.
        let mut grow = crate::fast::Grow::new(win.slices.clone(), depth);
        let mut next: Vec<usize> = win.slices.collect();
        let mut first = true;
        while !next.is_empty() {
            let mut ks = next.clone();
            if reuse {
                ks.retain(|k| coarse.binary_search(k).is_err());
            }
            self.pass(
                &mut out,
                &ks,
                plane.clone(),
                1,
                spacing,
                false,
                &stack,
                None,
                &mut sums,
            )?;
            if !first {
                // Only the crop counts: outside it a sampled slice still
                // holds the coarse pass's labels, cleared below.
                grow.advance(&next, |k| {
                    out.slice(s![k, plane.0.clone(), plane.1.clone()])
                        .iter()
                        .any(|&v| v != 0)
                });
            }
            first = false;
            next = grow.next(self.batch);
        }
        // Outside the window (the coarse labels of sampled slices beyond
        // the slab, and outside the crop) everything is background.
        let (rows, cols) = plane;
        for (k, mut slice) in out.outer_iter_mut().enumerate() {
            if !grow.slices.contains(&k) {
                slice.fill(0);
            } else if (rows.clone(), cols.clone()) != whole {
                for (r, mut row) in slice.outer_iter_mut().enumerate() {
                    if rows.contains(&r) {
                        row.slice_mut(s![..cols.start]).fill(0);
                        row.slice_mut(s![cols.end..]).fill(0);
                    } else {
                        row.fill(0);
                    }
                }
            }
        }
        self.clean_up(&mut out);
        Ok(out)
    }

    /// The clean-up the checkpoint asks for (or `set_keep_largest`): the
    /// largest foreground components kept.
    fn clean_up(&self, out: &mut Array3<u8>) {
        if let Some(keep) = self.meta.keep_largest {
            crate::postprocess::keep_largest_components(out, keep, self.meta.labels);
        }
    }

    /// [`Segmenter::segment_with`], measuring the [`Quality`] when
    /// `quality`.
    fn run(
        &self,
        depth: usize,
        (h, w): (usize, usize),
        spacing: Option<(f64, f64)>,
        quality: bool,
        stack: impl Fn(usize) -> Result<Array3<f32>> + Sync,
    ) -> Result<(Array3<u8>, QualitySums)> {
        self.run_collect(depth, (h, w), spacing, quality, stack, None)
    }

    /// [`Segmenter::run`], writing each slice's class probabilities (on
    /// the volume's grid, before the clean-up) into `probs` `[C, slices, H,
    /// W]` when given.
    fn run_collect(
        &self,
        depth: usize,
        (h, w): (usize, usize),
        spacing: Option<(f64, f64)>,
        quality: bool,
        stack: impl Fn(usize) -> Result<Array3<f32>> + Sync,
        probs_out: Option<&mut ndarray::Array4<f32>>,
    ) -> Result<(Array3<u8>, QualitySums)> {
        let mut sums = QualitySums::default();
        let mut out = Array3::<u8>::zeros((depth, h, w));
        let ks: Vec<usize> = (0..depth).collect();
        self.pass(
            &mut out,
            &ks,
            (0..h, 0..w),
            1,
            spacing,
            quality,
            &stack,
            probs_out,
            &mut sums,
        )?;
        self.clean_up(&mut out);
        Ok((out, sums))
    }

    /// Segments the slices `ks` of a volume, cropped in-plane to `rows` ×
    /// `cols` of the planes `stack(k)` gives, into those voxels of `out`
    /// `[slices, H, W]` (and of `probs_out` `[C, slices, H, W]` when
    /// given), adding to the quality sums when `quality`. No clean-up.
    /// `shrink` > 1 (the fast mode's coarse pass) divides the size the
    /// network sees in each in-plane axis by it.
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        out: &mut Array3<u8>,
        ks: &[usize],
        (rows, cols): (Range<usize>, Range<usize>),
        shrink: usize,
        spacing: Option<(f64, f64)>,
        quality: bool,
        stack: &(impl Fn(usize) -> Result<Array3<f32>> + Sync),
        mut probs_out: Option<&mut ndarray::Array4<f32>>,
        sums: &mut QualitySums,
    ) -> Result<()> {
        let (h, w) = (rows.len(), cols.len());
        let (_, fh, fw) = out.dim();
        let cropped = (h, w) != (fh, fw);
        let m = 1usize << self.meta.model.depth;
        let fill = self.meta.intensity.air();
        // The size slices are resampled to: the training size, or the
        // training voxel size's; else the slice's own.
        let (rh, rw) = match (self.meta.in_plane, self.meta.spacing_mm, spacing) {
            (Some(s), _, _) => s,
            (None, Some(t), Some(sp)) => crate::resample::size_at((h, w), sp, t),
            (None, Some(t), None) => {
                return Err(InferError::Other(format!(
                    "the model works at {t} mm pixels (data.spacing_mm): the input's voxel size is needed"
                )));
            }
            (None, None, _) => (h, w),
        };
        let (rh, rw) = match (self.meta.in_plane, shrink) {
            (None, f) if f > 1 => (rh.div_ceil(f), rw.div_ceil(f)),
            _ => (rh, rw),
        };
        if rh > MAX_RESAMPLED || rw > MAX_RESAMPLED {
            return Err(InferError::Other(format!(
                "resampling {h}x{w} pixels to {rh}x{rw} is beyond {MAX_RESAMPLED} per side"
            )));
        }
        let resample = (rh, rw) != (h, w);
        // The network's input: padded up to a multiple of 2^depth.
        let (nh, nw) = (rh.div_ceil(m) * m, rw.div_ceil(m) * m);
        // What one batch implies, checked before any input of that size
        // exists (the size may come from the model file's spacing_mm).
        self.meta
            .check_forward(self.batch.min(ks.len().max(1)), (nh, nw))
            .map_err(|e| InferError::Other(format!("segmenting {h}x{w} slices: {e}")))?;
        let c = 2 * self.meta.context + 1;
        for chunk in ks.chunks(self.batch) {
            let inputs: Vec<Array3<f32>> = chunk
                .par_iter()
                .map(|&k| {
                    let x = stack(k)?;
                    let x = if cropped {
                        x.slice(s![.., rows.clone(), cols.clone()]).to_owned()
                    } else {
                        x
                    };
                    let x = if resample {
                        resize(&x, (rh, rw), fill)?
                    } else {
                        x
                    };
                    Ok(pad(x, (nh, nw), fill))
                })
                .collect::<Result<_>>()?;
            let flat: Vec<f32> = inputs.iter().flat_map(|a| a.iter().copied()).collect();
            let x = Tensor::from_vec(flat, (chunk.len(), c, nh, nw), &self.device)?;
            let (scores, pq) = self.scores_quality(&x, quality)?;
            // Weights that are finite but absurd (1e38) give inf and NaN
            // scores, which would decode to all background without a word.
            let total = scores.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !total.is_finite() {
                let msg = format!(
                    "the network's outputs for slices {}..={} are not finite numbers (sum {total}): the model's weights are unusable",
                    chunk[0],
                    chunk[chunk.len() - 1]
                );
                return Err(match &self.source {
                    Some(p) => InferError::checkpoint(p, msg),
                    None => InferError::Other(msg),
                });
            }
            if let Some([p, q]) = pq {
                sums.add(self, &p, &q, (rh, rw))?;
            }
            if resample || self.meta.regions || !self.others.is_empty() {
                let probs = if !self.others.is_empty() {
                    let terms = self.members() * if self.meta.mirror { 2 } else { 1 };
                    (scores * (1.0 / terms as f64))?
                } else if self.meta.mirror {
                    (scores * 0.5)?
                } else {
                    self.probabilities(&scores)?
                };
                let probs = probs
                    .to_device(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let classes = self.meta.model.num_classes;
                let per = classes * nh * nw;
                let keep = probs_out.is_some();
                let labels: Vec<(Array2<u8>, Option<Array3<f32>>)> = (0..chunk.len())
                    .into_par_iter()
                    .map(|i| {
                        let p = Array3::from_shape_vec(
                            (classes, nh, nw),
                            probs[i * per..(i + 1) * per].to_vec(),
                        )
                        .expect("sizes agree");
                        let p = p.slice(s![.., ..rh, ..rw]).to_owned();
                        let p = if resample {
                            resize(&p, (h, w), 0.0)?
                        } else {
                            p
                        };
                        let lab = self.meta.labels.decode(p.view(), self.meta.regions);
                        Ok((lab, keep.then_some(p)))
                    })
                    .collect::<Result<_>>()?;
                for (&k, (lab, p)) in chunk.iter().zip(labels) {
                    out.slice_mut(s![k, rows.clone(), cols.clone()])
                        .assign(&lab);
                    if let (Some(dst), Some(p)) = (probs_out.as_deref_mut(), p) {
                        dst.slice_mut(s![.., k, rows.clone(), cols.clone()])
                            .assign(&p);
                    }
                }
            } else {
                let pred = scores
                    .narrow(2, 0, h)?
                    .narrow(3, 0, w)?
                    .argmax(1)?
                    .to_dtype(DType::U8)?
                    .to_device(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<u8>()?;
                let plane = h * w;
                for (i, &k) in chunk.iter().enumerate() {
                    let v = &pred[i * plane..(i + 1) * plane];
                    out.slice_mut(s![k, rows.clone(), cols.clone()])
                        .assign(&ndarray::ArrayView2::from_shape((h, w), v).expect("sizes agree"));
                }
                if let Some(dst) = probs_out.as_deref_mut() {
                    // The labels stay the logits' argmax; the probabilities
                    // as the decoding branch computes them.
                    let p = if self.meta.mirror {
                        (&scores * 0.5)?
                    } else {
                        self.probabilities(&scores)?
                    };
                    let p = p
                        .narrow(2, 0, h)?
                        .narrow(3, 0, w)?
                        .to_device(&Device::Cpu)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let classes = self.meta.model.num_classes;
                    let per = classes * h * w;
                    for (i, &k) in chunk.iter().enumerate() {
                        let v = ndarray::ArrayView3::from_shape(
                            (classes, h, w),
                            &p[i * per..(i + 1) * per],
                        )
                        .expect("sizes agree");
                        dst.slice_mut(s![.., k, rows.clone(), cols.clone()])
                            .assign(&v);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The running sums of a prediction's [`Quality`].
#[derive(Debug, Default)]
struct QualitySums {
    /// Foreground pixels of the plain and of the mirrored prediction, and
    /// of both.
    plain: u64,
    mirrored: u64,
    both: u64,
    /// Σ normalised entropy over the predicted foreground, and its pixels.
    entropy: f64,
    foreground: u64,
    measured: bool,
}

impl QualitySums {
    /// Adds a batch: `p`, `q` the probabilities `(B, C, H', W')` of the
    /// slices and of their mirror images, of which `(rh, rw)` is the image.
    fn add(
        &mut self,
        seg: &Segmenter,
        p: &Tensor,
        q: &Tensor,
        (rh, rw): (usize, usize),
    ) -> Result<()> {
        self.measured = true;
        let set = seg.meta.labels;
        let regions = seg.meta.regions;
        let host = |t: &Tensor| -> Result<ndarray::Array4<f32>> {
            let (b, c, nh, nw) = t.dims4()?;
            let v = t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            let a = ndarray::Array4::from_shape_vec((b, c, nh, nw), v)
                .map_err(|e| InferError::Other(e.to_string()))?;
            Ok(a.slice(s![.., .., ..rh, ..rw]).to_owned())
        };
        let (p, q) = (host(p)?, host(q)?);
        let classes = p.dim().1;
        for (pi, qi) in p.outer_iter().zip(q.outer_iter()) {
            let lp = set.decode(pi, regions);
            let lq = set.decode(qi, regions);
            let mean = if seg.meta.mirror {
                (&pi + &qi) * 0.5
            } else {
                pi.to_owned()
            };
            let lm = set.decode(mean.view(), regions);
            for (&a, &b) in lp.iter().zip(&lq) {
                let (fa, fb) = (set.is_foreground(a), set.is_foreground(b));
                self.plain += u64::from(fa);
                self.mirrored += u64::from(fb);
                self.both += u64::from(fa && fb);
            }
            for ((r, col), &l) in lm.indexed_iter() {
                if !set.is_foreground(l) {
                    continue;
                }
                let probs = mean.slice(s![.., r, col]);
                self.entropy += if regions {
                    let h: f64 = probs.iter().map(|&x| binary_entropy(f64::from(x))).sum();
                    h / (classes as f64 * std::f64::consts::LN_2)
                } else {
                    let h: f64 = probs
                        .iter()
                        .map(|&x| {
                            let x = f64::from(x);
                            if x > 0.0 { -x * x.ln() } else { 0.0 }
                        })
                        .sum();
                    h / (classes.max(2) as f64).ln()
                };
                self.foreground += 1;
            }
        }
        Ok(())
    }

    /// The measures (none when nothing was measured; a Dice of 1 when
    /// neither prediction has foreground, no entropy without foreground).
    fn finish(&self) -> Quality {
        if !self.measured {
            return Quality::default();
        }
        let den = self.plain + self.mirrored;
        Quality {
            mirror_dice: Some(if den == 0 {
                1.0
            } else {
                2.0 * self.both as f64 / den as f64
            }),
            mean_foreground_entropy: (self.foreground > 0)
                .then(|| self.entropy / self.foreground as f64),
        }
    }
}

/// The entropy of a Bernoulli(`x`) in nats.
fn binary_entropy(x: f64) -> f64 {
    let h = |v: f64| if v > 0.0 { -v * v.ln() } else { 0.0 };
    h(x) + h(1.0 - x)
}

/// `acc + t` (`t` alone at first).
fn add(acc: Option<Tensor>, t: Tensor) -> candle_core::Result<Tensor> {
    match acc {
        None => Ok(t),
        Some(a) => a + t,
    }
}

/// What makes two models' predictions not averageable, if anything.
pub(crate) fn disagreement(a: &ModelMeta, b: &ModelMeta) -> Option<String> {
    let differ = |what: &str, x: String, y: String| (x != y).then(|| format!("{what} {x} vs {y}"));
    differ("label set", a.labels.name().into(), b.labels.name().into())
        .or_else(|| differ("regions", a.regions.to_string(), b.regions.to_string()))
        .or_else(|| {
            differ(
                "outputs",
                a.model.num_classes.to_string(),
                b.model.num_classes.to_string(),
            )
        })
        .or_else(|| differ("context", a.context.to_string(), b.context.to_string()))
        .or_else(|| {
            differ(
                "intensity window",
                format!("{:?}", a.intensity),
                format!("{:?}", b.intensity),
            )
        })
        .or_else(|| {
            differ(
                "in-plane size",
                format!("{:?}", a.in_plane),
                format!("{:?}", b.in_plane),
            )
        })
        .or_else(|| {
            differ(
                "voxel size",
                format!("{:?}", a.spacing_mm),
                format!("{:?}", b.spacing_mm),
            )
        })
        .or_else(|| {
            differ(
                "depth",
                a.model.depth.to_string(),
                b.model.depth.to_string(),
            )
        })
}

/// Checks a loaded model's variables: every value finite, and BatchNorm's
/// `running_var` not negative (its square root would be NaN). A NaN weight
/// predicted all background without a word. (Finite but absurd weights
/// are caught by their outputs, in [`Segmenter::segment_with`].)
fn check_weights(varmap: &candle_nn::VarMap) -> std::result::Result<(), String> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let values = data[name]
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("{name}: {}", candle_text(&e)))?;
        let bad = |v: f32| !v.is_finite() || (name.ends_with("running_var") && v < 0.0);
        if let Some(i) = values.iter().position(|&v| bad(v)) {
            let n = values.iter().filter(|&&v| bad(v)).count();
            return Err(format!(
                "tensor {name} holds {:?} at index {i} ({n} such values): weights must be finite, running variances not negative",
                values[i]
            ));
        }
    }
    Ok(())
}

/// Largest side a slice is resampled to (no allocation sized by an
/// unchecked header's voxel size).
const MAX_RESAMPLED: usize = 8192;

/// Bilinear resize (`align_corners = false`) through the augmentation's
/// warp with identity parameters, on the image alone.
fn resize(x: &Array3<f32>, size: (usize, usize), fill: f32) -> Result<Array3<f32>> {
    let (_, h, w) = x.dim();
    let mut p = AugmentParams::identity((h, w), 0, fill);
    p.out_size = size;
    Ok(apply_image(&p, x.view())?)
}

/// Pads at the bottom and right with `fill` up to `size` (no copy when the
/// size already fits).
fn pad(x: Array3<f32>, (nh, nw): (usize, usize), fill: f32) -> Array3<f32> {
    let (c, h, w) = x.dim();
    if (h, w) == (nh, nw) {
        return x;
    }
    let mut out = Array3::from_elem((c, nh, nw), fill);
    out.slice_mut(s![.., ..h, ..w]).assign(&x);
    out
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use kseg_model::{ResUNet, ResUNetConfig};
    use ndarray::{Array3, Axis, s};

    use super::*;

    /// A small seeded model whose predictions are not all background.
    fn segmenter(mirror: bool) -> Segmenter {
        let cfg = ResUNetConfig {
            base_channels: 4,
            depth: 2,
            ..Default::default()
        };
        let (model, _) = ResUNet::init(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
        let mut meta = ModelMeta::new(cfg);
        meta.mirror = mirror;
        Segmenter::new(model, meta, Device::Cpu, 4)
    }

    /// The frozen engine (the loaders' default on the CPU) gives the
    /// labels of the training graph's evaluation mode, with and without
    /// mirroring and for an ensemble.
    #[test]
    fn frozen_segmenter_gives_the_graphs_labels() {
        for mirror in [false, true] {
            let want = segmenter(mirror).segment_volume(volume().view()).unwrap();
            assert!(want.iter().any(|&v| v != 0));
            let frozen = segmenter(mirror).freeze().unwrap();
            assert!(frozen.model.frozen.is_some());
            assert_eq!(frozen.segment_volume(volume().view()).unwrap(), want);
            let mut pair = segmenter(mirror);
            pair.others.push(pair.model.clone());
            let want = pair.segment_volume(volume().view()).unwrap();
            let pair = pair.freeze().unwrap();
            assert!(pair.others[0].frozen.is_some());
            assert_eq!(pair.segment_volume(volume().view()).unwrap(), want);
        }
    }

    /// `set_precision` re-freezes every model of an ensemble in int8 or
    /// bf16 (labels mostly f32's on this tiny untrained model) and back in f32
    /// (f32's labels exactly), and leaves an unfrozen segmenter alone.
    #[test]
    fn precision_switches_every_model() {
        let mut pair = segmenter(false).freeze().unwrap();
        pair.others.push(pair.model.clone());
        let want = pair.segment_volume(volume().view()).unwrap();
        for lower in [Precision::Int8, Precision::Bf16] {
            pair.set_precision(lower).unwrap();
            for net in std::iter::once(&pair.model).chain(&pair.others) {
                let f = net.frozen.as_ref().unwrap();
                assert_eq!(f.options().precision, lower);
            }
            let got = pair.segment_volume(volume().view()).unwrap();
            let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
            assert!(
                same as f64 > 0.95 * want.len() as f64,
                "{lower:?}: {same} of {}",
                want.len()
            );
            pair.set_precision(Precision::F32).unwrap();
            assert!(!pair.model.is_lowered() && !pair.others[0].is_lowered());
            assert_eq!(pair.segment_volume(volume().view()).unwrap(), want);
        }
        // A segmenter on the training graph stays on it.
        let mut graph = segmenter(false);
        graph.set_precision(Precision::F32).unwrap();
        assert!(graph.model.frozen.is_none());
    }

    /// The fast mode against its definition: the crop is
    /// `FastMode::window`'s from the full pass's labels at the sampled
    /// slices (hand-checked in `fast.rs`), the slab the run of slices with
    /// foreground through the sampled ones and one slice beyond each end;
    /// outside them everything is background, inside are the plain path's
    /// labels of the cropped sub-volume; with a crop of the whole plane
    /// (the coarse pass at full or at half resolution) the full pass's own
    /// labels.
    #[test]
    fn the_fast_mode_segments_the_window_only() {
        // Air, a textured block on slices 9..15 the seeded model finds
        // foreground in, a region smaller than the plane, and a second one
        // far from it on slice 10 alone, which the coarse pass (slices 0,
        // 4, 8, 12, ...) does not see, not even as a neighbour: the crop
        // leaves it out.
        let hu = Array3::from_shape_fn((24, 64, 64), |(z, r, c)| {
            let a = (9..15).contains(&z) && (18..40).contains(&r) && (24..44).contains(&c);
            let b = z == 10 && (46..62).contains(&r) && (2..16).contains(&c);
            if a || b {
                (((z * 7 + r * 13 + c * c * 5) % 23) as f32 - 11.0) * 40.0
            } else {
                -1000.0
            }
        });
        // The seeded model, its background bias raised until air is
        // background and the block still has foreground.
        let cfg = ResUNetConfig {
            base_channels: 4,
            depth: 2,
            ..Default::default()
        };
        let (model, varmap) = ResUNet::init(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
        // One slice per forward pass: a slice's labels do not depend on
        // which slices share its batch (the tiling does).
        let seg = Segmenter::new(model, ModelMeta::new(cfg), Device::Cpu, 1);
        let bias = varmap
            .data()
            .lock()
            .unwrap()
            .get("head.classifier.bias")
            .unwrap()
            .clone();
        let b0: Vec<f32> = bias.to_vec1().unwrap();
        // 1 mm pixels: the margin in pixels is the margin in mm.
        let sp = Some((1.0, 1.0));
        let confined = (0..200).map(|i| i as f32 * 0.05).find(|&raise| {
            let mut b = b0.clone();
            b[0] += raise;
            bias.set(&Tensor::new(b, &Device::Cpu).unwrap()).unwrap();
            let full = seg.segment_volume_at(hu.view(), sp).unwrap();
            let fg = |k: usize| full.index_axis(Axis(0), k).iter().any(|&v| v != 0);
            (8..16).any(fg) && !(0..24).filter(|k| !(8..16).contains(k)).any(fg)
        });
        assert!(
            confined.is_some(),
            "no background bias confines the foreground"
        );
        let full = seg.segment_volume_at(hu.view(), sp).unwrap();
        // The full pass's foreground is one run of slices inside 8..16.
        let fg = |l: &Array3<u8>, k: usize| l.index_axis(Axis(0), k).iter().any(|&v| v != 0);
        for (margin_mm, shrink, whole) in [(100.0, 1, true), (100.0, 2, true), (4.0, 1, false)] {
            let fast = FastMode {
                stride: 4,
                shrink,
                margin_mm,
            };
            let mut fs = seg.clone();
            fs.set_fast(Some(fast));
            let got = fs.segment_volume_at(hu.view(), sp).unwrap();
            let case = format!("margin {margin_mm} shrink {shrink}");
            if whole {
                // Whole slices: the slab grows over every slice with
                // foreground, so the full pass's labels are all there.
                assert!(got.iter().any(|&v| v != 0), "{case}");
                assert_eq!(got, full, "{case}");
                continue;
            }
            let sampled = fast.coarse_slices(24);
            let win = fast
                .window(&full.select(Axis(0), &sampled), &sampled, sp, 4)
                .expect("the model finds foreground");
            assert!(win.slices.len() < 8, "{win:?}: the slab is not grown yet");
            assert!(
                (win.rows.len(), win.cols.len()) != (64, 64),
                "{win:?}: no crop"
            );
            // The crop: the plain path's labels of the cropped sub-volume
            // (the same stacks, cropped) on its run of slices with
            // foreground through the sampled ones, and one slice beyond
            // each end (where growing stopped); background elsewhere.
            let sub = hu
                .slice(s![.., win.rows.clone(), win.cols.clone()])
                .to_owned();
            let sub = seg.segment_volume_at(sub.view(), sp).unwrap();
            let (mut a, mut b) = (win.slices.start, win.slices.end);
            while a > 0 && fg(&sub, a - 1) {
                a -= 1;
            }
            while b < 24 && fg(&sub, b) {
                b += 1;
            }
            let slab = a.saturating_sub(1)..(b + 1).min(24);
            assert!(slab.len() < 24, "{slab:?}");
            for ((k, r, c), &v) in got.indexed_iter() {
                let inside = slab.contains(&k) && win.rows.contains(&r) && win.cols.contains(&c);
                let want = if inside {
                    sub[[k, r - win.rows.start, c - win.cols.start]]
                } else {
                    0
                };
                assert_eq!(v, want, "({k}, {r}, {c}) {slab:?} {win:?}");
            }
            assert!(got.iter().any(|&v| v != 0));
            // The crop mattered: the full pass has foreground outside it.
            let outside = full.indexed_iter().any(|((k, r, c), &v)| {
                v != 0 && !(win.rows.contains(&r) && win.cols.contains(&c) && slab.contains(&k))
            });
            assert!(outside, "{win:?}");
        }
        assert!(
            (0..24)
                .filter(|&k| fg(&full, k))
                .all(|k| (8..16).contains(&k))
        );
    }

    fn volume() -> Array3<f32> {
        Array3::from_shape_fn((5, 16, 16), |(z, r, c)| {
            (((z * 7 + r * 13 + c * c * 5) % 23) as f32 - 11.0) * 40.0
        })
    }

    /// The mirror agreement is the Dice of the foreground between the
    /// prediction of the volume and the mirrored prediction of its mirror
    /// image (16² slices: no padding, so both are exact mirror images),
    /// and measuring it changes no label.
    #[test]
    fn mirror_dice_is_the_dice_of_the_two_predictions() {
        let hu = volume();
        let plain = segmenter(false);
        let a = plain.segment_volume(hu.view()).unwrap();
        let flipped = hu.slice(s![.., .., ..;-1]).to_owned();
        let b = plain.segment_volume(flipped.view()).unwrap();
        let b = b.slice(s![.., .., ..;-1]).to_owned();
        let fg = |v: &Array3<u8>| v.iter().map(|&x| u8::from(x > 0)).collect::<Vec<_>>();
        let (fa, fb) = (fg(&a), fg(&b));
        let both = fa
            .iter()
            .zip(&fb)
            .filter(|(x, y)| **x == 1 && **y == 1)
            .count();
        let den = fa.iter().filter(|&&x| x == 1).count() + fb.iter().filter(|&&x| x == 1).count();
        assert!(den > 0, "the test model predicts no foreground");
        let want = 2.0 * both as f64 / den as f64;
        for mirror in [false, true] {
            let seg = segmenter(mirror);
            let (labels, q) = seg.segment_volume_quality(hu.view(), None).unwrap();
            assert_eq!(
                labels,
                seg.segment_volume(hu.view()).unwrap(),
                "mirror {mirror}"
            );
            let d = q.mirror_dice.expect("measured");
            assert!((d - want).abs() < 1e-12, "mirror {mirror}: {d} vs {want}");
            let e = q.mean_foreground_entropy.expect("some foreground");
            assert!((0.0..=1.0).contains(&e), "{e}");
        }
    }

    /// Two models saved and loaded as an ensemble: its labels are the
    /// argmax of the mean of the two softmaxes, computed here with the
    /// models' own forward and candle's softmax; and a model whose
    /// context differs is refused, naming both files.
    #[test]
    fn an_ensemble_averages_the_models_probabilities() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ResUNetConfig {
            base_channels: 4,
            depth: 2,
            ..Default::default()
        };
        let mut files = Vec::new();
        let mut models = Vec::new();
        for seed in [3u64, 9] {
            let (model, vm) = ResUNet::init(&cfg, seed, DType::F32, &Device::Cpu).unwrap();
            let f = tmp.path().join(format!("m{seed}.safetensors"));
            crate::save_model(&vm, &ModelMeta::new(cfg), &f).unwrap();
            files.push(f);
            models.push(model);
        }
        let ens = Segmenter::load_ensemble(&files, &Device::Cpu, 4).unwrap();
        assert_eq!(ens.members(), 2);
        let hu = volume();
        let got = ens.segment_volume(hu.view()).unwrap();
        let int = ModelMeta::new(cfg).intensity;
        let (d, h, w) = hu.dim();
        for k in 0..d {
            let x = stack_slices(hu.view(), k, 1, &int).unwrap();
            let x = Tensor::from_vec(
                x.iter().copied().collect::<Vec<_>>(),
                (1, 3, h, w),
                &Device::Cpu,
            )
            .unwrap();
            let p =
                |m: &ResUNet| candle_nn::ops::softmax(&m.forward_t(&x, false).unwrap(), 1).unwrap();
            let mean = ((p(&models[0]) + p(&models[1])).unwrap() * 0.5).unwrap();
            let want = mean
                .argmax(1)
                .unwrap()
                .to_dtype(DType::U8)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u8>()
                .unwrap();
            let have: Vec<u8> = got.index_axis(Axis(0), k).iter().copied().collect();
            assert_eq!(have, want, "slice {k}");
        }
        // A model of another context cannot join.
        let cfg5 = ResUNetConfig {
            in_channels: 5,
            ..cfg
        };
        let (_, vm) = ResUNet::init(&cfg5, 1, DType::F32, &Device::Cpu).unwrap();
        let mut meta = ModelMeta::new(cfg5);
        meta.context = 2;
        let odd = tmp.path().join("five.safetensors");
        crate::save_model(&vm, &meta, &odd).unwrap();
        let e = Segmenter::load_ensemble(&[files[0].clone(), odd], &Device::Cpu, 4)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("five.safetensors")
                && e.contains("m3.safetensors")
                && e.contains("context 1 vs 2"),
            "{e}"
        );
    }
}
