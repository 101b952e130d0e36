//! Traffic management through the gateway: splits, mirroring, header transforms, cache,
//! compression.

use std::time::{Duration, Instant};

use gateway_tests::{get_with, Backend, TestGateway};

#[tokio::test]
async fn weighted_split_holds_its_ratio_and_sticks_per_header() {
    let stable = Backend::start().await;
    let canary = Backend::start().await;
    let config = format!(
        r#"
[services.stable]
endpoints = ["http://{}"]
[services.canary]
endpoints = ["http://{}"]
[[routes]]
name = "r"
path_prefix = "/"
split = [{{ service = "stable", weight = 80 }}, {{ service = "canary", weight = 20 }}]
sticky_on = "header:x-user"
"#,
        stable.addr, canary.addr
    );
    let gw = TestGateway::start(&config).await;
    for _ in 0..1000 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    let share = canary.seen().len() as f64 / 1000.0;
    assert!((0.15..0.25).contains(&share), "canary share {share}");
    let before = (stable.seen().len(), canary.seen().len());
    for _ in 0..20 {
        gw.request(get_with("/", &[("x-user", "alice")])).await;
    }
    let moved = (stable.seen().len() - before.0, canary.seen().len() - before.1);
    assert!(moved == (20, 0) || moved == (0, 20), "alice stayed on one side: {moved:?}");
}

#[tokio::test]
async fn mirrored_copies_never_slow_the_client() {
    let primary = Backend::start().await;
    let shadow = Backend::start().await;
    let config = format!(
        r#"
[services.primary]
endpoints = ["http://{}"]
[services.shadow]
endpoints = ["http://{}"]
[[routes]]
name = "r"
path_prefix = "/"
service = "primary"
mirror = {{ service = "shadow", percent = 100 }}
"#,
        primary.addr, shadow.addr
    );
    let gw = TestGateway::start(&config).await;
    // The primary answers at once; the shadow gets the same path (and sleeps 2 s on it).
    let started = Instant::now();
    let resp = gw.get("/slow/0").await;
    assert_eq!(resp.status, 200);
    for _ in 0..100 {
        if !shadow.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shadow.seen().len(), 1, "the shadow got a copy");
    assert_eq!(shadow.last().target, "/slow/0");
    let resp = gw.get("/x").await;
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Bodies are mirrored too (teed while the primary reads them), within the mirror's 64 KiB
/// limit; a shadow that takes 2 s never holds the client up.
#[tokio::test]
async fn mirrored_bodies_reach_a_slow_shadow_without_slowing_the_client() {
    use http_body_util::BodyExt;
    let primary = Backend::start().await;
    let (copies, mut received) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    let shadow = gateway_tests::TestServer::start(
        gateway_tests::Protocol::Http1,
        move |req: http::Request<hyper::body::Incoming>| {
            let copies = copies.clone();
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                let _ = copies.send(body);
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(http::Response::new(gateway_tests::full("shadow")))
            }
        },
    )
    .await;
    let config = format!(
        "[services.primary]\nendpoints = [\"http://{}\"]\n[services.shadow]\nendpoints = [\"http://{}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"primary\"\nmirror = {{ service = \"shadow\", percent = 100 }}\n",
        primary.addr, shadow.addr
    );
    let gw = TestGateway::start(&config).await;
    let post = |body: String| {
        let req = http::Request::post("/body").header("host", "a");
        gw.request(req.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap())
    };
    let small = "m".repeat(10_000);
    let started = Instant::now();
    let resp = post(small.clone()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, small.as_bytes(), "the primary got the whole body");
    assert!(started.elapsed() < Duration::from_millis(1500), "the shadow's 2 s never reached the client");
    let copy = tokio::time::timeout(Duration::from_secs(5), received.recv()).await.unwrap().unwrap();
    assert_eq!(copy, small.as_bytes(), "the shadow got the same body");

    // Over the limit: the primary gets it, the shadow does not (the next copy is the small one).
    let large = "L".repeat(100 * 1024);
    assert_eq!(post(large.clone()).await.body.len(), large.len());
    post(small.clone()).await;
    let next = tokio::time::timeout(Duration::from_secs(5), received.recv()).await.unwrap().unwrap();
    assert_eq!(next.len(), small.len(), "a body over 64 KiB is not mirrored");
}

#[tokio::test]
async fn header_transforms_fill_placeholders() {
    let backend = Backend::start().await;
    let config = format!(
        r#"
[services.echo]
endpoints = ["http://{}"]
[[routes]]
name = "r"
path_prefix = "/"
service = "echo"
request_headers = {{ set = {{ "x-env" = "prod", "x-rid" = "{{request_id}}", "x-client" = "{{client_ip}}" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ "strict-transport-security" = "max-age=31536000" }}, remove = ["x-kept"] }}
"#,
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let resp = gw.request(get_with("/hop", &[("x-debug", "1"), ("x-env", "dev")])).await;
    let seen = backend.last();
    assert_eq!(seen.header("x-env"), Some("prod"));
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-client"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-rid"), resp.header("x-request-id"));
    assert_eq!(resp.header("strict-transport-security"), Some("max-age=31536000"));
    assert_eq!(resp.header("x-kept"), None);
}

#[tokio::test]
async fn cache_serves_hits_and_never_shares_credentialed_answers() {
    let backend = Backend::start().await;
    let config = format!(
        r#"
[services.echo]
endpoints = ["http://{}"]
[[routes]]
name = "r"
path_prefix = "/"
service = "echo"
cache = {{ ttl = "30s", max_entries = 100, vary = ["accept-language"] }}
"#,
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let first = gw.get("/items").await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = gw.get("/items").await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(first.body, second.body);
    // The key is the normalised path: the same resource spelt another way is the same entry.
    assert_eq!(gw.get("/x/../it%65ms").await.header("x-cache"), Some("HIT"));
    assert_eq!(backend.seen().len(), 1);
    let other_language = gw.request(get_with("/items", &[("accept-language", "fr")])).await;
    assert_eq!(other_language.header("x-cache"), Some("MISS"), "vary keeps languages apart");
    let credentialed = gw.request(get_with("/items", &[("authorization", "Bearer x")])).await;
    assert_eq!(credentialed.header("x-cache"), Some("MISS"));
    assert_eq!(backend.seen().len(), 3);
    let no_store = gw.request(get_with("/items", &[("cache-control", "no-store")])).await;
    assert_eq!(no_store.header("x-cache"), Some("MISS"));

    // Purged by route through the admin API: the next read goes upstream again.
    let admin = |method: &str, path: &str| {
        let req = http::Request::builder().method(method).uri(path).header("host", "admin");
        gateway_tests::send(gw.admin_addr, req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap())
    };
    let purged = admin("DELETE", "/admin/routes/r/cache").await;
    assert_eq!(purged.status, 200, "{:?}", purged.body);
    assert_eq!(purged.json()["purged_entries"], 2, "{}", purged.json());
    let before = backend.seen().len();
    assert_eq!(gw.get("/items").await.header("x-cache"), Some("MISS"));
    assert_eq!(backend.seen().len(), before + 1);
    assert_eq!(gw.get("/items").await.header("x-cache"), Some("HIT"));
    assert_eq!(admin("DELETE", "/admin/routes/nope/cache").await.status, 404);
}

#[tokio::test]
async fn concurrent_misses_go_upstream_once() {
    let backend = Backend::start().await;
    let config = format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\ncache = {{ ttl = \"30s\" }}\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr;
    let waves: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { gateway_tests::send(addr, get_with("/coalesce", &[])).await.status }))
        .collect();
    for wave in waves {
        assert_eq!(wave.await.unwrap(), 200);
    }
    assert_eq!(backend.seen().len(), 1, "50 concurrent misses, one upstream request");
}

#[tokio::test]
async fn compression_is_negotiated_and_skipped_for_small_bodies() {
    let backend = Backend::start().await;
    let config = format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\ncompress = true\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    // A large JSON echo: many headers make the body big enough to compress.
    let padding = "p".repeat(2000);
    let big = gw.request(get_with("/big", &[("accept-encoding", "gzip"), ("x-padding", &padding)])).await;
    assert_eq!(big.header("content-encoding"), Some("gzip"));
    assert!(big.body.len() < 1500, "compressed: {} bytes", big.body.len());
    let plain = gw.request(get_with("/big", &[("x-padding", &padding)])).await;
    assert_eq!(plain.header("content-encoding"), None);
    let small = gw.request(get_with("/status/200", &[("accept-encoding", "gzip")])).await;
    assert_eq!(small.header("content-encoding"), None);
}

/// `peak_ewma` moves traffic away from an endpoint that turned slow, before it fails: of
/// two endpoints, the one answering 40 ms slower gets only a small share of the calls,
/// where round robin would give it half.
#[tokio::test]
async fn peak_ewma_moves_traffic_away_from_a_slow_endpoint() {
    let fast = gateway_tests::ChaosBackend::start().await;
    let slow = gateway_tests::ChaosBackend::start().await;
    let config = format!(
        "[services.pair]\nendpoints = [\"http://{}\", \"http://{}\"]\nload_balancer = \"peak_ewma\"\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"pair\"\n",
        fast.addr, slow.addr
    );
    let gw = TestGateway::start(&config).await;
    // Both alike at first; then one turns slow.
    for _ in 0..20 {
        assert_eq!(gw.get("/warm").await.status, 200);
    }
    slow.set_delay(Duration::from_millis(40));
    let (fast_before, slow_before) = (fast.hits(), slow.hits());
    // One call at a time: no endpoint ever has more in flight than the other, so only the
    // latency tells them apart (least_request would split these calls evenly).
    for i in 0..100 {
        assert_eq!(gw.get(&format!("/call/{i}")).await.status, 200);
    }
    let (to_fast, to_slow) = (fast.hits() - fast_before, slow.hits() - slow_before);
    assert_eq!(to_fast + to_slow, 100);
    assert!(to_slow < 20, "the slow endpoint still got {to_slow} of 100 calls (fast: {to_fast})");
}

/// IP lists judge the client address as SPEC.md resolves it: behind a trusted proxy, the
/// address that proxy put in `x-forwarded-for`. Deny wins over allow; refusals are 403
/// before any backend is touched.
#[tokio::test]
async fn ip_lists_use_the_address_a_trusted_proxy_forwarded() {
    let backend = Backend::start().await;
    let config = format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"office\"\npath_prefix = \"/\"\nservice = \"echo\"\n\
         allow_ips = [\"10.0.0.0/8\", \"2001:db8::/32\"]\ndeny_ips = [\"10.9.0.0/16\"]\n",
        backend.addr
    );
    // The test client connects from 127.0.0.1, which is a trusted proxy here.
    let gw = TestGateway::start_with_server(&config, "trusted_proxies = [\"127.0.0.1/32\"]").await;
    let from = |client: &'static str| gw.request(get_with("/desk", &[("x-forwarded-for", client)]));
    assert_eq!(from("10.1.2.3").await.status, 200);
    assert_eq!(from("2001:db8::7").await.status, 200);
    // The rightmost untrusted address is the client: a forged leftmost entry changes nothing.
    assert_eq!(from("10.1.2.3, 192.0.2.1").await.status, 403);
    let denied = from("10.9.1.1").await;
    assert_eq!(denied.status, 403, "deny wins over allow");
    assert_eq!(denied.error_code(), "forbidden");
    assert_eq!(gw.get("/desk").await.status, 403, "the proxy itself is not in the allow list");
    assert_eq!(backend.seen().len(), 2, "only the allowed calls reached the backend");
}

/// Event streams are never compressed (a compressor would hold events back), even when
/// the client accepts gzip and the events are large.
#[tokio::test]
async fn compression_skips_event_streams() {
    let sse = gateway_tests::TestServer::start(gateway_tests::Protocol::Http1, |_req| async {
        let event = format!("data: {}\n\n", "e".repeat(4000));
        Ok(http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(gateway_tests::full(event))
            .unwrap())
    })
    .await;
    let config = format!(
        "[services.sse]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"sse\"\ncompress = true\n",
        sse.addr
    );
    let gw = TestGateway::start(&config).await;
    let resp = gw.request(get_with("/events", &[("accept-encoding", "gzip, br")])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-encoding"), None);
    assert!(resp.body.starts_with(b"data: eee"));
}
