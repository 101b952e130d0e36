//! Rate limits through the gateway: buckets, headers, keys, and Redis shared by two gateways.

use gateway_tests::{get_with, shared_redis, Backend, TestGateway};

fn limited(backend: &Backend, limit: &str, route_extra: &str) -> String {
    format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n\n[rate_limits.tight]\n{limit}\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\nrate_limit = [\"tight\"]\n{route_extra}\n",
        backend.addr
    )
}

#[tokio::test]
async fn burst_then_429_with_honest_headers() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&limited(&backend, "requests = 3\nper = \"1m\"\nkey = \"ip\"", "")).await;
    for remaining in ["2", "1", "0"] {
        let resp = gw.get("/x").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("ratelimit-limit"), Some("3"));
        assert_eq!(resp.header("ratelimit-remaining"), Some(remaining));
        assert_eq!(resp.header("ratelimit-policy"), Some("\"tight\";q=3;w=60"));
        assert!(resp.header("ratelimit").unwrap().starts_with("\"tight\";r="));
    }
    let refused = gw.get("/x").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "rate_limited");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    // One token every 20 s: the next request is admitted in 20 s, give or take rounding.
    assert!((19..=21).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(backend.seen().len(), 3, "the refused request never went upstream");
    let metrics = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    assert!(metrics.contains(r#"gateway_rate_limited_total{route="r"} 1"#), "{metrics}");
}

#[tokio::test]
async fn grpc_callers_get_resource_exhausted() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&limited(&backend, "requests = 1\nper = \"1m\"\nkey = \"global\"", "")).await;
    let grpc = || get_with("/pkg.Svc/Call", &[("content-type", "application/grpc")]);
    assert_eq!(gw.request(grpc()).await.status, 200);
    let refused = gw.request(grpc()).await;
    assert_eq!(refused.status, 200);
    assert_eq!(refused.header("grpc-status"), Some("8"));
}

#[tokio::test]
async fn spoofed_forwarded_for_is_ignored_from_untrusted_peers() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&limited(&backend, "requests = 1\nper = \"1m\"\nkey = \"ip\"", "")).await;
    assert_eq!(gw.request(get_with("/", &[("x-forwarded-for", "198.51.100.1")])).await.status, 200);
    // A new claimed address from the same untrusted peer is still the same client.
    assert_eq!(gw.request(get_with("/", &[("x-forwarded-for", "198.51.100.2")])).await.status, 429);
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_separates_clients() {
    let backend = Backend::start().await;
    let gw = TestGateway::start_with_server(
        &limited(&backend, "requests = 1\nper = \"1m\"\nkey = \"ip\"", ""),
        "trusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await;
    assert_eq!(gw.request(get_with("/", &[("x-forwarded-for", "198.51.100.1")])).await.status, 200);
    assert_eq!(gw.request(get_with("/", &[("x-forwarded-for", "198.51.100.2")])).await.status, 200);
    assert_eq!(gw.request(get_with("/", &[("x-forwarded-for", "198.51.100.1")])).await.status, 429);
}

#[tokio::test]
async fn header_keys_are_separate_and_a_missing_header_shares_one_bucket() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&limited(&backend, "requests = 1\nper = \"1m\"\nkey = \"header:x-client\"", "")).await;
    assert_eq!(gw.request(get_with("/", &[("x-client", "a")])).await.status, 200);
    assert_eq!(gw.request(get_with("/", &[("x-client", "b")])).await.status, 200);
    assert_eq!(gw.request(get_with("/", &[("x-client", "a")])).await.status, 429);
    assert_eq!(gw.get("/").await.status, 200, "first request without the header");
    assert_eq!(gw.get("/").await.status, 429, "requests without the header share one bucket");
}

#[tokio::test]
async fn every_limit_of_a_route_must_admit() {
    let backend = Backend::start().await;
    let config = format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[rate_limits.per_second]\nrequests = 100\nper = \"1s\"\n[rate_limits.per_day]\nrequests = 2\nper = \"1d\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\nrate_limit = [\"per_second\", \"per_day\"]\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let first = gw.get("/").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-remaining"), Some("1"), "the tightest limit is reported");
    assert_eq!(gw.get("/").await.status, 200);
    assert_eq!(gw.get("/").await.status, 429);
}

#[tokio::test]
async fn route_concurrency_limit_sheds_load_with_503() {
    let backend = Backend::start().await;
    let config = format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\nmax_in_flight = 1\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr;
    let slow = tokio::spawn(async move { gateway_tests::send(addr, get_with("/slow/500", &[])).await });
    for _ in 0..100 {
        if !backend.seen().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let shed = gw.get("/x").await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.error_code(), "service_unavailable");
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(gw.get("/x").await.status, 200, "capacity is back once the slow call ended");
}

#[tokio::test]
async fn two_gateways_share_one_redis_budget() {
    let redis = shared_redis();
    let backend = Backend::start().await;
    let name = format!("shared{}", redis.port);
    let config = format!(
        "[redis]\nurl = \"{}\"\n[services.echo]\nendpoints = [\"http://{}\"]\n[rate_limits.{name}]\nrequests = 4\nper = \"1m\"\nkey = \"global\"\nstore = \"redis\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\nrate_limit = [\"{name}\"]\n",
        redis.url(),
        backend.addr
    );
    let one = TestGateway::start(&config).await;
    let two = TestGateway::start(&config).await;
    let mut admitted = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { &one } else { &two };
        if gw.get("/").await.status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4, "both gateways drew from one budget of 4");
}
