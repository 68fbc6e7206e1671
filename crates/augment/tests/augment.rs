//! The augmentation against hand-derived identities and an independent f64
//! reference of torchvision's semantics (rotation about ((W-1)/2, (H-1)/2),
//! bilinear with align_corners = false, fill outside; bilinear resize with
//! source positions clamped to the input).

use kseg_augment::{
    AugmentConfig, AugmentError, AugmentParams, CropRect, Resample, apply, apply_image, augment,
    augment_resampled,
};
use ndarray::{Array2, Array3, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

fn random_image(c: usize, h: usize, w: usize, seed: u64) -> (Array3<f32>, Array2<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let img = Array3::from_shape_fn((c, h, w), |_| rng.random_range(-2.0..2.0));
    let lab = Array2::from_shape_fn((h, w), |_| rng.random_range(0..3u8));
    (img, lab)
}

const FILL: f32 = -3.0;

#[test]
fn identity_parameters_return_the_input_exactly() {
    for (c, h, w) in [(3, 20, 30), (5, 17, 9), (1, 1, 1)] {
        let (img, lab) = random_image(c, h, w, 1);
        let p = AugmentParams::identity((h, w), 12, FILL);
        let (x, y) = apply(&p, img.view(), lab.view()).unwrap();
        assert_eq!(x, img);
        assert_eq!(y, lab);
    }
}

#[test]
fn flip_twice_is_identity_and_flip_mirrors() {
    let (img, lab) = random_image(3, 11, 14, 2);
    let p = AugmentParams {
        flip: true,
        ..AugmentParams::identity((11, 14), 12, FILL)
    };
    let (x1, y1) = apply(&p, img.view(), lab.view()).unwrap();
    assert_eq!(x1, img.slice(s![.., .., ..;-1]));
    assert_eq!(y1, lab.slice(s![.., ..;-1]));
    let (x2, y2) = apply(&p, x1.view(), y1.view()).unwrap();
    assert_eq!((x2, y2), (img, lab));
}

#[test]
fn rotation_by_180_degrees_reverses_both_axes() {
    let (img, lab) = random_image(2, 9, 12, 3);
    let p = AugmentParams {
        angle_deg: 180.0,
        ..AugmentParams::identity((9, 12), 12, FILL)
    };
    let (x, y) = apply(&p, img.view(), lab.view()).unwrap();
    let want = img.slice(s![.., ..;-1, ..;-1]);
    let err = (&x - &want).mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
    assert!(err < 1e-4, "{err}");
    assert_eq!(y, lab.slice(s![..;-1, ..;-1]));
}

/// Independent f64 reference: torchvision `F.rotate(img, θ, fill)` on a
/// tensor (bilinear; neighbours outside the image take `fill`).
fn reference_rotate(img: &Array2<f64>, angle_deg: f64, fill: f64) -> Array2<f64> {
    let (h, w) = img.dim();
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let (sin, cos) = angle_deg.to_radians().sin_cos();
    let get = |x: i64, y: i64| {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            fill
        } else {
            img[[y as usize, x as usize]]
        }
    };
    Array2::from_shape_fn((h, w), |(y, x)| {
        // Inverse map of a counter-clockwise (as displayed) rotation.
        let (dx, dy) = (x as f64 - cx, y as f64 - cy);
        let sx = cx + cos * dx - sin * dy;
        let sy = cy + sin * dx + cos * dy;
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        (1.0 - fy) * ((1.0 - fx) * get(x0, y0) + fx * get(x0 + 1, y0))
            + fy * ((1.0 - fx) * get(x0, y0 + 1) + fx * get(x0 + 1, y0 + 1))
    })
}

/// Independent f64 reference: pad with `fill`, crop, and torch's bilinear
/// resize (align_corners = false, positions clamped into the crop).
fn reference_crop_resize(
    img: &Array2<f64>,
    pad: usize,
    crop: CropRect,
    out: (usize, usize),
    fill: f64,
) -> Array2<f64> {
    let (h, w) = img.dim();
    let mut padded = Array2::from_elem((h + 2 * pad, w + 2 * pad), fill);
    padded.slice_mut(s![pad..pad + h, pad..pad + w]).assign(img);
    let c = padded.slice(s![
        crop.top..crop.top + crop.height,
        crop.left..crop.left + crop.width
    ]);
    let (ch, cw) = c.dim();
    let src = |d: usize, n_out: usize, n_in: usize| {
        let s = ((d as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, s - i0 as f64)
    };
    Array2::from_shape_fn(out, |(y, x)| {
        let (y0, y1, ly) = src(y, out.0, ch);
        let (x0, x1, lx) = src(x, out.1, cw);
        (1.0 - ly) * ((1.0 - lx) * c[[y0, x0]] + lx * c[[y0, x1]])
            + ly * ((1.0 - lx) * c[[y1, x0]] + lx * c[[y1, x1]])
    })
}

#[test]
fn small_rotation_matches_the_reference() {
    let (img, lab) = random_image(1, 24, 31, 4);
    for angle in [3.7, -8.9, 0.25] {
        let p = AugmentParams {
            angle_deg: angle,
            ..AugmentParams::identity((24, 31), 12, FILL)
        };
        let (x, _) = apply(&p, img.view(), lab.view()).unwrap();
        let want = reference_rotate(
            &img.slice(s![0, .., ..]).mapv(f64::from),
            angle,
            f64::from(FILL),
        );
        let err = x
            .slice(s![0, .., ..])
            .mapv(f64::from)
            .iter()
            .zip(want.iter())
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-5, "angle {angle}: max error {err}");
    }
}

#[test]
fn crop_and_resize_match_the_reference() {
    let (img, lab) = random_image(1, 40, 36, 5);
    for (crop, out) in [
        (
            CropRect {
                top: 3,
                left: 7,
                height: 50,
                width: 41,
            },
            (40, 36),
        ),
        (
            CropRect {
                top: 0,
                left: 0,
                height: 64,
                width: 60,
            },
            (32, 32),
        ),
        (
            CropRect {
                top: 20,
                left: 5,
                height: 13,
                width: 17,
            },
            (40, 50),
        ),
    ] {
        let p = AugmentParams {
            crop,
            out_size: out,
            ..AugmentParams::identity((40, 36), 12, FILL)
        };
        let (x, y) = apply(&p, img.view(), lab.view()).unwrap();
        let want = reference_crop_resize(
            &img.slice(s![0, .., ..]).mapv(f64::from),
            12,
            crop,
            out,
            f64::from(FILL),
        );
        // Away from the padding border (where the reference method's second
        // interpolation blends fill and image, our single warp decides per
        // half pixel) the values agree.
        let mut err = 0f64;
        for ((yy, xx), &v) in want.indexed_iter() {
            let ok = |d: usize, n_out: usize, n_crop: usize, off: usize, n: usize| {
                let s = ((d as f64 + 0.5) * n_crop as f64 / n_out as f64 - 0.5)
                    .clamp(0.0, n_crop as f64 - 1.0)
                    + off as f64
                    - 12.0;
                s > 0.5 && s < n as f64 - 1.5 || s < -1.5 || s > n as f64 + 0.5
            };
            if ok(yy, out.0, crop.height, crop.top, 40) && ok(xx, out.1, crop.width, crop.left, 36)
            {
                err = err.max((f64::from(x[[0, yy, xx]]) - v).abs());
            }
        }
        assert!(err < 1e-5, "{crop:?}: max error {err}");
        assert_eq!(y.dim(), out);
    }
}

/// Inference's resize: identity parameters with another output size, on the
/// image alone, is torch's bilinear resize (no padding, whole image as the
/// crop), and the same as the image `apply` gives with a label.
#[test]
fn image_only_resize_matches_the_reference() {
    let (img, lab) = random_image(3, 21, 30, 6);
    for out in [(32, 32), (10, 45), (21, 30)] {
        let p = AugmentParams {
            out_size: out,
            ..AugmentParams::identity((21, 30), 0, FILL)
        };
        let x = apply_image(&p, img.view()).unwrap();
        assert_eq!(x.dim(), (3, out.0, out.1));
        assert_eq!(x, apply(&p, img.view(), lab.view()).unwrap().0);
        let full = CropRect {
            top: 0,
            left: 0,
            height: 21,
            width: 30,
        };
        for ch in 0..3 {
            let want = reference_crop_resize(
                &img.slice(s![ch, .., ..]).mapv(f64::from),
                0,
                full,
                out,
                f64::from(FILL),
            );
            let err = x
                .slice(s![ch, .., ..])
                .iter()
                .zip(want.iter())
                .fold(0f64, |m, (&a, &b)| m.max((f64::from(a) - b).abs()));
            assert!(err < 1e-5, "{out:?} channel {ch}: max error {err}");
        }
    }
}

#[test]
fn labels_stay_in_the_input_set_and_move_with_the_image() {
    let (h, w) = (64, 64);
    // A bright square labelled 2 on a dark background labelled 0: labels
    // {0, 2} must never produce a 1, and the labelled square must stay under
    // the bright square.
    let mut img = Array3::<f32>::zeros((3, h, w));
    let mut lab = Array2::<u8>::zeros((h, w));
    img.slice_mut(s![.., 20..36, 30..50]).fill(1.0);
    lab.slice_mut(s![20..36, 30..50]).fill(2);
    let cfg = AugmentConfig {
        out_size: Some((48, 56)),
        fill: 0.0,
        ..AugmentConfig::default()
    }
    .with_nnunet_extras();
    let cfg = AugmentConfig {
        brightness: None,
        contrast: None,
        gamma: None,
        noise: None,
        ..cfg
    };
    for i in 0..50 {
        let mut rng = kseg_volume::sample_rng(9, 0, i);
        let p = cfg.sample((h, w), &mut rng).unwrap();
        let (x, y) = apply(&p, img.view(), lab.view()).unwrap();
        assert!(
            y.iter().all(|&v| v == 0 || v == 2),
            "draw {i}: a label outside the input's set"
        );
        let bright = x.slice(s![1, .., ..]).mapv(|v| v > 0.5);
        let (mut inter, mut union) = (0, 0);
        for (b, l) in bright.iter().zip(y.iter()) {
            inter += usize::from(*b && *l == 2);
            union += usize::from(*b || *l == 2);
        }
        let iou = inter as f64 / union as f64;
        assert!(
            iou > 0.85,
            "draw {i} ({p:?}): bright square and label IoU {iou}"
        );
    }
}

#[test]
fn same_seed_same_batch_on_any_thread_count() {
    let samples: Vec<_> = (0..6).map(|i| random_image(3, 40, 40, 10 + i)).collect();
    let cfg = AugmentConfig {
        out_size: Some((32, 32)),
        ..AugmentConfig::default()
    }
    .with_nnunet_extras();
    let run = |threads: usize, epoch: u64| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            samples
                .par_iter()
                .enumerate()
                .map(|(i, (x, y))| {
                    let mut rng = kseg_volume::sample_rng(5, epoch, 100 + i as u64);
                    augment(&cfg, x.view(), y.view(), &mut rng).unwrap()
                })
                .collect::<Vec<_>>()
        })
    };
    let one = run(1, 0);
    let two = run(2, 0);
    assert_eq!(one, two);
    let other = run(2, 1);
    assert!(
        one.iter().zip(&other).all(|(a, b)| a.params != b.params),
        "a new epoch must redraw"
    );
}

#[test]
fn draws_are_in_range_with_the_right_means() {
    let cfg = AugmentConfig::default();
    let n = 10_000;
    let (mut sa, mut sf, mut sc, mut sr) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..n {
        let mut rng = kseg_volume::sample_rng(1, 0, i);
        let p = cfg.sample((512, 512), &mut rng).unwrap();
        assert!(p.angle_deg > -9.0 && p.angle_deg < 9.0);
        assert!(p.crop_area > 0.92 && p.crop_area < 0.99);
        assert!(p.crop_aspect > 0.96 && p.crop_aspect < 1.04);
        assert!(p.crop.top + p.crop.height <= 536 && p.crop.left + p.crop.width <= 536);
        assert_eq!(p.out_size, (512, 512));
        sa += p.angle_deg;
        sf += f64::from(u8::from(p.flip));
        sc += p.crop_area;
        sr += p.crop_aspect;
    }
    let n = n as f64;
    // Standard errors: angle 5.2/100, flip 0.005, area 0.0002, aspect 0.00023.
    assert!((sa / n).abs() < 0.25, "angle mean {}", sa / n);
    assert!((sf / n - 0.5).abs() < 0.02, "flip share {}", sf / n);
    assert!((sc / n - 0.955).abs() < 0.001, "area mean {}", sc / n);
    assert!((sr / n - 1.0).abs() < 0.001, "aspect mean {}", sr / n);
}

#[test]
fn intensity_extras_do_what_they_say() {
    let (img, lab) = random_image(2, 8, 8, 6);
    let id = AugmentParams::identity((8, 8), 0, FILL);
    let (x, _) = apply(
        &AugmentParams {
            brightness: Some(2.0),
            ..id.clone()
        },
        img.view(),
        lab.view(),
    )
    .unwrap();
    assert_eq!(x, img.mapv(|v| v * 2.0));
    let (x, _) = apply(
        &AugmentParams {
            gamma: Some(1.7),
            ..id.clone()
        },
        img.view(),
        lab.view(),
    )
    .unwrap();
    let mm = |a: &Array3<f32>| {
        a.iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)))
    };
    let ((a0, a1), (b0, b1)) = (mm(&x), mm(&img));
    assert!(
        (a0 - b0).abs() < 1e-6 && (a1 - b1).abs() < 1e-5,
        "gamma keeps the range"
    );
    let p = AugmentParams {
        noise: Some((0.1, 77)),
        ..id.clone()
    };
    let (n1, _) = apply(&p, img.view(), lab.view()).unwrap();
    let (n2, _) = apply(&p, img.view(), lab.view()).unwrap();
    assert_eq!(n1, n2, "noise is replayable from the parameters");
    assert_ne!(n1, img);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let (img, lab) = random_image(3, 10, 10, 7);
    let small_label = Array2::<u8>::zeros((10, 9));
    let p = AugmentParams::identity((10, 10), 12, FILL);
    let e = apply(&p, img.view(), small_label.view()).unwrap_err();
    assert!(
        matches!(e, AugmentError::Input(_)) && e.to_string().contains("10x9"),
        "{e}"
    );
    let empty = Array3::<f32>::zeros((3, 0, 10));
    let e = apply(&p, empty.view(), Array2::<u8>::zeros((0, 10)).view()).unwrap_err();
    assert!(e.to_string().contains("zero-size"), "{e}");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!(AugmentConfig::default().sample((0, 5), &mut rng).is_err());
    let e = apply(
        &AugmentParams::identity((12, 12), 12, FILL),
        img.view(),
        lab.view(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("drawn for"), "{e}");
    for cfg in [
        AugmentConfig {
            crop_area: (0.5, 1.2),
            ..Default::default()
        },
        AugmentConfig {
            crop_area: (0.0, 0.5),
            ..Default::default()
        },
        AugmentConfig {
            crop_area: (f64::NAN, 0.9),
            ..Default::default()
        },
        AugmentConfig {
            max_rotation_deg: f64::NAN,
            ..Default::default()
        },
        AugmentConfig {
            flip_prob: 1.5,
            ..Default::default()
        },
        AugmentConfig {
            crop_aspect: (1.1, 0.9),
            ..Default::default()
        },
        AugmentConfig {
            fill: f32::NAN,
            ..Default::default()
        },
        AugmentConfig {
            out_size: Some((0, 4)),
            ..Default::default()
        },
        AugmentConfig {
            gamma: Some(kseg_augment::Jitter {
                prob: 0.5,
                range: (f64::NAN, 1.0),
            }),
            ..Default::default()
        },
    ] {
        let e = cfg.validate().unwrap_err();
        assert!(matches!(e, AugmentError::Config(_)), "{cfg:?}");
        assert!(cfg.sample((10, 10), &mut rng).is_err());
        assert!(augment(&cfg, img.view(), lab.view(), &mut rng).is_err());
    }
}

/// Resampling to a voxel size, derived by hand: a 64 × 64 slice of 1 mm
/// pixels brought to 32 × 32 pixels of 2 mm keeps its whole field of view
/// (a plain 2× downsampling); a feature 10 mm right of the centre lands
/// 5 pixels right of the output's centre. At 0.5 mm the output shows the
/// central 16 mm, magnified.
#[test]
fn at_spacing_keeps_millimetres() {
    use kseg_augment::{AugmentParams, apply_image};
    let mut img = ndarray::Array3::<f32>::zeros((1, 64, 64));
    // A 2-pixel-wide bright band at columns 42-43 (centre 32 + 10 mm).
    for r in 0..64 {
        img[[0, r, 42]] = 1.0;
        img[[0, r, 43]] = 1.0;
    }
    let p = AugmentParams::at_spacing((64, 64), (1.0, 1.0), 2.0, (32, 32), 0.0);
    let out = apply_image(&p, img.view()).unwrap();
    assert_eq!(out.dim(), (1, 32, 32));
    let row: Vec<f32> = out.slice(ndarray::s![0, 16, ..]).to_vec();
    let peak = (0..32).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
    assert_eq!(peak, 21, "{row:?}");
    // 0.5 mm: the band (10 mm right) falls outside the 16 mm shown; the
    // output is the empty centre.
    let p = AugmentParams::at_spacing((64, 64), (1.0, 1.0), 0.5, (32, 32), 0.0);
    assert!(
        apply_image(&p, img.view())
            .unwrap()
            .iter()
            .all(|&v| v == 0.0)
    );
    // 4 mm onto 32 pixels shows 128 mm: the 64 mm slice in the middle 16
    // pixels, padded with the fill value.
    let p = AugmentParams::at_spacing((64, 64), (1.0, 1.0), 4.0, (32, 32), -1.0);
    let out = apply_image(&p, ndarray::Array3::<f32>::ones((1, 64, 64)).view()).unwrap();
    assert_eq!(out[[0, 16, 1]], -1.0);
    assert_eq!(out[[0, 16, 16]], 1.0);
}

/// A smooth image (a few cycles across, gradients ≤ 0.3 per pixel) and a
/// label of regions (a disc of 1, a rectangle of 2), for comparing
/// interpolations that should agree up to rounding.
fn smooth_image(c: usize, h: usize, w: usize) -> (Array3<f32>, Array2<u8>) {
    let img = Array3::from_shape_fn((c, h, w), |(k, y, x)| {
        let (y, x, k) = (y as f32, x as f32, k as f32);
        (0.21 * x + 0.13 * y + k).sin() + 0.5 * (0.07 * x - 0.17 * y + 2.0 * k).cos()
    });
    let (hf, wf) = (h as f64, w as f64);
    let lab = Array2::from_shape_fn((h, w), |(y, x)| {
        let (yf, xf) = (y as f64, x as f64);
        if (yf - 0.45 * hf).powi(2) + (xf - 0.35 * wf).powi(2) < (0.2 * hf).powi(2) {
            1
        } else if yf > 0.3 * hf && yf < 0.8 * hf && xf > 0.6 * wf && xf < 0.85 * wf {
            2
        } else {
            0
        }
    });
    (img, lab)
}

fn max_abs_diff(a: &Array3<f32>, b: &Array3<f32>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b.iter())
        .fold(0f64, |m, (&x, &y)| m.max(f64::from(x - y).abs()))
}

/// Resampling geometries: 2× down (whole field of view), anisotropic and
/// cropped, upsampled (positions clamped to the crop's edge pixels), and a
/// field of view larger than the source (padded with fill).
/// (source size, spacing mm, target mm, frame size).
type Resampling = ((usize, usize), (f64, f64), f64, (usize, usize));
const RESAMPLINGS: [Resampling; 6] = [
    ((64, 48), (1.0, 1.0), 2.0, (32, 24)),
    ((61, 47), (0.8, 0.7), 1.0, (40, 36)),
    ((40, 36), (1.0, 0.9), 0.6, (50, 44)),
    ((30, 25), (1.5, 1.2), 2.5, (40, 33)),
    ((33, 70), (0.7, 1.3), 1.0, (45, 45)),
    ((1, 1), (1.0, 1.0), 0.3, (5, 4)),
];

/// (a) The pre-map alone (identity augmentation) is today's second pass,
/// `apply(at_spacing)`, up to float rounding (the pass rounds positions to
/// f32), label for label; and a flip of the frame mirrors it exactly.
#[test]
fn resample_alone_matches_at_spacing() {
    for (src, sp, t, out) in RESAMPLINGS {
        // 2 channels: the loop for any channel count; 3 and 5: unrolled.
        for c in [2, 3, 5] {
            let (img, lab) = smooth_image(c, src.0, src.1);
            // Random labels: every nearest-neighbour decision counts.
            let (_, rlab) = random_image(1, src.0, src.1, 21);
            for lab in [lab, rlab] {
                let (want_x, want_y) = apply(
                    &AugmentParams::at_spacing(src, sp, t, out, FILL),
                    img.view(),
                    lab.view(),
                )
                .unwrap();
                let r = Resample::to_spacing(src, sp, t, out).unwrap();
                assert_eq!((r.source_size, r.out_size), (src, out));
                let p = AugmentParams::resampled(r, FILL);
                let (x, y) = apply(&p, img.view(), lab.view()).unwrap();
                let err = max_abs_diff(&x, &want_x);
                assert!(err < 1e-5, "{src:?} {sp:?} {t} {out:?}: max error {err}");
                assert_eq!(y, want_y, "{src:?} {sp:?} {t} {out:?}");
                assert_eq!(apply_image(&p, img.view()).unwrap(), x);
                let flipped = AugmentParams { flip: true, ..p };
                let (xf, yf) = apply(&flipped, img.view(), lab.view()).unwrap();
                assert_eq!(xf, x.slice(s![.., .., ..;-1]));
                assert_eq!(yf, y.slice(s![.., ..;-1]));
            }
        }
    }
}

/// (a) Derived by hand: bilinear interpolation reproduces an affine ramp,
/// so the resampled image is the ramp at the source positions of the
/// output's pixel centres, `(i + 0.5) · fov / out - 0.5 + (n / 2 - fov / 2)`
/// per axis (clamped to the field of view's pixel centres), and fill where
/// that is over half a pixel outside the source.
#[test]
fn resample_of_a_ramp_is_derived_by_hand() {
    let ramp = |y: f64, x: f64| 0.01 * y - 0.007 * x + 0.3;
    // (source, spacing, target): out is 32 × 32; per axis the source
    // position of output pixel i, or None for fill.
    type Pos = fn(usize) -> Option<f64>;
    type Case = ((usize, usize), (f64, f64), f64, Pos, Pos);
    let cases: [Case; 4] = [
        // 1 mm → 2 mm over 64 rows: whole field of view, 2i + 0.5; 0.5 mm
        // → 2 mm over 128 columns: 4j + 1.5.
        (
            (64, 128),
            (1.0, 0.5),
            2.0,
            |i| Some(2.0 * i as f64 + 0.5),
            |j| Some(4.0 * j as f64 + 1.5),
        ),
        // 1 mm → 1.5 mm: 48 pixels from 8: 1.5i + 8.25.
        (
            (64, 64),
            (1.0, 1.0),
            1.5,
            |i| Some(1.5 * i as f64 + 8.25),
            |j| Some(1.5 * j as f64 + 8.25),
        ),
        // 1 mm → 0.5 mm: 16 pixels from 24: 0.5i + 23.75, clamped to
        // [24, 39].
        (
            (64, 64),
            (1.0, 1.0),
            0.5,
            |i| Some((0.5 * i as f64 + 23.75).clamp(24.0, 39.0)),
            |j| Some((0.5 * j as f64 + 23.75).clamp(24.0, 39.0)),
        ),
        // 1 mm → 4 mm: 128 pixels from -32: 4i - 30.5, inside the 64
        // pixels for 8 <= i <= 23.
        (
            (64, 64),
            (1.0, 1.0),
            4.0,
            |i| (8..=23).contains(&i).then_some(4.0 * i as f64 - 30.5),
            |j| (8..=23).contains(&j).then_some(4.0 * j as f64 - 30.5),
        ),
    ];
    for (src, sp, t, py, px) in cases {
        let img = Array3::from_shape_fn((1, src.0, src.1), |(_, y, x)| {
            ramp(y as f64, x as f64) as f32
        });
        let r = Resample::to_spacing(src, sp, t, (32, 32)).unwrap();
        let x = apply_image(&AugmentParams::resampled(r, FILL), img.view()).unwrap();
        let mut err = 0f64;
        for ((_, i, j), &v) in x.indexed_iter() {
            let want = match (py(i), px(j)) {
                (Some(y), Some(x)) => ramp(y, x),
                _ => f64::from(FILL),
            };
            err = err.max((f64::from(v) - want).abs());
            // The pre-map reports the same positions.
            if let (Some(y), Some(x)) = (py(i), px(j)) {
                let (my, mx) = r.map((i as f64, j as f64));
                assert!(
                    (my - y).abs() < 1e-9 && (mx - x).abs() < 1e-9,
                    "{src:?} {t}"
                );
            }
        }
        assert!(err < 1e-6, "{src:?} {sp:?} {t}: max error {err}");
    }
}

/// The smooth image's channel-0 value at a continuous source position.
fn smooth_at(y: f64, x: f64) -> f64 {
    (0.21 * x + 0.13 * y).sin() + 0.5 * (0.07 * x - 0.17 * y).cos()
}

/// Independent f64 reference of the whole chain's geometry with today's
/// resampling (`at_spacing`'s crop of `round(frame · t / spacing)` pixels
/// from `n / 2 - fov / 2`) in front: output pixel → crop → frame (unpad,
/// unflip, unrotate about the frame's centre) → source. `None` where the
/// padded, frame or source position is within `margin` pixels of an edge
/// or outside (there the two differ by design).
fn reference_source_position(
    p: &AugmentParams,
    src: (usize, usize),
    spacing: (f64, f64),
    t: f64,
    (oy, ox): (usize, usize),
    margin: f64,
) -> Option<(f64, f64)> {
    let (fh, fw) = (p.in_size.0 as f64, p.in_size.1 as f64);
    let crop = |o: usize, n_out: usize, n: usize, off: usize| {
        ((o as f64 + 0.5) * n as f64 / n_out as f64 - 0.5).clamp(0.0, n as f64 - 1.0) + off as f64
            - p.pad as f64
    };
    let yf = crop(oy, p.out_size.0, p.crop.height, p.crop.top);
    let xf = crop(ox, p.out_size.1, p.crop.width, p.crop.left);
    let ok = |v: f64, n: f64| v >= margin && v <= n - 1.0 - margin;
    // Padding (around the rotated frame).
    if !(ok(xf, fw) && ok(yf, fh)) {
        return None;
    }
    let xf = if p.flip { fw - 1.0 - xf } else { xf };
    let (cx, cy) = ((fw - 1.0) / 2.0, (fh - 1.0) / 2.0);
    let (sin, cos) = p.angle_deg.to_radians().sin_cos();
    let (dx, dy) = ((xf - cx) / p.scale, (yf - cy) / p.scale);
    let (rx, ry) = (cx + cos * dx - sin * dy, cy + sin * dx + cos * dy);
    if !(ok(rx, fw) && ok(ry, fh)) {
        return None;
    }
    let to_src = |r: f64, n_frame: usize, n_src: usize, sp: f64| {
        let fov = ((n_frame as f64 * t / sp).round() as usize).max(1);
        (r + 0.5) * fov as f64 / n_frame as f64 - 0.5 + (n_src / 2) as f64 - (fov / 2) as f64
    };
    let sy = to_src(ry, p.in_size.0, src.0, spacing.0);
    let sx = to_src(rx, p.in_size.1, src.1, spacing.1);
    (ok(sx, src.1 as f64) && ok(sy, src.0 as f64)).then_some((sy, sx))
}

/// (b) Resampling and a drawn augmentation in one warp: the same draws as
/// augmenting the resampled image (today's two passes); an image close to
/// theirs (they differ by the second interpolation's blur) and closer to
/// the smooth image's true values at an independently derived source
/// position; the same labels but for a few boundary pixels.
#[test]
fn resample_with_a_drawn_augmentation_is_close_to_two_passes() {
    // The field of view 180 × 229 source pixels, wider than the source
    // (the sides are fill), then 180 × 213, inside it.
    one_warp_against_two_passes((0.8, 0.7));
    one_warp_against_two_passes((0.8, 0.75));
}

fn one_warp_against_two_passes(sp: (f64, f64)) {
    let (src, t, frame) = ((180, 220), 1.0, (144, 160));
    let (img, lab) = smooth_image(3, src.0, src.1);
    let r = Resample::to_spacing(src, sp, t, frame).unwrap();
    let fov_inside = r.origin.1 >= -0.5 && r.origin.1 + r.scale.1 * frame.1 as f64 <= 219.5;
    // With the field of view inside the source, no 0 in the source: a 0 out
    // marks a pixel outside the frame.
    let lab = if fov_inside { lab.mapv(|v| v + 1) } else { lab };
    let (mut worst_mad, mut worst_agree, mut worst_err) = (0f64, 1f64, 0f64);
    let mut worst_truth = 1f64;
    for (k, cfg) in [
        AugmentConfig {
            out_size: Some(frame),
            ..AugmentConfig::default()
        },
        // Zoom and intensity extras too (the intensity steps follow the
        // warp, the same in both).
        AugmentConfig {
            out_size: Some(frame),
            ..AugmentConfig::default()
        }
        .with_nnunet_extras(),
        // Another output size than the frame, larger rotations.
        AugmentConfig {
            out_size: Some((128, 100)),
            max_rotation_deg: 30.0,
            ..AugmentConfig::default()
        },
    ]
    .iter()
    .enumerate()
    {
        for i in 0..12 {
            let (rx, ry) = apply(
                &AugmentParams::at_spacing(src, sp, t, frame, cfg.fill),
                img.view(),
                lab.view(),
            )
            .unwrap();
            let mut rng = kseg_volume::sample_rng(11, k as u64, i);
            let two = augment(cfg, rx.view(), ry.view(), &mut rng).unwrap();
            let mut rng = kseg_volume::sample_rng(11, k as u64, i);
            let one = augment_resampled(cfg, &r, img.view(), lab.view(), &mut rng).unwrap();
            assert_eq!(one.params.resample, Some(r));
            assert_eq!(
                AugmentParams {
                    resample: None,
                    ..one.params.clone()
                },
                two.params,
                "the same draws"
            );
            assert_eq!(one.image.dim(), two.image.dim());
            let mad = one
                .image
                .iter()
                .zip(two.image.iter())
                .map(|(&a, &b)| f64::from(a - b).abs())
                .sum::<f64>()
                / one.image.len() as f64;
            let agree = one
                .label
                .iter()
                .zip(two.label.iter())
                .filter(|(a, b)| a == b)
                .count() as f64
                / one.label.len() as f64;
            assert!(mad < 0.025, "cfg {k} draw {i}: mean |difference| {mad}");
            // A pixel over a pixel outside the rotated frame (the corners,
            // the same frame position in both) is fill in both.
            let fill_only_in_two = one
                .image
                .iter()
                .zip(two.image.iter())
                .filter(|&(&a, &b)| b == cfg.fill && a != cfg.fill)
                .count();
            assert_eq!(
                fill_only_in_two, 0,
                "cfg {k} draw {i}: fill in two passes only"
            );
            // The label's frame border is decided at the same half pixel
            // (the source's is not: two nearest-neighbour reads against one).
            if fov_inside {
                assert_eq!(
                    one.label.mapv(|v| v == 0),
                    two.label.mapv(|v| v == 0),
                    "cfg {k} draw {i}: label 0 (outside the frame)"
                );
            }
            assert!(agree > 0.99, "cfg {k} draw {i}: labels agree on {agree}");
            worst_mad = worst_mad.max(mad);
            worst_agree = worst_agree.min(agree);
            let p = &one.params;
            if p.brightness.is_some()
                || p.contrast.is_some()
                || p.gamma.is_some()
                || p.noise.is_some()
            {
                continue;
            }
            // Against the truth, in the interior: one bilinear read of
            // the smooth image errs by at most ~0.01; two compound.
            let (mut n, mut e1, mut e2, mut max1) = (0usize, 0f64, 0f64, 0f64);
            let mut label_ok = 0usize;
            for ((yy, xx), _) in one.label.indexed_iter() {
                let Some((sy, sx)) = reference_source_position(p, src, sp, t, (yy, xx), 1.0) else {
                    continue;
                };
                let truth = smooth_at(sy, sx);
                let d1 = (f64::from(one.image[[0, yy, xx]]) - truth).abs();
                e1 += d1;
                e2 += (f64::from(two.image[[0, yy, xx]]) - truth).abs();
                max1 = max1.max(d1);
                n += 1;
                // The label of the source pixel nearest the true position.
                let near = lab[[(sy + 0.5).floor() as usize, (sx + 0.5).floor() as usize]];
                label_ok += usize::from(one.label[[yy, xx]] == near);
            }
            let lab_truth = label_ok as f64 / n as f64;
            assert!(
                lab_truth > 0.999,
                "cfg {k} draw {i}: labels true on {lab_truth}"
            );
            worst_truth = worst_truth.min(lab_truth);
            assert!(n > one.label.len() / 2, "cfg {k} draw {i}: interior {n}");
            assert!(
                max1 < 0.015,
                "cfg {k} draw {i}: max error {max1} against the truth"
            );
            assert!(
                e1 < e2,
                "cfg {k} draw {i}: one warp {e1} vs two passes {e2}"
            );
            worst_err = worst_err.max(max1);
        }
    }
    eprintln!(
        "{sp:?} mm: worst mean |one - two| {worst_mad}, label agreement {worst_agree}; against the truth: \
         one-warp error {worst_err}, labels {worst_truth}"
    );
}

/// (c) Bad resampling input is an error, not a panic.
#[test]
fn resample_bad_input_is_an_error_not_a_panic() {
    let (img, lab) = random_image(3, 10, 12, 8);
    let to = Resample::to_spacing;
    for bad in [
        to((0, 12), (1.0, 1.0), 1.0, (8, 8)),
        to((10, 12), (1.0, 1.0), 1.0, (8, 0)),
        to((10, 12), (f64::NAN, 1.0), 1.0, (8, 8)),
        to((10, 12), (1.0, 0.0), 1.0, (8, 8)),
        to((10, 12), (1.0, -1.0), 1.0, (8, 8)),
        to((10, 12), (1.0, 1.0), f64::INFINITY, (8, 8)),
        to((10, 12), (1.0, 1.0), 0.0, (8, 8)),
    ] {
        assert!(matches!(bad, Err(AugmentError::Input(_))), "{bad:?}");
    }
    let good = to((10, 12), (1.0, 1.0), 1.0, (8, 8)).unwrap();
    for r in [
        Resample {
            scale: (f64::NAN, 1.0),
            ..good
        },
        Resample {
            scale: (1.0, f64::INFINITY),
            ..good
        },
        Resample {
            scale: (0.0, 1.0),
            ..good
        },
        Resample {
            origin: (0.0, f64::NEG_INFINITY),
            ..good
        },
        Resample {
            out_size: (0, 8),
            ..good
        },
    ] {
        assert!(r.validate().is_err(), "{r:?}");
        let e = apply(&AugmentParams::resampled(r, FILL), img.view(), lab.view()).unwrap_err();
        assert!(matches!(e, AugmentError::Input(_)), "{e}");
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(
            augment_resampled(
                &AugmentConfig::default(),
                &r,
                img.view(),
                lab.view(),
                &mut rng
            )
            .is_err()
        );
    }
    // The image is not the resample's source.
    let other = to((10, 11), (1.0, 1.0), 1.0, (8, 8)).unwrap();
    let e = apply(
        &AugmentParams::resampled(other, FILL),
        img.view(),
        lab.view(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("resample is from"), "{e}");
    // Parameters drawn for another frame.
    let p = AugmentParams {
        resample: Some(good),
        ..AugmentParams::identity((9, 8), 12, FILL)
    };
    let e = apply(&p, img.view(), lab.view()).unwrap_err();
    assert!(e.to_string().contains("drawn for"), "{e}");
    // A bad configuration.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let cfg = AugmentConfig {
        flip_prob: 2.0,
        ..Default::default()
    };
    let e = augment_resampled(&cfg, &good, img.view(), lab.view(), &mut rng).unwrap_err();
    assert!(matches!(e, AugmentError::Config(_)), "{e}");
    // Absurd but finite voxel sizes: a huge or tiny field of view is all
    // fill or one source pixel, never a panic or an allocation of it.
    for sp in [1e-300, 1e300] {
        let r = to((10, 12), (sp, sp), 1.0, (6, 7)).unwrap();
        let (x, y) = apply(&AugmentParams::resampled(r, FILL), img.view(), lab.view()).unwrap();
        assert_eq!((x.dim(), y.dim()), ((3, 6, 7), (6, 7)));
        assert!(x.iter().all(|v| v.is_finite()));
    }
}
