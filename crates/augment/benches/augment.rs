//! Augmentation benches: the reference method's full chain on one 3×512×512 sample and
//! its label (one thread), and a batch of 8 in parallel (rayon); training at
//! a voxel size (a 3×560×480 slice of 0.7 × 0.8 mm to 512×512 pixels of
//! 0.78 mm, then the chain), in one warp and as today's two passes.
//!
//! `cargo bench -p kseg-augment --bench augment`

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kseg_augment::{AugmentConfig, AugmentParams, Resample, apply, augment, augment_resampled};
use ndarray::{Array2, Array3};
use rayon::prelude::*;

fn sample() -> (Array3<f32>, Array2<u8>) {
    sample_of(512, 512)
}

fn sample_of(h: usize, w: usize) -> (Array3<f32>, Array2<u8>) {
    let img = Array3::from_shape_fn((3, h, w), |(c, y, x)| {
        ((c * 7 + y * 3 + x) % 97) as f32 / 97.0
    });
    let lab = Array2::from_shape_fn((h, w), |(y, x)| ((y / 64 + x / 64) % 3) as u8);
    (img, lab)
}

fn benches(c: &mut Criterion) {
    let (img, lab) = sample();
    let cfg = AugmentConfig::default();
    let mut i = 0u64;
    c.bench_function("seed_chain_512", |b| {
        b.iter(|| {
            // Draw and apply, as training does, each iteration a new draw.
            let mut rng = kseg_volume::sample_rng(0, 0, i);
            i += 1;
            let p = cfg.sample((512, 512), &mut rng).unwrap();
            black_box(apply(&p, img.view(), lab.view()).unwrap())
        })
    });
    let batch: Vec<_> = (0..8).map(|_| (img.clone(), lab.clone())).collect();
    let mut epoch = 0u64;
    c.bench_function("seed_chain_512_batch8_rayon", |b| {
        b.iter(|| {
            epoch += 1;
            // As the trainer's batch maker: a generator per sample.
            let out: Vec<_> = batch
                .par_iter()
                .enumerate()
                .map(|(i, (x, y))| {
                    let mut rng = kseg_volume::sample_rng(0, epoch, i as u64);
                    augment(&cfg, x.view(), y.view(), &mut rng).unwrap()
                })
                .collect();
            black_box(out)
        })
    });
    let (src, sp, t, out) = ((560, 480), (0.7, 0.8), 0.78, (512, 512));
    let (img, lab) = sample_of(src.0, src.1);
    let r = Resample::to_spacing(src, sp, t, out).unwrap();
    let mut i = 0u64;
    c.bench_function("spacing_chain_512_one_warp", |b| {
        b.iter(|| {
            let mut rng = kseg_volume::sample_rng(0, 0, i);
            i += 1;
            black_box(augment_resampled(&cfg, &r, img.view(), lab.view(), &mut rng).unwrap())
        })
    });
    let mut i = 0u64;
    c.bench_function("spacing_chain_512_two_passes", |b| {
        b.iter(|| {
            let mut rng = kseg_volume::sample_rng(0, 0, i);
            i += 1;
            let p = AugmentParams::at_spacing(src, sp, t, out, cfg.fill);
            let (x, y) = apply(&p, img.view(), lab.view()).unwrap();
            black_box(augment(&cfg, x.view(), y.view(), &mut rng).unwrap())
        })
    });
}

criterion_group!(augment_benches, benches);
criterion_main!(augment_benches);
