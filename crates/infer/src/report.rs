//! The lesion report of one segmented volume (`kseg predict --report`):
//! each kidney with its side and volume, each tumour and cyst (a
//! 6-connected component of its label) with its volume, longest axial
//! diameter, kidney, side and centroid, and quality flags with a `review`
//! flag and its reasons. Every definition is in docs/METHOD.md §5c.
//!
//! Everything is measured in patient space through the volume's affine
//! (voxel indices → RAS+ millimetres, NIfTI's world), on the labels as
//! they lie in the file: volumes from the affine's determinant, sides and
//! centroids from positions, diameters within the slices along the axis
//! nearest the patient's superior axis. So the same segmentation stored in
//! any orientation gives the same report.

use kseg_metrics::LabelSet;
use ndarray::ArrayView3;
use serde::Serialize;

use crate::postprocess::components;

/// The report's thresholds (docs/METHOD.md §5c).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportRules {
    /// Foreground components below this volume (mL) are not kidneys: they
    /// are counted as `small_components`.
    pub min_kidney_ml: f64,
    /// Below this Dice between the prediction and the mirrored
    /// prediction, the case is flagged for review.
    pub min_mirror_dice: f64,
    /// Above this mean normalised entropy over the predicted foreground,
    /// the case is flagged for review.
    pub max_entropy: f64,
    /// Voxels above this HU are the body, whose centroid places the
    /// midline (when the image is given).
    pub body_hu: f32,
}

impl Default for ReportRules {
    fn default() -> Self {
        ReportRules {
            min_kidney_ml: 1.0,
            min_mirror_dice: 0.9,
            max_entropy: 0.25,
            body_hu: -500.0,
        }
    }
}

/// The segmenter's confidence measures of one volume (see
/// `Segmenter::segment_volume_quality`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quality {
    /// Dice of the foreground between the prediction of the slices and
    /// that of their mirror images (mirrored back).
    pub mirror_dice: Option<f64>,
    /// The mean over the predicted foreground of the class probabilities'
    /// entropy divided by its maximum (ln C; for region models the mean
    /// of the regions' binary entropies over ln 2): 0 certain, 1 uniform.
    pub mean_foreground_entropy: Option<f64>,
}

/// A side of the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The patient's left (RAS+ x below the midline).
    Left,
    /// The patient's right.
    Right,
}

/// One kidney: a foreground component (kidney with its lesions) of at
/// least [`ReportRules::min_kidney_ml`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kidney {
    /// Left or right of the midline.
    pub side: Side,
    /// The whole component, its lesions included (mL).
    pub volume_ml: f64,
    /// Its kidney label alone (mL).
    pub parenchyma_ml: f64,
    /// Its tumour voxels (mL).
    pub tumour_ml: f64,
    /// Its cyst voxels (mL; 0 for label sets without cysts).
    pub cyst_ml: f64,
    /// The centroid in RAS+ patient coordinates (mm).
    pub centroid_mm: [f64; 3],
    /// Voxels of the component.
    pub voxels: usize,
    /// Whether it reaches the volume's first or last slice or its in-plane
    /// border (it may extend beyond the scan).
    pub touches_edge: bool,
}

/// One tumour or cyst: a 6-connected component of its label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lesion {
    /// Its volume (mL).
    pub volume_ml: f64,
    /// The longest distance between the centres of two of its voxels in
    /// one axial slice (mm).
    pub axial_diameter_mm: f64,
    /// The side of its kidney (or of its own centroid when it lies in no
    /// listed kidney).
    pub side: Side,
    /// The index of its kidney in `kidneys`, if it lies in one.
    pub kidney: Option<usize>,
    /// The centroid in RAS+ patient coordinates (mm).
    pub centroid_mm: [f64; 3],
    /// Voxels of the component.
    pub voxels: usize,
    /// Whether it reaches the volume's border.
    pub touches_edge: bool,
}

/// The quality flags.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityFlags {
    /// Foreground components of at least the kidney volume.
    pub kidney_components: usize,
    /// Smaller foreground components.
    pub small_components: usize,
    /// See [`Quality::mirror_dice`].
    pub mirror_dice: Option<f64>,
    /// See [`Quality::mean_foreground_entropy`].
    pub mean_foreground_entropy: Option<f64>,
}

/// Whether someone should look twice, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Review {
    /// True when there is at least one reason.
    pub flag: bool,
    /// Each reason in words.
    pub reasons: Vec<String>,
}

/// The report of one segmented volume.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LesionReport {
    /// The label set's name.
    pub label_set: &'static str,
    /// The volume of one voxel (mL).
    pub voxel_volume_ml: f64,
    /// The RAS+ x of the midline the sides are taken from (mm), and how
    /// it was found (`body`: the centroid of the voxels above
    /// [`ReportRules::body_hu`]; `volume`: the volume's centre).
    pub midline_x_mm: f64,
    /// See `midline_x_mm`.
    pub midline_from: &'static str,
    /// Kidneys by decreasing volume.
    pub kidneys: Vec<Kidney>,
    /// Tumours by decreasing volume.
    pub tumours: Vec<Lesion>,
    /// Cysts by decreasing volume (empty for label sets without cysts).
    pub cysts: Vec<Lesion>,
    /// Every tumour voxel (mL).
    pub total_tumour_volume_ml: f64,
    /// Every cyst voxel (mL).
    pub total_cyst_volume_ml: f64,
    /// The quality flags.
    pub quality: QualityFlags,
    /// The review flag and its reasons.
    pub review: Review,
}

/// A voxel-to-patient map: `affine · [i, j, k, 1]`.
struct Geometry<'a> {
    affine: &'a [[f64; 4]; 4],
}

impl Geometry<'_> {
    /// The position of (fractional) voxel index `p` (mm).
    fn at(&self, p: [f64; 3]) -> [f64; 3] {
        let a = self.affine;
        std::array::from_fn(|r| a[r][0] * p[0] + a[r][1] * p[1] + a[r][2] * p[2] + a[r][3])
    }

    /// Column `c` of the linear part (the step of voxel axis `c`, mm).
    fn step(&self, c: usize) -> [f64; 3] {
        std::array::from_fn(|r| self.affine[r][c])
    }

    /// |det| of the linear part (mm³ per voxel).
    fn voxel_mm3(&self) -> f64 {
        let [a, b, c] = [self.step(0), self.step(1), self.step(2)];
        (a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
            + a[2] * (b[0] * c[1] - b[1] * c[0]))
            .abs()
    }

    /// The voxel axis nearest the patient's superior axis (the slices of
    /// the axial diameter are along it).
    fn axial_axis(&self) -> usize {
        let score = |c: usize| {
            let s = self.step(c);
            let n = (s[0] * s[0] + s[1] * s[1] + s[2] * s[2]).sqrt();
            if n > 0.0 { s[2].abs() / n } else { 0.0 }
        };
        (0..3)
            .max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)))
            .unwrap_or(0)
    }
}

/// Per component: voxel count, index sums, border contact.
#[derive(Default, Clone)]
struct Tally {
    voxels: usize,
    sum: [f64; 3],
    touches_edge: bool,
    /// Voxels per label value 0..=3 (the kidney, tumour and cyst shares;
    /// predictions hold no other values).
    by_label: [usize; 4],
}

impl Tally {
    fn add(&mut self, p: [usize; 3], edge: bool, label: u8) {
        self.voxels += 1;
        for (s, &x) in self.sum.iter_mut().zip(&p) {
            *s += x as f64;
        }
        self.touches_edge |= edge;
        self.by_label[(label as usize).min(3)] += 1;
    }

    fn centroid(&self) -> [f64; 3] {
        self.sum.map(|s| s / self.voxels.max(1) as f64)
    }
}

/// One lesion kind's components: tallies, the foreground component of
/// each, and per (slice, row) the extreme columns for the diameters.
struct LesionTallies {
    ids: Vec<u32>,
    tallies: Vec<Tally>,
    parent: Vec<u32>,
    /// Per component: (slice, row) → (min column, max column), with row
    /// and column the two in-plane axes.
    extents: Vec<std::collections::BTreeMap<(usize, usize), (usize, usize)>>,
}

impl LesionTallies {
    fn new(labels: ArrayView3<u8>, label: u8) -> LesionTallies {
        let (ids, sizes) = components(labels, |v| v == label);
        let n = sizes.len();
        LesionTallies {
            ids,
            tallies: vec![Tally::default(); n],
            parent: vec![0; n],
            extents: vec![Default::default(); n],
        }
    }
}

/// The largest distance (mm) between two voxel centres of one slice,
/// given per row its extreme columns: the convex hull of those points,
/// then every pair of its vertices, each difference mapped through the
/// in-plane steps `u` (rows) and `v` (columns).
fn slice_diameter(rows: &[(usize, usize, usize)], u: [f64; 3], v: [f64; 3]) -> f64 {
    let mut pts: Vec<(i64, i64)> = Vec::with_capacity(2 * rows.len());
    for &(r, lo, hi) in rows {
        pts.push((r as i64, lo as i64));
        if hi != lo {
            pts.push((r as i64, hi as i64));
        }
    }
    pts.sort_unstable();
    pts.dedup();
    let hull = convex_hull(&pts);
    let dist = |a: (i64, i64), b: (i64, i64)| {
        let (da, db) = ((a.0 - b.0) as f64, (a.1 - b.1) as f64);
        let d: [f64; 3] = std::array::from_fn(|k| da * u[k] + db * v[k]);
        (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
    };
    let mut best = 0f64;
    for (i, &a) in hull.iter().enumerate() {
        for &b in &hull[i + 1..] {
            best = best.max(dist(a, b));
        }
    }
    best
}

/// Andrew's monotone chain over sorted, distinct points (collinear points
/// dropped; fewer than three points are returned as they are).
fn convex_hull(pts: &[(i64, i64)]) -> Vec<(i64, i64)> {
    if pts.len() < 3 {
        return pts.to_vec();
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(2 * pts.len());
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &(i64, i64)>> = if pass == 0 {
            Box::new(pts.iter())
        } else {
            Box::new(pts.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// The report of `labels` (the file's layout, label set `set`) whose
/// voxel-to-RAS+ map is `affine`; `image` (HU, the same layout) places the
/// midline at the body's centroid, else at the volume's centre; `quality`
/// from the segmenter, when measured.
pub fn lesion_report(
    labels: ArrayView3<u8>,
    affine: &[[f64; 4]; 4],
    set: LabelSet,
    image: Option<ArrayView3<f32>>,
    quality: Quality,
    rules: &ReportRules,
) -> LesionReport {
    let geo = Geometry { affine };
    let dims = {
        let (a, b, c) = labels.dim();
        [a, b, c]
    };
    let ml = geo.voxel_mm3() / 1000.0;
    let slice_axis = geo.axial_axis();
    let [row_axis, col_axis] = match slice_axis {
        0 => [1, 2],
        1 => [0, 2],
        _ => [0, 1],
    };
    let labels = labels.as_standard_layout();
    let (fg_ids, fg_sizes) = components(labels.view(), |v| set.is_foreground(v));
    let mut fg = vec![Tally::default(); fg_sizes.len()];
    let tumour_label = (0..=255u8).find(|&v| set.is_tumour(v)).unwrap_or(2);
    let mut lesions = vec![LesionTallies::new(labels.view(), tumour_label)];
    if let Some(cyst) = set.cyst() {
        lesions.push(LesionTallies::new(labels.view(), cyst));
    }
    let flat = labels.as_slice().expect("standard layout");
    let [_, h, w] = dims;
    for (i, &v) in flat.iter().enumerate() {
        let id = fg_ids[i];
        if id == 0 {
            continue;
        }
        let p = [i / (h * w), i / w % h, i % w];
        let edge = (0..3).any(|a| p[a] == 0 || p[a] + 1 == dims[a]);
        fg[id as usize].add(p, edge, v);
        for l in lesions.iter_mut() {
            let lid = l.ids[i] as usize;
            if lid == 0 {
                continue;
            }
            l.tallies[lid].add(p, edge, v);
            l.parent[lid] = id;
            let e = l.extents[lid]
                .entry((p[slice_axis], p[row_axis]))
                .or_insert((p[col_axis], p[col_axis]));
            e.0 = e.0.min(p[col_axis]);
            e.1 = e.1.max(p[col_axis]);
        }
    }
    // The midline.
    let (midline_x_mm, midline_from) = match image.and_then(|im| body_centroid(im, rules.body_hu)) {
        Some(c) => (geo.at(c)[0], "body"),
        None => (
            geo.at(dims.map(|d| (d.max(1) - 1) as f64 / 2.0))[0],
            "volume",
        ),
    };
    let side_of = |c: [f64; 3]| {
        if c[0] < midline_x_mm {
            Side::Left
        } else {
            Side::Right
        }
    };
    // Kidneys: the large foreground components, largest first.
    let mut order: Vec<usize> = (1..fg.len()).collect();
    order.sort_by(|&a, &b| fg[b].voxels.cmp(&fg[a].voxels).then(a.cmp(&b)));
    let mut kidney_of = vec![None; fg.len()];
    let mut kidneys = Vec::new();
    let mut small = 0;
    for id in order {
        let t = &fg[id];
        if (t.voxels as f64) * ml < rules.min_kidney_ml {
            small += 1;
            continue;
        }
        let centroid_mm = geo.at(t.centroid());
        let count = |pred: &dyn Fn(u8) -> bool| -> usize {
            (0..=255u8)
                .filter(|&v| pred(v))
                .map(|v| t.by_label[v as usize])
                .sum()
        };
        kidney_of[id] = Some(kidneys.len());
        kidneys.push(Kidney {
            side: side_of(centroid_mm),
            volume_ml: t.voxels as f64 * ml,
            parenchyma_ml: count(&|v| set.is_kidney(v)) as f64 * ml,
            tumour_ml: count(&|v| set.is_tumour(v)) as f64 * ml,
            cyst_ml: count(&|v| Some(v) == set.cyst()) as f64 * ml,
            centroid_mm,
            voxels: t.voxels,
            touches_edge: t.touches_edge,
        });
    }
    let (row_step, col_step) = (geo.step(row_axis), geo.step(col_axis));
    let mut lists: Vec<Vec<Lesion>> = Vec::new();
    for l in &lesions {
        let mut list: Vec<Lesion> = (1..l.tallies.len())
            .map(|id| {
                let t = &l.tallies[id];
                let centroid_mm = geo.at(t.centroid());
                let kidney = kidney_of[l.parent[id] as usize];
                // Per slice, its rows' extremes.
                let mut diameter = 0f64;
                let mut rows: Vec<(usize, usize, usize)> = Vec::new();
                let mut current = None;
                for (&(s, r), &(lo, hi)) in &l.extents[id] {
                    if current != Some(s) {
                        diameter = diameter.max(slice_diameter(&rows, row_step, col_step));
                        rows.clear();
                        current = Some(s);
                    }
                    rows.push((r, lo, hi));
                }
                diameter = diameter.max(slice_diameter(&rows, row_step, col_step));
                Lesion {
                    volume_ml: t.voxels as f64 * ml,
                    axial_diameter_mm: diameter,
                    side: kidney.map_or_else(|| side_of(centroid_mm), |k: usize| kidneys[k].side),
                    kidney,
                    centroid_mm,
                    voxels: t.voxels,
                    touches_edge: t.touches_edge,
                }
            })
            .collect();
        list.sort_by_key(|l| std::cmp::Reverse(l.voxels));
        lists.push(list);
    }
    let cysts = if lists.len() > 1 {
        lists.pop().unwrap_or_default()
    } else {
        Vec::new()
    };
    let tumours = lists.pop().unwrap_or_default();
    let total = |list: &[Lesion]| list.iter().map(|l| l.volume_ml).sum::<f64>();
    let quality_flags = QualityFlags {
        kidney_components: kidneys.len(),
        small_components: small,
        mirror_dice: quality.mirror_dice,
        mean_foreground_entropy: quality.mean_foreground_entropy,
    };
    let reasons = review_reasons(&kidneys, &tumours, &cysts, &quality_flags, rules);
    LesionReport {
        label_set: set.name(),
        voxel_volume_ml: ml,
        midline_x_mm,
        midline_from,
        total_tumour_volume_ml: total(&tumours),
        total_cyst_volume_ml: total(&cysts),
        kidneys,
        tumours,
        cysts,
        quality: quality_flags,
        review: Review {
            flag: !reasons.is_empty(),
            reasons,
        },
    }
}

/// The mean voxel index of the voxels above `hu`, if any.
fn body_centroid(image: ArrayView3<f32>, hu: f32) -> Option<[f64; 3]> {
    let mut sum = [0f64; 3];
    let mut n = 0usize;
    for ((i, j, k), &v) in image.indexed_iter() {
        if v > hu {
            sum[0] += i as f64;
            sum[1] += j as f64;
            sum[2] += k as f64;
            n += 1;
        }
    }
    (n > 0).then(|| sum.map(|s| s / n as f64))
}

/// Why a case should be reviewed (docs/METHOD.md §5c).
fn review_reasons(
    kidneys: &[Kidney],
    tumours: &[Lesion],
    cysts: &[Lesion],
    q: &QualityFlags,
    rules: &ReportRules,
) -> Vec<String> {
    let mut reasons = Vec::new();
    match kidneys.len() {
        0 => reasons.push("no kidney found".to_string()),
        1 | 2 => {}
        n => reasons.push(format!("{n} kidney components (more than two)")),
    }
    if kidneys.len() == 2 && kidneys[0].side == kidneys[1].side {
        reasons.push(format!(
            "both kidneys on the {} side",
            match kidneys[0].side {
                Side::Left => "left",
                Side::Right => "right",
            }
        ));
    }
    if kidneys.iter().any(|k| k.touches_edge) {
        reasons.push("a kidney touches the volume's edge (the scan may not cover it)".into());
    }
    if tumours.iter().any(|t| t.touches_edge) {
        reasons.push("a tumour touches the volume's edge".into());
    }
    if tumours.iter().chain(cysts).any(|t| t.kidney.is_none()) {
        reasons.push("a lesion lies outside every kidney".into());
    }
    if let Some(d) = q.mirror_dice.filter(|&d| d < rules.min_mirror_dice) {
        reasons.push(format!(
            "low mirror agreement (Dice {d:.3} < {})",
            rules.min_mirror_dice
        ));
    }
    if let Some(e) = q.mean_foreground_entropy.filter(|&e| e > rules.max_entropy) {
        reasons.push(format!(
            "uncertain foreground (mean normalised entropy {e:.3} > {})",
            rules.max_entropy
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use ndarray::{Array3, s};

    use super::*;

    /// KiTS19's layout: slices along S (2.5 mm), rows toward P (0.8 mm),
    /// columns toward L (0.7 mm): one voxel is 1.4 mm³.
    const AFFINE: [[f64; 4]; 4] = [
        [0.0, 0.0, -0.7, 10.0],
        [0.0, -0.8, 0.0, 5.0],
        [2.5, 0.0, 0.0, -20.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    const ML: f64 = 1.4e-3;

    fn rules() -> ReportRules {
        ReportRules {
            min_kidney_ml: 0.01,
            ..ReportRules::default()
        }
    }

    /// Kidney A (6 × 6 × 4 voxels) at low columns (the patient's right),
    /// kidney B (7 × 6 × 4) at high columns with a 2 × 3 × 4 tumour, and
    /// a one-voxel speck.
    fn case() -> Array3<u8> {
        let mut v = Array3::<u8>::zeros((10, 20, 30));
        v.slice_mut(s![2..6, 5..11, 2..8]).fill(1);
        v.slice_mut(s![2..6, 5..12, 20..26]).fill(1);
        v.slice_mut(s![3..5, 6..9, 21..25]).fill(2);
        v[[8, 15, 15]] = 1;
        v
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn volumes_sides_centroids_and_diameters_by_hand() {
        let r = lesion_report(
            case().view(),
            &AFFINE,
            LabelSet::Kits19,
            None,
            Quality::default(),
            &rules(),
        );
        assert!(close(r.voxel_volume_ml, ML));
        // Midline at the centre column 14.5: x = 10 − 0.7 · 14.5.
        assert!(close(r.midline_x_mm, -0.15) && r.midline_from == "volume");
        assert_eq!(r.kidneys.len(), 2);
        let (b, a) = (&r.kidneys[0], &r.kidneys[1]);
        // B: 168 voxels, 24 of them tumour; centre column 22.5 → x = −5.75
        // (left of the midline); rows 5..12 → y = 5 − 0.8 · 8.
        assert_eq!((b.voxels, b.side), (168, Side::Left));
        assert!(close(b.volume_ml, 168.0 * ML) && close(b.parenchyma_ml, 144.0 * ML));
        assert!(close(b.tumour_ml, 24.0 * ML) && b.cyst_ml == 0.0);
        let want = [-5.75, 5.0 - 0.8 * 8.0, 2.5 * 3.5 - 20.0];
        assert!(
            (0..3).all(|k| close(b.centroid_mm[k], want[k])),
            "{:?}",
            b.centroid_mm
        );
        // A: centre column 4.5 → x = 6.85, the right.
        assert_eq!((a.voxels, a.side), (144, Side::Right));
        assert_eq!(r.tumours.len(), 1);
        let t = &r.tumours[0];
        assert_eq!((t.voxels, t.kidney, t.side), (24, Some(0), Side::Left));
        assert!(close(t.volume_ml, 24.0 * ML) && close(r.total_tumour_volume_ml, 24.0 * ML));
        // Per slice a 3 × 4 rectangle: corner centres 2 rows and 3 columns
        // apart.
        let d = (1.6f64 * 1.6 + 2.1 * 2.1).sqrt();
        assert!(
            close(t.axial_diameter_mm, d),
            "{} vs {d}",
            t.axial_diameter_mm
        );
        let want = [-5.75, 5.0 - 0.8 * 7.0, 2.5 * 3.5 - 20.0];
        assert!((0..3).all(|k| close(t.centroid_mm[k], want[k])));
        assert_eq!(
            (r.quality.kidney_components, r.quality.small_components),
            (2, 1)
        );
        assert!(r.cysts.is_empty() && !r.review.flag, "{:?}", r.review);
        // The JSON names the issue asks for.
        let json = serde_json::to_value(&r).unwrap();
        for key in ["kidneys", "tumours", "cysts", "review"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["kidneys"][0]["side"], "left");
        assert!(json["tumours"][0]["axial_diameter_mm"].is_f64());
        assert_eq!(json["review"]["flag"], false);
    }

    #[test]
    fn the_same_labels_in_another_orientation_give_the_same_report() {
        // L'[a, b, c] = L[b, a, C − 1 − c]: rows and slices swapped, columns
        // flipped; the affine's columns follow.
        let v = case();
        let cols = v.dim().2;
        let mut flipped = v.clone();
        flipped.invert_axis(ndarray::Axis(2));
        let other = flipped
            .permuted_axes([1, 0, 2])
            .as_standard_layout()
            .into_owned();
        let mut a = AFFINE;
        for row in a.iter_mut().take(3) {
            let (c0, c1, c2) = (row[0], row[1], row[2]);
            row[0] = c1;
            row[1] = c0;
            row[2] = -c2;
            row[3] += (cols - 1) as f64 * c2;
        }
        let want = lesion_report(
            v.view(),
            &AFFINE,
            LabelSet::Kits19,
            None,
            Quality::default(),
            &rules(),
        );
        let got = lesion_report(
            other.view(),
            &a,
            LabelSet::Kits19,
            None,
            Quality::default(),
            &rules(),
        );
        assert!(close(got.midline_x_mm, want.midline_x_mm));
        assert_eq!(got.kidneys.len(), want.kidneys.len());
        for (g, w) in got.kidneys.iter().zip(&want.kidneys) {
            assert_eq!((g.side, g.voxels), (w.side, w.voxels));
            assert!(close(g.volume_ml, w.volume_ml));
            assert!((0..3).all(|k| close(g.centroid_mm[k], w.centroid_mm[k])));
        }
        let (g, w) = (&got.tumours[0], &want.tumours[0]);
        assert!(close(g.axial_diameter_mm, w.axial_diameter_mm));
        assert_eq!((g.kidney, g.side), (w.kidney, w.side));
    }

    #[test]
    fn the_body_places_the_midline() {
        // A body centred on column 2 (x = 8.6): both kidneys lie at
        // higher columns, toward the left, and the report says so.
        let v = case();
        let mut hu = Array3::<f32>::from_elem(v.dim(), -1000.0);
        hu.slice_mut(s![.., .., 0..5]).fill(40.0);
        let r = lesion_report(
            v.view(),
            &AFFINE,
            LabelSet::Kits19,
            Some(hu.view()),
            Quality::default(),
            &rules(),
        );
        assert_eq!(r.midline_from, "body");
        assert!(close(r.midline_x_mm, 10.0 - 0.7 * 2.0));
        assert_eq!(r.kidneys[0].side, Side::Left);
        assert_eq!(r.kidneys[1].side, Side::Left);
        assert!(
            r.review
                .reasons
                .iter()
                .any(|s| s.contains("both kidneys on the left"))
        );
    }

    #[test]
    fn cysts_are_reported_for_kits23() {
        let mut v = case();
        v.slice_mut(s![2..4, 5..7, 2..4]).fill(3);
        let r = lesion_report(
            v.view(),
            &AFFINE,
            LabelSet::Kits23,
            None,
            Quality::default(),
            &rules(),
        );
        assert_eq!(r.cysts.len(), 1);
        assert_eq!(
            (r.cysts[0].voxels, r.cysts[0].kidney, r.cysts[0].side),
            (8, Some(1), Side::Right)
        );
        assert!(close(r.kidneys[1].cyst_ml, 8.0 * ML) && close(r.kidneys[1].volume_ml, 144.0 * ML));
        assert!(close(r.total_cyst_volume_ml, 8.0 * ML));
        // One slice of 2 × 2: the diagonal between centres.
        assert!(close(r.cysts[0].axial_diameter_mm, (0.64f64 + 0.49).sqrt()));
    }

    #[test]
    fn review_reasons() {
        let none = Array3::<u8>::zeros((4, 4, 4));
        let r = lesion_report(
            none.view(),
            &AFFINE,
            LabelSet::Kits19,
            None,
            Quality::default(),
            &rules(),
        );
        assert_eq!(r.review.reasons, vec!["no kidney found".to_string()]);
        assert!(r.review.flag);
        // A third kidney-sized component, a tumour at the first slice,
        // outside any kidney, and poor agreement and certainty.
        let mut v = case();
        v.slice_mut(s![6..9, 14..19, 10..16]).fill(1);
        v.slice_mut(s![0..1, 0..2, 0..2]).fill(2);
        let q = Quality {
            mirror_dice: Some(0.5),
            mean_foreground_entropy: Some(0.6),
        };
        let r = lesion_report(v.view(), &AFFINE, LabelSet::Kits19, None, q, &rules());
        let all = r.review.reasons.join("; ");
        for want in [
            "3 kidney components",
            "a tumour touches the volume's edge",
            "a lesion lies outside every kidney",
            "low mirror agreement (Dice 0.500",
            "uncertain foreground (mean normalised entropy 0.600",
        ] {
            assert!(all.contains(want), "{want:?} not in {all:?}");
        }
    }

    #[test]
    fn hull_diameter_of_a_disk() {
        // A digital disk of radius 10 (isotropic 1 mm): its farthest
        // centres are 20 mm apart along an axis.
        let mut rows = Vec::new();
        for r in 0..=20usize {
            let dy = r as f64 - 10.0;
            let half = (100.0 - dy * dy).sqrt().floor() as usize;
            rows.push((r, 10 - half, 10 + half));
        }
        let d = slice_diameter(&rows, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]);
        assert!(close(d, 20.0), "{d}");
        assert_eq!(
            slice_diameter(&[(3, 4, 4)], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
            0.0
        );
    }
}
