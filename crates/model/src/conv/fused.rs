//! The convolution as inference runs it ([`crate::frozen`]): the weights
//! with the following BatchNorm folded in (so the normalisation is a bias),
//! Winograd's weight transform done once per layer instead of per call,
//! and the bias, the residual add and LeakyReLU applied to each tile or
//! band of output right after its product, while it is still in cache (the
//! epilogue), written straight into the caller's buffer (the channels of a
//! concatenation, say). No autograd, no tensor per op.
//!
//! The products, the tiling and the Winograd transforms are the training
//! kernels' (`cpu.rs`, `winograd.rs`); only where the output goes and what
//! happens to it on the way differ. With `fuse` off the epilogue runs as a
//! second pass over a separate output (what the training graph does: a
//! convolution, then a BatchNorm-and-activation op), which is how
//! `benches/infer.rs` measures what the fusion buys.

use std::cell::RefCell;
use std::sync::OnceLock;

use super::cpu::Dims;
use super::im2col::Geo;
use super::int8::QConv;
use super::tiling::{TILE_FLOATS, TILE_MIN_COLS, Tiling, spread};
use super::winograd;
use crate::host::bf16::{self, PackedA};
use crate::host::{DstMat, Kernels, Mat, SharedOut, sgemm_on};

/// Which 3×3 stride-1 layers inference runs through Winograd's F(2×2, 3×3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WinogradUse {
    /// None: im2col and gemm for every layer.
    Off,
    /// The training kernels' rule (`winograd::applies`: wide layers on
    /// large planes), where the weight transform is paid on every call.
    Training,
    /// With the weights transformed once, the transforms of the input and
    /// the output are all that is left to pay for: every 3×3 stride-1
    /// layer with at least [`INFER_MIN_CHANNELS`] channels in and out on a
    /// plane of at least [`INFER_MIN_PLANE`] pixels.
    #[default]
    Inference,
}

/// Fewest channels in and out for [`WinogradUse::Inference`].
pub const INFER_MIN_CHANNELS: usize = 16;
/// Fewest pixels per plane for [`WinogradUse::Inference`] (16×16).
pub const INFER_MIN_PLANE: usize = 16 * 16;

/// A thread's product buffers, kept from one call to the next: fresh ones
/// are fresh pages, and the first touch of a page (the kernel clearing
/// it) was a tenth of a `kseg predict` (`perf`, `clear_page_erms`).
#[derive(Default)]
struct Buffers {
    winograd: winograd::Scratch,
    /// im2col's patches.
    cols: Vec<f32>,
    /// The patches packed to bf16.
    packed: Vec<u32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::default();
}

/// `f` on this thread's [`Buffers`], or on fresh ones when they are in use
/// (a thread waiting inside a product may run another convolution's work
/// item, rayon's work stealing).
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        Err(_) => f(&mut Buffers::default()),
    })
}

/// One convolution, its BatchNorm folded in, and its epilogue.
#[derive(Debug)]
pub(crate) struct FusedConv {
    pub(crate) c: usize,
    pub(crate) o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// `(o, c·k·k)`, row-major.
    w: Vec<f32>,
    bias: Vec<f32>,
    /// LeakyReLU's negative slope; `None`: no activation.
    slope: Option<f32>,
    winograd: WinogradUse,
    /// Winograd's `U = G g Gᵀ` of `w`, made on first use.
    u: OnceLock<Vec<f32>>,
    /// The layer quantized to int8 (`FusedConv::quantized`), which then
    /// runs it instead.
    int8: Option<QConv>,
    /// The layer's products in bf16 (`FusedConv::bf16`): its packed
    /// weights.
    bf16: Option<Bf16Weights>,
}

/// A bf16 layer's weights packed for `host/bf16.rs`'s product, each form
/// made on first use (whether a layer runs Winograd depends on each
/// call's plane).
#[derive(Debug, Default)]
struct Bf16Weights {
    /// `w` as one `(o, c·k·k)` operand.
    w: OnceLock<PackedA>,
    /// Winograd's 16 `U_ξ`.
    u: OnceLock<Vec<PackedA>>,
}

impl FusedConv {
    /// `w`: `(o, c, k, k)` row-major, `bias`: `o` values.
    pub(crate) fn new(
        w: Vec<f32>,
        bias: Vec<f32>,
        (o, c, k): (usize, usize, usize),
        (stride, pad): (usize, usize),
        slope: Option<f32>,
        winograd: WinogradUse,
    ) -> FusedConv {
        assert!(
            w.len() == o * c * k * k && bias.len() == o,
            "FusedConv: {} weights and {} biases for {o}x{c}x{k}x{k}",
            w.len(),
            bias.len()
        );
        FusedConv {
            c,
            o,
            k,
            stride,
            pad,
            w,
            bias,
            slope,
            winograd,
            u: OnceLock::new(),
            int8: None,
            bf16: None,
        }
    }

    /// The layer's products in bf16 from now on (`host/bf16.rs`: both
    /// operands rounded to bf16, the sums in f32); the transforms, the
    /// unfolding and the epilogue stay f32, and so do `fuse` and the
    /// Winograd rule.
    pub(crate) fn bf16(mut self) -> FusedConv {
        self.bf16 = Some(Bf16Weights::default());
        self
    }

    /// The layer run in int8 from now on (`conv/int8.rs`): weights
    /// quantized per output channel, each sample's input at run time. The
    /// f32 weights are dropped (the int8 layer is all that runs); `fuse`
    /// and the Winograd rule do not apply to it.
    pub(crate) fn quantized(mut self) -> FusedConv {
        let q = QConv::new(
            &self.w,
            &self.bias,
            (self.o, self.c, self.k),
            (self.stride, self.pad),
            self.slope,
        );
        self.int8 = Some(q);
        self.w = Vec::new();
        self
    }

    fn dims(&self, b: usize, (h, w): (usize, usize)) -> Dims {
        Dims {
            b,
            c: self.c,
            o: self.o,
            geo: Geo::new(h, w, self.k, self.stride, self.pad),
        }
    }

    /// The output plane for an `h × w` input.
    pub(crate) fn out_hw(&self, hw: (usize, usize)) -> (usize, usize) {
        let g = self.dims(1, hw).geo;
        (g.ho, g.wo)
    }

    /// Whether a call on `d` runs through Winograd.
    fn winograd_applies(&self, d: &Dims) -> bool {
        let g = &d.geo;
        let shape = g.k == 3 && g.stride == 1 && g.pad == 1;
        match self.winograd {
            WinogradUse::Off => false,
            WinogradUse::Training => winograd::applies(d),
            WinogradUse::Inference => {
                shape && d.c.min(d.o) >= INFER_MIN_CHANNELS && g.h * g.w >= INFER_MIN_PLANE
            }
        }
    }

    /// `y = act(W ⋆ x + bias [+ residual])` of `b` samples of `h × w`
    /// (`x`: `(b, c, h, w)`; `residual`: `(b, o, ho, wo)`) into `out`
    /// (`b` samples of `o` rows of `ho·wo`). With `fuse` off, the product
    /// goes to a buffer of its own first and the epilogue is a second pass.
    pub(crate) fn run(
        &self,
        b: usize,
        hw: (usize, usize),
        x: &[f32],
        residual: Option<&[f32]>,
        out: &SharedOut,
        fuse: bool,
    ) {
        if let Some(q) = &self.int8 {
            q.run(b, hw, x, residual, out);
            return;
        }
        let d = self.dims(b, hw);
        let n = d.n();
        assert!(
            x.len() == d.b * d.chw() && residual.is_none_or(|r| r.len() == b * self.o * n),
            "FusedConv: input {} or residual for {d:?}",
            x.len()
        );
        if fuse {
            self.products(&d, x, residual, out, true);
            return;
        }
        let mut raw = vec![0f32; b * self.o * n];
        self.products(&d, x, None, &SharedOut::new(&mut raw, b, self.o, n), false);
        spread(b, |items, _| {
            for bi in items {
                let mut dst = out.block(bi, 0..n);
                for oc in 0..self.o {
                    dst.row(oc)
                        .copy_from_slice(&raw[(bi * self.o + oc) * n..][..n]);
                }
                self.epilogue(
                    &mut dst,
                    true,
                    residual.map(|r| &r[bi * self.o * n..]),
                    n,
                    0,
                );
            }
        });
    }

    /// The products into `out`, each tile or band followed by the
    /// epilogue when `fuse` (else without bias: the raw product).
    fn products(&self, d: &Dims, x: &[f32], residual: Option<&[f32]>, out: &SharedOut, fuse: bool) {
        let (o, n, chw) = (self.o, d.n(), d.chw());
        let res = |bi: usize| residual.map(|r| &r[bi * o * n..][..o * n]);
        if self.winograd_applies(d) {
            let (c, h, w) = (d.c, d.geo.h, d.geo.w);
            let product = match &self.bf16 {
                Some(p) => winograd::Product::Bf16(p.u.get_or_init(|| {
                    winograd::pack_weights_bf16(&winograd::transform_weights(&self.w, o, c), o, c)
                })),
                None => winograd::Product::F32(
                    self.u
                        .get_or_init(|| winograd::transform_weights(&self.w, o, c)),
                    Kernels::Fastest,
                ),
            };
            let bands = winograd::Bands::new(d);
            let tw = bands.tw;
            spread(d.b * bands.count, |items, threads| {
                with_buffers(|buf| {
                    let s = &mut buf.winograd;
                    for item in items {
                        let (bi, trs) = bands.item(item);
                        winograd::band_products(
                            &x[bi * chw..][..chw],
                            (c, h, w),
                            (trs.clone(), tw),
                            (&product, o),
                            s,
                            threads,
                        );
                        let (ya, yb) = (2 * trs.start, (2 * trs.end).min(h));
                        let mut dst = out.block(bi, ya * w..yb * w);
                        let bias = fuse.then_some(&self.bias[..]);
                        winograd::transform_output(&s.m, o, trs, (tw, h, w), bias, &mut dst);
                        if fuse {
                            self.epilogue(&mut dst, false, res(bi), n, ya * w);
                        }
                    }
                })
            });
            return;
        }
        let (ckk, wo) = (d.ckk(), d.geo.wo);
        let tiling = Tiling::new(
            &d.geo,
            ckk,
            d.b,
            rayon::current_num_threads(),
            (TILE_FLOATS, TILE_MIN_COLS),
        );
        spread(d.b * tiling.tiles, |items, threads| {
            with_buffers(|buf| {
                let Buffers { cols, packed, .. } = buf;
                for item in items {
                    let (bi, t) = (item / tiling.tiles, item % tiling.tiles);
                    let oys = tiling.oys(t, d.geo.ho);
                    let (j0, nc) = (oys.start * wo, oys.len() * wo);
                    let xb = &x[bi * chw..][..chw];
                    let mut dst = out.block(bi, j0..j0 + nc);
                    if fuse {
                        dst.fill_rows(&self.bias);
                    }
                    let w_m = Mat::rows(&self.w, ckk);
                    if let Some(p) = &self.bf16 {
                        let pw = p.w.get_or_init(|| PackedA::new(w_m, (o, ckk)));
                        if threads == 1 && !d.pointwise() {
                            // Unfolded two rows at a time straight into
                            // the packed words: the patches are never
                            // written out.
                            let row = |r, dst: &mut [f32]| d.patch_row(xb, r, oys.clone(), dst);
                            bf16::pack_b_rows((ckk, nc), row, cols, packed);
                        } else {
                            let patches = d.patches(xb, oys, cols, threads);
                            bf16::pack_b(patches, (ckk, nc), packed, threads);
                        }
                        bf16::gemm(&mut dst, fuse, pw, packed, nc, threads);
                    } else {
                        let patches = d.patches(xb, oys, cols, threads);
                        sgemm_on(
                            Kernels::Fastest,
                            &mut dst,
                            fuse,
                            w_m,
                            patches,
                            (o, nc, ckk),
                            threads,
                        );
                    }
                    if fuse {
                        self.epilogue(&mut dst, false, res(bi), n, j0);
                    }
                }
            })
        });
    }

    /// On a block of one sample (`o` rows, output positions `j0 ..` of
    /// `n`): the bias (when `bias`), the residual (that sample's `(o, n)`)
    /// and the activation.
    fn epilogue(
        &self,
        dst: &mut DstMat,
        bias: bool,
        residual: Option<&[f32]>,
        n: usize,
        j0: usize,
    ) {
        for oc in 0..self.o {
            let row = dst.row(oc);
            if bias {
                let bv = self.bias[oc];
                row.iter_mut().for_each(|v| *v += bv);
            }
            if let Some(r) = residual {
                let r = &r[oc * n + j0..][..row.len()];
                row.iter_mut().zip(r).for_each(|(v, r)| *v += r);
            }
            if let Some(s) = self.slope {
                row.iter_mut()
                    .for_each(|v| *v = if *v >= 0.0 { *v } else { s * *v });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu::tests::{direct, max_diff};
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `act(direct(x, w) + bias + residual)` in f64: the definition.
    fn reference(
        d: &Dims,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        res: Option<&[f32]>,
        slope: Option<f32>,
    ) -> Vec<f64> {
        let dy = vec![0f32; d.b * d.o * d.n()];
        let (y, _, _) = direct(d, x, w, &dy);
        y.iter()
            .enumerate()
            .map(|(i, &v)| {
                let v = v + bias[i / d.n() % d.o] as f64 + res.map_or(0.0, |r| r[i] as f64);
                match slope {
                    Some(s) if v < 0.0 => s as f64 * v,
                    _ => v,
                }
            })
            .collect()
    }

    /// `(b, c, o, h, w, k, stride, pad)`.
    type Shape = (usize, usize, usize, usize, usize, usize, usize, usize);

    /// The layer shapes the tests run:
    /// Winograd's (wide and narrow), 3×3 at stride 2, pointwise; output
    /// channels past several bf16 microkernels.
    const SHAPES: [Shape; 5] = [
        (2, 16, 16, 17, 18, 3, 1, 1),
        (1, 20, 40, 33, 32, 3, 1, 1),
        (3, 5, 7, 9, 11, 3, 1, 1),
        (2, 16, 32, 17, 16, 3, 2, 1),
        (2, 12, 6, 8, 9, 1, 1, 0),
    ];

    /// A layer of one of [`SHAPES`] with operands uniform in [-1, 1): its
    /// dims, input, weights, bias and residual.
    fn layer(
        rng: &mut ChaCha8Rng,
        (b, c, o, h, w, k, stride, pad): Shape,
    ) -> (Dims, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = Dims {
            b,
            c,
            o,
            geo: Geo::new(h, w, k, stride, pad),
        };
        let mut randv =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect() };
        let (x, wt, bias) = (randv(b * c * h * w), randv(o * c * k * k), randv(o));
        let res = randv(b * o * d.n());
        (d, x, wt, bias, res)
    }

    /// Every path (Winograd with either rule, im2col at stride 1 and 2,
    /// pointwise; fused and not), with and without residual and
    /// activation, written into the middle channels of a wider buffer,
    /// against the definition; the channels around are left alone.
    #[test]
    fn fused_convolutions_match_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for shape in SHAPES {
            let (d, x, wt, bias, res) = layer(&mut rng, shape);
            let (b, c, o, h, w, k, stride, pad) = shape;
            let n = d.n();
            for win in [
                WinogradUse::Off,
                WinogradUse::Training,
                WinogradUse::Inference,
            ] {
                for (residual, slope) in [(None, None), (Some(&res[..]), Some(0.01f32))] {
                    for fuse in [true, false] {
                        let conv = FusedConv::new(
                            wt.clone(),
                            bias.clone(),
                            (o, c, k),
                            (stride, pad),
                            slope,
                            win,
                        );
                        // Channels 2 .. 2+o of a buffer of o+3.
                        let total = o + 3;
                        let mut buf = vec![7.0f32; b * total * n];
                        conv.run(
                            b,
                            (h, w),
                            &x,
                            residual,
                            &SharedOut::rows_of(&mut buf, (b, total, n), 2..2 + o),
                            fuse,
                        );
                        let want = reference(&d, &x, &wt, &bias, residual, slope);
                        let mut got = Vec::new();
                        for bi in 0..b {
                            let s = &buf[bi * total * n..][..total * n];
                            assert!(
                                s[..2 * n]
                                    .iter()
                                    .chain(&s[(2 + o) * n..])
                                    .all(|&v| v == 7.0)
                            );
                            got.extend_from_slice(&s[2 * n..(2 + o) * n]);
                        }
                        let err = max_diff(&got, &want);
                        assert!(
                            err < 3e-5,
                            "{d:?} {win:?} residual {} fuse {fuse}: {err:.2e} (winograd {})",
                            residual.is_some(),
                            conv.winograd_applies(&d)
                        );
                    }
                }
            }
        }
    }

    /// Every path in bf16 (Winograd, im2col at stride 1 and 2, pointwise;
    /// fused and not) within bf16's rounding of the definition, and not
    /// f32's answer: each
    /// output within 2⁻⁶ of the sum of its terms' sizes (inputs and
    /// weights off by 2⁻⁹ each; Winograd's transformed operands, sums of
    /// up to four and nine values, by as much of theirs), and the largest
    /// error above f32's rounding (the products did round).
    #[test]
    fn bf16_convolutions_are_within_rounding_of_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for shape in SHAPES {
            let (d, x, wt, bias, res) = layer(&mut rng, shape);
            let (b, c, o, h, w, k, stride, pad) = shape;
            let n = d.n();
            // The sum of the terms' sizes: the convolution of |x| and |w|.
            let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            let aw: Vec<f32> = wt.iter().map(|v| v.abs()).collect();
            let size = direct(&d, &ax, &aw, &vec![0f32; b * o * n]).0;
            for win in [WinogradUse::Off, WinogradUse::Inference] {
                for fuse in [true, false] {
                    let conv = FusedConv::new(
                        wt.clone(),
                        bias.clone(),
                        (o, c, k),
                        (stride, pad),
                        Some(0.01),
                        win,
                    )
                    .bf16();
                    let mut got = vec![0f32; b * o * n];
                    conv.run(
                        b,
                        (h, w),
                        &x,
                        Some(&res),
                        &SharedOut::new(&mut got, b, o, n),
                        fuse,
                    );
                    let want = reference(&d, &x, &wt, &bias, Some(&res), Some(0.01));
                    let mut worst = 0f64;
                    for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                        let e = (f64::from(g) - r).abs();
                        assert!(
                            e <= 2f64.powi(-6) * size[i] + 1e-5,
                            "{d:?} {win:?} fuse {fuse}: {g} against {r} (size {})",
                            size[i]
                        );
                        worst = worst.max(e / size[i].max(1e-3));
                    }
                    assert!(worst > 1e-5, "{d:?} {win:?}: as exact as f32 ({worst:.1e})");
                }
            }
        }
    }

    #[test]
    fn the_inference_rule_takes_narrower_layers_on_smaller_planes() {
        let conv = |c, o, win| {
            FusedConv::new(
                vec![0.0; o * c * 9],
                vec![0.0; o],
                (o, c, 3),
                (1, 1),
                None,
                win,
            )
        };
        let d = |c, o, h, w| Dims {
            b: 1,
            c,
            o,
            geo: Geo::new(h, w, 3, 1, 1),
        };
        let inf = conv(32, 32, WinogradUse::Inference);
        assert!(inf.winograd_applies(&d(32, 32, 16, 16)));
        assert!(!inf.winograd_applies(&d(32, 32, 8, 16)));
        assert!(!conv(8, 32, WinogradUse::Inference).winograd_applies(&d(8, 32, 64, 64)));
        assert!(!conv(32, 32, WinogradUse::Training).winograd_applies(&d(32, 32, 64, 64)));
        assert!(!conv(32, 32, WinogradUse::Off).winograd_applies(&d(32, 32, 512, 512)));
        let s2 = FusedConv::new(
            vec![0.0; 32 * 32 * 9],
            vec![0.0; 32],
            (32, 32, 3),
            (2, 1),
            None,
            WinogradUse::Inference,
        );
        assert!(!s2.winograd_applies(&Dims {
            b: 1,
            c: 32,
            o: 32,
            geo: Geo::new(64, 64, 3, 2, 1)
        }));
    }
}
