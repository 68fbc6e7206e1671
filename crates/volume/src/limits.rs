//! The one memory limit of the workspace: every size that comes from
//! outside (a NIfTI header, DICOM tags, a model file's metadata, a
//! configuration or the command line) is checked here against the memory
//! it implies, before anything of that size exists. A size beyond the limit
//! is an error that says what would have been allocated, never an abort
//! under a memory cap (`ulimit -v`, batch schedulers).
//!
//! The limit is [`DEFAULT_MAX_BYTES`] (4 GiB: the largest KiTS19 case,
//! 1059×512×512 int16 decoded to float32, needs 1.7 GB), or the value of
//! the environment variable [`MAX_BYTES_ENV`] (`KSEG_MAX_BYTES`): a number
//! of bytes, optionally with a binary suffix `K`, `M`, `G` or `T`
//! (`KSEG_MAX_BYTES=16G`). A value that is not such a number is an error,
//! not a silent fallback to the default.
//!
//! ```
//! use kseg_volume::limits;
//! // 512×512×600 float32 voxels fit in the default limit, 4096×4096×300 do not.
//! assert!(limits::check("a volume", &[600, 512, 512], 4).is_ok());
//! assert!(limits::check("a volume", &[300, 4096, 4096], 4).is_err());
//! ```

/// The environment variable that overrides [`DEFAULT_MAX_BYTES`].
pub const MAX_BYTES_ENV: &str = "KSEG_MAX_BYTES";

/// The default limit: 4 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

/// A size beyond the memory limit, or a limit that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// `what` would need `bytes` bytes (`None`: more than 2^128).
    #[error(
        "{what} would need {}, more than the memory limit of {} ({MAX_BYTES_ENV}=<bytes> raises it)",
        bytes.map_or("more than 2^128 bytes".to_string(), human),
        human(u128::from(*limit))
    )]
    TooLarge {
        /// What would have been allocated.
        what: String,
        /// The bytes it would need.
        bytes: Option<u128>,
        /// The limit in force.
        limit: u64,
    },
    /// The environment variable holds something else than a size.
    #[error(
        "{MAX_BYTES_ENV}={0:?} is not a number of bytes (e.g. 8589934592 or 8G; K, M, G, T are binary)"
    )]
    BadSetting(String),
}

/// `n` bytes in words: `"21.5 GB (21474836480 bytes)"`.
fn human(n: u128) -> String {
    let gb = n as f64 / 1e9;
    if gb >= 0.1 {
        format!("{gb:.1} GB ({n} bytes)")
    } else {
        format!("{n} bytes")
    }
}

/// Parses a size: digits, optionally followed by `K`, `M`, `G` or `T`
/// (binary multiples; `KiB`, `GB`... are read the same way).
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift).filter(|&b| b > 0)
}

/// The limit in force: [`MAX_BYTES_ENV`] when set, else
/// [`DEFAULT_MAX_BYTES`].
pub fn max_bytes() -> Result<u64, LimitError> {
    match std::env::var(MAX_BYTES_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_MAX_BYTES),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(LimitError::BadSetting(v.to_string_lossy().into_owned()))
        }
        Ok(v) => parse_size(&v).ok_or(LimitError::BadSetting(v)),
    }
}

/// Checks that `bytes` bytes (`None`: an overflow while computing them)
/// fit in the limit; returns them.
pub fn check_bytes(what: &str, bytes: Option<u128>) -> Result<u64, LimitError> {
    let limit = max_bytes()?;
    match bytes {
        Some(b) if b <= u128::from(limit) => Ok(b as u64),
        _ => Err(LimitError::TooLarge {
            what: what.to_string(),
            bytes,
            limit,
        }),
    }
}

/// The bytes of an array of `dims` elements of `elem` bytes each (`None`
/// on overflow).
pub fn bytes_of(dims: &[usize], elem: usize) -> Option<u128> {
    dims.iter()
        .try_fold(elem as u128, |acc, &d| acc.checked_mul(d as u128))
}

/// Checks an array of `dims` elements of `elem` bytes each against the
/// limit; returns its bytes.
pub fn check(what: &str, dims: &[usize], elem: usize) -> Result<u64, LimitError> {
    check_bytes(what, bytes_of(dims, elem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_by_hand() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size(" 3 MiB "), Some(3 << 20));
        assert_eq!(parse_size("2t"), Some(2 << 40));
        for bad in ["", "G", "-1", "1.5G", "0", "12Q", "99999999999999999999"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        assert_eq!(parse_size("20000000T"), None, "overflow");
    }

    #[test]
    fn products_that_overflow_are_too_large() {
        assert_eq!(bytes_of(&[2, 3], 4), Some(24));
        assert_eq!(bytes_of(&[usize::MAX, usize::MAX, usize::MAX], 8), None);
    }
}
