//! The live state of one endpoint: health, ejection, in-flight calls, latency.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, Scheme as UriScheme};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::{Endpoint, Scheme};

/// Metadata a registration carried (`{"zone": "a", "version": "1.4"}`).
pub type Metadata = Map<String, Value>;

/// The latency a never-measured endpoint is assumed to have (peak EWMA).
const DEFAULT_RTT: Duration = Duration::from_millis(10);
/// How fast old latency samples fade (peak EWMA's time constant).
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// One endpoint of a service and everything the gateway learned about it.
///
/// Shared (`Arc`) between the current endpoint snapshot, the health checker and every
/// call in flight. When discovery publishes a new set, an endpoint that stays in it
/// keeps its `EndpointState` (matched by scheme and `host:port`), so health, ejection,
/// in-flight counts and latency survive discovery changes and unchanged reloads.
pub struct EndpointState {
    endpoint: Endpoint,
    /// Relative share for weighted balancers (1 unless a registration says otherwise).
    weight: AtomicU32,
    /// What the registration carried; `None` for static and DNS endpoints.
    metadata: ArcSwapOption<Metadata>,
    /// The active health check's verdict. Starts `true`: an endpoint serves until
    /// checks prove it bad (`unhealthy_threshold` failed probes in a row).
    healthy: AtomicBool,
    /// Passing probes in a row (active checks).
    probe_successes: AtomicU32,
    /// Failing probes in a row (active checks).
    probe_failures: AtomicU32,
    /// Connect failures in a row reported by the proxy (passive health).
    connect_failures: AtomicU32,
    /// End of the last ejection, as nanoseconds after `epoch`; 0 = never ejected.
    ejected_until: AtomicU64,
    /// Ejections since the endpoint last behaved: each one doubles the next back-off.
    ejections: AtomicU32,
    /// Calls holding a [`Picked`] guard right now.
    in_flight: AtomicUsize,
    /// Peak-EWMA latency estimate in nanoseconds (`f64` bits).
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, as nanoseconds after `epoch`.
    ewma_at: AtomicU64,
    /// The origin of the nanosecond clocks above.
    epoch: Instant,
}

impl EndpointState {
    pub(crate) fn new(endpoint: Endpoint, weight: Option<u32>, metadata: Option<Arc<Metadata>>) -> Self {
        EndpointState {
            endpoint,
            weight: AtomicU32::new(weight.unwrap_or(1).max(1)),
            metadata: ArcSwapOption::new(metadata),
            healthy: AtomicBool::new(true),
            probe_successes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            connect_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            ewma_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            ewma_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The address and scheme.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `host:port`, as the admin API shows it.
    pub fn address(&self) -> &str {
        self.endpoint.address()
    }

    /// `http`, `https` or `h2c`.
    pub fn scheme(&self) -> Scheme {
        self.endpoint.scheme()
    }

    /// The scheme of the URI sent upstream (`h2c` is `http` on the wire).
    pub fn uri_scheme(&self) -> UriScheme {
        self.endpoint.uri_scheme()
    }

    /// `host:port` as an [`Authority`].
    pub fn authority(&self) -> &Authority {
        self.endpoint.authority()
    }

    /// The balancing weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// The registration's metadata, if the endpoint came from the registry.
    pub fn metadata(&self) -> Option<Arc<Metadata>> {
        self.metadata.load_full()
    }

    /// The active health check's verdict (`true` without active checks).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Taken out by outlier ejection right now.
    pub fn is_ejected(&self) -> bool {
        self.is_ejected_at(Instant::now())
    }

    /// How much longer the current ejection lasts, if the endpoint is ejected.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = self.nanos(Instant::now());
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Healthy and not ejected: the balancer may pick it.
    pub fn is_available(&self) -> bool {
        self.is_available_at(Instant::now())
    }

    /// Calls in flight to this endpoint (held [`Picked`] guards).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Connect failures in a row, as reported to [`crate::ServiceEndpoints::report`].
    pub fn consecutive_connect_failures(&self) -> u32 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// The peak-EWMA latency estimate (decayed to now). Never-measured endpoints start at 10 ms.
    pub fn latency_estimate(&self) -> Duration {
        Duration::from_nanos(self.ewma_at(Instant::now()) as u64)
    }

    /// Force the active-check verdict (tests).
    #[cfg(test)]
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub(crate) fn set_weight(&self, weight: Option<u32>) {
        self.weight.store(weight.unwrap_or(1).max(1), Ordering::Relaxed);
    }

    pub(crate) fn set_metadata(&self, metadata: Option<Arc<Metadata>>) {
        self.metadata.store(metadata);
    }

    pub(crate) fn is_ejected_at(&self, now: Instant) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > self.nanos(now)
    }

    pub(crate) fn is_available_at(&self, now: Instant) -> bool {
        self.is_healthy() && !self.is_ejected_at(now)
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Start a call: the returned guard counts it in flight until dropped.
    pub(crate) fn acquire(self: &Arc<Self>, panic: bool) -> Picked {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Picked { state: self.clone(), started: Instant::now(), panic }
    }

    // --- active health ---

    /// Record one probe; `Some(new verdict)` when it flipped.
    pub(crate) fn record_probe(&self, passed: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Option<bool> {
        if passed {
            self.probe_failures.store(0, Ordering::Relaxed);
            let n = self.probe_successes.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if !self.is_healthy() && n >= healthy_threshold.max(1) {
                self.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.probe_successes.store(0, Ordering::Relaxed);
            let n = self.probe_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if self.is_healthy() && n >= unhealthy_threshold.max(1) {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    // --- passive health ---

    /// A call connected and got an answer.
    pub(crate) fn record_success(&self, now: Instant, passive: &PassiveHealth) {
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
        // An endpoint that behaved for a whole base period after its last ejection
        // starts over with the base back-off.
        if self.ejections.load(Ordering::Relaxed) != 0 {
            let until = self.ejected_until.load(Ordering::Relaxed);
            if self.nanos(now) >= until.saturating_add(passive.base_ejection.as_nanos() as u64) {
                self.ejections.store(0, Ordering::Relaxed);
            }
        }
    }

    /// One more connect failure in a row; the new count.
    pub(crate) fn record_connect_failure(&self) -> u32 {
        self.connect_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// Take the endpoint out until `now` + its back-off; the back-off used.
    pub(crate) fn eject(&self, now: Instant, passive: &PassiveHealth) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed);
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        let backoff = passive.base_ejection.saturating_mul(factor).min(passive.max_ejection.max(passive.base_ejection));
        self.ejected_until.store(self.nanos(now + backoff).max(1), Ordering::Relaxed);
        self.connect_failures.store(0, Ordering::Relaxed);
        backoff
    }

    // --- latency (peak EWMA) ---

    /// Fold one response time into the estimate: a slower sample than the estimate
    /// replaces it at once (peak); faster ones pull it down with time-weighted decay.
    pub(crate) fn observe_latency(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let now_ns = self.nanos(now);
        let last = self.ewma_at.swap(now_ns, Ordering::Relaxed);
        let current = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let next = if sample > current {
            sample
        } else {
            let elapsed = now_ns.saturating_sub(last) as f64;
            let w = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
            current * w + sample * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The estimate decayed towards zero since its last sample, so an endpoint that
    /// was slow once gets tried again after a while.
    fn ewma_at(&self, now: Instant) -> f64 {
        let current = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let elapsed = self.nanos(now).saturating_sub(self.ewma_at.load(Ordering::Relaxed)) as f64;
        current * (-elapsed / EWMA_DECAY.as_nanos() as f64).exp()
    }

    /// Least-request cost: in-flight calls per unit of weight.
    pub(crate) fn load_cost(&self) -> f64 {
        self.in_flight() as f64 / f64::from(self.weight())
    }

    /// Peak-EWMA cost: latency times (in-flight + 1), per unit of weight.
    pub(crate) fn ewma_cost(&self, now: Instant) -> f64 {
        (self.ewma_at(now) + 1.0) * (self.in_flight() as f64 + 1.0) / f64::from(self.weight())
    }
}

impl fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointState")
            .field("endpoint", &self.endpoint.to_string())
            .field("weight", &self.weight())
            .field("healthy", &self.is_healthy())
            .field("ejected", &self.is_ejected())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// The endpoint chosen for one call, and its in-flight guard: the endpoint counts the
/// call as in flight until this is dropped, so the proxy keeps it for the whole
/// exchange (until the response body ends). Report how the call went with
/// [`crate::ServiceEndpoints::report`].
#[must_use = "dropping the pick ends the call's in-flight count"]
pub struct Picked {
    state: Arc<EndpointState>,
    started: Instant,
    panic: bool,
}

impl Picked {
    /// The endpoint's live state (address, health, counters).
    pub fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }

    /// The address and scheme to send to.
    pub fn endpoint(&self) -> &Endpoint {
        self.state.endpoint()
    }

    /// `host:port`.
    pub fn address(&self) -> &str {
        self.state.address()
    }

    /// Time since the pick: the latency to report when the response head arrives.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Chosen although no endpoint was healthy, because the service runs in panic mode.
    pub fn in_panic_mode(&self) -> bool {
        self.panic
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Picked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picked")
            .field("endpoint", &self.state.endpoint().to_string())
            .field("panic", &self.panic)
            .finish()
    }
}

/// How a call to an endpoint went, for passive health and latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered (any status); `latency` is the time to the response head.
    Response {
        /// Time from the pick to the response head.
        latency: Duration,
    },
    /// No connection: refused, connect timeout, TLS handshake failure. These count
    /// towards outlier ejection.
    ConnectFailure,
    /// Connected, but the exchange failed (reset, timeout, invalid answer). Neither
    /// counts towards ejection nor clears the connect-failure streak.
    Failure,
}

/// Outlier ejection (passive health): endpoints that fail to connect repeatedly are
/// taken out for a back-off, even without active checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Connect failures in a row that eject an endpoint; 0 turns ejection off.
    pub consecutive_connect_failures: u32,
    /// The first ejection's length; each further one doubles it.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// At most this share of a service's endpoints is ejected at once (rounded down),
    /// and never the last available one: a lone endpoint is never ejected.
    pub max_ejection_percent: u8,
}

impl Default for PassiveHealth {
    /// 5 connect failures in a row eject for 30 s, doubling up to 5 min, at most 50 % of a service.
    fn default() -> Self {
        PassiveHealth {
            consecutive_connect_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}
