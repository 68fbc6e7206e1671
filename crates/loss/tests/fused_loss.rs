//! `SegLoss::forward` on the CPU (one host computation, crates/loss/src/seg_loss/cpu.rs)
//! against `SegLoss::forward_composed` (the same loss as candle ops:
//! log-softmax, gather, softmax and the Lovász surrogate, with candle's own
//! backward): values and the logit-gradients of all three parts. The
//! composition is itself checked against PyTorch and the reference Lovász
//! code in losses_reference.rs beside this file, and `forward` against the same
//! fixture and finite differences there.

use candle_core::{DType, Device, Tensor, Var};
use kseg_loss::{Classes, LossParts, LovaszConfig, SegLoss, SegLossConfig};
use rand::{Rng, SeedableRng};

const IGNORE: u32 = 255;

/// Seeded logits in `[-4, 4)` and labels `0..3`, a tenth of them `IGNORE`
/// when `with_ignore`.
fn problem(dims: (usize, usize, usize, usize), with_ignore: bool, seed: u64) -> (Vec<f64>, Tensor) {
    let (b, c, h, w) = dims;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = (0..b * c * h * w)
        .map(|_| rng.random_range(-4.0..4.0))
        .collect();
    let y: Vec<u32> = (0..b * h * w)
        .map(|_| {
            if with_ignore && rng.random_bool(0.1) {
                IGNORE
            } else {
                rng.random_range(0..c as u32)
            }
        })
        .collect();
    (x, Tensor::from_vec(y, (b, h, w), &Device::Cpu).unwrap())
}

/// Max |a - b| relative to max |b|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The three values and the gradient of each part with respect to the
/// logits (each from its own graph), as f64.
fn evaluate(
    run: impl Fn(&Tensor) -> LossParts,
    x: &[f64],
    shape: (usize, usize, usize, usize),
    dtype: DType,
) -> Vec<(f64, Vec<f64>)> {
    (0..3)
        .map(|part| {
            let t = Tensor::from_vec(x.to_vec(), shape, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let var = Var::from_tensor(&t).unwrap();
            let parts = run(var.as_tensor());
            let s = [&parts.total, &parts.ce, &parts.lovasz][part];
            let value = s.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            // candle leaves out the gradient of a value it knows is
            // constant (the composition's zero cross-entropy is 0 · logits).
            let g = match s.backward().unwrap().get(&var) {
                Some(g) => g
                    .to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                None => vec![0.0; x.len()],
            };
            (value, g)
        })
        .collect()
}

fn configs() -> Vec<(&'static str, SegLossConfig, Option<[f64; 3]>, bool)> {
    vec![
        (
            "default, weighted",
            SegLossConfig::default(),
            Some([0.3, 1.0, 2.5]),
            false,
        ),
        ("default, unweighted", SegLossConfig::default(), None, false),
        (
            "per image, all classes, λ 2",
            SegLossConfig {
                lambda: 2.0,
                lovasz: LovaszConfig {
                    per_image: true,
                    classes: Classes::All,
                    ignore: None,
                },
            },
            Some([1.0, 0.2, 4.0]),
            false,
        ),
        (
            "ignore label, weighted, λ 0.5",
            SegLossConfig {
                lambda: 0.5,
                lovasz: LovaszConfig {
                    ignore: Some(IGNORE),
                    ..Default::default()
                },
            },
            Some([0.3, 1.0, 2.5]),
            true,
        ),
        (
            "ignore label, unweighted, per image",
            SegLossConfig {
                lambda: 1.0,
                lovasz: LovaszConfig {
                    ignore: Some(IGNORE),
                    per_image: true,
                    ..Default::default()
                },
            },
            None,
            true,
        ),
    ]
}

fn compare(dtype: DType, value_tol: f64, grad_tol: f64) {
    let shape = (3, 3, 13, 17);
    for (seed, (name, cfg, weights, with_ignore)) in configs().into_iter().enumerate() {
        let (x, labels) = problem(shape, with_ignore, seed as u64);
        let weights = weights.map(|w| {
            Tensor::new(&w, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        });
        let loss = SegLoss::new(cfg, weights).unwrap();
        let fused = evaluate(|t| loss.forward(t, &labels).unwrap(), &x, shape, dtype);
        let composed = evaluate(
            |t| loss.forward_composed(t, &labels).unwrap(),
            &x,
            shape,
            dtype,
        );
        for (part, ((fv, fg), (cv, cg))) in ["total", "ce", "lovasz"]
            .iter()
            .zip(fused.iter().zip(&composed))
        {
            assert!(
                *cv > 0.1,
                "{name} {part}: a test value that means something ({cv})"
            );
            assert!(
                ((fv - cv) / cv).abs() < value_tol,
                "{name} {dtype:?} {part}: fused {fv} vs composed {cv}"
            );
            let err = rel_err(fg, cg);
            assert!(
                err < grad_tol,
                "{name} {dtype:?} {part}: gradient relative error {err}"
            );
        }
    }
}

#[test]
fn fused_loss_matches_the_candle_op_composition_f64() {
    compare(DType::F64, 1e-12, 1e-10);
}

#[test]
fn fused_loss_matches_the_candle_op_composition_f32() {
    // The composition rounds its softmax and products to f32; the fused
    // loss works in f64 and rounds only its results.
    compare(DType::F32, 1e-5, 1e-4);
}

#[test]
fn non_contiguous_logits_give_the_same_loss() {
    let (x, labels) = problem((2, 3, 5, 7), false, 11);
    let loss = SegLoss::new(SegLossConfig::default(), None).unwrap();
    let t = Tensor::from_vec(x, (2, 3, 5, 7), &Device::Cpu).unwrap();
    // The same values, stored as (B, C, W, H) and viewed transposed.
    let stored = t.transpose(2, 3).unwrap().contiguous().unwrap();
    let view = stored.transpose(2, 3).unwrap();
    assert!(!view.is_contiguous());
    let total = |x: &Tensor| {
        let parts = loss.forward(x, &labels).unwrap();
        parts.total.to_scalar::<f64>().unwrap()
    };
    assert_eq!(total(&t), total(&view));
}

#[test]
fn nothing_to_learn_gives_zero_and_zero_gradient() {
    let dev = Device::Cpu;
    let shape = (1, 3, 2, 2);
    let (x, _) = problem(shape, false, 3);
    // Every pixel ignored; then only a class of weight 0 present (the CE is
    // 0, the Lovász term is not).
    let all_ignored = Tensor::full(IGNORE, (1, 2, 2), &dev).unwrap();
    let cfg = SegLossConfig {
        lovasz: LovaszConfig {
            ignore: Some(IGNORE),
            ..Default::default()
        },
        ..Default::default()
    };
    let loss = SegLoss::new(cfg, None).unwrap();
    for (value, g) in evaluate(
        |t| loss.forward(t, &all_ignored).unwrap(),
        &x,
        shape,
        DType::F64,
    ) {
        assert_eq!(value, 0.0);
        assert!(g.iter().all(|&v| v == 0.0), "{g:?}");
    }
    let zeros = Tensor::zeros((1, 2, 2), DType::U32, &dev).unwrap();
    let weights = Tensor::new(&[0.0f64, 1.0, 1.0], &dev).unwrap();
    let loss = SegLoss::new(SegLossConfig::default(), Some(weights)).unwrap();
    let fused = evaluate(|t| loss.forward(t, &zeros).unwrap(), &x, shape, DType::F64);
    let composed = evaluate(
        |t| loss.forward_composed(t, &zeros).unwrap(),
        &x,
        shape,
        DType::F64,
    );
    let (ce, ce_grad) = &fused[1];
    assert_eq!(*ce, 0.0);
    assert!(ce_grad.iter().all(|&v| v == 0.0));
    assert!(fused[2].0 > 0.0);
    assert!(rel_err(&fused[0].1, &composed[0].1) < 1e-12);
}

#[test]
fn bad_input_is_a_clear_error() {
    let dev = Device::Cpu;
    let loss = SegLoss::new(SegLossConfig::default(), None).unwrap();
    let mut x = vec![0f32; 2 * 3 * 4 * 4];
    x[16 * 3 + 4 + 2] = f32::NAN; // [1, 0, 1, 2]
    let x = Tensor::from_vec(x, (2, 3, 4, 4), &dev).unwrap();
    let y = Tensor::zeros((2, 4, 4), DType::U32, &dev).unwrap();
    let msg = loss.forward(&x, &y).unwrap_err().to_string();
    assert!(msg.contains("NaN at [1, 0, 1, 2] is not finite"), "{msg}");
    let y = Tensor::zeros((2, 4, 5), DType::U32, &dev).unwrap();
    let msg = loss.forward(&x, &y).unwrap_err().to_string();
    assert!(
        msg.contains("[2, 4, 5]") && msg.contains("[2, 4, 4]"),
        "{msg}"
    );
    let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
    let mut bad = vec![0u32; 32];
    bad[17] = 3;
    let y = Tensor::from_vec(bad, (2, 4, 4), &dev).unwrap();
    let msg = loss.forward(&x, &y).unwrap_err().to_string();
    assert!(msg.contains("label value 3 at flat index 17"), "{msg}");
    let weights = Tensor::new(&[1f32, f32::INFINITY, 1.0], &dev).unwrap();
    let y = Tensor::zeros((2, 4, 4), DType::U32, &dev).unwrap();
    let msg = SegLoss::new(SegLossConfig::default(), Some(weights))
        .unwrap()
        .forward(&x, &y)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("class weight inf"), "{msg}");
}
