//! The circuit breaker of one upstream endpoint.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::status::StatusSet;

/// Number of time buckets in the sliding window; each covers `window / WINDOW_BUCKETS`.
///
/// The window therefore slides in steps of a tenth: an outcome counts for between 90% and
/// 100% of `window`.
pub const WINDOW_BUCKETS: usize = 10;

/// The open period grows ×2 per consecutive trip up to this multiple of `open_duration`.
pub const MAX_OPEN_MULTIPLIER: u32 = 10;

/// The open period never grows beyond this (an `open_duration` longer than this does not grow).
pub const MAX_OPEN_DURATION: Duration = Duration::from_secs(5 * 60);

/// Parts per million: the fixed-point scale of `failure_ratio`, so the trip test is exact.
const PPM: u64 = 1_000_000;

/// The state of a circuit as the admin API and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls fail at once; nothing goes upstream.
    Open,
    /// A few probes go through to decide between closed and open.
    HalfOpen,
}

impl CircuitState {
    /// The name used by the admin API: `closed`, `open` or `half_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The value of the `gateway_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub const fn as_gauge(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state set by hand through the admin API (`POST .../circuit` with `{"state": ...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Forced {
    /// The state machine decides (the normal case).
    #[default]
    Auto,
    /// Always reject, with `retry_after` = `open_duration`: the endpoint is taken out by hand.
    Open,
    /// Always admit; outcomes are not counted.
    Closed,
}

impl Forced {
    /// Parses the admin API's word: `auto`, `open` or `closed`.
    pub fn parse(word: &str) -> Option<Forced> {
        match word {
            "auto" => Some(Forced::Auto),
            "open" => Some(Forced::Open),
            "closed" => Some(Forced::Closed),
            _ => None,
        }
    }

    /// The admin API's word: `auto`, `open` or `closed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Forced::Auto => "auto",
            Forced::Open => "open",
            Forced::Closed => "closed",
        }
    }
}

impl fmt::Display for Forced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an admitted call ended, as far as the endpoint's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A response whose status is not in `failure_statuses`.
    Success,
    /// A connect error, a reset, a timeout, or a status in `failure_statuses`.
    Failure,
}

/// A change of state, reported exactly once by the call that caused it, so it can be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

/// A call refused because the circuit is open (or half-open with every probe slot taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rejected {
    /// Time until this endpoint admits calls again: the rest of the open period; zero when
    /// half-open (probes are in flight and may close the circuit any moment); `open_duration`
    /// when forced open. A `retry-after` header should round this up to at least one second.
    pub retry_after: Duration,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit open, retry after {:?}", self.retry_after)
    }
}

impl std::error::Error for Rejected {}

/// The right to send one call, from [`CircuitBreaker::try_acquire`].
///
/// Hand it back with [`CircuitBreaker::record`] (to the breaker that issued it). Dropping it
/// instead counts as neither success nor failure, and gives a half-open probe slot back.
#[must_use = "record the outcome with CircuitBreaker::record; a dropped permit counts as a cancelled call"]
pub struct Permit {
    /// The breaker's generation when the permit was issued; outcomes from older ones are ignored.
    generation: u64,
    /// Set for a half-open probe: the breaker whose probe slot is given back on drop.
    probe: Option<Arc<Shared>>,
    /// The Open -> HalfOpen change this acquisition caused, if any.
    transition: Option<Transition>,
}

impl Permit {
    fn plain(generation: u64) -> Permit {
        Permit { generation, probe: None, transition: None }
    }

    /// The state change caused by this acquisition (Open -> HalfOpen), to be logged once.
    pub fn transition(&self) -> Option<Transition> {
        self.transition
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("generation", &self.generation)
            .field("probe", &self.is_probe())
            .field("transition", &self.transition)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = self.probe.take() {
            shared.release_probe(self.generation);
        }
    }
}

/// The circuit breaker of one upstream endpoint. Cloning shares the state.
///
/// # States
///
/// - **Closed**: every call is admitted. Outcomes go into a sliding window of
///   [`WINDOW_BUCKETS`] time buckets covering `window`. The circuit trips (opens) when, at a
///   failure, the window holds at least `minimum_requests` outcomes and the failure ratio is
///   at least `failure_ratio`, or when `consecutive_failures` (if set) failures came in a row.
/// - **Open**: every call is rejected at once with [`Rejected::retry_after`], the time left
///   until the circuit half-opens. The first [`CircuitBreaker::try_acquire`] after the open
///   period moves the circuit to half-open (and gets the first probe).
/// - **HalfOpen**: at most `half_open_requests` probes are admitted; the circuit closes after
///   that many successful probes, and opens again at the first failed probe. A probe that is
///   dropped without an outcome (the request was cancelled) frees its slot for another probe.
///
/// Each consecutive trip doubles the open period: `open_duration`, ×2, ×4, …, never beyond
/// [`MAX_OPEN_MULTIPLIER`] × `open_duration` and never beyond [`MAX_OPEN_DURATION`] (unless
/// `open_duration` itself is longer: then it does not grow). Closing resets the growth.
///
/// # Permits
///
/// An admitted call holds a [`Permit`] and hands it back with [`CircuitBreaker::record`].
/// Dropping a permit without recording counts as neither success nor failure: it is the
/// cancelled request (client gone, deadline of the whole request, shutdown), which says
/// nothing about the endpoint. A dropped half-open probe gives its probe slot back, so a
/// cancelled probe can never wedge the circuit in half-open. Outcomes of permits issued
/// before the last state change (a call admitted while closed that ends after the trip, or
/// any call around a forced state) are ignored: they describe an earlier state.
///
/// # Concurrency
///
/// A breaker is a cheap handle (`Clone` shares the state) used by every worker thread. The
/// state is a small struct behind a [`std::sync::Mutex`]: the critical sections are a few
/// integer operations over a fixed array of ten buckets, never allocate, never block and
/// are never held across an `.await` (nothing here is async). The common call, admitting a
/// request while closed, does not take the lock at all: the lock holder publishes "closed,
/// generation N" in one atomic word that [`CircuitBreaker::try_acquire`] reads. Recording an
/// outcome takes the lock once. A lock-free ring would save that lock; it was not worth the
/// subtlety for a per-endpoint structure whose decisions (trip, close) must be exact.
///
/// Every method takes `now`; pass `Instant::now()` in production and a fake clock in tests.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("CircuitBreaker")
            .field("forced", &state.forced)
            .field("phase", &state.phase)
            .field("trips", &state.trips)
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A closed breaker for these settings.
    ///
    /// Out-of-range values (which configuration validation rejects) are clamped instead of
    /// panicking: `half_open_requests` and `consecutive_failures` of 0 act as 1,
    /// `minimum_requests` of 0 as 1, and a zero `window` as one nanosecond.
    pub fn new(settings: &gateway_config::CircuitBreaker) -> Self {
        let window_nanos = u64::try_from(settings.window.get().as_nanos()).unwrap_or(u64::MAX);
        let open_duration = settings.open_duration.get();
        let cap = open_duration.saturating_mul(MAX_OPEN_MULTIPLIER).min(MAX_OPEN_DURATION).max(open_duration);
        let compiled = Compiled {
            // `as` saturates (and maps NaN to 0); validation keeps the ratio in (0, 1].
            failure_ratio_ppm: (settings.failure_ratio.clamp(0.0, 1.0) * PPM as f64).round() as u64,
            minimum_requests: u64::from(settings.minimum_requests.max(1)),
            consecutive_failures: settings.consecutive_failures.map(|n| n.max(1)),
            bucket_nanos: (window_nanos / WINDOW_BUCKETS as u64).max(1),
            open_duration,
            max_open_duration: cap,
            half_open_requests: settings.half_open_requests.max(1),
            failure_statuses: settings.failure_statuses.iter().copied().collect(),
        };
        let state = State {
            generation: 0,
            forced: Forced::Auto,
            phase: Phase::Closed,
            trips: 0,
            consecutive_failures: 0,
            origin: None,
            window: [Bucket::default(); WINDOW_BUCKETS],
        };
        let shared = Shared {
            settings: settings.clone(),
            compiled,
            fast: AtomicU64::new(fast_word(&state)),
            state: Mutex::new(state),
        };
        CircuitBreaker { shared: Arc::new(shared) }
    }

    /// The settings this breaker was built from.
    pub fn settings(&self) -> &gateway_config::CircuitBreaker {
        &self.shared.settings
    }

    /// Whether an upstream status counts as a failure (`failure_statuses`).
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.shared.compiled.failure_statuses.contains(status)
    }

    /// Asks to send one call now.
    ///
    /// Closed (or forced closed): always a permit. Open: [`Rejected`] until the open period
    /// has passed; the first call after it moves the circuit to half-open and is its first
    /// probe ([`Permit::transition`] reports the change). Half-open: a probe permit while
    /// fewer than `half_open_requests` probes are in flight or have succeeded.
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, Rejected> {
        let fast = self.shared.fast.load(Ordering::Acquire);
        if fast & FAST_ADMIT != 0 {
            return Ok(Permit::plain(fast >> 1));
        }
        let cfg = &self.shared.compiled;
        let mut st = self.shared.lock();
        match st.forced {
            Forced::Open => return Err(Rejected { retry_after: cfg.open_duration }),
            Forced::Closed => return Ok(Permit::plain(st.generation)),
            Forced::Auto => {}
        }
        let mut transition = None;
        if let Phase::Open { since, duration } = st.phase {
            let elapsed = now.saturating_duration_since(since);
            if elapsed < duration {
                return Err(Rejected { retry_after: duration - elapsed });
            }
            st.enter(Phase::HalfOpen { in_flight: 0, successes: 0 });
            transition = Some(Transition { from: CircuitState::Open, to: CircuitState::HalfOpen });
            self.shared.publish(&st);
        }
        match &mut st.phase {
            Phase::HalfOpen { in_flight, successes } => {
                if *in_flight + *successes < cfg.half_open_requests {
                    *in_flight += 1;
                    Ok(Permit { generation: st.generation, probe: Some(Arc::clone(&self.shared)), transition })
                } else {
                    Err(Rejected { retry_after: Duration::ZERO })
                }
            }
            // The fast word was read just before another thread closed the circuit.
            Phase::Closed => Ok(Permit::plain(st.generation)),
            // Unreachable: an open phase either rejected above or became half-open.
            Phase::Open { .. } => Err(Rejected { retry_after: Duration::ZERO }),
        }
    }

    /// What [`try_acquire`](Self::try_acquire) would answer now, without taking a permit or
    /// changing state: for a load balancer that skips endpoints whose circuit is open.
    pub fn peek(&self, now: Instant) -> Result<(), Rejected> {
        if self.shared.fast.load(Ordering::Acquire) & FAST_ADMIT != 0 {
            return Ok(());
        }
        let cfg = &self.shared.compiled;
        let st = self.shared.lock();
        match (st.forced, st.phase) {
            (Forced::Open, _) => Err(Rejected { retry_after: cfg.open_duration }),
            (Forced::Closed, _) | (Forced::Auto, Phase::Closed) => Ok(()),
            (Forced::Auto, Phase::Open { since, duration }) => {
                let elapsed = now.saturating_duration_since(since);
                if elapsed < duration {
                    Err(Rejected { retry_after: duration - elapsed })
                } else {
                    Ok(())
                }
            }
            (Forced::Auto, Phase::HalfOpen { in_flight, successes }) => {
                if in_flight + successes < cfg.half_open_requests {
                    Ok(())
                } else {
                    Err(Rejected { retry_after: Duration::ZERO })
                }
            }
        }
    }

    /// Hands a permit back with the call's outcome; returns the state change it caused.
    ///
    /// Ignored (returns `None`) when the permit was issued before the last state change or
    /// while a state is forced. A permit from another breaker is dropped (see [`Permit`]).
    pub fn record(&self, mut permit: Permit, outcome: Outcome, now: Instant) -> Option<Transition> {
        let probe = permit.probe.take();
        if let Some(other) = &probe {
            if !Arc::ptr_eq(other, &self.shared) {
                other.release_probe(permit.generation);
                return None;
            }
        }
        let cfg = &self.shared.compiled;
        let mut st = self.shared.lock();
        if st.generation != permit.generation || st.forced != Forced::Auto {
            return None;
        }
        let transition = match (st.phase, probe.is_some()) {
            (Phase::Closed, false) => st.record_closed(cfg, outcome, now),
            (Phase::HalfOpen { .. }, true) => st.record_probe(cfg, outcome, now),
            _ => None,
        };
        if transition.is_some() {
            self.shared.publish(&st);
        }
        transition
    }

    /// The state now, as the admin API and the `gateway_circuit_state` gauge show it.
    ///
    /// An open circuit whose open period has passed reports `HalfOpen`: the next call will be
    /// a probe (the change itself is reported by that [`try_acquire`](Self::try_acquire)).
    /// A forced state reports as what it does: forced open is `Open`, forced closed `Closed`.
    pub fn state(&self, now: Instant) -> CircuitState {
        self.shared.lock().state(now)
    }

    /// The state set by hand, if any ([`Forced::Auto`] when the state machine decides).
    pub fn forced(&self) -> Forced {
        self.shared.lock().forced
    }

    /// Forces the circuit open or closed, or hands it back to the state machine.
    ///
    /// Every change starts the state machine afresh (closed, empty window, no trip growth),
    /// so `Auto` after a forced state is a fresh closed circuit. Forcing the state it already
    /// has is a no-op: `Auto` on a circuit that is not forced does not reset it. Returns the
    /// change of the visible [`state`](Self::state), if any.
    pub fn force(&self, forced: Forced, now: Instant) -> Option<Transition> {
        let mut st = self.shared.lock();
        if st.forced == forced {
            return None;
        }
        let before = st.state(now);
        st.forced = forced;
        st.trips = 0;
        st.enter(Phase::Closed);
        self.shared.publish(&st);
        let after = st.state(now);
        (before != after).then_some(Transition { from: before, to: after })
    }
}

/// Set in the fast word when `try_acquire` may admit without the lock.
const FAST_ADMIT: u64 = 1;

/// The lock-free summary of a state: generation << 1 | admit-without-lock.
fn fast_word(st: &State) -> u64 {
    let admit = match st.forced {
        Forced::Closed => true,
        Forced::Open => false,
        Forced::Auto => matches!(st.phase, Phase::Closed),
    };
    (st.generation << 1) | u64::from(admit)
}

#[derive(Debug)]
struct Shared {
    settings: gateway_config::CircuitBreaker,
    compiled: Compiled,
    /// [`fast_word`] of the state, republished under the lock at every change.
    fast: AtomicU64,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections cannot panic, but a poisoned lock must not take the proxy down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, st: &State) {
        self.fast.store(fast_word(st), Ordering::Release);
    }

    /// A probe permit was dropped without an outcome: its slot is free again.
    fn release_probe(&self, generation: u64) {
        let mut st = self.lock();
        if st.generation == generation {
            if let Phase::HalfOpen { in_flight, .. } = &mut st.phase {
                *in_flight = in_flight.saturating_sub(1);
            }
        }
    }
}

/// The settings turned into the numbers the state machine uses.
#[derive(Debug)]
struct Compiled {
    failure_ratio_ppm: u64,
    minimum_requests: u64,
    consecutive_failures: Option<u32>,
    bucket_nanos: u64,
    open_duration: Duration,
    /// The cap of the growing open period (see [`MAX_OPEN_MULTIPLIER`]).
    max_open_duration: Duration,
    half_open_requests: u32,
    failure_statuses: StatusSet,
}

impl Compiled {
    /// The open period after the `trips`-th consecutive trip (1 for the first).
    fn open_duration(&self, trips: u32) -> Duration {
        let doublings = trips.saturating_sub(1).min(31);
        self.open_duration.saturating_mul(1 << doublings).min(self.max_open_duration)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        since: Instant,
        duration: Duration,
    },
    HalfOpen {
        /// Probes admitted and not yet recorded or dropped.
        in_flight: u32,
        /// Probes that succeeded; the circuit closes when this reaches `half_open_requests`.
        successes: u32,
    },
}

/// Outcomes of one slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice (time since `origin` / bucket width) the counts belong to.
    index: u64,
    successes: u32,
    failures: u32,
}

#[derive(Debug)]
struct State {
    /// Bumped at every change of state; permits from older generations are ignored.
    generation: u64,
    forced: Forced,
    phase: Phase,
    /// Consecutive trips since the circuit last closed: the exponent of the open period.
    trips: u32,
    /// Failures in a row while closed.
    consecutive_failures: u32,
    /// Time zero of the bucket indexes: the first outcome ever recorded.
    origin: Option<Instant>,
    window: [Bucket; WINDOW_BUCKETS],
}

impl State {
    fn state(&self, now: Instant) -> CircuitState {
        match (self.forced, self.phase) {
            (Forced::Open, _) => CircuitState::Open,
            (Forced::Closed, _) | (Forced::Auto, Phase::Closed) => CircuitState::Closed,
            (Forced::Auto, Phase::HalfOpen { .. }) => CircuitState::HalfOpen,
            (Forced::Auto, Phase::Open { since, duration }) => {
                if now.saturating_duration_since(since) < duration {
                    CircuitState::Open
                } else {
                    CircuitState::HalfOpen
                }
            }
        }
    }

    /// Moves to a new phase with fresh counters; outstanding permits become stale.
    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
        self.consecutive_failures = 0;
        self.window = [Bucket::default(); WINDOW_BUCKETS];
    }

    fn record_closed(&mut self, cfg: &Compiled, outcome: Outcome, now: Instant) -> Option<Transition> {
        let origin = *self.origin.get_or_insert(now);
        let index = bucket_index(origin, now, cfg.bucket_nanos);
        let slot = &mut self.window[slot_of(index)];
        if slot.index != index {
            if slot.index > index {
                // Older than the whole window (a caller whose clock lags by more than it).
                return self.after_outcome(cfg, outcome, now, index);
            }
            *slot = Bucket { index, successes: 0, failures: 0 };
        }
        match outcome {
            Outcome::Success => slot.successes = slot.successes.saturating_add(1),
            Outcome::Failure => slot.failures = slot.failures.saturating_add(1),
        }
        self.after_outcome(cfg, outcome, now, index)
    }

    /// Updates the run of failures and trips the circuit if a threshold is reached.
    fn after_outcome(&mut self, cfg: &Compiled, outcome: Outcome, now: Instant, index: u64) -> Option<Transition> {
        if outcome == Outcome::Success {
            self.consecutive_failures = 0;
            return None;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let by_run = cfg.consecutive_failures.is_some_and(|limit| self.consecutive_failures >= limit);
        let (successes, failures) = self.totals(index);
        let total = successes + failures;
        let by_ratio = total >= cfg.minimum_requests
            && u128::from(failures) * u128::from(PPM) >= u128::from(cfg.failure_ratio_ppm) * u128::from(total);
        (by_run || by_ratio).then(|| self.trip(cfg, now, CircuitState::Closed))
    }

    /// Successes and failures in the window that ends with bucket `index`.
    fn totals(&self, index: u64) -> (u64, u64) {
        self.window
            .iter()
            .filter(|b| index.saturating_sub(b.index) < WINDOW_BUCKETS as u64)
            .fold((0, 0), |(s, f), b| (s + u64::from(b.successes), f + u64::from(b.failures)))
    }

    fn record_probe(&mut self, cfg: &Compiled, outcome: Outcome, now: Instant) -> Option<Transition> {
        let Phase::HalfOpen { in_flight, successes } = &mut self.phase else {
            return None;
        };
        *in_flight = in_flight.saturating_sub(1);
        match outcome {
            Outcome::Failure => Some(self.trip(cfg, now, CircuitState::HalfOpen)),
            Outcome::Success => {
                *successes += 1;
                if *successes < cfg.half_open_requests {
                    return None;
                }
                self.trips = 0;
                self.enter(Phase::Closed);
                Some(Transition { from: CircuitState::HalfOpen, to: CircuitState::Closed })
            }
        }
    }

    fn trip(&mut self, cfg: &Compiled, now: Instant, from: CircuitState) -> Transition {
        self.trips = self.trips.saturating_add(1);
        self.enter(Phase::Open { since: now, duration: cfg.open_duration(self.trips) });
        Transition { from, to: CircuitState::Open }
    }
}

fn bucket_index(origin: Instant, now: Instant, bucket_nanos: u64) -> u64 {
    let nanos = now.saturating_duration_since(origin).as_nanos() / u128::from(bucket_nanos);
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

fn slot_of(index: u64) -> usize {
    // The remainder is below WINDOW_BUCKETS, so the cast is lossless.
    (index % WINDOW_BUCKETS as u64) as usize
}

#[cfg(test)]
mod tests;
