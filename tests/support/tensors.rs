//! Tensor helpers shared by the test harnesses of crates with tensors
//! (included with `#[path]` beside `mod.rs`).
#![allow(dead_code)]

/// The largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// A tensor of standard normal f64 values drawn from ChaCha8 seeded by
/// `seed` (Box-Muller): candle's `Tensor::randn` on the CPU draws from an
/// unseeded generator, which makes finite-difference checks flaky (an
/// unlucky draw puts a perturbation across a LeakyReLU kink).
pub fn seeded_randn(shape: &[usize], seed: u64, dev: &candle_core::Device) -> candle_core::Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    candle_core::Tensor::from_vec(v, shape, dev).unwrap()
}
