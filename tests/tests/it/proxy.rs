//! The proxy core: headers, bodies, upstream failures.

use std::time::Duration;

use bytes::Bytes;
use gateway_tests::{raw, Backend, TestGateway};
use http::Request;
use http_body_util::Full;

fn one_service(backend: &Backend, extra_route_keys: &str) -> String {
    format!(
        r#"
[services.echo]
endpoints = ["http://{}"]
timeout = "500ms"

[[routes]]
name = "all"
path_prefix = "/"
service = "echo"
{extra_route_keys}
"#,
        backend.addr
    )
}

#[tokio::test]
async fn forwards_request_and_sets_forwarding_headers() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&one_service(&backend, "")).await;
    let resp = gw
        .request(
            Request::get("/hello?x=1")
                .header("host", "api.test")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-forwarded-proto", "https")
                .header("x-real-ip", "6.6.6.6")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status, 200);
    let seen = backend.last();
    assert_eq!(seen.target, "/hello?x=1");
    assert_eq!(seen.header("host"), Some("api.test"), "the client's Host is forwarded");
    // 127.0.0.1 is not trusted in this config: the client's claims are replaced.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.test"));
    let id = resp.header("x-request-id").unwrap();
    assert_eq!(seen.header("x-request-id"), Some(id), "the same request id upstream and back");
    assert_eq!(id.len(), 32);
}

#[tokio::test]
async fn trusted_proxy_chain_is_extended() {
    let backend = Backend::start().await;
    let gw = TestGateway::start_with_server(&one_service(&backend, ""), "trusted_proxies = [\"127.0.0.1/32\"]").await;
    let req = Request::get("/").header("host", "a").header("x-forwarded-for", "203.0.113.5");
    gw.request(req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(backend.last().header("x-forwarded-for"), Some("203.0.113.5, 127.0.0.1"));
}

#[tokio::test]
async fn sane_request_id_is_kept_and_insane_replaced() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&one_service(&backend, "")).await;
    let req = Request::get("/").header("host", "a").header("x-request-id", "abc-123");
    let resp = gw.request(req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(resp.header("x-request-id"), Some("abc-123"));
    assert_eq!(backend.last().header("x-request-id"), Some("abc-123"));
    let req = Request::get("/").header("host", "a").header("x-request-id", "bad id with spaces");
    let resp = gw.request(req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_ne!(resp.header("x-request-id"), Some("bad id with spaces"));
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_cross_either_way() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&one_service(&backend, "")).await;
    let req = Request::get("/hop")
        .header("host", "a")
        .header("connection", "x-client-secret")
        .header("x-client-secret", "1")
        .header("proxy-authorization", "Basic eA==")
        .header("te", "gzip")
        .header("x-kept", "1");
    let resp = gw.request(req.body(Full::new(Bytes::new())).unwrap()).await;
    let seen = backend.last();
    assert_eq!(seen.header("x-client-secret"), None);
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(seen.header("te"), None);
    assert_eq!(seen.header("x-kept"), Some("1"));
    assert_eq!(resp.header("x-backend-secret"), None);
    assert_eq!(resp.header("keep-alive"), None);
    assert_eq!(resp.header("x-kept"), Some("1"));
}

#[tokio::test]
async fn large_body_arrives_intact_both_ways() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&one_service(&backend, "")).await;
    let body: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let req = Request::post("/body").header("host", "a").body(Full::new(Bytes::from(body.clone()))).unwrap();
    let resp = gw.request(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body == body, "body changed on the way");
}

#[tokio::test]
async fn declared_body_over_the_limit_is_413_before_upstream() {
    let backend = Backend::start().await;
    let gw = TestGateway::start_with_server(&one_service(&backend, ""), "max_body_bytes = 1024").await;
    let req = Request::post("/body").header("host", "a").body(Full::new(Bytes::from(vec![b'x'; 2048]))).unwrap();
    let resp = gw.request(req).await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.error_code(), "payload_too_large");
    assert!(backend.seen().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let backend = Backend::start().await;
    let gw = TestGateway::start_with_server(&one_service(&backend, ""), "max_body_bytes = 1024").await;
    let chunk = "x".repeat(800);
    let request = format!(
        "POST /body HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn connect_failure_is_502() {
    // Reserve a port and close it, so nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gw = TestGateway::start(&format!(
        "[services.gone]\nendpoints = [\"http://{closed}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"gone\"\n"
    ))
    .await;
    let resp = gw.get("/").await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.error_code(), "bad_gateway");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.json()["error"]["request_id"].is_string());
}

#[tokio::test]
async fn upstream_reset_is_502() {
    // A backend that reads the request and closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let gw = TestGateway::start(&format!(
        "[services.rude]\nendpoints = [\"http://{addr}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"rude\"\n"
    ))
    .await;
    let resp = gw.get("/").await;
    assert_eq!(resp.status, 502);
}

#[tokio::test]
async fn upstream_with_invalid_framing_is_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
                .await;
        }
    });
    let gw = TestGateway::start(&format!(
        "[services.bad]\nendpoints = [\"http://{addr}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"bad\"\n"
    ))
    .await;
    assert_eq!(gw.get("/").await.status, 502);
}

#[tokio::test]
async fn slow_upstream_is_504_within_the_route_timeout() {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&one_service(&backend, "timeout = \"200ms\"")).await;
    let started = std::time::Instant::now();
    let resp = gw.get("/slow/3000").await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.error_code(), "gateway_timeout");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn round_robin_spreads_over_static_endpoints() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let gw = TestGateway::start(&format!(
        "[services.two]\nendpoints = [\"http://{}\", \"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"two\"\n",
        a.addr, b.addr
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(gw.get("/").await.status, 200);
    }
    assert_eq!(a.seen().len(), 2);
    assert_eq!(b.seen().len(), 2);
}

#[tokio::test]
async fn grpc_callers_get_the_grpc_error_form() {
    let gw = TestGateway::start("[services.none]\nendpoints = [\"http://127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath = \"/only\"\nservice = \"none\"\n").await;
    let req = Request::post("/pkg.Svc/Method")
        .header("host", "a")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = gw.request(req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("5"));
}
