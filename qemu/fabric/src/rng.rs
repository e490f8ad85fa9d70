//! A small seeded pseudo-random generator (SplitMix64) that threads can share without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 over an atomic counter: each draw advances the counter by a constant and
/// mixes it. The sequence of draws is fixed by the seed; which thread gets which draw
/// depends on their order, as the frames' order does.
#[derive(Debug)]
pub(crate) struct SharedRng {
    state: AtomicU64,
}

impl SharedRng {
    pub(crate) fn new(seed: u64) -> Self {
        SharedRng {
            state: AtomicU64::new(seed),
        }
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let counter = self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        mix(counter)
    }

    /// True with probability `parts_per_million / 1_000_000`.
    pub(crate) fn chance_ppm(&self, parts_per_million: u32) -> bool {
        match parts_per_million {
            0 => false,
            1_000_000.. => true,
            _ => self.next_u64() % 1_000_000 < u64::from(parts_per_million),
        }
    }
}

/// The SplitMix64 output function; also used to derive per-port seeds.
pub(crate) fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws_and_rates_are_plausible() {
        let first = SharedRng::new(7);
        let second = SharedRng::new(7);
        for _ in 0..100 {
            assert_eq!(first.next_u64(), second.next_u64());
        }
        let rng = SharedRng::new(42);
        let hits = (0..100_000).filter(|_| rng.chance_ppm(250_000)).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
        assert!(!rng.chance_ppm(0));
        assert!(rng.chance_ppm(1_000_000));
    }
}
