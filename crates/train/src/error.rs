//! The crate's one error type.

use std::path::{Path, PathBuf};

/// What can stop a run. Messages name the file or the step concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file or override that cannot be used.
    #[error("{}{msg}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Config {
        /// The file, when one is concerned.
        path: Option<PathBuf>,
        /// What is wrong.
        msg: String,
    },
    /// A checkpoint that is missing, damaged or for another model.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The checkpoint file or folder.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The loss or the gradient norm became NaN or infinite.
    #[error(
        "{what} is {value} at step {step} (cross-entropy {ce}, Lovász {lovasz}); the run stops here. {}",
        match last_good { Some(p) => format!("The last good checkpoint is {}.", p.display()), None => "No checkpoint was written yet.".to_string() }
    )]
    NonFinite {
        /// What was not finite.
        what: &'static str,
        /// The step it happened at.
        step: usize,
        /// Its value.
        value: f64,
        /// The cross-entropy at that step.
        ce: f64,
        /// The Lovász term at that step.
        lovasz: f64,
        /// The newest checkpoint written before.
        last_good: Option<PathBuf>,
    },
    /// From the volume crate (a file named).
    #[error(transparent)]
    Volume(#[from] kseg_volume::VolumeError),
    /// From loading or running a model (a file named).
    #[error(transparent)]
    Infer(#[from] kseg_infer::InferError),
    /// From the augmentation.
    #[error("augmentation: {0}")]
    Augment(#[from] kseg_augment::AugmentError),
    /// From scoring.
    #[error("metric: {0}")]
    Metric(#[from] kseg_metrics::MetricError),
    /// From candle. Not the error's `source`: a report that follows the
    /// chain would add candle's text again, with the backtrace candle
    /// appends when `RUST_BACKTRACE` is set.
    #[error("{}", candle_text(.0))]
    Candle(candle_core::Error),
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Candle(e)
    }
}

/// The crate's result type.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub use kseg_infer::candle_text;

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn config(path: &Path, msg: impl Into<String>) -> Self {
        TrainError::Config {
            path: Some(path.to_path_buf()),
            msg: msg.into(),
        }
    }

    pub(crate) fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
