//! The Res-U-Net of the KiTS19 contest's first-prize method (after
//! SalsaNext): an encoder of residual down-sampling blocks and a
//! PixelShuffle decoder with residual concatenation blocks, on candle.
//! Checkpoint tensor names are PyTorch's, so weights move both ways.
//!
//! ```
//! use candle_core::{DType, Device, ModuleT, Tensor};
//! use kseg_model::{ResUNet, ResUNetConfig};
//! # fn main() -> candle_core::Result<()> {
//! let cfg = ResUNetConfig { base_channels: 4, depth: 2, ..Default::default() };
//! let (model, _varmap) = ResUNet::init(&cfg, 42, DType::F32, &Device::Cpu)?;
//! let x = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu)?;
//! let logits = model.forward_t(&x, false)?;
//! assert_eq!(logits.dims(), &[1, 3, 16, 16]);
//! # Ok(())
//! # }
//! ```
//!
//! `unsafe` lives in two kinds of file only (the crate denies it elsewhere):
//! `host.rs` (with its submodules `host/vnni.rs` and `host/bf16.rs`, the
//! int8 and bf16 kernels' intrinsics), the host floor of the CPU kernels, and each layer's CUDA
//! kernels `X/cuda.rs` (launches and device buffers, with the `cuda`
//! feature). Every block has a `// SAFETY:` comment.

#![deny(unsafe_code)]

mod act;
pub mod blocks;
pub mod conv;
pub mod frozen;
mod gpu;
#[allow(unsafe_code)] // the host floor: see above
mod host;
pub mod norm;
mod resunet;

pub use act::leaky_relu;
pub use blocks::{CatConv, CatResBlock, Connector, Conv0, ResDownSample, UpSample};
pub use frozen::{
    FreezeOptions, FrozenNet, Precision, WinogradUse, bf16_accelerated, int8_accelerated,
};
pub use gpu::{gpu_ops, set_gpu_ops, set_tf32, tf32};
pub use norm::BatchNorm2d;
pub use resunet::{ResUNet, ResUNetConfig};
