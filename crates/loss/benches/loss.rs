//! Loss benches at training size: 8×3×512×512 (2M pixels per class), and
//! the combined loss also at the 128² preset's 4×3×128×128, each both as
//! `SegLoss::forward` (on the CPU one host computation) and as
//! `SegLoss::forward_composed` (candle ops).
//!
//! `cargo bench -p kseg-loss --bench loss` (add `--features cuda` on a GPU
//! machine: the device benches then run too).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use kseg_loss::{LossParts, LovaszConfig, SegLoss, SegLossConfig, lovasz_softmax};

/// `b` samples of `s`×`s` logits and labels: mostly background, a kidney
/// block and a tumour block inside it (at 512²: 100×100 and 30×30).
fn inputs(dev: &Device, b: usize, s: usize) -> (Var, Tensor) {
    let logits = Var::from_tensor(&Tensor::randn(0f32, 2.0, (b, 3, s, s), dev).unwrap()).unwrap();
    let at = |v: usize| v * s / 512;
    let mut y = vec![0u32; b * s * s];
    for (i, v) in y.iter_mut().enumerate() {
        let (r, c) = ((i / s) % s, i % s);
        if (at(200)..at(300)).contains(&r) && (at(100)..at(200)).contains(&c) {
            *v = 1;
        }
        if (at(230)..at(260)).contains(&r) && (at(130)..at(160)).contains(&c) {
            *v = 2;
        }
    }
    let labels = Tensor::from_vec(y, (b, s, s), dev).unwrap();
    (logits, labels)
}

fn bench_device(c: &mut Criterion, name: &str, dev: &Device) {
    let (logits, labels) = inputs(dev, 8, 512);
    let probs = Var::from_tensor(&candle_nn::ops::softmax(logits.as_tensor(), 1).unwrap()).unwrap();
    let sync = |t: &Tensor| {
        let _ = t
            .to_dtype(DType::F32)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
    };
    let mut g = c.benchmark_group(format!("loss_{name}"));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("lovasz_fwd_bwd_8x3x512x512", |b| {
        b.iter(|| {
            let l = lovasz_softmax(probs.as_tensor(), &labels, &LovaszConfig::default()).unwrap();
            let grads = l.backward().unwrap();
            let gp = grads.get(&probs).unwrap();
            sync(gp);
            black_box(l)
        })
    });
    let weights = Tensor::new(&[0.3f32, 1.0, 2.5], dev).unwrap();
    let loss = SegLoss::new(SegLossConfig::default(), Some(weights)).unwrap();
    for (b, s) in [(8, 512), (4, 128)] {
        let (logits, labels) = inputs(dev, b, s);
        let shape = format!("{b}x3x{s}x{s}");
        let ways: [(&str, &dyn Fn() -> LossParts); 2] = [
            ("combined", &|| {
                loss.forward(logits.as_tensor(), &labels).unwrap()
            }),
            ("combined_composed", &|| {
                loss.forward_composed(logits.as_tensor(), &labels).unwrap()
            }),
        ];
        for (name, run) in ways {
            g.bench_function(format!("{name}_fwd_bwd_{shape}"), |bench| {
                bench.iter(|| {
                    let parts = run();
                    let grads = parts.total.backward().unwrap();
                    sync(grads.get(&logits).unwrap());
                    black_box(parts)
                })
            });
        }
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_device(c, "cpu", &Device::Cpu);
    #[cfg(feature = "cuda")]
    if let Ok(dev) = Device::new_cuda(0) {
        bench_device(c, "cuda", &dev);
    }
}

criterion_group!(loss, benches);
criterion_main!(loss);
