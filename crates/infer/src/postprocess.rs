//! Clean-up of predicted label volumes.

use kseg_metrics::LabelSet;
use ndarray::{Array3, ArrayView3};

/// Keeps the `keep` largest 6-connected components of the foreground of
/// the label set `set` ([`LabelSet::is_foreground`]: every structure,
/// kidney, tumour and cyst together) and sets every other foreground voxel
/// to background. Returns the number of voxels removed.
///
/// KiTS19 volumes hold two kidneys (one after a nephrectomy), so `keep = 2`
/// removes isolated false positives without touching a real kidney. Ties in
/// size are broken by the component's first voxel in memory order.
///
/// ```
/// use ndarray::Array3;
/// let mut v = Array3::<u8>::zeros((1, 1, 7));
/// v.as_slice_mut().unwrap().copy_from_slice(&[1, 2, 0, 1, 0, 1, 1]);
/// let removed = kseg_infer::postprocess::keep_largest_components(&mut v, 1, kseg_metrics::LabelSet::Kits19);
/// assert_eq!((removed, v.as_slice().unwrap()), (3, &[1, 2, 0, 0, 0, 0, 0][..]));
/// ```
pub fn keep_largest_components(labels: &mut Array3<u8>, keep: usize, set: LabelSet) -> usize {
    let mut std_layout = labels.as_standard_layout().into_owned();
    let (comp, sizes) = components(std_layout.view(), |x| set.is_foreground(x));
    let v = std_layout.as_slice_mut().expect("standard layout");
    let mut order: Vec<u32> = (1..sizes.len() as u32).collect();
    order.sort_by(|&a, &b| sizes[b as usize].cmp(&sizes[a as usize]).then(a.cmp(&b)));
    let mut kept = vec![false; sizes.len()];
    for &id in order.iter().take(keep) {
        kept[id as usize] = true;
    }
    let mut removed = 0;
    for (x, &id) in v.iter_mut().zip(&comp) {
        if id != 0 && !kept[id as usize] {
            *x = 0;
            removed += 1;
        }
    }
    labels.assign(&std_layout);
    removed
}

/// The 6-connected components (voxels sharing a face) of the voxels of
/// `labels` whose value `inside` accepts: each voxel's component id in
/// memory order (0 outside; ids numbered by each component's first voxel
/// in memory order, from 1) and each component's voxel count (`sizes[id]`,
/// `sizes[0] = 0`).
///
/// ```
/// use ndarray::Array3;
/// let v = Array3::from_shape_vec((1, 2, 3), vec![1, 0, 2, 1, 0, 2]).unwrap();
/// let (ids, sizes) = kseg_infer::postprocess::components(v.view(), |x| x > 0);
/// assert_eq!((ids, sizes), (vec![1, 0, 2, 1, 0, 2], vec![0, 2, 2]));
/// ```
pub fn components(labels: ArrayView3<u8>, inside: impl Fn(u8) -> bool) -> (Vec<u32>, Vec<usize>) {
    let (d, h, w) = labels.dim();
    let std_layout = labels.as_standard_layout();
    let v = std_layout.as_slice().expect("standard layout");
    let mut comp = vec![0u32; v.len()];
    let mut sizes: Vec<usize> = vec![0];
    let mut stack = Vec::new();
    for start in 0..v.len() {
        if !inside(v[start]) || comp[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32;
        let mut size = 0;
        comp[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            size += 1;
            let (z, r, c) = (i / (h * w), i / w % h, i % w);
            let mut visit = |j: usize| {
                if inside(v[j]) && comp[j] == 0 {
                    comp[j] = id;
                    stack.push(j);
                }
            };
            if z > 0 {
                visit(i - h * w);
            }
            if z + 1 < d {
                visit(i + h * w);
            }
            if r > 0 {
                visit(i - w);
            }
            if r + 1 < h {
                visit(i + w);
            }
            if c > 0 {
                visit(i - 1);
            }
            if c + 1 < w {
                visit(i + 1);
            }
        }
        sizes.push(size);
    }
    (comp, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_connect_through_faces_only() {
        // Voxels touching only at an edge or a corner are separate
        // components; a 6-connected L of three voxels is one.
        let mut v = Array3::<u8>::zeros((2, 3, 3));
        v[[0, 0, 0]] = 1;
        v[[1, 0, 1]] = 2; // touches [0,0,0] at an edge only: separate
        v[[0, 2, 2]] = 1;
        v[[0, 2, 1]] = 1;
        v[[1, 2, 1]] = 2; // the L: 3 voxels
        let mut one = v.clone();
        assert_eq!(keep_largest_components(&mut one, 1, LabelSet::Kits19), 2);
        assert_eq!(one.iter().filter(|&&x| x > 0).count(), 3);
        assert_eq!(one[[1, 2, 1]], 2); // labels kept as they were
        let mut all = v.clone();
        assert_eq!(keep_largest_components(&mut all, 3, LabelSet::Kits19), 0);
        assert_eq!(all, v);
        let mut none = v.clone();
        assert_eq!(keep_largest_components(&mut none, 0, LabelSet::Kits19), 5);
        assert!(none.iter().all(|&x| x == 0));
    }
}
