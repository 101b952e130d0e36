//! One named limit: its key source, its quota, and where its buckets live.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use gateway_config::{OnRedisError, RateLimit, RateLimitStore};
use gateway_core::Principal;
use http::HeaderMap;
use tokio::time::Instant;

use crate::decision::Decision;
use crate::gcra::{Quota, QuotaError, Unit};
use crate::key::{KeySource, KeySourceError, LimitKey};
use crate::local::{LocalStore, DEFAULT_MAX_KEYS};
use crate::redis::{RedisCheckError, RedisStore};

/// A Redis failure is logged at most once per this interval per limit (the counter has all).
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A rate-limit definition this crate cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("rate limit `{name}`: {source}")]
    Key { name: String, source: KeySourceError },
    #[error("rate limit `{name}`: {source}")]
    Quota { name: String, source: QuotaError },
    #[error("rate limit `{name}`: store = \"redis\" needs a [redis] table with its url")]
    NoRedis { name: String },
}

/// One `[rate_limits.NAME]`: checks requests against its buckets.
#[derive(Debug)]
pub struct Limiter {
    name: Arc<str>,
    /// The definition it was built from, to tell on reload whether it may be kept.
    definition: RateLimit,
    source: KeySource,
    quota: Quota,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Local(LocalStore),
    Redis(RedisBackend),
}

#[derive(Debug)]
struct RedisBackend {
    store: Arc<RedisStore>,
    /// `gateway:rl:NAME:`; the key's text follows.
    prefix: String,
    on_error: OnRedisError,
    /// Checks decided by `on_error` because Redis failed, timed out or was skipped.
    errors: AtomicU64,
    /// Milliseconds since `log_origin` of the last warning, plus one (0: never).
    last_log_ms: AtomicU64,
    log_origin: StdInstant,
}

impl Limiter {
    /// A limiter for `definition`, holding at most 100,000 keys if local. `redis` is the
    /// `[redis]` store, needed when `store = "redis"`.
    pub fn new(name: &str, definition: &RateLimit, redis: Option<Arc<RedisStore>>) -> Result<Limiter, LimitError> {
        Limiter::with_max_keys(name, definition, redis, DEFAULT_MAX_KEYS)
    }

    /// As [`Limiter::new`], with another cap on the keys held locally.
    pub fn with_max_keys(
        name: &str,
        definition: &RateLimit,
        redis: Option<Arc<RedisStore>>,
        max_keys: usize,
    ) -> Result<Limiter, LimitError> {
        let source = definition
            .key
            .get_ref()
            .parse::<KeySource>()
            .map_err(|source| LimitError::Key { name: name.to_owned(), source })?;
        let quota = Quota::new(definition.requests, definition.per.get(), definition.burst)
            .map_err(|source| LimitError::Quota { name: name.to_owned(), source })?;
        let backend = match definition.store {
            RateLimitStore::Local => Backend::Local(LocalStore::new(quota.units(Unit::Nanos), max_keys)),
            RateLimitStore::Redis => {
                let store = redis.ok_or_else(|| LimitError::NoRedis { name: name.to_owned() })?;
                Backend::Redis(RedisBackend {
                    store,
                    prefix: format!("gateway:rl:{name}:"),
                    on_error: definition.on_redis_error,
                    errors: AtomicU64::new(0),
                    last_log_ms: AtomicU64::new(0),
                    log_origin: StdInstant::now(),
                })
            }
        };
        Ok(Limiter { name: name.into(), definition: definition.clone(), source, quota, backend })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn definition(&self) -> &RateLimit {
        &self.definition
    }

    pub fn key_source(&self) -> &KeySource {
        &self.source
    }

    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Whether the buckets live in Redis.
    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// The Redis store, for a limit with `store = "redis"`.
    pub fn redis_store(&self) -> Option<&Arc<RedisStore>> {
        match &self.backend {
            Backend::Redis(r) => Some(&r.store),
            Backend::Local(_) => None,
        }
    }

    /// The bucket key of a request (see [`KeySource::key`]).
    pub fn key(&self, client_ip: IpAddr, headers: &HeaderMap, principal: Option<&Principal>) -> LimitKey {
        self.source.key(client_ip, headers, principal)
    }

    /// Checks one request drawing from `key`'s bucket, and takes one request from it when
    /// admitted. Local limits answer at once (the clock is `tokio::time::Instant`, so paused
    /// test time applies); Redis limits within the store's timeout.
    pub async fn check(&self, key: &LimitKey) -> Decision {
        match &self.backend {
            Backend::Local(store) => {
                Decision::from_outcome(&self.name, &self.quota, store.check(key, Instant::now()), Unit::Nanos)
            }
            Backend::Redis(redis) => {
                let rate = self.quota.units(Unit::Micros);
                let key = format!("{}{}", redis.prefix, key.redis_suffix());
                match redis.store.eval(&key, rate, 1).await {
                    Ok([allowed, remaining, reset, retry_after]) => {
                        let outcome = crate::gcra::Outcome { allowed: allowed == 1, remaining, reset, retry_after };
                        Decision::from_outcome(&self.name, &self.quota, outcome, Unit::Micros)
                    }
                    Err(e) => {
                        self.redis_failed(redis, &e);
                        Decision::degraded(&self.name, &self.quota, redis.on_error == OnRedisError::Allow)
                    }
                }
            }
        }
    }

    /// A local check at a given instant, for tests and tools; `None` for Redis limits.
    pub fn check_local_at(&self, key: &LimitKey, now: Instant) -> Option<Decision> {
        match &self.backend {
            Backend::Local(store) => {
                Some(Decision::from_outcome(&self.name, &self.quota, store.check(key, now), Unit::Nanos))
            }
            Backend::Redis(_) => None,
        }
    }

    /// Gives back the request an admitted, non-degraded `check` took from `key`, because
    /// another limit refused the request.
    pub async fn refund(&self, key: &LimitKey) {
        match &self.backend {
            Backend::Local(store) => store.refund(key, Instant::now()),
            Backend::Redis(redis) => {
                let key = format!("{}{}", redis.prefix, key.redis_suffix());
                if let Err(e) = redis.store.eval(&key, self.quota.units(Unit::Micros), -1).await {
                    self.redis_failed(redis, &e);
                }
            }
        }
    }

    fn redis_failed(&self, redis: &RedisBackend, error: &RedisCheckError) {
        let total = redis.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(redis.log_origin.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1);
        let last = redis.last_log_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= ERROR_LOG_INTERVAL.as_millis() as u64;
        if due && redis.last_log_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let on_error = match redis.on_error {
                OnRedisError::Allow => "allow",
                OnRedisError::Deny => "deny",
            };
            tracing::warn!(
                limit = %self.name,
                url = %redis.store.url(),
                errors = total,
                on_redis_error = on_error,
                "rate limit store unavailable: {error}; requests are decided by on_redis_error \
                 (logged at most every {}s)",
                ERROR_LOG_INTERVAL.as_secs(),
            );
        }
    }

    /// Checks this limit decided without Redis (failure, timeout, or skipped after a recent
    /// failure). Always 0 for local limits. A counter for `/metrics`.
    pub fn redis_errors(&self) -> u64 {
        match &self.backend {
            Backend::Redis(r) => r.errors.load(Ordering::Relaxed),
            Backend::Local(_) => 0,
        }
    }

    /// Keys held in this process (0 for Redis limits).
    pub fn local_keys(&self) -> usize {
        match &self.backend {
            Backend::Local(s) => s.len(),
            Backend::Redis(_) => 0,
        }
    }

    /// Map slots allocated for local keys: each costs one `(LimitKey, u64)` (32 bytes) plus
    /// a control byte, and a `Text` key its text (at most [`crate::MAX_KEY_LEN`] bytes).
    /// With the default cap this is at most 16 × 7,168 slots: about 3.8 MB for `ip` keys,
    /// at most about 33 MB for text keys.
    pub fn local_capacity(&self) -> usize {
        match &self.backend {
            Backend::Local(s) => s.capacity(),
            Backend::Redis(_) => 0,
        }
    }

    /// The most keys held locally at once (0 for Redis limits).
    pub fn max_local_keys(&self) -> usize {
        match &self.backend {
            Backend::Local(s) => s.max_keys(),
            Backend::Redis(_) => 0,
        }
    }

    /// Checks of new keys that found the local map full and drew from the shared overflow
    /// bucket. A counter for `/metrics`.
    pub fn overflowed(&self) -> u64 {
        match &self.backend {
            Backend::Local(s) => s.overflowed(),
            Backend::Redis(_) => 0,
        }
    }

    /// Drops every full local bucket now (shards also do this themselves as they are used).
    pub fn sweep(&self) {
        if let Backend::Local(s) = &self.backend {
            s.sweep(Instant::now());
        }
    }
}
