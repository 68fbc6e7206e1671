//! Volume benches: decoding a gzipped KiTS-sized case (in KiTS19's layout
//! and stored RAS slices-last), reading a 300-slice DICOM CT series, and
//! fetching one 2.5D stack from the cache.
//!
//! `cargo bench -p kseg-volume --bench volume`
//!
//! The case is synthetic (200 slices of 512×512, int16 imaging and uint8
//! labels, gzip level 1 as our writer uses), generated once per run into a
//! temporary folder.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

#[path = "../../../tests/support/dicom.rs"]
mod support_dicom;

use kseg_volume::LabelSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kseg_volume::{CachedCase, Intensity, read_labels, read_volume, synth};

fn case_dir() -> (tempfile::TempDir, kseg_volume::CaseDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = synth::SynthConfig {
        height: 512,
        width: 512,
        min_slices: 200,
        max_slices: 200,
        seed: 0,
        ..Default::default()
    };
    let case = synth::write_dataset(dir.path(), 1, &cfg).unwrap().remove(0);
    (dir, case)
}

/// `case` written slices-last in RAS into `dir/ras/case_00000`.
fn ras_copy(case: &kseg_volume::CaseDir, dir: &std::path::Path) -> kseg_volume::CaseDir {
    use kseg_volume::orient::permute;
    let out = dir.join("ras/case_00000");
    std::fs::create_dir_all(&out).unwrap();
    let (p, f) = ([2, 1, 0], [true; 3]);
    let img = read_volume(&case.imaging).unwrap();
    let h = img.header.reoriented(p, f).unwrap();
    let data = permute(img.data.view(), p, f).mapv(|v| v as i16);
    kseg_volume::write_volume(out.join("imaging.nii.gz"), data.view(), &h).unwrap();
    let lab = read_labels(case.segmentation.as_ref().unwrap(), LabelSet::Kits19).unwrap();
    let data = permute(lab.data.view(), p, f);
    kseg_volume::write_volume(out.join("segmentation.nii.gz"), data.view(), &h).unwrap();
    kseg_volume::CaseDir::open(out).unwrap()
}

fn benches(c: &mut Criterion) {
    let (dir, case) = case_dir();
    let seg = case.segmentation.clone().unwrap();
    let int16_bytes = 200 * 512 * 512 * 2;

    let mut g = c.benchmark_group("decode");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(int16_bytes));
    // What training does: CaseDir::load decodes imaging and labels in
    // parallel and checks them against each other.
    g.bench_function("gz_case_200x512x512_load", |b| {
        b.iter(|| black_box(case.load(LabelSet::Kits19).unwrap()))
    });
    // The same case stored slices-last in RAS (dcm2niix's layout): the
    // load reorients it to the internal layout (docs/PERFORMANCE.md).
    let ras = ras_copy(&case, dir.path());
    g.bench_function("gz_case_200x512x512_load_ras", |b| {
        b.iter(|| black_box(ras.load(LabelSet::Kits19).unwrap()))
    });
    g.bench_function("gz_case_200x512x512_imaging_then_labels", |b| {
        b.iter(|| {
            let img = read_volume(&case.imaging).unwrap();
            let lab = read_labels(&seg, LabelSet::Kits19).unwrap();
            black_box((img, lab))
        })
    });
    g.bench_function("gz_case_200x512x512_imaging_only", |b| {
        b.iter(|| black_box(read_volume(&case.imaging).unwrap()))
    });
    g.finish();

    // A 300-slice 512×512 CT series (uint16 + intercept, names unrelated
    // to position), read as `kseg predict --input DIR` reads it
    // (benches/compare/dicom_read.sh times pydicom on the same work).
    let series_dir = dir.path().join("dicom");
    let hu = ndarray::Array3::from_shape_fn((300, 512, 512), |(k, r, c)| {
        ((k * 7 + r * 3 + c) % 1400) as f32 - 1024.0
    });
    let spec = support_dicom::SeriesSpec {
        hu: &hu,
        origin: [-200.0, -200.0, 0.0],
        row_dir: [1.0, 0.0, 0.0],
        col_dir: [0.0, 1.0, 0.0],
        pixel_spacing: [0.78, 0.78],
        step: 1.25,
        storage: support_dicom::Storage::U16Intercept,
        uid: "1.2.826.0.1.3680043.2.1125.300",
    };
    let names: Vec<String> = (0..300)
        .map(|k| format!("{:05}", (k * 7919) % 10007))
        .collect();
    let numbers: Vec<u32> = (1..=300).rev().collect();
    support_dicom::write_series(&series_dir, &spec, &names, &numbers);
    drop(hu);
    let mut g = c.benchmark_group("dicom");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(300 * 512 * 512 * 2));
    g.bench_function("series_300x512x512_read", |b| {
        b.iter(|| black_box(kseg_volume::dicom::read_dicom_dir(&series_dir, None).unwrap()))
    });
    g.finish();

    let cached =
        CachedCase::open_or_build(&case, dir.path().join("cache"), LabelSet::Kits19).unwrap();
    let w = Intensity::default();
    let mut g = c.benchmark_group("cache");
    g.throughput(Throughput::Elements(1));
    let mut k = 0;
    g.bench_function("fetch_stack3_512", |b| {
        b.iter(|| {
            k = (k + 37) % 200;
            black_box(cached.sample(k, 1, &w).unwrap())
        })
    });
    g.finish();
}

criterion_group!(volume, benches);
criterion_main!(volume);
