//! The cross-entropy's f32 value and gradient at the reference method's scale (a batch of
//! 512×512 slices) against the definition evaluated in f64 by hand.
//!
//! Found on an H200 (scripts/gpu-check.sh): CUDA's f32 loss agreed with the
//! f64 reference to 1.5e-6, the CPU's f32 loss only to 3.6e-4, because
//! candle's CPU `sum_all` adds millions of values into one f32 accumulator
//! and each addition rounds to its precision (past 2^21 an added class weight
//! of 0.3 becomes 0.25).

use candle_core::{DType, Device, Tensor, Var};
use kseg_loss::weighted_cross_entropy;

/// A small deterministic generator (64-bit LCG, top bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `sum_i w[y_i] (-log softmax(x_i)[y_i]) / sum_i w[y_i]` and its gradient
/// `w[y_i] (softmax(x_i) - onehot(y_i)) / sum_i w[y_i]`, in f64, pixel by
/// pixel, from NCHW logits.
fn reference(
    x: &[f32],
    y: &[u32],
    w: Option<&[f64]>,
    (b, c, hw): (usize, usize, usize),
) -> (f64, Vec<f64>) {
    let (mut num, mut den) = (0f64, 0f64);
    let mut grad = vec![0f64; x.len()];
    for n in 0..b {
        for p in 0..hw {
            let at = |k: usize| (n * c + k) * hw + p;
            let m = (0..c).map(|k| x[at(k)] as f64).fold(f64::MIN, f64::max);
            let z: f64 = (0..c).map(|k| (x[at(k)] as f64 - m).exp()).sum();
            let label = y[n * hw + p] as usize;
            let wy = w.map_or(1.0, |w| w[label]);
            num += wy * -(x[at(label)] as f64 - m - z.ln());
            den += wy;
            for k in 0..c {
                let s = (x[at(k)] as f64 - m).exp() / z;
                grad[at(k)] = wy * (s - if k == label { 1.0 } else { 0.0 });
            }
        }
    }
    grad.iter_mut().for_each(|g| *g /= den);
    (num / den, grad)
}

fn max_rel(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0f64, f64::max)
        / scale
}

#[test]
fn f32_value_and_gradient_match_f64_at_a_batch_of_512_slices() {
    let (b, c, h, w) = (4, 3, 512, 512);
    let mut rng = Lcg(7);
    let x: Vec<f32> = (0..b * c * h * w)
        .map(|_| (6.0 * rng.next() - 3.0) as f32)
        .collect();
    // Mostly background, like CT slices: 80% class 0, 15% 1, 5% 2.
    let y: Vec<u32> = (0..b * h * w)
        .map(|_| match rng.next() {
            r if r < 0.80 => 0,
            r if r < 0.95 => 1,
            _ => 2,
        })
        .collect();
    let dev = Device::Cpu;
    let labels = Tensor::from_vec(y.clone(), (b, h, w), &dev).unwrap();
    let class_w = [0.3, 1.0, 2.5];
    for weights in [Some(&class_w[..]), None] {
        let logits =
            Var::from_tensor(&Tensor::from_vec(x.clone(), (b, c, h, w), &dev).unwrap()).unwrap();
        let wt = weights
            .map(|w| Tensor::from_vec(w.iter().map(|&v| v as f32).collect(), c, &dev).unwrap());
        let loss = weighted_cross_entropy(&logits, &labels, wt.as_ref()).unwrap();
        assert_eq!(loss.dtype(), DType::F32);
        let value = loss.to_scalar::<f32>().unwrap() as f64;
        let grad: Vec<f32> = loss
            .backward()
            .unwrap()
            .get(&logits)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (want, want_grad) = reference(&x, &y, weights, (b, c, h * w));
        let rel = (value - want).abs() / want.abs();
        assert!(
            rel < 1e-6,
            "weights {weights:?}: value {value} vs f64 {want} (rel {rel:.2e})"
        );
        let g = max_rel(&grad, &want_grad);
        assert!(g < 1e-5, "weights {weights:?}: gradient rel {g:.2e}");
    }
}
