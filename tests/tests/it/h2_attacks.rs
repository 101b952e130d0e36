//! HTTP/2 attacks with hand-built frames (h2c, prior knowledge): each asserts what the
//! client got, what the backend did NOT see, and that the gateway still serves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway_tests::frames::{flag, frame, kind, reason, rst_stream, Block, Frame, H2};
use gateway_tests::{full, Backend, Protocol, TestGateway, TestServer};
use http_body_util::BodyExt;

const WAIT: Duration = Duration::from_secs(5);

async fn gateway(backend: std::net::SocketAddr, server_keys: &str) -> TestGateway {
    let config = format!(
        "[services.echo]\nendpoints = [\"http://{backend}\"]\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nservice = \"echo\"\n"
    );
    TestGateway::start_with_server(&config, server_keys).await
}

/// An echo backend, the gateway in front of it, and a raw h2c connection to the gateway.
async fn setup(server_keys: &str) -> (Backend, TestGateway, H2) {
    let backend = Backend::start().await;
    let gw = gateway(backend.addr, server_keys).await;
    let h2 = H2::connect(gw.addr).await;
    (backend, gw, h2)
}

/// Whether `stream` gets a response head with `:status: 200` (entry 8 of the static
/// table: the byte 0x88).
async fn answered_200(h2: &mut H2, stream: u32) -> bool {
    let answer = h2.until(WAIT, |f| f.kind == kind::HEADERS && f.stream == stream).await;
    answer.is_some_and(|f| f.payload.first() == Some(&0x88))
}

/// A normal HTTP/2 request on a fresh connection is answered 200.
async fn still_serves(gw: &TestGateway) {
    let mut h2 = H2::connect(gw.addr).await;
    h2.headers(1, &Block::request("GET", "/healthy"), true).await.unwrap();
    assert!(answered_200(&mut h2, 1).await, "the gateway still answers");
}

fn goaway_with(code: u32) -> impl Fn(&Frame) -> bool {
    move |f| f.kind == kind::GOAWAY && f.error_code() == Some(code)
}

#[tokio::test]
async fn rapid_reset_gets_goaway_and_spares_the_backend() {
    let (backend, gw, mut h2) = setup("").await;
    // HEADERS then RST_STREAM, a thousand times, in one burst.
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            stream,
            &Block::request("GET", "/rr").0,
        ));
        burst.extend(rst_stream(stream, reason::CANCEL));
    }
    let _ = h2.send(&burst).await;
    let goaway = h2.until(WAIT, goaway_with(reason::ENHANCE_YOUR_CALM)).await;
    assert!(goaway.is_some(), "rapid reset is answered with GOAWAY ENHANCE_YOUR_CALM");
    assert!(h2.closed_within(WAIT).await);
    let hits = backend.seen().len();
    assert!(hits < 100, "the backend was hit {hits} times by 1000 reset streams");
    still_serves(&gw).await;
}

#[tokio::test]
async fn continuation_flood_closes_the_connection() {
    let (backend, gw, mut h2) = setup("").await;
    h2.send(&frame(kind::HEADERS, 0, 1, &Block::request("GET", "/flood").0)).await.unwrap();
    // CONTINUATION frames without END_HEADERS, forever (here: until the gateway closes).
    let piece = frame(kind::CONTINUATION, 0, 1, &Block::default().literal("x-flood", &[b'a'; 1000]).0);
    let mut sent = 0usize;
    while sent < 64 * 1024 * 1024 && h2.send(&piece).await.is_ok() {
        sent += piece.len();
    }
    let goaway = h2.until(WAIT, |f| f.kind == kind::GOAWAY).await;
    let code = goaway.as_ref().and_then(Frame::error_code);
    assert!(
        matches!(code, Some(reason::ENHANCE_YOUR_CALM | reason::PROTOCOL_ERROR)) || h2.closed_within(WAIT).await,
        "the flood ends the connection (GOAWAY {code:?})"
    );
    assert!(sent < 64 * 1024 * 1024, "the gateway stopped reading long before 64 MiB");
    assert!(backend.seen().is_empty());
    still_serves(&gw).await;
}

#[tokio::test]
async fn hpack_bomb_is_refused_without_reaching_the_backend() {
    let (backend, gw, mut h2) = setup("").await;
    // One 4 KiB header in the dynamic table, then 1000 one-byte references to it: a
    // 4 MB header list from a 5 KiB block.
    let bomb = Block::request("GET", "/bomb").indexed_literal("x-bomb", &[b'b'; 4000]).indexed(62, 1000);
    h2.headers(1, &bomb, true).await.unwrap();
    let refused = h2
        .until(WAIT, |f| {
            (f.kind == kind::RST_STREAM || f.kind == kind::HEADERS || f.kind == kind::GOAWAY) && f.stream <= 1
        })
        .await;
    let refused = refused.expect("the stream is refused, not left hanging");
    if refused.kind == kind::HEADERS {
        // 431 is not in the static table: `:status` (entry 8..14) with a literal value.
        assert_ne!(refused.payload.first(), Some(&0x88), "not a 200");
    }
    assert!(backend.seen().is_empty(), "nothing of the bomb went upstream");
    still_serves(&gw).await;
}

#[tokio::test]
async fn streams_past_max_concurrent_streams_are_refused() {
    let (backend, gw, mut h2) = setup("http2 = { max_concurrent_streams = 2 }").await;
    // Let the SETTINGS with the limit arrive (and be acknowledged) first.
    h2.until(WAIT, |f| f.kind == kind::SETTINGS && f.flags & flag::ACK != 0).await;
    // Three POSTs whose bodies never come: the first two stay open.
    for stream in [1, 3, 5] {
        h2.headers(stream, &Block::request("POST", "/body").literal("content-length", b"5"), false).await.unwrap();
    }
    let reset = h2.until(WAIT, |f| f.kind == kind::RST_STREAM).await.expect("a stream is refused");
    assert_eq!((reset.stream, reset.error_code()), (5, Some(reason::REFUSED_STREAM)));
    assert!(backend.seen().iter().all(|seen| seen.target == "/body"));
    assert!(backend.seen().len() <= 2, "the refused stream never went upstream");
    still_serves(&gw).await;
}

#[tokio::test]
async fn transfer_encoding_in_http2_is_a_stream_error() {
    let (backend, gw, mut h2) = setup("").await;
    let block = Block::request("POST", "/te").literal("transfer-encoding", b"chunked");
    h2.headers(1, &block, false).await.unwrap();
    h2.send(&frame(kind::DATA, flag::END_STREAM, 1, b"0\r\n\r\n")).await.unwrap();
    let reset = h2.until(WAIT, |f| f.kind == kind::RST_STREAM && f.stream == 1).await;
    assert_eq!(reset.and_then(|f| f.error_code()), Some(reason::PROTOCOL_ERROR));
    assert!(backend.seen().is_empty(), "the request was not forwarded");
    still_serves(&gw).await;
}

/// A backend that counts request heads and request bodies it read completely.
struct Counting {
    server: TestServer,
    heads: Arc<AtomicUsize>,
    whole_bodies: Arc<AtomicUsize>,
}

async fn counting_backend() -> Counting {
    let (heads, whole_bodies) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, w) = (heads.clone(), whole_bodies.clone());
    let server = TestServer::start(Protocol::Http1, move |req| {
        let (h, w) = (h.clone(), w.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            if req.into_body().collect().await.is_ok() {
                w.fetch_add(1, Ordering::SeqCst);
            }
            Ok(http::Response::new(full("ok")))
        }
    })
    .await;
    Counting { server, heads, whole_bodies }
}

#[tokio::test]
async fn content_length_that_disagrees_with_the_data_is_never_forwarded_whole() {
    let backend = counting_backend().await;
    let gw = gateway(backend.server.addr, "").await;
    let mut h2 = H2::connect(gw.addr).await;
    // Fewer bytes than declared, then more.
    h2.headers(1, &Block::request("POST", "/short").literal("content-length", b"10"), false).await.unwrap();
    h2.send(&frame(kind::DATA, flag::END_STREAM, 1, b"abc")).await.unwrap();
    h2.headers(3, &Block::request("POST", "/long").literal("content-length", b"3"), false).await.unwrap();
    h2.send(&frame(kind::DATA, flag::END_STREAM, 3, b"abcdefghij")).await.unwrap();
    for stream in [1, 3] {
        let reset = h2.until(WAIT, |f| f.kind == kind::RST_STREAM && f.stream == stream).await;
        assert_eq!(reset.and_then(|f| f.error_code()), Some(reason::PROTOCOL_ERROR), "stream {stream}");
    }
    // Let whatever was started upstream finish or fail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.whole_bodies.load(Ordering::SeqCst),
        0,
        "no body the client lied about reached the backend whole"
    );
    let heads = backend.heads.load(Ordering::SeqCst);
    let mut h2 = H2::connect(gw.addr).await;
    h2.headers(1, &Block::request("POST", "/fine").literal("content-length", b"3"), false).await.unwrap();
    h2.send(&frame(kind::DATA, flag::END_STREAM, 1, b"abc")).await.unwrap();
    assert!(answered_200(&mut h2, 1).await);
    assert_eq!(backend.whole_bodies.load(Ordering::SeqCst), 1);
    assert_eq!(backend.heads.load(Ordering::SeqCst), heads + 1);
}
