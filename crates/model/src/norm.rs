//! BatchNorm2d fused with the residual add and LeakyReLU that follow it.
//!
//! Every BatchNorm of the Res-U-Net is followed by `LeakyReLU(bn(x))` or
//! `LeakyReLU(bn(x) + residual)`. candle's `BatchNorm` in training mode is a
//! chain of tensor ops (transpose + copy, subtract, square, divide, multiply,
//! add, transpose back) whose autograd keeps several activation-sized
//! intermediates, and the activation adds three more. On the CPU in f32,
//! [`BatchNorm2d::forward_act`] computes `act(bn(x) [+ r])` in one custom op
//! (`BnAct`) that keeps only its input and output and has a hand-written
//! backward; on CUDA in f32, with kseg's GPU ops switched on
//! (`crate::gpu_ops`), the same op runs on kseg's kernels (`norm/cuda.rs`,
//! `kernels/bn.cu`; opt-in until a GPU run verifies them); elsewhere (CUDA by
//! default, Metal, f64) it is candle's `BatchNorm` followed by the same add
//! and activation as tensor ops. Both update the running
//! statistics like PyTorch (momentum 0.1, unbiased running variance).

//!
//! Layout (docs/ARCHITECTURE.md, "Where things go"): this file holds the
//! layer, which tries each device's fused path in turn (`cuda`, then `cpu`:
//! each module's `applies`, then its `forward_act`) and falls back to
//! candle's ops; `norm/op.rs` the custom op (`BnAct`, one `impl` for every
//! device); `norm/cpu.rs` its CPU kernels; `norm/cuda.rs` (with the `cuda`
//! feature) its CUDA kernels.

use candle_core::{ModuleT, Result, Tensor, Var, bail};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder};

use crate::act::leaky_relu;

mod cpu;
#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // kernel launches: see the crate's unsafe rule (lib.rs)
mod cuda;
#[cfg(test)]
mod mirror;
mod op;

/// PyTorch's `BatchNorm2d` (eps 1e-5, momentum 0.1, affine; names `weight`,
/// `bias`, `running_mean`, `running_var`).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    inner: BatchNorm,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm2d {
    /// Added to the variance (PyTorch's default).
    pub const EPS: f64 = 1e-5;
    /// Weight of the new batch in the running statistics (PyTorch's default).
    pub const MOMENTUM: f64 = 0.1;

    /// A BatchNorm over `c` channels with its parameters and running statistics under `vb`.
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let inner = candle_nn::batch_norm(
            c,
            BatchNormConfig {
                eps: Self::EPS,
                remove_mean: true,
                affine: true,
                momentum: Self::MOMENTUM,
            },
            vb,
        )?;
        // The running statistics are variables of the VarMap: these share
        // their storage, so updating them updates what a checkpoint saves.
        Ok(BatchNorm2d {
            running_mean: Var::from_tensor(inner.running_mean())?,
            running_var: Var::from_tensor(inner.running_var())?,
            inner,
        })
    }

    /// `LeakyReLU_slope(bn(x) + residual)`; `slope` 1 is the identity, no
    /// `residual` adds nothing. In training mode the batch statistics are
    /// used and the running ones updated.
    ///
    /// # Shapes
    /// `x` and `residual`: `(B, C, H, W)`.
    pub fn forward_act(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        slope: f64,
        train: bool,
    ) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if cuda::applies(self, x, residual, slope) {
            return cuda::forward_act(self, x, residual, slope, train);
        }
        if cpu::applies(self, x, residual, slope) {
            return cpu::forward_act(self, x, residual, slope, train);
        }
        let y = self.inner.forward_t(x, train)?;
        let y = match residual {
            Some(r) => (y + r)?,
            None => y,
        };
        if slope == 1.0 {
            Ok(y)
        } else {
            leaky_relu(&y, slope)
        }
    }

    /// The checks of the fused paths: `x`'s channels are the layer's, and
    /// the residual has `x`'s shape. Returns `x`'s dimensions.
    fn check_fused(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<(usize, usize, usize, usize)> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.running_mean.dim(0)? {
            bail!(
                "batch norm: input has {c} channels, the layer {}",
                self.running_mean.dim(0)?
            );
        }
        if let Some(r) = residual
            && r.dims() != x.dims()
        {
            bail!(
                "batch norm: residual {:?} does not match the input {:?}",
                r.dims(),
                x.dims()
            );
        }
        Ok((b, c, h, w))
    }

    /// Evaluation mode as `y = scale·x + shift` per channel, in f64:
    /// `scale = γ / sqrt(running_var + eps)`, `shift = β − running_mean·scale`
    /// (what [`crate::frozen`] folds into the convolution before it).
    pub(crate) fn scale_shift(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        let (weight, bias) = self
            .inner
            .weight_and_bias()
            .expect("BatchNorm2d is built affine");
        let f = |t: &Tensor| -> Result<Vec<f64>> { t.to_dtype(candle_core::DType::F64)?.to_vec1() };
        let (g, b) = (f(weight)?, f(bias)?);
        let (mean, var) = (
            f(self.running_mean.as_tensor())?,
            f(self.running_var.as_tensor())?,
        );
        let scale: Vec<f64> = g
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + Self::EPS).sqrt())
            .collect();
        let shift = b
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok((scale, shift))
    }

    /// `[gamma; beta]`, `(2, C)`: the fused op's second argument.
    fn gamma_beta(&self) -> Result<Tensor> {
        let (weight, bias) = self
            .inner
            .weight_and_bias()
            .expect("BatchNorm2d is built affine");
        Tensor::stack(&[weight, bias], 0)
    }

    /// Updates the running statistics like PyTorch from a batch's `(C,)`
    /// mean and biased variance over `n` values per channel.
    fn update_running(&self, mean: Tensor, var: Tensor, n: f64) -> Result<()> {
        let m = Self::MOMENTUM;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (var * (m * unbias))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(())
    }
}
