//! The registry shared through a real etcd by several real gateways, and gRPC health
//! checks against a real `grpc.health.v1` server.
//!
//! `cargo test -p gateway-tests --test it registry`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_tests::{eventually, eventually_within, shared_etcd, Backend, EtcdServer, TempDir, TestCa, TestGateway};
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// A key prefix no other test uses, so tests can share one etcd.
fn fresh_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("/gateway-test-{}-{}/", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Two gateways sharing `etcd` under a prefix of their own, each with one route to the
/// registry-discovered service `svc`; instances expire after `ttl`.
async fn two_gateways(etcd: &str, ttl: &str) -> (TestGateway, TestGateway) {
    let prefix = fresh_prefix();
    (gateway_on(etcd, &prefix, ttl).await, gateway_on(etcd, &prefix, ttl).await)
}

/// A gateway with the etcd store and one route to the registry-discovered service `svc`.
async fn gateway_on(etcd: &str, prefix: &str, ttl: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[registry]
store = "etcd"
ttl = "{ttl}"
etcd = {{ endpoints = ["{etcd}"], prefix = "{prefix}" }}
[services.svc]
discovery = "registry"
[[routes]]
name = "r"
path_prefix = "/"
service = "svc"
"#
    ))
    .await
}

fn admin_request(method: &str, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn register(gw: &TestGateway, id: &str, addr: SocketAddr) -> http::StatusCode {
    let body = format!("{{\"address\": \"{addr}\", \"metadata\": {{\"zone\": \"a\"}}}}");
    let path = format!("/registry/services/svc/instances/{id}");
    gateway_tests::send(gw.admin_addr, admin_request("PUT", &path, &body)).await.status
}

async fn heartbeat(gw: &TestGateway, id: &str) -> http::StatusCode {
    let path = format!("/registry/services/svc/instances/{id}/heartbeat");
    gateway_tests::send(gw.admin_addr, admin_request("PUT", &path, "")).await.status
}

async fn deregister(gw: &TestGateway, id: &str) -> http::StatusCode {
    let path = format!("/registry/services/svc/instances/{id}");
    gateway_tests::send(gw.admin_addr, admin_request("DELETE", &path, "")).await.status
}

async fn store_status(gw: &TestGateway) -> serde_json::Value {
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200, "a degraded store does not make the gateway unready");
    ready.json()["details"]["registry"].clone()
}

fn metrics(answer: &gateway_tests::Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

#[tokio::test]
async fn an_instance_registered_through_one_gateway_is_served_by_another() {
    let etcd = shared_etcd();
    let (a, b) = two_gateways(&etcd.url(), "30s").await;
    let backend = Backend::start().await;
    assert_eq!(b.get("/").await.status, 503, "nothing registered yet");
    assert_eq!(store_status(&b).await, serde_json::json!({"store": "etcd", "status": "ok"}));

    assert_eq!(register(&a, "one", backend.addr).await, 201);
    // Within a second, B routes to it and lists it.
    assert!(eventually_within(Duration::from_secs(1), async || b.get("/hello").await.status == 200).await);
    assert!(backend.seen().iter().any(|s| s.target == "/hello"), "B's request reached the instance");
    let listed = b.admin_get("/registry/services/svc").await.json();
    assert_eq!(listed["instances"][0]["id"], "one", "{listed}");
    assert_eq!(listed["instances"][0]["address"], backend.addr.to_string());
    assert_eq!(listed["instances"][0]["metadata"]["zone"], "a");
    assert_eq!(b.admin_get("/registry/services").await.json()["services"][0]["instances"], 1);

    // The registration is shared: B renews it, A re-registers it (200), B's heartbeat works.
    assert_eq!(heartbeat(&b, "one").await, 200);
    assert_eq!(register(&a, "one", backend.addr).await, 200);
    assert_eq!(heartbeat(&b, "unknown").await, 404);

    // Deregistering through B takes it out of both.
    assert_eq!(deregister(&b, "one").await, 204);
    assert!(eventually_within(Duration::from_secs(1), async || a.get("/").await.status == 503).await);
    assert!(eventually(async || b.get("/").await.status == 503).await);
    assert_eq!(heartbeat(&a, "one").await, 404);
    assert_eq!(deregister(&a, "one").await, 204, "deregistering is idempotent");

    // Input is validated before etcd is asked.
    let bad = gateway_tests::send(
        a.admin_addr,
        admin_request("PUT", "/registry/services/svc/instances/x", "{\"address\": \"nope\"}"),
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_lease_that_is_not_renewed_expires_on_every_gateway() {
    let etcd = shared_etcd();
    let (a, b) = two_gateways(&etcd.url(), "2s").await;
    let kept = Backend::start().await;
    let dropped = Backend::start().await;
    assert_eq!(register(&a, "kept", kept.addr).await, 201);
    assert_eq!(register(&a, "dropped", dropped.addr).await, 201);
    assert!(
        eventually(async || {
            b.admin_get("/registry/services/svc").await.json()["instances"].as_array().unwrap().len() == 2
        })
        .await
    );

    // Heartbeat `kept` (through B) every 400 ms; `dropped` is left to its lease.
    let instances = async |gw: &TestGateway| -> Vec<String> {
        let listed = gw.admin_get("/registry/services/svc").await.json();
        listed["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
    };
    let started = Instant::now();
    let mut gone_from_both = None;
    while started.elapsed() < Duration::from_secs(8) {
        assert_eq!(heartbeat(&b, "kept").await, 200, "the renewed instance stays registered");
        if instances(&a).await == ["kept"] && instances(&b).await == ["kept"] {
            gone_from_both = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let gone = gone_from_both.expect("the instance without heartbeats expired from both gateways within 8s");
    assert!(gone >= Duration::from_millis(1500), "expired after {gone:?}, before its 2s TTL");
    // Only `kept` gets traffic now, through either gateway.
    for gw in [&a, &b] {
        for _ in 0..3 {
            assert_eq!(gw.get("/after").await.status, 200);
        }
    }
    assert_eq!(kept.seen().len(), 6);
    assert!(dropped.seen().is_empty());
    assert_eq!(heartbeat(&a, "dropped").await, 404, "an expired instance is unknown");
}

#[tokio::test]
async fn when_etcd_goes_away_the_last_known_endpoints_keep_serving() {
    let mut etcd = EtcdServer::start();
    let (a, b) = two_gateways(&etcd.url(), "30s").await;
    let backend = Backend::start().await;
    assert_eq!(register(&a, "one", backend.addr).await, 201);
    assert!(eventually(async || b.get("/").await.status == 200).await);

    etcd.kill();
    assert!(
        eventually(async || store_status(&b).await["status"] == "degraded").await,
        "B never noticed that etcd is gone: {}",
        store_status(&b).await
    );
    assert!(store_status(&b).await["error"].is_string());
    assert!(metrics(&b.admin_get("/metrics").await).contains("gateway_registry_store_up{store=\"etcd\"} 0"));
    for _ in 0..5 {
        assert_eq!(b.get("/during").await.status, 200, "the last known instance keeps serving");
    }
    let listed = b.admin_get("/registry/services/svc").await.json();
    assert_eq!(listed["instances"][0]["id"], "one", "{listed}");
    // Writes cannot be confirmed: 503 with the JSON error.
    let refused = gateway_tests::send(
        b.admin_addr,
        admin_request("PUT", "/registry/services/svc/instances/two", &format!("{{\"address\": \"{}\"}}", backend.addr)),
    )
    .await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.error_code(), "service_unavailable");

    // etcd comes back: the gateways reconnect by themselves and the store is ok again.
    let etcd = etcd.restart();
    for gw in [&a, &b] {
        assert!(
            eventually_within(Duration::from_secs(10), async || store_status(gw).await["status"] == "ok").await,
            "no reconnection: {}",
            store_status(gw).await
        );
    }
    assert!(metrics(&b.admin_get("/metrics").await).contains("gateway_registry_store_up{store=\"etcd\"} 1"));
    assert_eq!(b.get("/after").await.status, 200);
    assert_eq!(deregister(&b, "one").await, 204);
    assert!(eventually(async || a.get("/").await.status == 503).await);
    drop(etcd);
}

#[tokio::test]
async fn the_memory_store_reports_itself_ready() {
    let gw = TestGateway::start("").await;
    assert_eq!(store_status(&gw).await, serde_json::json!({"store": "memory", "status": "ok"}));
    assert!(metrics(&gw.admin_get("/metrics").await).contains("gateway_registry_store_up{store=\"memory\"} 1"));
}

/// The `grpc.health.v1.Health` service (tonic-health): the server and `users.v1.Users` serving.
async fn health_service() -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::Serving).await;
    reporter.set_service_status("users.v1.Users", ServingStatus::Serving).await;
    (reporter, service)
}

/// A real `grpc.health.v1.Health` server on `127.0.0.1:0`, over h2c.
async fn grpc_health_server() -> (SocketAddr, HealthReporter) {
    let (reporter, service) = health_service().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    (addr, reporter)
}

#[tokio::test]
async fn grpc_health_checks_follow_the_serving_status() {
    let (addr, mut reporter) = grpc_health_server().await;
    let config = format!(
        r#"
[services.users]
endpoints = ["h2c://{addr}"]
health_check = {{ kind = "grpc", service = "users.v1.Users", interval = "50ms", timeout = "500ms", healthy_threshold = 1, unhealthy_threshold = 1 }}
[[routes]]
name = "r"
path_prefix = "/"
service = "users"
"#
    );
    let gw = TestGateway::start(&config).await;
    let healthy = async || gw.admin_get("/admin/services").await.json()[0]["endpoints"][0]["healthy"] == true;
    assert!(healthy().await);
    // tonic answers any path (UNIMPLEMENTED, HTTP 200): traffic reaches it while it serves.
    assert_eq!(gw.get("/x").await.status, 200);

    // The named service stops serving (the server as a whole still does): out.
    reporter.set_service_status("users.v1.Users", ServingStatus::NotServing).await;
    assert!(eventually(async || !healthy().await).await, "NOT_SERVING never took the endpoint out");
    assert_eq!(gw.get("/x").await.status, 503, "no healthy endpoint");

    reporter.set_service_status("users.v1.Users", ServingStatus::Serving).await;
    assert!(eventually(async || healthy().await).await, "SERVING never brought it back");
    assert_eq!(gw.get("/x").await.status, 200);

    // An unknown service (grpc-status NOT_FOUND) fails the check too.
    reporter.clear_service_status("users.v1.Users").await;
    assert!(eventually(async || !healthy().await).await, "an unknown service passed the check");
}

/// The same health service over TLS (`config`, ALPN h2), served by hyper.
async fn grpc_health_server_tls(config: std::sync::Arc<rustls::ServerConfig>) -> (SocketAddr, HealthReporter) {
    let (reporter, service) = health_service().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let call = hyper::service::service_fn(move |request| {
                    let mut service = service.clone();
                    async move { tower::Service::call(&mut service, request).await }
                });
                let http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = http2.serve_connection(TokioIo::new(tls), call).await;
            });
        }
    });
    (addr, reporter)
}

#[tokio::test]
async fn grpc_health_checks_speak_tls_to_https_endpoints() {
    let ca = TestCa::new("grpc health CA");
    let (addr, reporter) = grpc_health_server_tls(ca.leaf(&["localhost"]).server_config(&["h2"], None)).await;
    let dir = TempDir::new();
    std::fs::write(dir.0.join("ca.pem"), ca.cert_pem()).unwrap();
    // One service trusts the test CA; the other (webpki roots) does not, so its checks
    // fail the TLS handshake, which a TCP connect check would not notice.
    let check = "health_check = { kind = \"grpc\", interval = \"50ms\", timeout = \"500ms\", healthy_threshold = 1, unhealthy_threshold = 1 }";
    let port = addr.port();
    let config = format!(
        r#"
[services.trusted]
endpoints = ["https://localhost:{port}"]
ca_file = "ca.pem"
{check}
[services.untrusted]
endpoints = ["https://localhost:{port}"]
{check}
[[routes]]
name = "r"
path_prefix = "/"
service = "trusted"
"#
    );
    let gw = TestGateway::start_in(dir, &config, "").await;
    let healthy = async |service: &str| {
        let services = gw.admin_get("/admin/services").await.json();
        let service = services.as_array().unwrap().iter().find(|s| s["name"] == service).unwrap().clone();
        service["endpoints"][0]["healthy"] == true
    };
    assert!(eventually(async || !healthy("untrusted").await).await, "an untrusted certificate passed the check");
    assert!(healthy("trusted").await);

    reporter.set_service_status("", ServingStatus::NotServing).await;
    assert!(eventually(async || !healthy("trusted").await).await, "NOT_SERVING over TLS never took it out");
    assert_eq!(gw.get("/x").await.status, 503);
    reporter.set_service_status("", ServingStatus::Serving).await;
    assert!(eventually(async || healthy("trusted").await).await, "SERVING over TLS never brought it back");
}
