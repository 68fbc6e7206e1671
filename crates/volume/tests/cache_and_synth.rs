//! The slice cache against the NIfTI path it replaces, and the synthetic
//! case generator's promises (determinism, anatomy, layout).

use kseg_volume::LabelSet;
use std::time::{Duration, SystemTime};

use kseg_volume::{
    self, CacheStatus, CachedCase, CaseDir, DType, Header, Intensity, stack_sample, synth,
    write_volume,
};
use ndarray::{Array3, s};

fn small(seed: u64) -> synth::SynthConfig {
    synth::SynthConfig {
        height: 48,
        width: 40,
        min_slices: 6,
        max_slices: 12,
        seed,
        ..Default::default()
    }
}

#[test]
fn cache_serves_the_same_stacks_as_the_nifti_files() {
    let dir = tempfile::tempdir().unwrap();
    let cases = synth::write_dataset(dir.path().join("data"), 2, &small(5)).unwrap();
    let cache_dir = dir.path().join("cache");
    let w = Intensity::default();
    for case in &cases {
        let c = CachedCase::open_or_build(case, &cache_dir, LabelSet::Kits19).unwrap();
        assert_eq!(c.status(), &CacheStatus::Built);
        let loaded = case.load(LabelSet::Kits19).unwrap();
        let labels = loaded.labels.as_ref().unwrap();
        assert_eq!(c.shape(), loaded.imaging.shape());
        for k in 0..c.num_slices() {
            for n in [0, 1, 2] {
                let (x, y) = c.sample(k, n, &w).unwrap();
                let (x_ref, y_ref) =
                    stack_sample(loaded.imaging.data.view(), labels.data.view(), k, n, &w).unwrap();
                assert_eq!(x, x_ref, "{} slice {k} n {n}", case.id);
                assert_eq!(y.unwrap(), y_ref);
            }
            let hu = c.hu_slice(k).unwrap();
            assert_eq!(hu, loaded.imaging.data.slice(s![k, .., ..]));
        }
        // Foreground list and counts, recomputed from the labels here.
        let fg: Vec<usize> = (0..c.num_slices())
            .filter(|&k| labels.data.slice(s![k, .., ..]).iter().any(|&v| v > 0))
            .collect();
        assert_eq!(c.foreground_slices(), fg.as_slice());
        let count = |v: u8| labels.data.iter().filter(|&&l| l == v).count() as u64;
        assert_eq!(c.meta().label_counts, [count(0), count(1), count(2)]);
        assert!(c.stack(c.num_slices(), 1, &w).is_err());
        // Second open: nothing decoded.
        let again = CachedCase::open_or_build(case, &cache_dir, LabelSet::Kits19).unwrap();
        assert_eq!(again.status(), &CacheStatus::Fresh);
    }
}

#[test]
fn stale_and_damaged_caches_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let case = &synth::write_dataset(dir.path().join("data"), 1, &small(9)).unwrap()[0];
    let cache_dir = dir.path().join("cache");
    let c = CachedCase::open_or_build(case, &cache_dir, LabelSet::Kits19).unwrap();
    let cache_path = c.path().to_path_buf();
    drop(c);

    // Damaged: truncated file.
    let bytes = std::fs::read(&cache_path).unwrap();
    std::fs::write(&cache_path, &bytes[..bytes.len() / 2]).unwrap();
    let c = CachedCase::open_or_build(case, &cache_dir, LabelSet::Kits19).unwrap();
    match c.status() {
        CacheStatus::Rebuilt { reason } => assert!(reason.contains("damaged"), "{reason}"),
        s => panic!("{s:?}"),
    }
    drop(c);
    // Damaged: garbage.
    std::fs::write(&cache_path, b"not a safetensors file at all").unwrap();
    let c = CachedCase::open_or_build(case, &cache_dir, LabelSet::Kits19).unwrap();
    assert!(matches!(c.status(), CacheStatus::Rebuilt { .. }));
    drop(c);

    // Stale: the labels change on disk (new content, new mtime).
    let loaded = case.load(LabelSet::Kits19).unwrap();
    let mut labels = loaded.labels.unwrap().data;
    labels.fill(0);
    labels[[0, 0, 0]] = 2;
    let seg = case.segmentation.clone().unwrap();
    write_volume(&seg, labels.view(), &loaded.imaging.header).unwrap();
    let f = std::fs::File::options().write(true).open(&seg).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    let c = CachedCase::open_or_build(case, &cache_dir, LabelSet::Kits19).unwrap();
    assert_eq!(
        c.status(),
        &CacheStatus::Rebuilt {
            reason: "source files changed".into()
        }
    );
    assert_eq!(c.foreground_slices(), &[0]);
    assert_eq!(c.label_slice(0).unwrap().unwrap()[[0, 0]], 2);
    // No temporary files are left in the cache folder.
    assert_eq!(std::fs::read_dir(&cache_dir).unwrap().count(), 1);
}

#[test]
fn float_imaging_is_cached_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let case_dir = dir.path().join("case_00000");
    std::fs::create_dir(&case_dir).unwrap();
    let mut img = Array3::from_shape_fn((3, 4, 5), |(z, y, x)| {
        z as f32 * 100.5 + y as f32 - x as f32 * 0.25
    });
    img[[1, 2, 3]] = f32::NAN; // a voxel without a value
    let h = Header::kits_like([3, 4, 5], [1.0, 1.0, 1.0], DType::F32).unwrap();
    write_volume(case_dir.join("imaging.nii.gz"), img.view(), &h).unwrap();
    let case = CaseDir::open(&case_dir).unwrap();
    assert!(case.segmentation.is_none());
    let c = CachedCase::open_or_build(&case, dir.path().join("cache"), LabelSet::Kits19).unwrap();
    assert!(!c.has_labels());
    for k in 0..3 {
        let got = c.hu_slice(k).unwrap();
        let want = img.slice(s![k, .., ..]);
        // Equal, NaN where the file has NaN.
        assert!(
            got.iter()
                .zip(want.iter())
                .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()))
        );
    }
    assert!(c.hu_slice(1).unwrap()[[2, 3]].is_nan());
    let w = Intensity::default();
    let (x, y) = c.sample(1, 1, &w).unwrap();
    assert!(y.is_none());
    // The window maps NaN to its lower end, like air.
    assert_eq!(x[[1, 2, 3]], w.apply(w.hu_min));
}

#[test]
fn synthetic_cases_are_seeded_and_thread_independent() {
    let cfg = small(11);
    let a = synth::generate_case(&cfg, 3).unwrap();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = one.install(|| synth::generate_case(&cfg, 3).unwrap());
    assert_eq!(a.imaging, b.imaging);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.spacing, b.spacing);
    let c = synth::generate_case(&small(12), 3).unwrap();
    assert!(a.imaging.shape() != c.imaging.shape() || a.imaging != c.imaging);
    // A case does not depend on how many cases are generated.
    let dir = tempfile::tempdir().unwrap();
    let two = synth::write_dataset(dir.path().join("two"), 2, &cfg).unwrap();
    let three = synth::write_dataset(dir.path().join("three"), 3, &cfg).unwrap();
    let bytes = |p: &std::path::Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&two[1].imaging), bytes(&three[1].imaging));
    // A second call keeps the existing files.
    let before = std::fs::metadata(&two[0].imaging)
        .unwrap()
        .modified()
        .unwrap();
    synth::write_dataset(dir.path().join("two"), 2, &cfg).unwrap();
    assert_eq!(
        std::fs::metadata(&two[0].imaging)
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
}

#[test]
fn synthetic_anatomy_is_kits_like() {
    let cfg = synth::SynthConfig {
        height: 96,
        width: 96,
        min_slices: 40,
        max_slices: 60,
        seed: 3,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = synth::write_dataset(dir.path(), 4, &cfg).unwrap();
    for case in &cases {
        let c = case.load(LabelSet::Kits19).unwrap();
        let img = &c.imaging.data;
        let lab = &c.labels.as_ref().unwrap().data;
        let (slices, h, w) = img.dim();
        assert!((40..=60).contains(&slices) && (h, w) == (96, 96));
        // Stored as KiTS19 stores it: int16 imaging, uint8 labels, mm.
        assert_eq!(c.imaging.header.dtype(), DType::I16);
        assert_eq!(c.labels.as_ref().unwrap().header.dtype(), DType::U8);
        let sp = c.imaging.header.spacing();
        assert!((0.5..=5.0).contains(&sp[0]), "slice spacing {sp:?}");
        // Two kidneys: kidney voxels on both sides of the image.
        let left = lab
            .slice(s![.., .., ..w / 2])
            .iter()
            .filter(|&&v| v == 1)
            .count();
        let right = lab
            .slice(s![.., .., w / 2..])
            .iter()
            .filter(|&&v| v == 1)
            .count();
        assert!(
            left > 50 && right > 50,
            "{}: kidney voxels {left} / {right}",
            case.id
        );
        // At least one tumour, touching a kidney.
        let mut touching = 0;
        for ((z, y, x), &v) in lab.indexed_iter() {
            if v == 2 {
                let n = [
                    (z.wrapping_sub(1), y, x),
                    (z + 1, y, x),
                    (z, y.wrapping_sub(1), x),
                    (z, y + 1, x),
                    (z, y, x.wrapping_sub(1)),
                    (z, y, x + 1),
                ];
                touching += n.iter().filter(|&&i| lab.get(i) == Some(&1)).count();
            }
        }
        assert!(touching > 0, "{}: no tumour touches a kidney", case.id);
        // Plausible HU: enhancing kidney brighter than air and fat, bone
        // present, air around the body.
        let mean_of = |label: u8| {
            let v: Vec<f32> = img
                .iter()
                .zip(lab.iter())
                .filter(|(_, l)| **l == label)
                .map(|(h, _)| *h)
                .collect();
            v.iter().sum::<f32>() / v.len() as f32
        };
        assert!(mean_of(1) > 90.0, "{}: kidney mean {}", case.id, mean_of(1));
        assert!(img.iter().any(|&v| v > 300.0), "no bone");
        assert!(img[[0, 0, 0]] < -900.0 && img[[slices - 1, h - 1, w / 2]] < -900.0);
        // Foreground does not fill the volume: slices without kidney exist
        // or the kidneys are a small share of voxels.
        let fg = lab.iter().filter(|&&v| v > 0).count() as f64 / lab.len() as f64;
        assert!(fg < 0.1, "foreground share {fg}");
    }
    // list_cases sees them all.
    assert_eq!(kseg_volume::list_cases(dir.path()).unwrap().len(), 4);
}

#[test]
fn zoomed_field_of_view_labels_only_what_is_imaged() {
    // A 150 mm field cuts through the abdomen: outside the reconstruction
    // circle the image is air (-1024 HU) and nothing is labelled, inside
    // the kidneys are still there.
    let cfg = synth::SynthConfig {
        height: 48,
        width: 48,
        min_slices: 24,
        max_slices: 24,
        seed: 5,
        fov_mm: (150.0, 160.0),
        ..Default::default()
    };
    let mut inside_fg = 0;
    for i in 0..3 {
        let c = synth::generate_case(&cfg, i).unwrap();
        let r2 = 24.0f32 * 24.0;
        for ((z, r, col), &l) in c.labels.indexed_iter() {
            let (dr, dc) = (r as f32 - 23.5, col as f32 - 23.5);
            if dr * dr + dc * dc > r2 {
                assert_eq!(l, 0, "case {i}: label outside the field at {z},{r},{col}");
                assert_eq!(c.imaging[[z, r, col]], -1024);
            } else if l > 0 {
                inside_fg += 1;
            }
        }
        // Pixel size follows the drawn field: 150-160 mm over 48 pixels.
        assert!((150.0 / 48.0..160.0 / 48.0).contains(&c.spacing[1]));
    }
    assert!(inside_fg > 0);
    let bad = synth::SynthConfig {
        fov_mm: (300.0, 200.0),
        ..Default::default()
    };
    assert!(synth::generate_case(&bad, 0).is_err());
    let bad = synth::SynthConfig {
        tumour_radius_mm: (0.0, 10.0),
        ..Default::default()
    };
    assert!(synth::generate_case(&bad, 0).is_err());
}

/// A long coverage is a whole abdomen: the spacing is the coverage over
/// the slices, and the kidneys are on a quarter of the slices or so, far
/// fewer than at the default coverage of the same slice count; the default's
/// recorded settings are what they were (no `coverage_mm` key); bad
/// ranges are refused.
#[test]
fn a_long_coverage_puts_the_kidneys_on_few_slices() {
    let long = synth::SynthConfig {
        height: 32,
        width: 32,
        min_slices: 128,
        max_slices: 128,
        seed: 4,
        coverage_mm: (400.0, 500.0),
        ..Default::default()
    };
    let short = synth::SynthConfig {
        coverage_mm: (150.0, 260.0),
        ..long.clone()
    };
    let share = |c: &synth::SynthCase| {
        let fg = c
            .labels
            .axis_iter(ndarray::Axis(0))
            .filter(|p| p.iter().any(|&l| l > 0))
            .count();
        fg as f64 / c.labels.shape()[0] as f64
    };
    for i in 0..3 {
        let c = synth::generate_case(&long, i).unwrap();
        // 400-500 mm over 128 slices: 3.0-4.0 mm after rounding to 0.25.
        assert!(
            (3.0..=4.0).contains(&c.spacing[0]),
            "spacing {}",
            c.spacing[0]
        );
        let s = share(&c);
        assert!(
            (0.1..0.35).contains(&s),
            "case {i}: kidneys on {s:.2} of the slices"
        );
        let d = synth::generate_case(&short, i).unwrap();
        assert!(share(&d) > 1.5 * s, "default coverage: {:.2}", share(&d));
    }
    let json = serde_json::to_string(&synth::SynthConfig::default()).unwrap();
    assert!(!json.contains("coverage"), "{json}");
    assert!(
        serde_json::to_string(&long)
            .unwrap()
            .contains("coverage_mm")
    );
    for bad in [
        (300.0, 200.0),
        (10.0, 100.0),
        (100.0, f32::NAN),
        (100.0, 3000.0),
    ] {
        let cfg = synth::SynthConfig {
            coverage_mm: bad,
            ..Default::default()
        };
        assert!(synth::generate_case(&cfg, 0).is_err(), "{bad:?}");
    }
}

/// `kseg synth --out data` in a dataset's own `data/` folder used to
/// replace its cases with synthetic ones.
#[test]
fn synth_never_replaces_cases_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let case = data.join("case_00000");
    std::fs::create_dir_all(&case).unwrap();
    // A real dataset's case, stood in for by two files of known bytes.
    std::fs::write(case.join("imaging.nii.gz"), b"real imaging").unwrap();
    std::fs::write(case.join("segmentation.nii.gz"), b"real labels").unwrap();
    let e = synth::write_dataset(&data, 2, &small(1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data") && e.contains("case_00000") && e.contains("did not write"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(case.join("imaging.nii.gz")).unwrap(),
        b"real imaging"
    );
    assert_eq!(
        std::fs::read(case.join("segmentation.nii.gz")).unwrap(),
        b"real labels"
    );
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1);
    // A folder synth made is synth's: other settings regenerate it, and
    // so does a write that was interrupted (its stamp says "writing").
    let own = dir.path().join("own");
    synth::write_dataset(&own, 1, &small(1)).unwrap();
    synth::write_dataset(&own, 2, &small(2)).unwrap();
    std::fs::write(own.join(synth::STAMP), "{\"kseg_synth\": \"writing\"}\n").unwrap();
    let again = synth::write_dataset(&own, 2, &small(2)).unwrap();
    assert_eq!(again.len(), 2);
}
