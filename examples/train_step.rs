//! Runs a few Res-U-Net training steps (forward, weighted CE + Lovász,
//! backward, the trainer's AdamW) and prints the time of each and of its phases: the peak memory of a step
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
use candle_core::{Device, ModuleT};
use clap::Parser;
use kseg::infer::on_cpu_pool;
use kseg::model::ResUNetConfig;
use kseg::train::Optimiser;

#[path = "common/step.rs"]
mod step;
use step::StepProblem;

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
    unsafe { kseg::init_cpu_runtime() };
    let a = Args::parse();
    let dev = Device::Cpu;
    let cfg = ResUNetConfig {
        base_channels: a.base,
        depth: a.depth,
        ..Default::default()
    };
    let StepProblem {
        model,
        x,
        y,
        loss,
        mut opt,
    } = StepProblem::new(&cfg, a.batch, a.size, &dev)?;
    // As the trainer does: the steps run on a rayon worker (see
    // `kseg::infer::on_cpu_pool`).
    on_cpu_pool(&dev, || -> Result<()> {
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
            // The phases, each ending in a value read back (CPU: no queue).
            let logits = model.forward_t(&x, true)?;
            let t_fwd = t.elapsed().as_secs_f64();
            let parts = loss.forward(&logits, &y)?;
            let value = parts.total.to_scalar::<f32>()?;
            let t_loss = t.elapsed().as_secs_f64();
            let grads = parts.total.backward()?;
            let t_bwd = t.elapsed().as_secs_f64();
            opt.step(&grads)?;
            let total = t.elapsed().as_secs_f64();
            println!(
                "step {step}: loss {value:.4} (forward {t_fwd:.3}, loss {:.3}, backward {:.3}, optimiser {:.3}), {total:.3} s",
                t_loss - t_fwd,
                t_bwd - t_loss,
                total - t_bwd,
            );
        }
        Ok(())
    })
}
