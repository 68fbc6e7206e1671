//! kseg-loss against testdata/losses_reference.json: values and
//! logit-gradients computed in float64 by the reference Lovász-Softmax code
//! (bermanmaxim/LovaszSoftmax) and PyTorch's cross-entropy.

use candle_core::{DType, Device, Tensor, Var};
use kseg_loss::{
    Classes, LovaszConfig, SegLoss, SegLossConfig, cross_entropy_with_ignore, lovasz_softmax,
    weighted_cross_entropy,
};
use serde_json::Value;

fn fixture() -> Value {
    let path = crate::support::testdata("losses_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn flat(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
        x => out.push(x.as_f64().unwrap()),
    }
}

fn tensor(v: &Value, shape: &[usize], dtype: DType) -> Tensor {
    let mut data = Vec::new();
    flat(v, &mut data);
    Tensor::from_vec(data, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// `d loss / d var`, flattened.
fn grad_of<T: candle_core::WithDType>(loss: &Tensor, var: &Var) -> Vec<T> {
    let grads = loss.backward().unwrap();
    let g = grads.get(var).unwrap().flatten_all().unwrap();
    g.to_dtype(T::DTYPE).unwrap().to_vec1::<T>().unwrap()
}

/// Max |a - b| relative to max |b|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

type LossFn = dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;

fn check_case(dtype: DType, tol: f64) {
    let f = fixture();
    let case = &f["cases"][0];
    let labels = tensor(&case["labels"], &[2, 8, 8], DType::U32);
    let weights = tensor(&case["class_weights"], &[3], dtype);
    let lovasz = |cfg: LovaszConfig| {
        move |x: &Tensor, y: &Tensor| lovasz_softmax(&candle_nn::ops::softmax(x, 1)?, y, &cfg)
    };
    let variants: Vec<(&str, Box<LossFn>)> = vec![
        ("lovasz_present", Box::new(lovasz(LovaszConfig::default()))),
        (
            "lovasz_all",
            Box::new(lovasz(LovaszConfig {
                classes: Classes::All,
                ..Default::default()
            })),
        ),
        (
            "lovasz_present_per_image",
            Box::new(lovasz(LovaszConfig {
                per_image: true,
                ..Default::default()
            })),
        ),
        (
            "weighted_ce",
            Box::new(move |x: &Tensor, y: &Tensor| weighted_cross_entropy(x, y, Some(&weights))),
        ),
        (
            "ce",
            Box::new(|x: &Tensor, y: &Tensor| weighted_cross_entropy(x, y, None)),
        ),
    ];
    for (name, loss_fn) in variants {
        let logits = Var::from_tensor(&tensor(&case["logits"], &[2, 3, 8, 8], dtype)).unwrap();
        let loss = loss_fn(logits.as_tensor(), &labels).unwrap();
        assert_eq!(loss.dims(), &[] as &[usize], "{name}: scalar");
        let value = loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = case[name]["value"].as_f64().unwrap();
        assert!(
            ((value - want) / want).abs() < tol,
            "{name} {dtype:?}: {value} vs {want}"
        );
        let grads = loss.backward().unwrap();
        let g = grads
            .get(&logits)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap();
        let mut want_g = Vec::new();
        flat(&case[name]["grad_logits"], &mut want_g);
        let err = rel_err(&g.to_vec1::<f64>().unwrap(), &want_g);
        assert!(err < tol, "{name} {dtype:?}: gradient relative error {err}");
    }
}

#[test]
fn reference_values_and_gradients_f64() {
    check_case(DType::F64, 1e-6);
}

#[test]
fn reference_values_and_gradients_f32() {
    check_case(DType::F32, 1e-4);
}

#[test]
fn combined_loss_is_the_sum_of_the_references() {
    let f = fixture();
    let case = &f["cases"][0];
    let logits = Var::from_tensor(&tensor(&case["logits"], &[2, 3, 8, 8], DType::F64)).unwrap();
    let labels = tensor(&case["labels"], &[2, 8, 8], DType::U32);
    let weights = tensor(&case["class_weights"], &[3], DType::F64);
    let loss = SegLoss::new(
        SegLossConfig {
            lambda: 0.5,
            ..Default::default()
        },
        Some(weights),
    )
    .unwrap();
    let parts = loss.forward(logits.as_tensor(), &labels).unwrap();
    let v = parts.total.to_scalar::<f64>().unwrap();
    let want = case["weighted_ce"]["value"].as_f64().unwrap()
        + 0.5 * case["lovasz_present"]["value"].as_f64().unwrap();
    assert!((v - want).abs() < 1e-9, "{v} vs {want}");
    let g: Vec<f64> = grad_of(&parts.total, &logits);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    flat(&case["weighted_ce"]["grad_logits"], &mut a);
    flat(&case["lovasz_present"]["grad_logits"], &mut b);
    let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + 0.5 * y).collect();
    assert!(rel_err(&g, &want) < 1e-9);
}

/// Central finite differences of the combined loss (f64, small input) agree
/// with backward().
#[test]
fn combined_loss_matches_finite_differences() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (b, c, h, w) = (2, 3, 3, 4);
    let x: Vec<f64> = (0..b * c * h * w)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let y: Vec<u32> = (0..b * h * w)
        .map(|_| rng.random_range(0..c as u32))
        .collect();
    let labels = Tensor::from_vec(y, (b, h, w), &Device::Cpu).unwrap();
    let weights = Tensor::new(&[0.3f64, 1.0, 2.5], &Device::Cpu).unwrap();
    for cfg in [
        SegLossConfig::default(),
        SegLossConfig {
            lovasz: LovaszConfig {
                per_image: true,
                classes: Classes::All,
                ignore: None,
            },
            lambda: 2.0,
        },
    ] {
        let loss = SegLoss::new(cfg, Some(weights.clone())).unwrap();
        let eval = |v: &[f64]| {
            let t = Tensor::from_vec(v.to_vec(), (b, c, h, w), &Device::Cpu).unwrap();
            loss.forward(&t, &labels)
                .unwrap()
                .total
                .to_scalar::<f64>()
                .unwrap()
        };
        let var =
            Var::from_tensor(&Tensor::from_vec(x.clone(), (b, c, h, w), &Device::Cpu).unwrap())
                .unwrap();
        let parts = loss.forward(var.as_tensor(), &labels).unwrap();
        let g: Vec<f64> = grad_of(&parts.total, &var);
        let eps = 1e-6;
        for i in 0..x.len() {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp[i] += eps;
            xm[i] -= eps;
            let fd = (eval(&xp) - eval(&xm)) / (2.0 * eps);
            assert!(
                (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{cfg:?} [{i}]: fd {fd} vs {}",
                g[i]
            );
        }
    }
}

#[test]
fn nothing_to_learn_gives_zero_and_zero_gradient() {
    let dev = Device::Cpu;
    let logits = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 3, 2, 2), &dev).unwrap()).unwrap();
    let ignored = Tensor::full(255u32, (1, 2, 2), &dev).unwrap();
    let cfg = LovaszConfig {
        ignore: Some(255),
        ..Default::default()
    };
    let probs = candle_nn::ops::softmax(logits.as_tensor(), 1).unwrap();
    let l = lovasz_softmax(&probs, &ignored, &cfg).unwrap();
    let ce = cross_entropy_with_ignore(logits.as_tensor(), &ignored, None, Some(255)).unwrap();
    let total = (&l + &ce).unwrap();
    assert_eq!(total.to_scalar::<f32>().unwrap(), 0.0);
    let g = total
        .backward()
        .unwrap()
        .get(&logits)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(g.to_scalar::<f32>().unwrap(), 0.0);
    // Ignore label in the middle of real labels: those pixels get no gradient.
    let labels = Tensor::new(&[[[0u32, 255], [1, 2]]], &dev).unwrap();
    let l = lovasz_softmax(&probs, &labels, &cfg).unwrap();
    let ce = cross_entropy_with_ignore(logits.as_tensor(), &labels, None, Some(255)).unwrap();
    let g4: Vec<f32> = grad_of(&(&l + &ce).unwrap(), &logits);
    for class in 0..3 {
        assert_eq!(g4[class * 4 + 1], 0.0, "ignored pixel, class {class}");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
    let y = Tensor::zeros((2, 4, 5), DType::U32, &dev).unwrap();
    let msg = weighted_cross_entropy(&x, &y, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("[2, 4, 5]") && msg.contains("[2, 4, 4]"),
        "{msg}"
    );
    let msg = lovasz_softmax(&x, &y, &LovaszConfig::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[2, 4, 5]"), "{msg}");
    let mut bad = vec![0u32; 32];
    bad[17] = 3;
    let y = Tensor::from_vec(bad, (2, 4, 4), &dev).unwrap();
    for msg in [
        weighted_cross_entropy(&x, &y, None)
            .unwrap_err()
            .to_string(),
        lovasz_softmax(&x, &y, &LovaszConfig::default())
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            msg.contains("label value 3") && msg.contains("3 classes"),
            "{msg}"
        );
    }
    let y = Tensor::zeros((2, 4, 4), DType::U32, &dev).unwrap();
    let nan = x.affine(0.0, f64::NAN).unwrap();
    let msg = lovasz_softmax(&nan, &y, &LovaszConfig::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("NaN") && msg.contains("[0, 0, 0, 0]"), "{msg}");
    let w = Tensor::new(&[1f32, 2.0], &dev).unwrap();
    let msg = weighted_cross_entropy(&x, &y, Some(&w))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[2]") && msg.contains("[3]"), "{msg}");
    let msg = weighted_cross_entropy(&x.flatten_all().unwrap(), &y, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("(B, C, H, W)"), "{msg}");
}
