//! The crate's one error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading, writing or preparing volumes.
///
/// Every variant that concerns a file names it, so a message such as
/// `data/case_00004/segmentation.nii.gz: truncated data: 1048576 of 16777216 bytes`
/// tells the user which file to look at and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The operating system refused an operation on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a NIfTI-1 file we can read, or its header is inconsistent.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The file is a valid NIfTI file of a kind this crate deliberately refuses
    /// (NIfTI-2, a 4D volume where 3D is needed, complex data...).
    #[error("{}: unsupported: {msg}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What kind of file it is.
        msg: String,
    },
    /// A label volume holds a value outside the allowed classes.
    #[error(
        "{}: label value {value} at voxel {voxel:?} is not a class (allowed 0..={max_label}; {count} such voxels)",
        path.display()
    )]
    BadLabel {
        /// The label file.
        path: PathBuf,
        /// The value found.
        value: f64,
        /// The first voxel holding it.
        voxel: [usize; 3],
        /// The highest label allowed.
        max_label: u8,
        /// Voxels with values outside the set.
        count: usize,
    },
    /// Two volumes that must match do not.
    #[error("{}: shape {got:?} does not match {} shape {expected:?}", path.display(), other.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// Its shape.
        got: Vec<usize>,
        /// The file it must match.
        other: PathBuf,
        /// That file's shape.
        expected: Vec<usize>,
    },
    /// A case folder or a file in it is missing.
    #[error("{}: missing: {what}", path.display())]
    Missing {
        /// The folder (or file) concerned.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A folder holds no DICOM file (Part 10 files start with a 128-byte
    /// preamble and `DICM`).
    #[error("{}: missing: no DICOM files (Part 10 files start with a 128-byte preamble and DICM)", path.display())]
    NoDicom {
        /// The folder.
        path: PathBuf,
    },
    /// Predictions and truths that cannot be scored together (a missing
    /// prediction or truth, a prediction off its truth's grid).
    #[error("{}: {msg}", path.display())]
    Evaluation {
        /// The predictions folder or file concerned.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A prediction and its truth whose scoring failed.
    #[error("metric: {0}")]
    Metric(#[from] kseg_metrics::MetricError),
    /// An output that would replace an input of the same command (an input
    /// image, a ground truth), under its name or through a link.
    #[error(
        "{}: the output is the {what} {}; kseg never overwrites an input: choose another output",
        path.display(),
        input.display()
    )]
    WouldOverwriteInput {
        /// The output path.
        path: PathBuf,
        /// The input it names.
        input: PathBuf,
        /// What the input is (`input image`, `ground truth`).
        what: &'static str,
    },
    /// A write that failed, its message naming the user's path (what a
    /// writer said about a temporary file, with the output's path in its
    /// place).
    #[error("{msg}")]
    Write {
        /// The output.
        path: PathBuf,
        /// What went wrong, the output named.
        msg: String,
    },
    /// A size read from the file (or asked for) implies more memory than
    /// the limit ([`crate::limits`]) allows.
    #[error("{}: {source}", path.display())]
    TooLarge {
        /// The file (or what was asked for).
        path: PathBuf,
        /// The size and the limit.
        #[source]
        source: Box<crate::limits::LimitError>,
    },
    /// A caller passed an argument that cannot be honoured.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// The crate's result type.
pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

impl VolumeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        VolumeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, msg: impl Into<String>) -> Self {
        VolumeError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn unsupported(path: &Path, msg: impl Into<String>) -> Self {
        VolumeError::Unsupported {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn too_large(path: &Path, source: crate::limits::LimitError) -> Self {
        VolumeError::TooLarge {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }

    pub(crate) fn missing(path: &Path, what: impl Into<String>) -> Self {
        VolumeError::Missing {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}
