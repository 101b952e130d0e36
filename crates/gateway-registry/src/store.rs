//! [`Registry`]: the store the registry API writes to, `memory` or `etcd`, and its health.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::etcd::{EtcdOptions, EtcdRegistry};
use crate::registry::{InstanceView, MemoryRegistry, Registered, RegistryError, ServiceSummary};
use crate::state::Metadata;

/// Where registrations live. Reads (listings, discovery) always come from the local
/// [`MemoryRegistry`]: the store itself (`memory`), or the mirror that follows etcd
/// (`etcd`), so the proxy and the API never wait on etcd to read.
#[derive(Clone)]
pub enum Registry {
    /// `registry.store = "memory"`: this gateway alone, TTLs kept in process.
    Memory(Arc<MemoryRegistry>),
    /// `registry.store = "etcd"`: shared by every gateway watching the same prefix.
    Etcd(Arc<EtcdRegistry>),
}

/// How the store is doing, for `/readyz` details and `gateway_registry_store_up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    /// `memory` or `etcd`.
    pub store: &'static str,
    /// `ok`, or `degraded`: the shared store is unreachable and the gateway serves the
    /// instances it last knew (registrations and heartbeats answer 503 meanwhile).
    pub status: &'static str,
    /// Why it is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StoreStatus {
    pub(crate) fn ok(store: &'static str) -> Self {
        StoreStatus { store, status: "ok", error: None }
    }

    pub(crate) fn degraded(store: &'static str, error: impl Into<String>) -> Self {
        StoreStatus { store, status: "degraded", error: Some(error.into()) }
    }

    /// `true` unless degraded.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

impl Registry {
    /// The embedded store: instances expire after `ttl`.
    pub fn memory(ttl: Duration) -> Self {
        Registry::Memory(MemoryRegistry::new(ttl))
    }

    /// The etcd store at `options.endpoints`: leases of `ttl`, keys under
    /// `options.prefix`. Waits up to `options.first_sync` for the first copy of the
    /// store (so a gateway starts serving what its peers registered); past that it
    /// starts degraded and keeps reconnecting. Fails only on unusable endpoints.
    pub async fn etcd(ttl: Duration, options: EtcdOptions) -> Result<Self, RegistryError> {
        Ok(Registry::Etcd(EtcdRegistry::connect(ttl, options).await?))
    }

    /// The store a validated `[registry]` section asks for.
    pub async fn from_config(config: &gateway_config::Registry) -> Result<Self, RegistryError> {
        let ttl = config.ttl.get();
        match (config.store, &config.etcd) {
            (gateway_config::RegistryStore::Etcd, Some(etcd)) => Self::etcd(ttl, EtcdOptions::new(etcd)).await,
            (gateway_config::RegistryStore::Etcd, None) => {
                Err(RegistryError::Unavailable("registry.store = \"etcd\" needs registry.etcd".into()))
            }
            (gateway_config::RegistryStore::Memory, _) => Ok(Self::memory(ttl)),
        }
    }

    /// The local view every read and every `discovery = "registry"` service follows.
    pub fn local(&self) -> &Arc<MemoryRegistry> {
        match self {
            Registry::Memory(memory) => memory,
            Registry::Etcd(etcd) => etcd.mirror(),
        }
    }

    /// `memory` or `etcd`.
    pub fn kind(&self) -> &'static str {
        match self {
            Registry::Memory(_) => "memory",
            Registry::Etcd(_) => "etcd",
        }
    }

    /// Whether the store is reachable.
    pub fn status(&self) -> StoreStatus {
        match self {
            Registry::Memory(_) => StoreStatus::ok("memory"),
            Registry::Etcd(etcd) => etcd.status(),
        }
    }

    /// Change the TTL (a reload changed `registry.ttl`). With etcd it applies to
    /// leases granted from now on.
    pub fn set_ttl(&self, ttl: Duration) {
        self.local().set_ttl(ttl);
    }

    /// Register or renew (see [`MemoryRegistry::register`]); with etcd, the key and its
    /// lease are written before this answers.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        address: &str,
        metadata: Metadata,
    ) -> Result<Registered, RegistryError> {
        match self {
            Registry::Memory(memory) => memory.register(service, id, address, metadata),
            Registry::Etcd(etcd) => etcd.register(service, id, address, metadata).await,
        }
    }

    /// Renew an instance's TTL; [`RegistryError::NotFound`] when unknown or expired.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<InstanceView, RegistryError> {
        match self {
            Registry::Memory(memory) => memory.heartbeat(service, id),
            Registry::Etcd(etcd) => etcd.heartbeat(service, id).await,
        }
    }

    /// Remove an instance; `true` if it was registered.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        match self {
            Registry::Memory(memory) => memory.deregister(service, id),
            Registry::Etcd(etcd) => etcd.deregister(service, id).await,
        }
    }

    /// One instance, unless unknown or expired.
    pub fn instance(&self, service: &str, id: &str) -> Option<InstanceView> {
        self.local().instance(service, id)
    }

    /// The instances of `service`.
    pub fn instances(&self, service: &str) -> Vec<InstanceView> {
        self.local().instances(service)
    }

    /// Every service with instances or a gateway service following it.
    pub fn services(&self) -> Vec<ServiceSummary> {
        self.local().services()
    }
}

impl From<Arc<MemoryRegistry>> for Registry {
    fn from(memory: Arc<MemoryRegistry>) -> Self {
        Registry::Memory(memory)
    }
}
