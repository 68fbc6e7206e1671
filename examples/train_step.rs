//! Runs a few Res-U-Net training steps (forward, weighted CE + Lovász,
//! backward, AdamW) and prints the time of each: the peak memory of a step
//! is measured from outside, e.g.
//!
//! ```sh
//! cargo build --release --example train_step
//! /usr/bin/time -v target/release/examples/train_step --base 8 --depth 5 --batch 4 --size 128
//! ```
//!
//! ("Maximum resident set size"). docs/PERFORMANCE.md records the figures;
//! benches/compare/train_step.sh runs this beside PyTorch's same step.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use clap::Parser;
use kseg::loss::{SegLoss, SegLossConfig};
use kseg::model::{ResUNet, ResUNetConfig};

// The allocator the kseg binaries use (see Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 32)]
    base: usize,
    #[arg(long, default_value_t = 5)]
    depth: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 512)]
    size: usize,
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Time the eval-mode forward instead of a training step.
    #[arg(long)]
    eval: bool,
}

fn main() -> Result<()> {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { kseg::train::init_cpu_threads() };
    let a = Args::parse();
    let dev = Device::Cpu;
    let cfg = ResUNetConfig {
        base_channels: a.base,
        depth: a.depth,
        ..Default::default()
    };
    let (model, varmap) = ResUNet::init(&cfg, 0, DType::F32, &dev)?;
    let x = Tensor::randn(0f32, 1.0, (a.batch, 3, a.size, a.size), &dev)?;
    let y = Tensor::rand(0f32, 3.0, (a.batch, a.size, a.size), &dev)?
        .floor()?
        .to_dtype(DType::U32)?;
    // The criterion bench's class weights (and benches/compare's).
    let loss = SegLoss::new(
        SegLossConfig::default(),
        Some(Tensor::new(&[0.3f32, 1.0, 2.5], &dev)?),
    )?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    for step in 0..a.steps {
        let t = Instant::now();
        if a.eval {
            let logits = model.forward_t(&x, false)?;
            logits.flatten_all()?.get(0)?.to_scalar::<f32>()?;
            println!(
                "step {step}: eval forward {:.3} s",
                t.elapsed().as_secs_f64()
            );
            continue;
        }
        let logits = model.forward_t(&x, true)?;
        let parts = loss.forward(&logits, &y)?;
        opt.backward_step(&parts.total)?;
        println!(
            "step {step}: loss {:.4}, {:.3} s",
            parts.total.to_scalar::<f32>()?,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
