//! Training for kseg. So far: optimisers whose state can be checkpointed
//! (candle's `AdamW` decays every parameter and hides its moments) and the
//! learning-rate schedules of nnU-Net and of cosine training. The trainer
//! itself lands with its issue.

pub mod optim;
pub mod schedule;

pub use optim::{AdamW, AdamWConfig, Optimiser, Sgd, SgdConfig, decays};
pub use schedule::Schedule;
