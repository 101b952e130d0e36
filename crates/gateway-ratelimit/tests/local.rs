//! Local limits driven through the public API with paused time.
//! Run with: cargo test -p gateway-ratelimit --test local

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use gateway_ratelimit::{LimitKey, Limiter, RateLimits};
use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

fn config(text: &str) -> gateway_config::Config {
    gateway_config::parse("test.toml", text, &|_| None).unwrap_or_else(|e| panic!("{e:?}"))
}

fn limits(text: &str) -> RateLimits {
    RateLimits::build(&config(text), None).unwrap()
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

#[tokio::test(start_paused = true)]
async fn burst_then_refusal_then_refill() {
    let limits = limits("[rate_limits.api]\nrequests = 10\nper = \"1s\"\nburst = 3\n");
    let limiter = limits.get("api").unwrap();
    let key = limiter.key(IP, &HeaderMap::new(), None);
    assert_eq!(key, LimitKey::Ip(IP));

    for remaining in [2, 1, 0] {
        let d = limiter.check(&key).await;
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining, d.retry_after), (3, remaining, None));
    }
    let refused = limiter.check(&key).await;
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after, Some(Duration::from_millis(100)));
    assert_eq!(refused.retry_after_secs(), Some(1));
    assert_eq!(refused.reset, Duration::from_millis(300), "until the bucket is full again");

    tokio::time::advance(Duration::from_millis(99)).await;
    let early = limiter.check(&key).await;
    assert!(!early.allowed);
    assert_eq!(early.retry_after, Some(Duration::from_millis(1)));

    tokio::time::advance(Duration::from_millis(1)).await;
    let d = limiter.check(&key).await;
    assert!(d.allowed, "one token after one emission interval");
    assert_eq!(d.remaining, 0);

    tokio::time::advance(Duration::from_millis(300)).await;
    let d = limiter.check(&key).await;
    assert_eq!(d.remaining, 2, "full again after burst × interval");
}

#[tokio::test(start_paused = true)]
async fn keys_are_separate_and_missing_keys_share_one_bucket() {
    let limits = limits("[rate_limits.user]\nrequests = 1\nper = \"1m\"\nkey = \"header:x-user\"\n");
    let route = limits.route(&["user"]).unwrap();
    let with = |user: Option<&'static str>| {
        let mut h = HeaderMap::new();
        if let Some(u) = user {
            h.insert("x-user", HeaderValue::from_static(u));
        }
        h
    };
    assert!(route.check(IP, &with(Some("alice")), None).await.is_ok());
    assert!(route.check(IP, &with(Some("alice")), None).await.is_err());
    assert!(route.check(IP, &with(Some("bob")), None).await.is_ok(), "another header value, another bucket");
    // Requests without the header: one shared bucket, from any address.
    assert!(route.check(IP, &with(None), None).await.is_ok());
    let other_ip: IpAddr = "198.51.100.9".parse().unwrap();
    assert!(route.check(other_ip, &with(None), None).await.is_err(), "no bypass by omitting the header");
}

#[tokio::test(start_paused = true)]
async fn per_ip_buckets_are_separate() {
    let limits = limits("[rate_limits.ip]\nrequests = 1\nper = \"1m\"\n");
    let route = limits.route(&["ip"]).unwrap();
    let h = HeaderMap::new();
    assert!(route.check(IP, &h, None).await.is_ok());
    assert!(route.check(IP, &h, None).await.is_err());
    assert!(route.check("192.0.2.2".parse().unwrap(), &h, None).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn several_limits_on_one_route() {
    let limits = limits(
        "[rate_limits.per_second]\nrequests = 2\nper = \"1s\"\n\
         [rate_limits.per_day]\nrequests = 5\nper = \"1d\"\n",
    );
    let route = limits.route(&["per_day", "per_second"]).unwrap();
    let day = limits.get("per_day").unwrap();
    let h = HeaderMap::new();

    let d = route.check(IP, &h, None).await.unwrap().unwrap();
    assert_eq!((&*d.name, d.remaining), ("per_second", 1), "the tightest is reported");
    route.check(IP, &h, None).await.unwrap();
    let refused = route.check(IP, &h, None).await.unwrap_err();
    assert_eq!(&*refused.name, "per_second");
    assert_eq!(refused.retry_after, Some(Duration::from_millis(500)));
    // The refused request was given back to the daily budget.
    for _ in 0..10 {
        assert!(route.check(IP, &h, None).await.is_err());
    }
    let probe = day.check_local_at(&LimitKey::Ip(IP), Instant::now()).unwrap();
    assert_eq!(probe.remaining, 2, "5 - 2 admitted - this probe; refusals took nothing");

    // The next second: the daily limit is the one that refuses.
    tokio::time::advance(Duration::from_secs(1)).await;
    let d = route.check(IP, &h, None).await.unwrap().unwrap();
    assert_eq!((&*d.name, d.remaining), ("per_day", 1));
    route.check(IP, &h, None).await.unwrap();
    let refused = route.check(IP, &h, None).await.unwrap_err();
    assert_eq!(&*refused.name, "per_day");
    assert!(refused.retry_after.unwrap() > Duration::from_secs(3600));
    // check_all by name agrees.
    assert!(limits.check_all(&["per_second", "per_day"], IP, &h, None).await.is_err());
    assert_eq!(limits.check_all::<&str>(&[], IP, &h, None).await, Ok(None));
}

#[tokio::test(start_paused = true)]
async fn unchanged_limits_keep_their_buckets_across_rebuild() {
    let text = "[rate_limits.a]\nrequests = 2\nper = \"1m\"\n[rate_limits.b]\nrequests = 2\nper = \"1m\"\n";
    let first = RateLimits::build(&config(text), None).unwrap();
    let key = LimitKey::Ip(IP);
    for name in ["a", "b"] {
        first.get(name).unwrap().check(&key).await;
        first.get(name).unwrap().check(&key).await;
    }

    let same = RateLimits::build(&config(text), Some(&first)).unwrap();
    assert!(Arc::ptr_eq(same.get("a").unwrap(), first.get("a").unwrap()));
    assert!(!same.get("a").unwrap().check(&key).await.allowed, "bucket survived the reload");

    let changed = text.replacen("[rate_limits.b]\nrequests = 2", "[rate_limits.b]\nrequests = 3", 1);
    let next = RateLimits::build(&config(&changed), Some(&same)).unwrap();
    assert!(!next.get("a").unwrap().check(&key).await.allowed, "a unchanged: kept");
    let b = next.get("b").unwrap().check(&key).await;
    assert!(b.allowed, "b changed: starts fresh");
    assert_eq!(b.remaining, 2);

    let without_a =
        RateLimits::build(&config(&changed.replace("[rate_limits.a]", "[rate_limits.c]")), Some(&next)).unwrap();
    assert!(without_a.get("a").is_none());
    assert!(without_a.get("c").unwrap().check(&key).await.allowed, "a new name starts fresh");
    assert!(RateLimits::build(&config(text), Some(&next)).unwrap().route(&["nope"]).is_err());
}

#[test]
fn a_flood_of_distinct_keys_stays_within_the_bound() {
    let limits = limits("[rate_limits.ip]\nrequests = 10\nper = \"1s\"\n");
    let limiter = limits.get("ip").unwrap();
    assert_eq!(limiter.max_local_keys(), 100_000);
    let start = Instant::now();
    let key = |i: u32| LimitKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));

    // 150,000 distinct clients in the same second: every one admitted or limited, none lost.
    let mut admitted = 0;
    for i in 0..150_000 {
        admitted += u32::from(limiter.check_local_at(&key(i), start).unwrap().allowed);
    }
    let held = limiter.local_keys();
    assert!(held <= 100_000, "{held} keys held");
    assert!(held > 95_000, "{held}: the cap is per shard, shards fill unevenly but nearly");
    assert!(limiter.overflowed() >= 50_000);
    assert!(admitted < 100_000 + 20, "the overflow is one bucket of burst 10: {admitted}");
    // Slots allocated (what the memory is): 16 shards of at most 7,168 slots for 6,250 keys.
    assert!(limiter.local_capacity() <= 16 * 7_168, "{}", limiter.local_capacity());
    // An established client still has its own bucket.
    let d = limiter.check_local_at(&key(7), start).unwrap();
    assert_eq!(d.remaining, 8);

    // Once the buckets are full again (1s here) they are dropped as shards are used...
    let later = start + Duration::from_secs(11);
    for i in 0..1_000 {
        limiter.check_local_at(&key(1_000_000 + i), later).unwrap();
    }
    let held = limiter.local_keys();
    assert!(held <= 1_000, "{held} keys held after the shards swept");
    // ...and their memory is given back.
    assert!(limiter.local_capacity() < 16 * 1_024, "{}", limiter.local_capacity());
}

#[test]
fn a_small_cap_holds_and_overflow_is_one_bucket() {
    let def = config("[rate_limits.x]\nrequests = 1\nper = \"1h\"\n").rate_limits["x"].clone();
    let limiter = Limiter::with_max_keys("x", &def, None, 32).unwrap();
    let now = Instant::now();
    let mut admitted = 0;
    for i in 0..1_000u32 {
        let key = LimitKey::Text(i.to_string().into());
        admitted += u32::from(limiter.check_local_at(&key, now).unwrap().allowed);
    }
    assert!(limiter.local_keys() <= 32);
    assert!(admitted <= 33, "32 own buckets and one overflow bucket: {admitted}");
}
