//! Input checks shared by the losses: shapes, label ranges, NaN.

use candle_core::{DType, Result, Tensor, bail};
use rayon::prelude::*;

/// Checks `(B, C, H, W)` against `(B, H, W)` and returns the four sizes.
pub(crate) fn check_logits_labels(
    x: &Tensor,
    labels: &Tensor,
    what: &str,
) -> Result<(usize, usize, usize, usize)> {
    let Ok((b, c, h, w)) = x.dims4() else {
        bail!(
            "{what}: input must be (B, C, H, W), got shape {:?}",
            x.dims()
        );
    };
    if labels.dims() != [b, h, w] {
        bail!(
            "{what}: labels have shape {:?}, expected [{b}, {h}, {w}] to match input {:?}",
            labels.dims(),
            x.dims()
        );
    }
    if !x.dtype().is_float() {
        bail!("{what}: input must be f32 or f64, got {:?}", x.dtype());
    }
    if c == 0 {
        bail!("{what}: input has no classes");
    }
    Ok((b, c, h, w))
}

/// Copies the labels to the host as u32 and checks that every label is
/// below `c` or equal to `ignore`; returns them with the number of labels
/// that are not ignored.
pub(crate) fn host_labels(
    labels: &Tensor,
    c: usize,
    ignore: Option<u32>,
) -> Result<(Vec<u32>, usize)> {
    let host = labels
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let mut valid = 0;
    for (i, &l) in host.iter().enumerate() {
        if Some(l) == ignore {
            continue;
        }
        if l as usize >= c {
            bail!(
                "label value {l} at flat index {i} is not a class (input has {c} classes{})",
                ignore
                    .map(|g| format!(", ignore label {g}"))
                    .unwrap_or_default()
            );
        }
        valid += 1;
    }
    Ok((host, valid))
}

/// Copies `(C,)` class weights to the host as f64 and checks that there is
/// one per class and that each is finite and non-negative.
pub(crate) fn host_weights(weights: &Tensor, c: usize) -> Result<Vec<f64>> {
    if weights.dims() != [c] {
        bail!(
            "cross-entropy: class weights have shape {:?}, expected [{c}]",
            weights.dims()
        );
    }
    let host = weights.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    if let Some(v) = host.iter().find(|v| !v.is_finite() || **v < 0.0) {
        bail!("cross-entropy: class weight {v} is not a finite non-negative number");
    }
    Ok(host)
}

/// Fails on the first value of a flattened `(B, C, H, W)` array that is not
/// finite, naming it `what` and giving its position.
pub(crate) fn check_finite(values: &[f64], [_, c, h, w]: [usize; 4], what: &str) -> Result<()> {
    const CHUNK: usize = 4096;
    let bad = values
        .par_chunks(CHUNK)
        .position_first(|ch| ch.iter().any(|v| !v.is_finite()))
        .and_then(|ci| {
            let at = values[ci * CHUNK..].iter().position(|v| !v.is_finite())?;
            Some(ci * CHUNK + at)
        });
    if let Some(i) = bad {
        let hw = h * w;
        bail!(
            "{what} {} at [{}, {}, {}, {}] is not finite",
            values[i],
            i / (c * hw),
            (i / hw) % c,
            (i % hw) / w,
            i % w
        );
    }
    Ok(())
}
