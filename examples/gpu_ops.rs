//! The per-op harness of the GPU path (docs/CUDA.md, "The prepared GPU
//! run"): for every convolution class of the Res-U-Net (each encoder
//! level's stride-2 and stride-1 3×3 convolutions, `conv0`, the 1×1
//! classifier) the forward, the data gradient and the filter gradient;
//! BatchNorm + LeakyReLU forward and backward at each level; the combined
//! loss with its gradient; the AdamW step over the whole model. Each is
//! timed with candle's ops and with kseg's (`gpu_ops = kseg`: where kseg
//! has no CUDA op yet both rows run the same code), with CUDA events on a
//! GPU (wall clock after a synchronisation on the CPU), and checked: kseg's
//! against candle's on the device, and against the CPU.
//!
//! ```text
//! cargo run --release --features cudnn --example gpu_ops -- --device cuda --json ops.json
//! cargo run --release --example gpu_ops -- --device cpu --batch 1 --size 64   # the harness itself, anywhere
//! ```
//!
//! The data gradient's time is the backward with the input tracked less
//! the backward with the input a constant (which computes the filter
//! gradient alone). Prints one Markdown table; `--json` writes every row.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};
use clap::Parser;
use kseg::infer::runtime::{self, CudaSetup, GpuOps};
use kseg::loss::{SegLoss, SegLossConfig};
use kseg::model::conv::Conv;
use kseg::model::{BatchNorm2d, ResUNet, ResUNetConfig};
use kseg::train::{AdamW, AdamWConfig, Optimiser};
use serde::Serialize;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Per-op timing and correctness of the GPU path (docs/CUDA.md)")]
struct Args {
    /// cuda, cuda:N, cpu or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// In-plane size of the network's input.
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Base width of the model (32: the reference method's).
    #[arg(long, default_value_t = 32)]
    base: usize,
    /// Encoder depth.
    #[arg(long, default_value_t = 5)]
    depth: usize,
    /// Timed repetitions per op (after one warm-up).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Allow TF32 math (CUDA).
    #[arg(long)]
    tf32: bool,
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One op timed with one implementation.
#[derive(Serialize)]
struct Row {
    op: String,
    shape: String,
    ops: &'static str,
    forward_ms: f64,
    data_grad_ms: Option<f64>,
    filter_grad_ms: Option<f64>,
    /// Largest relative difference from candle's result on the device.
    vs_candle: Option<f64>,
    /// Largest relative difference from the CPU's result.
    vs_cpu: Option<f64>,
    error: Option<String>,
}

/// Milliseconds per call of `f` (mean of `reps` after a warm-up), with
/// CUDA events on a GPU.
fn time(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        let stream = d.cuda_stream();
        let start = stream
            .record_event(None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for _ in 0..reps {
            f()?;
        }
        let end = stream
            .record_event(None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        end.synchronize().map_err(|e| anyhow::anyhow!("{e}"))?;
        let ms = start.elapsed_ms(&end).map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(f64::from(ms) / reps as f64);
    }
    let t0 = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / reps as f64)
}

/// Largest `|a - b|` relative to the largest `|b|`.
fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let scale = b.abs()?.max(0)?.to_scalar::<f64>()?.max(1e-30);
    Ok((a - b)?.abs()?.max(0)?.to_scalar::<f64>()? / scale)
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        values(shape.iter().product(), seed),
        shape,
        dev,
    )?)
}

/// A convolution with seeded weights (and bias) on `dev`, and its weight.
fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    bias: bool,
    dev: &Device,
) -> Result<(Conv, Var)> {
    let w = Var::from_tensor(
        &tensor(&[cout, cin, k, k], 11, dev)?.affine(1.0 / ((cin * k * k) as f64).sqrt(), 0.0)?,
    )?;
    let b = if bias {
        Some(tensor(&[cout], 12, dev)?)
    } else {
        None
    };
    let cfg = Conv2dConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    Ok((
        Conv::new(candle_nn::Conv2d::new(w.as_tensor().clone(), b, cfg)),
        w,
    ))
}

/// The outputs of one op run (forward output and gradients), to compare.
type Outputs = Vec<Tensor>;

/// One convolution: forward, backward with and without the input tracked.
fn conv_row(
    args: &Args,
    dev: &Device,
    (cin, cout, k, stride, bias, h): (usize, usize, usize, usize, bool, usize),
) -> Result<(f64, f64, f64, Outputs)> {
    let (layer, w) = conv(cin, cout, k, stride, bias, dev)?;
    let x = Var::from_tensor(&tensor(&[args.batch, cin, h, h], 13, dev)?)?;
    let xc = x.as_tensor().detach();
    let fwd = time(dev, args.reps, || {
        layer.forward(&xc)?;
        Ok(())
    })?;
    let both = time(dev, args.reps, || {
        layer.forward(x.as_tensor())?.sum_all()?.backward()?;
        Ok(())
    })?;
    let filter = time(dev, args.reps, || {
        layer.forward(&xc)?.sum_all()?.backward()?;
        Ok(())
    })?;
    let y = layer.forward(x.as_tensor())?;
    let g = (y.sqr()?.sum_all()? * 0.5)?.backward()?;
    let dx = g.get(x.as_tensor()).cloned();
    let dw = g.get(w.as_tensor()).cloned();
    let mut out = vec![y];
    out.extend(dx);
    out.extend(dw);
    Ok((fwd, (both - filter).max(0.0), filter, out))
}

/// BatchNorm + LeakyReLU (train mode) forward and backward.
fn bn_row(args: &Args, dev: &Device, (c, h): (usize, usize)) -> Result<(f64, f64, Outputs)> {
    let vm = VarMap::new();
    let bn = BatchNorm2d::new(c, VarBuilder::from_varmap(&vm, DType::F32, dev))?;
    let x = Var::from_tensor(&tensor(&[args.batch, c, h, h], 14, dev)?)?;
    let fwd = time(dev, args.reps, || {
        bn.forward_act(x.as_tensor(), None, 0.01, true)?;
        Ok(())
    })?;
    let both = time(dev, args.reps, || {
        bn.forward_act(x.as_tensor(), None, 0.01, true)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    let y = bn.forward_act(x.as_tensor(), None, 0.01, true)?;
    let g = (y.sqr()?.sum_all()? * 0.5)?.backward()?;
    let mut out = vec![y];
    out.extend(g.get(x.as_tensor()).cloned());
    Ok((fwd, (both - fwd).max(0.0), out))
}

/// The combined loss (weighted CE + Lovász) and its gradient.
fn loss_row(args: &Args, dev: &Device) -> Result<(f64, f64, Outputs)> {
    let (b, s) = (args.batch, args.size);
    let logits = Var::from_tensor(&tensor(&[b, 3, s, s], 15, dev)?.affine(3.0, 0.0)?)?;
    let labels: Vec<u32> = values(b * s * s, 16)
        .iter()
        .map(|v| ((v + 1.0) * 1.5) as u32 % 3)
        .collect();
    let labels = Tensor::from_vec(labels, (b, s, s), dev)?;
    let weights = Tensor::new(&[0.2f32, 1.0, 3.0], dev)?;
    let loss = SegLoss::new(SegLossConfig::default(), Some(weights))?;
    let fwd = time(dev, args.reps, || {
        loss.forward(logits.as_tensor(), &labels)?;
        Ok(())
    })?;
    let both = time(dev, args.reps, || {
        loss.forward(logits.as_tensor(), &labels)?
            .total
            .backward()?;
        Ok(())
    })?;
    let parts = loss.forward(logits.as_tensor(), &labels)?;
    let g = parts.total.backward()?;
    let mut out = vec![parts.total.clone()];
    out.extend(g.get(logits.as_tensor()).cloned());
    Ok((fwd, (both - fwd).max(0.0), out))
}

/// AdamW over the model's variables with seeded gradients (3 steps).
fn adamw_row(args: &Args, dev: &Device) -> Result<(f64, Outputs)> {
    let cfg = ResUNetConfig {
        base_channels: args.base,
        depth: args.depth,
        ..Default::default()
    };
    let (_, varmap) = ResUNet::init(&cfg, 3, DType::F32, dev)?;
    let vars: HashMap<String, Var> = varmap.data().lock().expect("varmap").clone();
    let mut opt = AdamW::new(&vars, AdamWConfig::default())?;
    let mut names: Vec<&String> = vars.keys().filter(|n| !n.contains("running_")).collect();
    names.sort();
    // A loss whose gradient is a fixed pseudo-random tensor per variable.
    let loss = || -> Result<Tensor> {
        let mut total = Tensor::zeros((), DType::F32, dev)?;
        for (i, n) in names.iter().enumerate() {
            let v = vars[*n].as_tensor();
            let g = tensor(v.dims(), 100 + i as u64, dev)?;
            total = (total + (v * g)?.sum_all()?)?;
        }
        Ok(total)
    };
    let l = loss()?;
    let ms = time(dev, args.reps, || {
        opt.step(&l.backward()?)?;
        Ok(())
    })?;
    let out = names
        .iter()
        .map(|n| vars[*n].as_tensor().copy())
        .collect::<candle_core::Result<_>>()?;
    Ok((ms, out))
}

/// Runs `f` with candle's ops and with kseg's, on `dev` and on the CPU
/// (for the reference), and makes the two rows.
fn compare(
    dev: &Device,
    op: &str,
    shape: String,
    mut f: impl FnMut(&Device) -> Result<(f64, Option<f64>, Option<f64>, Outputs)>,
    rows: &mut Vec<Row>,
) {
    let mut run = |ops: GpuOps, d: &Device| {
        runtime::set_gpu_ops(ops);
        kseg::loss::set_gpu_ops(ops == GpuOps::Kseg);
        f(d)
    };
    let cpu = if dev.is_cpu() {
        None
    } else {
        run(GpuOps::Candle, &Device::Cpu).ok()
    };
    let candle = run(GpuOps::Candle, dev);
    let kseg = run(GpuOps::Kseg, dev);
    runtime::set_gpu_ops(GpuOps::Candle);
    kseg::loss::set_gpu_ops(false);
    let worst = |a: &Outputs, b: &Outputs| -> Option<f64> {
        (a.len() == b.len()).then(|| {
            a.iter()
                .zip(b)
                .map(|(x, y)| rel(x, y).unwrap_or(f64::INFINITY))
                .fold(0.0, f64::max)
        })
    };
    for (name, res) in [("candle", &candle), ("kseg", &kseg)] {
        let row = match res {
            Ok((fwd, dg, fg, out)) => Row {
                op: op.to_string(),
                shape: shape.clone(),
                ops: name,
                forward_ms: *fwd,
                data_grad_ms: *dg,
                filter_grad_ms: *fg,
                vs_candle: candle.as_ref().ok().and_then(|c| worst(out, &c.3)),
                vs_cpu: cpu.as_ref().and_then(|c| worst(out, &c.3)),
                error: None,
            },
            Err(e) => Row {
                op: op.to_string(),
                shape: shape.clone(),
                ops: name,
                forward_ms: f64::NAN,
                data_grad_ms: None,
                filter_grad_ms: None,
                vs_candle: None,
                vs_cpu: None,
                error: Some(format!("{e:#}")),
            },
        };
        rows.push(row);
    }
}

fn main() -> Result<()> {
    // SAFETY: first thing in main, no other thread yet.
    unsafe { kseg::init_cpu_runtime() };
    let args = Args::parse();
    let dev = runtime::device(&args.device)?;
    runtime::setup_device(&dev, CudaSetup { tf32: args.tf32 })?;
    if args.size % (1 << args.depth) != 0 {
        bail!("--size {} must be a multiple of 2^depth", args.size);
    }
    let mut rows = Vec::new();
    let b = args.base;
    let mut convs = vec![("conv0", (3, b, 3, 1, false, args.size))];
    for i in 0..args.depth {
        let (c, h) = (b << i, args.size >> i);
        convs.push(("down s2", (c, 2 * c, 3, 2, false, h)));
        convs.push(("down s1", (2 * c, 2 * c, 3, 1, false, h / 2)));
    }
    convs.push(("classifier 1x1", (b, 3, 1, 1, true, args.size)));
    for (name, shape) in convs {
        let (cin, cout, k, s, _, h) = shape;
        let label = format!("{}x{cin}x{h}x{h} -> {cout}, k{k} s{s}", args.batch);
        compare(
            &dev,
            &format!("conv {name}"),
            label,
            |d| {
                let (f, dg, fg, out) = conv_row(&args, d, shape)?;
                Ok((f, Some(dg), Some(fg), out))
            },
            &mut rows,
        );
    }
    for i in 0..=args.depth {
        let (c, h) = (b << i, args.size >> i);
        compare(
            &dev,
            "batchnorm+act",
            format!("{}x{c}x{h}x{h}", args.batch),
            |d| {
                let (f, bw, out) = bn_row(&args, d, (c, h))?;
                Ok((f, Some(bw), None, out))
            },
            &mut rows,
        );
    }
    compare(
        &dev,
        "loss (ce + lovasz)",
        format!("{}x3x{}x{}", args.batch, args.size, args.size),
        |d| {
            let (f, bw, out) = loss_row(&args, d)?;
            Ok((f, Some(bw), None, out))
        },
        &mut rows,
    );
    compare(
        &dev,
        "adamw step",
        format!("base {} depth {}", args.base, args.depth),
        |d| {
            let (ms, out) = adamw_row(&args, d)?;
            Ok((ms, None, None, out))
        },
        &mut rows,
    );
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    println!(
        "| op | shape | ops | forward ms | data grad ms | filter grad ms | vs candle | vs cpu | error |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.3} | {} | {} | {} | {} | {} |",
            r.op,
            r.shape,
            r.ops,
            r.forward_ms,
            opt(r.data_grad_ms, 3),
            opt(r.filter_grad_ms, 3),
            r.vs_candle.map_or("-".into(), |v| format!("{v:.1e}")),
            r.vs_cpu.map_or("-".into(), |v| format!("{v:.1e}")),
            r.error.as_deref().unwrap_or("")
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "device": runtime::device_name(&dev),
            "tf32": args.tf32,
            "batch": args.batch,
            "size": args.size,
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")?;
    }
    if rows.iter().any(|r| r.error.is_some()) {
        bail!("some ops failed (the table's error column)");
    }
    Ok(())
}
