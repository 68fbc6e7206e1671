//! The augmentation against hand-derived identities and an independent f64
//! reference of torchvision's semantics (rotation about ((W-1)/2, (H-1)/2),
//! bilinear with align_corners = false, fill outside; bilinear resize with
//! source positions clamped to the input).

use kseg_augment::{
    AugmentConfig, AugmentError, AugmentParams, CropRect, apply, apply_image, augment,
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
        one.iter().zip(&other).all(|(a, b)| a.2 != b.2),
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
