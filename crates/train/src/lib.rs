//! Training for kseg: a thin layer that ties the volume, augmentation,
//! model, loss, metrics and inference crates together into a loop.
//!
//! - [`TrainConfig`]: one nested configuration (TOML or JSON, dotted
//!   overrides), whose default is the reference method;
//! - [`Dataset`] and [`Loader`]: cases behind their slice caches, the split,
//!   and batches augmented on a background thread;
//! - [`Trainer`]: the loop, with AdamW or SGD ([`optim`]), learning-rate
//!   [`Schedule`]s, gradient clipping, validation on whole volumes,
//!   atomic checkpoints and exact resume;
//! - validation with `kseg-infer`'s `Segmenter` and the label set's
//!   metric (`kseg-metrics`);
//! - [`Observer`]: progress, JSON-lines metrics and PNG plots.

pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod observe;
pub mod optim;
pub mod plots;
pub mod run_dir;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{Checkpoint, TrainState};
pub use config::{
    ClassWeights, DataConfig, LoopConfig, LossConfig, OptimConfig, PostprocessConfig, TrainConfig,
};
pub use data::{Batch, Dataset, Loader};
pub use error::{Result, TrainError, candle_text};
pub use observe::{Observer, RunInfo, StepRecord, Summary, ValidationRecord};
pub use optim::{AdamW, AdamWConfig, Optimiser, Sgd, SgdConfig, decays};
pub use run_dir::{CheckpointDir, RunDir, RunLock};
pub use schedule::Schedule;
pub use trainer::Trainer;
