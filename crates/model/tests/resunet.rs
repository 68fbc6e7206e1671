//! The Res-U-Net against PyTorch (testdata/resunet_interop: a base-8,
//! depth-3 `state_dict` saved with safetensors, an input and the eval-mode
//! logits PyTorch computed), finite differences, and its own invariants.

use candle_core::{D, DType, Device, ModuleT, Tensor, Var};
use candle_nn::VarBuilder;
use kseg_model::{CatConv, CatResBlock, Conv0, ResDownSample, ResUNet, ResUNetConfig};

use crate::tensors::{max_abs_diff, seeded_randn};

fn interop(name: &str) -> std::path::PathBuf {
    crate::support::testdata("resunet_interop").join(name)
}

const INTEROP: ResUNetConfig = ResUNetConfig {
    in_channels: 3,
    num_classes: 3,
    base_channels: 8,
    depth: 3,
    negative_slope: 0.2,
};

#[test]
fn pytorch_checkpoint_reproduces_pytorch_logits() {
    let dev = Device::Cpu;
    let io = candle_core::safetensors::load(interop("io.safetensors"), &dev).unwrap();
    let (x, want) = (&io["input"], &io["logits"]);
    assert_eq!(x.dims(), &[2, 3, 32, 32]);
    // Through a memory-mapped VarBuilder, as for inference...
    // SAFETY: the fixture is only read, and nothing writes it during the test.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[interop("weights.safetensors")], DType::F32, &dev)
    }
    .unwrap();
    let model = ResUNet::new(&INTEROP, vb).unwrap();
    let got = model.forward_t(x, false).unwrap();
    let err = max_abs_diff(&got, want);
    assert!(err < 1e-4, "max abs error {err}");
    // ...and through ResUNet::load into a VarMap, in f64.
    let (model, varmap) =
        ResUNet::load(&INTEROP, interop("weights.safetensors"), DType::F64, &dev).unwrap();
    let got = model
        .forward_t(&x.to_dtype(DType::F64).unwrap(), false)
        .unwrap();
    let err = max_abs_diff(&got, &want.to_dtype(DType::F64).unwrap());
    assert!(err < 1e-4, "f64 max abs error {err}");
    // docs/METHOD.md §2: 122,475 parameters at base 8, depth 3.
    assert_eq!(ResUNet::num_parameters(&varmap), 122_475);
}

#[test]
fn default_model_has_the_seeds_parameter_count() {
    let (_, varmap) =
        ResUNet::init(&ResUNetConfig::default(), 0, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(ResUNet::num_parameters(&varmap), 31_613_347);
}

#[test]
fn seeded_init_and_save_load_round_trip() {
    let dev = Device::Cpu;
    let cfg = ResUNetConfig {
        base_channels: 4,
        depth: 2,
        ..Default::default()
    };
    let (m1, v1) = ResUNet::init(&cfg, 7, DType::F32, &dev).unwrap();
    let (_, v2) = ResUNet::init(&cfg, 7, DType::F32, &dev).unwrap();
    let (_, v3) = ResUNet::init(&cfg, 8, DType::F32, &dev).unwrap();
    let w = |v: &candle_nn::VarMap, n: &str| {
        v.data().lock().unwrap()[n]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(w(&v1, "down.1.conv2.weight"), w(&v2, "down.1.conv2.weight"));
    assert_ne!(w(&v1, "down.1.conv2.weight"), w(&v3, "down.1.conv2.weight"));
    assert!(w(&v1, "conv0.bn.weight").iter().all(|&x| x == 1.0));
    assert!(w(&v1, "up.0.skip.bias").iter().all(|&x| x == 0.0));
    // Kaiming std for LeakyReLU(0.2): sqrt(2 / 1.04) / sqrt(fan_in).
    let k = w(&v1, "down.1.conv2.weight"); // 16x16x3x3, fan_in 144
    let sd = (k.iter().map(|x| x * x).sum::<f32>() / k.len() as f32).sqrt();
    let want = (2.0f32 / 1.04).sqrt() / 12.0;
    assert!((sd / want - 1.0).abs() < 0.05, "std {sd} vs {want}");
    // A train step's BN statistics are saved and restored too.
    let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &dev).unwrap();
    m1.forward_t(&x, true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    // The model file as candle writes a VarMap (kseg-train's checkpoints
    // add metadata to the same tensors).
    v1.save(&path).unwrap();
    let (m2, _) = ResUNet::load(&cfg, &path, DType::F32, &dev).unwrap();
    assert_eq!(
        max_abs_diff(
            &m1.forward_t(&x, false).unwrap(),
            &m2.forward_t(&x, false).unwrap()
        ),
        0.0
    );
    // A checkpoint of another shape is refused with the tensor's name.
    let other = ResUNetConfig {
        base_channels: 8,
        ..cfg
    };
    let Err(e) = ResUNet::load(&other, &path, DType::F32, &dev) else {
        panic!("a base-8 model must not load a base-4 checkpoint");
    };
    let msg = e.to_string();
    // Tensors are checked in the order the model asks for them:
    // conv0.conv.weight comes first.
    assert!(
        msg.contains("conv0.conv.weight has shape [4, 3, 3, 3], the model expects [8, 3, 3, 3]")
            && msg.contains("model.safetensors"),
        "{msg}"
    );
    // A configuration claiming a huge model is refused before anything is
    // allocated at its size: here 2·10⁹ parameters (8 GB of f32) that the
    // old load created and randomly initialised before comparing shapes.
    let huge = ResUNetConfig {
        base_channels: 256,
        depth: 5,
        ..cfg
    };
    let Err(e) = ResUNet::load(&huge, &path, DType::F32, &dev) else {
        panic!("a base-256 model must not load a base-4 checkpoint");
    };
    assert!(
        e.to_string()
            .contains("conv0.conv.weight has shape [4, 3, 3, 3]"),
        "{e}"
    );
    // Beyond the supported sizes: refused by the configuration check.
    for absurd in [
        ResUNetConfig {
            base_channels: 1 << 20,
            ..cfg
        },
        ResUNetConfig { depth: 40, ..cfg },
        ResUNetConfig {
            num_classes: 1 << 30,
            ..cfg
        },
    ] {
        let Err(e) = ResUNet::load(&absurd, &path, DType::F32, &dev) else {
            panic!("{absurd:?} must be refused");
        };
        assert!(e.to_string().contains("beyond the supported"), "{e}");
    }
}

#[test]
fn batchnorm_statistics_move_in_train_mode_only() {
    let dev = Device::Cpu;
    let cfg = ResUNetConfig {
        base_channels: 4,
        depth: 2,
        ..Default::default()
    };
    let (m, v) = ResUNet::init(&cfg, 1, DType::F32, &dev).unwrap();
    let stat = || {
        v.data().lock().unwrap()["down.0.bn1.running_mean"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap()
    };
    let x = (Tensor::randn(0f32, 1.0, (3, 3, 8, 8), &dev).unwrap() + 2.0).unwrap();
    let before = stat();
    m.forward_t(&x, false).unwrap();
    assert_eq!(stat(), before, "eval must not touch running stats");
    m.forward_t(&x, true).unwrap();
    assert_ne!(stat(), before, "train must update running stats");
    // Eval output of a sample does not depend on its batch.
    let alone = m.forward_t(&x.narrow(0, 1, 1).unwrap(), false).unwrap();
    let in_batch = m.forward_t(&x, false).unwrap().narrow(0, 1, 1).unwrap();
    assert!(max_abs_diff(&alone, &in_batch) < 1e-5);
}

#[test]
fn bad_input_shapes_are_errors() {
    let dev = Device::Cpu;
    let cfg = ResUNetConfig {
        base_channels: 4,
        depth: 3,
        ..Default::default()
    };
    let (m, _) = ResUNet::init(&cfg, 1, DType::F32, &dev).unwrap();
    let msg = m
        .forward_t(
            &Tensor::zeros((1, 2, 16, 16), DType::F32, &dev).unwrap(),
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("2 channels") && msg.contains("[1, 2, 16, 16]"),
        "{msg}"
    );
    let msg = m
        .forward_t(
            &Tensor::zeros((1, 3, 16, 12), DType::F32, &dev).unwrap(),
            false,
        )
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("2^depth = 8") && msg.contains("16x12"),
        "{msg}"
    );
    assert!(ResUNet::init(&ResUNetConfig { depth: 0, ..cfg }, 0, DType::F32, &dev).is_err());
    // Any depth >= 1 works: depth 1 has no decoder block, only the head.
    for (depth, base, size) in [(1, 2, 2), (1, 6, 4), (4, 2, 16)] {
        let cfg = ResUNetConfig {
            depth,
            base_channels: base,
            num_classes: 4,
            in_channels: 5,
            ..cfg
        };
        let (m, _) = ResUNet::init(&cfg, 0, DType::F32, &dev).unwrap();
        let y = m
            .forward_t(
                &Tensor::zeros((2, 5, size, 2 * size), DType::F32, &dev).unwrap(),
                true,
            )
            .unwrap();
        assert_eq!(y.dims(), &[2, 4, size, 2 * size], "{cfg:?}");
    }
    assert!(
        ResUNet::init(
            &ResUNetConfig {
                base_channels: 3,
                ..cfg
            },
            0,
            DType::F32,
            &dev
        )
        .is_err()
    );
}

/// d(sum(f(x) * r))/dx by backward() vs central differences, at a few
/// coordinates of the input and of one weight.
fn check_grads(f: &dyn Fn(&Tensor) -> Tensor, x: &Tensor, weight: Option<&Var>, what: &str) {
    let r = seeded_randn(f(x).dims(), 99, x.device());
    let loss = |x: &Tensor| {
        (f(x) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let xv = Var::from_tensor(x).unwrap();
    let l = (f(xv.as_tensor()) * &r).unwrap().sum_all().unwrap();
    let grads = l.backward().unwrap();
    let gx = grads
        .get(&xv)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let flat = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let eps = 1e-5;
    let n = flat.len();
    for i in (0..n).step_by((n / 7).max(1)) {
        let mut p = flat.clone();
        p[i] += eps;
        let mut m = flat.clone();
        m[i] -= eps;
        let fd = (loss(&Tensor::from_vec(p, x.dims(), x.device()).unwrap())
            - loss(&Tensor::from_vec(m, x.dims(), x.device()).unwrap()))
            / (2.0 * eps);
        assert!(
            (fd - gx[i]).abs() < 1e-5 * (1.0 + fd.abs()),
            "{what} d/dx[{i}]: fd {fd} vs {}",
            gx[i]
        );
    }
    if let Some(wv) = weight {
        let gw = grads
            .get(wv)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let w0 = wv.as_tensor().copy().unwrap();
        let wflat = w0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in (0..wflat.len()).step_by((wflat.len() / 5).max(1)) {
            let mut vals = [0.0; 2];
            for (k, s) in [1.0, -1.0].iter().enumerate() {
                let mut p = wflat.clone();
                p[i] += s * eps;
                wv.set(&Tensor::from_vec(p, w0.dims(), x.device()).unwrap())
                    .unwrap();
                vals[k] = loss(x);
            }
            wv.set(&w0).unwrap();
            let fd = (vals[0] - vals[1]) / (2.0 * eps);
            assert!(
                (fd - gw[i]).abs() < 1e-5 * (1.0 + fd.abs()),
                "{what} d/dw[{i}]: fd {fd} vs {}",
                gw[i]
            );
        }
    }
}

fn var(vm: &candle_nn::VarMap, name: &str) -> Var {
    vm.data().lock().unwrap()[name].clone()
}

#[test]
fn blocks_and_net_match_finite_differences_in_train_mode() {
    let dev = Device::Cpu;
    let seed = std::cell::Cell::new(0u64);
    let randn = |s: &[usize]| {
        seed.set(seed.get() + 1);
        seeded_randn(s, seed.get(), &dev)
    };
    let vm = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F64, &dev);
    let c0 = Conv0::new(3, 4, 0.2, vb.pp("c0")).unwrap();
    check_grads(
        &|x| c0.forward_t(x, true).unwrap(),
        &randn(&[2, 3, 4, 4]),
        Some(&var(&vm, "c0.conv.weight")),
        "Conv0",
    );
    let d = ResDownSample::new(4, 8, 0.2, vb.pp("d")).unwrap();
    check_grads(
        &|x| d.forward_t(x, true).unwrap(),
        &randn(&[2, 4, 4, 4]),
        Some(&var(&vm, "d.shortcut.conv.weight")),
        "ResDownSample",
    );
    let u = CatResBlock::new(16, 8, 0.2, vb.pp("u")).unwrap();
    let skip = randn(&[2, 8, 4, 4]);
    check_grads(
        &|x| u.forward_t(x, &skip, true).unwrap(),
        &randn(&[2, 16, 2, 2]),
        Some(&var(&vm, "u.skip.weight")),
        "CatResBlock",
    );
    let first = randn(&[2, 4, 4, 4]);
    let h = CatConv::new(8, 4, 3, 0.2, vb.pp("h")).unwrap();
    check_grads(
        &|x| h.forward_t(x, &first, true).unwrap(),
        &randn(&[2, 8, 2, 2]),
        Some(&var(&vm, "h.classifier.weight")),
        "CatConv",
    );
    let cfg = ResUNetConfig {
        base_channels: 4,
        depth: 2,
        ..Default::default()
    };
    let (net, vm) = ResUNet::init(&cfg, 3, DType::F64, &dev).unwrap();
    let w = var(&vm, "up.0.conv1.weight");
    check_grads(
        &|x| net.forward_t(x, true).unwrap(),
        &randn(&[2, 3, 8, 8]),
        Some(&w),
        "ResUNet",
    );
    // Softmax over classes sums to one: the logits have the class axis at 1.
    let p =
        candle_nn::ops::softmax(&net.forward_t(&randn(&[1, 3, 8, 8]), false).unwrap(), 1).unwrap();
    let s = p
        .sum(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-12));
    let _ = D::Minus1;
}

/// The CPU f32 fast paths (convolutions on gemm, fused BatchNorm +
/// residual + LeakyReLU) against candle's own ops, which the same net takes
/// in f64: one training-mode step of a depth-3 net with the same weights,
/// compared on the logits, every gradient (input and all parameters) and
/// the updated BatchNorm running statistics.
#[test]
fn f32_fast_paths_match_candle_ops_on_the_whole_net() {
    let dev = Device::Cpu;
    let cfg = ResUNetConfig {
        base_channels: 4,
        depth: 3,
        ..Default::default()
    };
    let (fast, vm32) = ResUNet::init(&cfg, 11, DType::F32, &dev).unwrap();
    let (reference, vm64) = ResUNet::init(&cfg, 11, DType::F64, &dev).unwrap();
    for (name, v) in vm64.data().lock().unwrap().iter() {
        v.set(&var(&vm32, name).as_tensor().to_dtype(DType::F64).unwrap())
            .unwrap();
    }
    let x = (Tensor::randn(0f32, 1.0, (2, 3, 16, 24), &dev).unwrap() * 2.0).unwrap();
    let probe = Tensor::randn(0f32, 1.0, (2, 3, 16, 24), &dev).unwrap();
    let step = |net: &ResUNet, dtype: DType| {
        let x = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
        let logits = net.forward_t(x.as_tensor(), true).unwrap();
        let loss = (&logits * probe.to_dtype(dtype).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        (logits, x.as_tensor().clone(), loss.backward().unwrap())
    };
    let (l32, x32, g32) = step(&fast, DType::F32);
    let (l64, x64, g64) = step(&reference, DType::F64);
    let rel = |a: &Tensor, b: &Tensor| {
        let b = b.to_dtype(DType::F32).unwrap();
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        max_abs_diff(a, &b) / (scale as f64).max(1e-6)
    };
    assert!(rel(&l32, &l64) < 1e-4, "logits: {}", rel(&l32, &l64));
    let dx = rel(g32.get(&x32).unwrap(), g64.get(&x64).unwrap());
    assert!(dx < 1e-3, "input gradient: {dx}");
    let mut checked = 0;
    for (name, v32) in vm32.data().lock().unwrap().iter() {
        let v64 = var(&vm64, name);
        if name.contains("running_") {
            let d = rel(v32.as_tensor(), v64.as_tensor());
            assert!(d < 1e-5, "{name}: {d}");
            continue;
        }
        let (a, b) = (g32.get(v32.as_tensor()), g64.get(v64.as_tensor()));
        let (Some(a), Some(b)) = (a, b) else {
            panic!("{name}: a gradient is missing")
        };
        let d = rel(a, b);
        assert!(d < 1e-3, "{name} gradient: {d}");
        checked += 1;
    }
    assert!(checked > 40, "only {checked} parameters checked");
}
