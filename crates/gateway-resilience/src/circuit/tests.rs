//! Every transition of the breaker, driven by a fake clock (`start + offset`), never sleeping.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

use CircuitState::{Closed, HalfOpen, Open};
use Outcome::{Failure, Success};

fn settings(edit: impl FnOnce(&mut gateway_config::CircuitBreaker)) -> gateway_config::CircuitBreaker {
    let mut s = gateway_config::CircuitBreaker {
        failure_ratio: 0.5,
        minimum_requests: 10,
        consecutive_failures: None,
        window: gateway_config::Duration::from_secs(10),
        open_duration: gateway_config::Duration::from_secs(30),
        half_open_requests: 3,
        failure_statuses: vec![500, 502, 503, 504],
    };
    edit(&mut s);
    s
}

fn breaker(edit: impl FnOnce(&mut gateway_config::CircuitBreaker)) -> CircuitBreaker {
    CircuitBreaker::new(&settings(edit))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[track_caller]
fn admit(cb: &CircuitBreaker, now: Instant) -> Permit {
    match cb.try_acquire(now) {
        Ok(permit) => permit,
        Err(rejected) => panic!("expected a permit, got {rejected:?} in {cb:?}"),
    }
}

#[track_caller]
fn reject(cb: &CircuitBreaker, now: Instant) -> Duration {
    match cb.try_acquire(now) {
        Ok(permit) => panic!("expected a rejection, got {permit:?} in {cb:?}"),
        Err(rejected) => {
            assert_eq!(cb.peek(now), Err(rejected), "peek agrees with try_acquire");
            rejected.retry_after
        }
    }
}

/// One whole call: acquire, then record the outcome.
#[track_caller]
fn call(cb: &CircuitBreaker, now: Instant, outcome: Outcome) -> Option<Transition> {
    let permit = admit(cb, now);
    cb.record(permit, outcome, now)
}

#[track_caller]
fn calls(cb: &CircuitBreaker, now: Instant, outcome: Outcome, n: usize) {
    for i in 0..n {
        assert_eq!(call(cb, now, outcome), None, "call {i} of {n} changed the state");
    }
}

fn t(from: CircuitState, to: CircuitState) -> Option<Transition> {
    Some(Transition { from, to })
}

/// Trips a default breaker (ratio 0.5, minimum 10) at `now`.
fn trip(cb: &CircuitBreaker, now: Instant) {
    calls(cb, now, Failure, 9);
    assert_eq!(call(cb, now, Failure), t(Closed, Open));
}

/// Waits out the open period that started at `opened` and expects it to be `expected` long.
#[track_caller]
fn expect_open_for(cb: &CircuitBreaker, opened: Instant, expected: Duration) -> Instant {
    assert_eq!(cb.state(opened), Open);
    assert_eq!(reject(cb, opened), expected);
    assert_eq!(reject(cb, opened + expected - ms(1)), ms(1));
    opened + expected
}

#[test]
fn names_and_gauge_values() {
    assert_eq!([Closed.as_str(), Open.as_str(), HalfOpen.as_str()], ["closed", "open", "half_open"]);
    assert_eq!([Closed.as_gauge(), HalfOpen.as_gauge(), Open.as_gauge()], [0, 1, 2]);
    assert_eq!(HalfOpen.to_string(), "half_open");
    assert_eq!(Transition { from: Closed, to: Open }.to_string(), "closed -> open");
    for forced in [Forced::Auto, Forced::Open, Forced::Closed] {
        assert_eq!(Forced::parse(forced.as_str()), Some(forced));
    }
    assert_eq!(Forced::parse("half_open"), None);
    assert_eq!(Forced::parse("OPEN"), None);
    assert_eq!(Forced::default(), Forced::Auto);
}

#[test]
fn failure_statuses_come_from_the_settings() {
    let cb = breaker(|s| s.failure_statuses = vec![429, 503]);
    assert!(cb.is_failure_status(429) && cb.is_failure_status(503));
    assert!(!cb.is_failure_status(500) && !cb.is_failure_status(200) && !cb.is_failure_status(u16::MAX));
    assert_eq!(cb.settings().failure_statuses, [429, 503]);
}

#[test]
fn closed_admits_everything_while_calls_succeed() {
    let cb = breaker(|_| {});
    let start = Instant::now();
    for i in 0..1000 {
        let permit = admit(&cb, start + ms(i));
        assert!(!permit.is_probe() && permit.transition().is_none());
        assert_eq!(cb.record(permit, Success, start + ms(i)), None);
    }
    assert_eq!(cb.state(start + secs(1)), Closed);
    assert_eq!(cb.peek(start), Ok(()));
}

#[test]
fn opens_when_the_failure_ratio_is_reached() {
    let cb = breaker(|_| {});
    let now = Instant::now();
    calls(&cb, now, Success, 5);
    calls(&cb, now, Failure, 4);
    assert_eq!(cb.state(now), Closed, "9 calls are fewer than minimum_requests");
    assert_eq!(call(&cb, now, Failure), t(Closed, Open), "5 failures of 10 is the ratio 0.5");
    assert_eq!(cb.state(now), Open);
}

#[test]
fn stays_closed_below_the_failure_ratio() {
    let cb = breaker(|_| {});
    let now = Instant::now();
    calls(&cb, now, Success, 6);
    calls(&cb, now, Failure, 4);
    assert_eq!(cb.state(now), Closed, "4 of 10 is under 0.5");
    // Each further failure is matched by a success: the ratio stays under 0.5.
    for _ in 0..50 {
        calls(&cb, now, Success, 1);
        calls(&cb, now, Failure, 1);
    }
    assert_eq!(cb.state(now), Closed);
    // 0.3 is exact in parts per million: 3 failures of 10 trips a 0.3 breaker.
    let cb = breaker(|s| s.failure_ratio = 0.3);
    calls(&cb, now, Success, 7);
    calls(&cb, now, Failure, 2);
    assert_eq!(call(&cb, now, Failure), t(Closed, Open));
}

#[test]
fn never_opens_before_minimum_requests() {
    let cb = breaker(|_| {});
    let now = Instant::now();
    calls(&cb, now, Failure, 9);
    assert_eq!(cb.state(now), Closed, "100% failures, but only 9 calls");
    assert_eq!(call(&cb, now, Failure), t(Closed, Open));

    // minimum_requests = 0 acts as 1: the first failure at ratio 1.0 trips.
    let cb = breaker(|s| {
        s.minimum_requests = 0;
        s.failure_ratio = 1.0;
    });
    assert_eq!(call(&cb, now, Failure), t(Closed, Open));
}

#[test]
fn dropped_permits_count_as_neither() {
    let cb = breaker(|_| {});
    let now = Instant::now();
    for _ in 0..100 {
        drop(admit(&cb, now));
    }
    calls(&cb, now, Failure, 9);
    assert_eq!(cb.state(now), Closed, "dropped permits did not count towards minimum_requests");
    assert_eq!(call(&cb, now, Failure), t(Closed, Open));
}

#[test]
fn opens_after_consecutive_failures() {
    let cb = breaker(|s| {
        s.consecutive_failures = Some(3);
        s.minimum_requests = 1000;
    });
    let now = Instant::now();
    calls(&cb, now, Success, 1);
    calls(&cb, now, Failure, 2);
    calls(&cb, now, Success, 1);
    calls(&cb, now, Failure, 2);
    assert_eq!(cb.state(now), Closed, "a success broke each run of failures");
    assert_eq!(call(&cb, now, Failure), t(Closed, Open), "the third failure in a row");

    // Consecutive failures are counted across window buckets: a run is a run.
    let cb = breaker(|s| {
        s.consecutive_failures = Some(3);
        s.minimum_requests = 1000;
    });
    calls(&cb, now, Failure, 1);
    calls(&cb, now + secs(30), Failure, 1);
    assert_eq!(call(&cb, now + secs(60), Failure), t(Closed, Open));

    // Some(0) acts as 1.
    let cb = breaker(|s| s.consecutive_failures = Some(0));
    assert_eq!(call(&cb, now, Failure), t(Closed, Open));
}

#[test]
fn the_window_slides_old_outcomes_out() {
    // window = 10 s in 10 buckets of 1 s.
    let start = Instant::now();

    // 9 failures in the first bucket still count 9.5 s later: the 10th trips.
    let cb = breaker(|_| {});
    calls(&cb, start, Failure, 9);
    assert_eq!(call(&cb, start + ms(9_500), Failure), t(Closed, Open));

    // 10 s later the first bucket has left the window: 1 failure of 1 call.
    let cb = breaker(|_| {});
    calls(&cb, start, Failure, 9);
    calls(&cb, start + secs(10), Failure, 1);
    assert_eq!(cb.state(start + secs(10)), Closed);
    // ...and it takes 9 more failures within the window from there.
    calls(&cb, start + secs(11), Failure, 8);
    assert_eq!(call(&cb, start + secs(19), Failure), t(Closed, Open));

    // Successes slide out too: 10 old successes no longer dilute new failures.
    let cb = breaker(|_| {});
    calls(&cb, start, Success, 10);
    calls(&cb, start + secs(5), Failure, 9);
    assert_eq!(cb.state(start + secs(5)), Closed, "9 of 19 is under 0.5");
    assert_eq!(call(&cb, start + secs(10), Failure), t(Closed, Open), "10 of 10 once the successes left");

    // A long quiet gap (many windows) clears everything.
    let cb = breaker(|_| {});
    calls(&cb, start, Failure, 9);
    calls(&cb, start + secs(3600), Failure, 9);
    assert_eq!(cb.state(start + secs(3600)), Closed);
}

#[test]
fn outcomes_from_a_lagging_clock_are_kept_or_dropped_sensibly() {
    let start = Instant::now() + secs(100);
    let cb = breaker(|_| {});
    // The first outcome fixes the origin; an earlier timestamp lands in the first bucket.
    calls(&cb, start, Failure, 5);
    calls(&cb, start - secs(1), Failure, 4);
    assert_eq!(cb.state(start), Closed);
    assert_eq!(call(&cb, start, Failure), t(Closed, Open));

    // An outcome older than the whole window (its slot already holds newer counts) is
    // dropped from the ratio.
    let cb = breaker(|_| {});
    calls(&cb, start, Success, 1);
    calls(&cb, start + secs(10), Failure, 9);
    calls(&cb, start, Failure, 5);
    assert_eq!(cb.state(start + secs(10)), Closed, "the lagging failures did not count");
    assert_eq!(call(&cb, start + secs(10), Failure), t(Closed, Open));
}

#[test]
fn open_rejects_with_the_time_left() {
    let cb = breaker(|_| {});
    let opened = Instant::now();
    trip(&cb, opened);
    assert_eq!(reject(&cb, opened), secs(30));
    assert_eq!(reject(&cb, opened + secs(10)), secs(20));
    assert_eq!(reject(&cb, opened + ms(29_999)), ms(1));
    assert_eq!(cb.state(opened + ms(29_999)), Open);
    // A clock that lags behind the trip sees the whole period.
    assert_eq!(reject(&cb, opened - secs(5)), secs(30));
}

#[test]
fn open_becomes_half_open_after_the_open_duration() {
    let cb = breaker(|_| {});
    let opened = Instant::now();
    trip(&cb, opened);
    let half = opened + secs(30);
    assert_eq!(cb.state(half), HalfOpen, "state() shows what the next call will find");
    assert_eq!(cb.peek(half), Ok(()));
    let first = admit(&cb, half);
    assert!(first.is_probe());
    assert_eq!(first.transition(), t(Open, HalfOpen), "reported once, by the call that half-opened");
    let second = admit(&cb, half);
    assert!(second.is_probe());
    assert_eq!(second.transition(), None);
    assert_eq!(cb.state(half), HalfOpen);
    drop((first, second));
}

#[test]
fn half_open_admits_at_most_half_open_requests_probes() {
    let cb = breaker(|_| {});
    let opened = Instant::now();
    trip(&cb, opened);
    let half = opened + secs(30);
    let probes: Vec<Permit> = (0..3).map(|_| admit(&cb, half)).collect();
    assert_eq!(reject(&cb, half), Duration::ZERO, "every probe slot is taken");
    assert_eq!(reject(&cb, half + secs(100)), Duration::ZERO, "however long the probes take");

    // A cancelled probe frees its slot.
    let mut probes = probes.into_iter();
    drop(probes.next());
    let replacement = admit(&cb, half);
    assert!(replacement.is_probe());
    assert_eq!(reject(&cb, half), Duration::ZERO);

    // A successful probe does not free a slot: exactly half_open_requests must succeed.
    let second = probes.next().expect("three probes");
    assert_eq!(cb.record(second, Success, half), None);
    assert_eq!(reject(&cb, half), Duration::ZERO);
    assert_eq!(cb.state(half), HalfOpen);
    drop((probes, replacement));
}

#[test]
fn half_open_closes_after_enough_successful_probes() {
    let cb = breaker(|_| {});
    let opened = Instant::now();
    trip(&cb, opened);
    let half = opened + secs(30);
    let probes: Vec<Permit> = (0..3).map(|_| admit(&cb, half)).collect();
    let mut results: Vec<Option<Transition>> = probes.into_iter().map(|p| cb.record(p, Success, half)).collect();
    assert_eq!(results.pop(), Some(t(HalfOpen, Closed)), "the third success closes");
    assert_eq!(results, [None, None]);
    assert_eq!(cb.state(half), Closed);
    let permit = admit(&cb, half);
    assert!(!permit.is_probe());
    drop(permit);

    // Closed afresh: the failures before the trip are forgotten.
    calls(&cb, half, Failure, 9);
    assert_eq!(cb.state(half), Closed);
    assert_eq!(call(&cb, half, Failure), t(Closed, Open));
}

#[test]
fn half_open_with_one_probe() {
    let cb = breaker(|s| s.half_open_requests = 0); // acts as 1
    let opened = Instant::now();
    trip(&cb, opened);
    let probe = admit(&cb, opened + secs(30));
    assert_eq!(reject(&cb, opened + secs(30)), Duration::ZERO);
    assert_eq!(cb.record(probe, Success, opened + secs(31)), t(HalfOpen, Closed));
}

#[test]
fn a_failed_probe_reopens_for_twice_as_long() {
    let cb = breaker(|_| {});
    let opened = Instant::now();
    trip(&cb, opened);
    let half = expect_open_for(&cb, opened, secs(30));
    let probes: Vec<Permit> = (0..3).map(|_| admit(&cb, half)).collect();
    let mut probes = probes.into_iter();
    let first = probes.next().expect("three probes");
    assert_eq!(cb.record(first, Success, half), None);
    let second = probes.next().expect("three probes");
    assert_eq!(cb.record(second, Failure, half + secs(1)), t(HalfOpen, Open), "any failed probe reopens");
    expect_open_for(&cb, half + secs(1), secs(60));
    // The last probe of the old half-open period is stale: its success changes nothing.
    let third = probes.next().expect("three probes");
    assert_eq!(cb.record(third, Success, half + secs(2)), None);
    assert_eq!(cb.state(half + secs(2)), Open);
}

/// Trips, then fails the first probe of each half-open period, and returns the open periods.
fn open_periods(cb: &CircuitBreaker, trips: usize) -> Vec<Duration> {
    let mut now = Instant::now();
    trip(cb, now);
    let mut periods = Vec::new();
    for _ in 0..trips {
        let period = reject(cb, now);
        periods.push(period);
        now += period;
        let probe = admit(cb, now);
        assert_eq!(cb.record(probe, Failure, now), t(HalfOpen, Open));
    }
    periods
}

#[test]
fn the_open_period_grows_and_is_capped() {
    // 30 s: ×2 per trip, capped at 10 × 30 s = 5 min.
    let cb = breaker(|_| {});
    assert_eq!(open_periods(&cb, 7), [30, 60, 120, 240, 300, 300, 300].map(secs));

    // 1 s: capped at 10 × 1 s.
    let cb = breaker(|s| s.open_duration = gateway_config::Duration::from_secs(1));
    assert_eq!(open_periods(&cb, 6), [1, 2, 4, 8, 10, 10].map(secs));

    // 1 min: 10 × would be 10 min, capped at 5 min.
    let cb = breaker(|s| s.open_duration = gateway_config::Duration::from_secs(60));
    assert_eq!(open_periods(&cb, 5), [60, 120, 240, 300, 300].map(secs));

    // 10 min is longer than the cap already: it does not grow, and is not cut.
    let cb = breaker(|s| s.open_duration = gateway_config::Duration::from_secs(600));
    assert_eq!(open_periods(&cb, 3), [600, 600, 600].map(secs));

    // Many trips do not overflow.
    let cb = breaker(|s| s.open_duration = gateway_config::Duration::from_millis(1));
    let periods = open_periods(&cb, 100);
    assert_eq!(periods.last(), Some(&ms(10)));
}

#[test]
fn closing_resets_the_growth() {
    let cb = breaker(|_| {});
    let periods = open_periods(&cb, 3);
    assert_eq!(periods, [30, 60, 120].map(secs));
    // Now open for 240 s; wait it out and close with three successful probes.
    let half = Instant::now() + secs(3600);
    for _ in 0..2 {
        assert_eq!(call(&cb, half, Success), None);
    }
    assert_eq!(call(&cb, half, Success), t(HalfOpen, Closed));
    trip(&cb, half);
    assert_eq!(reject(&cb, half), secs(30), "back to open_duration");
}

#[test]
fn outcomes_of_permits_from_an_earlier_state_are_ignored() {
    let cb = breaker(|_| {});
    let now = Instant::now();
    let slow_success = admit(&cb, now);
    let slow_failure = admit(&cb, now);
    trip(&cb, now);
    assert_eq!(cb.record(slow_failure, Failure, now), None);
    let half = now + secs(30);
    let probe = admit(&cb, half);
    assert_eq!(cb.record(slow_success, Success, half), None, "not a probe");
    assert_eq!(call(&cb, half, Success), None);
    assert_eq!(call(&cb, half, Success), None);
    assert_eq!(reject(&cb, half), Duration::ZERO, "the stale success did not take a probe's place");
    assert_eq!(cb.record(probe, Success, half), t(HalfOpen, Closed));
}

#[test]
fn a_permit_recorded_on_another_breaker_is_dropped() {
    let a = breaker(|_| {});
    let b = breaker(|_| {});
    let now = Instant::now();
    trip(&a, now);
    trip(&b, now);
    let half = now + secs(30);
    let probes: Vec<Permit> = (0..3).map(|_| admit(&a, half)).collect();
    for probe in probes {
        assert_eq!(b.record(probe, Failure, half), None);
    }
    assert_eq!(a.state(half), HalfOpen, "the failures were not a's to count");
    assert_eq!(a.peek(half), Ok(()), "a's probe slots were given back");
    assert_eq!(b.state(half), HalfOpen, "b's open period is over, untouched");
}

#[test]
fn forced_open_rejects_everything() {
    let cb = breaker(|_| {});
    let now = Instant::now();
    let before = admit(&cb, now);
    assert_eq!(cb.force(Forced::Open, now), t(Closed, Open));
    assert_eq!(cb.forced(), Forced::Open);
    assert_eq!(cb.state(now), Open);
    assert_eq!(reject(&cb, now), secs(30), "retry_after is open_duration");
    assert_eq!(reject(&cb, now + secs(3600)), secs(30), "forever");
    assert_eq!(cb.state(now + secs(3600)), Open);
    assert_eq!(cb.record(before, Success, now), None);
    assert_eq!(cb.force(Forced::Open, now), None, "already forced open");
}

#[test]
fn forced_closed_admits_everything_and_counts_nothing() {
    let cb = breaker(|_| {});
    let now = Instant::now();
    trip(&cb, now);
    assert_eq!(cb.force(Forced::Closed, now), t(Open, Closed));
    assert_eq!(cb.forced(), Forced::Closed);
    for _ in 0..100 {
        assert_eq!(call(&cb, now, Failure), None);
    }
    assert_eq!(cb.state(now), Closed);
    assert_eq!(cb.peek(now), Ok(()));
}

#[test]
fn auto_hands_back_a_fresh_closed_circuit() {
    let cb = breaker(|_| {});
    let now = Instant::now();

    // Forced closed -> auto: still closed (no visible change), and counting from zero.
    assert_eq!(cb.force(Forced::Closed, now), None, "closed -> forced closed shows no change");
    calls(&cb, now, Failure, 50);
    let in_flight = admit(&cb, now);
    assert_eq!(cb.force(Forced::Auto, now), None);
    assert_eq!(cb.forced(), Forced::Auto);
    assert_eq!(cb.record(in_flight, Failure, now), None, "issued while forced");
    calls(&cb, now, Failure, 9);
    assert_eq!(call(&cb, now, Failure), t(Closed, Open));

    // Open -> forced open -> auto: closed.
    assert_eq!(cb.force(Forced::Open, now), None, "open -> forced open shows no change");
    assert_eq!(cb.force(Forced::Auto, now), t(Open, Closed));

    // Open with growth -> forced open -> auto: closed, and the growth is forgotten.
    let periods = open_periods(&cb, 2);
    assert_eq!(periods, [30, 60].map(secs));
    assert_eq!(cb.force(Forced::Open, now), None);
    assert_eq!(cb.force(Forced::Auto, now), t(Open, Closed));
    assert_eq!(cb.state(now), Closed);
    trip(&cb, now);
    assert_eq!(reject(&cb, now), secs(30));

    // Auto on a circuit that is not forced does not reset it.
    assert_eq!(cb.force(Forced::Auto, now), None);
    assert_eq!(cb.state(now), Open);

    // Half-open -> forced open: probes in flight become stale, their slots irrelevant.
    let half = now + secs(30);
    let probe = admit(&cb, half);
    assert_eq!(cb.force(Forced::Open, half), t(HalfOpen, Open));
    assert_eq!(cb.record(probe, Success, half), None);
    assert_eq!(cb.force(Forced::Closed, half), t(Open, Closed));
}

#[test]
fn a_clone_shares_the_state() {
    let cb = breaker(|_| {});
    let other = cb.clone();
    let now = Instant::now();
    trip(&cb, now);
    assert_eq!(other.state(now), Open);
    assert_eq!(reject(&other, now), secs(30));
}

#[test]
fn debug_output_does_not_deadlock() {
    let cb = breaker(|_| {});
    let now = Instant::now();
    trip(&cb, now);
    let probe = admit(&cb, now + secs(30));
    let text = format!("{cb:?} {probe:?}");
    assert!(text.contains("HalfOpen") && text.contains("probe: true"), "{text}");
    drop(probe);
}

/// Several threads hammer one breaker with random outcomes, dropped permits and a shared
/// clock that only moves forward (but is read out of order by the threads). Invariants:
/// no more than `half_open_requests` probes of one half-open period are ever out at once,
/// every reported transition is a legal edge, and no probe slot leaks.
#[test]
fn concurrent_callers_keep_the_invariants() {
    const THREADS: u64 = 8;
    const CALLS: u64 = 20_000;
    let cb = breaker(|s| {
        s.window = gateway_config::Duration::from_millis(100);
        s.open_duration = gateway_config::Duration::from_millis(2);
        s.minimum_requests = 5;
        s.consecutive_failures = Some(4);
        s.half_open_requests = 2;
    });
    let limit = 2;
    let start = Instant::now();
    let clock = Arc::new(AtomicU64::new(0)); // microseconds since start
    let probes_out: Arc<Mutex<std::collections::HashMap<u64, u32>>> = Arc::default();
    let transitions: Arc<Mutex<Vec<Transition>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));

    // A watcher checks the locked state while the others run.
    let watcher = {
        let cb = cb.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut checks = 0u64;
            while !done.load(Ordering::Relaxed) {
                let st = cb.shared.lock();
                if let Phase::HalfOpen { in_flight, successes } = st.phase {
                    assert!(in_flight + successes <= limit, "{in_flight} + {successes}");
                }
                assert_eq!(cb.shared.fast.load(Ordering::Relaxed), fast_word(&st));
                drop(st);
                checks += 1;
                std::thread::yield_now();
            }
            checks
        })
    };

    let workers: Vec<_> = (0..THREADS)
        .map(|seed| {
            let cb = cb.clone();
            let clock = Arc::clone(&clock);
            let probes_out = Arc::clone(&probes_out);
            let transitions = Arc::clone(&transitions);
            std::thread::spawn(move || {
                let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut admitted = 0u64;
                for _ in 0..CALLS {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let now = start + Duration::from_micros(clock.fetch_add(3, Ordering::Relaxed));
                    let Ok(permit) = cb.try_acquire(now) else { continue };
                    admitted += 1;
                    if let Some(tr) = permit.transition() {
                        transitions.lock().expect("not poisoned").push(tr);
                    }
                    let generation = permit.generation;
                    if permit.is_probe() {
                        let mut out = probes_out.lock().expect("not poisoned");
                        let n = out.entry(generation).or_default();
                        *n += 1;
                        assert!(*n <= limit, "{n} probes of generation {generation} out at once");
                    }
                    let outcome = if rng % 100 < 45 { Failure } else { Success };
                    let is_probe = permit.is_probe();
                    let dropped = rng % 10 == 0;
                    if is_probe {
                        *probes_out.lock().expect("not poisoned").entry(generation).or_default() -= 1;
                    }
                    let later = start + Duration::from_micros(clock.load(Ordering::Relaxed));
                    if dropped {
                        drop(permit);
                    } else if let Some(tr) = cb.record(permit, outcome, later) {
                        transitions.lock().expect("not poisoned").push(tr);
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: u64 = workers.into_iter().map(|w| w.join().expect("worker panicked")).sum();
    done.store(true, Ordering::Relaxed);
    let checks = watcher.join().expect("watcher panicked");

    let transitions = transitions.lock().expect("not poisoned");
    let legal = [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed), (HalfOpen, Open)];
    for tr in transitions.iter() {
        assert!(legal.contains(&(tr.from, tr.to)), "illegal {tr}");
    }
    let count = |from, to| transitions.iter().filter(|tr| (tr.from, tr.to) == (from, to)).count();
    assert!(count(Closed, Open) > 0 && count(Open, HalfOpen) > 0, "the test exercised trips: {transitions:?}");
    assert!(count(HalfOpen, Closed) > 0 && count(HalfOpen, Open) > 0, "and both half-open exits");
    // Every half-open period was entered once and left at most once.
    let entered = count(Open, HalfOpen);
    let left = count(HalfOpen, Closed) + count(HalfOpen, Open);
    assert!(left == entered || left + 1 == entered, "entered {entered}, left {left}");
    assert!(admitted > 0 && checks > 0);

    // Every permit is back: no probe slot is held.
    let st = cb.shared.lock();
    if let Phase::HalfOpen { in_flight, .. } = st.phase {
        assert_eq!(in_flight, 0, "a probe slot leaked");
    }
}
