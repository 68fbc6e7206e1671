//! ONNX export of a kseg model file (`kseg export --onnx`): the Res-U-Net
//! in evaluation mode as an ONNX graph (opset 17, IR version 8), written
//! through the `onnx-protobuf` crate (rust-protobuf's code generated from
//! the official `onnx.proto`; no protoc anywhere). The input
//! `image` is `[batch, 2·context + 1, height, width]` float32 with dynamic
//! batch and in-plane size (height and width multiples of `2^depth`, as
//! kseg pads them); the output `logits` is `[batch, classes, height,
//! width]`. The weights are the model file's, under their PyTorch names.
//! The graph's metadata holds kseg's [`ModelMeta`] (`kseg_meta`: window,
//! stack, in-plane or voxel size, clean-up, mirroring, label set) and
//! how to decode (`kseg_decode`), so a runtime other than kseg can
//! reproduce its preprocessing and labels.
//!
//! Ops: Conv, BatchNormalization (the running statistics), Add (the
//! residuals, before the activation as kseg's `BnAct`), LeakyRelu,
//! DepthToSpace (`CRD`: PyTorch's and candle's PixelShuffle) and Concat.

use std::path::Path;

use kseg_model::{BatchNorm2d, ResUNetConfig};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};

use crate::error::{InferError, Result};
use crate::model_file::{ModelMeta, read_meta};

/// The ONNX opset the graph uses.
pub const OPSET: i64 = 17;

/// What was exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxSummary {
    /// Nodes of the graph.
    pub nodes: usize,
    /// Weight tensors (initializers).
    pub initializers: usize,
}

/// The graph under construction: nodes in order, and the tensors they
/// read from the model file.
struct Builder<'a> {
    st: &'a safetensors::SafeTensors<'a>,
    path: &'a Path,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    slope: f32,
    next: usize,
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i: v,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::FLOAT.into(),
        f: v,
        ..Default::default()
    }
}

fn attr_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::STRING.into(),
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

impl Builder<'_> {
    /// A fresh value name.
    fn value(&mut self, what: &str) -> String {
        self.next += 1;
        format!("{what}_{}", self.next)
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        what: &str,
    ) -> String {
        let out = self.value(what);
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: format!("{op}_{}", self.next),
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// The model file's tensor `name` as an initializer (once), f32.
    fn weight(&mut self, name: &str) -> Result<String> {
        if self.inits.iter().any(|t| t.name == name) {
            return Ok(name.to_string());
        }
        let t = self.st.tensor(name).map_err(|e| {
            InferError::checkpoint(self.path, format!("tensor {name} missing ({e:?})"))
        })?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(InferError::checkpoint(
                self.path,
                format!("tensor {name} is {:?}, not f32", t.dtype()),
            ));
        }
        self.inits.push(TensorProto {
            name: name.into(),
            dims: t.shape().iter().map(|&d| d as i64).collect(),
            data_type: DataType::FLOAT as i32,
            raw_data: t.data().to_vec(),
            ..Default::default()
        });
        Ok(name.to_string())
    }

    /// `k × k` convolution `prefix` (`.weight`, and `.bias` when `bias`),
    /// stride `stride`, "same" padding for 3 × 3.
    fn conv(&mut self, x: &str, prefix: &str, k: i64, stride: i64, bias: bool) -> Result<String> {
        let w = self.weight(&format!("{prefix}.weight"))?;
        let mut inputs = vec![x.to_string(), w];
        if bias {
            inputs.push(self.weight(&format!("{prefix}.bias"))?);
        }
        let p = k / 2;
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.node(
            "Conv",
            &refs,
            vec![
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("strides", &[stride, stride]),
                attr_ints("pads", &[p, p, p, p]),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
            ],
            "conv",
        ))
    }

    /// BatchNorm `prefix` with its running statistics, plus `residual`,
    /// then LeakyReLU: kseg's `BnAct` in evaluation.
    fn bn_act(&mut self, x: &str, prefix: &str, residual: Option<&str>) -> Result<String> {
        let names = ["weight", "bias", "running_mean", "running_var"]
            .map(|n| self.weight(&format!("{prefix}.{n}")));
        let [g, b, m, v] = names;
        let (g, b, m, v) = (g?, b?, m?, v?);
        let y = self.node(
            "BatchNormalization",
            &[x, &g, &b, &m, &v],
            vec![attr_float("epsilon", BatchNorm2d::EPS as f32)],
            "bn",
        );
        let y = match residual {
            Some(r) => self.node("Add", &[&y, r], vec![], "add"),
            None => y,
        };
        let slope = self.slope;
        Ok(self.node("LeakyRelu", &[&y], vec![attr_float("alpha", slope)], "act"))
    }

    fn upsample(&mut self, x: &str) -> String {
        self.node(
            "DepthToSpace",
            &[x],
            vec![attr_int("blocksize", 2), attr_str("mode", "CRD")],
            "up",
        )
    }

    fn concat(&mut self, a: &str, b: &str) -> String {
        self.node("Concat", &[a, b], vec![attr_int("axis", 1)], "cat")
    }
}

/// `[batch, channels, height, width]` float32 with dynamic batch and size.
fn tensor_info(name: &str, channels: usize) -> ValueInfoProto {
    let dim = |v: dimension::Value| Dimension {
        value: Some(v),
        ..Default::default()
    };
    let shape = TensorShapeProto {
        dim: vec![
            dim(dimension::Value::DimParam("batch".into())),
            dim(dimension::Value::DimValue(channels as i64)),
            dim(dimension::Value::DimParam("height".into())),
            dim(dimension::Value::DimParam("width".into())),
        ],
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::FLOAT as i32,
                shape: Some(shape).into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The graph of `cfg`'s Res-U-Net over the weights in `st`.
fn graph(cfg: &ResUNetConfig, st: &safetensors::SafeTensors, path: &Path) -> Result<GraphProto> {
    let mut b = Builder {
        st,
        path,
        nodes: Vec::new(),
        inits: Vec::new(),
        slope: cfg.negative_slope as f32,
        next: 0,
    };
    let c0 = b.conv("image", "conv0.conv", 3, 1, false)?;
    let first = b.bn_act(&c0, "conv0.bn", None)?;
    let mut h = first.clone();
    let mut feats = Vec::new();
    for i in 0..cfg.depth {
        let p = format!("down.{i}");
        let m = b.conv(&h, &format!("{p}.conv1"), 3, 2, false)?;
        let m = b.bn_act(&m, &format!("{p}.bn1"), None)?;
        let s = b.conv(&h, &format!("{p}.shortcut.conv"), 3, 2, false)?;
        let s = b.bn_act(&s, &format!("{p}.shortcut.bn"), None)?;
        let c = b.conv(&m, &format!("{p}.conv2"), 3, 1, false)?;
        h = b.bn_act(&c, &format!("{p}.bn2"), Some(&s))?;
        feats.push(h.clone());
    }
    for j in 0..cfg.depth.saturating_sub(1) {
        let p = format!("up.{j}");
        let u = b.upsample(&h);
        let skip = feats[cfg.depth - 2 - j].clone();
        let s = b.conv(&skip, &format!("{p}.skip"), 1, 1, true)?;
        let cat = b.concat(&u, &s);
        let m = b.conv(&cat, &format!("{p}.conv1"), 3, 1, false)?;
        let m = b.bn_act(&m, &format!("{p}.bn1"), None)?;
        let c = b.conv(&m, &format!("{p}.conv2"), 3, 1, false)?;
        h = b.bn_act(&c, &format!("{p}.bn2"), Some(&cat))?;
    }
    let u = b.upsample(&h);
    let cat = b.concat(&u, &first);
    let c = b.conv(&cat, "head.conv", 3, 1, false)?;
    let hh = b.bn_act(&c, "head.bn", None)?;
    b.conv(&hh, "head.classifier", 1, 1, true)?;
    // The last node's output is the graph's `logits`.
    if let Some(last) = b.nodes.last_mut() {
        last.output = vec!["logits".into()];
    }
    Ok(GraphProto {
        name: "kseg_resunet".into(),
        node: b.nodes,
        initializer: b.inits,
        input: vec![tensor_info("image", cfg.in_channels)],
        output: vec![tensor_info("logits", cfg.num_classes)],
        ..Default::default()
    })
}

/// How a runtime turns the logits into kseg's labels.
fn decode_text(meta: &ModelMeta) -> String {
    let names = meta.labels.names().join(", ");
    if meta.regions {
        format!(
            "sigmoid per output (the label set {}'s regions); labels by the regions above 0.5 in the set's order; label values: {names}",
            meta.labels.name()
        )
    } else {
        format!("softmax over the channel axis, then argmax; label values: {names}")
    }
}

/// Writes the model file `model` (or checkpoint folder) as an ONNX graph
/// to `out` (atomically).
pub fn export_onnx(model: &Path, out: &Path) -> Result<OnnxSummary> {
    let path = crate::model_file(model);
    let meta = read_meta(&path)?;
    let bytes = std::fs::read(&path).map_err(|e| InferError::io(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| InferError::checkpoint(&path, format!("truncated or damaged ({e:?})")))?;
    let g = graph(&meta.model, &st, &path)?;
    let summary = OnnxSummary {
        nodes: g.node.len(),
        initializers: g.initializer.len(),
    };
    let entry = |k: &str, v: String| StringStringEntryProto {
        key: k.into(),
        value: v,
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        producer_name: "kseg".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "kseg".into(),
        model_version: meta.step as i64,
        doc_string: "kseg Res-U-Net (kidney and kidney-tumour segmentation): 2.5D slice stacks in, logits out; preprocessing and decoding in the metadata".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        graph: Some(g).into(),
        metadata_props: vec![
            entry(
                "kseg_meta",
                serde_json::to_string(&meta).expect("metadata serialises"),
            ),
            entry(
                "kseg_preprocessing",
                format!(
                    "a slice and its {} neighbours on each side as channels, HU clipped to [{}, {}], minus {} over {}; height and width padded (bottom, right) with the window's air to a multiple of {}",
                    meta.context,
                    meta.intensity.hu_min,
                    meta.intensity.hu_max,
                    meta.intensity.mean,
                    meta.intensity.std,
                    1usize << meta.model.depth
                ),
            ),
            entry("kseg_decode", decode_text(&meta)),
        ],
        ..Default::default()
    };
    let data = model
        .write_to_bytes()
        .map_err(|e| InferError::Other(format!("{}: encoding ONNX: {e}", out.display())))?;
    kseg_volume::fs::write_bytes_atomic(out, &data)?;
    Ok(summary)
}
