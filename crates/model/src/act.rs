//! LeakyReLU, the Res-U-Net's activation: as a tensor op ([`leaky_relu`])
//! and as host closures for the fused CPU ops.

use candle_core::{Result, Tensor};

/// LeakyReLU as `x >= 0 ? x : a·x`: candle's `ops::leaky_relu` is correct
/// but keeps many activation copies; this form has a cheap, correct
/// backward.
pub fn leaky_relu(x: &Tensor, negative_slope: f64) -> Result<Tensor> {
    x.ge(0.0)?.where_cond(x, &x.affine(negative_slope, 0.0)?)
}

/// LeakyReLU as a closure that holds its slope by value. Made inside each
/// parallel closure: a slope read through a captured reference, and only
/// on the negative side, kept the per-plane loops from vectorising (scalar
/// loads and branches; the 128² training step was 20% slower).
#[inline(always)]
pub(crate) fn leaky(slope: f32) -> impl Fn(f32) -> f32 + Copy {
    move |z| if z >= 0.0 { z } else { slope * z }
}

/// The gradient through [`leaky`], read off the sign of its output `y`.
#[inline(always)]
pub(crate) fn leaky_grad(slope: f32) -> impl Fn(f32, f32) -> f32 + Copy {
    move |y, g| if y >= 0.0 { g } else { slope * g }
}
