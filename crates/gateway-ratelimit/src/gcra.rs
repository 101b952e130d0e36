//! The generic cell rate algorithm, on plain integers so it can be tested without a clock
//! and mirrored exactly by the Redis script.
//!
//! A bucket is one number, its theoretical arrival time (TAT): the instant at which the
//! bucket is full again. A fresh bucket, or one whose TAT has passed, is full. A request
//! moves the TAT one emission interval `T = per / requests` later; it is admitted when the
//! TAT then lies at most `burst × T` ahead of now.

use std::time::Duration;

/// The rate of one limit: `requests` per `per`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    requests: u64,
    per: Duration,
    burst: u64,
}

/// A `requests`, `per` or `burst` the algorithm cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("requests must be greater than 0")]
    ZeroRequests,
    #[error("per must be longer than 0")]
    ZeroPeriod,
    #[error("burst must be greater than 0")]
    ZeroBurst,
    #[error("burst is too large for this rate")]
    TooLarge,
}

impl Quota {
    /// `requests` per `per`; `burst` defaults to `requests`.
    pub fn new(requests: u64, per: Duration, burst: Option<u64>) -> Result<Quota, QuotaError> {
        let burst = burst.unwrap_or(requests);
        if requests == 0 {
            return Err(QuotaError::ZeroRequests);
        }
        if per.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        let quota = Quota { requests, per, burst };
        // Both units must fit in u64 (and, for Redis, in a Lua double: < 2^53 µs, 285 years).
        let fits = quota.units(Unit::Nanos).capacity().is_some()
            && quota.units(Unit::Micros).capacity().is_some_and(|c| c < (1 << 53));
        if !fits {
            return Err(QuotaError::TooLarge);
        }
        Ok(quota)
    }

    /// Requests per window (`q` of `ratelimit-policy`).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The window (`w` of `ratelimit-policy`).
    pub fn per(&self) -> Duration {
        self.per
    }

    /// The bucket size: the most requests admitted at once (`ratelimit-limit`).
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The emission interval and burst in a time unit. The interval is at least one unit:
    /// rates above one request per nanosecond (local) or microsecond (Redis) per key are
    /// capped there.
    pub(crate) fn units(&self, unit: Unit) -> Rate {
        let per = match unit {
            Unit::Nanos => self.per.as_nanos(),
            Unit::Micros => self.per.as_micros(),
        };
        let interval = (per / u128::from(self.requests)).max(1);
        Rate { interval: u64::try_from(interval).unwrap_or(u64::MAX), burst: self.burst }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Nanos,
    Micros,
}

impl Unit {
    pub(crate) fn duration(self, n: u64) -> Duration {
        match self {
            Unit::Nanos => Duration::from_nanos(n),
            Unit::Micros => Duration::from_micros(n),
        }
    }
}

/// A quota in one time unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    /// `T`: time one request adds to the TAT.
    pub(crate) interval: u64,
    pub(crate) burst: u64,
}

impl Rate {
    /// `burst × T`: how far ahead of now the TAT may be after an admitted request.
    pub(crate) fn capacity(&self) -> Option<u64> {
        self.interval.checked_mul(self.burst)
    }
}

/// What one check found, in the rate's time unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) allowed: bool,
    /// Requests that would still be admitted right now.
    pub(crate) remaining: u64,
    /// Until the bucket is full again.
    pub(crate) reset: u64,
    /// Until the next request is admitted (0 when this one was).
    pub(crate) retry_after: u64,
}

/// One request against a bucket whose TAT is `tat` (0 for a new bucket) at `now`: the
/// outcome and the TAT to store (unchanged when refused).
pub(crate) fn check(rate: Rate, tat: u64, now: u64) -> (Outcome, u64) {
    let capacity = rate.capacity().unwrap_or(u64::MAX);
    let tat = tat.max(now);
    let new_tat = tat.saturating_add(rate.interval);
    let used = new_tat - now;
    if used > capacity {
        let outcome = Outcome { allowed: false, remaining: 0, reset: tat - now, retry_after: used - capacity };
        (outcome, tat)
    } else {
        let outcome =
            Outcome { allowed: true, remaining: (capacity - used) / rate.interval, reset: used, retry_after: 0 };
        (outcome, new_tat)
    }
}

/// Gives back one admitted request: the TAT to store, or `None` when the bucket is full.
pub(crate) fn refund(rate: Rate, tat: u64, now: u64) -> Option<u64> {
    let tat = tat.saturating_sub(rate.interval);
    (tat > now).then_some(tat)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn rate(requests: u64, per_secs: u64, burst: Option<u64>) -> Rate {
        Quota::new(requests, Duration::from_secs(per_secs), burst).map(|q| q.units(Unit::Nanos)).unwrap()
    }

    #[test]
    fn burst_then_refusal() {
        // 10 per second, burst 5: T = 100ms, capacity 500ms.
        let r = rate(10, 1, Some(5));
        let mut tat = 0;
        let now = 42 * SEC;
        for expected_remaining in (0..5).rev() {
            let (o, t) = check(r, tat, now);
            assert!(o.allowed);
            assert_eq!(o.remaining, expected_remaining);
            assert_eq!(o.reset, (5 - expected_remaining) * SEC / 10, "until full again");
            assert_eq!(o.retry_after, 0);
            tat = t;
        }
        let (o, t) = check(r, tat, now);
        assert!(!o.allowed);
        assert_eq!(o.remaining, 0);
        assert_eq!(o.retry_after, SEC / 10, "one emission interval");
        assert_eq!(o.reset, SEC / 2);
        assert_eq!(t, tat, "a refusal does not consume");
    }

    #[test]
    fn refill_timing_and_retry_after() {
        let r = rate(10, 1, Some(2));
        let now = SEC;
        let (_, tat) = check(r, 0, now);
        let (_, tat) = check(r, tat, now);
        let (o, _) = check(r, tat, now);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 100_000_000);
        // One nanosecond early: still refused, and the wait says so.
        let (o, _) = check(r, tat, now + 100_000_000 - 1);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 1);
        // On time: admitted, with nothing left.
        let (o, tat2) = check(r, tat, now + 100_000_000);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        // After a full refill period the whole burst is back.
        let (o, _) = check(r, tat2, now + 100_000_000 + 2 * 100_000_000);
        assert!(o.allowed);
        assert_eq!(o.remaining, 1);
    }

    #[test]
    fn sustained_rate_is_the_quota() {
        // 100 per minute, burst 20 (the SPEC example): over 10 minutes, burst + 1000 pass.
        let r = rate(100, 60, Some(20));
        let (mut tat, mut admitted) = (0, 0);
        let step = SEC / 100;
        for i in 0..(600 * 100) {
            let (o, t) = check(r, tat, SEC + i * step);
            tat = t;
            admitted += u64::from(o.allowed);
        }
        assert!((1019..=1021).contains(&admitted), "{admitted}");
    }

    #[test]
    fn refund_undoes_a_check() {
        let r = rate(10, 1, Some(3));
        let now = SEC;
        let (_, tat) = check(r, 0, now);
        let (_, tat) = check(r, tat, now);
        let back = refund(r, tat, now).unwrap();
        let (o, _) = check(r, back, now);
        assert_eq!(o.remaining, 1, "as if only one request had been made");
        let (_, one) = check(r, 0, now);
        assert_eq!(refund(r, one, now), None, "full again: nothing to store");
    }

    #[test]
    fn bad_quotas() {
        assert_eq!(Quota::new(0, Duration::from_secs(1), None), Err(QuotaError::ZeroRequests));
        assert_eq!(Quota::new(1, Duration::ZERO, None), Err(QuotaError::ZeroPeriod));
        assert_eq!(Quota::new(1, Duration::from_secs(1), Some(0)), Err(QuotaError::ZeroBurst));
        assert_eq!(Quota::new(1, Duration::from_secs(1_000_000_000), Some(u64::MAX)), Err(QuotaError::TooLarge));
        let fast = Quota::new(u64::MAX, Duration::from_secs(1), Some(1)).unwrap();
        assert_eq!(fast.units(Unit::Nanos).interval, 1);
    }
}
