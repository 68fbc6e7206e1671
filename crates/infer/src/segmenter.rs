//! Whole-volume inference: every slice of a volume, stacked with its
//! neighbours, normalised and brought to the network's size as in training,
//! segmented in batches, and the labels brought back to the volume's grid.

use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use kseg_augment::{AugmentParams, apply_image};
use kseg_metrics::Activation;
use kseg_model::ResUNet;
use kseg_volume::{CachedCase, stack_slices};
use ndarray::{Array2, Array3, ArrayView3, Axis, s};
use rayon::prelude::*;

use crate::error::{InferError, Result, candle_text};
use crate::model_file::{ModelMeta, model_file, read_meta};

/// A model with its preprocessing, ready to segment volumes.
#[derive(Clone)]
pub struct Segmenter {
    model: ResUNet,
    meta: ModelMeta,
    device: Device,
    batch: usize,
    /// The model file it was loaded from (named in errors).
    source: Option<std::path::PathBuf>,
}

impl Segmenter {
    /// A segmenter of `model` with the preprocessing of `meta`, `batch` slices per forward pass.
    pub fn new(model: ResUNet, meta: ModelMeta, device: Device, batch: usize) -> Segmenter {
        Segmenter {
            model,
            meta,
            device,
            batch: batch.max(1),
            source: None,
        }
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
        Ok(seg)
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

    /// [`Segmenter::scores`] on the calling thread.
    fn scores_here(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.model.forward_t(x, false)?;
        if !self.meta.mirror {
            return Ok(logits);
        }
        let w = x.dim(3)?;
        let rev: Vec<u32> = (0..w as u32).rev().collect();
        let rev = Tensor::from_vec(rev, w, x.device())?;
        let mirrored = self.model.forward_t(&x.index_select(&rev, 3)?, false)?;
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
            .check_forward(self.batch.min(depth.max(1)), (nh, nw))
            .map_err(|e| InferError::Other(format!("segmenting {h}x{w} slices: {e}")))?;
        let c = 2 * self.meta.context + 1;
        let mut out = Array3::<u8>::zeros((depth, h, w));
        let ks: Vec<usize> = (0..depth).collect();
        for chunk in ks.chunks(self.batch) {
            let inputs: Vec<Array3<f32>> = chunk
                .par_iter()
                .map(|&k| {
                    let x = stack(k)?;
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
            let scores = self.scores(&x)?;
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
            if resample || self.meta.regions {
                let probs = if self.meta.mirror {
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
                let labels: Vec<Array2<u8>> = (0..chunk.len())
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
                        Ok(self.meta.labels.decode(p.view(), self.meta.regions))
                    })
                    .collect::<Result<_>>()?;
                for (&k, lab) in chunk.iter().zip(labels) {
                    out.index_axis_mut(Axis(0), k).assign(&lab);
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
                    out.index_axis_mut(Axis(0), k)
                        .assign(&ndarray::ArrayView2::from_shape((h, w), v).expect("sizes agree"));
                }
            }
        }
        if let Some(keep) = self.meta.keep_largest {
            crate::postprocess::keep_largest_components(&mut out, keep, self.meta.labels);
        }
        Ok(out)
    }
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
