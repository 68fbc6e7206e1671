//! Per-sample random generators.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator for sample `index` of `epoch` in a run seeded with `seed`.
///
/// Every (seed, epoch, index) gets its own ChaCha8 stream, so a sample's
/// randomness does not depend on which thread draws it or in which order:
/// a batch is identical whatever the number of worker threads. ChaCha8 is
/// portable: the same numbers on every platform.
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
    // 2^64 words (far more than one sample uses) between samples.
    rng.set_word_pos(u128::from(index) << 64);
    rng
}
