//! A preprocessed, memory-mapped cache of cases.
//!
//! Decompressing a `.nii.gz` volume costs far more than training reads from
//! it per step, so each case is converted once into an uncompressed
//! safetensors file (`<cache_dir>/<case_id>.safetensors`) that is
//! memory-mapped: fetching a 2.5D stack touches only its slices.
//!
//! # File layout
//! - tensor `image`: `[slices, H, W]`, HU values, `I16` when every value is
//!   a whole number in the int16 range (KiTS19 imaging is), else `F32`;
//! - tensor `label` (training cases): `[slices, H, W]` `U8`;
//! - metadata: the cache format version, the size and modification time of
//!   each source file, spacing, affine, the label voxel counts and the list
//!   of slices that hold kidney or tumour (for sampling).
//!
//! A cache whose sources changed (size or mtime), whose version is old, or
//! which cannot be parsed (truncated, damaged) is rebuilt. Conversion writes
//! to a temporary file and renames it, so a crash never leaves a half file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use memmap2::Mmap;
use ndarray::{Array2, Array3, ArrayView2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::case::CaseDir;
use crate::error::{Result, VolumeError};
use crate::fs::write_bytes_atomic;
use crate::intensity::Intensity;
use crate::stack::stack_indices;
use kseg_metrics::LabelSet;

/// Bumped whenever the file layout or its meaning changes.
pub const CACHE_VERSION: u32 = 2;

/// Size and modification time of a source file: a cache is fresh while they
/// are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// File size in bytes.
    pub len: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: u128,
}

impl FileStamp {
    /// The stamp of the file at `path`.
    pub fn of(path: &Path) -> Result<FileStamp> {
        let m = std::fs::metadata(path).map_err(|e| VolumeError::io(path, e))?;
        let mtime_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(FileStamp {
            len: m.len(),
            mtime_ns,
        })
    }
}

/// What the cache file records besides the voxels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    /// Cache format version.
    pub version: u32,
    /// The case id.
    pub id: String,
    /// The imaging file it was built from.
    pub imaging: FileStamp,
    /// The label file it was built from, if any.
    pub segmentation: Option<FileStamp>,
    /// `[slices, H, W]`.
    pub shape: [usize; 3],
    /// Voxel size in mm of the cached (internal-layout) axes.
    pub spacing: Vec<f64>,
    /// The imaging's affine (nibabel's).
    pub affine: [[f64; 4]; 4],
    /// Voxel count of each label value of the label set the case was
    /// read with (0, 1, 2 for KiTS19; 0..=3 for KiTS23); zeros without
    /// labels.
    pub label_counts: Vec<u64>,
    /// Slices holding at least one kidney or tumour voxel, ascending.
    pub foreground_slices: Vec<usize>,
}

/// How [`CachedCase::open_or_build`] found the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// Up to date; nothing was decoded.
    Fresh,
    /// No cache existed; it was built.
    Built,
    /// A cache existed but was stale or unreadable; it was rebuilt.
    Rebuilt {
        /// Why it was rebuilt.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageType {
    I16,
    F32,
}

/// A memory-mapped cached case.
#[derive(Debug)]
pub struct CachedCase {
    path: PathBuf,
    mmap: Mmap,
    meta: CacheMeta,
    image_type: ImageType,
    image_at: usize,
    label_at: Option<usize>,
    status: CacheStatus,
}

const META_KEY: &str = "kseg";

impl CachedCase {
    /// Opens `<cache_dir>/<id>.safetensors` for `case`, building or
    /// rebuilding it first when it is missing, stale or damaged.
    /// The labels are those of `labels` (a cache built for another label
    /// set is rebuilt).
    pub fn open_or_build(
        case: &CaseDir,
        cache_dir: impl AsRef<Path>,
        labels: LabelSet,
    ) -> Result<CachedCase> {
        let cache_dir = cache_dir.as_ref();
        std::fs::create_dir_all(cache_dir).map_err(|e| VolumeError::io(cache_dir, e))?;
        let path = cache_dir.join(format!("{}.safetensors", case.id));
        let imaging = FileStamp::of(&case.imaging)?;
        let segmentation = case
            .segmentation
            .as_deref()
            .map(FileStamp::of)
            .transpose()?;
        let status = if path.exists() {
            match Self::open(&path) {
                Ok(c)
                    if c.meta.imaging == imaging
                        && c.meta.segmentation == segmentation
                        && c.meta.label_counts.len() == labels.num_labels() =>
                {
                    return Ok(c);
                }
                Ok(c) if c.meta.label_counts.len() != labels.num_labels() => CacheStatus::Rebuilt {
                    reason: format!("built for another label set, not {labels}"),
                },
                Ok(_) => CacheStatus::Rebuilt {
                    reason: "source files changed".into(),
                },
                Err(e) => CacheStatus::Rebuilt {
                    reason: e.to_string(),
                },
            }
        } else {
            CacheStatus::Built
        };
        build(case, &path, labels)?;
        let mut c = Self::open(&path)?;
        c.status = status;
        Ok(c)
    }

    /// Opens an existing cache file and checks its structure.
    pub fn open(path: impl AsRef<Path>) -> Result<CachedCase> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| VolumeError::io(path, e))?;
        // SAFETY: the file is only ever replaced by rename, never written in
        // place, so the mapped bytes do not change under us.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| VolumeError::io(path, e))?;
        let bad = |msg: String| VolumeError::format(path, format!("damaged cache: {msg}"));
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| bad(format!("{e:?}")))?;
        let data_start = 8 + header_len;
        if data_start + metadata.data_len() != mmap.len() {
            return Err(bad(format!(
                "file is {} bytes, its header describes {}",
                mmap.len(),
                data_start + metadata.data_len()
            )));
        }
        let meta: CacheMeta = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| bad("no kseg metadata".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| bad(e.to_string())))?;
        if meta.version != CACHE_VERSION {
            return Err(bad(format!(
                "cache version {} (this kseg writes {CACHE_VERSION})",
                meta.version
            )));
        }
        let shape = meta.shape.to_vec();
        let n: usize = shape.iter().product();
        let image = metadata
            .info("image")
            .ok_or_else(|| bad("no image tensor".into()))?;
        let image_type = match image.dtype {
            Dtype::I16 => ImageType::I16,
            Dtype::F32 => ImageType::F32,
            d => return Err(bad(format!("image dtype {d:?}"))),
        };
        let elem = if image_type == ImageType::I16 { 2 } else { 4 };
        if image.shape != shape || image.data_offsets.1 - image.data_offsets.0 != n * elem {
            return Err(bad(format!(
                "image tensor shape {:?} vs {shape:?}",
                image.shape
            )));
        }
        let label_at = match metadata.info("label") {
            Some(l) => {
                if l.dtype != Dtype::U8 || l.shape != shape {
                    return Err(bad(format!("label tensor {:?} {:?}", l.dtype, l.shape)));
                }
                Some(data_start + l.data_offsets.0)
            }
            None => None,
        };
        if label_at.is_some() != meta.segmentation.is_some() {
            return Err(bad("label tensor and metadata disagree".into()));
        }
        Ok(CachedCase {
            path: path.to_path_buf(),
            image_at: data_start + image.data_offsets.0,
            mmap,
            meta,
            image_type,
            label_at,
            status: CacheStatus::Fresh,
        })
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// What the cache was built from.
    pub fn meta(&self) -> &CacheMeta {
        &self.meta
    }
    /// Whether it was reused or rebuilt.
    pub fn status(&self) -> &CacheStatus {
        &self.status
    }
    /// The case id.
    pub fn id(&self) -> &str {
        &self.meta.id
    }
    /// `[slices, H, W]`.
    pub fn shape(&self) -> [usize; 3] {
        self.meta.shape
    }
    /// Slices (the first axis).
    pub fn num_slices(&self) -> usize {
        self.meta.shape[0]
    }
    /// Whether the case has labels.
    pub fn has_labels(&self) -> bool {
        self.label_at.is_some()
    }
    /// The slices with kidney or tumour, in order.
    pub fn foreground_slices(&self) -> &[usize] {
        &self.meta.foreground_slices
    }

    fn check_slice(&self, k: usize) -> Result<()> {
        if k >= self.num_slices() {
            return Err(VolumeError::InvalidArgument(format!(
                "{}: slice {k} is out of range ({} slices)",
                self.path.display(),
                self.num_slices()
            )));
        }
        Ok(())
    }

    /// Writes slice `k`'s HU values, mapped through `map`, into `out` (`H*W`
    /// values).
    fn slice_into(&self, k: usize, out: &mut [f32], map: impl Fn(f32) -> f32) {
        let [_, h, w] = self.meta.shape;
        let plane = h * w;
        match self.image_type {
            ImageType::I16 => {
                let b = &self.mmap[self.image_at + 2 * k * plane..][..2 * plane];
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = map(f32::from(i16::from_le_bytes([c[0], c[1]])));
                }
            }
            ImageType::F32 => {
                let b = &self.mmap[self.image_at + 4 * k * plane..][..4 * plane];
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = map(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
        }
    }

    /// HU values of slice `k`.
    ///
    /// # Shapes
    /// → `[H, W]`.
    pub fn hu_slice(&self, k: usize) -> Result<Array2<f32>> {
        self.check_slice(k)?;
        let [_, h, w] = self.meta.shape;
        let mut out = Array2::zeros((h, w));
        self.slice_into(k, out.as_slice_mut().expect("standard layout"), |v| v);
        Ok(out)
    }

    /// The labels of slice `k`, borrowed from the map.
    ///
    /// # Shapes
    /// → `[H, W]`.
    pub fn label_slice(&self, k: usize) -> Result<Option<ArrayView2<'_, u8>>> {
        self.check_slice(k)?;
        let [_, h, w] = self.meta.shape;
        Ok(self.label_at.map(|at| {
            let b = &self.mmap[at + k * h * w..][..h * w];
            ArrayView2::from_shape((h, w), b).expect("length agrees")
        }))
    }

    /// All labels of the case (a validation case's ground truth).
    ///
    /// # Shapes
    /// → `[slices, H, W]`.
    pub fn labels(&self) -> Result<Array3<u8>> {
        let [d, h, w] = self.meta.shape;
        let Some(at) = self.label_at else {
            return Err(VolumeError::missing(
                &self.path,
                "labels (a case without segmentation.nii.gz cannot be scored)",
            ));
        };
        let b = &self.mmap[at..][..d * h * w];
        Ok(Array3::from_shape_vec((d, h, w), b.to_vec()).expect("length agrees"))
    }

    /// The 2.5D stack around slice `k` (edge slices repeated), normalised.
    ///
    /// # Shapes
    /// → `[2n+1, H, W]`.
    pub fn stack(&self, k: usize, n: usize, intensity: &Intensity) -> Result<Array3<f32>> {
        self.check_slice(k)?;
        let [depth, h, w] = self.meta.shape;
        let mut out = Array3::zeros((2 * n + 1, h, w));
        let flat = out.as_slice_mut().expect("standard layout");
        for (c, z) in stack_indices(k, n, depth).into_iter().enumerate() {
            self.slice_into(z, &mut flat[c * h * w..(c + 1) * h * w], |v| {
                intensity.apply(v)
            });
        }
        Ok(out)
    }

    /// The stack around `k` and the labels of `k` (training cases).
    ///
    /// # Shapes
    /// → (`[2n+1, H, W]`, `[H, W]`).
    pub fn sample(
        &self,
        k: usize,
        n: usize,
        intensity: &Intensity,
    ) -> Result<(Array3<f32>, Option<Array2<u8>>)> {
        let x = self.stack(k, n, intensity)?;
        let y = self.label_slice(k)?.map(|v| v.to_owned());
        Ok((x, y))
    }
}

/// Decodes `case` (its labels those of `labels`) and writes its cache file
/// at `path` (atomically).
pub fn build(case: &CaseDir, path: &Path, labels: LabelSet) -> Result<()> {
    let imaging_stamp = FileStamp::of(&case.imaging)?;
    let seg_stamp = case
        .segmentation
        .as_deref()
        .map(FileStamp::of)
        .transpose()?;
    let loaded = case.load(labels)?;
    let img = &loaded.imaging;
    let shape = img.shape();
    let values = img
        .data
        .as_slice()
        .expect("read_volume returns standard layout");
    let as_i16 = values
        .iter()
        .all(|&v| v.fract() == 0.0 && v >= f32::from(i16::MIN) && v <= f32::from(i16::MAX));
    let image_bytes: Vec<u8> = if as_i16 {
        values
            .iter()
            .flat_map(|&v| (v as i16).to_le_bytes())
            .collect()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    };
    let mut label_counts = vec![0u64; labels.num_labels()];
    let mut foreground_slices = Vec::new();
    if let Some(l) = &loaded.labels {
        for (k, plane) in l.data.outer_iter().enumerate() {
            let mut fg = false;
            for &v in plane.iter() {
                label_counts[v as usize] += 1;
                fg |= v > 0;
            }
            if fg {
                foreground_slices.push(k);
            }
        }
    }
    let meta = CacheMeta {
        version: CACHE_VERSION,
        id: case.id.clone(),
        imaging: imaging_stamp,
        segmentation: seg_stamp,
        shape,
        spacing: {
            let sp = img.header.spacing();
            loaded
                .orientation
                .internal_order([sp[0], sp[1], sp[2]])
                .to_vec()
        },
        affine: img.header.affine(),
        label_counts,
        foreground_slices,
    };
    let meta_json = serde_json::to_string(&meta).expect("metadata serialises");
    let bad = |e: safetensors::SafeTensorError| {
        VolumeError::format(path, format!("cannot write cache: {e:?}"))
    };
    let mut tensors = vec![(
        "image".to_string(),
        TensorView::new(
            if as_i16 { Dtype::I16 } else { Dtype::F32 },
            shape.to_vec(),
            &image_bytes,
        )
        .map_err(bad)?,
    )];
    if let Some(l) = &loaded.labels {
        let b = l.data.as_slice().expect("standard layout");
        tensors.push((
            "label".to_string(),
            TensorView::new(Dtype::U8, shape.to_vec(), b).map_err(bad)?,
        ));
    }
    let info = HashMap::from([(META_KEY.to_string(), meta_json)]);
    let bytes = safetensors::serialize(tensors, Some(info)).map_err(bad)?;
    write_bytes_atomic(path, &bytes)
}
