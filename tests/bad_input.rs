//! Bad input: each gives an error that names the file and the problem, from
//! the library and from the CLI (non-zero exit, no panic, no partial file).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::testdata;
use kseg::volume::LabelSet;
use kseg::volume::{
    self, CaseDir, DType, Header, VolumeError, read_image, read_labels, read_volume, write_volume,
};
use ndarray::Array3;

pub(crate) fn kseg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kseg"))
}

/// Runs `kseg info` on `path`: it must fail cleanly, naming the file and
/// saying `what`.
fn cli_fails(args: &[&str], path: &Path, what: &str) {
    let out = kseg().arg("info").args(args).arg(path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}: exit 0", path.display());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        err.contains(&*name) && err.contains(what),
        "want {name} and {what:?} in: {err}"
    );
    assert!(out.stdout.is_empty(), "printed output on failure");
}

fn lib_fails(err: VolumeError, path: &Path, what: &str) {
    let msg = err.to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        msg.contains(&*name) && msg.contains(what),
        "want {name} and {what:?} in: {msg}"
    );
}

fn copy_with(src: &Path, dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(src).unwrap();
    edit(&mut bytes);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const U8_3X3X3: &str = "nifti/nifti-rs/27/uint8.nii";

#[test]
fn fuzzer_crashes_are_errors() {
    for e in std::fs::read_dir(testdata("nifti/malformed")).unwrap() {
        let p = e.unwrap().path();
        lib_fails(read_image(&p).unwrap_err(), &p, "not a NIfTI-1 file");
        cli_fails(&[], &p, "not a NIfTI-1 file");
    }
}

#[test]
fn truncated_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let src = testdata("kits19/case_00004/segmentation.nii.gz");
    let len = std::fs::metadata(&src).unwrap().len() as usize;
    for (name, keep) in [
        ("half.nii.gz", len / 2),
        ("header_only.nii.gz", 60),
        ("no_trailer.nii.gz", len - 4),
    ] {
        let p = copy_with(&src, dir.path(), name, |b| b.truncate(keep));
        lib_fails(read_labels(&p, LabelSet::Kits19).unwrap_err(), &p, "gzip");
        cli_fails(&[], &p, "gzip");
    }
}

#[test]
fn wrong_magic_and_bad_header_fields() {
    let dir = tempfile::tempdir().unwrap();
    let src = testdata(U8_3X3X3);
    let p = copy_with(&src, dir.path(), "magic.nii", |b| {
        b[344..348].copy_from_slice(b"xyz\0")
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "wrong magic");
    cli_fails(&[], &p, "wrong magic");
    let p = copy_with(&src, dir.path(), "ni1.nii", |b| {
        b[344..348].copy_from_slice(b"ni1\0")
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "separate .img");
    let p = copy_with(&src, dir.path(), "dim0.nii", |b| {
        b[40..42].copy_from_slice(&9i16.to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "dim[0] = 9");
    let p = copy_with(&src, dir.path(), "negdim.nii", |b| {
        b[44..46].copy_from_slice(&(-3i16).to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "dim[2] = -3");
    let p = copy_with(&src, dir.path(), "complex.nii", |b| {
        b[70..72].copy_from_slice(&32i16.to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "complex64");
    let p = copy_with(&src, dir.path(), "bitpix.nii", |b| {
        b[72..74].copy_from_slice(&16i16.to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "bitpix 16");
    let p = copy_with(&src, dir.path(), "voxoff.nii", |b| {
        b[108..112].copy_from_slice(&100f32.to_le_bytes())
    });
    lib_fails(read_image(&p).unwrap_err(), &p, "vox_offset");
    let p = copy_with(&src, dir.path(), "short.nii", |b| b.truncate(200));
    lib_fails(read_image(&p).unwrap_err(), &p, "348");
    cli_fails(&[], &p, "348");
    let p = copy_with(&src, dir.path(), "empty.nii", |b| b.clear());
    lib_fails(read_image(&p).unwrap_err(), &p, "after 0 bytes");
}

#[test]
fn dims_that_do_not_match_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = testdata(U8_3X3X3);
    // 4x3x3 uint8 needs 36 bytes, the file holds 27.
    let big = copy_with(&src, dir.path(), "big.nii", |b| {
        b[42..44].copy_from_slice(&4i16.to_le_bytes())
    });
    lib_fails(read_image(&big).unwrap_err(), &big, "need 36");
    cli_fails(&[], &big, "need 36");
    let small = copy_with(&src, dir.path(), "small.nii", |b| {
        b[42..44].copy_from_slice(&2i16.to_le_bytes())
    });
    lib_fails(read_image(&small).unwrap_err(), &small, "need 18");
    // The same inside gzip, where the size is unknown until the end.
    let bytes = std::fs::read(&big).unwrap();
    let gz = dir.path().join("big.nii.gz");
    std::fs::write(&gz, gzip(&bytes)).unwrap();
    lib_fails(
        read_image(&gz).unwrap_err(),
        &gz,
        "truncated: 27 of 36 bytes",
    );
    let bytes = std::fs::read(&small).unwrap();
    let gz = dir.path().join("small.nii.gz");
    std::fs::write(&gz, gzip(&bytes)).unwrap();
    lib_fails(read_image(&gz).unwrap_err(), &gz, "more voxel data");
    // A header that claims terabytes must fail fast, without allocating them.
    let huge = copy_with(&src, dir.path(), "huge.nii", |b| {
        for d in 1..=3 {
            b[40 + 2 * d..42 + 2 * d].copy_from_slice(&30000i16.to_le_bytes());
        }
    });
    lib_fails(read_image(&huge).unwrap_err(), &huge, "need 27000000000000");
    let bytes = std::fs::read(&huge).unwrap();
    let gz = dir.path().join("huge.nii.gz");
    std::fs::write(&gz, gzip(&bytes)).unwrap();
    // Inside gzip the size is unknown until the end: the memory limit
    // refuses the header's 27 TB before anything is inflated.
    lib_fails(
        read_image(&gz).unwrap_err(),
        &gz,
        "more than the memory limit",
    );
}

/// The header fuzzing the readers survived (11,671 mutated headers and
/// gzip streams through `kseg info`, issue #21), kept as a test: seeded
/// corruptions of every NIfTI file in testdata/nifti (the corpus), of the
/// header bytes of the plain files and of the header and the compressed
/// stream of the gzipped ones. Every read must return Ok or Err: no panic,
/// no abort, no allocation sized by the corrupt header.
///
/// CI runs 1,500 cases (a few seconds). Longer runs:
/// `KSEG_FUZZ_CASES=200000 KSEG_FUZZ_SEED=7 cargo test --release --test
/// integration random_header_corruption` (docs/ARCHITECTURE.md, "Tests").
#[test]
fn random_header_corruption_never_panics() {
    use rand::{Rng, SeedableRng};
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let cases = env("KSEG_FUZZ_CASES", 1500);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(env("KSEG_FUZZ_SEED", 2024));
    let corpus: Vec<(String, Vec<u8>)> = ["nifti/nibabel", "nifti/nifti-rs", "nifti/nifti-rs/27"]
        .iter()
        .flat_map(|d| std::fs::read_dir(testdata(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.to_string_lossy();
            p.is_file() && (n.ends_with(".nii") || n.ends_with(".nii.gz"))
        })
        // Small files only: a case is read whole every time.
        .filter(|p| std::fs::metadata(p).unwrap().len() < 1 << 20)
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    assert!(corpus.len() >= 8, "corpus: {} files", corpus.len());
    let dir = tempfile::tempdir().unwrap();
    for case in 0..cases {
        let (name, orig) = &corpus[case as usize % corpus.len()];
        let gz = name.ends_with(".gz");
        let mut b = if gz {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&orig[..]), &mut out)
                .unwrap();
            out
        } else {
            orig.clone()
        };
        let stream = gz && rng.random_bool(0.3);
        if !stream {
            // 1-5 bytes of the 348-byte header (and the extension flag).
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..352.min(b.len()));
                b[at] = if rng.random_bool(0.2) {
                    0xff
                } else {
                    rng.random()
                };
            }
        }
        let mut bytes = if gz { gzip(&b) } else { b };
        if stream {
            // Damage the compressed stream itself (CRC, lengths, blocks).
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
            if rng.random_bool(0.3) {
                bytes.truncate(rng.random_range(0..bytes.len()));
            }
        }
        let p = dir.path().join(if gz { "fuzz.nii.gz" } else { "fuzz.nii" });
        std::fs::write(&p, &bytes).unwrap();
        let _ = read_image(&p);
        let _ = read_volume(&p);
        let _ = read_labels(&p, LabelSet::Kits19);
        let _ = volume::stats::read_stats(&p, true);
    }
}

fn synth_like(shape: [usize; 3]) -> (Array3<i16>, Header) {
    let img = Array3::from_shape_fn(shape, |(z, y, x)| (z * 100 + y * 10 + x) as i16);
    (
        img,
        Header::kits_like(shape, [2.0, 0.8, 0.8], DType::I16).unwrap(),
    )
}

#[test]
fn imaging_and_labels_of_different_shape() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case_00001");
    std::fs::create_dir(&case).unwrap();
    let (img, h) = synth_like([4, 8, 8]);
    write_volume(case.join("imaging.nii.gz"), img.view(), &h).unwrap();
    let (_, h2) = synth_like([5, 8, 8]);
    write_volume(
        case.join("segmentation.nii.gz"),
        Array3::<u8>::zeros((5, 8, 8)).view(),
        &h2,
    )
    .unwrap();
    let err = CaseDir::open(&case)
        .unwrap()
        .load(LabelSet::Kits19)
        .unwrap_err();
    assert!(matches!(err, VolumeError::ShapeMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("segmentation.nii.gz") && msg.contains("imaging.nii.gz"),
        "{msg}"
    );
    assert!(
        msg.contains("[5, 8, 8]") && msg.contains("[4, 8, 8]"),
        "{msg}"
    );
    cli_fails(&[], &case, "does not match");
}

#[test]
fn label_values_outside_the_classes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, h) = synth_like([2, 3, 4]);
    let mut labels = Array3::<u8>::zeros((2, 3, 4));
    labels[[1, 2, 3]] = 3;
    labels[[0, 1, 1]] = 7;
    let p = dir.path().join("segmentation.nii.gz");
    write_volume(&p, labels.view(), &h).unwrap();
    let err = read_labels(&p, LabelSet::Kits19).unwrap_err();
    match &err {
        VolumeError::BadLabel {
            value,
            voxel,
            count,
            ..
        } => {
            // First bad voxel in file (Fortran) order is [0,1,1] (value 7).
            assert_eq!((*value, *voxel, *count), (7.0, [0, 1, 1], 2));
        }
        e => panic!("{e:?}"),
    }
    lib_fails(err, &p, "label value 7");
    // A uint16 label file with 300 (real KiTS19 files are uint16 in places).
    let f = dir.path().join("u16.nii");
    let src = testdata("nifti/nifti-rs/27/uint16.nii");
    std::fs::copy(&src, &f).unwrap();
    // Fortran order: the first voxel past 2 is [1, 0, 0] = 9.
    lib_fails(
        read_labels(&f, LabelSet::Kits19).unwrap_err(),
        &f,
        "label value 9 at voxel [1, 0, 0]",
    );
    // A float label file with a fractional value.
    let f = testdata("nifti/nifti-rs/zstat1.nii.gz");
    lib_fails(
        read_labels(&f, LabelSet::Kits19).unwrap_err(),
        &f,
        "is not a class",
    );
}

#[test]
fn missing_files_and_cases() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.nii.gz");
    lib_fails(read_image(&p).unwrap_err(), &p, "no such file");
    cli_fails(&[], &p, "no such file");
    let hdr = dir.path().join("lonely.hdr");
    std::fs::copy(testdata("nifti/nifti-rs/minimal.hdr"), &hdr).unwrap();
    lib_fails(
        read_image(&hdr).unwrap_err(),
        &hdr,
        "other half of the pair",
    );
    let case = dir.path().join("case_00009");
    lib_fails(CaseDir::open(&case).unwrap_err(), &case, "does not exist");
    std::fs::create_dir(&case).unwrap();
    lib_fails(CaseDir::open(&case).unwrap_err(), &case, "imaging.nii.gz");
    cli_fails(&[], &case, "imaging.nii.gz");
    let err = volume::list_cases(dir.path().join("empty_data")).unwrap_err();
    assert!(err.to_string().contains("empty_data"), "{err}");
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (_, h) = synth_like([2, 3, 4]);
    let p = dir.path().join("pred.nii.gz");
    std::fs::write(&p, b"previous content").unwrap();
    let err = write_volume(&p, Array3::<u8>::zeros((2, 3, 5)).view(), &h).unwrap_err();
    assert!(matches!(err, VolumeError::ShapeMismatch { .. }), "{err:?}");
    // The old file is untouched and no temporary file is left.
    assert_eq!(std::fs::read(&p).unwrap(), b"previous content");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let err = write_volume(
        dir.path().join("no/such/dir/x.nii"),
        Array3::<u8>::zeros((2, 3, 4)).view(),
        &h,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");
    // The user's folder, not the temporary file's name.
    assert!(!err.to_string().contains("x.nii"), "{err}");
    // `kseg synth` with a bad size refuses before creating anything.
    let out = dir.path().join("synth_out");
    let o = kseg()
        .args(["synth", "--out"])
        .arg(&out)
        .args(["--size", "8", "8"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("16..=4096"));
    assert!(!out.exists());
}

/// Files in `dir`, hidden ones included, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `kseg predict` that must fail with exit 1 and a one-line error holding
/// every one of `want`.
pub(crate) fn predict_fails(ckpt: &Path, input: &Path, output: &Path, want: &[&str]) {
    let out = kseg()
        .arg("predict")
        .arg("--checkpoint")
        .arg(ckpt)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for w in want {
        assert!(err.contains(w), "want {w:?} in: {err}");
    }
}

/// A tiny model file (depth 2, base 4) whose kseg metadata `edit` changes;
/// the weights stay the untouched ones.
pub(crate) fn model_with_meta(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut kseg::infer::ModelMeta),
) -> PathBuf {
    model_of_base(dir, name, 4, edit)
}

/// [`model_with_meta`] with `base` channels.
fn model_of_base(
    dir: &Path,
    name: &str,
    base: usize,
    edit: impl FnOnce(&mut kseg::infer::ModelMeta),
) -> PathBuf {
    let mut cfg = kseg::preset("synthetic-cpu").unwrap();
    cfg.model.base_channels = base;
    cfg.model.depth = 2;
    let (_, varmap) = kseg::model::ResUNet::init(
        &cfg.model,
        0,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut meta = cfg.model_meta(0);
    meta.in_plane = None;
    edit(&mut meta);
    let path = dir.join(name);
    kseg::infer::save_model(&varmap, &meta, &path).unwrap();
    path
}

/// One synthetic 32×32×4 case under `dir/data`.
fn one_case(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let o = kseg()
        .args([
            "synth", "--cases", "1", "--size", "32", "32", "--slices", "4", "4", "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    data.join("case_00000")
}

#[test]
fn model_metadata_is_checked_before_anything_is_built() {
    let tmp = tempfile::tempdir().unwrap();
    let case = one_case(tmp.path());
    let input = case.join("imaging.nii.gz");
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let pred = out.join("pred.nii.gz");
    // The fault found: base_channels 1048576 in the metadata, weights
    // unchanged. The old load built and randomly initialised a 79 TB model
    // before it compared shapes.
    let huge = model_with_meta(tmp.path(), "huge.safetensors", |m| {
        m.model.base_channels = 1 << 20
    });
    predict_fails(
        &huge,
        &input,
        &pred,
        &["huge.safetensors", "base_channels = 1048576"],
    );
    // Within the limits but not what the file holds: the first tensor's
    // shape is compared before anything of that size exists.
    let wide = model_with_meta(tmp.path(), "wide.safetensors", |m| {
        m.model.base_channels = 256
    });
    predict_fails(
        &wide,
        &input,
        &pred,
        &[
            "wide.safetensors",
            "conv0.conv.weight has shape [4, 3, 3, 3], the model expects [256, 3, 3, 3]",
        ],
    );
    // An intensity std of 0 gave all-background predictions.
    let flat = model_with_meta(tmp.path(), "flat.safetensors", |m| m.intensity.std = 0.0);
    predict_fails(&flat, &input, &pred, &["flat.safetensors", "std > 0"]);
    // A stack that the first convolution cannot take.
    let ctx = model_with_meta(tmp.path(), "ctx.safetensors", |m| m.context = 2);
    predict_fails(&ctx, &input, &pred, &["ctx.safetensors", "context = 2"]);
    // Found by random_model_metadata_never_panics: 2·context + 1
    // overflowed (a panic) for a context near usize::MAX.
    let ctx = model_with_meta(tmp.path(), "ctxmax.safetensors", |m| m.context = usize::MAX);
    predict_fails(
        &ctx,
        &input,
        &pred,
        &[
            "ctxmax.safetensors",
            "context = 18446744073709551615",
            "more than usize::MAX",
        ],
    );
    let plane = model_with_meta(tmp.path(), "plane.safetensors", |m| {
        m.in_plane = Some((1 << 20, 32))
    });
    predict_fails(&plane, &input, &pred, &["plane.safetensors", "in_plane"]);
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
}

#[test]
fn predict_output_paths_follow_one_rule_and_leave_nothing_stray() {
    let tmp = tempfile::tempdir().unwrap();
    let case = one_case(tmp.path());
    let input = case.join("imaging.nii.gz");
    let model = model_with_meta(tmp.path(), "model.safetensors", |_| {});
    let pout = tmp.path().join("pout");
    std::fs::create_dir(&pout).unwrap();
    // A name without .nii/.nii.gz: refused (it used to write an empty file
    // and a hidden `.noext.nii` beside it).
    predict_fails(
        &model,
        &input,
        &pout.join("noext"),
        &["pout/noext", ".nii or .nii.gz"],
    );
    // An existing folder as the output file (it used to leave `.NAME.nii`).
    let existing = pout.join("existing.nii.gz");
    std::fs::create_dir(&existing).unwrap();
    predict_fails(
        &model,
        &input,
        &existing,
        &["existing.nii.gz", "is a folder"],
    );
    assert_eq!(listing(&pout), ["existing.nii.gz"]);
    assert!(listing(&existing).is_empty());
    // The input as the output: refused, the image untouched.
    let before = std::fs::read(&input).unwrap();
    predict_fails(&model, &input, &input, &["the output is the input image"]);
    assert_eq!(std::fs::read(&input).unwrap(), before);
    // A folder that does not exist.
    predict_fails(
        &model,
        &input,
        &tmp.path().join("nowhere/p.nii.gz"),
        &["nowhere", "no such folder"],
    );
    assert_eq!(listing(&case), ["imaging.nii.gz", "segmentation.nii.gz"]);
    // The rule holds in the library too.
    let vol = volume::read_volume(&input).unwrap();
    let err = write_volume(pout.join("noext"), vol.data.view(), &vol.header).unwrap_err();
    assert!(err.to_string().contains(".nii or .nii.gz"), "{err}");
    assert_eq!(listing(&pout), ["existing.nii.gz"]);
}

#[test]
fn a_2d_image_is_refused_not_read_as_slices_of_one_row() {
    let tmp = tempfile::tempdir().unwrap();
    // A 64×64 2D image: the 3×3×3 test file's header with dim = [2, 64, 64]
    // and 64·64 uint8 values.
    let mut bytes = std::fs::read(testdata(U8_3X3X3)).unwrap();
    let vox_offset = f32::from_le_bytes(bytes[108..112].try_into().unwrap()) as usize;
    bytes.truncate(vox_offset);
    for (i, d) in [2i16, 64, 64, 1, 1, 1, 1, 1].iter().enumerate() {
        bytes[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    bytes.extend((0..64 * 64).map(|i| (i % 251) as u8));
    let flat = tmp.path().join("flat.nii");
    std::fs::write(&flat, &bytes).unwrap();
    // The N-D reader takes it as it is (`kseg info` shows it)...
    assert_eq!(read_image(&flat).unwrap().data.shape(), [64, 64]);
    // ...the 3D readers refuse it, and so does predict.
    lib_fails(
        read_volume(&flat).unwrap_err(),
        &flat,
        "2D image of shape [64, 64]",
    );
    let model = model_with_meta(tmp.path(), "model.safetensors", |_| {});
    let pred = tmp.path().join("pred.nii.gz");
    predict_fails(&model, &flat, &pred, &["flat.nii", "2D image"]);
    assert!(!pred.exists());
}

#[test]
fn io_errors_are_one_line_naming_the_users_path_once() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |args: &[&str], want: &[&str]| {
        let out = kseg().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        for w in want {
            assert!(err.contains(w), "want {w:?} in: {err}");
        }
        // The OS's words once (they used to come twice: the error and
        // its source).
        for os in ["No such file or directory", "(os error"] {
            assert!(err.matches(os).count() <= 1, "{os} twice: {err}");
        }
        let own = err.replace(tmp.path().to_str().unwrap(), "TMP");
        assert!(!own.contains(".tmp"), "names a temporary file: {err}");
    };
    let missing = tmp.path().join("missing.toml");
    let out = tmp.path().join("run");
    check(
        &[
            "train",
            "--config",
            missing.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["missing.toml", "No such file or directory"],
    );
    // An empty checkpoint folder.
    let empty = tmp.path().join("empty_ckpt");
    std::fs::create_dir(&empty).unwrap();
    let case = one_case(tmp.path());
    let input = case.join("imaging.nii.gz");
    check(
        &[
            "predict",
            "--checkpoint",
            empty.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            tmp.path().join("p.nii.gz").to_str().unwrap(),
        ],
        &["empty_ckpt/model.safetensors", "no such file"],
    );
    // A report into a folder that does not exist.
    let pred = tmp.path().join("pred");
    std::fs::create_dir(&pred).unwrap();
    std::fs::copy(
        case.join("segmentation.nii.gz"),
        pred.join("case_00000.nii.gz"),
    )
    .unwrap();
    check(
        &[
            "evaluate",
            "--pred",
            pred.to_str().unwrap(),
            "--truth",
            case.parent().unwrap().to_str().unwrap(),
            "--out",
            tmp.path().join("nodir/report.json").to_str().unwrap(),
        ],
        &["nodir", "no such folder"],
    );
    assert!(!out.exists());
}

/// DICOM input that cannot be segmented: one line naming the file or the
/// folder and the problem, exit status 1, nothing written.
#[test]
fn bad_dicom_series_are_refused_by_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_meta(tmp.path(), "model.safetensors", |_| {});
    let pred = tmp.path().join("pred.nii.gz");
    // A CT series with a 202.5 mm gap (pydicom's mixed study).
    predict_fails(
        &model,
        &testdata("dicom/series/mixed_study"),
        &pred,
        &["mixed_study/CT2", "not evenly spaced", "-99.480", "103.020"],
    );
    // A folder with no DICOM file at all.
    let empty = tmp.path().join("nothing");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not an image").unwrap();
    predict_fails(
        &model,
        &empty,
        &pred,
        &["nothing", "a folder of DICOM files"],
    );
    // A syntax this build cannot decode, named.
    let jls = tmp.path().join("jls");
    std::fs::create_dir(&jls).unwrap();
    std::fs::copy(
        testdata("dicom/single/MR_small_jpeg_ls_lossless.dcm"),
        jls.join("a.dcm"),
    )
    .unwrap();
    let out = kseg()
        .args(["info", "--series"])
        .arg(volume::dicom::list_series(&jls).unwrap()[0].uid.clone())
        .arg(&jls)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a.dcm") && err.contains("JPEG-LS"), "{err}");
    assert!(!pred.exists());
}

/// `kseg predict` with `--output` of every NIfTI spelling. `X.nii` used to
/// be left empty (0 bytes) and the labels hidden in `.X.nii.XXXXXX.nii`.
#[test]
fn predict_writes_plain_nii_outputs_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let case = one_case(tmp.path());
    let model = model_with_meta(tmp.path(), "model.safetensors", |_| {});
    let o = tmp.path().join("o");
    std::fs::create_dir(&o).unwrap();
    let long = format!("{}.nii", "p".repeat(251));
    for name in ["out.nii", "OUT.NII", "a.b.nii", "c.nii.gz", long.as_str()] {
        let out = kseg()
            .arg("predict")
            .arg("--checkpoint")
            .arg(&model)
            .arg("--input")
            .arg(&case)
            .arg("--output")
            .arg(o.join(name))
            .args(["--device", "cpu"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The case is 4 slices of 32×32: labels of that shape, each 0..=2.
        let labels = read_image(o.join(name)).unwrap();
        assert_eq!(labels.data.len(), 32 * 32 * 4, "{name}");
        assert!(labels.data.iter().all(|&v| (0.0..=2.0).contains(&v)));
    }
    let mut want = vec!["OUT.NII", "a.b.nii", "c.nii.gz", "out.nii", long.as_str()];
    want.sort();
    assert_eq!(listing(&o), want, "nothing stray");
}

/// The case's ground truth as the output (`--output CASE/segmentation.nii.gz`)
/// used to be replaced silently; only the imaging file was guarded.
#[cfg(unix)]
#[test]
fn predict_never_overwrites_a_ground_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let case = one_case(tmp.path());
    let model = model_with_meta(tmp.path(), "model.safetensors", |_| {});
    let truth = case.join("segmentation.nii.gz");
    let before = std::fs::read(&truth).unwrap();
    let link = tmp.path().join("link.nii.gz");
    std::os::unix::fs::symlink(&truth, &link).unwrap();
    let imaging = case.join("imaging.nii.gz");
    for (input, output) in [(&case, &truth), (&imaging, &truth), (&case, &link)] {
        predict_fails(
            &model,
            input,
            output,
            &["the output is the ground truth", "segmentation.nii.gz"],
        );
    }
    // A folder of cases predicted into itself: the outputs are beside the
    // cases, the cases untouched.
    let data = case.parent().unwrap();
    let out = kseg()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&model)
        .arg("--input")
        .arg(data)
        .arg("--output")
        .arg(data)
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&truth).unwrap(), before);
    assert_eq!(listing(&case), ["imaging.nii.gz", "segmentation.nii.gz"]);
    assert!(data.join("case_00000.nii.gz").is_file());
}

/// Case folders whose names are not UTF-8 (`case_\xff`, `case_\xfe`) were
/// both predicted to `case_\u{fffd}.nii.gz`, the second over the first.
#[cfg(target_os = "linux")]
#[test]
fn cases_with_non_utf8_names_get_their_own_outputs() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let case = one_case(tmp.path());
    let model = model_with_meta(tmp.path(), "model.safetensors", |_| {});
    let data = tmp.path().join("odd");
    for byte in [0xff, 0xfe] {
        let name = [b"case_".as_slice(), &[byte]].concat();
        let dir = data.join(OsStr::from_bytes(&name));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(case.join("imaging.nii.gz"), dir.join("imaging.nii.gz")).unwrap();
    }
    let preds = tmp.path().join("preds");
    let out = kseg()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&model)
        .arg("--input")
        .arg(&data)
        .arg("--output")
        .arg(&preds)
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The predictions (beside the batch's summary.json and summary.csv).
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(&preds)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .filter(|n| !n.starts_with(b"summary."))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [b"case_\xfe.nii.gz".to_vec(), b"case_\xff.nii.gz".to_vec()]
    );
}

/// Runs `kseg ARGS` under an address-space cap of `mib` MiB (`ulimit -v`,
/// as batch schedulers set), with `env` set.
fn kseg_capped(mib: u64, env: &[(&str, &str)], args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"ulimit -v "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg((mib * 1024).to_string())
        .arg(env!("CARGO_BIN_EXE_kseg"))
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env_remove("RUST_BACKTRACE");
    c.output().unwrap()
}

/// Exit status 1 with one line naming each of `want` (no abort, no panic).
fn fails_with(out: &std::process::Output, want: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "status {:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for w in want {
        assert!(err.contains(w), "want {w:?} in: {err}");
    }
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

/// A NIfTI-1 header of `dims` int16 voxels (the uint8 fixture's identity
/// sform), vox_offset `vox_offset`, followed by `tail` zero bytes.
fn int16_header(dims: [i16; 3], vox_offset: f32, tail: usize) -> Vec<u8> {
    let mut b = std::fs::read(testdata(U8_3X3X3)).unwrap();
    b.truncate(348);
    for (i, d) in dims.iter().enumerate() {
        b[42 + 2 * i..44 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    b[70..72].copy_from_slice(&4i16.to_le_bytes());
    b[72..74].copy_from_slice(&16i16.to_le_bytes());
    b[108..112].copy_from_slice(&vox_offset.to_le_bytes());
    b.resize(348 + tail, 0);
    b
}

/// F8a, F8b, F8d: sizes read from a header are checked against the
/// memory limit (KSEG_MAX_BYTES, default 4 GiB) before anything of that
/// size exists, so under an address-space cap the command exits 1 with
/// the file named instead of aborting ("memory allocation of N bytes
/// failed", SIGABRT). Before the fix each of these aborted under its cap.
#[test]
fn header_sizes_exit_1_under_a_memory_cap_not_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A valid file reads under the smallest cap used here.
    let ok = kseg_capped(768, &[], &[os("info"), testdata(U8_3X3X3).as_os_str()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // F8a: a 1.3 KB .nii whose vox_offset is 1e9 (the extension block was
    // allocated whole before the file length was looked at).
    let p = d.join("voxoffset.nii");
    std::fs::write(&p, int16_header([3, 3, 3], 1e9, 1000)).unwrap();
    fails_with(
        &kseg_capped(768, &[], &[os("info"), p.as_os_str()]),
        &["voxoffset.nii", "before vox_offset 1000000000"],
    );
    // F8d: an honest 1024³ int16 header (6 GiB once decoded to float32),
    // for predict, under a 3 GiB cap; refused before inflating.
    let model = model_with_meta(d, "model.safetensors", |_| {});
    let p = d.join("bomb.nii.gz");
    std::fs::write(&p, gzip(&int16_header([1024, 1024, 1024], 352.0, 68))).unwrap();
    let out = kseg_capped(
        3072,
        &[],
        &[
            os("predict"),
            os("--checkpoint"),
            model.as_os_str(),
            os("--input"),
            p.as_os_str(),
            os("--output"),
            d.join("pred.nii.gz").as_os_str(),
            os("--device"),
            os("cpu"),
        ],
    );
    fails_with(
        &out,
        &[
            "bomb.nii.gz",
            "6442450948 bytes",
            "memory limit",
            "KSEG_MAX_BYTES",
        ],
    );
    // F8b: 65 DICOM headers claiming 4096×4096 pixels, no real pixels
    // (4.4 GB as float32), under a 3 GiB cap.
    let hu = Array3::<f32>::zeros((65, 2, 2));
    let series = d.join("huge_dicom");
    let spec = crate::support_dicom::SeriesSpec {
        hu: &hu,
        origin: [0.0, 0.0, 0.0],
        row_dir: [1.0, 0.0, 0.0],
        col_dir: [0.0, 1.0, 0.0],
        pixel_spacing: [0.8, 0.8],
        step: 2.0,
        storage: crate::support_dicom::Storage::I16,
        uid: "1.2.826.0.1.3680043.2.1125.902",
    };
    let names: Vec<String> = (0..65).map(|k| format!("IM{k:03}")).collect();
    let numbers: Vec<u32> = (1..=65).collect();
    crate::support_dicom::write_series_with(&series, &spec, &names, &numbers, |_, o| {
        use dicom_core::{DataElement, VR, dicom_value};
        use dicom_dictionary_std::tags;
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            dicom_value!(U16, [4096]),
        ));
        o.put(DataElement::new(
            tags::COLUMNS,
            VR::US,
            dicom_value!(U16, [4096]),
        ));
    });
    fails_with(
        &kseg_capped(3072, &[], &[os("info"), series.as_os_str()]),
        &["IM000", "4362076160 bytes", "memory limit"],
    );
    // The limit is the user's: a lower one refuses a real KiTS19 label
    // file, naming it; a setting that is no size is an error, not ignored.
    let seg = testdata("kits19/case_00004/segmentation.nii.gz");
    fails_with(
        &kseg_capped(
            3072,
            &[("KSEG_MAX_BYTES", "1M")],
            &[os("info"), seg.as_os_str()],
        ),
        &["segmentation.nii.gz", "memory limit of 1048576 bytes"],
    );
    fails_with(
        &kseg_capped(
            3072,
            &[("KSEG_MAX_BYTES", "lots")],
            &[os("info"), seg.as_os_str()],
        ),
        &["KSEG_MAX_BYTES=\"lots\" is not a number of bytes"],
    );
}

/// F8c: model metadata that passes its field checks but implies a forward
/// pass beyond the memory limit (in_plane 4096×4096, or spacing_mm 0.05
/// on 32 pixels of about 10 mm: 6000-odd pixels a side) exits 1 under a
/// 3 GiB cap; before the fix predict aborted.
#[test]
fn model_metadata_sizes_exit_1_under_a_memory_cap_not_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let case = one_case(tmp.path());
    let input = case.join("imaging.nii.gz");
    let pred = tmp.path().join("pred.nii.gz");
    let run = |model: &Path| {
        kseg_capped(
            3072,
            &[],
            &[
                os("predict"),
                os("--checkpoint"),
                model.as_os_str(),
                os("--input"),
                input.as_os_str(),
                os("--output"),
                pred.as_os_str(),
                os("--device"),
                os("cpu"),
            ],
        )
    };
    // A forward pass at 4096×4096 with base 32: 4096² · 128 floats.
    let plane = model_of_base(tmp.path(), "plane.safetensors", 32, |m| {
        m.in_plane = Some((4096, 4096))
    });
    fails_with(
        &run(&plane),
        &[
            "plane.safetensors",
            "4096x4096",
            "8589934592 bytes",
            "memory limit",
        ],
    );
    let fine = model_of_base(tmp.path(), "fine.safetensors", 32, |m| {
        m.spacing_mm = Some(0.05)
    });
    fails_with(
        &run(&fine),
        &["slices of", "memory limit", "KSEG_MAX_BYTES"],
    );
    assert!(!pred.exists());
}

/// F9: absurd sizes on the command line or in a configuration exit 1
/// naming the setting, checked against the memory limit before anything
/// of that size exists (a 112 GB channel, 4096² training crops, a
/// billion synthetic cases, 50000² or ten million augmentation tiles all
/// aborted before the fix).
#[test]
fn cli_and_config_sizes_exit_1_under_a_memory_cap_not_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = d.join("run");
    let train = |set: &str| {
        kseg_capped(
            3072,
            &[],
            &[
                os("train"),
                os("--out"),
                run.as_os_str(),
                os("--steps"),
                os("2"),
                os("--set"),
                os(set),
            ],
        )
    };
    fails_with(
        &train("train.prefetch=1000000000"),
        &["train.prefetch = 1000000000", "memory limit"],
    );
    fails_with(
        &train("augment.out_size=[4096,4096]"),
        &["4096x4096", "memory limit"],
    );
    let synth = d.join("synth");
    fails_with(
        &kseg_capped(
            3072,
            &[],
            &[
                os("synth"),
                os("--cases"),
                os("1000000000"),
                os("--out"),
                synth.as_os_str(),
            ],
        ),
        &["1000000000 synthetic cases", "memory limit"],
    );
    assert!(!synth.exists());
    let case = one_case(d);
    let png = d.join("grid.png");
    let augment = |extra: &[&str]| {
        let mut args = vec![
            os("augment"),
            os("--case"),
            case.as_os_str(),
            os("--slice"),
            os("1"),
            os("--out"),
            png.as_os_str(),
        ];
        args.extend(extra.iter().map(os));
        kseg_capped(3072, &[], &args)
    };
    fails_with(
        &augment(&["--size", "50000", "50000"]),
        &["9 tiles of 50000x50000", "memory limit"],
    );
    fails_with(
        &augment(&["--n", "10000000"]),
        &["10000001 tiles of 32x32", "memory limit"],
    );
    assert!(!png.exists());
}

/// Every leaf of a JSON value, as a mutable reference, in document order.
fn json_leaves(v: &mut serde_json::Value) -> Vec<&mut serde_json::Value> {
    use serde_json::Value;
    let nested = match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    };
    if !nested {
        return vec![v];
    }
    match v {
        Value::Object(m) => m.values_mut().flat_map(json_leaves).collect(),
        Value::Array(a) => a.iter_mut().flat_map(json_leaves).collect(),
        _ => unreachable!("nested"),
    }
}

/// Seeded fuzzing of a model file's kseg metadata: random values (zero,
/// huge, negative, fractional, other types, null) in random fields, or a
/// damaged byte of the JSON, must give an error or a working segmenter,
/// never a panic or an allocation beyond the memory limit (a segmenter
/// that loads segments a 3×16×16 volume). `KSEG_FUZZ_CASES` (here divided
/// by 10) and `KSEG_FUZZ_SEED` as for the NIfTI headers.
#[test]
fn random_model_metadata_never_panics() {
    use rand::{Rng, SeedableRng};
    use serde_json::{Value, json};
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let cases = env("KSEG_FUZZ_CASES", 1500) / 10;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(env("KSEG_FUZZ_SEED", 2024));
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_meta(tmp.path(), "base.safetensors", |m| {
        m.spacing_mm = Some(1.0);
        m.keep_largest = Some(2);
    });
    let bytes = std::fs::read(&model).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta: Value =
        serde_json::from_str(header["__metadata__"]["kseg"].as_str().unwrap()).unwrap();
    let data = &bytes[8 + n..];
    let hu = Array3::from_shape_fn((3, 16, 16), |(k, r, c)| ((k * 7 + r * 5 + c) % 300) as f32);
    let p = tmp.path().join("fuzz.safetensors");
    let values = [
        json!(0),
        json!(1),
        json!(-1),
        json!(3),
        json!(0.05),
        json!(1e308),
        json!(-1e308),
        json!(4096),
        json!(1u64 << 20),
        json!(1u64 << 40),
        json!(u64::MAX),
        json!([64, 64]),
        json!([3, 5]),
        json!([1048576, 8]),
        json!(null),
        json!("x"),
        json!(true),
        json!("kits23"),
    ];
    for case in 0..cases {
        let mut m = meta.clone();
        for _ in 0..rng.random_range(1..4) {
            let mut leaves = json_leaves(&mut m);
            let i = rng.random_range(0..leaves.len());
            let v = if rng.random_bool(0.3) {
                json!(rng.random_range(-1e4..1e4))
            } else {
                values[rng.random_range(0..values.len())].clone()
            };
            *leaves[i] = v;
        }
        let mut text = serde_json::to_string(&m).unwrap();
        if rng.random_bool(0.2) {
            let mut b = text.into_bytes();
            let at = rng.random_range(0..b.len());
            b[at] = rng.random_range(b' '..=b'~');
            text = String::from_utf8(b).unwrap();
        }
        let mut h = header.clone();
        h["__metadata__"]["kseg"] = Value::String(text.clone());
        let mut hb = serde_json::to_vec(&h).unwrap();
        while !hb.len().is_multiple_of(8) {
            hb.push(b' ');
        }
        let mut file = (hb.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&hb);
        file.extend_from_slice(data);
        std::fs::write(&p, &file).unwrap();
        let got = std::panic::catch_unwind(|| {
            let Ok(seg) = kseg::infer::Segmenter::load(&p, &candle_core::Device::Cpu, 2) else {
                return;
            };
            if let Ok(labels) = seg.segment_volume_at(hu.view(), Some((1.0, 1.0))) {
                assert_eq!(labels.dim(), (3, 16, 16), "{text}");
            }
        });
        assert!(got.is_ok(), "case {case} panicked: {text}");
    }
}

/// A copy of the model file `src` as `dst` with `f(name, values)`
/// changing the float32 values of the tensors it picks.
fn edit_weights(src: &Path, dst: &Path, f: impl Fn(&str, &mut [f32])) {
    let mut bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(t["dtype"], "F32");
        let (a, b) = (
            8 + n + t["data_offsets"][0].as_u64().unwrap() as usize,
            8 + n + t["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let mut v: Vec<f32> = bytes[a..b]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        f(name, &mut v);
        for (i, x) in v.iter().enumerate() {
            bytes[a + 4 * i..a + 4 * i + 4].copy_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(dst, bytes).unwrap();
}

/// F11, F12, F29: model files that would predict nonsense or cannot be a
/// model are refused naming the file and the reason: one NaN weight, a
/// negative BatchNorm running variance or 1e38 weights (all-background
/// predictions before, exit 0), `keep_largest = 0` (every prediction
/// erased) in a model file or a configuration, and a folder named
/// `model.safetensors` ("No such device" before).
#[test]
fn model_files_that_would_predict_nonsense_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let case = one_case(tmp.path());
    let input = case.join("imaging.nii.gz");
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let pred = out.join("pred.nii.gz");
    let good = model_with_meta(tmp.path(), "good.safetensors", |_| {});
    let nan = tmp.path().join("nan.safetensors");
    edit_weights(&good, &nan, |name, v| {
        if name == "conv0.conv.weight" {
            v[5] = f32::NAN;
        }
    });
    predict_fails(
        &nan,
        &input,
        &pred,
        &[
            "nan.safetensors",
            "tensor conv0.conv.weight holds NaN at index 5 (1 such values)",
        ],
    );
    let var = tmp.path().join("var.safetensors");
    edit_weights(&good, &var, |name, v| {
        if name.ends_with("running_var") {
            v[0] = -1.0;
        }
    });
    predict_fails(
        &var,
        &input,
        &pred,
        &["var.safetensors", "running_var holds -1", "not negative"],
    );
    let huge = tmp.path().join("huge.safetensors");
    edit_weights(&good, &huge, |name, v| {
        if name.ends_with(".weight") {
            v.fill(1e38);
        }
    });
    // The first batch: `kseg predict`'s CPU default, 2 slices.
    predict_fails(
        &huge,
        &input,
        &pred,
        &[
            "huge.safetensors",
            "outputs for slices 0..=1 are not finite numbers",
            "weights are unusable",
        ],
    );
    let zero = model_with_meta(tmp.path(), "zero.safetensors", |m| m.keep_largest = Some(0));
    predict_fails(
        &zero,
        &input,
        &pred,
        &[
            "zero.safetensors",
            "keep_largest = 0",
            "erase every prediction",
        ],
    );
    // The untouched file predicts (and --lcc 0 still means "off").
    let ok = kseg()
        .arg("predict")
        .arg("--checkpoint")
        .arg(&good)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&pred)
        .args(["--device", "cpu", "--lcc", "0"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::remove_file(&pred).unwrap();
    let folder = tmp.path().join("ckpt");
    std::fs::create_dir_all(folder.join("model.safetensors")).unwrap();
    predict_fails(
        &folder,
        &input,
        &pred,
        &["ckpt/model.safetensors", "not a file (a folder?)"],
    );
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
    // The configuration's keep_largest = 0.
    let run = tmp.path().join("run");
    let o = kseg()
        .arg("train")
        .arg("--out")
        .arg(&run)
        .args(["--steps", "2", "--set", "postprocess.keep_largest=0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("postprocess.keep_largest = 0 would keep no component"),
        "{err}"
    );
}

/// F13 through the binary: a folder whose slices are all symbolic links,
/// given through a symbolic link to it, is a DICOM series of all its
/// slices ("missing imaging.nii.gz: not a case folder" before).
#[cfg(unix)]
#[test]
fn a_linked_folder_of_linked_dicom_slices_is_a_series() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let hu = Array3::from_shape_fn((5, 4, 3), |(k, r, c)| (k * 10 + r * 3 + c) as f32);
    let store = tmp.path().join("store");
    let names: Vec<String> = (0..5).map(|k| format!("IM{k}")).collect();
    let spec = crate::support_dicom::SeriesSpec {
        hu: &hu,
        origin: [0.0, 0.0, 0.0],
        row_dir: [1.0, 0.0, 0.0],
        col_dir: [0.0, 1.0, 0.0],
        pixel_spacing: [0.8, 0.8],
        step: 2.0,
        storage: crate::support_dicom::Storage::I16,
        uid: "1.2.826.0.1.3680043.2.1125.903",
    };
    crate::support_dicom::write_series(&store, &spec, &names, &[1, 2, 3, 4, 5]);
    let links = tmp.path().join("links");
    std::fs::create_dir(&links).unwrap();
    for n in &names {
        symlink(store.join(n), links.join(n)).unwrap();
    }
    let via = tmp.path().join("via");
    symlink(&links, &via).unwrap();
    let out = kseg().arg("info").arg(&via).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["series"][0]["files"], 5, "{text}");
    assert_eq!(v["volume"]["shape"], serde_json::json!([5, 4, 3]), "{text}");
}

/// `kseg predict --checkpoint model --input input --output pred --device
/// cpu` with `extra`, run to completion.
fn predict_on_cpu(model: &Path, input: &Path, pred: &Path, extra: &[&str]) -> std::process::Output {
    kseg()
        .arg("predict")
        .arg("--checkpoint")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(pred)
        .args(["--device", "cpu"])
        .args(extra)
        .output()
        .unwrap()
}

/// A fast-mode margin that is not a finite number of mm, 0 or more, a
/// coarse stride of 0 or a shrink outside 1..=16 is refused with exit
/// status 1 and nothing written; `--fast-margin`, `--fast-stride` or
/// `--fast-shrink` without `--fast`, a negative stride
/// and `--fast` with a report are usage errors.
#[test]
fn bad_fast_mode_arguments_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let case = one_case(tmp.path());
    let input = case.join("imaging.nii.gz");
    let model = model_with_meta(tmp.path(), "m.safetensors", |_| {});
    let pred = tmp.path().join("pred.nii.gz");
    let run = |extra: &[&str]| predict_on_cpu(&model, &input, &pred, extra);
    for bad in [
        "--fast-margin=-5",
        "--fast-margin=NaN",
        "--fast-margin=inf",
        "--fast-stride=0",
        "--fast-shrink=0",
        "--fast-shrink=17",
    ] {
        let out = run(&["--fast", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        let flag = bad.split('=').next().unwrap();
        assert!(err.contains(flag) && !err.contains("panicked"), "{err}");
        assert!(!pred.exists(), "{bad}: an output was written");
    }
    for usage in [
        &["--fast-margin", "40"][..],
        &["--fast-stride", "8"][..],
        &["--fast-shrink", "2"][..],
        &["--fast", "--fast-stride", "-1"][..],
        &["--fast", "--report", "r.json"][..],
    ] {
        let out = run(usage);
        assert_ne!(out.status.code(), Some(0), "{usage:?}");
        assert!(!pred.exists(), "{usage:?}: an output was written");
    }
    let out = run(&[
        "--fast",
        "--fast-margin",
        "40",
        "--fast-stride",
        "8",
        "--fast-shrink",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pred.exists());
}

/// `--precision int8` and `bf16` write labels of the volume's shape
/// (mostly the f32 run's on this untrained model); an unknown precision
/// is a usage error with nothing written.
#[test]
fn predict_lower_precisions_run_and_unknown_precisions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let case = one_case(tmp.path());
    let input = case.join("imaging.nii.gz");
    let model = model_with_meta(tmp.path(), "m.safetensors", |_| {});
    let run = |pred: &Path, extra: &[&str]| predict_on_cpu(&model, &input, pred, extra);
    let bad = tmp.path().join("bad.nii.gz");
    let out = run(&bad, &["--precision", "int4"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!bad.exists());
    let pred = |prec: &str| tmp.path().join(format!("{prec}.nii.gz"));
    for prec in ["f32", "int8", "bf16"] {
        let out = run(&pred(prec), &["--precision", prec]);
        assert!(
            out.status.success(),
            "{prec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a = read_labels(pred("f32"), LabelSet::Kits19).unwrap();
    for prec in ["int8", "bf16"] {
        let b = read_labels(pred(prec), LabelSet::Kits19).unwrap();
        assert_eq!(a.data.shape(), b.data.shape());
        let same = a
            .data
            .iter()
            .zip(b.data.iter())
            .filter(|(x, y)| x == y)
            .count();
        assert!(
            same as f64 >= 0.9 * a.data.len() as f64,
            "{prec}: {same} of {}",
            a.data.len()
        );
    }
}
