use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn deposit(budget: &RetryBudget, now: Instant, n: usize) {
    for _ in 0..n {
        budget.deposit(now);
    }
}

/// Withdraws until refused; returns how many were allowed.
fn drain(budget: &RetryBudget, now: Instant) -> u64 {
    let before = budget.available(now);
    let mut n = 0;
    while budget.try_withdraw(now) {
        n += 1;
        assert!(n <= 1_000_000, "the budget never ran out");
    }
    assert_eq!(n, before, "available() predicted the withdrawals");
    assert_eq!(budget.available(now), 0);
    n
}

#[test]
fn a_fifth_of_the_requests_plus_the_reserve() {
    let start = Instant::now();
    // 100 requests over 10 s, budget 0.2, minimum 10/s over 10 s: 20 + 100 retries.
    let budget = RetryBudget::new(0.2);
    for second in 0..10 {
        deposit(&budget, start + secs(second), 10);
    }
    assert_eq!(drain(&budget, start + ms(9_500)), 120);

    // Without the minimum: exactly 20.
    let budget = RetryBudget::with_window(0.2, secs(10), 0);
    for second in 0..10 {
        deposit(&budget, start + secs(second), 10);
    }
    assert_eq!(drain(&budget, start + ms(9_500)), 20);

    // A ratio that is not a power of two stays exact: 0.3 × 10 = 3.
    let budget = RetryBudget::with_window(0.3, secs(10), 0);
    deposit(&budget, start, 10);
    assert_eq!(drain(&budget, start), 3);
}

#[test]
fn the_reserve_lets_a_quiet_service_retry() {
    let start = Instant::now();
    let budget = RetryBudget::new(0.2);
    assert_eq!(budget.available(start), 100, "10/s × 10 s, with no traffic at all");
    assert_eq!(drain(&budget, start), 100);
    // The next window has the reserve again.
    assert_eq!(budget.available(start + secs(9)), 0);
    assert_eq!(drain(&budget, start + secs(10)), 100);

    let budget = RetryBudget::with_window(0.2, secs(1), 10);
    assert_eq!(drain(&budget, start), 10);
    assert_eq!(drain(&budget, start + secs(1)), 10);
}

#[test]
fn no_budget_and_no_reserve_never_retries() {
    let start = Instant::now();
    let budget = RetryBudget::with_window(0.0, secs(10), 0);
    deposit(&budget, start, 1000);
    assert!(!budget.try_withdraw(start));
    let budget = RetryBudget::with_window(f64::NAN, secs(10), 0);
    deposit(&budget, start, 1000);
    assert!(!budget.try_withdraw(start));
    let budget = RetryBudget::with_window(-1.0, secs(10), 0);
    deposit(&budget, start, 1000);
    assert!(!budget.try_withdraw(start));
}

#[test]
fn refills_as_the_window_slides() {
    let start = Instant::now();
    let budget = RetryBudget::with_window(0.2, secs(10), 0);
    deposit(&budget, start, 100);
    assert_eq!(drain(&budget, start), 20);

    // 5 s later, 50 more requests: 0.2 × 150 = 30, 20 spent.
    deposit(&budget, start + secs(5), 50);
    assert_eq!(drain(&budget, start + secs(5)), 10);

    // At 10 s the first second leaves the window: its 100 requests and 20 retries.
    // 50 requests and 10 retries remain: nothing left.
    assert_eq!(budget.available(start + secs(10)), 0);
    deposit(&budget, start + secs(10), 50);
    assert_eq!(drain(&budget, start + secs(10)), 10, "0.2 × 100 - 10");

    // At 15 s the second batch leaves; 50 requests and 10 retries from 10 s remain.
    assert_eq!(budget.available(start + secs(15)), 0);
    // At 20 s everything has left.
    assert_eq!(budget.available(start + secs(20)), 0);
    deposit(&budget, start + secs(20), 10);
    assert_eq!(drain(&budget, start + secs(20)), 2);
}

#[test]
fn retries_cannot_multiply_load_in_an_outage() {
    // Steady 100 requests/s, every one failing and wanting a retry, for a minute.
    let start = Instant::now();
    let budget = RetryBudget::new(0.2);
    let mut retries = 0u64;
    for tick in 0..60_000u64 {
        let now = start + ms(tick);
        if tick % 10 == 0 {
            budget.deposit(now);
            if budget.try_withdraw(now) {
                retries += 1;
            }
        }
    }
    // 6000 requests: at most 20% plus the reserve of each window (10/s).
    let requests = 6000;
    assert!(retries <= requests / 5 + 10 * 60 + 100, "{retries} retries");
    assert!(retries >= requests / 5, "{retries} retries: the budget was spent");
}

#[test]
fn lagging_and_leading_clocks() {
    let start = Instant::now() + secs(100);
    let budget = RetryBudget::with_window(1.0, secs(10), 0);
    deposit(&budget, start, 1); // fixes the origin
    deposit(&budget, start - secs(5), 1); // before the origin: counted in the first bucket
    deposit(&budget, start + secs(21), 5);
    deposit(&budget, start + secs(1), 3); // its bucket already counts second 21: too old, dropped
    assert_eq!(budget.available(start + secs(21)), 5);
    // Seen from a clock that lags by one second, the newer bucket still counts.
    assert_eq!(budget.available(start + secs(20)), 5);
    assert_eq!(budget.available(start), 2, "only the first bucket lies in range");
}

#[test]
fn slice_numbers_wrap_without_losing_counts() {
    let buckets: [AtomicU64; BUCKETS] = Default::default();
    let near = u64::from(u32::MAX) - 3;
    for index in near..near + 8 {
        bump(&buckets, index);
        bump(&buckets, index);
    }
    assert_eq!(sum(&buckets, near + 7), 16);
    assert_eq!(sum(&buckets, near + 12), 10, "slices near+3 ..= near+7 are left");
    // A bucket untouched for more than MAX_LAG slices is reset, not mistaken for a newer one.
    let later = near + 7 + u64::from(MAX_LAG) * 3;
    bump(&buckets, later);
    assert_eq!(sum(&buckets, later), 1);
}

#[test]
fn concurrent_withdrawals_stay_near_the_budget() {
    const THREADS: u64 = 8;
    let start = Instant::now();
    let budget = Arc::new(RetryBudget::with_window(0.2, secs(10), 0));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || {
                let mut granted = 0u64;
                for i in 0..10_000u64 {
                    let now = start + Duration::from_micros(i * 100); // within one second
                    budget.deposit(now);
                    if budget.try_withdraw(now) {
                        granted += 1;
                    }
                }
                granted
            })
        })
        .collect();
    let granted: u64 = workers.into_iter().map(|w| w.join().expect("worker panicked")).sum();
    let requests = THREADS * 10_000;
    assert_eq!(sum(&budget.deposits, 9), u128::from(requests), "no deposit was lost");
    assert_eq!(sum(&budget.withdrawals, 9), u128::from(granted));
    // Each thread can overdraw by at most one per race it loses; in practice a handful.
    assert!(granted <= requests / 5 + THREADS * 100, "{granted} of {requests}");
    assert!(granted >= requests / 5 - THREADS, "{granted} of {requests}");
}
