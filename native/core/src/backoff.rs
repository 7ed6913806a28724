//! The one backoff rule of the Rust core, the same as the Elixir side's: the n-th delay after a
//! failure is `min * 2^n`, capped at `max`, then varied uniformly by ±20 % ([`JITTER`]) so that
//! many nodes retrying after a shared outage do not ask in step. A success resets it.
//!
//! Pure: the jitter source is a number in `[0, 1)` passed in ([`Backoff::next_with`]), so the rule
//! is tested without sleeps or randomness; [`Backoff::next_delay`] draws it from the thread RNG.

use std::time::Duration;

/// The jitter of every delay, either way, as a fraction of it.
pub(crate) const JITTER: f64 = 0.2;

/// Exponential backoff from `min`, doubling per failure, capped at `max`, with ±[`JITTER`].
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// The range comes validated from Elixir (`Config.backoff_range!`, `Schedule.error_backoff`);
    /// should `max` be below `min`, every delay is `max` ([`Backoff::base`]), never a panic.
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt without jitter: `min * 2^failures`, at most `max`.
    pub(crate) fn base(&self) -> Duration {
        self.min
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max)
    }

    /// The next delay, with `unit` (in `[0, 1)`) as the jitter source; counts one failure.
    pub(crate) fn next_with(&mut self, unit: f64) -> Duration {
        let base = self.base();
        self.failures = self.failures.saturating_add(1);
        jitter(base, JITTER, unit)
    }

    /// The next delay, jittered from the thread RNG; counts one failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// After a success: the next delay is `min` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last reset.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

/// `d` varied uniformly by up to `fraction` either way: `unit` 0 gives `d * (1 - fraction)`,
/// `unit` → 1 gives `d * (1 + fraction)`.
pub(crate) fn jitter(d: Duration, fraction: f64, unit: f64) -> Duration {
    let factor = 1.0 - fraction + unit.clamp(0.0, 1.0) * 2.0 * fraction;
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// [`jitter`] with the thread RNG.
pub(crate) fn jitter_random(d: Duration, fraction: f64) -> Duration {
    jitter(d, fraction, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_from_min_and_is_capped_at_max() {
        let mut b = Backoff::new(MS(100), MS(1_000));
        let bases: Vec<Duration> = (0..6).map(|_| b.next_with(0.5)).collect();
        assert_eq!(
            bases,
            [MS(100), MS(200), MS(400), MS(800), MS(1_000), MS(1_000)]
        );
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.next_with(0.5), MS(100));
    }

    #[test]
    fn jitter_is_twenty_percent_either_way() {
        let mut b = Backoff::new(MS(1_000), MS(1_000));
        assert_eq!(b.next_with(0.0), MS(800));
        assert_eq!(b.next_with(1.0), MS(1_200));
        assert_eq!(b.next_with(0.25), MS(900));
        // out-of-range sources are clamped, never a negative or doubled delay
        assert_eq!(b.next_with(-3.0), MS(800));
        assert_eq!(b.next_with(7.0), MS(1_200));
        for _ in 0..1_000 {
            let d = b.next_delay();
            assert!(d >= MS(800) && d <= MS(1_200), "{d:?}");
        }
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            b.next_with(0.5);
        }
        assert_eq!(b.base(), Duration::from_secs(30));
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        huge.next_with(0.0);
        assert!(huge.base() >= Duration::MAX / 2);
        assert_eq!(huge.next_with(1.0), Duration::MAX);
    }
}
