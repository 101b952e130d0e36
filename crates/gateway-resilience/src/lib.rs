//! Fail fast and retry with restraint: the circuit breaker of an upstream endpoint, the
//! retry policy and the retry budget of a service, as plain state machines.
//!
//! Nothing here does I/O, sleeps or needs a runtime: every method takes the current time
//! (`now: Instant`) from the caller, so tests drive them with a fake clock and production
//! passes `Instant::now()`. The proxy owns the I/O; this crate only decides.
//!
//! - [`CircuitBreaker`] (one per endpoint): closed → open when the failure ratio over a
//!   sliding window or a run of consecutive failures reaches its threshold; open fails fast
//!   for a period that doubles per consecutive trip (capped); half-open lets a few probes
//!   decide. Forced states serve the admin API. See [`CircuitBreaker`] for the details:
//!   what a dropped [`Permit`] means, the growth cap, the locking.
//! - [`RetryPolicy`] (per service): `attempts` **counts the first try** (`attempts = 2` is
//!   one retry), `retry_on`, `per_try_timeout`, exponential back-off with full jitter.
//! - [`RetryBudget`] (per service): retries may add at most `budget` × requests over a
//!   10 s window, plus a reserve of 10 retries/s so a quiet service can still retry.
//!
//! # Example
//!
//! One request to a service whose endpoint answers 503, then recovers:
//!
//! ```
//! use std::time::Instant;
//! use gateway_resilience::{is_idempotent, CircuitBreaker, FailureKind, Outcome, RetryBudget, RetryPolicy};
//!
//! let retry = gateway_config::Retry::default(); // attempts = 2, retry_on 502/503/504, budget 0.2
//! let breaker = CircuitBreaker::new(&gateway_config::CircuitBreaker::default());
//! let policy = RetryPolicy::new(&retry);
//! let budget = RetryBudget::from_config(&retry);
//! let answers = [503, 200];
//!
//! let now = Instant::now();
//! budget.deposit(now); // every original request
//! let mut tries = 0;
//! let status = loop {
//!     let permit = match breaker.try_acquire(now) {
//!         Ok(permit) => permit,
//!         Err(rejected) => break 503, // fail fast; `retry-after` from rejected.retry_after
//!     };
//!     let status = answers[tries as usize]; // send the request upstream
//!     tries += 1;
//!     let outcome = if breaker.is_failure_status(status) { Outcome::Failure } else { Outcome::Success };
//!     if let Some(change) = breaker.record(permit, outcome, now) {
//!         println!("circuit {change}"); // log each transition once
//!     }
//!     let retry = outcome == Outcome::Failure
//!         && is_idempotent("GET")
//!         && policy.should_retry_after(tries, FailureKind::Status(status))
//!         && budget.try_withdraw(now);
//!     if !retry {
//!         break status;
//!     }
//!     let _pause = policy.backoff(tries, 0x5eed); // sleep this long, then pick another endpoint
//! };
//! assert_eq!((status, tries), (200, 2));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod budget;
mod circuit;
mod retry;
mod status;

pub use budget::{RetryBudget, DEFAULT_BUDGET_WINDOW, DEFAULT_MIN_RETRIES_PER_SECOND};
pub use circuit::{
    CircuitBreaker, CircuitState, Forced, Outcome, Permit, Rejected, Transition, MAX_OPEN_DURATION,
    MAX_OPEN_MULTIPLIER, WINDOW_BUCKETS,
};
pub use retry::{is_idempotent, FailureKind, RetryOn, RetryPolicy, UnknownRetryOn, BACKOFF_BASE, BACKOFF_MAX};
