//! CPU inference, lever by lever (issue #29): the Res-U-Net's eval-mode
//! forward through the training graph (`ResUNet::forward_t`, what
//! `KSEG_INFER=graph` runs) beside `FrozenNet` with every lever, and with
//! each lever turned off on its own (`FreezeOptions`), so that what each
//! buys is the difference from `frozen/all`.
//!
//! `cargo bench --bench infer` (CPU; the kseg binaries' allocator and
//! thread settings). The weights are seeded and untrained; the work does
//! not depend on them.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, ModuleT, Tensor};
use criterion::{Criterion, criterion_group};
use kseg::infer::on_cpu_pool;
use kseg::model::{FreezeOptions, FrozenNet, Precision, ResUNet, ResUNetConfig, WinogradUse};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn benches(c: &mut Criterion) {
    let dev = Device::Cpu;
    // The KiTS19 preset's network on one batch of `kseg predict`'s CPU
    // default (2 slices of 512²).
    let (batch, size) = (2, 512);
    let cfg = ResUNetConfig::default();
    let (model, _vars) = ResUNet::init(&cfg, 0, DType::F32, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &dev).unwrap();
    let mut g = c.benchmark_group(format!("infer_b{batch}_{size}"));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("graph", |b| {
        b.iter(|| on_cpu_pool(&dev, || black_box(model.forward_t(&x, false).unwrap())))
    });
    let all = FreezeOptions::default();
    let variants = [
        ("frozen/all", all),
        (
            "frozen/no_fused_epilogue",
            FreezeOptions { fuse: false, ..all },
        ),
        (
            "frozen/training_winograd_rule",
            FreezeOptions {
                winograd: WinogradUse::Training,
                ..all
            },
        ),
        (
            "frozen/no_winograd",
            FreezeOptions {
                winograd: WinogradUse::Off,
                ..all
            },
        ),
        (
            "frozen/no_buffer_reuse",
            FreezeOptions {
                reuse_buffers: false,
                ..all
            },
        ),
        (
            "frozen/int8",
            FreezeOptions {
                precision: Precision::Int8,
                ..all
            },
        ),
        (
            "frozen/bf16",
            FreezeOptions {
                precision: Precision::Bf16,
                ..all
            },
        ),
    ];
    for (name, opts) in variants {
        let net = FrozenNet::with_options(&model, opts).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| on_cpu_pool(&dev, || black_box(net.forward(&x).unwrap())))
        });
    }
    g.finish();
}

criterion_group!(infer, benches);

/// `criterion_main!` after the kseg binaries' CPU settings.
fn main() {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { kseg::init_cpu_runtime() };
    infer();
    Criterion::default().configure_from_args().final_summary();
}
