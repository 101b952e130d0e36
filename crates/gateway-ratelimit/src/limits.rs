//! All named limits of one configuration, and the per-route check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use gateway_config::{Config, RateLimitStore};
use gateway_core::Principal;
use http::HeaderMap;

use crate::decision::Decision;
use crate::key::LimitKey;
use crate::limiter::Limiter;
use crate::redis::RedisStore;

/// Every `[rate_limits.NAME]` of a configuration, built once per (re)load.
#[derive(Debug, Default)]
pub struct RateLimits {
    limits: HashMap<Arc<str>, Arc<Limiter>>,
    redis: Option<Arc<RedisStore>>,
}

impl RateLimits {
    /// Builds the limits of `config`. A limit of `previous` whose definition is unchanged
    /// (and, for Redis limits, whose `[redis]` url is unchanged) is kept as it is, buckets
    /// and counters included; a changed one starts with full buckets. The Redis connection
    /// is kept while the url is unchanged. Does not connect to Redis.
    pub fn build(config: &Config, previous: Option<&RateLimits>) -> Result<RateLimits, String> {
        let needs_redis = config.rate_limits.values().any(|l| l.store == RateLimitStore::Redis);
        let redis = match (&config.redis, needs_redis) {
            (Some(r), true) => match previous.and_then(|p| p.redis.as_ref()).filter(|s| s.url() == r.url) {
                Some(same) => Some(same.clone()),
                None => Some(Arc::new(RedisStore::new(&r.url).map_err(|e| format!("[redis] url: {e}"))?)),
            },
            _ => None,
        };
        let mut limits = HashMap::with_capacity(config.rate_limits.len());
        for (name, definition) in &config.rate_limits {
            let kept = previous.and_then(|p| p.limits.get(name.as_str())).filter(|old| {
                old.definition() == definition
                    && match (old.redis_store(), &redis) {
                        (None, _) => true,
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (Some(_), None) => false,
                    }
            });
            let limiter = match kept {
                Some(old) => old.clone(),
                None => Arc::new(Limiter::new(name, definition, redis.clone()).map_err(|e| e.to_string())?),
            };
            limits.insert(Arc::from(name.as_str()), limiter);
        }
        Ok(RateLimits { limits, redis })
    }

    /// The limit named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Limiter>> {
        self.limits.get(name)
    }

    /// Every limit, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Limiter>> {
        self.limits.values()
    }

    pub fn len(&self) -> usize {
        self.limits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// The limiters of a route's `rate_limit` list, resolved once (at build time) so a
    /// request does not look names up. Unknown names are an error.
    pub fn route<S: AsRef<str>>(&self, names: &[S]) -> Result<RouteLimits, String> {
        let mut limiters: Vec<Arc<Limiter>> = names
            .iter()
            .map(|n| self.get(n.as_ref()).cloned().ok_or_else(|| format!("unknown rate limit `{}`", n.as_ref())))
            .collect::<Result<_, _>>()?;
        // Local limits first: they answer at once, and a request they refuse never costs a
        // Redis round trip. The order is otherwise the route's.
        limiters.sort_by_key(|l| l.is_redis());
        Ok(RouteLimits { limiters })
    }

    /// [`RouteLimits::check`] for a list of names looked up now; unknown names are skipped
    /// (configuration validation rejects them). Prefer [`RateLimits::route`] per route.
    pub async fn check_all<S: AsRef<str>>(
        &self,
        names: &[S],
        client_ip: IpAddr,
        headers: &HeaderMap,
        principal: Option<&Principal>,
    ) -> Result<Option<Decision>, Decision> {
        let mut limiters: Vec<&Limiter> = names.iter().filter_map(|n| self.get(n.as_ref())).map(|l| &**l).collect();
        limiters.sort_by_key(|l| l.is_redis());
        check_all(&limiters, client_ip, headers, principal).await
    }
}

/// The limits of one route: all must admit a request.
#[derive(Debug, Clone, Default)]
pub struct RouteLimits {
    limiters: Vec<Arc<Limiter>>,
}

impl RouteLimits {
    pub fn is_empty(&self) -> bool {
        self.limiters.is_empty()
    }

    pub fn limiters(&self) -> &[Arc<Limiter>] {
        &self.limiters
    }

    /// Checks every limit of the route in turn (local ones first).
    ///
    /// - `Ok(None)`: the route has no limits.
    /// - `Ok(Some(d))`: all admitted; `d` is the tightest (fewest remaining, then longest
    ///   reset) among the ones that know their budget, for the response headers.
    /// - `Err(d)`: `d` refused (its `retry_after` is set). Limits after it are not asked,
    ///   and the request is given back to those before it that took one, so a client
    ///   hammering a per-second limit does not burn its per-day budget with refused requests.
    pub async fn check(
        &self,
        client_ip: IpAddr,
        headers: &HeaderMap,
        principal: Option<&Principal>,
    ) -> Result<Option<Decision>, Decision> {
        let limiters: Vec<&Limiter> = self.limiters.iter().map(|l| &**l).collect();
        check_all(&limiters, client_ip, headers, principal).await
    }
}

async fn check_all(
    limiters: &[&Limiter],
    client_ip: IpAddr,
    headers: &HeaderMap,
    principal: Option<&Principal>,
) -> Result<Option<Decision>, Decision> {
    // Keys of the limits that took a request, to give it back on a later refusal.
    let mut taken: Vec<(&Limiter, LimitKey)> = Vec::new();
    let mut tightest: Option<Decision> = None;
    for limiter in limiters {
        let key = limiter.key(client_ip, headers, principal);
        let decision = limiter.check(&key).await;
        if !decision.allowed {
            for (limiter, key) in taken {
                limiter.refund(&key).await;
            }
            return Err(decision);
        }
        if !decision.degraded && limiters.len() > 1 {
            taken.push((limiter, key));
        }
        if tighter(&decision, tightest.as_ref()) {
            tightest = Some(decision);
        }
    }
    Ok(tightest)
}

fn tighter(new: &Decision, old: Option<&Decision>) -> bool {
    let Some(old) = old else { return true };
    match (new.degraded, old.degraded) {
        (false, true) => true,
        (true, _) => false,
        (false, false) => (new.remaining, std::cmp::Reverse(new.reset)) < (old.remaining, std::cmp::Reverse(old.reset)),
    }
}
