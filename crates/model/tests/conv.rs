//! The gemm convolution against candle's own `conv2d`: outputs and the
//! gradients of input, weight and bias, for the shapes the Res-U-Net uses
//! (3×3 stride 1 and 2, 1×1) and odd ones. (im2col/col2im as adjoints, and
//! the tiled products against the definition, are checked in the crate:
//! `src/conv/op.rs`, `src/conv/cpu.rs`.)

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig};
use kseg_model::conv::Conv;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The largest difference relative to the reference's largest magnitude
/// (f32 sums of products: a few units in the last place of the scale).
fn rel_diff(a: &Tensor, reference: &Tensor) -> f32 {
    max_diff(a, reference) / max_diff(reference, &reference.zeros_like().unwrap())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::tensors::max_abs_diff(a, b) as f32
}

#[test]
fn gemm_conv_matches_candle_conv_and_its_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // (batch, cin, cout, h, w, k, stride, pad, bias)
    let cases = [
        (2, 3, 4, 8, 8, 3, 1, 1, false),
        (2, 4, 6, 8, 8, 3, 2, 1, false),
        (1, 5, 3, 7, 9, 3, 1, 1, true),
        (3, 4, 2, 9, 7, 3, 2, 1, true),
        (2, 6, 3, 6, 6, 1, 1, 0, true),
        (1, 2, 2, 6, 6, 3, 1, 0, false),
        (1, 2, 3, 5, 5, 5, 2, 2, true),
        // Four samples: the batch runs one sample per thread.
        (4, 3, 5, 10, 6, 3, 2, 1, false),
        (4, 4, 4, 6, 6, 1, 1, 0, true),
        // Kernels that reach past a tiny input: rows and columns wholly in
        // the padding; strides 2 and 3 with sizes the stride does not
        // divide (forward only, see below).
        (1, 2, 2, 1, 1, 5, 1, 2, false),
        (1, 2, 3, 3, 3, 5, 2, 2, true),
        (2, 2, 3, 2, 3, 5, 2, 2, true),
        (1, 3, 2, 2, 5, 3, 3, 1, false),
        (2, 2, 2, 11, 10, 3, 3, 1, false),
        // Large enough planes that each sample's output is cut into
        // several tiles (run in parallel for one sample, one sample per
        // thread for four), at strides 1 and 2.
        (1, 8, 8, 96, 96, 3, 1, 1, true),
        (1, 8, 4, 97, 81, 3, 2, 1, false),
        (4, 8, 6, 64, 72, 3, 1, 1, false),
        // 3×3, stride 1, padding 1, at least 16 channels in and out, planes
        // of at least 128×128: the Winograd path (forward, input gradient,
        // weight gradient), odd and even sizes, several bands per sample.
        (2, 16, 24, 128, 129, 3, 1, 1, true),
        (1, 32, 16, 131, 128, 3, 1, 1, false),
        // ... and 128 channels or more on planes of at least 32×32.
        (1, 128, 136, 33, 32, 3, 1, 1, true),
    ];
    for (b, ci, co, h, w, k, stride, pad, with_bias) in cases {
        let x = Var::from_tensor(&randn(&[b, ci, h, w], &mut rng)).unwrap();
        let wt = Var::from_tensor(&randn(&[co, ci, k, k], &mut rng)).unwrap();
        let bias = Var::from_tensor(&randn(&[co], &mut rng)).unwrap();
        let cfg = Conv2dConfig {
            padding: pad,
            stride,
            ..Default::default()
        };
        let reference = Conv2d::new(
            wt.as_tensor().clone(),
            with_bias.then(|| bias.as_tensor().clone()),
            cfg,
        );
        let ours = Conv::new(reference.clone());
        let y_ref = reference.forward(x.as_tensor()).unwrap();
        let y = ours.forward(x.as_tensor()).unwrap();
        assert_eq!(y.dims(), y_ref.dims());
        let case = format!("b{b} {ci}->{co} {h}x{w} k{k} s{stride} p{pad}");
        let err = rel_diff(&y, &y_ref);
        assert!(err < 2e-6, "{case}: forward {err:.2e}");
        // Where the stride does not divide (n + 2·pad - k), candle's own
        // conv2d backward returns an input gradient of the wrong size, so
        // it is no reference there; those geometries' backward is checked
        // by `conv::op::tests::im2col_and_col2im_are_adjoint` in the crate
        // (the forward above plus adjointness fix the backward).
        if (h + 2 * pad - k) % stride != 0 || (w + 2 * pad - k) % stride != 0 {
            continue;
        }
        // A loss that weighs every output differently.
        let g = randn(y.dims(), &mut rng);
        let gr = (&y_ref * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let go = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = vec![("input", &x), ("weight", &wt)];
        if with_bias {
            vars.push(("bias", &bias));
        }
        for (name, v) in vars {
            let (a, r) = (go.get(v).unwrap(), gr.get(v).unwrap());
            let err = rel_diff(a, r);
            // Looser than the forward: candle's f32 reference sums up to
            // b·h·w terms in one accumulator.
            assert!(err < 1e-5, "{case}: {name} gradient {err:.2e}");
        }
    }
}

/// The network's input is not tracked by autograd: the convolution skips
/// its input gradient but still gives the weight gradient of candle's conv.
#[test]
fn untracked_input_gets_no_gradient_and_the_weight_the_right_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for b in [1, 2, 4] {
        let x = randn(&[b, 3, 8, 6], &mut rng);
        let wt = Var::from_tensor(&randn(&[4, 3, 3, 3], &mut rng)).unwrap();
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let reference = Conv2d::new(wt.as_tensor().clone(), None, cfg);
        let ours = Conv::new(reference.clone());
        let g = randn(&[b, 4, 8, 6], &mut rng);
        let loss = |y: Tensor| (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let go = loss(ours.forward(&x).unwrap());
        let gr = loss(reference.forward(&x).unwrap());
        assert!(go.get(&x).is_none(), "b{b}: untracked input got a gradient");
        let d = max_diff(go.get(&wt).unwrap(), gr.get(&wt).unwrap());
        assert!(d < 1e-4, "b{b}: weight gradient off by {d}");
    }
}
