//! Helpers shared by every test harness of the workspace (the root's
//! `tests/main.rs` and each crate's `tests/main.rs` include this file with
//! `#[path]`). Candle-free: the tensor helpers are in `tensors.rs`, which
//! only the harnesses of crates with tensors include.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root: the first folder above the crate being tested that
/// holds `testdata/`.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("testdata").is_dir())
        .unwrap_or_else(|| panic!("no testdata/ above {}", here.display()))
        .to_path_buf()
}

/// A path under the repository's `testdata/`.
pub fn testdata(rel: &str) -> PathBuf {
    workspace_root().join("testdata").join(rel)
}

/// Relative closeness for floats read from fixtures.
pub fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0)
}
