//! The crate's one error type.

use std::path::{Path, PathBuf};

/// What can stop loading a model or segmenting a volume. Messages name the
/// file concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A model file that is missing, damaged or for another model.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The model file or checkpoint folder.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A device that cannot be had.
    #[error("{0}")]
    Device(String),
    /// From the volume crate (a file named).
    #[error(transparent)]
    Volume(#[from] kseg_volume::VolumeError),
    /// From the augmentation's warp (resizing).
    #[error("augmentation: {0}")]
    Augment(#[from] kseg_augment::AugmentError),
    /// From candle. Not the error's `source`: a report that follows the
    /// chain would add candle's text again, with the backtrace candle
    /// appends when `RUST_BACKTRACE` is set.
    #[error("{}", candle_text(.0))]
    Candle(candle_core::Error),
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

impl From<candle_core::Error> for InferError {
    fn from(e: candle_core::Error) -> Self {
        InferError::Candle(e)
    }
}

/// The crate's result type.
pub type Result<T, E = InferError> = std::result::Result<T, E>;

/// A candle error's message without the backtrace candle appends when
/// `RUST_BACKTRACE` is set: errors reach users as one line.
pub fn candle_text(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_text(inner),
        e => e.to_string(),
    }
}

impl InferError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        InferError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A model file's or checkpoint's fault, in words.
    pub fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        InferError::Checkpoint {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
