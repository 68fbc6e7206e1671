//! The optimisers against PyTorch's published update rules written out by
//! hand in f64, and state round trips (a resumed run equals an uninterrupted
//! one).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use kseg_train::{AdamW, AdamWConfig, Optimiser, Schedule, Sgd, SgdConfig};

fn vars(values: &[(&str, f64)]) -> HashMap<String, Var> {
    vars_of(values, DType::F64)
}

fn vars_of(values: &[(&str, f64)], dtype: DType) -> HashMap<String, Var> {
    values
        .iter()
        .map(|(n, v)| {
            let t = Tensor::new(&[*v], &Device::Cpu).unwrap();
            (
                n.to_string(),
                Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap(),
            )
        })
        .collect()
}

/// loss = sum_k c_k · p_k², gradient 2·c_k·p_k.
fn loss(vs: &HashMap<String, Var>, coef: &[(&str, f64)]) -> Tensor {
    let dtype = vs.values().next().unwrap().dtype();
    let mut total = Tensor::zeros(1, dtype, &Device::Cpu).unwrap();
    for (n, c) in coef {
        total = (total + (vs[*n].as_tensor().sqr().unwrap() * *c).unwrap()).unwrap();
    }
    total.sum_all().unwrap()
}

fn value(vs: &HashMap<String, Var>, n: &str) -> f64 {
    let t = vs[n].as_tensor().to_dtype(DType::F64).unwrap();
    t.to_vec1::<f64>().unwrap()[0]
}

const COEF: [(&str, f64); 3] = [
    ("a.conv.weight", 1.5),
    ("a.conv.bias", 0.5),
    ("a.bn.weight", 2.0),
];

/// f64 variables take the tensor-op path, f32 ones on the CPU the fused
/// one: both against the rule in f64 (f32 to its precision).
#[test]
fn adamw_follows_pytorchs_rule_and_skips_bn_and_biases() {
    adamw_rule(DType::F64, 1e-12);
    adamw_rule(DType::F32, 1e-6);
}

fn adamw_rule(dtype: DType, tol: f64) {
    let cfg = AdamWConfig {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let vs = vars_of(
        &[
            ("a.conv.weight", 1.0),
            ("a.conv.bias", -2.0),
            ("a.bn.weight", 0.5),
            ("a.bn.running_mean", 7.0),
        ],
        dtype,
    );
    let mut opt = AdamW::new(&vs, cfg).unwrap();
    // Reference: torch.optim.AdamW's algorithm, written out.
    let mut reference: Vec<(f64, f64, f64, f64, bool)> = COEF
        .iter()
        .map(|(n, c)| (value(&vs, n), 0.0, 0.0, *c, kseg_train::decays(n)))
        .collect();
    for t in 1..=5 {
        opt.backward_step(&loss(&vs, &COEF)).unwrap();
        for (p, m, v, c, decay) in reference.iter_mut() {
            let g = 2.0 * *c * *p;
            if *decay {
                *p *= 1.0 - cfg.lr * cfg.weight_decay;
            }
            *m = cfg.beta1 * *m + (1.0 - cfg.beta1) * g;
            *v = cfg.beta2 * *v + (1.0 - cfg.beta2) * g * g;
            let mh = *m / (1.0 - cfg.beta1.powi(t));
            let vh = *v / (1.0 - cfg.beta2.powi(t));
            *p -= cfg.lr * mh / (vh.sqrt() + cfg.eps);
        }
        for ((n, _), (p, ..)) in COEF.iter().zip(&reference) {
            assert!(
                (value(&vs, n) - p).abs() < tol * p.abs().max(1.0),
                "{dtype:?} step {t} {n}: {} vs {p}",
                value(&vs, n)
            );
        }
    }
    // Running statistics are not parameters.
    assert_eq!(value(&vs, "a.bn.running_mean"), 7.0);
    assert_eq!(opt.step_count(), 5);
}

/// The fused path over a variable larger than its parallel chunk, against
/// the tensor-op path in f64 on the same values and gradients.
#[test]
fn fused_adamw_matches_the_tensor_path_across_chunks() {
    let n = 40_000;
    let init: Vec<f64> = (0..n)
        .map(|i| ((i * 7919 % 1000) as f64 - 500.0) / 300.0)
        .collect();
    let coef: Vec<f64> = (0..n).map(|i| 0.1 + (i % 13) as f64 / 5.0).collect();
    let run = |dtype: DType| {
        let p = Tensor::new(init.as_slice(), &Device::Cpu).unwrap();
        let p = Var::from_tensor(&p.to_dtype(dtype).unwrap()).unwrap();
        let c = Tensor::new(coef.as_slice(), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let vs = HashMap::from([("w.conv.weight".to_string(), p.clone())]);
        let mut opt = AdamW::new(&vs, AdamWConfig::default()).unwrap();
        for _ in 0..3 {
            let l = (p.as_tensor().sqr().unwrap() * &c)
                .unwrap()
                .sum_all()
                .unwrap();
            opt.backward_step(&l).unwrap();
        }
        p.as_tensor()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let (fused, reference) = (run(DType::F32), run(DType::F64));
    for (i, (a, b)) in fused.iter().zip(&reference).enumerate() {
        assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "{i}: {a} vs {b}");
    }
}

#[test]
fn sgd_nesterov_follows_pytorchs_rule() {
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.1,
    };
    let vs = vars(&[
        ("a.conv.weight", 1.0),
        ("a.conv.bias", -2.0),
        ("a.bn.weight", 0.5),
    ]);
    let mut opt = Sgd::new(&vs, cfg).unwrap();
    // Hand-computed for the weight (c = 1.5): step 1: g = 3 + 0.1 = 3.1,
    // buf = 3.1, d = 3.1 + 0.9·3.1 = 5.89, p = 1 - 0.589 = 0.411.
    opt.backward_step(&loss(&vs, &COEF)).unwrap();
    assert!((value(&vs, "a.conv.weight") - 0.411).abs() < 1e-12);
    // Bias (c = 0.5, no decay): g = -2, d = -2 - 1.8 = -3.8, p = -1.62.
    assert!((value(&vs, "a.conv.bias") + 1.62).abs() < 1e-12);
    // Step 2: g = 3·0.411 + 0.0411 = 1.2741, buf = 2.79 + 1.2741 = 4.0641,
    // d = 1.2741 + 0.9·4.0641 = 4.93179, p = 0.411 - 0.493179.
    opt.backward_step(&loss(&vs, &COEF)).unwrap();
    assert!((value(&vs, "a.conv.weight") - (0.411 - 0.493179)).abs() < 1e-12);
}

/// Six steps straight vs three steps, state saved, variables and state
/// restored in fresh objects, three more steps: the same values.
fn run_resumed<O: Optimiser>(make: &dyn Fn(&HashMap<String, Var>) -> O) {
    let init = [
        ("a.conv.weight", 1.0),
        ("a.conv.bias", -2.0),
        ("a.bn.weight", 0.5),
    ];
    let straight = vars(&init);
    let mut o = make(&straight);
    for _ in 0..6 {
        o.backward_step(&loss(&straight, &COEF)).unwrap();
    }
    let first = vars(&init);
    let mut o1 = make(&first);
    for _ in 0..3 {
        o1.backward_step(&loss(&first, &COEF)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    o1.save(&path).unwrap();
    // A new process: variables restored from the first run, state loaded.
    let resumed: HashMap<String, Var> = first
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    let mut o2 = make(&resumed);
    o2.load(&path).unwrap();
    for _ in 0..3 {
        o2.backward_step(&loss(&resumed, &COEF)).unwrap();
    }
    for (n, _) in init {
        assert_eq!(value(&resumed, n), value(&straight, n), "{n}");
    }
}

#[test]
fn resumed_state_equals_uninterrupted() {
    run_resumed(&|v| {
        AdamW::new(
            v,
            AdamWConfig {
                lr: 0.05,
                ..Default::default()
            },
        )
        .unwrap()
    });
    run_resumed(&|v| {
        Sgd::new(
            v,
            SgdConfig {
                lr: 0.05,
                ..Default::default()
            },
        )
        .unwrap()
    });
}

#[test]
fn bad_state_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    std::fs::write(&p, b"garbage").unwrap();
    let vs = vars(&[("a.conv.weight", 1.0)]);
    let mut o = AdamW::new(&vs, AdamWConfig::default()).unwrap();
    assert!(o.load(&p).is_err());
    // A state for other variables names the missing one.
    let other = vars(&[("b.conv.weight", 1.0)]);
    AdamW::new(&other, AdamWConfig::default())
        .unwrap()
        .save(&p)
        .unwrap();
    let msg = o.load(&p).unwrap_err().to_string();
    assert!(
        msg.contains("m.a.conv.weight") && msg.contains("x.safetensors"),
        "{msg}"
    );
}

/// A `__step` that is empty used to panic ("index out of bounds"); NaN,
/// negative or fractional step counts were taken (as 0, 0 and 2).
#[test]
fn a_bad_step_count_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("optimizer.safetensors");
    let vs = vars(&[("a.conv.weight", 1.0)]);
    let zero = Tensor::zeros(1, DType::F64, &Device::Cpu).unwrap();
    let cases: [(&str, Tensor, &str); 5] = [
        (
            "empty",
            Tensor::zeros(0, DType::F64, &Device::Cpu).unwrap(),
            "0 values",
        ),
        (
            "two",
            Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap(),
            "2 values",
        ),
        (
            "nan",
            Tensor::new(&[f64::NAN], &Device::Cpu).unwrap(),
            "NaN",
        ),
        (
            "negative",
            Tensor::new(&[-5.0f64], &Device::Cpu).unwrap(),
            "-5",
        ),
        (
            "fraction",
            Tensor::new(&[2.5f64], &Device::Cpu).unwrap(),
            "2.5",
        ),
    ];
    for (what, step, want) in cases {
        let t: HashMap<String, Tensor> = [
            ("__step".to_string(), step),
            ("m.a.conv.weight".to_string(), zero.clone()),
            ("v.a.conv.weight".to_string(), zero.clone()),
        ]
        .into();
        candle_core::safetensors::save(&t, &p).unwrap();
        let mut o = AdamW::new(&vs, AdamWConfig::default()).unwrap();
        let msg = o.load(&p).unwrap_err().to_string();
        assert!(
            msg.contains("optimizer.safetensors") && msg.contains("__step") && msg.contains(want),
            "{what}: {msg}"
        );
    }
    // A whole step count loads.
    let t: HashMap<String, Tensor> = [
        (
            "__step".to_string(),
            Tensor::new(&[40.0f64], &Device::Cpu).unwrap(),
        ),
        ("m.a.conv.weight".to_string(), zero.clone()),
        ("v.a.conv.weight".to_string(), zero),
    ]
    .into();
    candle_core::safetensors::save(&t, &p).unwrap();
    let mut o = AdamW::new(&vs, AdamWConfig::default()).unwrap();
    o.load(&p).unwrap();
    assert_eq!(o.step_count(), 40);
}

#[test]
fn schedules_end_where_they_should() {
    let poly = Schedule::Poly { exponent: 0.9 };
    assert_eq!(poly.lr(0.01, 100, 100), 0.0);
    let cos = Schedule::Cosine {
        warmup: 5,
        min_lr: 1e-5,
    };
    assert!((cos.lr(1e-3, 100, 100) - 1e-5).abs() < 1e-15);
    assert!((cos.lr(1e-3, 5, 100) - 1e-3).abs() < 1e-15);
    assert_eq!(Schedule::Constant.lr(0.3, 7, 10), 0.3);
}
