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
    assert_eq!(backend.seen().len(), 1);
    let other_language = gw.request(get_with("/items", &[("accept-language", "fr")])).await;
    assert_eq!(other_language.header("x-cache"), Some("MISS"), "vary keeps languages apart");
    let credentialed = gw.request(get_with("/items", &[("authorization", "Bearer x")])).await;
    assert_eq!(credentialed.header("x-cache"), Some("MISS"));
    assert_eq!(backend.seen().len(), 3);
    let no_store = gw.request(get_with("/items", &[("cache-control", "no-store")])).await;
    assert_eq!(no_store.header("x-cache"), Some("MISS"));
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
