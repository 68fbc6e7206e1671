//! The configuration presets: the files in `configs/`, built into the
//! binary and read by the same loader as a user's `--config` file.

use std::path::Path;

use kseg_train::{Result, TrainConfig, TrainError};

/// The presets by name, with their file's text.
pub const PRESETS: [(&str, &str); 4] = [
    ("kits19", include_str!("../configs/kits19.toml")),
    (
        "synthetic-cpu",
        include_str!("../configs/synthetic-cpu.toml"),
    ),
    ("kits23", include_str!("../configs/kits23.toml")),
    (
        "synthetic-kits23",
        include_str!("../configs/synthetic-kits23.toml"),
    ),
];

/// The preset `name` (`kits19`: the reference method on KiTS19, the
/// built-in defaults; `synthetic-cpu`: the 2-core CPU default job;
/// `kits23`: the reference method on KiTS23 labels with region-based
/// training; `synthetic-kits23`: the 2-core CPU job on synthetic cases with
/// cysts).
///
/// ```
/// let c = kseg::preset("synthetic-cpu").unwrap();
/// assert_eq!((c.model.base_channels, c.train.steps), (8, 4000));
/// assert!(kseg::preset("nope").is_err());
/// ```
pub fn preset(name: &str) -> Result<TrainConfig> {
    let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) else {
        return Err(TrainError::Config {
            path: None,
            msg: format!("no preset {name:?} (known: {:?})", PRESETS.map(|(n, _)| n)),
        });
    };
    let origin = format!("configs/{name}.toml");
    TrainConfig::from_text(text, true, Path::new(&origin))
}
