//! Redis limits against a real `redis-server` started by the test on a free port.
//! Run with: cargo test -p gateway-ratelimit --test redis
//! (needs `redis-server` on PATH: `apt-get install -y redis-server`; `.ci/run` installs it).

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_ratelimit::{LimitKey, Limiter, RateLimits, RedisStore, REDIS_RETRY_AFTER, REDIS_TIMEOUT};
use gateway_tests::{shared_redis, RedisServer};
use http::HeaderMap;

fn definition(text: &str) -> gateway_config::RateLimit {
    let config = gateway_config::parse(
        "test.toml",
        &format!("[redis]\nurl = \"redis://127.0.0.1:1/\"\n[rate_limits.x]\nstore = \"redis\"\n{text}"),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    config.rate_limits["x"].clone()
}

/// A limiter as one gateway instance would have it: its own store and connection.
fn gateway(url: &str, name: &str, def: &gateway_config::RateLimit, timeout: Duration) -> Limiter {
    let store = Arc::new(RedisStore::with_timeout(url, timeout).unwrap());
    Limiter::new(name, def, Some(store)).unwrap()
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

async fn redis_cmd<T: redis::FromRedisValue>(url: &str, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn two_gateways_draw_from_one_budget() {
    let server = shared_redis();
    let def = definition("requests = 10\nper = \"1m\"\n");
    let a = gateway(&server.url(), "one_budget", &def, Duration::from_secs(2));
    let b = gateway(&server.url(), "one_budget", &def, Duration::from_secs(2));
    let key = a.key(IP, &HeaderMap::new(), None);

    for remaining in (0..10).rev() {
        let which = if remaining % 2 == 0 { &a } else { &b };
        let d = which.check(&key).await;
        assert!(d.allowed && !d.degraded, "{d:?}");
        assert_eq!((d.limit, d.remaining), (10, remaining), "counting down across both gateways");
    }
    for gw in [&a, &b] {
        let d = gw.check(&key).await;
        assert!(!d.allowed && !d.degraded, "{d:?}");
        let retry = d.retry_after.unwrap();
        assert!(retry <= Duration::from_secs(6) && retry > Duration::from_millis(5_500), "{retry:?}");
        assert_eq!(d.retry_after_secs(), Some(6));
    }
    let other = b.check(&LimitKey::Ip("192.0.2.2".parse().unwrap())).await;
    assert!(other.allowed && other.remaining == 9, "another client has its own budget");
    assert_eq!(a.redis_errors() + b.redis_errors(), 0);

    // The bucket is one Redis key that expires when it would be full again (10 × 6s).
    let pttl: i64 = redis_cmd(&server.url(), redis::cmd("PTTL").arg("gateway:rl:one_budget:i:192.0.2.1")).await;
    assert!(pttl > 55_000 && pttl <= 60_000, "{pttl}");
}

#[tokio::test]
async fn a_refusal_gives_back_what_earlier_redis_limits_took() {
    let server = shared_redis();
    let store = Arc::new(RedisStore::with_timeout(&server.url(), Duration::from_secs(2)).unwrap());
    let text = format!(
        "[redis]\nurl = \"{}\"\n\
         [rate_limits.refund_day]\nstore = \"redis\"\nrequests = 5\nper = \"1d\"\nkey = \"global\"\n\
         [rate_limits.refund_minute]\nstore = \"redis\"\nrequests = 1\nper = \"1m\"\nkey = \"global\"\n",
        server.url()
    );
    let config = gateway_config::parse("test.toml", &text, &|_| None).unwrap();
    let day = Arc::new(Limiter::new("refund_day", &config.rate_limits["refund_day"], Some(store.clone())).unwrap());
    let minute = Limiter::new("refund_minute", &config.rate_limits["refund_minute"], Some(store)).unwrap();
    assert!(day.check(&LimitKey::Shared).await.allowed);
    assert!(minute.check(&LimitKey::Shared).await.allowed);

    let limits = RateLimits::build(&config, None).unwrap();
    let route = limits.route(&["refund_day", "refund_minute"]).unwrap();
    for _ in 0..5 {
        let refused = route.check(IP, &HeaderMap::new(), None).await.unwrap_err();
        assert_eq!(&*refused.name, "refund_minute");
    }
    let d = day.check(&LimitKey::Shared).await;
    assert_eq!(d.remaining, 3, "5 - 1 - this check: the five refusals took nothing from the day");
}

#[tokio::test]
async fn rebuild_keeps_the_connection_and_unchanged_limits() {
    let server = shared_redis();
    let text = |url: &str, requests: u32| {
        format!(
            "[redis]\nurl = \"{url}\"\n[rate_limits.rebuilt]\nstore = \"redis\"\nrequests = {requests}\nper = \"1m\"\n\
             [rate_limits.local]\nrequests = 1\nper = \"1m\"\n"
        )
    };
    let parse = |t: String| gateway_config::parse("test.toml", &t, &|_| None).unwrap();
    let url = server.url();
    let first = RateLimits::build(&parse(text(&url, 5)), None).unwrap();
    let d = first.get("rebuilt").unwrap().check(&LimitKey::Shared).await;
    assert!(d.allowed);

    let same = RateLimits::build(&parse(text(&url, 5)), Some(&first)).unwrap();
    assert!(Arc::ptr_eq(same.get("rebuilt").unwrap(), first.get("rebuilt").unwrap()));

    let changed = RateLimits::build(&parse(text(&url, 6)), Some(&same)).unwrap();
    assert!(!Arc::ptr_eq(changed.get("rebuilt").unwrap(), same.get("rebuilt").unwrap()));
    assert!(Arc::ptr_eq(
        changed.get("rebuilt").unwrap().redis_store().unwrap(),
        same.get("rebuilt").unwrap().redis_store().unwrap()
    ));
    assert!(Arc::ptr_eq(changed.get("local").unwrap(), first.get("local").unwrap()));

    let other_url = url.replace("127.0.0.1", "localhost");
    let moved = RateLimits::build(&parse(text(&other_url, 6)), Some(&changed)).unwrap();
    assert_eq!(moved.get("rebuilt").unwrap().redis_store().unwrap().url(), other_url);
    assert!(!Arc::ptr_eq(moved.get("rebuilt").unwrap(), changed.get("rebuilt").unwrap()), "new url: new limiter");
}

/// Redis goes away under both `on_redis_error` settings: answers stay quick, are counted,
/// and follow the setting; Redis coming back is picked up again.
#[tokio::test]
async fn redis_stopped_mid_test() {
    let server = RedisServer::start();
    let (url, port) = (server.url(), server.port);
    let allow = gateway(&url, "outage_allow", &definition("requests = 1000\nper = \"1m\"\n"), REDIS_TIMEOUT);
    let deny = gateway(
        &url,
        "outage_deny",
        &definition("requests = 1000\nper = \"1m\"\non_redis_error = \"deny\"\n"),
        REDIS_TIMEOUT,
    );
    let key = LimitKey::Ip(IP);
    for limiter in [&allow, &deny] {
        let d = healthy_check(limiter, &key).await;
        assert!(d.allowed && d.remaining == 999, "{d:?}");
    }
    let errors_before = (allow.redis_errors(), deny.redis_errors());

    drop(server);

    for _ in 0..20 {
        for (limiter, expect_allowed) in [(&allow, true), (&deny, false)] {
            let started = Instant::now();
            let d = limiter.check(&key).await;
            let took = started.elapsed();
            assert!(took < REDIS_TIMEOUT + Duration::from_millis(250), "{took:?}: no hang beyond the timeout");
            assert!(d.degraded, "{d:?}");
            assert_eq!(d.allowed, expect_allowed, "{d:?}");
            if !expect_allowed {
                assert_eq!(d.retry_after_secs(), Some(1));
            }
            assert_eq!(d.headers().is_empty(), expect_allowed, "no made-up budget in the headers");
        }
    }
    assert_eq!(allow.redis_errors(), errors_before.0 + 20, "every degraded answer is counted");
    assert_eq!(deny.redis_errors(), errors_before.1 + 20);

    // Redis is back: after the pause the next checks use it again.
    let _server = RedisServer::start_on(port).expect("redis-server restarts on its port");
    let d = healthy_check(&deny, &key).await;
    assert!(d.allowed && d.remaining == 999, "a fresh server, a fresh budget: {d:?}");
}

/// Retries while the limiter answers degraded (a connection being made on a busy machine),
/// for at most 10s.
async fn healthy_check(limiter: &Limiter, key: &LimitKey) -> gateway_ratelimit::Decision {
    for _ in 0..20 {
        let d = limiter.check(key).await;
        if !d.degraded {
            return d;
        }
        tokio::time::sleep(REDIS_RETRY_AFTER).await;
    }
    panic!("{} never reached redis", limiter.name());
}

/// A server that accepts connections and never answers: each check gives up at the timeout
/// and later ones skip Redis for a while, so requests do not queue behind a dead server.
#[tokio::test]
async fn a_silent_redis_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    for (on_error, allowed) in [("allow", true), ("deny", false)] {
        let def = definition(&format!("requests = 10\nper = \"1s\"\non_redis_error = \"{on_error}\"\n"));
        let limiter = gateway(&url, &format!("silent_{on_error}"), &def, Duration::from_millis(200));
        let started = Instant::now();
        let d = limiter.check(&LimitKey::Shared).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(1), "{took:?}");
        assert!(d.degraded && d.allowed == allowed, "{d:?}");
        let started = Instant::now();
        let d = limiter.check(&LimitKey::Shared).await;
        assert!(started.elapsed() < Duration::from_millis(100), "skipped while Redis is failing, no new wait");
        assert!(d.degraded && d.allowed == allowed);
        assert_eq!(limiter.redis_errors(), 2);
    }
    held.abort();
}
