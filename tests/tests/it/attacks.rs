//! Requests that try to get past the gateway: each asserts what the client got, what the
//! backend did NOT see, and that the gateway still serves a normal request afterwards.

use std::time::Duration;

use bytes::Bytes;
use gateway_tests::{raw, Backend, TestGateway};
use http::Request;
use http_body_util::Full;

async fn setup() -> (Backend, Backend, TestGateway) {
    let public = Backend::start().await;
    let admin = Backend::start().await;
    let config = format!(
        r#"
[services.public]
endpoints = ["http://{}"]
[services.admin]
endpoints = ["http://{}"]
[[routes]]
name = "admin"
path_prefix = "/admin"
service = "admin"
allow_ips = ["10.0.0.0/8"]
[[routes]]
name = "public"
path_prefix = "/"
service = "public"
"#,
        public.addr, admin.addr
    );
    let gw = TestGateway::start(&config).await;
    (public, admin, gw)
}

async fn still_serves(gw: &TestGateway) {
    assert_eq!(gw.get("/healthy").await.status, 200, "the gateway still answers normal requests");
}

#[tokio::test]
async fn path_tricks_never_reach_the_fenced_route() {
    let (public, admin, gw) = setup().await;
    for path in ["/public/..;/admin", "/x/%2e%2e/admin", "/%2e%2e/admin", "/x/..%2Fadmin", "/admin%2f"] {
        let resp = gw.get(path).await;
        assert!(resp.status == 400 || resp.status == 403, "{path}: {}", resp.status);
    }
    // Double encoding is not decoded twice: it is a different, harmless path.
    assert_eq!(gw.get("/%252e%252e/admin").await.status, 200);
    assert_eq!(public.last().target, "/%252e%252e/admin");
    assert!(admin.seen().is_empty(), "nothing reached the fenced service");
    still_serves(&gw).await;
}

#[tokio::test]
async fn spoofed_client_addresses_do_not_open_the_fence() {
    let (public, admin, gw) = setup().await;
    let req = Request::get("/admin/panel")
        .header("host", "a")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-real-ip", "10.1.2.3")
        .header("forwarded", "for=10.1.2.3")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = gw.request(req).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "forbidden");
    assert!(admin.seen().is_empty());
    let req = Request::get("/x").header("host", "a").header("x-real-ip", "10.1.2.3").header("forwarded", "for=1.1.1.1");
    gw.request(req.body(Full::new(Bytes::new())).unwrap()).await;
    let seen = public.last();
    assert_eq!(seen.header("x-real-ip"), None, "client claims about the client are dropped");
    assert_eq!(seen.header("forwarded"), None);
    still_serves(&gw).await;
}

#[tokio::test]
async fn connection_cannot_remove_headers_the_gateway_sets() {
    let (public, _admin, gw) = setup().await;
    let req = Request::get("/x")
        .header("host", "a")
        .header("connection", "x-forwarded-for, x-request-id, x-forwarded-proto")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(gw.request(req).await.status, 200);
    let seen = public.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(seen.header("x-request-id").is_some());
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_never_forwarded() {
    let (public, _admin, gw) = setup().await;
    let attempts: &[&str] = &[
        // CL.TE and TE.CL
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nG",
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        // CL.CL, signed and overflowing lengths
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 99999999999999999999999\r\n\r\nabc",
        // obfuscated transfer-encoding
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: identity\r\n\r\n0\r\n\r\n",
        // double Host
        "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        // bare CR in a header value
        "GET / HTTP/1.1\r\nhost: a\r\nx-a: b\rc\r\n\r\n",
    ];
    for attempt in attempts {
        let answer = raw(gw.addr, attempt.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "expected 400 for {attempt:?}, got {answer:.60?}");
    }
    assert!(public.seen().is_empty(), "no smuggled request reached the backend: {:?}", public.seen());
    still_serves(&gw).await;
}

#[tokio::test]
async fn a_slowloris_head_is_cut_off() {
    let backend = Backend::start().await;
    let gw = TestGateway::start_with_server(
        &format!(
            "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\n",
            backend.addr
        ),
        "header_read_timeout = \"300ms\"",
    )
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(buf.starts_with(b"HTTP/1.1 408 "), "{}", String::from_utf8_lossy(&buf));
    assert!(backend.seen().is_empty());
}

/// Chunk-extension and chunk-size tricks that make naive parsers disagree on where a
/// chunked body ends: each gets one 400 and a closed connection, no request hidden in a
/// body ever reaches the backend as a request of its own, and the gateway keeps serving.
#[tokio::test]
async fn chunk_tricks_never_smuggle_a_request() {
    let (public, _admin, gw) = setup().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n";
    let bodies = [
        // an extension ended by a bare LF
        format!("5;a=b\nhello\r\n0\r\n\r\n{smuggled}"),
        // a quoted extension holding CRLF and a whole request
        format!("5;a=\"\r\n0\r\n\r\n{smuggled}\"\r\nhello\r\n0\r\n\r\n"),
        // a size that overflows 64 bits, and one with a 0x prefix
        format!("fffffffffffffffff5\r\nhello\r\n0\r\n\r\n{smuggled}"),
        format!("0x5\r\nhello\r\n0\r\n\r\n{smuggled}"),
        // a last chunk ended by bare LFs
        format!("0\n\n{smuggled}"),
        // whitespace before the size
        format!(" 5\r\nhello\r\n0\r\n\r\n{smuggled}"),
    ];
    for body in &bodies {
        let attempt = format!("POST /upload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n{body}");
        let answer = raw(gw.addr, attempt.as_bytes(), Duration::from_secs(5)).await;
        // One 400, then the connection closes (`raw` returned before its wait): the rest of
        // the bytes are never read as another request.
        assert!(answer.starts_with("HTTP/1.1 400"), "{body:?}: {answer:.200?}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{body:?}: {answer:.300?}");
        let seen: Vec<String> = public.seen().iter().map(|s| s.target.clone()).collect();
        assert!(!seen.iter().any(|t| t.contains("smuggled")), "smuggled past the gateway with {body:?}: {seen:?}");
    }
    still_serves(&gw).await;
}
