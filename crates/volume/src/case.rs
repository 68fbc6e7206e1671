//! KiTS19 case folders: `case_XXXXX/imaging.nii.gz` and, for training
//! cases, `case_XXXXX/segmentation.nii.gz`.

use std::path::{Path, PathBuf};

use kseg_metrics::LabelSet;

use crate::error::{Result, VolumeError};
use crate::nifti::{Volume, read_labels_canonical, read_volume_canonical};
use crate::orient::Orientation;

/// File name of a case's CT volume.
pub const IMAGING: &str = "imaging.nii.gz";
/// File name of a case's label volume.
pub const SEGMENTATION: &str = "segmentation.nii.gz";
/// The prefix of a case folder's name (`case_00004`).
pub const CASE_PREFIX: &str = "case_";

/// A case folder on disk, not yet loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseDir {
    /// The folder name, e.g. `case_00004`.
    pub id: String,
    /// The folder.
    pub dir: PathBuf,
    /// The CT volume file.
    pub imaging: PathBuf,
    /// `None` for test cases (imaging only).
    pub segmentation: Option<PathBuf>,
}

impl CaseDir {
    /// Looks at a case folder: `imaging.nii.gz` must exist (or
    /// `imaging.nii`), `segmentation.nii.gz` may.
    pub fn open(dir: impl AsRef<Path>) -> Result<CaseDir> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(VolumeError::missing(dir, "case folder does not exist"));
        }
        let find = |name: &str| find_in(dir, name);
        let imaging = find(IMAGING)
            .ok_or_else(|| VolumeError::missing(dir, format!("{IMAGING} in case folder")))?;
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(CaseDir {
            id,
            dir: dir.to_path_buf(),
            imaging,
            segmentation: find(SEGMENTATION),
        })
    }

    /// Loads imaging (HU, f32) and labels, checking that they agree, and
    /// brings both to the internal layout ([`crate::orient`]: slices first,
    /// KiTS19's orientation) from whatever orientation the imaging's affine
    /// gives.
    ///
    /// The two files are decoded in parallel (gzip inflation is serial per
    /// file, so this is the cheap way to use two cores).
    ///
    /// The labels are checked against the label set `labels`.
    pub fn load(&self, labels: LabelSet) -> Result<Case> {
        let (imaging, labels) = rayon::join(
            || read_volume_canonical(&self.imaging),
            || {
                self.segmentation
                    .as_ref()
                    .map(|p| read_labels_canonical(p, labels))
            },
        );
        let (imaging, orientation) = imaging?;
        let labels = match (&self.segmentation, labels) {
            (Some(p), Some(l)) => {
                let (l, theirs) = l?;
                if l.header.shape() != imaging.header.shape() {
                    return Err(VolumeError::ShapeMismatch {
                        path: p.clone(),
                        got: l.header.shape().to_vec(),
                        other: self.imaging.clone(),
                        expected: imaging.header.shape().to_vec(),
                    });
                }
                if theirs.codes() != orientation.codes() {
                    return Err(VolumeError::format(
                        p,
                        format!(
                            "axes {:?} but the imaging's are {:?} ({}): the two must share a voxel grid",
                            theirs.codes(),
                            orientation.codes(),
                            self.imaging.display()
                        ),
                    ));
                }
                if let Some(why) = l.header.grid_mismatch(&imaging.header) {
                    return Err(VolumeError::format(
                        p,
                        format!(
                            "not on the voxel grid of the imaging {}: {why}; the two must share a voxel grid",
                            self.imaging.display()
                        ),
                    ));
                }
                Some(l)
            }
            _ => None,
        };
        Ok(Case {
            id: self.id.clone(),
            imaging,
            labels,
            orientation,
        })
    }
}

/// `dir/name` (`name` ending in `.nii.gz`), or the same without `.gz`,
/// whichever is a file.
pub(crate) fn find_in(dir: &Path, name: &str) -> Option<PathBuf> {
    let gz = dir.join(name);
    let plain = dir.join(name.trim_end_matches(".gz"));
    if gz.is_file() {
        Some(gz)
    } else if plain.is_file() {
        Some(plain)
    } else {
        None
    }
}

/// Whether `dir` is a case folder: it holds `imaging.nii.gz` (or
/// `imaging.nii`), what [`CaseDir::open`] needs.
pub fn is_case_folder(dir: &Path) -> bool {
    find_in(dir, IMAGING).is_some()
}

/// Case ids for a message: the first ten, then how many more ("case_00001,
/// case_00002 and 80 more").
pub fn some_ids(ids: &[String]) -> String {
    let mut s = ids[..ids.len().min(10)].join(", ");
    if ids.len() > 10 {
        s.push_str(&format!(" and {} more", ids.len() - 10));
    }
    s
}

/// The case folders (`case_*`) in a KiTS19 `data/` folder, sorted by name.
/// Use [`CaseDir::open`] on each to check them.
pub fn list_cases(data_dir: impl AsRef<Path>) -> Result<Vec<CaseDir>> {
    let data_dir = data_dir.as_ref();
    let entries = std::fs::read_dir(data_dir).map_err(|e| VolumeError::io(data_dir, e))?;
    let mut dirs = Vec::new();
    for e in entries {
        let e = e.map_err(|e| VolumeError::io(data_dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(CASE_PREFIX) && e.path().is_dir() {
            dirs.push(e.path());
        }
    }
    dirs.sort();
    if dirs.is_empty() {
        return Err(VolumeError::missing(data_dir, "no case_* folders"));
    }
    dirs.iter().map(CaseDir::open).collect()
}

/// The file names a prediction of case `case_XXXXX` may have in a
/// predictions folder: `case_XXXXX.nii.gz` (or `.nii`, what `kseg predict`
/// writes for a folder of cases), or inside a folder `case_XXXXX/`.
pub const PREDICTION_SUFFIXES: [&str; 2] = [".nii.gz", ".nii"];
/// ... the names inside a `case_XXXXX/` prediction folder, in order of
/// preference.
pub const PREDICTION_FILES: [&str; 4] = [
    "prediction.nii.gz",
    "segmentation.nii.gz",
    "prediction.nii",
    "segmentation.nii",
];

/// The prediction files in `pred` (see [`PREDICTION_SUFFIXES`] and
/// [`PREDICTION_FILES`]), by case id, in id order. Two files for one case,
/// or none at all, are errors.
pub fn find_predictions(pred: impl AsRef<Path>) -> Result<Vec<(String, PathBuf)>> {
    let pred = pred.as_ref();
    let mut found = std::collections::BTreeMap::new();
    let entries = std::fs::read_dir(pred).map_err(|e| VolumeError::io(pred, e))?;
    for e in entries {
        let path = e.map_err(|e| VolumeError::io(pred, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with(CASE_PREFIX) {
            continue;
        }
        let hit = if path.is_dir() {
            PREDICTION_FILES
                .iter()
                .map(|f| path.join(f))
                .find(|p| p.is_file())
                .map(|p| (name.clone(), p))
        } else {
            PREDICTION_SUFFIXES
                .iter()
                .find_map(|ext| name.strip_suffix(ext))
                .map(|id| (id.to_string(), path.clone()))
        };
        if let Some((id, p)) = hit
            && let Some(prev) = found.insert(id.clone(), p.clone())
        {
            return Err(VolumeError::InvalidArgument(format!(
                "{}: two predictions for {id}: {} and {}",
                pred.display(),
                prev.display(),
                p.display()
            )));
        }
    }
    if found.is_empty() {
        return Err(VolumeError::missing(
            pred,
            "no predictions (case_XXXXX.nii.gz or case_XXXXX/prediction.nii.gz)",
        ));
    }
    Ok(found.into_iter().collect())
}

/// A loaded case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The case id.
    pub id: String,
    /// HU values in the internal layout, `[slices, H, W]` (KiTS19's
    /// orientation, whatever the file's; the header is the file's).
    pub imaging: Volume<f32>,
    /// Labels in the internal layout, `[slices, H, W]`; `None` for test
    /// cases.
    pub labels: Option<Volume<u8>>,
    /// How the files' axes map to the internal layout.
    pub orientation: Orientation,
}
