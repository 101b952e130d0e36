//! Load balancers over one snapshot of a service's endpoints.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};
use tokio::time::Instant;

use crate::state::{EndpointState, Picked};
use crate::util::{hash64, random_below};

/// Virtual nodes per unit of weight on the consistent-hash ring.
pub const VIRTUAL_NODES: usize = 160;
/// The longest weighted round-robin schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 16_384;

/// How a service spreads calls over its endpoints (`load_balancer` in the config).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balancer {
    /// In turn; weighted (smooth weighted round robin) when weights differ.
    #[default]
    RoundRobin,
    /// Power of two choices: of two random endpoints, the one with fewer calls in
    /// flight per unit of weight.
    LeastRequest,
    /// Uniformly at random.
    Random,
    /// Power of two choices on latency (peak EWMA, decaying over ~10 s) times calls in flight.
    PeakEwma,
    /// A hash ring of virtual nodes keyed by a request attribute: the same key goes to
    /// the same endpoint, and an endpoint joining or leaving moves about 1/N of the keys.
    /// A request without the key gets a random endpoint.
    ConsistentHash(HashOn),
}

impl Balancer {
    /// From `load_balancer` and `hash_on` of a service definition.
    pub fn from_config(lb: gateway_config::LoadBalancer, hash_on: Option<&str>) -> Result<Balancer, String> {
        use gateway_config::LoadBalancer as Lb;
        Ok(match lb {
            Lb::RoundRobin => Balancer::RoundRobin,
            Lb::LeastRequest => Balancer::LeastRequest,
            Lb::Random => Balancer::Random,
            Lb::PeakEwma => Balancer::PeakEwma,
            Lb::ConsistentHash => {
                let on = hash_on.ok_or("consistent_hash needs hash_on")?;
                Balancer::ConsistentHash(HashOn::parse(on)?)
            }
        })
    }
}

/// What a consistent hash is keyed on (`hash_on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// `header:NAME`: the first value of a request header.
    Header(HeaderName),
    /// `cookie:NAME`: a cookie's value.
    Cookie(String),
    /// `ip`: the client address (as resolved through `trusted_proxies`).
    Ip,
}

impl HashOn {
    /// `header:NAME`, `cookie:NAME` or `ip`.
    pub fn parse(s: &str) -> Result<HashOn, String> {
        match s.split_once(':') {
            None if s == "ip" => Ok(HashOn::Ip),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("`{name}` is not a header name")),
            Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ', ',']) => {
                Ok(HashOn::Cookie(name.to_owned()))
            }
            _ => Err(format!("hash_on `{s}` must be \"header:NAME\", \"cookie:NAME\" or \"ip\"")),
        }
    }

    /// The request's key, hashed; `None` when the request does not carry it.
    fn key(&self, ctx: &PickContext<'_>) -> Option<u64> {
        match self {
            HashOn::Header(name) => ctx.headers?.get(name).map(|v| hash64(v.as_bytes())),
            HashOn::Cookie(name) => cookie(ctx.headers?, name).map(hash64),
            HashOn::Ip => match ctx.client_ip?.to_canonical() {
                IpAddr::V4(a) => Some(hash64(&a.octets())),
                IpAddr::V6(a) => Some(hash64(&a.octets())),
            },
        }
    }
}

/// The value of cookie `name` in any `cookie` header.
use gateway_core::cookie;

/// What a pick may look at in the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    /// The client address (for `hash_on = "ip"`).
    pub client_ip: Option<IpAddr>,
    /// The request headers (for `header:NAME` and `cookie:NAME`).
    pub headers: Option<&'a HeaderMap>,
}

impl<'a> PickContext<'a> {
    /// A request's client address and headers.
    pub fn new(client_ip: IpAddr, headers: &'a HeaderMap) -> Self {
        PickContext { client_ip: Some(client_ip), headers: Some(headers) }
    }
}

/// The answer of a pick.
#[derive(Debug)]
#[must_use]
pub enum Pick {
    /// This endpoint, with its in-flight guard.
    Picked(Picked),
    /// The service has no endpoint at all (discovery found none yet): 503.
    NoEndpoints,
    /// Every endpoint is unhealthy or ejected, and the service is not in panic mode: 503.
    AllUnhealthy,
    /// Some endpoints are available, but `admit` (the circuit breakers) refused each: 503.
    AllRejected,
}

impl Pick {
    /// The chosen endpoint, if any.
    pub fn picked(self) -> Option<Picked> {
        match self {
            Pick::Picked(p) => Some(p),
            _ => None,
        }
    }
}

/// One published endpoint set with what the balancer precomputes from it.
pub(crate) struct Snapshot {
    pub(crate) endpoints: Arc<[Arc<EndpointState>]>,
    /// Weighted round robin: endpoint indices in smooth-weighted order; `None` when all weights are equal.
    schedule: Option<Box<[u32]>>,
    /// Consistent hash: (point, endpoint index), sorted by point.
    ring: Option<Box<[(u64, u32)]>>,
}

impl Snapshot {
    pub(crate) fn empty() -> Self {
        Snapshot { endpoints: Arc::from(Vec::new()), schedule: None, ring: None }
    }

    pub(crate) fn build(endpoints: Arc<[Arc<EndpointState>]>, balancer: &Balancer) -> Self {
        let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight())).collect();
        let (schedule, ring) = match balancer {
            Balancer::RoundRobin => (weighted_schedule(&weights), None),
            Balancer::ConsistentHash(_) => (None, Some(hash_ring(&endpoints, &weights))),
            _ => (None, None),
        };
        Snapshot { endpoints, schedule, ring }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weights reduced by their gcd, then scaled so they add up to at most `limit`.
fn reduced(weights: &[u64], limit: u64) -> Vec<u64> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
    let total: u64 = w.iter().sum();
    if total > limit {
        w = w.iter().map(|x| (x * limit / total).max(1)).collect();
    }
    w
}

/// Smooth weighted round robin (nginx): `a a b a` for weights 3:1, interleaved rather than bunched.
fn weighted_schedule(weights: &[u64]) -> Option<Box<[u32]>> {
    if weights.windows(2).all(|w| w[0] == w[1]) {
        return None;
    }
    let w = reduced(weights, MAX_SCHEDULE.max(weights.len() as u64));
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, c) in current.iter_mut().enumerate() {
            *c += w[i] as i64;
        }
        for i in 1..current.len() {
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    Some(schedule.into_boxed_slice())
}

/// `VIRTUAL_NODES` points per unit of weight for each endpoint, placed by hashing
/// `address#n`: a point depends only on its own endpoint, so a join or leave moves
/// only the keys between the changed points.
fn hash_ring(endpoints: &[Arc<EndpointState>], weights: &[u64]) -> Box<[(u64, u32)]> {
    let limit = (endpoints.len() * 8) as u64; // at most 8x the unweighted ring
    let w = reduced(weights, limit.max(1));
    let mut ring = Vec::with_capacity(w.iter().sum::<u64>() as usize * VIRTUAL_NODES);
    let mut key = String::new();
    for (i, e) in endpoints.iter().enumerate() {
        for n in 0..w[i] as usize * VIRTUAL_NODES {
            key.clear();
            key.push_str(e.address());
            key.push('#');
            key.push_str(&n.to_string());
            ring.push((hash64(key.as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

/// Small set of endpoint indices (those `admit` refused during one pick).
enum Bits {
    Small(u128),
    Large(Vec<bool>),
}

impl Bits {
    fn new(n: usize) -> Self {
        if n <= 128 {
            Bits::Small(0)
        } else {
            Bits::Large(vec![false; n])
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Bits::Small(b) => b & (1 << i) != 0,
            Bits::Large(v) => v[i],
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            Bits::Small(b) => *b |= 1 << i,
            Bits::Large(v) => v[i] = true,
        }
    }
}

/// One pick in progress: `admit` is asked at most once per endpoint, and only about
/// the endpoint that is chosen if it says yes (so a breaker may reserve a half-open
/// probe in `admit`).
pub(crate) struct Attempt<'a> {
    snap: &'a Snapshot,
    admit: &'a dyn Fn(&EndpointState) -> bool,
    refused: Bits,
    now: Instant,
}

impl<'a> Attempt<'a> {
    pub(crate) fn new(snap: &'a Snapshot, admit: &'a dyn Fn(&EndpointState) -> bool, now: Instant) -> Self {
        Attempt { snap, admit, refused: Bits::new(snap.endpoints.len()), now }
    }

    fn usable(&self, i: usize, eligible: &dyn Fn(usize) -> bool) -> bool {
        !self.refused.get(i) && eligible(i)
    }

    /// Ask `admit`; remember a refusal.
    fn take(&mut self, i: usize) -> bool {
        let yes = (self.admit)(&self.snap.endpoints[i]);
        if !yes {
            self.refused.set(i);
        }
        yes
    }

    fn try_index(&mut self, i: usize, eligible: &dyn Fn(usize) -> bool) -> bool {
        self.usable(i, eligible) && self.take(i)
    }

    /// The first usable endpoint from `start` on, in index order.
    fn walk(&mut self, start: usize, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.snap.endpoints.len();
        (0..n).map(|k| (start + k) % n).find(|&i| self.try_index(i, eligible))
    }

    /// Choose among the endpoints `eligible` allows, by `balancer`.
    pub(crate) fn choose(
        &mut self,
        balancer: &Balancer,
        cursor: &AtomicUsize,
        key: Option<u64>,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.snap.endpoints.len();
        if n == 0 {
            return None;
        }
        match balancer {
            Balancer::RoundRobin => {
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                match &self.snap.schedule {
                    None => self.walk(start % n, eligible),
                    Some(schedule) => {
                        let len = schedule.len();
                        for k in 0..len.min(4 * n) {
                            let i = schedule[(start + k) % len] as usize;
                            if self.try_index(i, eligible) {
                                return Some(i);
                            }
                        }
                        self.walk(schedule[start % len] as usize, eligible)
                    }
                }
            }
            Balancer::Random => self.walk(random_below(n), eligible),
            Balancer::ConsistentHash(_) => match (key, &self.snap.ring) {
                (Some(key), Some(ring)) if !ring.is_empty() => {
                    let len = ring.len();
                    let start = ring.partition_point(|&(point, _)| point < key);
                    (0..len).map(|k| ring[(start + k) % len].1 as usize).find(|&i| self.try_index(i, eligible))
                }
                _ => self.walk(random_below(n), eligible),
            },
            Balancer::LeastRequest => self.two_choices(eligible, &|e: &EndpointState, _| e.load_cost()),
            Balancer::PeakEwma => self.two_choices(eligible, &|e: &EndpointState, now| e.ewma_cost(now)),
        }
    }

    /// Power of two choices by `cost`; when the two drawn are not usable, again over
    /// the usable ones only.
    fn two_choices(
        &mut self,
        eligible: &dyn Fn(usize) -> bool,
        cost: &dyn Fn(&EndpointState, Instant) -> f64,
    ) -> Option<usize> {
        let n = self.snap.endpoints.len();
        let (now, snap) = (self.now, self.snap);
        let cost_of = |i: usize| cost(&snap.endpoints[i], now);
        if n >= 2 {
            let a = random_below(n);
            let mut b = random_below(n - 1);
            if b >= a {
                b += 1;
            }
            let (first, second) = if cost_of(b) < cost_of(a) { (b, a) } else { (a, b) };
            for i in [first, second] {
                if self.try_index(i, eligible) {
                    return Some(i);
                }
            }
        }
        let mut candidates: Vec<usize> = (0..n).filter(|&i| self.usable(i, eligible)).collect();
        while !candidates.is_empty() {
            let pos = if candidates.len() == 1 {
                0
            } else {
                let a = random_below(candidates.len());
                let mut b = random_below(candidates.len() - 1);
                if b >= a {
                    b += 1;
                }
                if cost_of(candidates[b]) < cost_of(candidates[a]) {
                    b
                } else {
                    a
                }
            };
            let i = candidates.swap_remove(pos);
            if self.take(i) {
                return Some(i);
            }
        }
        None
    }
}

/// The hash key of a request for `balancer` (consistent hash only).
pub(crate) fn request_key(balancer: &Balancer, ctx: &PickContext<'_>) -> Option<u64> {
    match balancer {
        Balancer::ConsistentHash(on) => on.key(ctx),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_hash_on() {
        assert_eq!(HashOn::parse("ip").unwrap(), HashOn::Ip);
        assert_eq!(HashOn::parse("header:X-User-Id").unwrap(), HashOn::Header(HeaderName::from_static("x-user-id")));
        assert_eq!(HashOn::parse("cookie:session").unwrap(), HashOn::Cookie("session".into()));
        for bad in ["", "ip:1", "header:", "header:bad name", "cookie:", "cookie:a=b", "query:x"] {
            assert!(HashOn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn smooth_weighted_schedule_interleaves() {
        let s = weighted_schedule(&[3, 1]).unwrap();
        assert_eq!(&*s, &[0, 0, 1, 0]);
        let s = weighted_schedule(&[50, 100, 50]).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 2);
        assert!(weighted_schedule(&[2, 2, 2]).is_none());
        let big = weighted_schedule(&[1_000_000, 1]).unwrap();
        assert!(big.len() as u64 <= MAX_SCHEDULE + 1 && big.contains(&1));
    }
}
