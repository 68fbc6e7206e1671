//! The crate's error type.

/// Bad configuration or input.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum AugmentError {
    /// A configuration value is out of range or not a number.
    #[error("augmentation config: {0}")]
    Config(String),
    /// Image and label (or image and parameters) do not fit together.
    #[error("augmentation input: {0}")]
    Input(String),
}

/// The crate's result type.
pub type Result<T, E = AugmentError> = std::result::Result<T, E>;
