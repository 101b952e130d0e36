//! Rate limiting for the gateway: every `[rate_limits.NAME]` of the configuration as a
//! [`Limiter`], checked per route by [`RouteLimits`], answered with the `ratelimit-*`
//! headers of [`Decision`].
//!
//! This crate owns the buckets. The algorithm is GCRA (a token bucket kept as a single
//! timestamp per key, see [`Quota`]): `requests` per `per`, at most `burst` (default
//! `requests`) at once. Buckets live either in this process ([`Limiter`] with
//! `store = "local"`: a sharded map capped at 100,000 keys per limit, full buckets
//! dropped as the map is used) or in Redis (`store = "redis"`: one Lua script per check on
//! Redis server time, so every gateway instance draws from one budget; a check waits at most
//! [`REDIS_TIMEOUT`], then `on_redis_error` decides and [`Limiter::redis_errors`] counts).
//! [`RateLimits::build`] keeps unchanged limits, buckets and all, across reloads.
//!
//! The caller resolves the client address (SPEC "Client address") and the principal; a
//! request without the key a limit asks for (header, claim, consumer) shares one bucket with
//! every other such request of that limit.
//!
//! ```
//! # // Run with: cargo test -p gateway-ratelimit --doc
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use gateway_ratelimit::RateLimits;
//!
//! let config = gateway_config::parse(
//!     "gateway.toml",
//!     "[rate_limits.per_client]\nrequests = 100\nper = \"1m\"\nburst = 2\nkey = \"ip\"\n",
//!     &|_| None,
//! )
//! .unwrap();
//! let limits = RateLimits::build(&config, None).unwrap();
//! let route = limits.route(&["per_client"]).unwrap();
//! let (ip, headers) = ("192.0.2.7".parse().unwrap(), http::HeaderMap::new());
//!
//! let first = route.check(ip, &headers, None).await.unwrap().unwrap();
//! assert_eq!((first.limit, first.remaining), (2, 1));
//! route.check(ip, &headers, None).await.unwrap();
//! let refused = route.check(ip, &headers, None).await.unwrap_err();
//! assert_eq!(refused.retry_after_secs(), Some(1)); // 100 per minute: one every 0.6s
//!
//! let mut response_headers = http::HeaderMap::new();
//! refused.write_headers(&mut response_headers); // ratelimit-*, retry-after: 1
//! assert_eq!(response_headers["ratelimit-policy"], "\"per_client\";q=100;w=60");
//! # });
//! ```

#![forbid(unsafe_code)]

mod decision;
mod gcra;
mod key;
mod limiter;
mod limits;
mod local;
mod redis;

pub use decision::{Decision, RATELIMIT, RATELIMIT_LIMIT, RATELIMIT_POLICY, RATELIMIT_REMAINING, RATELIMIT_RESET};
pub use gcra::{Quota, QuotaError};
pub use key::{ip_bucket, KeySource, KeySourceError, LimitKey, MAX_KEY_LEN};
pub use limiter::{LimitError, Limiter, ERROR_LOG_INTERVAL};
pub use limits::{RateLimits, RouteLimits};
pub use local::{DEFAULT_MAX_KEYS, SWEEP_INTERVAL};
pub use redis::{RedisCheckError, RedisStore, REDIS_RETRY_AFTER, REDIS_TIMEOUT};
