//! Synthetic KiTS-like cases: the built-in default data for the main job and
//! the tests, so that nothing has to be downloaded.
//!
//! Each case is an axial CT-like volume in HU (stored int16) with labels
//! (0 background, 1 kidney, 2 tumour; with `cysts`, 3 cyst as in KiTS21 and
//! KiTS23, where a tumour overlapping a cyst wins), written in KiTS19's layout and
//! orientation. The phantom has a body outline with a subcutaneous fat
//! layer, textured soft tissue, a liver, bowel gas, the aorta, a vertebral
//! column with discs, two kidneys of varied size, position, tilt and shape
//! (enhancing cortex, darker medulla and hilum), and one to three tumours of
//! varied size and contrast attached to a kidney. The image is blurred in
//! plane (partial volume) and carries Gaussian noise; slice count and slice
//! spacing vary. Everything is drawn from ChaCha8 streams derived from
//! (seed, case index, slice), so a case is the same for a seed whatever the
//! number of cases or threads.

use std::path::Path;

use ndarray::{Array2, Array3, Axis};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::f32::consts::TAU;

use crate::case::{CaseDir, IMAGING, SEGMENTATION};
use crate::error::{Result, VolumeError};
use crate::nifti::{DType, Header, write_volume};
use crate::rng::sample_rng;

/// Size and seed of the synthetic cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// In-plane rows.
    pub height: usize,
    /// In-plane columns.
    pub width: usize,
    /// Fewest slices of a case.
    pub min_slices: usize,
    /// Most slices of a case (inclusive).
    pub max_slices: usize,
    /// RNG seed: the same seed gives the same cases.
    pub seed: u64,
    /// Range of the reconstruction field of view (mm across the larger
    /// in-plane side), drawn per case. Default 340-420 mm: the whole
    /// abdomen, as in KiTS19. A smaller field (a zoomed reconstruction)
    /// shows the kidneys with more pixels at the same image size.
    #[serde(default = "default_fov")]
    pub fov_mm: (f32, f32),
    /// Range of a tumour's radius in mm. Default 8-32 mm (1.6-6.4 cm
    /// across; KiTS19's median tumour is about 4 cm).
    #[serde(default = "default_tumour_radius")]
    pub tumour_radius_mm: (f32, f32),
    /// Draw one to three renal cysts per case (label 3, KiTS21/KiTS23's
    /// label set): round, water density (0-20 HU) inside a thin enhancing
    /// wall, attached to a kidney. Off by default (KiTS19's labels; the
    /// cases are then the same as before cysts existed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cysts: bool,
    /// Range of the scan's length along the body in mm, drawn per case:
    /// the slice spacing is that over the slice count, rounded to 0.25 mm
    /// and held within 0.5-5 mm (so a long scan needs slices enough).
    /// Default 150-260 mm, a scan of the kidneys' region: the kidneys
    /// (about 110 mm long) span most of its slices. A whole abdomen, as a
    /// hospital's CT often is, is 400-500 mm, the kidneys a quarter of it.
    #[serde(
        default = "default_coverage",
        skip_serializing_if = "is_default_coverage"
    )]
    pub coverage_mm: (f32, f32),
}

fn default_coverage() -> (f32, f32) {
    (150.0, 260.0)
}

fn is_default_coverage(c: &(f32, f32)) -> bool {
    *c == default_coverage()
}

fn default_fov() -> (f32, f32) {
    (340.0, 420.0)
}

fn default_tumour_radius() -> (f32, f32) {
    (8.0, 32.0)
}

impl Default for SynthConfig {
    /// 128×128 in plane and 32 to 64 slices: small enough that a 2-core CPU
    /// trains on a dozen cases in minutes.
    fn default() -> Self {
        SynthConfig {
            height: 128,
            width: 128,
            min_slices: 32,
            max_slices: 64,
            seed: 0,
            fov_mm: default_fov(),
            tumour_radius_mm: default_tumour_radius(),
            cysts: false,
            coverage_mm: default_coverage(),
        }
    }
}

impl SynthConfig {
    /// Checks the sizes and ranges.
    pub fn validate(&self) -> Result<()> {
        if self.height < 16 || self.width < 16 || self.height > 4096 || self.width > 4096 {
            return Err(VolumeError::InvalidArgument(format!(
                "synthetic size {}x{} must be within 16..=4096",
                self.height, self.width
            )));
        }
        if self.min_slices == 0 || self.min_slices > self.max_slices || self.max_slices > 4096 {
            return Err(VolumeError::InvalidArgument(format!(
                "slice range {}..={} must satisfy 1 <= min <= max <= 4096",
                self.min_slices, self.max_slices
            )));
        }
        let (f0, f1) = self.fov_mm;
        if !(f0.is_finite() && f1.is_finite() && 50.0 <= f0 && f0 < f1 && f1 <= 1000.0) {
            return Err(VolumeError::InvalidArgument(format!(
                "field of view {f0}..{f1} mm must satisfy 50 <= min < max <= 1000"
            )));
        }
        let (c0, c1) = self.coverage_mm;
        if !(c0.is_finite() && c1.is_finite() && 20.0 <= c0 && c0 < c1 && c1 <= 2000.0) {
            return Err(VolumeError::InvalidArgument(format!(
                "coverage {c0}..{c1} mm must satisfy 20 <= min < max <= 2000"
            )));
        }
        let (r0, r1) = self.tumour_radius_mm;
        if !(r0.is_finite() && r1.is_finite() && 1.0 <= r0 && r0 < r1 && r1 <= 80.0) {
            return Err(VolumeError::InvalidArgument(format!(
                "tumour radius {r0}..{r1} mm must satisfy 1 <= min < max <= 80"
            )));
        }
        Ok(())
    }
}

/// One generated case.
#[derive(Debug, Clone)]
pub struct SynthCase {
    /// HU, `[slices, H, W]`.
    pub imaging: Array3<i16>,
    /// Labels, `[slices, H, W]`.
    pub labels: Array3<u8>,
    /// Voxel size `[slice, row, column]` in mm.
    pub spacing: [f32; 3],
}

/// An ellipsoid in mm with an in-plane rotation and a lateral drift along z,
/// and a gentle shape perturbation.
#[derive(Debug, Clone, Copy)]
struct Blob {
    c: [f32; 3], // z, y, x
    r: [f32; 3], // semi-axes along the blob's own z, v, u
    cos: f32,
    sin: f32,
    drift: f32, // x shift per mm of z
    wobble: f32,
    phase: f32,
}

impl Blob {
    fn new(c: [f32; 3], r: [f32; 3], angle: f32) -> Blob {
        Blob {
            c,
            r,
            cos: angle.cos(),
            sin: angle.sin(),
            drift: 0.0,
            wobble: 0.0,
            phase: 0.0,
        }
    }

    /// Normalised squared radius: < 1 inside.
    #[inline]
    fn q(&self, z: f32, y: f32, x: f32) -> f32 {
        let dz = z - self.c[0];
        let dy = y - self.c[1];
        let dx = x - self.c[2] - self.drift * dz;
        let u = self.cos * dx + self.sin * dy;
        let v = -self.sin * dx + self.cos * dy;
        let q = (dz / self.r[0]).powi(2) + (v / self.r[1]).powi(2) + (u / self.r[2]).powi(2);
        if self.wobble == 0.0 {
            q
        } else {
            let t = v.atan2(u);
            let s = 1.0
                + self.wobble * (2.0 * t + self.phase).sin()
                + 0.5 * self.wobble * (3.0 * t - self.phase).cos();
            q / (s * s)
        }
    }

    /// Unit vector from the centre along the blob's in-plane `u` axis.
    fn u_axis(&self) -> [f32; 2] {
        [self.sin, self.cos] // (y, x)
    }
}

struct Kidney {
    blob: Blob,
    cortex_hu: f32,
    side: f32,
}

struct Tumour {
    blob: Blob,
    hu: f32,
    core_hu: f32,
}

/// A renal cyst: a sphere of water density in a thin wall.
struct Cyst {
    blob: Blob,
    /// Normalised squared radius of the fluid inside the wall.
    inner_q: f32,
    hu: f32,
    wall_hu: f32,
}

/// All random parameters of one phantom, in mm.
struct Phantom {
    body: Blob,
    fat_mm: f32,
    tissue_hu: f32,
    waves: Vec<([f32; 3], f32, f32)>, // direction / wavelength, phase, amplitude
    liver: Blob,
    liver_hu: f32,
    gas: Vec<Blob>,
    aorta: ([f32; 2], f32, f32), // (y, x), radius, HU
    spine: ([f32; 2], f32),      // (y, x), radius
    disc_period: f32,
    disc_phase: f32,
    kidneys: Vec<Kidney>,
    tumours: Vec<Tumour>,
    cysts: Vec<Cyst>,
}

fn u(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    rng.random_range(lo..hi)
}

/// The centre and radius of a lesion attached to kidney `kb`: a point on
/// the kidney's surface (in the kidney's frame), a radius drawn from
/// `radius`, the centre moved out along the surface normal by a share of
/// the radius drawn from `depth` (negative: inside). Draws in that order.
fn attach(rng: &mut impl Rng, kb: &Blob, radius: (f32, f32), depth: (f32, f32)) -> ([f32; 3], f32) {
    let (th, ph) = (u(rng, 0.0, TAU), u(rng, -1.2, 1.2));
    let (dz, dv, du) = (
        ph.sin() * kb.r[0],
        ph.cos() * th.sin() * kb.r[1],
        ph.cos() * th.cos() * kb.r[2],
    );
    let r = u(rng, radius.0, radius.1);
    let out = u(rng, depth.0, depth.1) * r;
    let scale = 1.0 + out / (dv * dv + du * du).sqrt().max(1.0);
    let (du, dv) = (du * scale, dv * scale);
    let x = kb.c[2] + kb.cos * du - kb.sin * dv + kb.drift * dz;
    let y = kb.c[1] + kb.sin * du + kb.cos * dv;
    ([kb.c[0] + dz, y, x], r)
}

impl Phantom {
    fn draw(rng: &mut impl Rng, tumour_radius: (f32, f32)) -> Phantom {
        let a = u(rng, 130.0, 165.0);
        let b = u(rng, 95.0, 125.0);
        let body_c = [0.0, u(rng, -10.0, 10.0), u(rng, -10.0, 10.0)];
        let mut body = Blob::new(body_c, [1e9, b, a], 0.0);
        body.wobble = u(rng, 0.0, 0.04);
        body.phase = u(rng, 0.0, TAU);
        let spine_y = body_c[1] + b * u(rng, 0.5, 0.6);
        let spine_r = u(rng, 15.0, 20.0);
        let spine = ([spine_y, body_c[2] + u(rng, -5.0, 5.0)], spine_r);
        let aorta = (
            [
                spine_y - spine_r - u(rng, 8.0, 14.0),
                spine.0[1] + u(rng, 8.0, 20.0),
            ],
            u(rng, 8.0, 12.0),
            u(rng, 150.0, 220.0),
        );
        let waves = (0..4)
            .map(|_| {
                let dir = [u(rng, -1.0, 1.0), u(rng, -1.0, 1.0), u(rng, -1.0, 1.0)];
                let n = (dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2])
                    .sqrt()
                    .max(1e-3);
                let k = std::f32::consts::TAU / u(rng, 25.0, 90.0) / n;
                (
                    [dir[0] * k, dir[1] * k, dir[2] * k],
                    u(rng, 0.0, TAU),
                    u(rng, 3.0, 9.0),
                )
            })
            .collect();
        let liver = Blob::new(
            [
                u(rng, 40.0, 90.0),
                body_c[1] - b * 0.1,
                body_c[2] - a * u(rng, 0.3, 0.45),
            ],
            [u(rng, 60.0, 90.0), b * 0.55, a * 0.45],
            u(rng, -0.3, 0.3),
        );
        let gas = (0..rng.random_range(2..6))
            .map(|_| {
                let r = u(rng, 5.0, 15.0);
                Blob::new(
                    [
                        u(rng, -80.0, 60.0),
                        body_c[1] - b * u(rng, 0.2, 0.6),
                        body_c[2] + a * u(rng, -0.4, 0.5),
                    ],
                    [r * 1.5, r, r * u(rng, 0.8, 1.5)],
                    u(rng, 0.0, 3.0),
                )
            })
            .collect();
        let mut kidneys = Vec::new();
        let z_mid = u(rng, -20.0, 20.0);
        for side in [-1.0f32, 1.0] {
            let c = [
                z_mid + side * u(rng, 0.0, 15.0),
                spine_y - u(rng, 5.0, 25.0),
                spine.0[1] + side * u(rng, 55.0, 80.0),
            ];
            let mut blob = Blob::new(
                c,
                [u(rng, 45.0, 60.0), u(rng, 18.0, 26.0), u(rng, 22.0, 32.0)],
                side * u(rng, 0.15, 0.6),
            );
            blob.drift = side * u(rng, 0.0, 0.2);
            blob.wobble = u(rng, 0.0, 0.1);
            blob.phase = u(rng, 0.0, TAU);
            kidneys.push(Kidney {
                blob,
                cortex_hu: u(rng, 140.0, 210.0),
                side,
            });
        }
        let n_tumours =
            1 + usize::from(rng.random::<f32>() < 0.3) + usize::from(rng.random::<f32>() < 0.1);
        let mut tumours = Vec::new();
        for _ in 0..n_tumours {
            let k = &kidneys[rng.random_range(0..2)];
            let (c, r) = attach(rng, &k.blob, tumour_radius, (-0.4, 0.5));
            let mut blob = Blob::new(
                c,
                [r * u(rng, 0.8, 1.2), r * u(rng, 0.8, 1.2), r],
                u(rng, 0.0, 3.0),
            );
            blob.wobble = u(rng, 0.0, 0.15);
            blob.phase = u(rng, 0.0, TAU);
            let hu = if rng.random::<f32>() < 0.75 {
                k.cortex_hu - u(rng, 40.0, 100.0)
            } else {
                k.cortex_hu + u(rng, 25.0, 60.0)
            };
            tumours.push(Tumour {
                blob,
                hu,
                core_hu: hu - u(rng, 0.0, 50.0),
            });
        }
        Phantom {
            body,
            fat_mm: u(rng, 8.0, 30.0),
            tissue_hu: u(rng, 30.0, 55.0),
            waves,
            liver,
            liver_hu: u(rng, 50.0, 75.0),
            gas,
            aorta,
            spine,
            disc_period: u(rng, 28.0, 34.0),
            disc_phase: u(rng, 0.0, 34.0),
            kidneys,
            tumours,
            cysts: Vec::new(),
        }
    }

    /// One to three cysts on the kidneys' surfaces, from a stream of their
    /// own (the rest of the phantom does not depend on whether cysts are
    /// drawn).
    fn draw_cysts(&mut self, rng: &mut impl Rng) {
        let n =
            1 + usize::from(rng.random::<f32>() < 0.4) + usize::from(rng.random::<f32>() < 0.15);
        for _ in 0..n {
            let k = &self.kidneys[rng.random_range(0..2)];
            let (c, r) = attach(rng, &k.blob, (6.0, 22.0), (-0.3, 0.6));
            let wall = u(rng, 1.0, 2.0);
            self.cysts.push(Cyst {
                blob: Blob::new(c, [r, r, r], 0.0),
                inner_q: ((r - wall) / r).powi(2),
                hu: u(rng, 0.0, 20.0),
                wall_hu: u(rng, 40.0, 80.0),
            });
        }
    }

    /// HU and label at a point in mm.
    fn voxel(&self, z: f32, y: f32, x: f32) -> (f32, u8) {
        let qb = self.body.q(z, y, x);
        if qb >= 1.0 {
            return (-1000.0, 0);
        }
        // Depth below the skin, roughly, in mm.
        let depth = (1.0 - qb.sqrt()) * self.body.r[1].min(self.body.r[2]);
        let mut hu = if depth < self.fat_mm {
            -100.0
        } else {
            self.tissue_hu
        };
        let texture: f32 = self
            .waves
            .iter()
            .map(|(k, ph, amp)| amp * (k[0] * z + k[1] * y + k[2] * x + ph).sin())
            .sum();
        hu += texture;
        if self.liver.q(z, y, x) < 1.0 && depth >= self.fat_mm {
            hu = self.liver_hu + 0.5 * texture;
        }
        for g in &self.gas {
            if g.q(z, y, x) < 1.0 {
                hu = -850.0;
            }
        }
        let (ac, ar, ahu) = self.aorta;
        if (y - ac[0]).powi(2) + (x - ac[1]).powi(2) < ar * ar {
            hu = ahu;
        }
        let (sc, sr) = self.spine;
        let rs = ((y - sc[0]).powi(2) + (x - sc[1]).powi(2)).sqrt();
        let in_disc = (z - self.disc_phase).rem_euclid(self.disc_period) < 5.0;
        if rs < sr {
            hu = if in_disc {
                80.0
            } else if rs > sr - 3.0 {
                650.0
            } else {
                260.0
            };
        }
        // Spinal canal and posterior arch.
        let canal = ((y - sc[0] - sr - 9.0).powi(2) + (x - sc[1]).powi(2)).sqrt();
        if canal < 7.0 {
            hu = 20.0;
        } else if canal < 12.0 && !in_disc {
            hu = 500.0;
        }
        let mut label = 0;
        for k in &self.kidneys {
            let q = k.blob.q(z, y, x);
            if q < 1.0 {
                label = 1;
                // Hilum: the medial part of the kidney's core.
                let [uy, ux] = k.blob.u_axis();
                let medial = -k.side * ((x - k.blob.c[2]) * ux + (y - k.blob.c[1]) * uy) > 0.0;
                hu = if q < 0.35 && medial {
                    10.0
                } else if q < 0.55 {
                    k.cortex_hu - 60.0
                } else {
                    k.cortex_hu
                } + 0.3 * texture;
            }
        }
        for c in &self.cysts {
            let q = c.blob.q(z, y, x);
            if q < 1.0 {
                label = 3;
                hu = if q < c.inner_q { c.hu } else { c.wall_hu } + 0.1 * texture;
            }
        }
        for t in &self.tumours {
            let q = t.blob.q(z, y, x);
            if q < 1.0 {
                label = 2;
                hu = if q < 0.25 { t.core_hu } else { t.hu } + 0.5 * texture;
            }
        }
        (hu, label)
    }
}

/// Separable Gaussian blur of one plane, edges clamped.
fn blur(plane: &mut Array2<f32>, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
    for axis in [Axis(0), Axis(1)] {
        let src = plane.clone();
        let n = plane.len_of(axis) as isize;
        for (mut dst, s) in plane.lanes_mut(axis).into_iter().zip(src.lanes(axis)) {
            for i in 0..n {
                let mut acc = 0.0;
                for (t, w) in kernel.iter().enumerate() {
                    let j = (i + t as isize - radius).clamp(0, n - 1);
                    acc += w * s[j as usize];
                }
                dst[i as usize] = acc;
            }
        }
    }
}

/// Generates case `index` of the dataset described by `cfg`.
pub fn generate_case(cfg: &SynthConfig, index: usize) -> Result<SynthCase> {
    cfg.validate()?;
    let mut rng = sample_rng(cfg.seed, u64::MAX, index as u64);
    let mut phantom = Phantom::draw(&mut rng, cfg.tumour_radius_mm);
    if cfg.cysts {
        phantom.draw_cysts(&mut sample_rng(cfg.seed, u64::MAX - 1, index as u64));
    }
    let (h, w) = (cfg.height, cfg.width);
    let slices = rng.random_range(cfg.min_slices..=cfg.max_slices);
    let fov = u(&mut rng, cfg.fov_mm.0, cfg.fov_mm.1);
    let ps = fov / h.max(w) as f32;
    let coverage = u(&mut rng, cfg.coverage_mm.0, cfg.coverage_mm.1);
    let sz = ((coverage / slices as f32).clamp(0.5, 5.0) * 4.0).round() / 4.0;
    let noise_sd = u(&mut rng, 6.0, 18.0);
    let sigma_px = u(&mut rng, 0.5, 1.0);
    let fov_r = (h.min(w) as f32 / 2.0).powi(2);

    let planes: Vec<(Array2<i16>, Array2<u8>)> = (0..slices)
        .into_par_iter()
        .map(|k| {
            let z = (k as f32 - (slices as f32 - 1.0) / 2.0) * sz;
            let mut hu = Array2::<f32>::zeros((h, w));
            let mut lab = Array2::<u8>::zeros((h, w));
            for r in 0..h {
                let y = (r as f32 - (h as f32 - 1.0) / 2.0) * ps;
                for c in 0..w {
                    let x = (c as f32 - (w as f32 - 1.0) / 2.0) * ps;
                    let (v, l) = phantom.voxel(z, y, x);
                    hu[[r, c]] = v;
                    lab[[r, c]] = l;
                }
            }
            blur(&mut hu, sigma_px);
            let mut noise_rng = sample_rng(cfg.seed, index as u64, k as u64);
            let normal = Normal::new(0.0f32, noise_sd).expect("sd > 0");
            let img = Array2::from_shape_fn((h, w), |(r, c)| {
                let dr = r as f32 - (h as f32 - 1.0) / 2.0;
                let dc = c as f32 - (w as f32 - 1.0) / 2.0;
                // Draw for every pixel so the stream does not depend on the FOV.
                let n = normal.sample(&mut noise_rng);
                if dr * dr + dc * dc > fov_r {
                    -1024
                } else {
                    (hu[[r, c]] + n).round().clamp(-1024.0, 3071.0) as i16
                }
            });
            // Outside the reconstruction circle nothing is imaged, so nothing
            // is labelled (only a zoomed field of view cuts into anatomy).
            lab.indexed_iter_mut().for_each(|((r, c), l)| {
                let dr = r as f32 - (h as f32 - 1.0) / 2.0;
                let dc = c as f32 - (w as f32 - 1.0) / 2.0;
                if dr * dr + dc * dc > fov_r {
                    *l = 0;
                }
            });
            (img, lab)
        })
        .collect();
    let mut imaging = Array3::<i16>::zeros((slices, h, w));
    let mut labels = Array3::<u8>::zeros((slices, h, w));
    for (k, (img, lab)) in planes.into_iter().enumerate() {
        imaging.index_axis_mut(Axis(0), k).assign(&img);
        labels.index_axis_mut(Axis(0), k).assign(&lab);
    }
    Ok(SynthCase {
        imaging,
        labels,
        spacing: [sz, ps, ps],
    })
}

/// The folder name of case `index`: `case_00000`, `case_00001`...
pub fn case_id(index: usize) -> String {
    format!("case_{index:05}")
}

/// Writes a generated case as `dir/imaging.nii.gz` (int16) and
/// `dir/segmentation.nii.gz` (uint8), KiTS19's layout.
pub fn write_case(case: &SynthCase, dir: impl AsRef<Path>) -> Result<CaseDir> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| VolumeError::io(dir, e))?;
    let (s, h, w) = case.imaging.dim();
    let header = Header::kits_like([s, h, w], case.spacing, DType::I16)?;
    write_volume(dir.join(IMAGING), case.imaging.view(), &header)?;
    write_volume(dir.join(SEGMENTATION), case.labels.view(), &header)?;
    CaseDir::open(dir)
}

/// The file that says a folder of cases is `kseg synth`'s: the generator
/// settings of its cases, or [`STAMP_WRITING`] while they are written.
pub const STAMP: &str = "synth.json";
/// What [`STAMP`] holds while cases are being written (no settings: an
/// interrupted write is regenerated next time, and the folder stays
/// synth's).
const STAMP_WRITING: &str = "{\"kseg_synth\": \"writing\"}\n";

/// Generates `n` cases into `out/case_XXXXX/` (in parallel); cases already
/// present with the same generator settings are kept (a `synth.json` in
/// `out` records them), so a second call returns at once. Only a folder
/// that holds no case folder, or one with `synth.json` (written by this
/// function), is written: the cases of a real dataset are never replaced.
pub fn write_dataset(out: impl AsRef<Path>, n: usize, cfg: &SynthConfig) -> Result<Vec<CaseDir>> {
    let out = out.as_ref();
    cfg.validate()?;
    // The memory the sizes imply, before any of it exists: the list of
    // cases, and one case (float32 HU and uint8 labels) per thread.
    let too_large = |e| VolumeError::too_large(out, e);
    crate::limits::check(
        &format!("{n} synthetic cases"),
        &[n],
        std::mem::size_of::<Result<CaseDir>>(),
    )
    .map_err(too_large)?;
    crate::limits::check(
        &format!(
            "{} synthetic cases at once of up to {} slices of {}x{}",
            rayon::current_num_threads(),
            cfg.max_slices,
            cfg.height,
            cfg.width
        ),
        &[
            rayon::current_num_threads().min(n.max(1)),
            cfg.max_slices,
            cfg.height,
            cfg.width,
        ],
        std::mem::size_of::<f32>() + 1,
    )
    .map_err(too_large)?;
    std::fs::create_dir_all(out).map_err(|e| VolumeError::io(out, e))?;
    let stamp = out.join(STAMP);
    if !stamp.is_file() {
        let entries = std::fs::read_dir(out).map_err(|e| VolumeError::io(out, e))?;
        for e in entries {
            let e = e.map_err(|e| VolumeError::io(out, e))?;
            if e.file_name()
                .to_string_lossy()
                .starts_with(crate::case::CASE_PREFIX)
            {
                return Err(VolumeError::InvalidArgument(format!(
                    "{}: holds case folders ({}) that kseg synth did not write (no {STAMP}); synthetic cases go into a new or empty folder, or one kseg synth made",
                    out.display(),
                    e.file_name().to_string_lossy()
                )));
            }
        }
    }
    let same = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|t| serde_json::from_str::<SynthConfig>(&t).ok())
        .is_some_and(|c| &c == cfg);
    if !same {
        // New or different settings: whatever is there is regenerated, and
        // the folder stays marked as synth's if this is interrupted.
        crate::fs::write_bytes_atomic(&stamp, STAMP_WRITING.as_bytes())?;
    }
    let dirs: Vec<Result<CaseDir>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let dir = out.join(case_id(i));
            if same
                && let Ok(c) = CaseDir::open(&dir)
                && c.segmentation.is_some()
            {
                return Ok(c);
            }
            write_case(&generate_case(cfg, i)?, &dir)
        })
        .collect();
    let dirs = dirs.into_iter().collect::<Result<Vec<_>>>()?;
    let json = serde_json::to_string_pretty(cfg).expect("config serialises");
    crate::fs::write_bytes_atomic(&stamp, json.as_bytes())?;
    Ok(dirs)
}
