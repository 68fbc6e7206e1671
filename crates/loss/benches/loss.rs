//! Loss benches at training size: 8×3×512×512 (2M pixels per class).
//!
//! `cargo bench -p kseg-loss --bench loss` (add `--features cuda` on a GPU
//! machine: the device benches then run too).

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use kseg_loss::{LovaszConfig, SegLoss, SegLossConfig, lovasz_softmax};

fn inputs(dev: &Device) -> (Var, Tensor) {
    let logits =
        Var::from_tensor(&Tensor::randn(0f32, 2.0, (8, 3, 512, 512), dev).unwrap()).unwrap();
    // Labels: mostly background, some kidney and tumour blocks.
    let mut y = vec![0u32; 8 * 512 * 512];
    for (i, v) in y.iter_mut().enumerate() {
        let (r, c) = ((i / 512) % 512, i % 512);
        if (200..300).contains(&r) && (100..200).contains(&c) {
            *v = 1;
        }
        if (230..260).contains(&r) && (130..160).contains(&c) {
            *v = 2;
        }
    }
    let labels = Tensor::from_vec(y, (8, 512, 512), dev).unwrap();
    (logits, labels)
}

fn bench_device(c: &mut Criterion, name: &str, dev: &Device) {
    let (logits, labels) = inputs(dev);
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
    g.bench_function("combined_fwd_bwd_8x3x512x512", |b| {
        b.iter(|| {
            let parts = loss.forward(logits.as_tensor(), &labels).unwrap();
            let grads = parts.total.backward().unwrap();
            sync(grads.get(&logits).unwrap());
            black_box(parts)
        })
    });
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
