//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

/// A learning rate as a function of the step (0-based) out of `total`.
///
/// ```
/// use kseg_train::Schedule;
/// let poly = Schedule::Poly { exponent: 0.9 };
/// assert_eq!(poly.lr(0.01, 0, 100), 0.01);
/// assert!((poly.lr(0.01, 50, 100) - 0.01 * 0.5f64.powf(0.9)).abs() < 1e-15);
/// let cos = Schedule::Cosine { warmup: 10, min_lr: 0.0 };
/// assert!((cos.lr(1.0, 4, 110) - 0.5).abs() < 1e-12); // warm-up: (4+1)/10
/// assert!((cos.lr(1.0, 60, 110) - 0.5).abs() < 1e-12); // half-way down
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// nnU-Net's poly decay: `base · (1 - step/total)^exponent` (0.9).
    Poly {
        /// The exponent (nnU-Net: 0.9).
        exponent: f64,
    },
    /// Linear warm-up over `warmup` steps (`base · (step+1)/warmup`), then
    /// cosine decay from `base` to `min_lr` over the remaining steps.
    Cosine {
        /// Warm-up steps.
        warmup: usize,
        /// The rate at the last step.
        min_lr: f64,
    },
}

impl Schedule {
    /// The learning rate of `step` of `total`, from the base rate `base`.
    pub fn lr(&self, base: f64, step: usize, total: usize) -> f64 {
        let total = total.max(1);
        let step = step.min(total);
        match *self {
            Schedule::Constant => base,
            Schedule::Poly { exponent } => base * (1.0 - step as f64 / total as f64).powf(exponent),
            Schedule::Cosine { warmup, min_lr } => {
                if step < warmup {
                    base * (step + 1) as f64 / warmup as f64
                } else {
                    let span = (total - warmup.min(total)).max(1) as f64;
                    let t = (step - warmup) as f64 / span;
                    min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
        }
    }
}
