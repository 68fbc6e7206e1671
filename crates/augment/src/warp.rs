//! Applying drawn parameters: the three geometric steps composed into one
//! warp, then the optional intensity steps.
//!
//! # The composition
//! The reference method rotates (output size kept, corners filled), flips, pads, crops
//! and resizes: two interpolations and four passes over memory. All three
//! geometric steps are affine, so each output pixel `(x, y)` is traced back
//! through them analytically:
//! 1. resize + crop (bilinear, `align_corners = false`):
//!    `xc = (x + 0.5) · crop_w / out_w - 0.5 + left` (padded coordinates);
//! 2. unpad: `xf = xc - pad`; a point outside the rotated frame
//!    (`xf < -0.5` or `xf >= W - 0.5`, same for `y`) is padding: fill;
//! 3. unflip: `xr = W - 1 - xf` when flipped;
//! 4. unrotate (and unscale) about `c = ((W-1)/2, (H-1)/2)`:
//!    `s = c + R(-θ) (r - c) / scale`;
//!
//! and the source is sampled once: bilinear for the image (neighbours outside
//! the image count as `fill`, as torchvision's fill does), nearest for the
//! label (outside: 0). The geometric distribution of outputs is the reference method's;
//! the image is interpolated once instead of twice, so it is slightly
//! sharper, and the padding border is decided at the nearest half pixel.
//!
//! # With a pre-map
//! With [`AugmentParams::resample`] the steps above end in the *frame*, the
//! resampled image the parameters were drawn for, which is never made; a
//! fifth step traces on to the real source:
//! 5. frame → source ([`Resample::map`]). The frame is bounded like an
//!    image: outside it the image blends to `fill` over its last pixel
//!    (position clamped to the frame's edge pixel centres, weighted by the
//!    distance, as a bilinear read of fill neighbours would), the label is
//!    0 beyond half a pixel. In the source, positions more than half a pixel
//!    outside are `fill` / 0 and bilinear neighbours outside read `fill`, as
//!    [`AugmentParams::at_spacing`]'s pass does.
//!
//! The source is still sampled once (bilinear for the image at the exact
//! source position, nearest for the label), in a separately compiled loop:
//! without a pre-map the warp is the one above, operation for operation.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::config::AugmentParams;
use crate::error::{AugmentError, Result};
use crate::resample::PreMap;
#[cfg(doc)]
use crate::resample::Resample;

/// Applies one draw to an image and its label.
///
/// # Shapes
/// `image`: `(C, H, W)` f32 (any C, e.g. the 2n+1 stacked slices), `label`:
/// `(H, W)` u8 → `(C, out_h, out_w)`, `(out_h, out_w)`. `(H, W)` is
/// `params.in_size`, or with a pre-map (`params.resample`) its
/// `source_size` (and `in_size` its `out_size`).
pub fn apply(
    params: &AugmentParams,
    image: ArrayView3<f32>,
    label: ArrayView2<u8>,
) -> Result<(Array3<f32>, Array2<u8>)> {
    let (_, h, w) = image.dim();
    if (h, w) != label.dim() {
        return Err(AugmentError::Input(format!(
            "image is {h}x{w} but label is {}x{}",
            label.dim().0,
            label.dim().1
        )));
    }
    let label = label.as_standard_layout();
    let lab = label.as_slice().expect("standard layout");
    let (out, out_lab) = apply_to(params, image, lab)?;
    let (oh, ow) = params.out_size;
    Ok((
        out,
        Array2::from_shape_vec((oh, ow), out_lab).expect("length agrees"),
    ))
}

/// Applies one draw to an image alone (bilinear), as [`apply`] does to the
/// image it is given with a label: with identity parameters and another
/// output size, a resize (what inference uses).
///
/// # Shapes
/// `image`: `(C, H, W)` f32 → `(C, out_h, out_w)`.
pub fn apply_image(params: &AugmentParams, image: ArrayView3<f32>) -> Result<Array3<f32>> {
    Ok(apply_to(params, image, &[])?.0)
}

/// [`apply`] and [`apply_image`]: the label (`lab`, row-major, empty for
/// none) and its output are only touched when there is one.
fn apply_to(
    params: &AugmentParams,
    image: ArrayView3<f32>,
    lab: &[u8],
) -> Result<(Array3<f32>, Vec<u8>)> {
    let (c, h, w) = image.dim();
    if c == 0 || h == 0 || w == 0 {
        return Err(AugmentError::Input(format!("zero-size image {c}x{h}x{w}")));
    }
    match &params.resample {
        None if params.in_size != (h, w) => {
            return Err(AugmentError::Input(format!(
                "parameters were drawn for {:?}, image is {h}x{w}",
                params.in_size
            )));
        }
        None => {}
        Some(r) => {
            r.validate()?;
            if r.source_size != (h, w) {
                return Err(AugmentError::Input(format!(
                    "the resample is from {:?}, image is {h}x{w}",
                    r.source_size
                )));
            }
            if params.in_size != r.out_size {
                return Err(AugmentError::Input(format!(
                    "parameters were drawn for {:?}, the resample makes {:?}",
                    params.in_size, r.out_size
                )));
            }
        }
    }
    let (oh, ow) = params.out_size;
    if oh == 0 || ow == 0 || params.crop.height == 0 || params.crop.width == 0 {
        return Err(AugmentError::Input(format!(
            "zero-size output {oh}x{ow} or crop {:?}",
            params.crop
        )));
    }
    if !(params.scale.is_finite() && params.scale > 0.0 && params.angle_deg.is_finite()) {
        return Err(AugmentError::Input(format!(
            "angle {} and scale {} must be finite, scale > 0",
            params.angle_deg, params.scale
        )));
    }
    let image = image.as_standard_layout();
    let src = image.as_slice().expect("standard layout");
    let mut out = vec![0f32; c * oh * ow];
    let mut out_lab = vec![0u8; if lab.is_empty() { 0 } else { oh * ow }];
    warp(params, src, lab, (c, h, w), &mut out, &mut out_lab);
    let mut out = Array3::from_shape_vec((c, oh, ow), out).expect("length agrees");
    intensity(params, &mut out);
    Ok((out, out_lab))
}

/// `floor` for values above -16 by truncation: a plain conversion, where
/// `f32::floor` is a library call on baseline x86-64. Values below -16 are
/// far outside any image and only ever select the fill value.
#[inline(always)]
fn floor_i(v: f32) -> isize {
    (v + 16.0) as isize - 16
}

/// `floor` for values above -16 in f64 (see [`floor_i`]).
#[inline(always)]
fn floor_d(v: f64) -> isize {
    (v + 16.0) as isize - 16
}

/// A frame position `s` in `[0, n - 1]`, clamped there from up to a pixel
/// outside, and the weight of the frame there (1 inside, falling linearly
/// to 0 one pixel out, as a bilinear read with fill neighbours).
#[inline(always)]
fn frame_edge(s: f64, n: f64) -> (f64, f64) {
    if s < 0.0 {
        (0.0, (s + 1.0).max(0.0))
    } else if s > n - 1.0 {
        (n - 1.0, (n - s).max(0.0))
    } else {
        (s, 1.0)
    }
}

/// Dispatches to a warp compiled with or without a pre-map.
fn warp(
    p: &AugmentParams,
    src: &[f32],
    lab: &[u8],
    dims: (usize, usize, usize),
    out: &mut [f32],
    out_lab: &mut [u8],
) {
    match &p.resample {
        None => warp_c::<false>(p, &PreMap::default(), src, lab, dims, out, out_lab),
        Some(r) => warp_c::<true>(p, &PreMap::new(r), src, lab, dims, out, out_lab),
    }
}

/// Dispatches to a warp compiled for the channel count when it is a common
/// one (the 2.5D stacks have 3 or 5), so the channel loop is unrolled, and
/// for an image alone when `lab` is empty (then `out_lab` is not touched).
fn warp_c<const P: bool>(
    p: &AugmentParams,
    pm: &PreMap,
    src: &[f32],
    lab: &[u8],
    dims: (usize, usize, usize),
    out: &mut [f32],
    out_lab: &mut [u8],
) {
    match (dims.0, lab.is_empty()) {
        (1, false) => warp_n::<1, true, P>(p, pm, src, lab, dims, out, out_lab),
        (3, false) => warp_n::<3, true, P>(p, pm, src, lab, dims, out, out_lab),
        (5, false) => warp_n::<5, true, P>(p, pm, src, lab, dims, out, out_lab),
        (_, false) => warp_n::<0, true, P>(p, pm, src, lab, dims, out, out_lab),
        (1, true) => warp_n::<1, false, P>(p, pm, src, lab, dims, out, out_lab),
        (3, true) => warp_n::<3, false, P>(p, pm, src, lab, dims, out, out_lab),
        (5, true) => warp_n::<5, false, P>(p, pm, src, lab, dims, out, out_lab),
        (_, true) => warp_n::<0, false, P>(p, pm, src, lab, dims, out, out_lab),
    }
}

/// The warp; `N > 0` fixes the channel count at compile time, `N = 0` reads
/// it from `dims`; `L`: with a label; `P`: through the pre-map `pm` (else
/// `pm` is unused and the frame is the source, `dims`).
fn warp_n<const N: usize, const L: bool, const P: bool>(
    p: &AugmentParams,
    pm: &PreMap,
    src: &[f32],
    lab: &[u8],
    (c, h, w): (usize, usize, usize),
    out: &mut [f32],
    out_lab: &mut [u8],
) {
    let c = if N > 0 { N } else { c };
    let (oh, ow) = p.out_size;
    // The frame the parameters were drawn for: the source, or the resampled
    // source the pre-map describes.
    let (fh, fw) = if P { p.in_size } else { (h, w) };
    let plane = h * w;
    let oplane = oh * ow;
    let fill = p.fill;
    // Output → rotated-frame coordinates (axis-aligned). Source positions
    // inside the crop are clamped to its pixel centres, as torch's bilinear
    // resize (align_corners = false) clamps them.
    let kx = p.crop.width as f64 / ow as f64;
    let ky = p.crop.height as f64 / oh as f64;
    let crop_x = |ox: usize| ((ox as f64 + 0.5) * kx - 0.5).clamp(0.0, p.crop.width as f64 - 1.0);
    let crop_y = |oy: usize| ((oy as f64 + 0.5) * ky - 0.5).clamp(0.0, p.crop.height as f64 - 1.0);
    let bx = p.crop.left as f64 - p.pad as f64;
    let by = p.crop.top as f64 - p.pad as f64;
    // Frame → source: s = c + R(-θ)(r - c)/scale with r = (±xf, yf).
    let (cx, cy) = ((fw as f64 - 1.0) / 2.0, (fh as f64 - 1.0) / 2.0);
    let t = p.angle_deg.to_radians();
    let (cos, sin) = (t.cos() / p.scale, t.sin() / p.scale);
    let (cosf, sinf) = (cos as f32, sin as f32);
    // Every row shares the columns' frame positions: the column's x offset
    // from the centre after the flip. xf grows with the column, so the
    // columns inside the frame are one run c0..c1; the others are padding.
    let xfs: Vec<f64> = (0..ow).map(|ox| crop_x(ox) + bx).collect();
    let c0 = xfs.partition_point(|&xf| xf < -0.5);
    let c1 = xfs.partition_point(|&xf| xf < fw as f64 - 0.5).max(c0);
    let cols: Vec<f32> = xfs
        .iter()
        .map(|&xf| ((if p.flip { fw as f64 - 1.0 - xf } else { xf }) - cx) as f32)
        .collect();
    let (wi, hi) = (w as isize, h as isize);
    for oy in 0..oh {
        let yf = crop_y(oy) + by;
        let row = oy * ow;
        if !(yf >= -0.5 && yf < fh as f64 - 0.5) {
            for ch in 0..c {
                out[ch * oplane + row..ch * oplane + row + ow].fill(fill);
            }
            if L {
                out_lab[row..row + ow].fill(0);
            }
            continue;
        }
        let dy = yf - cy;
        // s = a + (cos, sin) · dx along the row.
        let ax = (cx - sin * dy) as f32;
        let ay = (cy + cos * dy) as f32;
        for ch in 0..c {
            let o = ch * oplane + row;
            out[o..o + c0].fill(fill);
            out[o + c1..o + ow].fill(fill);
        }
        if L {
            out_lab[row..row + c0].fill(0);
            out_lab[row + c1..row + ow].fill(0);
        }
        for (ox, &dx) in cols.iter().enumerate().take(c1).skip(c0) {
            let o = row + ox;
            let sx = ax + cosf * dx;
            let sy = ay + sinf * dx;
            if P {
                let (sx, sy) = (f64::from(sx), f64::from(sy));
                // Fast path: inside the frame and the map's clamps, all
                // four neighbours inside the source (the general path's
                // arithmetic without its no-op clamps and checks).
                if sx >= pm.inner_lo.1
                    && sx <= pm.inner_hi.1
                    && sy >= pm.inner_lo.0
                    && sy <= pm.inner_hi.0
                {
                    let xs = pm.base.1 + pm.scale.1 * sx;
                    let ys = pm.base.0 + pm.scale.0 * sy;
                    if xs >= 0.0 && xs < (w - 1) as f64 && ys >= 0.0 && ys < (h - 1) as f64 {
                        if L {
                            // Nearest: floor(s + 0.5) <= n - 1.
                            let (nx, ny) = ((xs + 0.5) as usize, (ys + 0.5) as usize);
                            out_lab[o] = lab[ny * w + nx];
                        }
                        let (x0, y0) = (xs as usize, ys as usize);
                        let (fx, fy) = ((xs - x0 as f64) as f32, (ys - y0 as f64) as f32);
                        let w00 = (1.0 - fx) * (1.0 - fy);
                        let w01 = fx * (1.0 - fy);
                        let w10 = (1.0 - fx) * fy;
                        let w11 = fx * fy;
                        let i = y0 * w + x0;
                        for ch in 0..c {
                            let (si, oi) = (ch * plane + i, ch * oplane + o);
                            debug_assert!(si + w + 1 < src.len() && oi < out.len());
                            // SAFETY: 0 <= x0 < w - 1 and 0 <= y0 < h - 1
                            // (checked above), so si + w + 1 < (ch + 1) *
                            // plane <= src.len(); o < oplane, so oi <
                            // out.len().
                            unsafe {
                                let s = src.as_ptr().add(si);
                                *out.get_unchecked_mut(oi) = w00 * *s
                                    + w01 * *s.add(1)
                                    + w10 * *s.add(w)
                                    + w11 * *s.add(w + 1);
                            }
                        }
                        continue;
                    }
                }
                pre_pixel::<N, L>(
                    pm,
                    (sy, sx),
                    (fh as f64, fw as f64),
                    (src, lab, (c, h, w)),
                    fill,
                    (o, oplane),
                    out,
                    out_lab,
                );
                continue;
            }
            let (x0, y0) = (floor_i(sx), floor_i(sy));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            if L {
                // Nearest for the label: floor(s + 0.5).
                let (nx, ny) = (x0 + isize::from(fx >= 0.5), y0 + isize::from(fy >= 0.5));
                out_lab[o] = if nx >= 0 && nx < wi && ny >= 0 && ny < hi {
                    lab[ny as usize * w + nx as usize]
                } else {
                    0
                };
            }
            // Bilinear for the image.
            let w00 = (1.0 - fx) * (1.0 - fy);
            let w01 = fx * (1.0 - fy);
            let w10 = (1.0 - fx) * fy;
            let w11 = fx * fy;
            if x0 >= 0 && x0 + 1 < wi && y0 >= 0 && y0 + 1 < hi {
                let i = y0 as usize * w + x0 as usize;
                for ch in 0..c {
                    let (si, oi) = (ch * plane + i, ch * oplane + o);
                    debug_assert!(si + w + 1 < src.len() && oi < out.len());
                    // SAFETY: 0 <= x0 < w - 1 and 0 <= y0 < h - 1 (checked
                    // above), so si + w + 1 < (ch + 1) * plane <= src.len();
                    // o < oplane, so oi < out.len().
                    unsafe {
                        let s = src.as_ptr().add(si);
                        *out.get_unchecked_mut(oi) =
                            w00 * *s + w01 * *s.add(1) + w10 * *s.add(w) + w11 * *s.add(w + 1);
                    }
                }
            } else {
                let at = |x: isize, y: isize| {
                    (x >= 0 && x < wi && y >= 0 && y < hi).then(|| y as usize * w + x as usize)
                };
                let idx = [
                    at(x0, y0),
                    at(x0 + 1, y0),
                    at(x0, y0 + 1),
                    at(x0 + 1, y0 + 1),
                ];
                for ch in 0..c {
                    let s = &src[ch * plane..(ch + 1) * plane];
                    let v = |k: usize| idx[k].map_or(fill, |i| s[i]);
                    out[ch * oplane + o] = w00 * v(0) + w01 * v(1) + w10 * v(2) + w11 * v(3);
                }
            }
        }
    }
}

/// One output pixel `o` through the pre-map: frame position `(sy, sx)` in
/// a frame of `(fh, fw)` → the source (`src`, `lab`, `(c, h, w)`), sampled
/// once (module documentation, step 5).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pre_pixel<const N: usize, const L: bool>(
    pm: &PreMap,
    (sy, sx): (f64, f64),
    (fh, fw): (f64, f64),
    (src, lab, (c, h, w)): (&[f32], &[u8], (usize, usize, usize)),
    fill: f32,
    (o, oplane): (usize, usize),
    out: &mut [f32],
    out_lab: &mut [u8],
) {
    let c = if N > 0 { N } else { c };
    let (qy, ay) = frame_edge(sy, fh);
    let (qx, ax) = frame_edge(sx, fw);
    let (ys, xs) = pm.map((qy, qx));
    let (hf, wf) = (h as f64, w as f64);
    let inside = xs >= -0.5 && xs < wf - 0.5 && ys >= -0.5 && ys < hf - 0.5;
    if L {
        let in_frame = sx >= -0.5 && sx < fw - 0.5 && sy >= -0.5 && sy < fh - 0.5;
        out_lab[o] = if in_frame && inside {
            // Nearest: floor(s + 0.5), inside the source by `inside`.
            let nx = (floor_d(xs + 0.5) as usize).min(w - 1);
            let ny = (floor_d(ys + 0.5) as usize).min(h - 1);
            lab[ny * w + nx]
        } else {
            0
        };
    }
    let a = (ax * ay) as f32;
    if !(inside && a > 0.0) {
        for ch in 0..c {
            out[ch * oplane + o] = fill;
        }
        return;
    }
    let blend = |v: f32| if a < 1.0 { a * v + (1.0 - a) * fill } else { v };
    // ys, xs >= -0.5, so the floors are >= -1.
    let (x0, y0) = (floor_d(xs), floor_d(ys));
    let (fx, fy) = ((xs - x0 as f64) as f32, (ys - y0 as f64) as f32);
    let w00 = (1.0 - fx) * (1.0 - fy);
    let w01 = fx * (1.0 - fy);
    let w10 = (1.0 - fx) * fy;
    let w11 = fx * fy;
    let plane = h * w;
    let (wi, hi) = (w as isize, h as isize);
    if x0 >= 0 && x0 + 1 < wi && y0 >= 0 && y0 + 1 < hi {
        let i = y0 as usize * w + x0 as usize;
        for ch in 0..c {
            let s = &src[ch * plane + i..ch * plane + i + w + 2];
            out[ch * oplane + o] = blend(w00 * s[0] + w01 * s[1] + w10 * s[w] + w11 * s[w + 1]);
        }
    } else {
        let at = |x: isize, y: isize| {
            (x >= 0 && x < wi && y >= 0 && y < hi).then(|| y as usize * w + x as usize)
        };
        let idx = [
            at(x0, y0),
            at(x0 + 1, y0),
            at(x0, y0 + 1),
            at(x0 + 1, y0 + 1),
        ];
        for ch in 0..c {
            let s = &src[ch * plane..(ch + 1) * plane];
            let v = |k: usize| idx[k].map_or(fill, |i| s[i]);
            out[ch * oplane + o] = blend(w00 * v(0) + w01 * v(1) + w10 * v(2) + w11 * v(3));
        }
    }
}

/// Brightness, contrast, gamma and noise, in that order, on the image only.
fn intensity(p: &AugmentParams, img: &mut Array3<f32>) {
    if let Some(b) = p.brightness {
        img.mapv_inplace(|v| v * b as f32);
    }
    if let Some(k) = p.contrast {
        let mean = img.mean().unwrap_or(0.0);
        img.mapv_inplace(|v| (v - mean) * k as f32 + mean);
    }
    if let Some(g) = p.gamma {
        let (lo, hi) = img
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let range = hi - lo;
        if range > 0.0 {
            img.mapv_inplace(|v| lo + range * ((v - lo) / range).powf(g as f32));
        }
    }
    if let Some((sd, seed)) = p.noise
        && sd > 0.0
    {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = Normal::new(0.0f32, sd as f32).expect("sd > 0");
        img.mapv_inplace(|v| v + n.sample(&mut rng));
    }
}
