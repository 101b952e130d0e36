//! The retry budget of a service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The window over which requests and retries are counted by default.
pub const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Retries per second allowed regardless of traffic, by default.
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

/// Buckets per window: the window slides in steps of a tenth.
const BUCKETS: usize = 10;

/// Parts per million: the fixed-point scale of the ratio, so the comparisons are exact.
const PPM: u128 = 1_000_000;

/// A caller whose clock lags the newest bucket by fewer than this many buckets has an old
/// sample (dropped); a bucket further "ahead" than this is really one from long ago whose
/// 32-bit slice number wrapped (reused).
const MAX_LAG: u32 = 1 << 16;

/// Retries allowed as a fraction of requests over a sliding window, plus a fixed reserve.
///
/// Every original request [`deposit`](RetryBudget::deposit)s; every retry must
/// [`try_withdraw`](RetryBudget::try_withdraw) first. Over a sliding window (10 s by default,
/// in ten buckets), a retry is allowed while
///
/// ```text
/// retries in the window < budget × requests in the window + min_per_second × window
/// ```
///
/// so during an outage retries add at most `budget` (0.2 = 20%) to the load, and a quiet
/// service can still retry: the reserve, `min_per_second × window` (10/s × 10 s = 100 by
/// default), is available to spend at any pace within the window. This is the budget of
/// Finagle and linkerd (and tower's `TpsBudget`), with the same defaults.
///
/// The budget is shared by every request to a service on every thread, so it uses no lock:
/// each bucket is one atomic word holding the slice it counts (upper 32 bits) and the count
/// (lower 32), updated with a compare-and-swap loop. Nothing allocates after construction.
/// Check and withdrawal are two steps, so threads racing for the last retry may overdraw by
/// at most one retry each; a budget is a rate guard, not an exact quota.
#[derive(Debug)]
pub struct RetryBudget {
    /// `budget` in parts per million.
    ratio_ppm: u128,
    /// Retries allowed in any window whatever the traffic: `min_per_second × window`.
    reserve: u128,
    bucket_nanos: u64,
    /// Time zero of the slice numbers: the first call.
    origin: OnceLock<Instant>,
    deposits: [AtomicU64; BUCKETS],
    withdrawals: [AtomicU64; BUCKETS],
}

impl RetryBudget {
    /// A budget of `ratio` (retries per request, e.g. 0.2) with the default window and
    /// minimum: [`DEFAULT_BUDGET_WINDOW`], [`DEFAULT_MIN_RETRIES_PER_SECOND`].
    pub fn new(ratio: f64) -> Self {
        Self::with_window(ratio, DEFAULT_BUDGET_WINDOW, DEFAULT_MIN_RETRIES_PER_SECOND)
    }

    /// The budget of a service's `retry` settings (`budget`), with the defaults.
    pub fn from_config(settings: &gateway_config::Retry) -> Self {
        Self::new(settings.budget)
    }

    /// A budget with its own window and minimum. A negative or NaN ratio acts as 0; a
    /// zero window as one nanosecond (then only the reserve, rounded, is left).
    pub fn with_window(ratio: f64, window: Duration, min_per_second: u32) -> Self {
        let window_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        // `as` saturates; `max` turns NaN into 0.
        let ratio_ppm = (ratio.max(0.0) * PPM as f64).round() as u128;
        let reserve = (f64::from(min_per_second) * window.as_secs_f64()).round() as u128;
        RetryBudget {
            ratio_ppm,
            reserve,
            bucket_nanos: (window_nanos / BUCKETS as u64).max(1),
            origin: OnceLock::new(),
            deposits: Default::default(),
            withdrawals: Default::default(),
        }
    }

    /// Counts one original request (not a retry).
    pub fn deposit(&self, now: Instant) {
        bump(&self.deposits, self.index(now));
    }

    /// Asks for one retry: `true` (and counted) if the budget has room, `false` otherwise.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let index = self.index(now);
        let spent = sum(&self.withdrawals, index);
        if (spent + 1) * PPM > self.allowed_ppm(index) {
            return false;
        }
        bump(&self.withdrawals, index);
        true
    }

    /// Retries that [`try_withdraw`](Self::try_withdraw) would allow now (for metrics).
    pub fn available(&self, now: Instant) -> u64 {
        let index = self.index(now);
        let allowed = self.allowed_ppm(index) / PPM;
        u64::try_from(allowed.saturating_sub(sum(&self.withdrawals, index))).unwrap_or(u64::MAX)
    }

    /// Retries allowed in the window ending with `index`, in parts per million.
    fn allowed_ppm(&self, index: u64) -> u128 {
        self.ratio_ppm * sum(&self.deposits, index) + self.reserve * PPM
    }

    fn index(&self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_init(|| now);
        let slices = now.saturating_duration_since(origin).as_nanos() / u128::from(self.bucket_nanos);
        u64::try_from(slices).unwrap_or(u64::MAX)
    }
}

fn pack(tag: u32, count: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// The slice number as stored: its low 32 bits (wrapping after 2^32 buckets).
fn tag_of(index: u64) -> u32 {
    index as u32
}

/// Adds one to the count of slice `index`, starting the bucket afresh if it held an older one.
fn bump(buckets: &[AtomicU64; BUCKETS], index: u64) {
    let bucket = &buckets[(index % BUCKETS as u64) as usize];
    let tag = tag_of(index);
    let mut current = bucket.load(Ordering::Relaxed);
    loop {
        let (held, count) = unpack(current);
        let ahead = held.wrapping_sub(tag);
        let next = if ahead == 0 {
            pack(tag, count.saturating_add(1))
        } else if count == 0 {
            // Empty (never used): whatever its tag, it is free.
            pack(tag, 1)
        } else if ahead < MAX_LAG {
            // The bucket already counts a newer slice: this sample is older than the window.
            return;
        } else {
            pack(tag, 1)
        };
        match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// The counts of the window that ends with slice `index` (and of slightly newer slices
/// written by callers whose clock is ahead).
fn sum(buckets: &[AtomicU64; BUCKETS], index: u64) -> u128 {
    let tag = tag_of(index);
    buckets
        .iter()
        .map(|bucket| unpack(bucket.load(Ordering::Relaxed)))
        .filter(|&(held, _)| tag.wrapping_sub(held) < BUCKETS as u32 || held.wrapping_sub(tag) < BUCKETS as u32)
        .map(|(_, count)| u128::from(count))
        .sum()
}

#[cfg(test)]
mod tests;
