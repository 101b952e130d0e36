//! Response cache (`cache`): an in-memory store per route, bounded by entries and bytes, with
//! request coalescing.
//!
//! # What is cached
//!
//! Only answers to `GET` are stored; a `HEAD` is answered from a stored `GET` (without the
//! body) and otherwise goes upstream untouched. The key is the host (lower-cased), the
//! normalised path, the query as sent, the values of the route's `vary` headers, and, on a
//! `private = true` route, the caller's principal id; the backend's own `Vary` headers pick a
//! variant under that key (the `Vary` list and the request values it names are stored with
//! each variant, up to [`CacheLimits::max_variants`] per key).
//!
//! A request is **not looked up and its answer not kept** (a bypass) when it is not `GET` or
//! `HEAD`, carries `Cache-Control: no-store`, or is credentialed (`authorization` or `cookie`
//! in [`CacheRequest::headers`], or [`CacheRequest::credentialed`] set by the caller) on a route without
//! `private = true` (or with it, but without a principal to key on). `Cache-Control: no-cache`
//! or `max-age=0` (or `Pragma: no-cache` without `Cache-Control`) skips the lookup and the
//! coalescing but may store the fresh answer.
//!
//! An answer is stored only when it is a `200`, has no `Set-Cookie`, no `Vary: *`, no
//! `Cache-Control: no-store` or `no-cache`, no `private` (unless the entry is keyed by
//! principal), and a body of at most [`CacheLimits::max_entry_bytes`]. Its freshness is the
//! route's `ttl`, shortened (never lengthened) by `s-maxage` (shared entries only), else
//! `max-age`, else `Expires` minus `Date`, and by the `Age` it already had; what ends up zero
//! is not stored. Other statuses (203, 301, 404...) are deliberately left out: they are rarely
//! worth it and easy to get wrong.
//!
//! # Bounds
//!
//! The store is a [`moka`] cache whose weigher charges each variant
//! `max(its bytes, max_bytes / max_entries)` against a capacity of `max_bytes`: the total stays
//! under `max_bytes`, and since no variant weighs less than one "slot", the count stays under
//! `max_entries`. Eviction and admission are moka's (TinyLFU): under pressure a new, rarely
//! asked-for entry may not be admitted at all.
//!
//! # Coalescing
//!
//! Concurrent misses for one key go upstream once. The first becomes the *leader* and runs its
//! fetch; the others wait on a `watch` channel in a small in-flight map (not moka's own
//! `get_with`, which would hand every waiter the leader's result whatever it is). When the
//! leader's answer was stored, each waiter whose request matches the stored variant's `Vary`
//! gets it as a hit. When it was not storable (an error, a `Set-Cookie`, `no-store`, a body
//! too large to buffer...), it is **not shared**: each waiter then fetches on its own, without
//! coalescing (so that fifty waiters do not queue up one behind the other). When the leader is
//! cancelled (its client went away), the waiters start over and one of them leads.
//!
//! # Use
//!
//! ```no_run
//! # async fn demo(store: &gateway_traffic::cache::CacheStore, parts: &http::request::Parts) {
//! use gateway_traffic::cache::{CacheRequest, CacheStatus, Fetched, Lookup, Served};
//! let req = CacheRequest::new(&parts.method, "api.example.com", parts.uri.path(), parts.uri.query(), &parts.headers);
//! match store.lookup(&req).await {
//!     Lookup::Hit(hit) => { let _response = hit.to_response(parts.method == http::Method::HEAD); /* x-cache: HIT */ }
//!     Lookup::Bypass(_) => { /* proxy as usual; x-cache: MISS */ }
//!     Lookup::Miss(ticket) => {
//!         let fetched = ticket
//!             .fetch(async {
//!                 // Send upstream; buffer the body with `buffer_body` when `ticket.should_buffer(..)`.
//!                 Ok::<_, std::io::Error>(Fetched::<()>::Passthrough(()))
//!             })
//!             .await;
//!     }
//! }
//! # }
//! ```

mod body;
mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AGE, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;

pub use body::{buffer_body, Buffered, PrefixedBody};
use policy::{request_directives, storable};

/// `x-cache: HIT | MISS` on answers of cached routes.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The limits of one route's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most variants kept (the route's `max_entries`).
    pub max_entries: u64,
    /// Most bytes kept: bodies, headers and keys.
    pub max_bytes: u64,
    /// Largest body stored; larger answers pass through.
    pub max_entry_bytes: usize,
    /// Most `Vary` variants kept under one key; the oldest goes first.
    pub max_variants: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { max_entries: 10_000, max_bytes: 64 * 1024 * 1024, max_entry_bytes: 1024 * 1024, max_variants: 8 }
    }
}

/// Whether an answer came from the cache, for `x-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the store, or from a concurrent request's fetch.
    Hit,
    /// Fetched upstream for this request (bypasses included).
    Miss,
}

impl CacheStatus {
    /// `HIT` or `MISS`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
        }
    }

    /// Sets `x-cache` on an answer's headers.
    pub fn set_header(self, headers: &mut HeaderMap) {
        headers.insert(X_CACHE, HeaderValue::from_static(self.as_str()));
    }
}

/// What the cache needs to know about one request.
#[derive(Debug, Clone, Copy)]
pub struct CacheRequest<'a> {
    pub method: &'a Method,
    /// The request's host (`host` header or absolute-form authority).
    pub host: &'a str,
    /// The normalised path, as routed and forwarded.
    pub path: &'a str,
    /// The query, as sent (not reordered).
    pub query: Option<&'a str>,
    /// The request headers, after the gateway's own request edits.
    pub headers: &'a HeaderMap,
    /// The caller knows the request is credentialed even if `headers` no longer shows it: an
    /// API key was presented, or any provider accepted it (set it whenever there is a
    /// principal, so that stripping `authorization` before upstream cannot make an answer
    /// personalised through forwarded claims look shareable).
    pub credentialed: bool,
    /// A stable id of the authenticated principal (e.g. `provider:subject`), which keys the
    /// entries of `private = true` routes.
    pub principal: Option<&'a str>,
}

impl<'a> CacheRequest<'a> {
    /// An anonymous request (not flagged credentialed, no principal); set those fields as needed.
    pub fn new(
        method: &'a Method,
        host: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> Self {
        CacheRequest { method, host, path, query, headers, credentialed: false, principal: None }
    }
}

/// A whole answer, as stored.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    pub status: StatusCode,
    /// The upstream's headers (hop-by-hop removed by the caller), without `age`.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was stored.
    pub stored_at: Instant,
    /// How long it stays fresh after `stored_at`.
    pub ttl: Duration,
    /// The `Age` it already had when it arrived.
    pub initial_age: Duration,
}

impl CachedResponse {
    /// A fetched answer; `stored_at`, `ttl` and `initial_age` are set when it is stored.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        CachedResponse {
            status,
            headers,
            body,
            stored_at: Instant::now(),
            ttl: Duration::ZERO,
            initial_age: Duration::ZERO,
        }
    }

    /// Its age now: what it arrived with plus the time in the store.
    pub fn age(&self) -> Duration {
        self.initial_age + Instant::now().saturating_duration_since(self.stored_at)
    }

    fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored_at) < self.ttl
    }

    /// An answer to send: the stored status, headers and body, `content-length` set, and an
    /// `Age` header when it came from the store. `head` leaves the body out (and keeps the
    /// length). `x-cache` is the caller's ([`CacheStatus::set_header`]).
    pub fn to_response(&self, head: bool) -> Response<gateway_core::Body> {
        let body = if head { gateway_core::Body::empty() } else { gateway_core::full(self.body.clone()) };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.clone_from(&self.headers);
        headers.remove(TRANSFER_ENCODING);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        if self.ttl > Duration::ZERO {
            headers.insert(AGE, HeaderValue::from(self.age().as_secs()));
        }
        response
    }
}

/// What a fetch produced.
#[derive(Debug)]
pub enum Fetched<R> {
    /// A whole answer, body buffered; stored and shared when the rules allow.
    Complete(CachedResponse),
    /// An answer passed through as it is (not storable, or too large to buffer); never shared.
    Passthrough(R),
}

/// The answer for the client.
#[derive(Debug)]
pub enum Served<R> {
    /// A whole answer (stored or not): send [`CachedResponse::to_response`].
    Complete(Arc<CachedResponse>),
    /// The caller's own passthrough answer.
    Passthrough(R),
}

/// The result of [`MissTicket::fetch`].
#[derive(Debug)]
pub struct FetchOutcome<R> {
    /// `Hit` when another request's fetch answered this one.
    pub status: CacheStatus,
    pub served: Served<R>,
}

/// Why a request is not looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// Neither `GET` nor `HEAD`.
    Method,
    /// A `HEAD` with no stored `GET` answer.
    HeadMiss,
    /// `Cache-Control: no-store` on the request.
    NoStore,
    /// A credentialed request on a route that may not share it.
    Credentialed,
}

/// The result of [`CacheStore::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// Fresh and matching: serve it (`x-cache: HIT`).
    Hit(Arc<CachedResponse>),
    /// Not stored: fetch through the ticket (`x-cache` from the outcome).
    Miss(MissTicket),
    /// Not for the cache: proxy as usual (`x-cache: MISS`).
    Bypass(BypassReason),
}

/// The key every variant of one resource shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PrimaryKey {
    host: Box<str>,
    path: Box<str>,
    query: Option<Box<str>>,
    /// The values of the route's `vary` headers, in config order.
    vary: Box<[Option<Bytes>]>,
    /// The principal, on `private = true` routes for credentialed requests.
    principal: Option<Box<str>>,
}

/// One stored answer and the request values it was stored for.
#[derive(Debug)]
struct Variant {
    response: Arc<CachedResponse>,
    /// The backend's `Vary` names and the storing request's values of them.
    vary: Box<[(HeaderName, Option<Bytes>)]>,
    /// What it is charged against `max_bytes`.
    weight: u64,
}

impl Variant {
    fn matches(&self, headers: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, value)| request_value(headers, name) == *value)
    }
}

type Variants = Arc<[Arc<Variant>]>;

/// What the leader hands to those waiting on the same key.
#[derive(Debug, Clone)]
enum Shared {
    Stored(Arc<Variant>),
    NotShared,
}

#[derive(Debug)]
struct Inner {
    config: gateway_config::schema::Cache,
    vary: Box<[HeaderName]>,
    limits: CacheLimits,
    entries: moka::future::Cache<Arc<PrimaryKey>, Variants>,
    in_flight: Mutex<HashMap<Arc<PrimaryKey>, watch::Sender<Option<Shared>>>>,
}

/// One route's response cache; cheap to clone (one `Arc`). Keep it across a reload when the
/// route's `cache` definition ([`CacheStore::config`]) did not change.
#[derive(Debug, Clone)]
pub struct CacheStore {
    inner: Arc<Inner>,
}

impl CacheStore {
    /// A store for a route's `cache`, with the default byte limits.
    pub fn new(config: &gateway_config::schema::Cache) -> Result<CacheStore, String> {
        let limits = CacheLimits { max_entries: config.max_entries as u64, ..CacheLimits::default() };
        Self::with_limits(config, limits)
    }

    /// A store with explicit limits (`limits.max_entries` wins over `config.max_entries`).
    pub fn with_limits(config: &gateway_config::schema::Cache, limits: CacheLimits) -> Result<CacheStore, String> {
        let vary = config
            .vary
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("cache.vary: `{h}` is not a header name"))
            })
            .collect::<Result<Box<[_]>, _>>()?;
        if config.ttl.get().is_zero() {
            return Err("cache.ttl must be greater than 0".to_owned());
        }
        let limits = CacheLimits {
            max_entries: limits.max_entries.max(1),
            max_bytes: limits.max_bytes.max(1),
            max_variants: limits.max_variants.max(1),
            ..limits
        };
        let entries = moka::future::Cache::builder()
            .max_capacity(limits.max_bytes)
            .weigher(|_key: &Arc<PrimaryKey>, variants: &Variants| {
                u32::try_from(variants.iter().map(|v| v.weight).sum::<u64>()).unwrap_or(u32::MAX)
            })
            // Freshness is checked per variant; this only lets moka drop what can never be served.
            .time_to_live(config.ttl.get())
            .build();
        Ok(CacheStore {
            inner: Arc::new(Inner {
                config: config.clone(),
                vary,
                limits,
                entries,
                in_flight: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The definition this store was built for; compare it with the new route's on reload.
    pub fn config(&self) -> &gateway_config::schema::Cache {
        &self.inner.config
    }

    /// The limits in force.
    pub fn limits(&self) -> CacheLimits {
        self.inner.limits
    }

    /// Drops every entry (the admin purge). Fetches in flight still store their answers.
    pub fn purge(&self) {
        self.inner.entries.invalidate_all();
    }

    /// Entries (keys) and bytes charged, after pending housekeeping.
    pub async fn usage(&self) -> (u64, u64) {
        self.inner.entries.run_pending_tasks().await;
        (self.inner.entries.entry_count(), self.inner.entries.weighted_size())
    }

    /// Looks a request up; see the module docs for what bypasses.
    pub async fn lookup(&self, req: &CacheRequest<'_>) -> Lookup {
        let head = match *req.method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Lookup::Bypass(BypassReason::Method),
        };
        let directives = request_directives(req.headers);
        if directives.no_store {
            return Lookup::Bypass(BypassReason::NoStore);
        }
        let credentialed = req.credentialed
            || req.headers.contains_key(http::header::AUTHORIZATION)
            || req.headers.contains_key(http::header::COOKIE);
        let principal = match (credentialed, self.inner.config.private, req.principal) {
            (false, _, _) => None,
            (true, true, Some(p)) => Some(Box::from(p)),
            (true, _, _) => return Lookup::Bypass(BypassReason::Credentialed),
        };
        let key = Arc::new(PrimaryKey {
            host: req.host.to_ascii_lowercase().into_boxed_str(),
            path: Box::from(req.path),
            query: req.query.map(Box::from),
            vary: self.inner.vary.iter().map(|name| request_value(req.headers, name)).collect(),
            principal,
        });
        if !directives.no_cache {
            if let Some(variant) = self.find(&key, req.headers).await {
                return Lookup::Hit(variant.response.clone());
            }
        }
        if head {
            return Lookup::Bypass(BypassReason::HeadMiss);
        }
        Lookup::Miss(MissTicket {
            store: self.clone(),
            private: key.principal.is_some(),
            key,
            headers: req.headers.clone(),
            refresh: directives.no_cache,
        })
    }

    async fn find(&self, key: &Arc<PrimaryKey>, headers: &HeaderMap) -> Option<Arc<Variant>> {
        let variants = self.inner.entries.get(key).await?;
        let now = Instant::now();
        variants.iter().find(|v| v.response.is_fresh(now) && v.matches(headers)).cloned()
    }

    /// Stores an answer when the rules allow; gives it back otherwise.
    async fn store(
        &self,
        key: &Arc<PrimaryKey>,
        headers: &HeaderMap,
        private: bool,
        mut response: CachedResponse,
    ) -> Result<Arc<Variant>, CachedResponse> {
        let limits = self.inner.limits;
        if response.body.len() > limits.max_entry_bytes {
            return Err(response);
        }
        let Ok(rules) = storable(response.status, &response.headers, private, self.inner.config.ttl.get()) else {
            return Err(response);
        };
        let initial_age = policy::age(&response.headers);
        let ttl = rules.lifetime.saturating_sub(initial_age);
        if ttl.is_zero() {
            return Err(response);
        }
        response.headers.remove(AGE);
        response.headers.remove(X_CACHE);
        response.stored_at = Instant::now();
        response.ttl = ttl;
        response.initial_age = initial_age;
        let vary: Box<[_]> = rules.vary.into_iter().map(|name| (name.clone(), request_value(headers, &name))).collect();
        let bytes = response.body.len() as u64 + header_bytes(&response.headers) + key_bytes(key) + 64;
        let slot = limits.max_bytes / limits.max_entries;
        let weight = bytes.max(slot);
        if weight > limits.max_bytes {
            return Err(response);
        }
        let variant = Arc::new(Variant { response: Arc::new(response), vary, weight });
        let new = variant.clone();
        let max_variants = limits.max_variants;
        self.inner
            .entries
            .entry(key.clone())
            .and_upsert_with(|old| async move {
                let now = Instant::now();
                let mut list: Vec<Arc<Variant>> = old
                    .map(|e| {
                        e.into_value()
                            .iter()
                            .filter(|v| v.response.is_fresh(now) && v.vary != new.vary)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                list.push(new);
                let excess = list.len().saturating_sub(max_variants);
                list.drain(..excess);
                Variants::from(list)
            })
            .await;
        Ok(variant)
    }
}

/// A miss: the right to fetch (or to wait for a concurrent fetch of the same key).
#[derive(Debug)]
pub struct MissTicket {
    store: CacheStore,
    key: Arc<PrimaryKey>,
    /// The request's headers, to match `Vary` and record the stored variant's values.
    headers: HeaderMap,
    /// Keyed by principal: `Cache-Control: private` answers may be stored.
    private: bool,
    /// `no-cache` on the request: fetch alone, then store.
    refresh: bool,
}

/// What [`MissTicket::should_buffer`] decides with, detached from the ticket so the fetch
/// future (built before [`MissTicket::fetch`] takes the ticket) can ask it.
#[derive(Debug, Clone, Copy)]
pub struct BufferPolicy {
    private: bool,
    ttl: Duration,
    max_entry_bytes: usize,
}

impl BufferPolicy {
    /// Same answer as [`MissTicket::should_buffer`].
    pub fn should_buffer(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let within = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_none_or(|n| n <= self.max_entry_bytes as u64);
        within && storable(status, headers, self.private, self.ttl).is_ok()
    }

    /// The largest body to buffer (pass to [`buffer_body`]).
    pub fn max_body_bytes(&self) -> usize {
        self.max_entry_bytes
    }
}

impl MissTicket {
    /// The buffering decision, to use inside the fetch future.
    pub fn buffer_policy(&self) -> BufferPolicy {
        BufferPolicy {
            private: self.private,
            ttl: self.store.inner.config.ttl.get(),
            max_entry_bytes: self.store.inner.limits.max_entry_bytes,
        }
    }

    /// Whether an upstream answer with this status and these headers could be stored, so is
    /// worth buffering (its `content-length`, when given, is within the entry limit). When
    /// false, pass the answer through as [`Fetched::Passthrough`].
    pub fn should_buffer(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let within = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_none_or(|n| n <= self.max_body_bytes() as u64);
        within && storable(status, headers, self.private, self.store.inner.config.ttl.get()).is_ok()
    }

    /// The largest body to buffer (pass to [`buffer_body`]).
    pub fn max_body_bytes(&self) -> usize {
        self.store.inner.limits.max_entry_bytes
    }

    /// Fetches, or waits for a concurrent fetch of the same key; see the module docs. `fetch`
    /// is only polled when this request goes upstream itself.
    pub async fn fetch<F, R, E>(self, fetch: F) -> Result<FetchOutcome<R>, E>
    where
        F: std::future::Future<Output = Result<Fetched<R>, E>>,
    {
        if self.refresh {
            return self.fetch_alone(fetch).await;
        }
        let guard = loop {
            let waiting = {
                let mut in_flight = self.store.inner.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
                match in_flight.get(&self.key) {
                    Some(tx) => Some(tx.subscribe()),
                    None => {
                        in_flight.insert(self.key.clone(), watch::channel(None).0);
                        None
                    }
                }
            };
            let Some(mut rx) = waiting else {
                break LeaderGuard { inner: &self.store.inner, key: &self.key, done: false };
            };
            let shared = match rx.wait_for(Option::is_some).await {
                Ok(shared) => shared.clone(),
                // The leader was cancelled: start over, one of us leads.
                Err(_) => continue,
            };
            return match shared {
                Some(Shared::Stored(variant)) if variant.matches(&self.headers) => {
                    Ok(FetchOutcome { status: CacheStatus::Hit, served: Served::Complete(variant.response.clone()) })
                }
                _ => self.fetch_alone(fetch).await,
            };
        };
        // Stored by someone else between the lookup and now?
        if let Some(variant) = self.store.find(&self.key, &self.headers).await {
            guard.finish(Shared::Stored(variant.clone()));
            return Ok(FetchOutcome { status: CacheStatus::Hit, served: Served::Complete(variant.response.clone()) });
        }
        match fetch.await {
            Ok(fetched) => {
                let (served, shared) = self.complete(fetched).await;
                guard.finish(shared);
                Ok(FetchOutcome { status: CacheStatus::Miss, served })
            }
            Err(e) => {
                guard.finish(Shared::NotShared);
                Err(e)
            }
        }
    }

    async fn fetch_alone<F, R, E>(&self, fetch: F) -> Result<FetchOutcome<R>, E>
    where
        F: std::future::Future<Output = Result<Fetched<R>, E>>,
    {
        let (served, _) = self.complete(fetch.await?).await;
        Ok(FetchOutcome { status: CacheStatus::Miss, served })
    }

    async fn complete<R>(&self, fetched: Fetched<R>) -> (Served<R>, Shared) {
        match fetched {
            Fetched::Passthrough(r) => (Served::Passthrough(r), Shared::NotShared),
            Fetched::Complete(response) => {
                match self.store.store(&self.key, &self.headers, self.private, response).await {
                    Ok(variant) => (Served::Complete(variant.response.clone()), Shared::Stored(variant)),
                    Err(response) => (Served::Complete(Arc::new(response)), Shared::NotShared),
                }
            }
        }
    }
}

/// The leader's slot in the in-flight map: freed on `finish`, or on drop if the leader is
/// cancelled (its waiters then see the channel close and start over).
struct LeaderGuard<'a> {
    inner: &'a Inner,
    key: &'a Arc<PrimaryKey>,
    done: bool,
}

impl LeaderGuard<'_> {
    fn finish(mut self, shared: Shared) {
        self.done = true;
        if let Some(tx) = self.take() {
            tx.send_replace(Some(shared));
        }
    }

    fn take(&self) -> Option<watch::Sender<Option<Shared>>> {
        self.inner.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(self.key)
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            drop(self.take());
        }
    }
}

/// A request header's value for keying: every value, joined with `, `; `None` when absent.
fn request_value(headers: &HeaderMap, name: &HeaderName) -> Option<Bytes> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes());
    }
    Some(Bytes::from(out))
}

fn header_bytes(headers: &HeaderMap) -> u64 {
    headers.iter().map(|(n, v)| (n.as_str().len() + v.len() + 32) as u64).sum()
}

fn key_bytes(key: &PrimaryKey) -> u64 {
    let vary: usize = key.vary.iter().map(|v| v.as_ref().map_or(0, Bytes::len)).sum();
    (key.host.len() + key.path.len() + key.query.as_ref().map_or(0, |q| q.len()) + vary) as u64
}

#[cfg(test)]
mod tests;
