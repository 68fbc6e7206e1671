//! Trains the KiTS19 Res-U-Net end to end.
//!
//! With no arguments: synthetic KiTS-like cases (made once under `data/`,
//! then cached) and a configuration sized for a 2-core CPU (about 6
//! minutes). With `--data-dir PATH` (KiTS19's `data/` folder): the reference
//! method's setup, 512×512 3-slice stacks, the default Res-U-Net, a 180/30 split.
//!
//! ```text
//! cargo run --release --example train_kits19
//! cargo run --release --example train_kits19 -- --data-dir ~/kits19/data --out runs/seed
//! cargo run --release --example train_kits19 -- --resume runs/seed
//! ```
//!
//! The run folder ends with `summary.json` (validation Dice, best
//! checkpoint, steps, wall time, config), `metrics.jsonl`, `plots/` and
//! `checkpoints/`.

use clap::Parser;
use kseg::cli::TrainArgs;

#[derive(Parser)]
#[command(about = "Train the KiTS19 Res-U-Net (synthetic data by default)")]
struct Args {
    #[command(flatten)]
    train: TrainArgs,
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { kseg::init_cpu_runtime() };
    let args = Args::parse();
    match args.train.run() {
        Ok((dir, s)) => {
            println!(
                "kidney Dice {:.4}, tumour Dice {:.4}, composite {:.4} after {} steps in {:.0} s",
                s.kidney_dice, s.tumour_dice, s.composite, s.steps, s.wall_seconds
            );
            println!(
                "summary: {}",
                kseg::train::RunDir::new(dir).summary().display()
            );
            println!("best checkpoint: {}", s.best_checkpoint.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
