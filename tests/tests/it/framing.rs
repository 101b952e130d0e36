//! SPEC.md "Strict parsing": ambiguous requests get 400 and close, nothing goes upstream.

use std::time::Duration;

use gateway_tests::{raw, Backend, TestGateway};

async fn setup() -> (Backend, TestGateway) {
    let backend = Backend::start().await;
    let gw = TestGateway::start(&format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nservice = \"echo\"\n",
        backend.addr
    ))
    .await;
    (backend, gw)
}

async fn assert_refused(gw: &TestGateway, backend: &Backend, request: &str) {
    let answer = raw(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "expected 400 for {request:?}, got {answer:?}");
    assert!(backend.seen().is_empty(), "nothing of {request:?} may go upstream");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() {
    let (backend, gw) = setup().await;
    assert_refused(
        &gw,
        &backend,
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_refused(
        &gw,
        &backend,
        "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn differing_content_lengths_are_400() {
    let (backend, gw) = setup().await;
    assert_refused(&gw, &backend, "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd")
        .await;
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked_is_400() {
    let (backend, gw) = setup().await;
    assert_refused(&gw, &backend, "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
        .await;
    assert_refused(&gw, &backend, "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: identity\r\n\r\n").await;
}

#[tokio::test]
async fn obs_fold_and_nul_in_head_are_400() {
    let (backend, gw) = setup().await;
    assert_refused(&gw, &backend, "GET / HTTP/1.1\r\nhost: a\r\nx-folded: a\r\n b\r\n\r\n").await;
    assert_refused(&gw, &backend, "GET / HTTP/1.1\r\nhost: a\r\nx-nul: a\u{0}b\r\n\r\n").await;
}

#[tokio::test]
async fn fragment_in_target_is_400() {
    let (backend, gw) = setup().await;
    assert_refused(&gw, &backend, "GET /a#frag HTTP/1.1\r\nhost: a\r\n\r\n").await;
}

#[tokio::test]
async fn forward_proxy_requests_are_refused() {
    let (backend, gw) = setup().await;
    assert_refused(&gw, &backend, "GET http://evil.example/ HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_refused(&gw, &backend, "CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n").await;
}

#[tokio::test]
async fn absolute_form_matching_host_is_served() {
    let (backend, gw) = setup().await;
    let answer =
        raw(gw.addr, b"GET http://a/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n", Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend.last().target, "/x");
}

#[tokio::test]
async fn oversized_head_is_431() {
    let (backend, gw) = setup().await;
    let big = "a".repeat(200_000);
    let answer =
        raw(gw.addr, format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n").as_bytes(), Duration::from_secs(5))
            .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn long_target_is_414_and_large_head_431_with_json() {
    let (backend, gw) = setup().await;
    let long = "a".repeat(17_000);
    let answer =
        raw(gw.addr, format!("GET /{long} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer:.80}");
    assert!(answer.contains("uri_too_long"), "{answer:.300}");
    let big = "b".repeat(17_000);
    let answer =
        raw(gw.addr, format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n").as_bytes(), Duration::from_secs(5))
            .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    assert!(answer.contains("headers_too_large"), "{answer:.300}");
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn bare_lf_in_head_is_400() {
    let (backend, gw) = setup().await;
    assert_refused(&gw, &backend, "GET / HTTP/1.1\r\nhost: a\nx-other: b\r\n\r\n").await;
}

#[tokio::test]
async fn pipelined_requests_with_bodies_are_each_judged() {
    let (backend, gw) = setup().await;
    // A clean POST with a body, then a smuggling attempt on the same connection: the
    // first is served, the second refused, and only the first reaches the backend.
    let answer = raw(
        gw.addr,
        b"POST /one HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhelloGET /two#x HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/one");
}
