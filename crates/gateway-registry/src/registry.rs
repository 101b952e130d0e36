//! The embedded registry store: instances that registered themselves, with a TTL.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::discover::{Discover, Discovered, EndpointSet};
use crate::service::Shared;
use crate::state::Metadata;
use crate::{Endpoint, Scheme};

/// The largest `weight` a registration may ask for.
pub const MAX_WEIGHT: u32 = 1000;

/// Why the store refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A service name or instance id outside `[A-Za-z0-9._-]{1,128}`.
    #[error("{0}")]
    InvalidName(String),
    /// An address that is not `host:port`.
    #[error("{0}")]
    InvalidAddress(String),
    /// A `scheme` or `weight` in the metadata that makes no sense.
    #[error("{0}")]
    InvalidMetadata(String),
    /// The shared store (etcd) could not be reached; nothing changed, or not for sure.
    #[error("the registry store is unavailable: {0}")]
    Unavailable(String),
    /// No such instance (never registered, deregistered, or expired).
    #[error("instance `{id}` of service `{service}` is not registered")]
    NotFound {
        /// The service asked for.
        service: String,
        /// The instance asked for.
        id: String,
    },
}

/// `[A-Za-z0-9._-]`, 1 to 128 characters: service names and instance ids.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(what: &str, name: &str) -> Result<(), RegistryError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(RegistryError::InvalidName(format!("{what} `{name}` must be 1-128 characters of A-Z a-z 0-9 . _ -")))
    }
}

/// Check a service name and an instance id.
pub(crate) fn check_names(service: &str, id: &str) -> Result<(), RegistryError> {
    check_name("service", service)?;
    check_name("instance id", id)
}

/// Check a registration: names, address, and the `scheme` and `weight` the metadata
/// may carry; the endpoint and weight it asks for.
pub(crate) fn check_registration(
    service: &str,
    id: &str,
    address: &str,
    metadata: &Metadata,
) -> Result<(Endpoint, Option<u32>), RegistryError> {
    check_names(service, id)?;
    let scheme = match metadata.get("scheme") {
        None => Scheme::Http,
        Some(Value::String(s)) if s == "http" => Scheme::Http,
        Some(Value::String(s)) if s == "https" => Scheme::Https,
        Some(Value::String(s)) if s == "h2c" => Scheme::H2c,
        Some(other) => {
            return Err(RegistryError::InvalidMetadata(format!(
                "metadata.scheme {other} must be \"http\", \"https\" or \"h2c\""
            )))
        }
    };
    let weight = match metadata.get("weight") {
        None => None,
        Some(w) => {
            let n = match w {
                Value::Number(n) => n.as_u64(),
                Value::String(s) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
                _ => None,
            };
            match n {
                Some(n @ 1..=1000) => Some(n as u32),
                _ => {
                    return Err(RegistryError::InvalidMetadata(format!(
                        "metadata.weight {w} must be a whole number from 1 to {MAX_WEIGHT}"
                    )))
                }
            }
        }
    };
    let endpoint = Endpoint::from_address(scheme, address).map_err(|e| RegistryError::InvalidAddress(e.to_string()))?;
    Ok((endpoint, weight))
}

/// One instance as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceView {
    /// The instance id.
    pub id: String,
    /// `host:port`.
    pub address: String,
    /// `http`, `https` or `h2c` (from the metadata's `scheme`).
    pub scheme: &'static str,
    /// What the instance registered with.
    pub metadata: Metadata,
    /// Not expired, and, when the gateway serves this service, available to its balancer
    /// (active health checks pass and it is not ejected).
    pub healthy: bool,
    /// RFC 3339 time of the first registration.
    pub registered_at: String,
    /// RFC 3339 time of the last registration or heartbeat.
    pub last_heartbeat: String,
    /// Time left before the instance expires without a heartbeat.
    pub expires_in_ms: u64,
}

/// One service as `GET /registry/services` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    /// The service name.
    pub name: String,
    /// Registered instances.
    pub instances: usize,
    /// Of those, healthy ones (see [`InstanceView::healthy`]).
    pub healthy: usize,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    /// A new instance (201).
    Created(InstanceView),
    /// An existing instance renewed, address and metadata replaced (200).
    Renewed(InstanceView),
}

pub(crate) struct Instance {
    pub(crate) endpoint: Endpoint,
    pub(crate) weight: Option<u32>,
    pub(crate) metadata: Arc<Metadata>,
    pub(crate) registered_at: SystemTime,
    pub(crate) last_heartbeat: SystemTime,
    /// When it last registered or heartbeat (the TTL runs from here).
    pub(crate) seen: Instant,
}

impl Instance {
    /// Same address, weight and metadata: the endpoint set does not change.
    fn same_endpoint(&self, other: &Instance) -> bool {
        self.endpoint == other.endpoint && self.weight == other.weight && self.metadata == other.metadata
    }
}

struct ServiceEntry {
    instances: BTreeMap<String, Instance>,
    /// The set as discovery sees it; sent on every change of the instance set.
    tx: watch::Sender<Option<EndpointSet>>,
    /// Services of the running configuration fed by this entry (for `healthy`).
    live: Vec<Weak<Shared>>,
}

impl ServiceEntry {
    fn new() -> Self {
        ServiceEntry {
            instances: BTreeMap::new(),
            tx: watch::Sender::new(Some(Arc::from(Vec::new()))),
            live: Vec::new(),
        }
    }

    fn publish(&self) {
        let set: EndpointSet = self
            .instances
            .values()
            .map(|i| Discovered { endpoint: i.endpoint.clone(), weight: i.weight, metadata: Some(i.metadata.clone()) })
            .collect();
        self.tx.send_replace(Some(set));
    }

    /// Available to the newest live service that knows the endpoint; `true` when the
    /// gateway does not route to this service (then only the heartbeat vouches for it).
    fn healthy(&self, endpoint: &Endpoint) -> bool {
        let Some(service) = self.live.iter().rev().find_map(Weak::upgrade) else { return true };
        service.snapshot().iter().find(|e| e.endpoint() == endpoint).is_none_or(|e| e.is_available())
    }

    fn view(&self, id: &str, i: &Instance, now: Instant, ttl: Duration) -> InstanceView {
        InstanceView {
            id: id.to_owned(),
            address: i.endpoint.address().to_owned(),
            scheme: i.endpoint.scheme().as_str(),
            metadata: Metadata::clone(&i.metadata),
            healthy: self.healthy(&i.endpoint),
            registered_at: gateway_core::Rfc3339::at(i.registered_at).to_string(),
            last_heartbeat: gateway_core::Rfc3339::at(i.last_heartbeat).to_string(),
            expires_in_ms: ttl.saturating_sub(now.saturating_duration_since(i.seen)).as_millis() as u64,
        }
    }

    fn is_idle(&self) -> bool {
        self.instances.is_empty() && self.tx.receiver_count() == 0 && self.live.iter().all(|w| w.strong_count() == 0)
    }
}

/// The `memory` registry store: instances registered through the registry API,
/// dropped after `ttl` without a heartbeat. Owned by the gateway, not by one
/// configuration, so registrations survive reloads; services with
/// `discovery = "registry"` follow it live.
///
/// A background sweeper (started when built inside a tokio runtime) removes expired
/// instances every `ttl / 4` (between 10 ms and 500 ms), so services stop using them
/// within that time; expired instances are also never shown or renewed.
pub struct MemoryRegistry {
    ttl_ms: AtomicU64,
    /// `false` for the mirror of a shared store: the store expires instances (etcd
    /// leases), and while it is unreachable the last known instances stay.
    expires: bool,
    services: Mutex<BTreeMap<String, ServiceEntry>>,
    sweeper: Option<AbortHandle>,
}

impl MemoryRegistry {
    /// A store whose instances expire after `ttl` (`registry.ttl`).
    pub fn new(ttl: Duration) -> Arc<Self> {
        Self::build(ttl, true)
    }

    /// The local copy of a shared store: instances go only when the store says so
    /// ([`MemoryRegistry::apply`], [`MemoryRegistry::remove`], [`MemoryRegistry::replace`]).
    pub(crate) fn mirror(ttl: Duration) -> Arc<Self> {
        Self::build(ttl, false)
    }

    fn build(ttl: Duration, expires: bool) -> Arc<Self> {
        Arc::new_cyclic(|weak: &Weak<MemoryRegistry>| {
            let sweeper = match tokio::runtime::Handle::try_current() {
                Ok(_) if !expires => None,
                Ok(rt) => Some(rt.spawn(sweep_loop(weak.clone())).abort_handle()),
                Err(_) => {
                    tracing::warn!("registry built outside a tokio runtime: expired instances go only when touched");
                    None
                }
            };
            MemoryRegistry {
                ttl_ms: AtomicU64::new(ttl.as_millis().max(1) as u64),
                expires,
                services: Mutex::new(BTreeMap::new()),
                sweeper,
            }
        })
    }

    /// How long an instance lives without a heartbeat.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// Change the TTL (a reload changed `registry.ttl`); it applies to every instance at once.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ServiceEntry>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(&self, instance: &Instance, now: Instant) -> bool {
        self.expires && now.saturating_duration_since(instance.seen) > self.ttl()
    }

    /// Register instance `id` of `service` at `address` (`host:port`), or renew it.
    /// The metadata's `scheme` (`http`, the default, `https` or `h2c`) says how the
    /// gateway talks to it, and `weight` (1-1000, a number or a string of digits)
    /// its share under weighted balancing.
    pub fn register(
        &self,
        service: &str,
        id: &str,
        address: &str,
        metadata: Metadata,
    ) -> Result<Registered, RegistryError> {
        let (endpoint, weight) = check_registration(service, id, address, &metadata)?;
        let now = Instant::now();
        let wall = SystemTime::now();
        let ttl = self.ttl();
        let mut services = self.lock();
        let entry = services.entry(service.to_owned()).or_insert_with(ServiceEntry::new);
        let metadata = Arc::new(metadata);
        let renewed = match entry.instances.get_mut(id) {
            Some(existing) if now.saturating_duration_since(existing.seen) <= ttl => {
                let changed =
                    existing.endpoint != endpoint || existing.weight != weight || existing.metadata != metadata;
                existing.endpoint = endpoint;
                existing.weight = weight;
                existing.metadata = metadata;
                existing.last_heartbeat = wall;
                existing.seen = now;
                if changed {
                    entry.publish();
                }
                true
            }
            _ => {
                let instance =
                    Instance { endpoint, weight, metadata, registered_at: wall, last_heartbeat: wall, seen: now };
                tracing::info!(event = "registry", action = "registered", service, id, address, "instance registered");
                entry.instances.insert(id.to_owned(), instance);
                entry.publish();
                false
            }
        };
        let view = entry.instances.get(id).map(|i| entry.view(id, i, now, ttl));
        let view = view.ok_or_else(|| RegistryError::NotFound { service: service.into(), id: id.into() })?;
        Ok(if renewed { Registered::Renewed(view) } else { Registered::Created(view) })
    }

    /// Renew the TTL of a registered instance.
    pub fn heartbeat(&self, service: &str, id: &str) -> Result<InstanceView, RegistryError> {
        check_names(service, id)?;
        let now = Instant::now();
        let ttl = self.ttl();
        let mut services = self.lock();
        let not_found = || RegistryError::NotFound { service: service.into(), id: id.into() };
        let entry = services.get_mut(service).ok_or_else(not_found)?;
        let expired = match entry.instances.get(id) {
            None => return Err(not_found()),
            Some(i) => self.expired(i, now),
        };
        if expired {
            entry.instances.remove(id);
            entry.publish();
            tracing::info!(event = "registry", action = "expired", service, id, "instance expired");
            return Err(not_found());
        }
        let instance = entry.instances.get_mut(id).ok_or_else(not_found)?;
        instance.seen = now;
        instance.last_heartbeat = SystemTime::now();
        let view = entry.instances.get(id).map(|i| entry.view(id, i, now, ttl));
        view.ok_or_else(not_found)
    }

    /// Remove an instance; `true` if it was registered (and not yet expired).
    pub fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        check_names(service, id)?;
        let now = Instant::now();
        let mut services = self.lock();
        let Some(entry) = services.get_mut(service) else { return Ok(false) };
        match entry.instances.remove(id) {
            Some(instance) => {
                entry.publish();
                tracing::info!(event = "registry", action = "deregistered", service, id, "instance deregistered");
                Ok(!self.expired(&instance, now))
            }
            None => Ok(false),
        }
    }

    /// One instance, unless unknown or expired.
    pub fn instance(&self, service: &str, id: &str) -> Option<InstanceView> {
        let now = Instant::now();
        let services = self.lock();
        let entry = services.get(service)?;
        let instance = entry.instances.get(id).filter(|i| !self.expired(i, now))?;
        Some(entry.view(id, instance, now, self.ttl()))
    }

    /// The live instances of `service`, by id (empty for an unknown service).
    pub fn instances(&self, service: &str) -> Vec<InstanceView> {
        let now = Instant::now();
        let ttl = self.ttl();
        let services = self.lock();
        let Some(entry) = services.get(service) else { return Vec::new() };
        entry
            .instances
            .iter()
            .filter(|(_, i)| !self.expired(i, now))
            .map(|(id, i)| entry.view(id, i, now, ttl))
            .collect()
    }

    /// Every service with registered instances or a gateway service following it.
    pub fn services(&self) -> Vec<ServiceSummary> {
        let now = Instant::now();
        let services = self.lock();
        services
            .iter()
            .filter(|(_, entry)| !entry.is_idle())
            .map(|(name, entry)| {
                let live: Vec<&Instance> = entry.instances.values().filter(|i| !self.expired(i, now)).collect();
                ServiceSummary {
                    name: name.clone(),
                    instances: live.len(),
                    healthy: live.iter().filter(|i| entry.healthy(&i.endpoint)).count(),
                }
            })
            .collect()
    }

    /// Remove every expired instance now (the sweeper does this periodically); how many went.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let ttl = self.ttl();
        let mut removed = 0;
        let mut services = self.lock();
        for (name, entry) in services.iter_mut() {
            let before = entry.instances.len();
            entry.instances.retain(|id, i| {
                let keep = !self.expires || now.saturating_duration_since(i.seen) <= ttl;
                if !keep {
                    tracing::info!(event = "registry", action = "expired", service = %name, id = %id, "instance expired");
                }
                keep
            });
            if entry.instances.len() != before {
                removed += before - entry.instances.len();
                entry.publish();
            }
            entry.live.retain(|w| w.strong_count() > 0);
        }
        services.retain(|_, entry| !entry.is_idle());
        removed
    }

    /// Mirror: the store has `instance` as `id` of `service` (new, renewed or changed).
    pub(crate) fn apply(&self, service: &str, id: &str, instance: Instance) {
        let mut services = self.lock();
        let entry = services.entry(service.to_owned()).or_insert_with(ServiceEntry::new);
        let changed = entry.instances.get(id).is_none_or(|old| !old.same_endpoint(&instance));
        entry.instances.insert(id.to_owned(), instance);
        if changed {
            entry.publish();
        }
    }

    /// Mirror: the store no longer has `id` of `service`.
    pub(crate) fn remove(&self, service: &str, id: &str) {
        let mut services = self.lock();
        if let Some(entry) = services.get_mut(service) {
            if entry.instances.remove(id).is_some() {
                entry.publish();
            }
        }
    }

    /// Mirror: the store's complete content (after connecting or reconnecting), by
    /// service and id; services whose instances did not change publish nothing.
    pub(crate) fn replace(&self, mut all: BTreeMap<String, BTreeMap<String, Instance>>) {
        let mut services = self.lock();
        for (name, entry) in services.iter_mut() {
            let next = all.remove(name).unwrap_or_default();
            let same = next.len() == entry.instances.len()
                && next.iter().zip(&entry.instances).all(|((a, x), (b, y))| a == b && x.same_endpoint(y));
            entry.instances = next;
            if !same {
                entry.publish();
            }
        }
        for (name, instances) in all {
            let entry = services.entry(name).or_insert_with(ServiceEntry::new);
            entry.instances = instances;
            entry.publish();
        }
        services.retain(|_, entry| !entry.is_idle());
    }

    /// A discovery source following `service`'s instances.
    pub fn discovery(&self, service: &str) -> RegistryDiscovery {
        let mut services = self.lock();
        let entry = services.entry(service.to_owned()).or_insert_with(ServiceEntry::new);
        RegistryDiscovery { rx: entry.tx.subscribe() }
    }

    /// Remember that a running service is fed by `service` (for `healthy`).
    pub(crate) fn attach(&self, service: &str, shared: Weak<Shared>) {
        let mut services = self.lock();
        let entry = services.entry(service.to_owned()).or_insert_with(ServiceEntry::new);
        entry.live.retain(|w| w.strong_count() > 0);
        entry.live.push(shared);
    }
}

impl Drop for MemoryRegistry {
    fn drop(&mut self) {
        if let Some(sweeper) = &self.sweeper {
            sweeper.abort();
        }
    }
}

/// `discovery = "registry"`: the instances of one service in a [`MemoryRegistry`].
pub struct RegistryDiscovery {
    rx: watch::Receiver<Option<EndpointSet>>,
}

impl Discover for RegistryDiscovery {
    fn subscribe(&self) -> watch::Receiver<Option<EndpointSet>> {
        self.rx.clone()
    }
}

async fn sweep_loop(registry: Weak<MemoryRegistry>) {
    loop {
        let Some(store) = registry.upgrade() else { return };
        store.sweep();
        let period = (store.ttl() / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
        drop(store);
        tokio::time::sleep(period).await;
    }
}
