//! Per-sample random generators.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator for sample `index` of `epoch` in a run seeded with `seed`.
///
/// Every (seed, epoch, index) gets its own ChaCha8 stream, so a sample's
/// randomness does not depend on which thread draws it or in which order:
/// a batch is identical whatever the number of worker threads. ChaCha8 is
/// portable: the same numbers on every platform. `index` is taken modulo
/// 2^36.
///
/// ```
/// use rand::Rng;
/// let a: u64 = kseg_volume::sample_rng(1, 0, 5).random();
/// let b: u64 = kseg_volume::sample_rng(1, 0, 5).random();
/// let c: u64 = kseg_volume::sample_rng(1, 1, 5).random();
/// assert_eq!(a, b);
/// assert_ne!(a, c);
/// ```
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    // ChaCha's word position has 68 bits: 2^32 words (16 GiB of random
    // data, far more than a sample uses) per sample leaves room for 2^36
    // samples per epoch, each on its own span of the stream.
    rng.set_word_pos(u128::from(index & ((1 << 36) - 1)) << 32);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::collections::HashSet;

    #[test]
    fn every_sample_has_its_own_numbers() {
        let mut seen = HashSet::new();
        for epoch in 0..3 {
            for index in 0..5000 {
                let v: u64 = sample_rng(7, epoch, index).random();
                assert!(
                    seen.insert(v),
                    "epoch {epoch} index {index} repeats a stream"
                );
            }
        }
        // Different seeds differ too.
        let a: u64 = sample_rng(1, 0, 0).random();
        let b: u64 = sample_rng(2, 0, 0).random();
        assert_ne!(a, b);
    }
}
