//! The fused BatchNorm + residual + LeakyReLU op (CPU, f32) against candle's
//! own `BatchNorm` and tensor ops in f64 (the path other devices and dtypes
//! take): outputs, running statistics, and the gradients of x, gamma, beta
//! and the residual, in training and evaluation mode.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use kseg_model::BatchNorm2d;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const C: usize = 5;
const SHAPE: (usize, usize, usize, usize) = (3, C, 6, 7);

fn random(rng: &mut ChaCha8Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

struct Case {
    x: Vec<f64>,
    r: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
    probe: Vec<f64>,
}

fn case(seed: u64) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = SHAPE.0 * SHAPE.1 * SHAPE.2 * SHAPE.3;
    // Channel-dependent offsets and scales, as after a convolution.
    let x = random(&mut rng, n, -1.0, 1.0)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let ch = (i / (SHAPE.2 * SHAPE.3) % C) as f64;
            v * (0.5 + ch) + ch - 2.0
        })
        .collect();
    Case {
        x,
        r: random(&mut rng, n, -1.0, 1.0),
        weight: random(&mut rng, C, -1.5, 1.5),
        bias: random(&mut rng, C, -0.5, 0.5),
        running_mean: random(&mut rng, C, -0.5, 0.5),
        running_var: random(&mut rng, C, 0.5, 2.0),
        probe: random(&mut rng, n, -1.0, 1.0),
    }
}

struct Out {
    y: Vec<f64>,
    dx: Vec<f64>,
    dr: Option<Vec<f64>>,
    dweight: Vec<f64>,
    dbias: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn run(c: &Case, dtype: DType, train: bool, residual: bool, slope: f64) -> Out {
    let dev = Device::Cpu;
    let t = |v: &[f64], shape: &[usize]| {
        Tensor::from_slice(v, shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let mut vm = VarMap::new();
    let bn = BatchNorm2d::new(C, VarBuilder::from_varmap(&vm, dtype, &dev)).unwrap();
    vm.set_one("weight", t(&c.weight, &[C])).unwrap();
    vm.set_one("bias", t(&c.bias, &[C])).unwrap();
    vm.set_one("running_mean", t(&c.running_mean, &[C]))
        .unwrap();
    vm.set_one("running_var", t(&c.running_var, &[C])).unwrap();
    let dims = [SHAPE.0, SHAPE.1, SHAPE.2, SHAPE.3];
    let x = Var::from_tensor(&t(&c.x, &dims)).unwrap();
    let r = Var::from_tensor(&t(&c.r, &dims)).unwrap();
    let y = bn
        .forward_act(
            x.as_tensor(),
            residual.then_some(r.as_tensor()),
            slope,
            train,
        )
        .unwrap();
    let loss = (&y * t(&c.probe, &dims)).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let get = |name: &str| vm.data().lock().unwrap()[name].as_tensor().clone();
    let g = |v: &Tensor| flat(grads.get(v).expect("a gradient"));
    Out {
        y: flat(&y),
        dx: g(x.as_tensor()),
        dr: residual.then(|| g(r.as_tensor())),
        dweight: g(&get("weight")),
        dbias: g(&get("bias")),
        running_mean: flat(&get("running_mean")),
        running_var: flat(&get("running_var")),
    }
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: fused f32 {g}, candle f64 {w} (scale {scale})"
        );
    }
}

#[test]
fn fused_batch_norm_matches_candle_ops() {
    let c = case(7);
    for train in [true, false] {
        for residual in [false, true] {
            for slope in [0.2, 1.0, 0.0] {
                let what = format!("train {train}, residual {residual}, slope {slope}");
                let fused = run(&c, DType::F32, train, residual, slope);
                let reference = run(&c, DType::F64, train, residual, slope);
                assert_close(&format!("y ({what})"), &fused.y, &reference.y, 1e-5);
                assert_close(&format!("dx ({what})"), &fused.dx, &reference.dx, 1e-4);
                assert_close(
                    &format!("dweight ({what})"),
                    &fused.dweight,
                    &reference.dweight,
                    1e-4,
                );
                assert_close(
                    &format!("dbias ({what})"),
                    &fused.dbias,
                    &reference.dbias,
                    1e-4,
                );
                if residual {
                    assert_close(
                        &format!("dr ({what})"),
                        fused.dr.as_ref().unwrap(),
                        reference.dr.as_ref().unwrap(),
                        1e-5,
                    );
                }
                assert_close(
                    &format!("running mean ({what})"),
                    &fused.running_mean,
                    &reference.running_mean,
                    1e-6,
                );
                assert_close(
                    &format!("running var ({what})"),
                    &fused.running_var,
                    &reference.running_var,
                    1e-6,
                );
                if !train {
                    assert_close(
                        "eval leaves running mean",
                        &fused.running_mean,
                        &c.running_mean,
                        1e-7,
                    );
                }
            }
        }
    }
}

/// Hand-derived: one channel, values 1 and 3 (mean 2, biased variance 1),
/// gamma 2, beta -1, slope 0.2: normalised ±1 (to eps), then 2·(±1) - 1 =
/// 1 and -3, activated 1 and -0.6; running mean 0.1·2, running variance
/// 0.9 + 0.1·2 (unbiased variance of two values is 2).
#[test]
fn fused_batch_norm_by_hand() {
    let dev = Device::Cpu;
    let mut vm = VarMap::new();
    let bn = BatchNorm2d::new(1, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    vm.set_one("weight", Tensor::new(&[2f32], &dev).unwrap())
        .unwrap();
    vm.set_one("bias", Tensor::new(&[-1f32], &dev).unwrap())
        .unwrap();
    let x = Tensor::new(&[1f32, 3.0], &dev)
        .unwrap()
        .reshape((1, 1, 1, 2))
        .unwrap();
    let y = flat(&bn.forward_act(&x, None, 0.2, true).unwrap());
    let s = 1.0 / (1.0f64 + 1e-5).sqrt();
    assert_close("y", &y, &[-2.0 * s * 0.2 - 1.0 * 0.2, 2.0 * s - 1.0], 1e-6);
    let data = vm.data().lock().unwrap();
    assert_close(
        "running mean",
        &flat(data["running_mean"].as_tensor()),
        &[0.2],
        1e-7,
    );
    assert_close(
        "running var",
        &flat(data["running_var"].as_tensor()),
        &[1.1],
        1e-7,
    );
}
