//! `kseg_infer::onnx::export_onnx` read back by tract-onnx (an ONNX
//! runtime in Rust that shares no code with kseg or candle): its logits
//! equal kseg's forward pass within 1e-4 for two batch sizes and in-plane
//! sizes (dynamic axes), with BatchNorm statistics that are not the
//! identity; the metadata carries kseg's preprocessing.

use candle_core::{DType, Device, ModuleT, Tensor};
use kseg_infer::{ModelMeta, save_model};
use kseg_model::{ResUNet, ResUNetConfig};
use tract_onnx::prelude::*;

#[test]
fn exported_graph_runs_in_tract_as_kseg_does() {
    let dev = Device::Cpu;
    let cfg = ResUNetConfig {
        base_channels: 8,
        depth: 3,
        ..Default::default()
    };
    let (_, vm) = ResUNet::init(&cfg, 11, DType::F32, &dev).unwrap();
    // BatchNorm that is not the identity: random affine and statistics.
    {
        let data = vm.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let bn = name.contains(".bn");
            let (lo, hi) = if name.ends_with("running_var") || (bn && name.ends_with(".weight")) {
                (0.5f32, 1.5f32)
            } else if name.ends_with("running_mean") || (bn && name.ends_with(".bias")) {
                (-0.3, 0.3)
            } else {
                continue;
            };
            var.set(&Tensor::rand(lo, hi, var.shape(), &dev).unwrap())
                .unwrap();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.safetensors");
    save_model(&vm, &ModelMeta::new(cfg), &file).unwrap();
    let onnx = tmp.path().join("model.onnx");
    let summary = kseg_infer::onnx::export_onnx(&file, &onnx).unwrap();
    assert!(summary.nodes > 10 && summary.initializers > 10);
    let (model, _) = ResUNet::load(&cfg, &file, DType::F32, &dev).unwrap();
    let graph = tract_onnx::onnx().model_for_path(&onnx).unwrap();
    for (n, h, w) in [(1usize, 32usize, 32usize), (2, 48, 64)] {
        let x = Tensor::randn(0f32, 1f32, (n, 3, h, w), &dev).unwrap();
        let ours = model
            .forward_t(&x, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let input: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let runnable = graph
            .clone()
            .with_input_fact(0, f32::fact([n, 3, h, w]).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let t = tract_ndarray::Array4::from_shape_vec((n, 3, h, w), input).unwrap();
        let out = runnable.run(tvec!(t.into_tensor().into())).unwrap();
        let theirs = out[0].to_plain_array_view::<f32>().unwrap();
        assert_eq!(theirs.shape(), &[n, cfg.num_classes, h, w]);
        let theirs: Vec<f32> = theirs.iter().copied().collect();
        let scale = ours.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale,
            "{n}x{h}x{w}: logits differ by {worst} (scale {scale})"
        );
    }
    // The metadata: kseg's preprocessing, opset 17.
    use onnx_protobuf::Message;
    let m = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&onnx).unwrap()).unwrap();
    assert_eq!(m.opset_import[0].version, 17);
    let meta = m
        .metadata_props
        .iter()
        .find(|p| p.key == "kseg_meta")
        .expect("kseg_meta");
    let back: ModelMeta = serde_json::from_str(&meta.value).unwrap();
    assert_eq!(back, ModelMeta::new(cfg));
    assert!(
        m.metadata_props
            .iter()
            .any(|p| p.key == "kseg_decode" && p.value.contains("argmax"))
    );
}
