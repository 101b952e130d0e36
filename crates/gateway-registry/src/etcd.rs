//! The `etcd` registry store: registrations are keys bound to leases, and every
//! gateway mirrors the prefix into a local [`MemoryRegistry`] by watching it.
//!
//! Layout: `{prefix}services/{service}/{id}` holds
//! `{"address", "metadata", "registered_at_ms", "last_heartbeat_ms"}` (JSON), bound
//! to a lease whose TTL is `registry.ttl` (whole seconds, at least 1). A heartbeat
//! renews the lease and rewrites the value (so every gateway sees `last_heartbeat`);
//! a deregistration deletes the key; etcd deletes it when the lease runs out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::registry::{
    check_names, check_registration, Instance, InstanceView, MemoryRegistry, Registered, RegistryError,
};
use crate::state::Metadata;
use crate::store::StoreStatus;

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `http://host:port` or `host:port` of the cluster's members.
    pub endpoints: Vec<String>,
    /// Where the keys live (`/gateway/` by default); a `/` is added when missing.
    pub prefix: String,
    /// One call (get, put, lease) that takes longer fails: the store counts as unavailable.
    pub call_timeout: Duration,
    /// How long starting waits for the first copy of the store.
    pub first_sync: Duration,
    /// The longest wait between reconnection attempts (from 100 ms, doubling).
    pub max_backoff: Duration,
}

impl EtcdOptions {
    /// The options of `registry.etcd`, with default timeouts (3 s calls, 3 s first
    /// sync, back-off up to 5 s).
    pub fn new(config: &gateway_config::Etcd) -> Self {
        EtcdOptions {
            endpoints: config.endpoints.clone(),
            prefix: config.prefix.clone(),
            call_timeout: Duration::from_secs(3),
            first_sync: Duration::from_secs(3),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The gRPC status code etcd answers for an unknown lease (`NOT_FOUND`).
const GRPC_NOT_FOUND: i32 = 5;

/// A failed etcd call: what it was, and why.
#[derive(Debug)]
enum CallError {
    Etcd(&'static str, etcd_client::Error),
    Timeout(&'static str, Duration),
}

impl CallError {
    /// The lease is gone: a keep-alive answered TTL 0, or a put named an expired lease.
    fn is_lease_not_found(&self) -> bool {
        match self {
            CallError::Etcd(_, etcd_client::Error::LeaseKeepAliveError(_)) => true,
            CallError::Etcd(_, etcd_client::Error::GRpcStatus(status)) => status.code() as i32 == GRPC_NOT_FOUND,
            _ => false,
        }
    }
}

impl From<CallError> for RegistryError {
    fn from(e: CallError) -> Self {
        RegistryError::Unavailable(match e {
            CallError::Etcd(what, e) => format!("etcd {what}: {e}"),
            CallError::Timeout(what, after) => format!("etcd {what}: no answer within {after:?}"),
        })
    }
}

/// What a key holds.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    address: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    registered_at_ms: u64,
    #[serde(default)]
    last_heartbeat_ms: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// What the watcher task and the API share.
struct Inner {
    options: EtcdOptions,
    mirror: Arc<MemoryRegistry>,
    /// The newest client (remade at every reconnection).
    client: Mutex<Client>,
    status: ArcSwap<StoreStatus>,
    /// `true` once the mirror holds a copy of the store.
    synced: watch::Sender<bool>,
}

/// The `etcd` store. Writes go to etcd (and into the local mirror at once, so this
/// gateway reads its own writes); a watch on the prefix brings every other gateway's
/// writes and etcd's lease expiries into the mirror. When etcd cannot be reached, the
/// mirror keeps the last known instances, [`EtcdRegistry::status`] says `degraded`,
/// writes answer [`RegistryError::Unavailable`], and the watcher reconnects with back-off.
pub struct EtcdRegistry {
    inner: Arc<Inner>,
    task: AbortHandle,
}

impl EtcdRegistry {
    /// Connect (lazily: an unreachable cluster is not an error) and start watching.
    pub async fn connect(ttl: Duration, mut options: EtcdOptions) -> Result<Arc<Self>, RegistryError> {
        if !options.prefix.ends_with('/') {
            options.prefix.push('/');
        }
        let client = new_client(&options).await?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| RegistryError::Unavailable("the etcd store needs a tokio runtime".into()))?;
        let inner = Arc::new(Inner {
            mirror: MemoryRegistry::mirror(ttl),
            client: Mutex::new(client),
            status: ArcSwap::from_pointee(StoreStatus::degraded("etcd", "connecting")),
            synced: watch::Sender::new(false),
            options,
        });
        let mut synced = inner.synced.subscribe();
        let task = runtime.spawn(watch_loop(inner.clone())).abort_handle();
        if tokio::time::timeout(inner.options.first_sync, synced.wait_for(|s| *s)).await.is_err() {
            tracing::warn!(
                endpoints = ?inner.options.endpoints,
                "etcd is not reachable yet; starting without registered instances and reconnecting"
            );
        }
        Ok(Arc::new(EtcdRegistry { inner, task }))
    }

    /// The local copy of the store.
    pub fn mirror(&self) -> &Arc<MemoryRegistry> {
        &self.inner.mirror
    }

    /// `ok` while the watch runs; `degraded` with the error while etcd is unreachable.
    pub fn status(&self) -> StoreStatus {
        StoreStatus::clone(&self.inner.status.load())
    }

    fn client(&self) -> Client {
        self.inner.client().clone()
    }

    fn key(&self, service: &str, id: &str) -> String {
        format!("{}services/{service}/{id}", self.inner.options.prefix)
    }

    /// One etcd call, bounded by `call_timeout`.
    async fn call<T>(
        &self,
        what: &'static str,
        work: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.inner.options.call_timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(CallError::Etcd(what, e)),
            Err(_) => Err(CallError::Timeout(what, self.inner.options.call_timeout)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, RegistryError> {
        let mut client = self.client();
        let mut response = self.call("get", client.get(key, None)).await?;
        Ok(response.take_kvs().into_iter().next())
    }

    /// Renew `lease` once; `false` when etcd no longer knows it (expired).
    async fn keep_alive(&self, lease: i64) -> Result<bool, RegistryError> {
        let mut client = self.client();
        match self.call("lease keep-alive", client.lease_keep_alive(lease)).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_lease_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Write the instance under its lease and into the mirror; its view.
    async fn put(&self, service: &str, id: &str, stored: Stored, lease: i64) -> Result<InstanceView, RegistryError> {
        let not_found = || RegistryError::NotFound { service: service.into(), id: id.into() };
        let value = serde_json::to_vec(&stored).map_err(|e| RegistryError::InvalidMetadata(e.to_string()))?;
        let mut client = self.client();
        let put = client.put(self.key(service, id), value, Some(PutOptions::new().with_lease(lease)));
        match self.call("put", put).await {
            Ok(_) => {}
            // The lease ran out between the renewal and the write.
            Err(e) if e.is_lease_not_found() => return Err(not_found()),
            Err(e) => return Err(e.into()),
        }
        let instance = decode(service, id, &stored).map_err(RegistryError::InvalidMetadata)?;
        self.inner.mirror.apply(service, id, instance);
        self.inner.mirror.instance(service, id).ok_or_else(not_found)
    }

    /// Register or renew: a new instance gets a new lease; a known one keeps (and
    /// renews) its lease and its `registered_at`.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        address: &str,
        metadata: Metadata,
    ) -> Result<Registered, RegistryError> {
        check_registration(service, id, address, &metadata)?;
        let now = unix_ms(SystemTime::now());
        let existing = self.get(&self.key(service, id)).await?;
        let mut renewal = None;
        if let Some(kv) = existing.filter(|kv| kv.lease() != 0) {
            if self.keep_alive(kv.lease()).await? {
                let registered_at = serde_json::from_slice::<Stored>(kv.value()).map_or(now, |s| s.registered_at_ms);
                renewal = Some((kv.lease(), registered_at));
            }
        }
        let renewed = renewal.is_some();
        let (lease, registered_at_ms) = match renewal {
            Some(renewal) => renewal,
            None => {
                let ttl = self.inner.mirror.ttl().as_secs_f64().ceil().max(1.0) as i64;
                let mut client = self.client();
                let granted = self.call("lease grant", client.lease_grant(ttl, None)).await?;
                (granted.id(), now)
            }
        };
        let stored = Stored { address: address.to_owned(), metadata, registered_at_ms, last_heartbeat_ms: now };
        let view = self.put(service, id, stored, lease).await?;
        if !renewed {
            tracing::info!(
                event = "registry",
                action = "registered",
                service,
                id,
                address,
                lease,
                "instance registered in etcd"
            );
        }
        Ok(if renewed { Registered::Renewed(view) } else { Registered::Created(view) })
    }

    /// Renew the lease of a registered instance and record the heartbeat.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<InstanceView, RegistryError> {
        check_names(service, id)?;
        let not_found = || RegistryError::NotFound { service: service.into(), id: id.into() };
        let kv = self.get(&self.key(service, id)).await?.ok_or_else(not_found)?;
        if kv.lease() != 0 && !self.keep_alive(kv.lease()).await? {
            return Err(not_found());
        }
        let mut stored: Stored = serde_json::from_slice(kv.value()).map_err(|_| not_found())?;
        stored.last_heartbeat_ms = unix_ms(SystemTime::now());
        self.put(service, id, stored, kv.lease()).await
    }

    /// Delete the key; `true` if it existed.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        check_names(service, id)?;
        let mut client = self.client();
        let deleted = self.call("delete", client.delete(self.key(service, id), None)).await?;
        self.inner.mirror.remove(service, id);
        if deleted.deleted() > 0 {
            tracing::info!(event = "registry", action = "deregistered", service, id, "instance deregistered from etcd");
        }
        Ok(deleted.deleted() > 0)
    }
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_status(&self, status: StoreStatus) {
        if **self.status.load() != status {
            match &status.error {
                None => tracing::info!(event = "registry_store", state = "ok", "etcd registry store connected"),
                Some(error) => tracing::warn!(
                    event = "registry_store",
                    state = "degraded",
                    %error,
                    "etcd registry store degraded; serving the last known instances"
                ),
            }
            self.status.store(Arc::new(status));
        }
    }

    /// `(service, id, instance)` of a key under the prefix, or why it is skipped.
    fn parse(&self, kv: &KeyValue) -> Result<(String, String, Instance), String> {
        let key = std::str::from_utf8(kv.key()).map_err(|_| "a key that is not UTF-8".to_owned())?;
        let rest = key
            .strip_prefix(&self.options.prefix)
            .and_then(|k| k.strip_prefix("services/"))
            .ok_or_else(|| format!("`{key}` is not {}services/SERVICE/ID", self.options.prefix))?;
        let (service, id) = rest.split_once('/').ok_or_else(|| format!("`{key}` has no instance id"))?;
        let stored: Stored = serde_json::from_slice(kv.value()).map_err(|e| format!("`{key}`: {e}"))?;
        let instance = decode(service, id, &stored).map_err(|e| format!("`{key}`: {e}"))?;
        Ok((service.to_owned(), id.to_owned(), instance))
    }

    /// Copy the whole prefix into the mirror, then follow changes until the watch
    /// breaks (the error says why).
    async fn session(&self, client: &mut Client) -> Result<(), String> {
        let timeout = self.options.call_timeout;
        let prefix = self.options.prefix.as_str();
        let mut snapshot = tokio::time::timeout(timeout, client.get(prefix, Some(GetOptions::new().with_prefix())))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let mut all: BTreeMap<String, BTreeMap<String, Instance>> = BTreeMap::new();
        for kv in snapshot.take_kvs() {
            match self.parse(&kv) {
                Ok((service, id, instance)) => {
                    all.entry(service).or_default().insert(id, instance);
                }
                Err(why) => tracing::warn!(%why, "skipping an etcd registry key"),
            }
        }
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream = tokio::time::timeout(timeout, client.watch(prefix, Some(options)))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        self.mirror.replace(all);
        self.set_status(StoreStatus::ok("etcd"));
        self.synced.send_replace(true);
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Err("the watch stream ended".into()),
                Err(e) => return Err(e.to_string()),
            };
            if response.canceled() {
                return Err(format!("the watch was cancelled: {}", response.cancel_reason()));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => match self.parse(kv) {
                        Ok((service, id, instance)) => self.mirror.apply(&service, &id, instance),
                        Err(why) => tracing::warn!(%why, "skipping an etcd registry key"),
                    },
                    EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key());
                        let rest = key.strip_prefix(prefix).and_then(|k| k.strip_prefix("services/"));
                        if let Some((service, id)) = rest.and_then(|r| r.split_once('/')) {
                            tracing::info!(
                                event = "registry",
                                action = "removed",
                                service,
                                id,
                                "instance gone from etcd"
                            );
                            self.mirror.remove(service, id);
                        }
                    }
                }
            }
        }
    }
}

/// The instance a stored value describes (validated like a registration).
fn decode(service: &str, id: &str, stored: &Stored) -> Result<Instance, String> {
    let (endpoint, weight) =
        check_registration(service, id, &stored.address, &stored.metadata).map_err(|e| e.to_string())?;
    Ok(Instance {
        endpoint,
        weight,
        metadata: Arc::new(stored.metadata.clone()),
        registered_at: from_unix_ms(stored.registered_at_ms),
        last_heartbeat: from_unix_ms(stored.last_heartbeat_ms),
        seen: Instant::now(),
    })
}

async fn new_client(options: &EtcdOptions) -> Result<Client, RegistryError> {
    let connect = ConnectOptions::new()
        .with_connect_timeout(options.call_timeout)
        .with_keep_alive(Duration::from_secs(5), options.call_timeout)
        .with_keep_alive_while_idle(true);
    Client::connect(&options.endpoints, Some(connect))
        .await
        .map_err(|e| RegistryError::Unavailable(format!("etcd endpoints {:?}: {e}", options.endpoints)))
}

/// Mirror the store for as long as it exists: sync, watch, and on any failure mark
/// the store degraded and try again after a back-off (100 ms doubling to `max_backoff`).
async fn watch_loop(inner: Arc<Inner>) {
    let initial = Duration::from_millis(100);
    let mut backoff = initial;
    loop {
        let started = Instant::now();
        let mut client = inner.client().clone();
        let error = inner.session(&mut client).await.err().unwrap_or_default();
        inner.set_status(StoreStatus::degraded("etcd", error));
        if started.elapsed() > inner.options.max_backoff {
            backoff = initial; // it ran for a while: a fresh failure
        }
        tokio::time::sleep(crate::util::jitter(backoff, 0.2)).await;
        backoff = (backoff * 2).min(inner.options.max_backoff);
        // A new client: a fresh channel, whatever state the old one was left in.
        if let Ok(client) = new_client(&inner.options).await {
            *inner.client() = client;
        }
    }
}
