//! The trainer end to end on tiny synthetic cases: loss goes down, resume
//! equals an uninterrupted run, checkpoints reload, `kseg predict` writes
//! volumes with the input's geometry, `kseg evaluate` agrees with Dice
//! counted here, and bad input fails clearly without overwriting anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use kseg::infer::Segmenter;
use kseg::train::observe::{Observer, StepRecord};
use kseg::train::{TrainConfig, TrainError, Trainer};
use kseg::volume;
use kseg::volume::LabelSet;
use serde_json::Value;

/// A run small enough for CI: 6 cases of 32×32×(8..12), a depth-2 base-4
/// Res-U-Net, batch 4. `data` is shared by the runs of one test.
fn tiny_config(data: &Path, steps: usize) -> TrainConfig {
    let mut c = kseg::preset("synthetic-cpu").unwrap();
    let g = &mut c.data.synthetic;
    g.cases = 6;
    g.dir = Some(data.to_path_buf());
    g.generator.height = 32;
    g.generator.width = 32;
    g.generator.min_slices = 8;
    g.generator.max_slices = 12;
    c.data.n_val = 2;
    c.augment.out_size = Some((32, 32));
    c.model.base_channels = 4;
    c.model.depth = 2;
    c.train.steps = steps;
    c.train.batch_size = 4;
    c.train.log_every = 1;
    c.train.validate_every = 10;
    c.train.checkpoint_every = 5;
    c.train.val_batch_size = 4;
    c.train.prefetch = 2;
    c.schedule = kseg::train::Schedule::Cosine {
        warmup: 3,
        min_lr: 1e-4,
    };
    c.device = "cpu".into();
    c
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn step_losses(run: &Path) -> Vec<(u64, f64)> {
    metrics(run)
        .iter()
        .filter(|v| v["kind"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn kseg_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kseg"))
        .args(args)
        .output()
        .unwrap()
}

/// `kseg` with these arguments, which must succeed (its stderr otherwise).
fn kseg_ok(args: &[&str]) -> std::process::Output {
    let out = kseg_cli(args);
    assert!(
        out.status.success(),
        "kseg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `a` upsampled 2× in plane (nearest).
fn up2(a: &ndarray::Array3<f32>) -> ndarray::Array3<f32> {
    let (d, h, w) = a.dim();
    ndarray::Array3::from_shape_fn((d, 2 * h, 2 * w), |(z, y, x)| a[[z, y / 2, x / 2]])
}

/// Checks that `pred_big` (a prediction of the 2× upsampled volume) agrees
/// with `native` (of the native volume) upsampled the same way on nearly
/// every voxel: fewer differing voxels than a quarter of the foreground
/// (boundaries may move by a pixel).
fn assert_upsampled_agreement(native: &ndarray::Array3<u8>, pred_big: &ndarray::Array3<u8>) {
    let native_up = up2(&native.mapv(f32::from));
    assert_eq!(pred_big.dim(), native_up.dim());
    let fg = native_up.iter().filter(|&&v| v > 0.0).count();
    assert!(fg > 0, "the native prediction is empty");
    let differ = pred_big
        .iter()
        .zip(native_up.iter())
        .filter(|(a, b)| f32::from(**a) != **b)
        .count();
    assert!(
        differ * 4 < fg,
        "{differ} voxels differ, {fg} foreground voxels"
    );
}

/// Copies the case folders `ids` of `data` into `dst`.
fn copy_cases(ids: &[String], data: &Path, dst: &Path) {
    for id in ids {
        std::fs::create_dir_all(dst.join(id)).unwrap();
        for f in ["imaging.nii.gz", "segmentation.nii.gz"] {
            std::fs::copy(data.join(id).join(f), dst.join(id).join(f)).unwrap();
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Dice written out from its definition: 2|A∩B| / (|A| + |B|), 1 when both
/// are empty.
fn dice(pred: &[u8], truth: &[u8], f: impl Fn(u8) -> bool) -> f64 {
    let (mut a, mut b, mut both) = (0.0, 0.0, 0.0);
    for (&p, &t) in pred.iter().zip(truth) {
        a += f64::from(u8::from(f(p)));
        b += f64::from(u8::from(f(t)));
        both += f64::from(u8::from(f(p) && f(t)));
    }
    if a + b == 0.0 {
        1.0
    } else {
        2.0 * both / (a + b)
    }
}

#[test]
fn tiny_run_learns_and_its_checkpoint_predicts_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    let mut cfg = tiny_config(&data, 40);
    cfg.optim = kseg::train::OptimConfig::AdamW(kseg::train::AdamWConfig {
        lr: 1e-2,
        ..Default::default()
    });
    let mut t = Trainer::new(cfg.clone(), &run)
        .unwrap()
        .with_default_observers()
        .unwrap();
    let summary = t.run().unwrap();

    // The loss goes down: the last 8 steps average well below the first 8.
    let losses = step_losses(&run);
    assert_eq!(losses.len(), 40);
    let mean = |v: &[(u64, f64)]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..8]), mean(&losses[32..]));
    assert!(last < 0.8 * first, "loss {first} -> {last}");

    // The run folder holds what the issue lists.
    for f in [
        "config.json",
        "split.json",
        "metrics.jsonl",
        "summary.json",
        "plots/loss.png",
        "plots/dice.png",
        "plots/overlay.png",
        "checkpoints/latest.json",
        "checkpoints/best/model.safetensors",
        "checkpoints/step_000040/optimizer.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let sj: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    for k in [
        "kidney_dice",
        "tumour_dice",
        "composite",
        "best_checkpoint",
        "steps",
        "wall_seconds",
        "config",
    ] {
        assert!(!sj[k].is_null(), "summary.json lacks {k}");
    }
    assert_eq!(sj["steps"], 40);
    let saved: TrainConfig = serde_json::from_value(sj["config"].clone()).unwrap();
    assert_eq!(saved, cfg);
    // Only `keep_checkpoints` (2) step folders remain.
    let steps = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("step_")
        })
        .count();
    assert_eq!(steps, 2);

    // The last checkpoint reloads and segments a validation case as the
    // trainer did: its Dice equals the summary's.
    let last = run.join("checkpoints/step_000040");
    let seg = Segmenter::load(&last, &candle_core::Device::Cpu, 4).unwrap();
    let split: volume::Split = volume::Split::load(run.join("split.json")).unwrap();
    let mut kidney = Vec::new();
    let pred_dir = tmp.path().join("pred");
    std::fs::create_dir_all(&pred_dir).unwrap();
    for id in &split.val {
        let case = volume::CaseDir::open(data.join(id))
            .unwrap()
            .load(LabelSet::Kits19)
            .unwrap();
        let pred = seg.segment_volume(case.imaging.data.view()).unwrap();
        let truth = case.labels.unwrap().data;
        let (p, t) = (pred.as_slice().unwrap(), truth.as_slice().unwrap());
        kidney.push((dice(p, t, |v| v > 0), dice(p, t, |v| v == 2)));
    }
    let n = kidney.len() as f64;
    let k_mean = kidney.iter().map(|d| d.0).sum::<f64>() / n;
    let t_mean = kidney.iter().map(|d| d.1).sum::<f64>() / n;
    assert!((k_mean - summary.kidney_dice).abs() < 1e-12);
    assert!((t_mean - summary.tumour_dice).abs() < 1e-12);

    // `kseg predict` on the validation cases (folder mode), then `kseg
    // evaluate`: the same numbers, and the predictions carry the imaging's
    // geometry.
    let val_dir = tmp.path().join("val");
    copy_cases(&split.val, &data, &val_dir);
    kseg_ok(&[
        "predict",
        "--checkpoint",
        s(&last.join("model.safetensors")),
        "--input",
        s(&val_dir),
        "--output",
        s(&pred_dir),
        "--device",
        "cpu",
    ]);
    for id in &split.val {
        let p =
            volume::read_labels(pred_dir.join(format!("{id}.nii.gz")), LabelSet::Kits19).unwrap();
        let img = volume::read_header(data.join(id).join("imaging.nii.gz")).unwrap();
        assert_eq!(p.header.shape(), img.shape());
        assert_eq!(p.header.affine(), img.affine());
        assert_eq!(p.header.dtype(), volume::DType::U8);
    }
    // With `--report` into a folder: the same labels, one report per case
    // whose tumour volume is the tumour voxels times the voxel volume of
    // the header, and a table row per case.
    let rep_dir = tmp.path().join("reports");
    let pred2 = tmp.path().join("pred2");
    kseg_ok(&[
        "predict",
        "--checkpoint",
        s(&last.join("model.safetensors")),
        "--input",
        s(&val_dir),
        "--output",
        s(&pred2),
        "--report",
        s(&rep_dir),
        "--device",
        "cpu",
    ]);
    for id in &split.val {
        let p = volume::read_labels(pred2.join(format!("{id}.nii.gz")), LabelSet::Kits19).unwrap();
        let q =
            volume::read_labels(pred_dir.join(format!("{id}.nii.gz")), LabelSet::Kits19).unwrap();
        assert_eq!(p.data, q.data, "--report changed the labels of {id}");
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(rep_dir.join(format!("{id}.json"))).unwrap(),
        )
        .unwrap();
        let sp = p.header.spacing3();
        let voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0;
        let tumour = p.data.iter().filter(|&&v| v == 2).count() as f64 * voxel_ml;
        let got = r["report"]["total_tumour_volume_ml"].as_f64().unwrap();
        assert!(
            (got - tumour).abs() <= 1e-9 * tumour.max(1.0),
            "{id}: {got} vs {tumour}"
        );
        assert!(r["report"]["review"]["flag"].is_boolean());
        assert!(r["report"]["quality"]["mirror_dice"].is_f64());
    }
    let csv = std::fs::read_to_string(rep_dir.join("reports.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + split.val.len(), "{csv}");
    // In-plane resampling: a model trained at 32×32 that records it
    // segments a volume upsampled 2× (nearest) by resampling to 32×32 and
    // back. Its labels must match the native prediction upsampled the same
    // way on nearly every voxel (the boundaries may move by a pixel).
    let case = volume::CaseDir::open(data.join(&split.val[0]))
        .unwrap()
        .load(LabelSet::Kits19)
        .unwrap();
    let native = seg.segment_volume(case.imaging.data.view()).unwrap();
    let mut meta = seg.meta().clone();
    meta.in_plane = Some((32, 32));
    let (model, _) = kseg::model::ResUNet::load(
        &meta.model,
        last.join("model.safetensors"),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let resampling = Segmenter::new(model, meta, candle_core::Device::Cpu, 4);
    let pred_big = resampling
        .segment_volume(up2(&case.imaging.data).view())
        .unwrap();
    assert_upsampled_agreement(&native, &pred_big);

    // Mirroring test-time augmentation averages a slice's prediction with
    // its mirror image's, so the segmenter becomes mirror-equivariant:
    // segmenting the mirrored volume gives the mirrored segmentation,
    // exactly (clean-up off: its tie-breaking follows the scan order).
    let mut mirrored = seg.clone();
    mirrored.set_keep_largest(None);
    mirrored.set_mirror(true);
    let flip = |a: &ndarray::Array3<f32>| {
        let mut f = a.clone();
        f.invert_axis(ndarray::Axis(2));
        f
    };
    let a = mirrored.segment_volume(case.imaging.data.view()).unwrap();
    let b = mirrored
        .segment_volume(flip(&case.imaging.data).view())
        .unwrap();
    assert_eq!(flip(&a.mapv(f32::from)), b.mapv(f32::from));
    assert!(a.iter().any(|&v| v > 0), "the mirrored prediction is empty");

    let report = tmp.path().join("report.json");
    kseg_ok(&[
        "evaluate",
        "--pred",
        s(&pred_dir),
        "--truth",
        s(&val_dir),
        "--out",
        s(&report),
    ]);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!((r["kidney_dice"].as_f64().unwrap() - k_mean).abs() < 1e-12);
    assert!((r["tumour_dice"].as_f64().unwrap() - t_mean).abs() < 1e-12);
}

/// Stops the run (as a crash would) once `at` steps are done.
struct CrashAt(usize);

impl Observer for CrashAt {
    fn on_step(&mut self, r: &StepRecord) -> kseg::train::Result<()> {
        if r.step == self.0 {
            return Err(TrainError::Other("simulated crash".into()));
        }
        Ok(())
    }
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = tiny_config(&data, 20);

    let whole = tmp.path().join("whole");
    let mut t = Trainer::new(cfg.clone(), &whole)
        .unwrap()
        .with_default_observers()
        .unwrap();
    t.run().unwrap();

    // Crash at step 13: the last checkpoint is step 10, so steps 11-13 are
    // redone after the resume.
    let broken = tmp.path().join("broken");
    let mut t = Trainer::new(cfg.clone(), &broken)
        .unwrap()
        .with_default_observers()
        .unwrap();
    t.add_observer(Box::new(CrashAt(13)));
    let err = t.run().unwrap_err().to_string();
    assert!(err.contains("simulated crash"), "{err}");
    drop(t);
    // The log's lines up to the checkpoint stay as written, byte for byte.
    // One is re-spelt with a trailing zero, as another JSON writer (or a
    // float that does not survive a parse and print) would leave it: a
    // resume that parses and prints the lines changes it.
    let log = broken.join("metrics.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<String> = text
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["step"].as_u64().unwrap() <= 10
        })
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            if v["step"] == 3 && v["kind"] == "step" {
                l.replacen("\"epoch\":", "\"epoch\": ", 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    let rest: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
                > 10
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        &log,
        kept.iter().map(|l| format!("{l}\n")).collect::<String>() + &rest,
    )
    .unwrap();
    let mut t = Trainer::resume(&broken, &[])
        .unwrap()
        .with_default_observers()
        .unwrap();
    assert_eq!(t.step(), 10);
    t.run().unwrap();
    let after = std::fs::read_to_string(&log).unwrap();
    let head: Vec<&str> = after.lines().take(kept.len()).collect();
    assert_eq!(head, kept, "the lines before the checkpoint changed");
    assert!(kept.iter().any(|l| l.contains("\"epoch\": ")));

    // Identical losses (bit for bit through JSON's shortest round-trip
    // representation) and identical validation records.
    assert_eq!(step_losses(&whole), step_losses(&broken));
    let val = |run: &Path| -> Vec<Value> {
        metrics(run)
            .into_iter()
            .filter(|v| v["kind"] == "validation")
            .map(|mut v| {
                v.as_object_mut().unwrap().remove("seconds");
                v
            })
            .collect()
    };
    assert_eq!(val(&whole), val(&broken));
    // And identical weights at the end.
    let w = |run: &Path| {
        candle_core::safetensors::load(
            run.join("checkpoints/step_000020/model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (a, b) = (w(&whole), w(&broken));
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let diff = crate::tensors::max_abs_diff(ta, &b[name]);
        assert_eq!(diff, 0.0, "{name} differs");
    }
}

#[test]
fn nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut cfg = tiny_config(&data, 30);
    cfg.train.checkpoint_every = 1;
    cfg.train.grad_clip = None;
    // A learning rate that sends the weights to infinity within a few steps.
    cfg.optim = kseg::train::OptimConfig::Sgd(kseg::train::SgdConfig {
        lr: 1e30,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    });
    let run = tmp.path().join("run");
    let mut t = Trainer::new(cfg, &run).unwrap();
    let err = t.run().unwrap_err();
    let TrainError::NonFinite {
        step, last_good, ..
    } = &err
    else {
        panic!("expected a non-finite error, got {err}");
    };
    let msg = err.to_string();
    assert!(msg.contains(&format!("at step {step}")), "{msg}");
    assert!(msg.contains("stops"), "{msg}");
    // Steps before the bad one were checkpointed and still load.
    if *step > 1 {
        let good = last_good.as_ref().expect("a checkpoint before the failure");
        assert!(msg.contains(&good.display().to_string()), "{msg}");
        Segmenter::load(good, &candle_core::Device::Cpu, 2).unwrap();
        assert!(!run.join("summary.json").exists());
    }
}

#[test]
fn bad_input_fails_clearly_and_overwrites_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    let cfg = tiny_config(&data, 5);
    Trainer::new(cfg.clone(), &run).unwrap().run().unwrap();
    let ckpt = run.join("checkpoints/step_000005");
    let model = ckpt.join("model.safetensors");

    // A second run into the same folder is refused.
    let err = Trainer::new(cfg.clone(), &run).err().unwrap().to_string();
    assert!(err.contains("already holds a run"), "{err}");

    // A split that names a case the data lacks.
    let mut missing = cfg.clone();
    let split = tmp.path().join("split.json");
    std::fs::write(
        &split,
        r#"{"seed": 0, "train": ["case_00000", "case_00099"], "val": ["case_00001"]}"#,
    )
    .unwrap();
    missing.data.split_file = Some(split.clone());
    let err = Trainer::new(missing, &tmp.path().join("run2"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("case_00099") && err.contains(s(&split)),
        "{err}"
    );

    // A corrupt (truncated) checkpoint: predict fails naming it and writes
    // nothing; an existing output stays as it was.
    let bad = tmp.path().join("bad.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out_file = tmp.path().join("pred.nii.gz");
    std::fs::write(&out_file, b"keep me").unwrap();
    let input = data.join("case_00000").join("imaging.nii.gz");
    let out = kseg_cli(&[
        "predict",
        "--checkpoint",
        s(&bad),
        "--input",
        s(&input),
        "--output",
        s(&out_file),
        "--device",
        "cpu",
    ]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(s(&bad)) && e.contains("truncated"), "{e}");
    assert_eq!(std::fs::read(&out_file).unwrap(), b"keep me");

    // A checkpoint from another architecture: a depth-3 model's weights
    // under this run's name. Resume refuses it, naming the file.
    let other_run = tmp.path().join("other");
    let mut other = cfg.clone();
    other.model.depth = 3;
    Trainer::new(other, &other_run).unwrap().run().unwrap();
    let before = std::fs::read(&model).unwrap();
    std::fs::copy(
        other_run.join("checkpoints/step_000005/model.safetensors"),
        &model,
    )
    .unwrap();
    let err = Trainer::resume(&run, &["train.steps=10".into()])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(s(&model)) && err.contains("depth: 3"), "{err}");
    // Weights that disagree with the metadata they carry: predict names the
    // tensor.
    let mixed = tmp.path().join("mixed.safetensors");
    let meta = kseg::infer::read_meta(&model).unwrap();
    let mut wrong = meta.clone();
    wrong.model.depth = 2; // the tensors are depth 3
    let tensors = candle_core::safetensors::load(&model, &candle_core::Device::Cpu).unwrap();
    let varmap = candle_nn::VarMap::new();
    {
        let mut d = varmap.data().lock().unwrap();
        for (n, t) in tensors {
            d.insert(n, candle_core::Var::from_tensor(&t).unwrap());
        }
    }
    kseg::infer::save_model(&varmap, &wrong, &mixed).unwrap();
    std::fs::write(&model, before).unwrap();
    let out = kseg_cli(&[
        "predict",
        "--checkpoint",
        s(&mixed),
        "--input",
        s(&input),
        "--output",
        s(&out_file),
    ]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(s(&mixed)) && e.contains("shape"), "{e}");
    assert_eq!(std::fs::read(&out_file).unwrap(), b"keep me");

    // A missing case folder for predict.
    let out = kseg_cli(&[
        "predict",
        "--checkpoint",
        s(&model),
        "--input",
        s(&data.join("case_00077")),
        "--output",
        s(&out_file),
    ]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("case_00077"), "{e}");
}

/// Growing the synthetic case count in the same folder must train on the
/// new cases too: the cached split belongs to the case set it was made for.
#[test]
fn more_cases_in_the_same_folder_make_a_new_split() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = tiny_config(&tmp.path().join("data"), 1);
    let sorted = |ds: &kseg::train::Dataset| {
        let mut all: Vec<String> = ds
            .split
            .train
            .iter()
            .chain(&ds.split.val)
            .cloned()
            .collect();
        all.sort();
        all
    };
    let ds = kseg::train::Dataset::prepare(&c.data).unwrap();
    assert_eq!(
        sorted(&ds),
        (0..6).map(volume::synth::case_id).collect::<Vec<_>>()
    );
    c.data.synthetic.cases = 8;
    let ds = kseg::train::Dataset::prepare(&c.data).unwrap();
    assert_eq!(
        sorted(&ds),
        (0..8).map(volume::synth::case_id).collect::<Vec<_>>()
    );
    assert_eq!((ds.train.len(), ds.val.len()), (6, 2));
    // An explicit split file is the user's choice and is kept as it is.
    let split = tmp.path().join("split.json");
    volume::split::Split::random(
        &[
            "case_00000".into(),
            "case_00001".into(),
            "case_00002".into(),
        ],
        1,
        0,
    )
    .unwrap()
    .save(&split)
    .unwrap();
    c.data.split_file = Some(split);
    let ds = kseg::train::Dataset::prepare(&c.data).unwrap();
    assert_eq!((ds.train.len(), ds.val.len()), (2, 1));
    // A case folder without labels is left out, but by name: on stderr and
    // in the run's split.json (it used to vanish without a word).
    let data = tmp.path().join("data");
    std::fs::remove_file(data.join("case_00007/segmentation.nii.gz")).unwrap();
    c.data.split_file = None;
    c.data.data_dir = Some(data);
    let run = tmp.path().join("run");
    Trainer::new(c, &run).unwrap().run().unwrap();
    let saved = volume::Split::load(run.join("split.json")).unwrap();
    assert_eq!(saved.unlabelled, ["case_00007"]);
    assert!(
        !saved
            .train
            .iter()
            .chain(&saved.val)
            .any(|id| id == "case_00007")
    );
}

#[test]
fn config_files_and_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("c.toml");
    std::fs::write(
        &toml,
        "[train]\nsteps = 12\nbatch_size = 2\n[optim]\nkind = \"sgd\"\nlr = 0.02\n[model]\nbase_channels = 8\n",
    )
    .unwrap();
    let c = TrainConfig::from_file(&toml).unwrap();
    assert_eq!((c.train.steps, c.train.batch_size), (12, 2));
    assert_eq!(c.model.base_channels, 8);
    assert_eq!(c.optim.lr(), 0.02);
    // Everything unnamed keeps the reference method's defaults.
    assert_eq!(c.model.depth, 5);
    assert_eq!(c.augment, kseg::augment::AugmentConfig::default());

    // JSON round trip of the full default.
    let json = tmp.path().join("c.json");
    std::fs::write(
        &json,
        serde_json::to_string(&TrainConfig::default()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        TrainConfig::from_file(&json).unwrap(),
        TrainConfig::default()
    );

    // Unknown keys and impossible values are errors naming the file.
    std::fs::write(&toml, "[train]\nstepz = 12\n").unwrap();
    let e = TrainConfig::from_file(&toml).unwrap_err().to_string();
    assert!(e.contains(s(&toml)) && e.contains("stepz"), "{e}");
    std::fs::write(&toml, "[model]\nin_channels = 5\n").unwrap();
    let e = TrainConfig::from_file(&toml).unwrap_err().to_string();
    assert!(e.contains("in_channels") && e.contains("context"), "{e}");

    let mut c = TrainConfig::default();
    c.apply_overrides(&["data.in_plane=[256,256]", "augment.out_size=[256,256]"])
        .unwrap();
    assert_eq!(c.data.in_plane, Some((256, 256)));
    let e = c
        .apply_overrides(&["data.in_plane=[250,250]"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("in_plane"), "{e}");
    assert!(c.apply_overrides(&["train"]).is_err());
    assert!(c.apply_overrides(&["train.steps=-1"]).is_err());
    let _ = PathBuf::new();
}

#[test]
fn kseg_train_cli_runs_from_a_config_file_and_resumes_longer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg_path = tmp.path().join("tiny.json");
    let cfg = tiny_config(&data, 4);
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let run = tmp.path().join("run");
    let out = kseg_ok(&[
        "train",
        "--config",
        s(&cfg_path),
        "--out",
        s(&run),
        "--set",
        "train.validate_every=0",
    ]);
    // stdout: the summary's path.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.trim(), s(&run.join("summary.json")));
    let saved: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved.train.validate_every, 0);
    assert_eq!(saved.train.steps, 4);

    // Resume with more steps: it continues from step 4 to 7.
    kseg_ok(&["train", "--resume", s(&run), "--steps", "7"]);
    let sj: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(sj["steps"], 7);
    let steps: Vec<u64> = step_losses(&run).iter().map(|x| x.0).collect();
    assert_eq!(steps, (1..=7).collect::<Vec<_>>());

    // --resume of a folder without a run names what is missing.
    let out = kseg_cli(&["train", "--resume", s(&tmp.path().join("nothing"))]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("latest.json"), "{e}");
}

/// Every entry under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn one_process_per_run_folder_and_an_interrupt_leaves_no_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut cfg = tiny_config(&data, 1_000_000);
    cfg.train.validate_every = 0;
    let cfg_path = tmp.path().join("long.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let run = tmp.path().join("run");
    let mut first = Command::new(env!("CARGO_BIN_EXE_kseg"))
        .args(["train", "--config", s(&cfg_path), "--out", s(&run)])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let latest = run.join("checkpoints/latest.json");
    let t0 = std::time::Instant::now();
    while !latest.exists() {
        assert!(t0.elapsed().as_secs() < 300, "no checkpoint after 300 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // While it trains, a second process cannot use the folder (it used to
    // finish with exit 0, mixing its files with the first run's).
    let out = kseg_cli(&["train", "--resume", s(&run), "--steps", "3"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains(s(&run)) && e.contains("another kseg process"),
        "{e}"
    );
    // SIGTERM: the handler removes the writes in progress and exits 130.
    let kill = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(first.wait().unwrap().code(), Some(130));
    let temp =
        |p: &PathBuf| kseg::volume::fs::is_temp_name(&p.file_name().unwrap().to_string_lossy());
    let left: Vec<PathBuf> = walk(&run).into_iter().filter(temp).collect();
    assert!(left.is_empty(), "{left:?}");
    // What a SIGKILL or a power loss leaves: the next run of that folder
    // removes it (and only it) under the lock, then resumes.
    let stale = [
        run.join("checkpoints/.kseg-ab12cd34ef.tmp"),
        run.join(".kseg-x1y2z3w4v5.tmp"),
        run.join("checkpoints/.kseg-q1w2e3r4t5.old"),
    ];
    std::fs::create_dir(&stale[0]).unwrap();
    std::fs::write(stale[0].join("model.safetensors"), b"half").unwrap();
    std::fs::write(&stale[1], b"half").unwrap();
    std::fs::create_dir(&stale[2]).unwrap();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&latest).unwrap()).unwrap();
    let step = v["step"].as_u64().unwrap() + 2;
    kseg_ok(&["train", "--resume", s(&run), "--steps", &step.to_string()]);
    let left: Vec<PathBuf> = walk(&run).into_iter().filter(temp).collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(run.join("summary.json").is_file());
}

/// The KiTS23 setup on tiny synthetic cases with cysts: region-based
/// training, validation on the KiTS23 metrics (summary.json holds the
/// three regions' Dice and surface Dice), predictions in KiTS23 labels that
/// `kseg evaluate --protocol kits23` scores as validation did.
#[test]
fn kits23_runs_train_on_regions_and_validate_on_the_official_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    let mut cfg = tiny_config(&data, 30);
    cfg.data.labels = volume::LabelSet::Kits23;
    cfg.data.synthetic.generator.cysts = true;
    cfg.loss.regions = true;
    cfg.model.num_classes = 3;
    cfg.optim = kseg::train::OptimConfig::AdamW(kseg::train::AdamWConfig {
        lr: 1e-2,
        ..Default::default()
    });
    // The synthetic cases hold cysts.
    let _ = kseg::train::Dataset::prepare(&cfg.data).unwrap();
    let counts = kseg::train::Dataset::prepare(&cfg.data)
        .unwrap()
        .class_counts;
    assert_eq!(counts.len(), 4);
    assert!(counts[3] > 0, "no cyst voxels: {counts:?}");
    let summary = Trainer::new(cfg.clone(), &run)
        .unwrap()
        .with_default_observers()
        .unwrap()
        .run()
        .unwrap();
    let losses = step_losses(&run);
    let mean = |v: &[(u64, f64)]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
    assert!(mean(&losses[24..]) < 0.9 * mean(&losses[..6]), "{losses:?}");
    let sj: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let regions = summary.regions.clone().expect("KiTS23 summary has regions");
    for r in ["kidney_and_mass", "mass", "tumor"] {
        for m in ["dice", "surface_dice"] {
            let v = sj["regions"][r][m].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{r} {m} {v}");
        }
    }
    let composite = regions
        .values()
        .map(|m| m.dice + m.surface_dice)
        .sum::<f64>()
        / 6.0;
    assert!((summary.composite - composite).abs() < 1e-12);
    // The checkpoint records the label set and the regions.
    let last = run.join("checkpoints/step_000030/model.safetensors");
    let meta = kseg::infer::read_meta(&last).unwrap();
    assert!(meta.regions && meta.labels == volume::LabelSet::Kits23);

    // kseg predict on the validation cases, kseg evaluate --protocol kits23:
    // the same means as the run's last validation.
    let split: volume::Split = volume::Split::load(run.join("split.json")).unwrap();
    let (val_dir, pred_dir) = (tmp.path().join("val"), tmp.path().join("pred"));
    copy_cases(&split.val, &data, &val_dir);
    kseg_ok(&[
        "predict",
        "--checkpoint",
        s(&last),
        "--input",
        s(&val_dir),
        "--output",
        s(&pred_dir),
        "--device",
        "cpu",
    ]);
    let report = tmp.path().join("report.json");
    kseg_ok(&[
        "evaluate",
        "--protocol",
        "kits23",
        "--pred",
        s(&pred_dir),
        "--truth",
        s(&val_dir),
        "--out",
        s(&report),
    ]);
    let ev: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    for (name, m) in &regions {
        let got = ev["regions"][name]["dice"].as_f64().unwrap();
        assert!((got - m.dice).abs() < 1e-9, "{name}: {got} vs {}", m.dice);
        let got = ev["regions"][name]["surface_dice"].as_f64().unwrap();
        assert!(
            (got - m.surface_dice).abs() < 1e-9,
            "{name}: {got} vs {}",
            m.surface_dice
        );
    }

    // The simpler alternative: one softmax over the four labels.
    let mut soft = cfg.clone();
    soft.loss.regions = false;
    soft.model.num_classes = 4;
    soft.train.steps = 5;
    let s4 = Trainer::new(soft, &tmp.path().join("softmax"))
        .unwrap()
        .run()
        .unwrap();
    assert!(s4.regions.is_some());
    // A KiTS19 configuration on these cases: the cyst label is refused,
    // naming the file and the value.
    let mut k19 = cfg.clone();
    k19.data.labels = volume::LabelSet::Kits19;
    k19.loss.regions = false;
    let err = Trainer::new(k19, &tmp.path().join("k19"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("segmentation.nii.gz") && err.contains("label value 3"),
        "{err}"
    );
}

/// The KiTS23 presets are their KiTS19 counterparts plus the label set,
/// the regions and (synthetic) cysts; `--data-dir` on a KiTS23 dataset
/// folder (it holds kits23.json) picks the KiTS23 setup.
#[test]
fn kits23_presets_and_their_choice() {
    for (k23, k19) in [("kits23", "kits19"), ("synthetic-kits23", "synthetic-cpu")] {
        let a = kseg::preset(k23).unwrap();
        let mut b = kseg::preset(k19).unwrap();
        b.data.labels = volume::LabelSet::Kits23;
        b.loss.regions = true;
        b.model.num_classes = 3;
        b.data.synthetic.generator.cysts = k23.starts_with("synthetic");
        assert_eq!(a, b, "{k23} vs {k19}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let args = |dir: &Path| kseg::cli::TrainArgs {
        data_dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let c = args(tmp.path()).config().unwrap();
    assert_eq!(
        (c.data.labels, c.loss.regions),
        (volume::LabelSet::Kits19, false)
    );
    std::fs::write(tmp.path().join("kits23.json"), "[]").unwrap();
    let c = args(tmp.path()).config().unwrap();
    assert_eq!(
        (c.data.labels, c.loss.regions),
        (volume::LabelSet::Kits23, true)
    );
    // Inconsistent settings are refused with what to change.
    let mut bad = kseg::preset("synthetic-kits23").unwrap();
    bad.data.labels = volume::LabelSet::Kits19;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("loss.regions needs data.labels"), "{e}");
    let mut bad = kseg::preset("synthetic-kits23").unwrap();
    bad.loss.regions = false;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("model.num_classes must be 4"), "{e}");
    // Those keys are left out of KiTS19 configurations, but overrides still
    // set them (and still catch a typo).
    let mut c = kseg::preset("synthetic-cpu").unwrap();
    c.apply_overrides(&[
        "data.labels=kits23",
        "loss.regions=true",
        "model.num_classes=3",
        "data.synthetic.generator.cysts=true",
        "data.spacing_mm=2.0",
    ])
    .unwrap();
    let mut want = kseg::preset("synthetic-kits23").unwrap();
    want.data.spacing_mm = Some(2.0);
    assert_eq!(c, want);
    let e = c
        .apply_overrides(&["data.spacingmm=2"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no field \"spacingmm\"") && e.contains("spacing_mm"),
        "{e}"
    );
    // KiTS19 configurations serialise as before (no new keys).
    let json = serde_json::to_string(&kseg::preset("synthetic-cpu").unwrap()).unwrap();
    assert!(
        !json.contains("labels") && !json.contains("regions") && !json.contains("cysts"),
        "{json}"
    );
}

/// A copy of `file` (a KiTS-layout volume) stored with file axis `a`
/// holding internal axis `p[a]`, reversed where `f[a]`, with the affine
/// that keeps every voxel where it was in the world.
fn reoriented_copy(file: &Path, dst: &Path, p: [usize; 3], f: [bool; 3], labels: bool) {
    let v = volume::read_volume(file).unwrap();
    let h = v.header.reoriented(p, f).unwrap();
    let data = volume::orient::permute(v.data.view(), p, f);
    if labels {
        volume::write_volume(dst, data.mapv(|x| x as u8).view(), &h).unwrap();
    } else {
        volume::write_volume(dst, data.mapv(|x| x as i16).view(), &h).unwrap();
    }
}

/// Case folders stored slices-last in RAS or LPS (dcm2niix's and the
/// Decathlon's layouts) read, train and predict as their KiTS-layout
/// originals: the same internal arrays, the same Dice, the same labels voxel
/// for voxel (mapped through the affines), written in the input's layout.
#[test]
fn any_orientation_reads_trains_and_predicts_as_kits_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = tiny_config(&data, 12);
    let _ = kseg::train::Dataset::prepare(&cfg.data).unwrap();
    let layouts = [
        ("ras", [2, 1, 0], [true, true, true]),
        ("lps", [2, 1, 0], [false, false, true]),
    ];
    for (name, p, f) in layouts {
        let dst = tmp.path().join(name);
        for c in volume::list_cases(&data).unwrap() {
            std::fs::create_dir_all(dst.join(&c.id)).unwrap();
            reoriented_copy(
                &c.imaging,
                &dst.join(&c.id).join("imaging.nii.gz"),
                p,
                f,
                false,
            );
            let seg = c.segmentation.unwrap();
            reoriented_copy(
                &seg,
                &dst.join(&c.id).join("segmentation.nii.gz"),
                p,
                f,
                true,
            );
        }
        let codes = volume::orient::Orientation::from_affine(
            &volume::read_header(dst.join("case_00000/imaging.nii.gz"))
                .unwrap()
                .affine(),
        )
        .codes();
        assert_eq!(
            codes,
            if name == "ras" {
                ['R', 'A', 'S']
            } else {
                ['L', 'P', 'S']
            }
        );
        // Same internal arrays.
        let (a, b) = (
            volume::CaseDir::open(data.join("case_00000"))
                .unwrap()
                .load(LabelSet::Kits19)
                .unwrap(),
            volume::CaseDir::open(dst.join("case_00000"))
                .unwrap()
                .load(LabelSet::Kits19)
                .unwrap(),
        );
        assert_eq!(a.imaging.data, b.imaging.data);
        assert_eq!(a.labels.unwrap().data, b.labels.unwrap().data);
    }
    // Training on the RAS copy: the same run (same losses, same Dice).
    let train = |d: &Path, run: &str| {
        let mut c = cfg.clone();
        c.data.data_dir = Some(d.to_path_buf());
        c.data.synthetic.dir = None;
        let s = Trainer::new(c, &tmp.path().join(run))
            .unwrap()
            .with_default_observers()
            .unwrap()
            .run()
            .unwrap();
        (s, step_losses(&tmp.path().join(run)))
    };
    let (s_kits, l_kits) = train(&data, "run_kits");
    let (s_ras, l_ras) = train(&tmp.path().join("ras"), "run_ras");
    assert_eq!(l_kits, l_ras);
    assert_eq!(
        (s_kits.kidney_dice, s_kits.tumour_dice),
        (s_ras.kidney_dice, s_ras.tumour_dice)
    );
    // Predictions of each copy, in the copy's own layout, map back to the
    // KiTS-layout prediction voxel for voxel.
    let ckpt = tmp.path().join("run_kits/checkpoints/step_000012");
    let mut preds = Vec::new();
    for (name, p, f) in [("kits", [0, 1, 2], [false; 3]), layouts[0], layouts[1]] {
        let dir = if name == "kits" {
            data.clone()
        } else {
            tmp.path().join(name)
        };
        let input = dir.join("case_00000/imaging.nii.gz");
        let out = tmp.path().join(format!("pred_{name}.nii.gz"));
        kseg_ok(&[
            "predict",
            "--checkpoint",
            s(&ckpt),
            "--input",
            s(&input),
            "--output",
            s(&out),
            "--device",
            "cpu",
        ]);
        let pred = volume::read_labels(&out, LabelSet::Kits19).unwrap();
        // The output has the input's geometry...
        let h = volume::read_header(&input).unwrap();
        assert_eq!(
            (pred.header.shape(), pred.header.affine()),
            (h.shape(), h.affine())
        );
        // ...and mapped back through the layout (file axis a holds
        // internal axis p[a], reversed where f[a]), the same labels.
        let mut v = pred.data.view();
        for (a, _) in f.iter().enumerate().filter(|(_, f)| **f) {
            v.invert_axis(ndarray::Axis(a));
        }
        let mut inv = [0; 3];
        for (a, &pa) in p.iter().enumerate() {
            inv[pa] = a;
        }
        let internal = v.permuted_axes(inv).as_standard_layout().into_owned();
        preds.push(internal);
    }
    // The same CT as a DICOM series (LPS, slices in increasing position,
    // file names unrelated to position): the same labels once the
    // prediction, written in the series' layout [slice, row, column], is
    // mapped back (its slices run superior, the internal ones inferior).
    let case = volume::read_volume(data.join("case_00000/imaging.nii.gz")).unwrap();
    let a = case.header.affine();
    let col = |c: usize| [-a[0][c], -a[1][c], a[2][c]];
    let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let unit = |v: [f64; 3]| v.map(|x| x / norm(v));
    let n = case.data.dim().0;
    let origin = [0, 1, 2].map(|r| {
        let w = a[r][0] * (n - 1) as f64 + a[r][3];
        if r < 2 { -w } else { w }
    });
    let mut hu = case.data.clone();
    hu.invert_axis(ndarray::Axis(0));
    let hu = hu.as_standard_layout().into_owned();
    let spec = crate::support_dicom::SeriesSpec {
        hu: &hu,
        origin,
        row_dir: unit(col(2)),
        col_dir: unit(col(1)),
        pixel_spacing: [norm(col(1)), norm(col(2))],
        step: norm(col(0)),
        storage: crate::support_dicom::Storage::U16Intercept,
        uid: "1.2.826.0.1.3680043.2.1125.42",
    };
    let dcm = tmp.path().join("dicom");
    let names: Vec<String> = (0..n)
        .map(|k| format!("{:04}", (k * 7919) % 10007))
        .collect();
    let numbers: Vec<u32> = (0..n as u32).rev().collect();
    crate::support_dicom::write_series(&dcm, &spec, &names, &numbers);
    let out = tmp.path().join("pred_dicom.nii.gz");
    kseg_ok(&[
        "predict",
        "--checkpoint",
        s(&ckpt),
        "--input",
        s(&dcm),
        "--output",
        s(&out),
        "--device",
        "cpu",
    ]);
    let pred = volume::read_labels(&out, LabelSet::Kits19).unwrap();
    let mut back = pred.data.clone();
    back.invert_axis(ndarray::Axis(0));
    assert_eq!(
        back.as_standard_layout().into_owned(),
        preds[0],
        "DICOM series"
    );
    // The prediction lies where the CT lies: its first voxel is the series'
    // first pixel of the lowest slice.
    let pa = pred.header.affine();
    for r in 0..3 {
        let want = if r < 2 { -origin[r] } else { origin[r] };
        assert!((pa[r][3] - want).abs() < 1e-3, "{pa:?} vs {origin:?}");
    }
    assert!(preds[0].iter().any(|&v| v > 0), "the prediction is empty");
    assert_eq!(preds[0], preds[1], "RAS copy");
    assert_eq!(preds[0], preds[2], "LPS copy");
}

/// Training at a fixed in-plane voxel size (`data.spacing_mm`): the
/// checkpoint records it, and the model segments the same anatomy at
/// another pixel size (a 2× upsampled copy with half the voxel size) as it
/// does at the native one, once the labels are brought to the same grid
/// (boundaries may move by a pixel).
#[test]
fn a_model_trained_at_a_spacing_segments_other_spacings_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    let mut cfg = tiny_config(&data, 40);
    cfg.data.spacing_mm = Some(12.0);
    cfg.optim = kseg::train::OptimConfig::AdamW(kseg::train::AdamWConfig {
        lr: 1e-2,
        ..Default::default()
    });
    Trainer::new(cfg.clone(), &run).unwrap().run().unwrap();
    let last = run.join("checkpoints/step_000040");
    let meta = kseg::infer::read_meta(&last.join("model.safetensors")).unwrap();
    assert_eq!(meta.spacing_mm, Some(12.0));
    let seg = Segmenter::load(&last, &candle_core::Device::Cpu, 4).unwrap();
    let split: volume::Split = volume::Split::load(run.join("split.json")).unwrap();
    let case = volume::CaseDir::open(data.join(&split.val[0]))
        .unwrap()
        .load(LabelSet::Kits19)
        .unwrap();
    let sp = case.imaging.header.spacing();
    let (sy, sx) = (sp[1], sp[2]);
    // Without the voxel size the model cannot resample: a clear error.
    let e = seg
        .segment_volume(case.imaging.data.view())
        .unwrap_err()
        .to_string();
    assert!(e.contains("voxel size is needed"), "{e}");
    let native = seg
        .segment_volume_at(case.imaging.data.view(), Some((sy, sx)))
        .unwrap();
    let pred_big = seg
        .segment_volume_at(up2(&case.imaging.data).view(), Some((sy / 2.0, sx / 2.0)))
        .unwrap();
    assert_upsampled_agreement(&native, &pred_big);
    // Configurations that cannot work are refused.
    let mut bad = cfg.clone();
    bad.data.in_plane = Some((32, 32));
    assert!(bad.validate().unwrap_err().to_string().contains("set one"));
    bad.data.in_plane = None;
    bad.data.spacing_mm = Some(-1.0);
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("spacing_mm")
    );
}

/// `kseg train --out DIR` in a folder kseg did not make (`--out ~`) used
/// to delete the user's `.*.old` and `.*.tmp` files there and an existing
/// `metrics.jsonl`: it is refused, the folder untouched.
#[test]
fn a_folder_that_is_not_a_run_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".config.old")).unwrap();
    for f in [".bashrc.old", ".x.tmp", "metrics.jsonl", "summary.json"] {
        std::fs::write(home.join(f), b"mine").unwrap();
    }
    let before = walk(&home);
    let out = kseg_cli(&[
        "train",
        "--out",
        s(&home),
        "--steps",
        "2",
        "--device",
        "cpu",
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains(s(&home)) && e.contains("not a kseg run folder"),
        "{e}"
    );
    assert!(!e.contains("removed"), "{e}");
    assert_eq!(walk(&home), before);
    for f in [".bashrc.old", ".x.tmp", "metrics.jsonl", "summary.json"] {
        assert_eq!(std::fs::read(home.join(f)).unwrap(), b"mine", "{f}");
    }
    // A project folder with a config.json of its own is not a run either
    // (it used to be "already holds a run; resume it").
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("config.json"), b"{}").unwrap();
    let e = Trainer::new(tiny_config(&tmp.path().join("data"), 1), &project)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a kseg run folder"), "{e}");
    assert_eq!(walk(&project), [project.join("config.json")]);
}

/// A start refused for its configuration after the folder was taken
/// (`loss.lambda=-1`, caught where the loss is built) used to leave
/// `config.json` behind: the retry was "already holds a run", and
/// `--resume` found no checkpoint. Now the retry starts the run.
#[test]
fn a_failed_start_leaves_the_folder_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    let mut bad = tiny_config(&data, 1);
    bad.apply_overrides(&["loss.lambda=-1".to_string()])
        .unwrap();
    assert!(Trainer::new(bad, &run).is_err());
    assert!(!run.join("config.json").exists());
    let mut t = Trainer::new(tiny_config(&data, 1), &run).unwrap();
    t.run().unwrap();
    assert!(run.join("config.json").is_file());
    assert!(run.join("checkpoints/latest.json").is_file());
}

/// `--resume` used to trust `state.json`: a state saying step 5 beside the
/// step-10 weights resumed at 5 (and cut the log back), an optimiser state
/// of another step or a model for other labels resumed silently. Each is
/// refused, naming the file.
#[test]
fn resume_refuses_a_checkpoint_whose_files_disagree() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    Trainer::new(tiny_config(&data, 10), &run)
        .unwrap()
        .with_default_observers()
        .unwrap()
        .run()
        .unwrap();
    let (five, ten) = (
        run.join("checkpoints/step_000005"),
        run.join("checkpoints/step_000010"),
    );
    let pristine = tmp.path().join("pristine");
    std::fs::create_dir(&pristine).unwrap();
    for f in ["state.json", "optimizer.safetensors", "model.safetensors"] {
        std::fs::copy(ten.join(f), pristine.join(f)).unwrap();
    }
    let restore = || {
        for f in ["state.json", "optimizer.safetensors", "model.safetensors"] {
            std::fs::copy(pristine.join(f), ten.join(f)).unwrap();
        }
    };
    let resume_fails = |want: &[&str]| {
        let log = std::fs::read(run.join("metrics.jsonl")).unwrap();
        let e = Trainer::resume(&run, &["train.steps=12".into()])
            .err()
            .expect("resume must fail")
            .to_string();
        for w in want {
            assert!(e.contains(w), "want {w:?} in: {e}");
        }
        // Refused before anything changed: the log is whole.
        assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), log);
    };
    // state.json from step 5 beside step 10's files.
    std::fs::copy(five.join("state.json"), ten.join("state.json")).unwrap();
    resume_fails(&["step_000010", "after 10 steps", "says 5"]);
    restore();
    // The optimiser state of step 5.
    std::fs::copy(
        five.join("optimizer.safetensors"),
        ten.join("optimizer.safetensors"),
    )
    .unwrap();
    resume_fails(&["optimizer.safetensors", "after 5 steps", "says 10"]);
    restore();
    // A KiTS23 region model with the same network (3 outputs).
    let model = ten.join("model.safetensors");
    let mut meta = kseg::infer::read_meta(&model).unwrap();
    meta.labels = LabelSet::Kits23;
    meta.regions = true;
    let tensors = candle_core::safetensors::load(&model, &candle_core::Device::Cpu).unwrap();
    let varmap = candle_nn::VarMap::new();
    {
        let mut d = varmap.data().lock().unwrap();
        for (n, t) in tensors {
            d.insert(n, candle_core::Var::from_tensor(&t).unwrap());
        }
    }
    kseg::infer::save_model(&varmap, &meta, &model).unwrap();
    resume_fails(&["model.safetensors", "Kits23", "regions true"]);
    restore();
    // The untouched checkpoint resumes.
    Trainer::resume(&run, &["train.steps=12".into()])
        .unwrap()
        .run()
        .unwrap();
}

/// Training on a dataset whose folder cannot hold the default cache
/// (`<data_dir>/.kseg-cache`; read-only, or here a file of that name)
/// used to fail with only the OS's words. The error names the folder and
/// `data.cache_dir`; setting it trains.
#[test]
fn a_dataset_that_cannot_hold_the_cache_points_at_data_cache_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let synth = tmp.path().join("synth");
    let mut cfg = tiny_config(&synth, 1);
    let data = tmp.path().join("data");
    volume::synth::write_dataset(&data, 4, &cfg.data.synthetic.generator).unwrap();
    std::fs::write(data.join(".kseg-cache"), b"not a folder").unwrap();
    cfg.data.data_dir = Some(data.clone());
    let e = kseg::train::Dataset::prepare(&cfg.data)
        .err()
        .expect("the cache cannot be made")
        .to_string();
    assert!(
        e.contains(".kseg-cache") && e.contains("data.cache_dir"),
        "{e}"
    );
    cfg.data.cache_dir = Some(tmp.path().join("cache"));
    kseg::train::Dataset::prepare(&cfg.data).unwrap();
}

/// Values the optimisers and the schedule cannot use were accepted
/// (`optim.beta1=1.5`, `optim.eps=-1`, `optim.weight_decay=-10`,
/// `schedule.min_lr` above `optim.lr`), and `data.n_val=0` trained to a
/// NaN Dice with the last step as "best". Each is refused, naming the key.
#[test]
fn impossible_optimiser_schedule_and_validation_values_are_refused() {
    let refused = [
        ("optim.beta1=1.5", "optim.beta1"),
        ("optim.beta2=-0.1", "optim.beta2"),
        ("optim.eps=-1", "optim.eps"),
        ("optim.eps=0", "optim.eps"),
        ("optim.weight_decay=-10", "optim.weight_decay"),
        ("schedule.min_lr=1", "schedule.min_lr"),
        ("schedule.min_lr=-1e-5", "schedule.min_lr"),
        ("data.n_val=0", "data.n_val"),
        ("data.max_val_cases=0", "data.max_val_cases"),
    ];
    for (o, key) in refused {
        let mut c = TrainConfig::default();
        let e = c.apply_overrides(&[o]).unwrap_err().to_string();
        assert!(e.contains(key), "{o}: {e}");
    }
    let mut sgd = TrainConfig::default();
    let e = sgd
        .apply_overrides(&[r#"optim={"kind":"sgd","lr":0.01,"momentum":1.0}"#])
        .unwrap_err()
        .to_string();
    assert!(e.contains("optim.momentum"), "{e}");
    // The edges of what is allowed, and every preset, pass.
    let mut c = TrainConfig::default();
    c.apply_overrides(&[
        "optim.beta1=0",
        "optim.weight_decay=0",
        "schedule.min_lr=0.001",
        "data.n_val=1",
    ])
    .unwrap();
    for name in ["kits19", "synthetic-cpu", "kits23", "synthetic-kits23"] {
        kseg::preset(name).unwrap().validate().unwrap();
    }
}

/// `--set train=5 --steps 2` blamed the second override
/// (`"train.steps=2": "steps" is not inside a section`); the first is the
/// one that is wrong.
#[test]
fn an_override_that_replaces_a_section_is_blamed() {
    let mut c = TrainConfig::default();
    let e = c
        .apply_overrides(&["train=5", "train.steps=2"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"train=5\"") && e.contains("is a section"),
        "{e}"
    );
    assert!(!e.contains("train.steps=2"), "{e}");
}

/// With `RUST_BACKTRACE=1` (set in many environments) a candle error was
/// printed twice with a 20-50 line stack trace: one line, said once.
#[test]
fn a_candle_error_is_one_line_with_rust_backtrace_set() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg_path = tmp.path().join("tiny.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&tiny_config(&data, 1)).unwrap(),
    )
    .unwrap();
    let run = tmp.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_kseg"))
        .args(["train", "--config", s(&cfg_path), "--out", s(&run)])
        .args(["--set", "loss.lambda=-1"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert!(errors[0].contains("lambda"), "{e}");
    assert!(
        !e.contains("stack backtrace") && !e.contains("backtrace::"),
        "{e}"
    );
    assert_eq!(e.matches("lambda").count(), 1, "said once: {e}");
}

/// A `--data-dir` whose cases all lack a segmentation said "cannot take 1
/// validation cases from 0 cases"; it says that no case is labelled.
#[test]
fn a_dataset_without_labels_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(&tmp.path().join("synth"), 1);
    let data = tmp.path().join("data");
    volume::synth::write_dataset(&data, 2, &cfg.data.synthetic.generator).unwrap();
    for c in ["case_00000", "case_00001"] {
        std::fs::remove_file(data.join(c).join("segmentation.nii.gz")).unwrap();
    }
    cfg.data.data_dir = Some(data.clone());
    cfg.data.cache_dir = Some(tmp.path().join("cache"));
    let e = kseg::train::Dataset::prepare(&cfg.data)
        .err()
        .expect("no labelled case")
        .to_string();
    assert!(
        e.contains(s(&data)) && e.contains("none of its 2 case folders has a segmentation"),
        "{e}"
    );
}

/// `kseg cv --folds 2`: one run per fold, every case validated by exactly
/// one fold, the pooled out-of-fold scores equal to what each fold's own
/// final validation measured on its cases (the trainer's cached path
/// against predict-and-evaluate), and a second call finds both folds
/// finished and writes the same pool.
#[test]
fn cross_validation_pools_the_out_of_fold_predictions() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(&tmp.path().join("data"), 10);
    let cfg_file = tmp.path().join("tiny.json");
    std::fs::write(&cfg_file, serde_json::to_string(&cfg).unwrap()).unwrap();
    let out = tmp.path().join("cv");
    let run = || {
        let o = Command::new(env!("CARGO_BIN_EXE_kseg"))
            .arg("cv")
            .arg("--config")
            .arg(&cfg_file)
            .arg("--out")
            .arg(&out)
            .args(["--folds", "2"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    };
    run();
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cv_summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["cases"], 6);
    let mut all_val = Vec::new();
    let mut want: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for k in 0..2 {
        let split: volume::Split =
            volume::Split::load(out.join(format!("fold_{k}/split.json"))).unwrap();
        assert_eq!((split.fold, split.folds.len()), (Some(k), 2));
        assert!(split.val.iter().all(|v| !split.train.contains(v)));
        all_val.extend(split.val.clone());
        for c in summary["folds"][k]["validation"]["cases"]
            .as_array()
            .unwrap()
        {
            want.insert(
                c["case"].as_str().unwrap().to_string(),
                (c["kidney"].as_f64().unwrap(), c["tumour"].as_f64().unwrap()),
            );
        }
    }
    all_val.sort();
    all_val.dedup();
    assert_eq!(all_val.len(), 6, "every case validated once");
    let pooled = summary["pooled"]["cases"].as_array().unwrap();
    assert_eq!(pooled.len(), 6);
    for c in pooled {
        let id = c["case"].as_str().unwrap();
        let (k, t) = want[id];
        assert!((c["kidney"].as_f64().unwrap() - k).abs() < 1e-12, "{id}");
        assert!((c["tumour"].as_f64().unwrap() - t).abs() < 1e-12, "{id}");
    }
    let again = run();
    assert!(
        again.contains("fold 0: finished already") && again.contains("fold 1: finished already"),
        "{again}"
    );
    let summary2: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cv_summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary2["pooled"], summary["pooled"]);
}
