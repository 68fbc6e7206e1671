//! The crate's one error type.

use std::path::{Path, PathBuf};

/// What can stop a run. Messages name the file or the step concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration file or override that cannot be used.
    #[error("{}{msg}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Config { path: Option<PathBuf>, msg: String },
    /// A checkpoint that is missing, damaged or for another model.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// The loss or the gradient norm became NaN or infinite.
    #[error(
        "{what} is {value} at step {step} (cross-entropy {ce}, Lovász {lovasz}); the run stops here. {}",
        match last_good { Some(p) => format!("The last good checkpoint is {}.", p.display()), None => "No checkpoint was written yet.".to_string() }
    )]
    NonFinite {
        what: &'static str,
        step: usize,
        value: f64,
        ce: f64,
        lovasz: f64,
        last_good: Option<PathBuf>,
    },
    #[error(transparent)]
    Volume(#[from] kseg_volume::VolumeError),
    #[error("augmentation: {0}")]
    Augment(#[from] kseg_augment::AugmentError),
    #[error("metric: {0}")]
    Metric(#[from] kseg_loss::MetricError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

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

/// Writes `path` through a temporary file in the same folder and a rename,
/// so that a reader sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(TrainError::io(path, e));
    }
    Ok(())
}

/// `.<name>.tmp-<pid>` next to `path`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
