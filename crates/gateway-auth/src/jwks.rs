//! A JWKS kept fresh: fetched when the provider is built, refreshed in the background
//! on the cache lifetime the identity provider announces, refreshed early (at most once
//! per `min_refresh_interval`) when a token names a key it does not know, and kept as
//! it was whenever a refresh fails.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::keys::{self, VerifyKey};

/// How JWKS are fetched and kept. The defaults suit production; tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksPolicy {
    /// Limit on one whole fetch: connect, TLS, response and body.
    pub fetch_timeout: Duration,
    /// At most one fetch per this interval is caused by tokens with an unknown `kid`,
    /// so a flood of made-up key ids cannot hammer the identity provider.
    pub min_refresh_interval: Duration,
    /// Refresh period when the response has no `Cache-Control: max-age`.
    pub default_ttl: Duration,
    /// Bounds on the refresh period a `max-age` may ask for.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Next background try after a failed refresh (the last good keys stay in use).
    pub retry_interval: Duration,
    /// Largest JWKS body accepted.
    pub max_bytes: usize,
}

impl Default for JwksPolicy {
    fn default() -> Self {
        JwksPolicy {
            fetch_timeout: Duration::from_secs(5),
            min_refresh_interval: Duration::from_secs(5),
            default_ttl: Duration::from_secs(300),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            retry_interval: Duration::from_secs(30),
            max_bytes: 1024 * 1024,
        }
    }
}

/// One fetched JWKS response.
pub(crate) struct Fetched {
    pub body: Bytes,
    pub cache_control: Option<String>,
}

pub(crate) type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, String>> + Send + 'a>>;

/// Where a JWKS comes from: the network in production, memory in unit tests.
pub(crate) trait JwksSource: Send + Sync + 'static {
    fn fetch(&self) -> FetchFuture<'_>;
}

/// A JWKS over HTTP or HTTPS (webpki roots). A new connection per fetch: fetches are
/// rare, and a pooled connection would tie the client to the runtime that opened it.
pub(crate) struct HttpSource {
    uri: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl HttpSource {
    pub(crate) fn new(url: &str, policy: &JwksPolicy) -> Result<HttpSource, String> {
        let uri: Uri = url.parse().map_err(|e| format!("jwks_url `{url}`: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => return Err(format!("jwks_url `{url}` must be an https:// (or http://) URL")),
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("TLS setup: {e}"))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
        Ok(HttpSource { uri, client, timeout: policy.fetch_timeout, max_bytes: policy.max_bytes })
    }

    async fn get(&self) -> Result<Fetched, String> {
        let request = Request::get(self.uri.clone())
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(USER_AGENT, concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let declared =
            response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_bytes as u64) {
            return Err(format!("body larger than {} bytes", self.max_bytes));
        }
        let cache_control = response.headers().get(CACHE_CONTROL).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = Limited::new(response.into_body(), self.max_bytes)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(Fetched { body, cache_control })
    }
}

impl JwksSource for HttpSource {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.get()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            }
        })
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The keys in use, with a number that grows with every successful fetch.
pub(crate) struct KeySet {
    pub keys: Vec<VerifyKey>,
    pub generation: u64,
}

struct Shared {
    /// The `[auth.NAME]` this JWKS belongs to, for logs.
    provider: Arc<str>,
    source: Box<dyn JwksSource>,
    pinned: Vec<Algorithm>,
    policy: JwksPolicy,
    keys: ArcSwap<KeySet>,
    /// Held while a fetch runs: one fetch at a time, and callers that waited see its result.
    fetching: tokio::sync::Mutex<()>,
    /// When the last fetch started, successful or not: the on-demand rate limit.
    last_attempt: Mutex<Option<Instant>>,
}

/// Aborts the background refresh when the provider goes away (a reload removed or
/// replaced it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A provider's JWKS. Dropping it stops its background refresh.
pub(crate) struct Jwks {
    shared: Arc<Shared>,
    _refresh: AbortOnDrop,
}

impl Jwks {
    /// Fetches the set once (an error if that fails or yields no usable key) and starts
    /// the background refresh on the current tokio runtime.
    pub(crate) async fn start(
        provider: Arc<str>,
        source: Box<dyn JwksSource>,
        pinned: Vec<Algorithm>,
        policy: JwksPolicy,
    ) -> Result<Jwks, String> {
        let shared = Arc::new(Shared {
            provider,
            source,
            pinned,
            policy,
            keys: ArcSwap::from_pointee(KeySet { keys: Vec::new(), generation: 0 }),
            fetching: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
        });
        let ttl = shared.fetch_and_store().await?;
        let task = tokio::spawn(refresh_loop(Arc::downgrade(&shared), ttl));
        Ok(Jwks { shared, _refresh: AbortOnDrop(task) })
    }

    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.shared.keys.load()
    }

    /// A token names a key that set `seen` lacks: fetch again unless a fetch started
    /// less than `min_refresh_interval` ago. True when the set in use is newer than
    /// `seen` afterwards (fetched here, or by a concurrent caller we waited for).
    pub(crate) async fn refresh_for_unknown_key(&self, seen: u64) -> bool {
        let shared = &self.shared;
        let _one_at_a_time = shared.fetching.lock().await;
        if shared.keys.load().generation != seen {
            return true;
        }
        let recent = shared.last_attempt().is_some_and(|t| t.elapsed() < shared.policy.min_refresh_interval);
        if recent {
            return false;
        }
        match shared.fetch_and_store().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(provider = %shared.provider, error = %e, "JWKS refresh for an unknown key failed; keeping the last good keys");
                false
            }
        }
    }
}

impl Shared {
    fn last_attempt(&self) -> Option<Instant> {
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One fetch; on success the new set replaces the old and the refresh period it
    /// announces is returned. Callers hold `fetching` (or are the first fetch).
    async fn fetch_and_store(&self) -> Result<Duration, String> {
        *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let fetched = self.source.fetch().await?;
        let keys = keys::from_jwks(&fetched.body, &self.pinned)?;
        let generation = self.keys.load().generation + 1;
        tracing::debug!(provider = %self.provider, keys = keys.len(), generation, "JWKS fetched");
        self.keys.store(Arc::new(KeySet { keys, generation }));
        Ok(cache_lifetime(fetched.cache_control.as_deref(), &self.policy))
    }
}

async fn refresh_loop(shared: Weak<Shared>, mut wait: Duration) {
    loop {
        tokio::time::sleep(wait).await;
        let Some(shared) = shared.upgrade() else { return };
        let _one_at_a_time = shared.fetching.lock().await;
        wait = match shared.fetch_and_store().await {
            Ok(ttl) => ttl,
            Err(e) => {
                tracing::warn!(provider = %shared.provider, error = %e, "JWKS refresh failed; keeping the last good keys");
                shared.policy.retry_interval
            }
        };
    }
}

/// The refresh period a response asks for: `max-age` (`no-cache`/`no-store` count as
/// 0), else the default; always within `[min_ttl, max_ttl]`.
pub(crate) fn cache_lifetime(cache_control: Option<&str>, policy: &JwksPolicy) -> Duration {
    let mut asked: Option<u64> = None;
    for directive in cache_control.unwrap_or("").split(',') {
        let directive = directive.trim();
        let seconds = if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store") {
            Some(0)
        } else {
            match directive.split_once('=') {
                Some((name, value)) if name.trim().eq_ignore_ascii_case("max-age") => {
                    value.trim().trim_matches('"').parse::<u64>().ok()
                }
                _ => None,
            }
        };
        if let Some(s) = seconds {
            asked = Some(asked.map_or(s, |a| a.min(s)));
        }
    }
    let ttl = asked.map_or(policy.default_ttl, Duration::from_secs);
    // Not `clamp`: it panics when a hand-made policy has min > max.
    ttl.max(policy.min_ttl).min(policy.max_ttl)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn cache_lifetimes() {
        let p = JwksPolicy::default();
        assert_eq!(cache_lifetime(None, &p), Duration::from_secs(300));
        assert_eq!(cache_lifetime(Some("public, max-age=3600"), &p), Duration::from_secs(3600));
        assert_eq!(cache_lifetime(Some("Max-Age = \"600\""), &p), Duration::from_secs(600));
        assert_eq!(cache_lifetime(Some("max-age=1"), &p), Duration::from_secs(60));
        assert_eq!(cache_lifetime(Some("max-age=99999999"), &p), Duration::from_secs(86400));
        assert_eq!(cache_lifetime(Some("no-store, max-age=600"), &p), Duration::from_secs(60));
        assert_eq!(cache_lifetime(Some("max-age=abc"), &p), Duration::from_secs(300));
        let odd = JwksPolicy { min_ttl: Duration::from_secs(10), max_ttl: Duration::from_secs(5), ..p };
        assert_eq!(cache_lifetime(None, &odd), Duration::from_secs(5));
    }

    /// A JWKS in memory whose fetches are counted and which can fail.
    struct Memory {
        doc: Mutex<Result<String, String>>,
        cache_control: Option<String>,
        fetches: Arc<AtomicUsize>,
    }

    impl JwksSource for Memory {
        fn fetch(&self) -> FetchFuture<'_> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let doc = self.doc.lock().unwrap().clone();
            let cache_control = self.cache_control.clone();
            Box::pin(async move { doc.map(|d| Fetched { body: Bytes::from(d), cache_control }) })
        }
    }

    fn jwks(kid: &str) -> String {
        serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]})
        .to_string()
    }

    async fn start(cache_control: Option<&str>) -> (Jwks, Arc<Memory>, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let memory = Arc::new(Memory {
            doc: Mutex::new(Ok(jwks("a"))),
            cache_control: cache_control.map(str::to_owned),
            fetches: fetches.clone(),
        });
        struct Forward(Arc<Memory>);
        impl JwksSource for Forward {
            fn fetch(&self) -> FetchFuture<'_> {
                self.0.fetch()
            }
        }
        let source = Box::new(Forward(memory.clone()));
        let jwks = Jwks::start(Arc::from("idp"), source, vec![Algorithm::EdDSA], JwksPolicy::default()).await.unwrap();
        (jwks, memory, fetches)
    }

    fn kids(jwks: &Jwks) -> Vec<String> {
        jwks.current().keys.iter().filter_map(|k| k.kid.clone()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn background_refresh_follows_max_age_and_keeps_keys_on_failure() {
        let (jwks, memory, fetches) = start(Some("max-age=120")).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(kids(&jwks), ["a"]);

        *memory.doc.lock().unwrap() = Ok(jwks_doc_two());
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert_eq!(kids(&jwks), ["a", "b"]);

        *memory.doc.lock().unwrap() = Err("connection refused".into());
        tokio::time::sleep(Duration::from_secs(121)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
        assert_eq!(kids(&jwks), ["a", "b"], "last good keys kept");
        // After a failure the next try comes after retry_interval (30 s), not max-age.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 4);

        drop(jwks);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(fetches.load(Ordering::SeqCst), 4, "refresh stopped with the provider");
    }

    fn jwks_doc_two() -> String {
        let mut doc: serde_json::Value = serde_json::from_str(&jwks("a")).unwrap();
        let mut second = doc["keys"][0].clone();
        second["kid"] = "b".into();
        doc["keys"].as_array_mut().unwrap().push(second);
        doc.to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_key_refreshes_are_rate_limited() {
        let (jwks, memory, fetches) = start(None).await;
        let seen = jwks.current().generation;
        // Right after the first fetch: too soon.
        assert!(!jwks.refresh_for_unknown_key(seen).await);
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        tokio::time::sleep(Duration::from_secs(5)).await;
        *memory.doc.lock().unwrap() = Ok(jwks_doc_two());
        assert!(jwks.refresh_for_unknown_key(seen).await);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert_eq!(kids(&jwks), ["a", "b"]);

        // A caller that saw the old set learns that a newer one is there, without a fetch.
        assert!(jwks.refresh_for_unknown_key(seen).await);
        // A flood against the new set: no fetch within the interval.
        let now_seen = jwks.current().generation;
        for _ in 0..100 {
            assert!(!jwks.refresh_for_unknown_key(now_seen).await);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);

        // A failed refresh counts against the limit too, and keeps the keys.
        tokio::time::sleep(Duration::from_secs(5)).await;
        *memory.doc.lock().unwrap() = Err("down".into());
        assert!(!jwks.refresh_for_unknown_key(now_seen).await);
        assert!(!jwks.refresh_for_unknown_key(now_seen).await);
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
        assert_eq!(kids(&jwks), ["a", "b"]);
    }

    #[tokio::test]
    async fn first_fetch_must_succeed() {
        let memory = Memory { doc: Mutex::new(Err("down".into())), cache_control: None, fetches: Default::default() };
        let err = Jwks::start(Arc::from("idp"), Box::new(memory), vec![Algorithm::EdDSA], JwksPolicy::default())
            .await
            .err()
            .unwrap();
        assert_eq!(err, "down");
        let memory = Memory { doc: Mutex::new(Ok(jwks("a"))), cache_control: None, fetches: Default::default() };
        let err = Jwks::start(Arc::from("idp"), Box::new(memory), vec![Algorithm::RS256], JwksPolicy::default())
            .await
            .err()
            .unwrap();
        assert!(err.starts_with("no key in the JWKS"), "{err}");
    }
}
