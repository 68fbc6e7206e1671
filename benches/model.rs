//! Res-U-Net benches: eval forward and a full training step (forward,
//! weighted CE + Lovász, backward, the trainer's AdamW step), with the
//! kseg binaries' allocator and CPU settings, so that they measure what
//! `train_kits19` runs.
//!
//! `cargo bench --bench model` (CPU; add `--features cuda` on a GPU
//! machine: the CUDA benches then run too, synchronised before the clock
//! stops).

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, ModuleT, Tensor};
use criterion::{Criterion, criterion_group};
use kseg::loss::{SegLoss, SegLossConfig};
use kseg::model::{ResUNet, ResUNetConfig};
use kseg::train::{AdamW, AdamWConfig, Optimiser};

// The allocator the kseg binaries use (see the workspace Cargo.toml): with
// glibc's, fresh per-op buffers cost page faults that the trainer does not
// pay (forward/default_b1_512: 2.33 s with glibc, see docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Case {
    name: &'static str,
    cfg: ResUNetConfig,
    batch: usize,
    size: usize,
}

fn sync(t: &Tensor) {
    // Reading one value back waits for the device.
    let _ = t
        .flatten_all()
        .unwrap()
        .get(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
}

fn bench_case(c: &mut Criterion, dev: &Device, dev_name: &str, case: &Case) {
    let (model, varmap) = ResUNet::init(&case.cfg, 0, DType::F32, dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (case.batch, 3, case.size, case.size), dev).unwrap();
    let y = Tensor::rand(0f32, 3.0, (case.batch, case.size, case.size), dev)
        .unwrap()
        .floor()
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    let loss = SegLoss::new(
        SegLossConfig::default(),
        Some(Tensor::new(&[0.3f32, 1.0, 2.5], dev).unwrap()),
    )
    .unwrap();
    // The trainer's AdamW (decoupled decay skipping BN and biases; on the
    // CPU one fused pass per variable).
    let vars = varmap.data().lock().expect("varmap").clone();
    let mut opt = AdamW::new(
        &vars,
        AdamWConfig {
            lr: 1e-4,
            ..Default::default()
        },
    )
    .unwrap();
    let slow = case.size >= 512;
    let mut g = c.benchmark_group(dev_name.to_string());
    g.sample_size(10)
        .measurement_time(Duration::from_secs(if slow { 60 } else { 20 }));
    g.bench_function(format!("forward/{}", case.name), |b| {
        b.iter(|| {
            let out = model.forward_t(&x, false).unwrap();
            sync(&out);
            black_box(out)
        })
    });
    g.bench_function(format!("train_step/{}", case.name), |b| {
        b.iter(|| {
            let logits = model.forward_t(&x, true).unwrap();
            let parts = loss.forward(&logits, &y).unwrap();
            opt.step(&parts.total.backward().unwrap()).unwrap();
            sync(&parts.total);
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let cases = [
        Case {
            name: "base8_depth5_b4_128",
            cfg: ResUNetConfig {
                base_channels: 8,
                ..Default::default()
            },
            batch: 4,
            size: 128,
        },
        Case {
            name: "default_b1_512",
            cfg: ResUNetConfig::default(),
            batch: 1,
            size: 512,
        },
    ];
    for case in &cases {
        bench_case(c, &Device::Cpu, "cpu", case);
    }
    #[cfg(feature = "cuda")]
    if let Ok(dev) = Device::new_cuda(0) {
        for case in &cases {
            bench_case(c, &dev, "cuda", case);
        }
    }
}

criterion_group!(model, benches);

/// `criterion_main!` after the kseg binaries' CPU settings.
fn main() {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { kseg::init_cpu_runtime() };
    model();
    Criterion::default().configure_from_args().final_summary();
}
