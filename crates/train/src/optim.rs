//! Optimisers with state that goes into checkpoints.
//!
//! Both follow PyTorch's update rules (`torch.optim.AdamW`, `torch.optim.SGD`)
//! and take named variables, so that weight decay skips BatchNorm parameters
//! and biases ([`decays`]), as nnU-Net and most segmentation recipes do.
//! State is a map of named tensors plus the step count, saved with
//! safetensors next to the model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var, backprop::GradStore, bail};
use serde::{Deserialize, Serialize};

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
// The in-place ops run on CUDA; on the CPU only their test runs them
// (the fused `cpu::adamw` is the CPU path).
#[cfg(any(test, feature = "cuda"))]
mod op;

/// Whether weight decay applies to a variable: not to BatchNorm parameters
/// (a `bn` path component) nor to biases, nor to running statistics.
///
/// ```
/// assert!(kseg_train::decays("down.0.conv1.weight"));
/// assert!(!kseg_train::decays("down.0.bn1.weight"));
/// assert!(!kseg_train::decays("down.0.shortcut.bn.bias"));
/// assert!(!kseg_train::decays("head.classifier.bias"));
/// ```
pub fn decays(name: &str) -> bool {
    let is_bn = name.split('.').any(|p| p.starts_with("bn"));
    !is_bn && !name.ends_with(".bias") && !name.contains("running_")
}

/// The trainable variables of a `VarMap`, by name (running statistics left
/// out), in name order.
pub(crate) fn trainable(vars: &HashMap<String, Var>) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = vars
        .iter()
        .filter(|(n, _)| !n.contains("running_"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes the state tensors and the step count as safetensors, through a
/// temporary file and a rename (a crash never leaves half a state).
fn save_state(path: &Path, step: u64, tensors: HashMap<String, Tensor>) -> crate::Result<()> {
    let mut tensors = tensors;
    tensors.insert("__step".into(), Tensor::new(&[step as f64], &Device::Cpu)?);
    kseg_volume::fs::write_atomic(path, |tmp| {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })
}

fn load_state(path: &Path, device: &Device) -> Result<(u64, HashMap<String, Tensor>)> {
    let mut t = candle_core::safetensors::load(path, device)?;
    let Some(step) = t.remove("__step") else {
        bail!("{}: not an optimiser state (no __step)", path.display());
    };
    let values = step.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    // One whole, non-negative number that f64 holds exactly.
    let step = match values[..] {
        [s] if s.is_finite() && s >= 0.0 && s.fract() == 0.0 && s < 2f64.powi(53) => s as u64,
        [s] => bail!(
            "{}: __step is {s}, not a step count (a whole number >= 0)",
            path.display()
        ),
        _ => bail!(
            "{}: __step holds {} values; an optimiser state holds one step count",
            path.display(),
            values.len()
        ),
    };
    Ok((step, t))
}

/// What a trainer needs of an optimiser: a step from gradients, the learning
/// rate, and state in and out of checkpoints.
pub trait Optimiser: Send {
    /// One update from the gradients of `backward()`. Variables without a
    /// gradient are left alone (their state too).
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// Sets the learning rate of the next steps.
    fn set_lr(&mut self, lr: f64);
    /// Updates made so far.
    fn step_count(&self) -> u64;
    /// Writes the state and the step count as safetensors (atomically).
    fn save(&self, path: &Path) -> crate::Result<()>;
    /// Restores what [`Optimiser::save`] wrote for the same variables.
    fn load(&mut self, path: &Path) -> Result<()>;
    /// `loss.backward()` then [`Optimiser::step`].
    fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }
}

/// The device of the first variable (where loaded state must live).
fn state_device(vars: &[(String, Var)]) -> Device {
    vars.first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu)
}

/// AdamW settings. `Default`: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight
/// decay 0.01 (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (not on BatchNorm parameters and biases).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// AdamW with decoupled weight decay (Loshchilov & Hutter), PyTorch's rule:
/// `p -= lr·wd·p` (decaying variables only), then the Adam step with bias
/// correction.
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl AdamW {
    /// AdamW over the trainable variables of `vars` (by name).
    pub fn new(vars: &HashMap<String, Var>, cfg: AdamWConfig) -> Result<AdamW> {
        let vars = trainable(vars);
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            cfg,
            vars,
            m,
            v,
            step: 0,
        })
    }
}

impl Optimiser for AdamW {
    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn step_count(&self) -> u64 {
        self.step
    }

    /// One update from the gradients of `backward()`. Variables without a
    /// gradient are left alone (their moments too).
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            // Gradients carry their autograd graph: state kept across steps
            // must be detached, or every step's graph stays alive.
            let g = g.detach();
            let decay = if decays(name) {
                c.lr * c.weight_decay
            } else {
                0.0
            };
            let rule = AdamRule {
                beta1: c.beta1,
                beta2: c.beta2,
                bc1,
                bc2,
                eps: c.eps,
                lr: c.lr,
                decay,
            };
            let (p, m, v) = (var.as_tensor(), &self.m[i], &self.v[i]);
            #[cfg(feature = "cuda")]
            if cuda::applies(p, &g, m, v) {
                cuda::adamw(&rule, p, &g, m, v)?;
                continue;
            }
            if cpu::applies(p, &g, m, v) {
                let (p, m, v) = cpu::adamw(&rule, p, &g, m, v)?;
                var.set(&p)?;
                self.m[i] = m;
                self.v[i] = v;
                continue;
            }
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?.detach();
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
            let p = var.as_tensor().detach();
            let p = if decays(name) && c.weight_decay != 0.0 {
                (&p * (1.0 - c.lr * c.weight_decay))?
            } else {
                p.clone()
            };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            var.set(&(p - (update * c.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Writes the moments and the step count as safetensors.
    fn save(&self, path: &Path) -> crate::Result<()> {
        let mut t = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            t.insert(format!("m.{name}"), self.m[i].clone());
            t.insert(format!("v.{name}"), self.v[i].clone());
        }
        save_state(path, self.step, t)
    }

    /// Restores what [`AdamW::save`] wrote; every variable must be there.
    fn load(&mut self, path: &Path) -> Result<()> {
        let device = state_device(&self.vars);
        let (step, mut t) = load_state(path, &device)?;
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let Some(x) = t.remove(&format!("{prefix}.{name}")) else {
                    bail!(
                        "{}: no {prefix}.{name} in the optimiser state",
                        path.display()
                    );
                };
                if x.dims() != var.dims() {
                    bail!(
                        "{}: {prefix}.{name} has shape {:?}, the variable {:?}",
                        path.display(),
                        x.dims(),
                        var.dims()
                    );
                }
                *slot = x.to_dtype(var.dtype())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// One AdamW update's constants: `decay` is `lr · weight_decay` for
/// decaying variables, else 0.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamRule {
    pub(crate) beta1: f64,
    pub(crate) beta2: f64,
    pub(crate) bc1: f64,
    pub(crate) bc2: f64,
    pub(crate) eps: f64,
    pub(crate) lr: f64,
    pub(crate) decay: f64,
}

/// SGD settings. `Default`: nnU-Net's lr 0.01, momentum 0.99, Nesterov,
/// weight decay 3e-5.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay (not on BatchNorm parameters and biases).
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 0.01,
            momentum: 0.99,
            nesterov: true,
            weight_decay: 3e-5,
        }
    }
}

/// SGD with momentum, PyTorch's rule: `g += wd·p` (decaying variables only),
/// `buf = momentum·buf + g` (`buf = g` on the first step), then
/// `p -= lr·(g + momentum·buf)` with Nesterov or `p -= lr·buf` without.
pub struct Sgd {
    cfg: SgdConfig,
    vars: Vec<(String, Var)>,
    buf: Vec<Option<Tensor>>,
    step: u64,
}

impl Sgd {
    /// SGD over the trainable variables of `vars` (by name).
    pub fn new(vars: &HashMap<String, Var>, cfg: SgdConfig) -> Result<Sgd> {
        let vars = trainable(vars);
        let buf = vec![None; vars.len()];
        Ok(Sgd {
            cfg,
            vars,
            buf,
            step: 0,
        })
    }
}

impl Optimiser for Sgd {
    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn step_count(&self) -> u64 {
        self.step
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            // Detached: the momentum buffer must not keep this step's graph.
            let g = g.detach();
            let p = var.as_tensor().detach();
            let g = if decays(name) && c.weight_decay != 0.0 {
                (&g + (&p * c.weight_decay)?)?
            } else {
                g.clone()
            };
            let d = if c.momentum != 0.0 {
                let b = match &self.buf[i] {
                    Some(b) => ((b * c.momentum)? + &g)?.detach(),
                    None => g.clone(),
                };
                let d = if c.nesterov {
                    (&g + (&b * c.momentum)?)?
                } else {
                    b.clone()
                };
                self.buf[i] = Some(b);
                d
            } else {
                g
            };
            var.set(&(&p - (d * c.lr)?)?)?;
        }
        Ok(())
    }

    /// Writes the momentum buffers and the step count as safetensors.
    fn save(&self, path: &Path) -> crate::Result<()> {
        let mut t = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            if let Some(b) = &self.buf[i] {
                t.insert(format!("buf.{name}"), b.clone());
            }
        }
        save_state(path, self.step, t)
    }

    /// Restores what [`Sgd::save`] wrote.
    fn load(&mut self, path: &Path) -> Result<()> {
        let device = state_device(&self.vars);
        let (step, mut t) = load_state(path, &device)?;
        for (i, (name, var)) in self.vars.iter().enumerate() {
            self.buf[i] = match t.remove(&format!("buf.{name}")) {
                Some(b) if b.dims() == var.dims() => Some(b.to_dtype(var.dtype())?),
                Some(b) => bail!(
                    "{}: buf.{name} has shape {:?}, the variable {:?}",
                    path.display(),
                    b.dims(),
                    var.dims()
                ),
                None => None,
            };
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-place ops of `op.rs` (the host mirror of the CUDA kernels)
    /// give the fused CPU pass's values bit for bit, over several steps
    /// with and without weight decay.
    #[test]
    fn in_place_ops_mirror_the_fused_cpu_update() {
        let dev = Device::Cpu;
        let n = 1000;
        let vals = |k: u32| -> Vec<f32> {
            (0..n)
                .map(|i| (i as f32 * 0.37 + k as f32 * 1.3).sin() * 0.5)
                .collect()
        };
        for decay in [0.0, 0.004 * 0.01] {
            let mut p = Tensor::from_vec(vals(0), n, &dev).unwrap();
            let mut m = Tensor::zeros(n, DType::F32, &dev).unwrap();
            let mut v = Tensor::zeros(n, DType::F32, &dev).unwrap();
            let (p2, m2, v2) = (p.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
            for step in 1..=5 {
                let g = Tensor::from_vec(vals(step), n, &dev).unwrap();
                let rule = AdamRule {
                    beta1: 0.9,
                    beta2: 0.999,
                    bc1: 1.0 - 0.9f64.powi(step as i32),
                    bc2: 1.0 - 0.999f64.powi(step as i32),
                    eps: 1e-8,
                    lr: 0.004,
                    decay,
                };
                assert!(cpu::applies(&p, &g, &m, &v));
                (p, m, v) = cpu::adamw(&rule, &p, &g, &m, &v).unwrap();
                m2.inplace_op2(&g, &op::Moment::of(false, 0.9)).unwrap();
                v2.inplace_op2(&g, &op::Moment::of(true, 0.999)).unwrap();
                p2.inplace_op3(&m2, &v2, &op::Update::of(&rule)).unwrap();
                for (a, b) in [(&p, &p2), (&m, &m2), (&v, &v2)] {
                    let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
                    assert!(
                        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "step {step}: the mirror differs"
                    );
                }
            }
        }
    }
}
