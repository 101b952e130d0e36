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

/// An HTTP/1.1 upstream on raw sockets that counts the connections it accepted. It answers
/// `ok` to every request; `/hold` gets a chunked head and one chunk, and the rest never
/// comes. With `close_after_each`, it closes every connection after its first answer,
/// without saying so (as an upstream whose keep-alive timeout just ran out).
async fn counting_upstream(
    close_after_each: bool,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    if head.starts_with("GET /hold ") {
                        let _ =
                            stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n").await;
                        std::future::pending::<()>().await;
                    }
                    if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                        return;
                    }
                    if close_after_each {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A gateway routing everything to a [`counting_upstream`], and that upstream's count.
async fn gateway_to_counting_upstream(
    close_after_each: bool,
) -> (TestGateway, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (addr, accepted) = counting_upstream(close_after_each).await;
    let config = format!("[services.raw]\nendpoints = [\"http://{addr}\"]\n[[routes]]\nname = \"raw\"\npath_prefix = \"/\"\nservice = \"raw\"\n");
    (TestGateway::start(&config).await, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_and_reused() {
    let (gw, accepted) = gateway_to_counting_upstream(false).await;
    for _ in 0..20 {
        let resp = gw.get("/a").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.as_ref(), b"ok");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "20 requests, one upstream connection");
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_costs_no_request() {
    let (gw, accepted) = gateway_to_counting_upstream(true).await;
    for i in 0..20 {
        let resp = gw.get("/a").await;
        assert_eq!(resp.status, 200, "request {i}: {:?}", resp.body);
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_request_never_waits_behind_a_response_still_streaming() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, accepted) = gateway_to_counting_upstream(false).await;
    // The first connection is kept and idle after this.
    assert_eq!(gw.get("/a").await.status, 200);
    // A response that never ends takes it...
    let mut held = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    held.write_all(b"GET /hold HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut head)).await.unwrap().unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    // ...and the next request gets a connection of its own at once.
    let resp = tokio::time::timeout(Duration::from_secs(2), gw.get("/b")).await.expect("not held up");
    assert_eq!(resp.status, 200);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// `n` GETs of `/a` through `gw` at once; their answers.
async fn concurrent_gets(gw: &TestGateway, n: usize) -> Vec<gateway_tests::Answer> {
    let addr = gw.addr;
    let calls: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { gateway_tests::send(addr, gateway_tests::get_with("/a", &[])).await }))
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

/// An h2c upstream that counts the connections it accepted and answers `ok`; `kill` closes
/// every connection open at that time.
async fn counting_h2c_upstream(
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>, tokio::sync::watch::Sender<u32>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let (kill, killed) = tokio::sync::watch::channel(0u32);
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut killed = killed.clone();
            killed.mark_unchanged();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = killed.changed() => {}
                }
            });
        }
    });
    (addr, accepted, kill)
}

#[tokio::test]
async fn an_h2c_upstream_connection_is_shared_and_replaced_when_it_dies() {
    use std::sync::atomic::Ordering;
    let (addr, accepted, kill) = counting_h2c_upstream().await;
    let config = format!("[services.h2]\nendpoints = [\"h2c://{addr}\"]\n[[routes]]\nname = \"h2\"\npath_prefix = \"/\"\nservice = \"h2\"\n");
    let gw = TestGateway::start(&config).await;
    for resp in concurrent_gets(&gw, 10).await {
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.as_ref(), b"ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "ten requests, one HTTP/2 connection");
    // The upstream drops its connections: the next request gets a new one, not an error.
    kill.send_modify(|n| *n += 1);
    assert!(gateway_tests::eventually(async || gw.get("/b").await.status == 200).await);
    assert_eq!(gw.get("/c").await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one new connection, shared again");
}

/// A listener whose accept queue is full: a new connection to it neither completes nor is
/// refused (the kernel drops the SYN), as with an endpoint that vanished from the network.
async fn unanswering_listener() -> (std::net::SocketAddr, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    // Never accepted: these fill the queue (its size is the backlog plus one).
    while let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
    {
        fill.push(stream);
    }
    std::mem::forget(listener);
    (addr, fill)
}

#[tokio::test]
async fn requests_to_an_h2c_endpoint_that_cannot_be_reached_fail_together_not_in_turn() {
    let (addr, _fill) = unanswering_listener().await;
    let config = format!(
        "[services.gone]\nendpoints = [\"h2c://{addr}\"]\nconnect_timeout = \"300ms\"\ntimeout = \"5s\"\n[[routes]]\nname = \"gone\"\npath_prefix = \"/\"\nservice = \"gone\"\n"
    );
    let gw = TestGateway::start(&config).await;
    let started = std::time::Instant::now();
    for resp in concurrent_gets(&gw, 5).await {
        assert_eq!(resp.status, 502, "{:?}", resp.body);
    }
    // One connect attempt's 300 ms for all five, not 300 ms each in turn.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "took {took:?}");
}
