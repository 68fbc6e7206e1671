//! Which slices training looks at.

use rand::Rng;

use crate::error::{Result, VolumeError};

/// A slice of a case: indices into the sampler's case list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SliceRef {
    /// Index of the case.
    pub case: usize,
    /// Index of the slice in the case.
    pub slice: usize,
}

/// Draws slices uniformly over all slices of all cases, except that a share
/// `foreground_fraction` of draws (default 1/3) comes uniformly from the
/// slices that hold kidney or tumour.
///
/// When no case has a foreground slice, every draw is uniform.
#[derive(Debug, Clone)]
pub struct SliceSampler {
    /// Cumulative slice counts: case c owns `starts[c]..starts[c+1]`.
    starts: Vec<usize>,
    foreground: Vec<SliceRef>,
    foreground_fraction: f64,
}

impl SliceSampler {
    /// `cases[c] = (number of slices, foreground slice indices)`.
    pub fn new(cases: &[(usize, Vec<usize>)], foreground_fraction: f64) -> Result<SliceSampler> {
        if !(0.0..=1.0).contains(&foreground_fraction) {
            return Err(VolumeError::InvalidArgument(format!(
                "foreground_fraction must be in [0, 1], got {foreground_fraction}"
            )));
        }
        let mut starts = vec![0];
        let mut foreground = Vec::new();
        for (c, (n, fg)) in cases.iter().enumerate() {
            if let Some(&bad) = fg.iter().find(|&&k| k >= *n) {
                return Err(VolumeError::InvalidArgument(format!(
                    "case {c}: foreground slice {bad} is out of range ({n} slices)"
                )));
            }
            starts.push(starts[c] + n);
            foreground.extend(fg.iter().map(|&slice| SliceRef { case: c, slice }));
        }
        if *starts.last().unwrap() == 0 {
            return Err(VolumeError::InvalidArgument(
                "no slices to sample from".into(),
            ));
        }
        Ok(SliceSampler {
            starts,
            foreground,
            foreground_fraction,
        })
    }

    /// Total number of slices.
    pub fn len(&self) -> usize {
        *self.starts.last().unwrap()
    }

    /// Always false: a sampler has at least one slice.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `i`-th slice in case order.
    pub fn nth(&self, i: usize) -> SliceRef {
        let case = self.starts.partition_point(|&s| s <= i) - 1;
        SliceRef {
            case,
            slice: i - self.starts[case],
        }
    }

    /// Draws one slice.
    pub fn sample(&self, rng: &mut impl Rng) -> SliceRef {
        // Always draw both numbers so the stream advances the same way.
        let u: f64 = rng.random();
        let i = rng.random_range(0..self.len());
        if !self.foreground.is_empty() && u < self.foreground_fraction {
            self.foreground[i % self.foreground.len()]
        } else {
            self.nth(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::sample_rng;

    #[test]
    fn nth_walks_the_cases() {
        let s = SliceSampler::new(&[(3, vec![]), (2, vec![1])], 0.0).unwrap();
        let all: Vec<_> = (0..5)
            .map(|i| s.nth(i))
            .map(|r| (r.case, r.slice))
            .collect();
        assert_eq!(all, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]);
    }

    #[test]
    fn foreground_share_matches_the_fraction() {
        // 1000 slices, 10 foreground: uniform draws hit foreground 1% of the
        // time, so the expected share is f + (1 - f) * 0.01.
        let fg: Vec<usize> = (500..510).collect();
        let s = SliceSampler::new(&[(1000, fg)], 1.0 / 3.0).unwrap();
        let n = 30_000;
        let mut rng = sample_rng(3, 0, 0);
        let hits = (0..n)
            .filter(|_| (500..510).contains(&s.sample(&mut rng).slice))
            .count();
        let share = hits as f64 / n as f64;
        let expected = 1.0 / 3.0 + (2.0 / 3.0) * 0.01;
        // Binomial sd = sqrt(p(1-p)/n) ~ 0.0028; allow 4 sd.
        assert!(
            (share - expected).abs() < 0.012,
            "share {share}, expected {expected}"
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(SliceSampler::new(&[(3, vec![3])], 0.3).is_err());
        assert!(SliceSampler::new(&[(3, vec![])], 1.5).is_err());
        assert!(SliceSampler::new(&[(0, vec![])], 0.3).is_err());
    }
}
