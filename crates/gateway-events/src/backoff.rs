//! Exponential back-off, shared by delivery retries, resubscribing and reconnecting.

use std::time::Duration;

/// Exponential back-off: `initial` before the first retry, doubled after each failure,
/// never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub initial: Duration,
    /// The cap: no delay is longer.
    pub max: Duration,
}

impl Backoff {
    /// Delivery retries: 100 ms, 200 ms, 400 ms, ... capped at 10 s.
    pub const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

    /// Reconnecting to a broker and re-creating a consumer: 100 ms doubling, capped at 5 s, so a
    /// broker that comes back is used again within seconds.
    pub const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

    /// A back-off from `initial`, doubling, capped at `max`.
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max }
    }

    /// The delay before retry number `n` (0 for the first retry): `initial * 2^n`, capped.
    pub fn delay(&self, n: u32) -> Duration {
        self.initial.saturating_mul(1u32 << n.min(31)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::RETRY;
        let delays: Vec<u64> = (0..10).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
    }
}
