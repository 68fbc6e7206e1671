//! The Res-U-Net frozen for inference on the CPU: what inference allows
//! that training does not.
//!
//! - Every BatchNorm is folded into the convolution before it, once:
//!   `W' = W·γ/σ`, `b' = β − μ·γ/σ` (in f64, rounded once to f32), so
//!   evaluation-mode BatchNorm becomes a bias.
//! - The bias, the residual add and LeakyReLU are the epilogue of each
//!   product tile, applied while it is in cache (`conv/fused.rs`), instead
//!   of a separate pass over the whole output.
//! - Winograd's weight transform is done once per layer, so it pays on
//!   narrower layers and smaller planes than in training
//!   ([`WinogradUse::Inference`]).
//! - PixelShuffle and the skip projection write straight into the
//!   concatenation's channels; no autograd graph, no tensor per op, and
//!   the activations live in buffers reused from one batch to the next
//!   (allocated once, never zeroed again) and freed as soon as the
//!   network no longer needs them.
//!
//! The arithmetic differs from [`ResUNet::forward_t`] by rounding only
//! (the folded weights and the order of the sums): the tests hold the
//! logits within 1e-4 of it with non-trivial BatchNorm statistics.
//! [`FreezeOptions`] turns each lever off on its own, which is how
//! `benches/infer.rs` measures what each buys.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, bail};
use rayon::prelude::*;

use crate::conv::Conv;
use crate::conv::fused::FusedConv;
pub use crate::conv::fused::WinogradUse;
use crate::host::SharedOut;
use crate::norm::BatchNorm2d;
use crate::resunet::{ResUNet, ResUNetConfig};

/// The arithmetic of a [`FrozenNet`]'s convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 throughout: the training graph's logits within rounding.
    #[default]
    F32,
    /// Every convolution but the classifier in int8 (opt-in): weights
    /// quantized per output channel, each sample's input per layer at run
    /// time, exact integer products (AVX-512 VNNI where the CPU has it,
    /// else the same arithmetic in plain Rust, slower; see
    /// [`int8_accelerated`]), the epilogue in f32.
    Int8,
    /// Every convolution's product but the classifier's in bf16 (opt-in):
    /// weights and inputs rounded to bf16 (8 significant bits), the sums
    /// in f32 (AVX512-BF16 where the CPU has it, else the same products in
    /// plain Rust, slower; see [`bf16_accelerated`]); Winograd's
    /// transforms, the unfolding and the epilogue stay f32.
    Bf16,
}

impl Precision {
    /// Its name on the command line (`f32`, `int8`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Whether this CPU runs [`Precision::Int8`] on its AVX-512 VNNI kernel
/// (checked at run time; without it the int8 path gives the same answer,
/// slower).
pub fn int8_accelerated() -> bool {
    crate::host::vnni::available()
}

/// Whether this CPU runs [`Precision::Bf16`] on its AVX512-BF16 kernel
/// (checked at run time; without it the bf16 path runs the same products
/// in plain Rust, slower than f32).
pub fn bf16_accelerated() -> bool {
    crate::host::bf16::available()
}

/// Which of the inference levers a [`FrozenNet`] uses (all, by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezeOptions {
    /// The bias, residual and activation as each tile's epilogue (off: a
    /// second pass over a separate output, as the training graph runs).
    pub fuse: bool,
    /// Which 3×3 layers take Winograd's F(2×2, 3×3).
    pub winograd: WinogradUse,
    /// Activation buffers kept and reused from one forward pass to the
    /// next (off: each allocated afresh, as a tensor per op is).
    pub reuse_buffers: bool,
    /// f32 (the default), int8 or bf16.
    pub precision: Precision,
}

impl Default for FreezeOptions {
    fn default() -> Self {
        FreezeOptions {
            fuse: true,
            winograd: WinogradUse::Inference,
            reuse_buffers: true,
            precision: Precision::F32,
        }
    }
}

/// `down.i` frozen: the main path's two convolutions and the shortcut.
#[derive(Debug)]
struct Down {
    conv1: FusedConv,
    shortcut: FusedConv,
    conv2: FusedConv,
}

/// `up.j` frozen.
#[derive(Debug)]
struct Up {
    skip: FusedConv,
    conv1: FusedConv,
    conv2: FusedConv,
}

/// The Res-U-Net's evaluation-mode forward pass on the CPU, with the
/// inference levers of the module docs. Built from a loaded [`ResUNet`]
/// (any device: the weights are copied to the host once).
#[derive(Debug)]
pub struct FrozenNet {
    cfg: ResUNetConfig,
    opts: FreezeOptions,
    conv0: FusedConv,
    down: Vec<Down>,
    up: Vec<Up>,
    head: FusedConv,
    classifier: FusedConv,
    /// Free activation buffers (each one's length is its filled size).
    pool: Mutex<Vec<Vec<f32>>>,
}

/// `conv` with `bn` folded in (none: its own bias, or zero), then
/// LeakyReLU(`slope`) when given.
fn fold(
    conv: &Conv,
    bn: Option<&BatchNorm2d>,
    slope: Option<f64>,
    opts: &FreezeOptions,
) -> Result<FusedConv> {
    let (wt, bias, stride, pad) = conv.parts();
    let (o, c, k, k2) = wt.dims4()?;
    if k != k2 {
        bail!("frozen Res-U-Net: a {k}x{k2} kernel is not square");
    }
    // f32 on the host (one copy; the products below are taken in f64).
    let host =
        |t: &Tensor| -> Result<Vec<f32>> { t.to_dtype(DType::F32)?.flatten_all()?.to_vec1() };
    let w = host(wt)?;
    let b0 = match bias {
        Some(b) => host(b)?,
        None => vec![0.0; o],
    };
    let (scale, shift) = match bn {
        Some(bn) => bn.scale_shift()?,
        None => (vec![1.0; o], vec![0.0; o]),
    };
    if scale.len() != o {
        bail!(
            "frozen Res-U-Net: a BatchNorm of {} channels after a convolution of {o}",
            scale.len()
        );
    }
    let ckk = c * k * k;
    let wf = w
        .iter()
        .enumerate()
        .map(|(i, &v)| (f64::from(v) * scale[i / ckk]) as f32)
        .collect();
    let bf = (0..o)
        .map(|i| (f64::from(b0[i]) * scale[i] + shift[i]) as f32)
        .collect();
    let f = FusedConv::new(
        wf,
        bf,
        (o, c, k),
        (stride, pad),
        slope.map(|s| s as f32),
        opts.winograd,
    );
    Ok(match opts.precision {
        Precision::Int8 => f.quantized(),
        Precision::Bf16 => f.bf16(),
        Precision::F32 => f,
    })
}

impl FrozenNet {
    /// Freezes `model` (its BatchNorms' running statistics, as
    /// `forward_t(x, false)` uses them) with every lever on.
    pub fn new(model: &ResUNet) -> Result<FrozenNet> {
        FrozenNet::with_options(model, FreezeOptions::default())
    }

    /// Freezes `model` with the levers `opts` asks for.
    pub fn with_options(model: &ResUNet, opts: FreezeOptions) -> Result<FrozenNet> {
        let o = &opts;
        let act = |c: &crate::blocks::ConvBnAct| fold(&c.conv, Some(&c.bn), Some(c.slope), o);
        let down = model
            .down
            .iter()
            .map(|d| {
                Ok(Down {
                    conv1: fold(&d.conv1, Some(&d.bn1), Some(d.slope), o)?,
                    shortcut: act(&d.shortcut.0)?,
                    conv2: fold(&d.conv2, Some(&d.bn2), Some(d.slope), o)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let up = model
            .up
            .iter()
            .map(|u| {
                Ok(Up {
                    skip: fold(&u.skip, None, None, o)?,
                    conv1: fold(&u.conv1, Some(&u.bn1), Some(u.slope), o)?,
                    conv2: fold(&u.conv2, Some(&u.bn2), Some(u.slope), o)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let h = &model.head;
        Ok(FrozenNet {
            cfg: model.cfg,
            opts,
            conv0: act(&model.conv0.0)?,
            down,
            up,
            head: fold(&h.conv, Some(&h.bn), Some(h.slope), o)?,
            // The classifier stays f32 (a 1×1 convolution of a few
            // outputs: little work, and the logits themselves).
            classifier: fold(
                &h.classifier,
                None,
                None,
                &FreezeOptions {
                    precision: Precision::F32,
                    ..opts
                },
            )?,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The frozen model's configuration.
    pub fn config(&self) -> &ResUNetConfig {
        &self.cfg
    }

    /// The levers in use.
    pub fn options(&self) -> FreezeOptions {
        self.opts
    }

    /// A buffer of `len` values (contents unspecified: every user
    /// overwrites all of it).
    fn take(&self, len: usize) -> Vec<f32> {
        if self.opts.reuse_buffers {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            // The smallest free buffer that holds `len` without growing.
            let best = (0..pool.len())
                .filter(|&i| pool[i].capacity() >= len)
                .min_by_key(|&i| pool[i].capacity());
            if let Some(i) = best {
                let mut v = pool.swap_remove(i);
                // Within the capacity: writes only past the old length.
                v.resize(len, 0.0);
                v.truncate(len);
                return v;
            }
        }
        vec![0f32; len]
    }

    /// Gives `v` back to the pool (or frees it).
    fn give(&self, v: Vec<f32>) {
        if self.opts.reuse_buffers {
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(v);
        }
    }

    /// Bytes the pool holds between forward passes.
    pub fn pooled_bytes(&self) -> usize {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.iter().map(|v| v.capacity() * 4).sum()
    }

    /// Frees the pooled buffers.
    pub fn release_buffers(&self) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The logits `(B, num_classes, H, W)` of `x` `(B, in_channels, H, W)`
    /// (any device and float dtype; the result is f32 on the CPU), as
    /// [`ResUNet::forward_t`]`(x, false)` within rounding.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.cfg.check_input(x)?;
        let (b, _, h, w) = x.dims4()?;
        let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let y = self.forward_host(&xs, (b, h, w));
        Tensor::from_vec(y, (b, self.cfg.num_classes, h, w), &Device::Cpu)
    }

    /// [`FrozenNet::forward`] on a row-major `(b, in_channels, h, w)`
    /// slice (already checked: `h`, `w` multiples of 2^depth).
    fn forward_host(&self, x: &[f32], (b, h, w): (usize, usize, usize)) -> Vec<f32> {
        let fuse = self.opts.fuse;
        // One convolution into a new pooled buffer.
        let conv = |f: &FusedConv, x: &[f32], hw: (usize, usize), res: Option<&[f32]>| {
            let (ho, wo) = f.out_hw(hw);
            let mut y = self.take(b * f.o * ho * wo);
            f.run(
                b,
                hw,
                x,
                res,
                &SharedOut::new(&mut y, b, f.o, ho * wo),
                fuse,
            );
            (y, (ho, wo))
        };
        let (first, _) = conv(&self.conv0, x, (h, w), None);
        // Encoder: each level's output and its plane.
        let mut feats: Vec<(Vec<f32>, (usize, usize))> = Vec::with_capacity(self.down.len());
        for (i, d) in self.down.iter().enumerate() {
            let (input, hw) = match i {
                0 => (&first[..], (h, w)),
                _ => (&feats[i - 1].0[..], feats[i - 1].1),
            };
            let (m, ohw) = conv(&d.conv1, input, hw, None);
            let (s, _) = conv(&d.shortcut, input, hw, None);
            let (out, _) = conv(&d.conv2, &m, ohw, Some(&s));
            self.give(m);
            self.give(s);
            feats.push((out, ohw));
        }
        // Decoder: up.j takes the output below and down.(depth-2-j)'s.
        let (mut cur, mut chw) = {
            let (v, hw) = feats.pop().expect("depth ≥ 1");
            (
                v,
                (
                    self.down
                        .last()
                        .map_or(self.cfg.base_channels, |d| d.conv2.o),
                    hw,
                ),
            )
        };
        for u in &self.up {
            let (skip, hw2) = feats.pop().expect("one skip per decoder level");
            let n2 = hw2.0 * hw2.1;
            let (cu, m) = (chw.0 / 4, u.conv1.c);
            let mut cat = self.take(b * m * n2);
            pixel_shuffle_into(&cur, (b, chw.0, chw.1), &mut cat, m);
            u.skip.run(
                b,
                hw2,
                &skip,
                None,
                &SharedOut::rows_of(&mut cat, (b, m, n2), cu..m),
                fuse,
            );
            self.give(cur);
            self.give(skip);
            let (m1, _) = conv(&u.conv1, &cat, hw2, None);
            let (out, _) = conv(&u.conv2, &m1, hw2, Some(&cat));
            self.give(m1);
            self.give(cat);
            (cur, chw) = (out, (u.conv2.o, hw2));
        }
        // Head: [PixelShuffle(x), conv0's output], conv, classifier.
        let n = h * w;
        let (cu, base) = (chw.0 / 4, self.cfg.base_channels);
        let m = self.head.c;
        let mut cat = self.take(b * m * n);
        pixel_shuffle_into(&cur, (b, chw.0, chw.1), &mut cat, m);
        cat.par_chunks_mut(m * n)
            .zip(first.par_chunks(base * n))
            .for_each(|(dst, src)| dst[cu * n..].copy_from_slice(src));
        self.give(cur);
        self.give(first);
        let (hd, _) = conv(&self.head, &cat, (h, w), None);
        self.give(cat);
        let k = self.classifier.o;
        let mut logits = vec![0f32; b * k * n];
        self.classifier.run(
            b,
            (h, w),
            &hd,
            None,
            &SharedOut::new(&mut logits, b, k, n),
            fuse,
        );
        self.give(hd);
        logits
    }
}

/// PixelShuffle(2) of `x` `(b, c, (h, w))` into the first `c/4` channels of
/// each sample of `dst` `(b, m, 2h, 2w)`: `dst[o, 2i+p, 2j+q] =
/// x[4o + 2p + q, i, j]` (PyTorch's order).
fn pixel_shuffle_into(
    x: &[f32],
    (b, c, (h, w)): (usize, usize, (usize, usize)),
    dst: &mut [f32],
    m: usize,
) {
    let (cu, n2, w2) = (c / 4, 4 * h * w, 2 * w);
    assert!(
        x.len() == b * c * h * w && dst.len() == b * m * n2 && cu <= m,
        "pixel shuffle: {} values for {b}x{c}x{h}x{w} into {} of {m} channels",
        x.len(),
        dst.len()
    );
    dst.par_chunks_mut(m * n2)
        .zip(x.par_chunks(c * h * w))
        .for_each(|(ds, xs)| {
            for oc in 0..cu {
                let plane = &mut ds[oc * n2..][..n2];
                for (yy, row) in plane.chunks_exact_mut(w2).enumerate() {
                    let (i, p) = (yy / 2, yy % 2);
                    let a = &xs[((4 * oc + 2 * p) * h + i) * w..][..w];
                    let bq = &xs[((4 * oc + 2 * p + 1) * h + i) * w..][..w];
                    crate::host::interleave(row, a, bq);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, ModuleT, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// A model whose BatchNorms have non-trivial statistics and affine
    /// parameters, so that folding them is exercised.
    fn model(base: usize, depth: usize, classes: usize) -> ResUNet {
        let cfg = ResUNetConfig {
            base_channels: base,
            depth,
            num_classes: classes,
            ..Default::default()
        };
        let (model, varmap) = ResUNet::init(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let n = var.elem_count();
            let v: Vec<f32> = if name.ends_with("running_var") {
                (0..n).map(|_| 0.2 + rng.random::<f32>()).collect()
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                (0..n).map(|_| rng.random::<f32>() - 0.5).collect()
            } else if name.contains(".bn") && name.ends_with("weight") {
                (0..n).map(|_| 0.5 + rng.random::<f32>()).collect()
            } else {
                continue;
            };
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        drop(data);
        model
    }

    fn input(b: usize, h: usize, w: usize, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..b * 3 * h * w)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (b, 3, h, w), &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(D::Minus1).unwrap().to_scalar::<f32>().unwrap() / scale
    }

    /// The frozen network's logits against the training graph's
    /// evaluation-mode forward (itself checked against PyTorch in
    /// kseg-train's interop tests), for every combination of the levers,
    /// on planes where Winograd does and does not apply, twice in a row
    /// (the second pass on reused buffers) and then at another size.
    #[test]
    fn frozen_logits_match_the_training_graph() {
        let net = model(16, 3, 3);
        let shapes = [(2, 64, 48), (1, 32, 32), (3, 16, 24)];
        let wants: Vec<_> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(b, h, w))| {
                let x = input(b, h, w, i as u64);
                let y = net.forward_t(&x, false).unwrap();
                (x, y)
            })
            .collect();
        for fuse in [true, false] {
            for winograd in [
                WinogradUse::Off,
                WinogradUse::Training,
                WinogradUse::Inference,
            ] {
                for reuse_buffers in [true, false] {
                    let opts = FreezeOptions {
                        fuse,
                        winograd,
                        reuse_buffers,
                        precision: Precision::F32,
                    };
                    let frozen = FrozenNet::with_options(&net, opts).unwrap();
                    for (x, want) in wants.iter().chain(&wants[..1]) {
                        let got = frozen.forward(x).unwrap();
                        assert_eq!(got.dims(), want.dims());
                        let err = max_rel(&got, want);
                        assert!(err < 1e-4, "{opts:?} {:?}: {err:.2e}", x.dims());
                    }
                    assert_eq!(frozen.pooled_bytes() > 0, reuse_buffers);
                }
            }
        }
    }

    /// Region models (sigmoid heads, another class count) and depth 1
    /// (no decoder block: the head takes the encoder's output directly).
    #[test]
    fn other_shapes_of_network() {
        for (base, depth, classes) in [(8, 1, 2), (8, 4, 4)] {
            let net = model(base, depth, classes);
            let x = input(2, 32, 48, 5);
            let want = net.forward_t(&x, false).unwrap();
            let got = FrozenNet::new(&net).unwrap().forward(&x).unwrap();
            let err = max_rel(&got, &want);
            assert!(err < 1e-4, "base {base} depth {depth}: {err:.2e}");
        }
    }

    /// The int8 and bf16 networks against f32: the logits within the
    /// rounding's error (a few per cent of their scale for int8, under
    /// one for bf16, on this untrained model) but not f32's, and the
    /// argmax agreeing almost everywhere; the same answer twice.
    #[test]
    fn lower_precision_logits_are_near_f32() {
        let net = model(16, 3, 3);
        let x = input(2, 64, 48, 4);
        let want = FrozenNet::new(&net).unwrap().forward(&x).unwrap();
        for (precision, tol) in [(Precision::Int8, 0.05), (Precision::Bf16, 0.01)] {
            let lower = FrozenNet::with_options(
                &net,
                FreezeOptions {
                    precision,
                    ..Default::default()
                },
            )
            .unwrap();
            let got = lower.forward(&x).unwrap();
            let err = max_rel(&got, &want);
            assert!(err > 1e-5 && err < tol, "{precision:?}: {err:.2e}");
            let agree = got
                .argmax(1)
                .unwrap()
                .eq(&want.argmax(1).unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(agree > 0.98, "{precision:?} labels agree on {agree}");
            let again = lower.forward(&x).unwrap();
            assert_eq!(max_rel(&again, &got), 0.0);
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let net = FrozenNet::new(&model(8, 2, 3)).unwrap();
        for x in [
            input(1, 30, 32, 0),
            input(1, 32, 32, 0).narrow(1, 0, 2).unwrap(),
        ] {
            assert!(net.forward(&x).is_err(), "{:?}", x.dims());
        }
    }

    /// PixelShuffle against candle's (PyTorch's order).
    #[test]
    fn pixel_shuffle_matches_candle() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let v: Vec<f32> = (0..2 * 12 * 8 * 21).map(|_| rng.random::<f32>()).collect();
        let x = Tensor::from_vec(v, (2, 12, 8, 21), &Device::Cpu).unwrap();
        let (b, c, h, w) = x.dims4().unwrap();
        let want = candle_nn::ops::pixel_shuffle(&x, 2).unwrap();
        let m = 5;
        let mut dst = vec![0f32; b * m * 4 * h * w];
        pixel_shuffle_into(
            &x.flatten_all().unwrap().to_vec1().unwrap(),
            (b, c, (h, w)),
            &mut dst,
            m,
        );
        let got = Tensor::from_vec(dst, (b, m, 2 * h, 2 * w), &Device::Cpu)
            .unwrap()
            .narrow(1, 0, c / 4)
            .unwrap();
        assert_eq!(max_rel(&got, &want), 0.0);
    }
}
