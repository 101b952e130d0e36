//! Buckets in Redis, shared by every gateway instance: the same GCRA as one Lua script.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::gcra::Rate;

/// How long one check may wait for Redis before `on_redis_error` decides.
///
/// A same-datacenter Redis answers in about a millisecond; 100ms leaves room for a busy
/// server and for the first check of a connection (connect, then `EVALSHA`, `SCRIPT LOAD`
/// and `EVALSHA` again), while a request never waits long for a limiter.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// After a failure, checks skip Redis (and count as errors) for this long, so an outage
/// costs one waiting request per interval instead of a timeout on every request.
pub const REDIS_RETRY_AFTER: Duration = Duration::from_millis(500);

/// GCRA on a TAT in microseconds of Redis server time (`TIME`), so every instance uses
/// one clock. KEYS[1]: the bucket; ARGV: emission interval (µs), burst, and 1 to check or
/// -1 to give one request back. Returns {allowed, remaining, reset µs, retry-after µs}.
/// The key expires when the bucket is full again. Numbers stay below 2^53 (exact in Lua).
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local capacity = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
if tonumber(ARGV[3]) < 0 then
  tat = tat - interval
  if tat > now then
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
  else
    redis.call('DEL', KEYS[1])
  end
  return {1, 0, 0, 0}
end
local new_tat = tat + interval
local used = new_tat - now
if used > capacity then
  return {0, 0, tat - now, used - capacity}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(used / 1000))
return {1, math.floor((capacity - used) / interval), used, 0}
"#;

/// Why Redis gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisCheckError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis failed less than {REDIS_RETRY_AFTER:?} ago; not asked")]
    RecentlyFailed,
}

impl RedisCheckError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, RedisCheckError::Timeout(_))
    }
}

/// One `[redis]` server: a reconnecting, multiplexed connection shared by every limit with
/// `store = "redis"`, and reused across reloads while the url is unchanged.
pub struct RedisStore {
    url: String,
    client: redis::Client,
    /// Made on first use, inside a runtime (the manager spawns tasks), without waiting for
    /// the server: a Redis that is down at startup delays nothing.
    manager: OnceLock<ConnectionManager>,
    script: redis::Script,
    timeout: Duration,
    origin: Instant,
    /// Milliseconds since `origin` until which Redis is not asked (0: ask).
    skip_until_ms: AtomicU64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("url", &self.url).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `url` (`redis://host:port[/db]`, `rediss://`, ...) with [`REDIS_TIMEOUT`].
    /// Does not connect.
    pub fn new(url: &str) -> Result<RedisStore, redis::RedisError> {
        RedisStore::with_timeout(url, REDIS_TIMEOUT)
    }

    /// As [`RedisStore::new`] with another per-check timeout.
    pub fn with_timeout(url: &str, timeout: Duration) -> Result<RedisStore, redis::RedisError> {
        Ok(RedisStore {
            url: url.to_owned(),
            client: redis::Client::open(url)?,
            manager: OnceLock::new(),
            script: redis::Script::new(SCRIPT),
            timeout,
            origin: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn manager(&self) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        // One connection attempt per reconnect (no backoff loop that requests would wait
        // on); the next request after REDIS_RETRY_AFTER triggers the next attempt.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(self.timeout));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.manager.get_or_init(|| manager).clone())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs the script on `key`: `cost` 1 checks, -1 refunds. Errors (and checks skipped
    /// after a recent error) are for the caller to count.
    pub(crate) async fn eval(&self, key: &str, rate: Rate, cost: i8) -> Result<[u64; 4], RedisCheckError> {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err(RedisCheckError::RecentlyFailed);
        }
        let result = async {
            let mut conn = self.manager()?;
            let mut invocation = self.script.prepare_invoke();
            invocation.key(key).arg(rate.interval).arg(rate.burst).arg(cost);
            match tokio::time::timeout(self.timeout, invocation.invoke_async::<[u64; 4]>(&mut conn)).await {
                Ok(answer) => Ok(answer?),
                Err(_) => Err(RedisCheckError::Timeout(self.timeout)),
            }
        }
        .await;
        if result.is_err() {
            let until = self.now_ms().saturating_add(REDIS_RETRY_AFTER.as_millis() as u64);
            self.skip_until_ms.store(until, Ordering::Relaxed);
        }
        result
    }
}
