//! The answer to one check, and the response headers that tell the client about it.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::gcra::{Outcome, Quota, Unit};

/// `ratelimit-limit`: the bucket size (`burst`), the most `ratelimit-remaining` can be.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `ratelimit-remaining`: requests admitted right now before a refusal.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `ratelimit-reset`: whole seconds (rounded up) until the bucket is full again.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// `ratelimit-policy: "NAME";q=REQUESTS;w=SECONDS` (IETF draft structured field).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `ratelimit: "NAME";r=REMAINING;t=RESET` (IETF draft structured field).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The answer of one limit to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The `[rate_limits.NAME]` that decided.
    pub name: Arc<str>,
    /// Whether the request may pass.
    pub allowed: bool,
    /// Redis could not be asked (error, timeout or recent outage) and `on_redis_error`
    /// decided; `remaining` and `reset` are then unknown and no rate-limit headers are sent.
    pub degraded: bool,
    /// The bucket size (`burst`, default `requests`).
    pub limit: u64,
    /// Requests that would still be admitted right now (0 when refused).
    pub remaining: u64,
    /// Until the bucket is full again (`remaining == limit`).
    pub reset: Duration,
    /// When refused: until the next request would be admitted.
    pub retry_after: Option<Duration>,
    /// `requests` of the definition (`q` of `ratelimit-policy`).
    pub quota: u64,
    /// `per` of the definition (`w` of `ratelimit-policy`).
    pub window: Duration,
}

/// The `retry-after` of a refusal decided without Redis (`on_redis_error = "deny"`).
pub(crate) const DEGRADED_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Decision {
    pub(crate) fn from_outcome(name: &Arc<str>, quota: &Quota, outcome: Outcome, unit: Unit) -> Decision {
        Decision {
            name: name.clone(),
            allowed: outcome.allowed,
            degraded: false,
            limit: quota.burst(),
            remaining: outcome.remaining,
            reset: unit.duration(outcome.reset),
            retry_after: (!outcome.allowed).then(|| unit.duration(outcome.retry_after)),
            quota: quota.requests(),
            window: quota.per(),
        }
    }

    pub(crate) fn degraded(name: &Arc<str>, quota: &Quota, allowed: bool) -> Decision {
        Decision {
            name: name.clone(),
            allowed,
            degraded: true,
            limit: quota.burst(),
            remaining: if allowed { quota.burst() } else { 0 },
            reset: Duration::ZERO,
            retry_after: (!allowed).then_some(DEGRADED_RETRY_AFTER),
            quota: quota.requests(),
            window: quota.per(),
        }
    }

    /// `ratelimit-reset` and the `t` of `ratelimit`: whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }

    /// `retry-after`: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| ceil_secs(d).max(1))
    }

    /// The response headers for this decision: `ratelimit-limit`, `ratelimit-remaining`,
    /// `ratelimit-reset`, `ratelimit-policy`, `ratelimit`, and `retry-after` when refused.
    ///
    /// A degraded decision (Redis unavailable) has only `retry-after` when refused and
    /// nothing when admitted: the gateway does not know the budget, so it does not claim one.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(6);
        if !self.degraded {
            out.push((RATELIMIT_LIMIT, HeaderValue::from(self.limit)));
            out.push((RATELIMIT_REMAINING, HeaderValue::from(self.remaining)));
            out.push((RATELIMIT_RESET, HeaderValue::from(self.reset_secs())));
            let (q, w) = policy_window(self.quota, self.window);
            // Limit names are printable ASCII without `"` or `\` (config validation), so the
            // sf-string needs no escaping; anything else is skipped rather than sent broken.
            let name = &*self.name;
            if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";q={q};w={w}")) {
                out.push((RATELIMIT_POLICY, v));
            }
            if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={};t={}", self.remaining, self.reset_secs())) {
                out.push((RATELIMIT, v));
            }
        }
        if let Some(secs) = self.retry_after_secs() {
            out.push((RETRY_AFTER, HeaderValue::from(secs)));
        }
        out
    }

    /// Writes [`Decision::headers`] into `headers`, replacing any of the same name (an
    /// upstream's own rate-limit headers would contradict the gateway's).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in self.headers() {
            headers.insert(name, value);
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `q` and `w` of `ratelimit-policy`, where `w` must be whole seconds: `per` as it is when
/// it is whole seconds, else the quota rescaled to a window of `per` rounded up (at least 1s).
fn policy_window(requests: u64, per: Duration) -> (u64, u64) {
    if per.subsec_nanos() == 0 && per.as_secs() > 0 {
        return (requests, per.as_secs());
    }
    let w = ceil_secs(per).max(1);
    let q = (requests as f64 * w as f64 / per.as_secs_f64()).floor() as u64;
    (q, w)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn decision(allowed: bool, remaining: u64, reset_ms: u64, retry_ms: Option<u64>) -> Decision {
        Decision {
            name: "per_client".into(),
            allowed,
            degraded: false,
            limit: 20,
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: retry_ms.map(Duration::from_millis),
            quota: 100,
            window: Duration::from_secs(60),
        }
    }

    fn find<'a>(h: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn headers_of_an_admitted_request() {
        let h = decision(true, 17, 1_800, None).headers();
        assert_eq!(find(&h, "ratelimit-limit"), Some("20"));
        assert_eq!(find(&h, "ratelimit-remaining"), Some("17"));
        assert_eq!(find(&h, "ratelimit-reset"), Some("2"), "rounded up");
        assert_eq!(find(&h, "ratelimit-policy"), Some("\"per_client\";q=100;w=60"));
        assert_eq!(find(&h, "ratelimit"), Some("\"per_client\";r=17;t=2"));
        assert_eq!(find(&h, "retry-after"), None);
    }

    #[test]
    fn headers_of_a_refusal() {
        let h = decision(false, 0, 12_000, Some(600)).headers();
        assert_eq!(find(&h, "retry-after"), Some("1"), "600ms rounds up to 1s");
        assert_eq!(find(&h, "ratelimit-remaining"), Some("0"));
        let h = decision(false, 0, 12_000, Some(2_000)).headers();
        assert_eq!(find(&h, "retry-after"), Some("2"), "whole seconds stay");
    }

    #[test]
    fn degraded_headers_claim_nothing() {
        let quota = Quota::new(100, Duration::from_secs(60), None).unwrap();
        assert!(Decision::degraded(&"x".into(), &quota, true).headers().is_empty());
        let h = Decision::degraded(&"x".into(), &quota, false).headers();
        assert_eq!(h.len(), 1);
        assert_eq!(find(&h, "retry-after"), Some("1"));
    }

    #[test]
    fn write_headers_replaces() {
        let mut map = HeaderMap::new();
        map.insert(RATELIMIT_REMAINING, HeaderValue::from_static("999"));
        decision(true, 3, 100, None).write_headers(&mut map);
        assert_eq!(map.get_all(RATELIMIT_REMAINING).iter().count(), 1);
        assert_eq!(map[RATELIMIT_REMAINING], "3");
    }

    #[test]
    fn policy_windows() {
        assert_eq!(policy_window(100, Duration::from_secs(60)), (100, 60));
        assert_eq!(policy_window(10, Duration::from_millis(500)), (20, 1));
        assert_eq!(policy_window(3, Duration::from_millis(1500)), (4, 2));
    }
}
