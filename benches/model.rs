//! Res-U-Net benches: eval forward and a full training step (forward,
//! weighted CE + Lovász, backward, the trainer's AdamW step), with the
//! kseg binaries' allocator and CPU settings, so that they measure what
//! `train_kits19` runs.
//!
//! `cargo bench --bench model` (CPU; add `--features cuda` on a GPU
//! machine: the CUDA benches then run too, synchronised before the clock
//! stops).

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, ModuleT, Tensor};
use criterion::{Criterion, criterion_group};
use kseg::infer::on_cpu_pool;
use kseg::model::ResUNetConfig;
use kseg::train::Optimiser;

#[path = "../examples/common/step.rs"]
mod step;
use step::StepProblem;

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
    let StepProblem {
        model,
        x,
        y,
        loss,
        mut opt,
    } = StepProblem::new(&case.cfg, case.batch, case.size, dev).unwrap();
    let slow = case.size >= 512;
    let mut g = c.benchmark_group(dev_name.to_string());
    g.sample_size(10)
        .measurement_time(Duration::from_secs(if slow { 60 } else { 20 }));
    g.bench_function(format!("forward/{}", case.name), |b| {
        b.iter(|| {
            on_cpu_pool(dev, || {
                let out = model.forward_t(&x, false).unwrap();
                sync(&out);
                black_box(out)
            })
        })
    });
    g.bench_function(format!("train_step/{}", case.name), |b| {
        b.iter(|| {
            on_cpu_pool(dev, || {
                let logits = model.forward_t(&x, true).unwrap();
                let parts = loss.forward(&logits, &y).unwrap();
                opt.step(&parts.total.backward().unwrap()).unwrap();
                sync(&parts.total);
            })
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
