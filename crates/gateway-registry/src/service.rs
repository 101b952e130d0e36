//! [`ServiceEndpoints`]: one service's live endpoint set, balancer and health.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::balance::{request_key, Attempt, Balancer, Pick, PickContext, Snapshot};
use crate::discover::{Discover, Discovered, DiscoveryError, DnsDiscovery, DnsOptions, DnsQuery, EndpointSet};
use crate::health::{self, HealthCheckOptions};
use crate::registry::MemoryRegistry;
use crate::state::{EndpointState, Outcome, PassiveHealth};
use crate::{Endpoint, Scheme};

/// How one service balances and checks its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceOptions {
    /// `load_balancer` (and `hash_on`).
    pub balancer: Balancer,
    /// When every endpoint is unhealthy or ejected: `false` (the default) answers
    /// [`Pick::AllUnhealthy`], so the caller says 503 rather than hammer a failing
    /// fleet; `true` picks among all endpoints anyway (Envoy's panic routing).
    pub panic_mode: bool,
    /// Outlier ejection on connect failures.
    pub passive: PassiveHealth,
    /// Active health checks; `None`: every endpoint counts as healthy.
    pub health_check: Option<HealthCheckOptions>,
}

impl ServiceOptions {
    /// The options a validated `[services.NAME]` section asks for (passive health and
    /// panic mode have no config keys yet: their defaults).
    pub fn from_config(definition: &gateway_config::Service) -> Result<Self, BuildError> {
        Ok(ServiceOptions {
            balancer: Balancer::from_config(definition.load_balancer, definition.hash_on.as_deref())
                .map_err(BuildError::Config)?,
            panic_mode: false,
            passive: PassiveHealth::default(),
            health_check: definition.health_check.as_ref().map(HealthCheckOptions::from),
        })
    }
}

/// Where a service's endpoints come from.
pub enum Source {
    /// A fixed list (`discovery = "static"`).
    Static(Vec<Discovered>),
    /// `discovery = "dns"`: A/AAAA records of a host, or SRV records of a name, each
    /// address as `scheme://address:port`.
    Dns {
        /// What to resolve.
        query: DnsQuery,
        /// The scheme every address gets.
        scheme: Scheme,
        /// TTL clamping and retry.
        options: DnsOptions,
    },
    /// `discovery = "registry"`: the instances registered under `service`.
    Registry {
        /// The store, owned by the gateway (it outlives configurations).
        registry: Arc<MemoryRegistry>,
        /// The registry's service name (the config's service name).
        service: String,
    },
    /// Any other [`Discover`] implementation.
    Custom(Box<dyn Discover>),
}

impl Source {
    /// The source a validated `[services.NAME]` section names.
    ///
    /// DNS-discovered endpoints use the scheme of the service's first `endpoints`
    /// entry if it lists one (`endpoints = ["h2c://grpc.internal:50051"]` with
    /// `dns = "grpc.internal:50051"`), else `https` for port 443 and `http` otherwise
    /// (`http` for `dns = "srv://NAME"`, whose ports come from the records).
    pub fn from_config(
        name: &str,
        definition: &gateway_config::Service,
        registry: &Arc<MemoryRegistry>,
    ) -> Result<Source, BuildError> {
        use gateway_config::Discovery;
        let listed = || {
            definition
                .endpoints
                .iter()
                .map(|e| Endpoint::parse(e.get_ref()).map(Discovered::from))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BuildError::Config(e.to_string()))
        };
        Ok(match definition.discovery {
            Discovery::Static => Source::Static(listed()?),
            Discovery::Registry => Source::Registry { registry: registry.clone(), service: name.to_owned() },
            Discovery::Dns => {
                let dns =
                    definition.dns.as_deref().ok_or_else(|| BuildError::Config("dns discovery needs dns".into()))?;
                let query = match dns.strip_prefix("srv://") {
                    Some(name) => DnsQuery::Srv { name: name.to_owned() },
                    None => {
                        let (host, port) = dns
                            .rsplit_once(':')
                            .and_then(|(h, p)| {
                                Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().ok()?))
                            })
                            .filter(|(h, p)| !h.is_empty() && *p > 0)
                            .ok_or_else(|| BuildError::Config(format!("dns = \"{dns}\" must be host:port")))?;
                        DnsQuery::Address { host: host.to_owned(), port }
                    }
                };
                let scheme = match (listed()?.first(), &query) {
                    (Some(d), _) => d.endpoint.scheme(),
                    (None, DnsQuery::Address { port: 443, .. }) => Scheme::Https,
                    (None, _) => Scheme::Http,
                };
                Source::Dns { query, scheme, options: DnsOptions::default() }
            }
        })
    }
}

/// Why a service's endpoints could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The definition is not usable (validation should have caught it).
    #[error("{0}")]
    Config(String),
    /// Health checks and DNS/registry discovery run as tasks: build inside a tokio runtime.
    #[error("health checks and dynamic discovery need a tokio runtime")]
    NoRuntime,
}

impl From<DiscoveryError> for BuildError {
    fn from(e: DiscoveryError) -> Self {
        match e {
            DiscoveryError::NoRuntime => BuildError::NoRuntime,
        }
    }
}

/// Endpoints of one service by state, for `gateway_endpoints{service,state}`.
/// Each endpoint is counted once: unhealthy (active checks) first, then ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointCounts {
    /// Available to the balancer.
    pub healthy: usize,
    /// Failed active health checks.
    pub unhealthy: usize,
    /// Taken out by outlier ejection (passive health).
    pub ejected: usize,
}

impl EndpointCounts {
    /// All endpoints.
    pub fn total(&self) -> usize {
        self.healthy + self.unhealthy + self.ejected
    }
}

/// What the background tasks and the registry share with a [`ServiceEndpoints`].
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    balancer: Balancer,
    panic_mode: bool,
    passive: PassiveHealth,
    current: ArcSwap<Snapshot>,
    cursor: AtomicUsize,
    /// Serializes writers: publishes and ejection decisions (never taken by picks).
    write: Mutex<()>,
    /// Becomes `true` with the source's first answer.
    discovered: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn snapshot(&self) -> Arc<[Arc<EndpointState>]> {
        self.current.load().endpoints.clone()
    }

    /// Replace the set, keeping the state of every endpoint that stays.
    fn publish(&self, set: &[Discovered]) {
        let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load();
        let known: HashMap<&Endpoint, &Arc<EndpointState>> =
            current.endpoints.iter().map(|e| (e.endpoint(), e)).collect();
        let mut seen = std::collections::HashSet::with_capacity(set.len());
        let mut next = Vec::with_capacity(set.len());
        for d in set {
            if !seen.insert(&d.endpoint) {
                continue; // the same address twice (two registrations): once is enough
            }
            next.push(match known.get(&d.endpoint) {
                Some(state) => {
                    state.set_weight(d.weight);
                    state.set_metadata(d.metadata.clone());
                    Arc::clone(state)
                }
                None => Arc::new(EndpointState::new(d.endpoint.clone(), d.weight, d.metadata.clone())),
            });
        }
        self.current.store(Arc::new(Snapshot::build(Arc::from(next), &self.balancer)));
        self.discovered.send_replace(true);
    }

    /// Swap in `previous`'s state objects for endpoints both sets have; with nothing
    /// discovered yet, adopt `previous`'s whole set.
    fn inherit(&self, previous: &Shared) {
        let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = previous.snapshot();
        let next: Vec<Arc<EndpointState>> = if *self.discovered.borrow() {
            let by_endpoint: HashMap<&Endpoint, &Arc<EndpointState>> = old.iter().map(|e| (e.endpoint(), e)).collect();
            self.snapshot()
                .iter()
                .map(|e| by_endpoint.get(e.endpoint()).map_or_else(|| e.clone(), |o| Arc::clone(o)))
                .collect()
        } else {
            old.to_vec()
        };
        self.current.store(Arc::new(Snapshot::build(Arc::from(next), &self.balancer)));
    }
}

/// One service's endpoints: the current set (an `ArcSwap` snapshot that discovery
/// replaces), the load balancer over it, passive health, and the background tasks
/// (discovery, active health checks) that stop when this is dropped.
///
/// Build it once per service definition; keep it (in an `Arc`) across reloads while
/// the definition is unchanged. When a changed definition builds a new one, call
/// [`ServiceEndpoints::inherit`] with the old one so endpoint health survives.
pub struct ServiceEndpoints {
    shared: Arc<Shared>,
    /// Kept so its tasks live as long as this (DNS), or its channel stays open.
    _source: Option<Box<dyn Discover>>,
    tasks: Vec<AbortHandle>,
}

impl ServiceEndpoints {
    /// A service with `options`, fed by `source`. Health checks and any source but
    /// `Static` spawn tasks, which needs a tokio runtime ([`BuildError::NoRuntime`]).
    /// Registry sources start from the store's current instances; DNS sources start
    /// empty until the first answer (see [`ServiceEndpoints::discovered`]).
    pub fn new(name: &str, options: ServiceOptions, source: Source) -> Result<Self, BuildError> {
        let shared = Arc::new(Shared {
            name: Arc::from(name),
            balancer: options.balancer,
            panic_mode: options.panic_mode,
            passive: options.passive,
            current: ArcSwap::from_pointee(Snapshot::empty()),
            cursor: AtomicUsize::new(0),
            write: Mutex::new(()),
            discovered: watch::Sender::new(false),
        });
        let needs_runtime = options.health_check.is_some() || !matches!(source, Source::Static(_));
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some(handle),
            Err(_) if needs_runtime => return Err(BuildError::NoRuntime),
            Err(_) => None,
        };
        let discover: Option<Box<dyn Discover>> = match source {
            Source::Static(list) => {
                shared.publish(&list);
                None
            }
            Source::Dns { query, scheme, options } => {
                Some(Box::new(DnsDiscovery::spawn_query(query, scheme, options)?))
            }
            Source::Registry { registry, service } => {
                registry.attach(&service, Arc::downgrade(&shared));
                Some(Box::new(registry.discovery(&service)))
            }
            Source::Custom(d) => Some(d),
        };
        let mut tasks = Vec::new();
        if let (Some(d), Some(rt)) = (&discover, &runtime) {
            let mut rx = d.subscribe();
            if let Some(set) = rx.borrow_and_update().clone() {
                shared.publish(&set);
            }
            tasks.push(rt.spawn(follow(Arc::downgrade(&shared), rx)).abort_handle());
        }
        if let (Some(check), Some(rt)) = (options.health_check, &runtime) {
            tasks.push(rt.spawn(health::run(Arc::downgrade(&shared), check)).abort_handle());
        }
        Ok(ServiceEndpoints { shared, _source: discover, tasks })
    }

    /// What a validated `[services.NAME]` section describes. `registry` is the
    /// gateway's store (used when `discovery = "registry"`).
    pub fn from_config(
        name: &str,
        definition: &gateway_config::Service,
        registry: &Arc<MemoryRegistry>,
    ) -> Result<Self, BuildError> {
        Self::new(name, ServiceOptions::from_config(definition)?, Source::from_config(name, definition, registry)?)
    }

    /// A fixed list with round robin, no health checks; needs no runtime.
    pub fn from_endpoints(name: &str, endpoints: Vec<Endpoint>) -> Self {
        let shared = Arc::new(Shared {
            name: Arc::from(name),
            balancer: Balancer::RoundRobin,
            panic_mode: false,
            passive: PassiveHealth::default(),
            current: ArcSwap::from_pointee(Snapshot::empty()),
            cursor: AtomicUsize::new(0),
            write: Mutex::new(()),
            discovered: watch::Sender::new(false),
        });
        shared.publish(&endpoints.into_iter().map(Discovered::from).collect::<Vec<_>>());
        ServiceEndpoints { shared, _source: None, tasks: Vec::new() }
    }

    /// Carry endpoint state over from the service this one replaces (same name,
    /// changed definition): endpoints both know keep their health, ejection,
    /// in-flight count and latency; if this one has not discovered anything yet
    /// (DNS), it serves `previous`'s set until its first answer.
    pub fn inherit(&self, previous: &ServiceEndpoints) {
        self.shared.inherit(&previous.shared);
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The balancer in use.
    pub fn balancer(&self) -> &Balancer {
        &self.shared.balancer
    }

    /// Every endpoint now known (available or not), in discovery order.
    pub fn snapshot(&self) -> Arc<[Arc<EndpointState>]> {
        self.shared.snapshot()
    }

    /// The endpoint with this `host:port`, if known.
    pub fn endpoint(&self, address: &str) -> Option<Arc<EndpointState>> {
        self.snapshot().iter().find(|e| e.address() == address).cloned()
    }

    /// Resolves once the source has produced its first endpoint set (at once for
    /// static and registry sources; after the first DNS answer). Bound it with a
    /// timeout: a DNS name that never resolves never completes this.
    pub async fn discovered(&self) {
        let mut rx = self.shared.discovered.subscribe();
        // The sender lives in `self.shared`, so this cannot fail while `self` exists.
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Replace the endpoint set by hand (tests, or a source the caller runs itself).
    /// Endpoints that stay keep their state.
    pub fn publish(&self, set: &[Discovered]) {
        self.shared.publish(set);
    }

    /// Choose an endpoint for one call. Only healthy, non-ejected endpoints for which
    /// `admit` (the caller's circuit breaker) says yes are picked. `admit` is asked at
    /// most once per endpoint, and an endpoint it says yes to is the pick, so it may
    /// reserve a half-open trial. See [`Pick`] for the answers.
    pub fn pick(&self, ctx: &PickContext<'_>, admit: &dyn Fn(&EndpointState) -> bool) -> Pick {
        self.pick_excluding(ctx, admit, &[])
    }

    /// Like [`pick`](Self::pick), preferring endpoints whose `host:port` is not in
    /// `exclude` (those a retry already tried). When every admissible endpoint is
    /// excluded, one of them is picked all the same: a retry on a tried endpoint beats none.
    pub fn pick_excluding(
        &self,
        ctx: &PickContext<'_>,
        admit: &dyn Fn(&EndpointState) -> bool,
        exclude: &[&str],
    ) -> Pick {
        let shared = &*self.shared;
        let snap = shared.current.load();
        let endpoints = &snap.endpoints;
        if endpoints.is_empty() {
            return Pick::NoEndpoints;
        }
        let now = Instant::now();
        let key = request_key(&shared.balancer, ctx);
        let mut attempt = Attempt::new(&snap, admit, now);
        let available = |i: usize| endpoints[i].is_available_at(now);
        let fresh = |i: usize| !exclude.contains(&endpoints[i].address());
        let choose = |attempt: &mut Attempt<'_>, eligible: &dyn Fn(usize) -> bool| {
            attempt.choose(&shared.balancer, &shared.cursor, key, eligible)
        };
        if !exclude.is_empty() {
            if let Some(i) = choose(&mut attempt, &|i| available(i) && fresh(i)) {
                return Pick::Picked(endpoints[i].acquire(false));
            }
        }
        if let Some(i) = choose(&mut attempt, &available) {
            return Pick::Picked(endpoints[i].acquire(false));
        }
        if (0..endpoints.len()).any(available) {
            return Pick::AllRejected;
        }
        if !shared.panic_mode {
            return Pick::AllUnhealthy;
        }
        if !exclude.is_empty() {
            if let Some(i) = choose(&mut attempt, &fresh) {
                return Pick::Picked(endpoints[i].acquire(true));
            }
        }
        match choose(&mut attempt, &|_| true) {
            Some(i) => Pick::Picked(endpoints[i].acquire(true)),
            None => Pick::AllRejected,
        }
    }

    /// Tell how a call went (after the response head, or the failure). Connect
    /// failures in a row eject the endpoint for a back-off (see [`PassiveHealth`]):
    /// never more than `max_ejection_percent` of the service at once, and never the
    /// last available endpoint. Answers feed the latency estimate of `peak_ewma`.
    pub fn report(&self, endpoint: &EndpointState, outcome: Outcome) {
        let shared = &*self.shared;
        let now = Instant::now();
        match outcome {
            Outcome::Response { latency } => {
                endpoint.record_success(now, &shared.passive);
                endpoint.observe_latency(latency, now);
            }
            Outcome::Failure => {}
            Outcome::ConnectFailure => {
                let failures = endpoint.record_connect_failure();
                let threshold = shared.passive.consecutive_connect_failures;
                if threshold > 0 && failures >= threshold && !endpoint.is_ejected_at(now) {
                    self.try_eject(endpoint, now);
                }
            }
        }
    }

    fn try_eject(&self, endpoint: &EndpointState, now: Instant) {
        let shared = &*self.shared;
        let _write = shared.write.lock().unwrap_or_else(|e| e.into_inner());
        if endpoint.is_ejected_at(now) {
            return; // a concurrent report got here first
        }
        let endpoints = shared.snapshot();
        if !endpoints.iter().any(|e| std::ptr::eq(&**e, endpoint)) {
            return; // no longer in the set
        }
        let ejected = endpoints.iter().filter(|e| e.is_ejected_at(now)).count();
        let others_available =
            endpoints.iter().filter(|e| !std::ptr::eq(&***e, endpoint) && e.is_available_at(now)).count();
        let allowed = endpoints.len() * usize::from(shared.passive.max_ejection_percent.min(100)) / 100;
        if ejected + 1 > allowed || others_available == 0 {
            tracing::debug!(
                service = %shared.name,
                endpoint = %endpoint.endpoint(),
                "not ejected: the service would be left with too few endpoints"
            );
            return;
        }
        let backoff = endpoint.eject(now, &shared.passive);
        tracing::warn!(
            event = "health",
            service = %shared.name,
            endpoint = %endpoint.endpoint(),
            healthy = false,
            seconds = backoff.as_secs_f64(),
            "endpoint ejected after repeated connect failures"
        );
    }

    /// How many endpoints are healthy, unhealthy and ejected now.
    pub fn counts(&self) -> EndpointCounts {
        let now = Instant::now();
        let mut counts = EndpointCounts::default();
        for e in self.snapshot().iter() {
            if !e.is_healthy() {
                counts.unhealthy += 1;
            } else if e.is_ejected_at(now) {
                counts.ejected += 1;
            } else {
                counts.healthy += 1;
            }
        }
        counts
    }
}

impl Drop for ServiceEndpoints {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl fmt::Debug for ServiceEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceEndpoints")
            .field("name", &self.name())
            .field("balancer", &self.shared.balancer)
            .field("endpoints", &self.snapshot())
            .finish()
    }
}

/// Publish every set the source learns, while the service exists.
async fn follow(shared: Weak<Shared>, mut rx: watch::Receiver<Option<EndpointSet>>) {
    while rx.changed().await.is_ok() {
        let set = rx.borrow_and_update().clone();
        let Some(shared) = shared.upgrade() else { return };
        if let Some(set) = set {
            shared.publish(&set);
        }
    }
}
