//! Reconnect delays and the session's small random number generator.
//!
//! The session draws no randomness from the platform: the driver passes a seed and
//! [`SplitMix64`] stretches it (jitter, idempotency keys). Delays use "full jitter" by default
//! (AWS architecture blog, "Exponential Backoff And Jitter"): after `n` consecutive failures the
//! delay is uniform in `[0, min(max, initial · 2ⁿ)]`, which spreads reconnecting clients out
//! instead of having them arrive in waves. A jitter fraction `j` below 1 narrows the draw to
//! `[bound · (1 − j), bound]`; 0 means no randomness at all.

use std::time::Duration;

/// Growth of the delay bound per consecutive failure.
pub const BACKOFF_FACTOR: u32 = 2;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, good enough for jitter and key prefixes.
/// Not cryptographic: idempotency keys only need to be unique, not secret.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded by the driver.
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max` (the tiny modulo bias is irrelevant for jitter).
    pub(crate) fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }
}

/// Exponential backoff with jitter, counting consecutive failures.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// The jitter fraction in `[0, 1]` (see [`jitter`]).
    fraction: f64,
    failures: u32,
}

impl Backoff {
    /// A backoff whose first bound is `initial`, whose bound never exceeds `max`, and whose
    /// delays are drawn with jitter fraction `fraction`.
    pub(crate) fn new(initial: Duration, max: Duration, fraction: f64) -> Self {
        Backoff {
            initial,
            max,
            fraction,
            failures: 0,
        }
    }

    /// The bound of the next delay: `min(max, initial · 2^failures)`.
    pub(crate) fn ceiling(&self) -> Duration {
        ceiling(self.initial, self.max, self.failures)
    }

    /// Draws the delay before the next attempt and counts one more failure.
    pub(crate) fn next_delay(&mut self, rng: &mut SplitMix64) -> Duration {
        let delay = jitter(self.ceiling(), self.fraction, rng);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Like [`Backoff::next_delay`] but drawn in `[bound / 2, bound]` ("equal jitter"), so the
    /// delay reliably grows with repeated failures.
    pub(crate) fn next_equal_jitter(&mut self, rng: &mut SplitMix64) -> Duration {
        let half = self.ceiling() / 2;
        self.failures = self.failures.saturating_add(1);
        half + jitter(half, 1.0, rng)
    }

    /// Forgets past failures (after a connection proved healthy).
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The delay bound after `failures` earlier consecutive failures: `min(max, initial · 2^failures)`.
pub(crate) fn ceiling(initial: Duration, max: Duration, failures: u32) -> Duration {
    BACKOFF_FACTOR
        .checked_pow(failures)
        .and_then(|factor| initial.checked_mul(factor))
        .map_or(max, |d| d.min(max))
}

/// A delay drawn uniformly in `[ceiling · (1 − fraction), ceiling]`: `fraction` 1 is "full
/// jitter" (`[0, ceiling]`), 0 is exactly `ceiling`. `fraction` is clamped to `[0, 1]`.
pub(crate) fn jitter(ceiling: Duration, fraction: f64, rng: &mut SplitMix64) -> Duration {
    let ceiling = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    let spread = if fraction >= 1.0 {
        ceiling
    } else if fraction > 0.0 {
        // Float rounding may overshoot by a few nanoseconds: clamp.
        ((ceiling as f64 * fraction) as u64).min(ceiling)
    } else {
        0
    };
    Duration::from_nanos(ceiling - spread + rng.up_to(spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_seed_dependent() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SplitMix64::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c = SplitMix64::new(8).next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
        // Reference value of SplitMix64 seeded with 0.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn up_to_stays_in_range() {
        let mut r = SplitMix64::new(1);
        for max in [0, 1, 2, 1000] {
            for _ in 0..200 {
                assert!(r.up_to(max) <= max);
            }
        }
        let _ = r.up_to(u64::MAX);
    }

    #[test]
    fn jitter_fraction_bounds_the_draw() {
        let mut r = SplitMix64::new(9);
        let bound = Duration::from_millis(1000);
        assert_eq!(jitter(bound, 0.0, &mut r), bound);
        for fraction in [0.0, 0.1, 0.5, 0.99, 1.0] {
            let floor = bound.mul_f64(1.0 - fraction);
            for _ in 0..500 {
                let d = jitter(bound, fraction, &mut r);
                assert!(d <= bound, "{d:?} above {bound:?} (jitter {fraction})");
                assert!(
                    d + Duration::from_nanos(1) >= floor,
                    "{d:?} below {floor:?} (jitter {fraction})"
                );
            }
        }
        // Huge bounds do not overflow.
        let _ = jitter(Duration::MAX, 0.5, &mut r);
        let _ = jitter(Duration::MAX, 1.0, &mut r);
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10), 1.0);
        let mut rng = SplitMix64::new(3);
        let mut ceilings = Vec::new();
        for _ in 0..40 {
            ceilings.push(b.ceiling());
            let d = b.next_delay(&mut rng);
            assert!(d <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[1], Duration::from_millis(200));
        assert_eq!(ceilings[6], Duration::from_millis(6400));
        assert_eq!(ceilings[7], Duration::from_secs(10));
        assert_eq!(ceilings[39], Duration::from_secs(10));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        for _ in 0..40 {
            let bound = b.ceiling();
            let d = b.next_equal_jitter(&mut rng);
            assert!(
                d >= bound / 2 && d <= bound,
                "{d:?} outside [{bound:?}/2, {bound:?}]"
            );
        }
    }
}
