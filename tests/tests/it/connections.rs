//! Slow and greedy clients over real sockets: the caps on open connections (overall and
//! per client address, refused at accept and counted), and the two timers between
//! requests (`header_read_timeout` for a started head, `idle_timeout` for a quiet
//! keep-alive connection, HTTP/2 included).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway_tests::frames::{kind, Block, H2};
use gateway_tests::{eventually, Backend, KeepAlive, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn echo(backend: &Backend) -> String {
    format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nservice = \"echo\"\n",
        backend.addr
    )
}

/// A TCP connection to `to` from the loopback address `from` (all of 127/8 is local).
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// A kept-alive connection from `from` that has been served once.
async fn served_from(from: &str, to: SocketAddr) -> KeepAlive {
    let mut conn = KeepAlive::over(connect_from(from, to).await.unwrap()).await;
    assert_eq!(conn.get("/").await.unwrap().status, 200);
    conn
}

/// Whether a new connection from `from` is closed at once, without an answer.
async fn refused_from(from: &str, to: SocketAddr) -> bool {
    // The reset may come before the handshake is even seen as complete.
    let Ok(mut stream) = connect_from(from, to).await else { return true };
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

/// An echo backend and the gateway in front of it with these two timers.
async fn timed(header_read_timeout: &str, idle_timeout: &str) -> (Backend, TestGateway) {
    let backend = Backend::start().await;
    let timers = format!("header_read_timeout = \"{header_read_timeout}\"\nidle_timeout = \"{idle_timeout}\"");
    let gw = TestGateway::start_with_server(&echo(&backend), &timers).await;
    (backend, gw)
}

async fn metric(gw: &TestGateway, line: &str) -> bool {
    String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).contains(line)
}

#[tokio::test]
async fn the_connection_past_max_connections_is_closed_at_accept() {
    let backend = Backend::start().await;
    let gw =
        TestGateway::start_with_server(&echo(&backend), "max_connections = 3\nmax_connections_per_client = 0").await;
    let mut open = Vec::new();
    for from in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        open.push(served_from(from, gw.addr).await);
    }
    assert!(refused_from("127.0.0.4", gw.addr).await, "the fourth connection is closed at once");
    for conn in &mut open {
        assert_eq!(conn.get("/").await.unwrap().status, 200, "the three stay open and served");
    }
    assert_eq!(backend.seen().len(), 6, "nothing of the refused connection went upstream");
    drop(open.pop());
    // The gateway sees the close on its own time: poll until the slot is free again.
    assert!(eventually(async || !refused_from("127.0.0.4", gw.addr).await).await, "a freed slot is reused");
    assert!(metric(&gw, r#"gateway_connections_refused_total{reason="global_limit"} "#).await);
    assert!(!metric(&gw, r#"gateway_connections_refused_total{reason="global_limit"} 0"#).await);
}

#[tokio::test]
async fn one_client_address_cannot_take_more_than_its_share() {
    let backend = Backend::start().await;
    // 127.0.0.1 is a trusted proxy (a load balancer): the per-client cap is not for it.
    let gw = TestGateway::start_with_server(
        &echo(&backend),
        "max_connections_per_client = 2\ntrusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await;
    let mut greedy = vec![served_from("127.0.0.2", gw.addr).await, served_from("127.0.0.2", gw.addr).await];
    assert!(refused_from("127.0.0.2", gw.addr).await, "a third connection from one address is refused");
    let _other = served_from("127.0.0.3", gw.addr).await;
    let _balancer: Vec<KeepAlive> =
        futures_util::future::join_all((0..4).map(|_| served_from("127.0.0.1", gw.addr))).await;
    for conn in &mut greedy {
        assert_eq!(conn.get("/").await.unwrap().status, 200);
    }
    drop(greedy.pop());
    assert!(eventually(async || !refused_from("127.0.0.2", gw.addr).await).await);
    assert!(metric(&gw, r#"gateway_connections_refused_total{reason="per_client_limit"} "#).await);
    assert!(metric(&gw, r#"gateway_connections_refused_total{reason="global_limit"} 0"#).await);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_header_read_timeout_then_closes() {
    let (backend, gw) = timed("200ms", "900ms").await;
    let mut conn = KeepAlive::open(gw.addr).await;
    assert_eq!(conn.get("/one").await.unwrap().status, 200);
    // Idle for twice the header timeout: still open, since no head was started.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(conn.get("/two").await.expect("the idle connection was kept").status, 200);
    let idle_from = Instant::now();
    assert!(conn.closed_within(Duration::from_secs(3)).await, "closed after idle_timeout");
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(800), "not before idle_timeout: {idle:?}");
    assert_eq!(backend.seen().len(), 2, "both requests went over the one connection");
}

/// Send `request` on `stream` and assert the answer starts with a 200.
async fn exchange_200(stream: &mut TcpStream, request: &[u8]) {
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
}

#[tokio::test]
async fn a_started_head_gets_header_read_timeout_even_after_idling() {
    let (backend, gw) = timed("300ms", "10s").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    exchange_200(&mut stream, b"GET /first HTTP/1.1\r\nhost: a\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Half a head, then nothing: closed about header_read_timeout after its first byte.
    stream.write_all(b"GET /second HTTP/1.1\r\nhost: a\r\nx-slow: ").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a started head is not waited for idle_timeout");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "{took:?}");
    // SPEC: 408 `request_timeout` when the head did not arrive in time, then the close.
    let answer = String::from_utf8_lossy(&rest);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["status"], 408);
    assert_eq!(body["error"]["code"], "request_timeout");
    let id = answer.lines().find_map(|l| l.strip_prefix("x-request-id: ")).expect("a request id");
    assert_eq!(body["error"]["request_id"], id);
    assert_eq!(backend.seen().len(), 1, "the half head never went upstream");
}

#[tokio::test]
async fn an_empty_line_after_a_request_is_not_a_stalled_head() {
    let (backend, gw) = timed("300ms", "10s").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    exchange_200(&mut stream, b"POST /first HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nok").await;
    // The CRLF old clients send after a POST body (RFC 9112 §2.2), then a pause longer
    // than header_read_timeout: no 408, the connection still serves the next request.
    stream.write_all(b"\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    exchange_200(&mut stream, b"GET /second HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(backend.seen().len(), 2);
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_without_an_answer() {
    let (backend, gw) = timed("300ms", "10s").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "closed after header_read_timeout");
    // Nothing was asked, so nothing is answered (a 408 here could be taken by the client
    // as the answer to the request it was about to send).
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway() {
    let (_backend, gw) = timed("200ms", "700ms").await;
    let mut h2 = H2::connect(gw.addr).await;
    h2.headers(1, &Block::request("GET", "/"), true).await.unwrap();
    let answer = h2.until(Duration::from_secs(5), |f| f.kind == kind::HEADERS && f.stream == 1).await;
    assert!(answer.is_some(), "the request was answered");
    let idle_from = Instant::now();
    let goaway = h2.until(Duration::from_secs(5), |f| f.kind == kind::GOAWAY).await;
    assert!(goaway.is_some(), "an idle HTTP/2 connection gets GOAWAY");
    assert!(idle_from.elapsed() >= Duration::from_millis(500), "{:?}", idle_from.elapsed());
    assert!(h2.closed_within(Duration::from_secs(3)).await);
}
