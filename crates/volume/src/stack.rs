//! 2.5D input: a slice together with its neighbours as channels.

use ndarray::{Array2, Array3, ArrayView3, s};

use crate::error::{Result, VolumeError};
use crate::intensity::Intensity;

/// The slice indices that make up the 2.5D stack around `k`: `k-n ..= k+n`,
/// with indices outside `0..depth` replaced by the edge slice.
///
/// ```
/// assert_eq!(kseg_volume::stack_indices(0, 1, 10), vec![0, 0, 1]);
/// assert_eq!(kseg_volume::stack_indices(9, 2, 10), vec![7, 8, 9, 9, 9]);
/// ```
pub fn stack_indices(k: usize, n: usize, depth: usize) -> Vec<usize> {
    let last = depth.saturating_sub(1) as isize;
    (-(n as isize)..=n as isize)
        .map(|d| (k as isize + d).clamp(0, last) as usize)
        .collect()
}

fn check(k: usize, depth: usize) -> Result<()> {
    if k >= depth {
        return Err(VolumeError::InvalidArgument(format!(
            "slice {k} is out of range for a volume of {depth} slices"
        )));
    }
    Ok(())
}

/// Stacks slices `k-n ..= k+n` of `volume` (edge slices repeated) and
/// normalises them with `intensity`.
///
/// # Shapes
/// `volume`: `[slices, H, W]` (HU) → `[2n+1, H, W]` (normalised).
pub fn stack_slices(
    volume: ArrayView3<f32>,
    k: usize,
    n: usize,
    intensity: &Intensity,
) -> Result<Array3<f32>> {
    let (depth, h, w) = volume.dim();
    check(k, depth)?;
    let mut out = Array3::zeros((2 * n + 1, h, w));
    for (c, z) in stack_indices(k, n, depth).into_iter().enumerate() {
        let mut dst = out.slice_mut(s![c, .., ..]);
        dst.zip_mut_with(&volume.slice(s![z, .., ..]), |d, &v| {
            *d = intensity.apply(v)
        });
    }
    Ok(out)
}

/// Stacks image slices around `k` and takes the label of slice `k`.
///
/// # Shapes
/// `image`: `[slices, H, W]`, `labels`: `[slices, H, W]` →
/// (`[2n+1, H, W]` f32, `[H, W]` u8).
pub fn stack_sample(
    image: ArrayView3<f32>,
    labels: ArrayView3<u8>,
    k: usize,
    n: usize,
    intensity: &Intensity,
) -> Result<(Array3<f32>, Array2<u8>)> {
    if image.dim() != labels.dim() {
        return Err(VolumeError::InvalidArgument(format!(
            "image shape {:?} and label shape {:?} differ",
            image.shape(),
            labels.shape()
        )));
    }
    let x = stack_slices(image, k, n, intensity)?;
    Ok((x, labels.slice(s![k, .., ..]).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_repeat_and_channels_are_neighbours() {
        assert_eq!(stack_indices(0, 1, 5), [0, 0, 1]);
        assert_eq!(stack_indices(2, 1, 5), [1, 2, 3]);
        assert_eq!(stack_indices(4, 1, 5), [3, 4, 4]);
        assert_eq!(stack_indices(0, 0, 1), [0]);
        assert_eq!(stack_indices(0, 2, 1), [0, 0, 0, 0, 0]);
    }

    #[test]
    fn stack_holds_normalised_neighbours() {
        // Slice z holds HU value 100 + z everywhere; identity-like window.
        let w = Intensity {
            hu_min: -1e4,
            hu_max: 1e4,
            mean: 0.0,
            std: 1.0,
        };
        let vol = Array3::from_shape_fn((4, 2, 3), |(z, _, _)| 100.0 + z as f32);
        let labels = Array3::from_shape_fn((4, 2, 3), |(z, y, x)| ((z + y + x) % 3) as u8);
        let (x, y) = stack_sample(vol.view(), labels.view(), 3, 1, &w).unwrap();
        assert_eq!(x.dim(), (3, 2, 3));
        assert_eq!(x[[0, 1, 2]], 102.0);
        assert_eq!(x[[1, 0, 0]], 103.0);
        assert_eq!(x[[2, 0, 1]], 103.0); // edge repeated
        assert_eq!(y, labels.slice(s![3, .., ..]));
        assert!(stack_slices(vol.view(), 4, 1, &w).is_err());
    }
}
