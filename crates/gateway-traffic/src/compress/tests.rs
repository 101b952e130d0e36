use std::time::Duration;

use async_compression::tokio::write::{BrotliDecoder, GzipDecoder, ZstdDecoder};
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::testutil::ChannelBody;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, HeaderValue::from_static(v));
    }
    h
}

fn accept(value: &'static str) -> Option<Encoding> {
    Encoding::negotiate(&headers(&[("accept-encoding", value)]))
}

/// Decompresses `data` with a write-side decoder, flushing so that a stream cut after a sync
/// flush decodes as far as it goes.
async fn decode(encoding: Encoding, data: &[u8], finished: bool) -> Vec<u8> {
    async fn run<W: AsyncWrite + Unpin>(mut w: W, data: &[u8], finished: bool) -> W {
        w.write_all(data).await.expect("valid stream");
        if finished {
            w.shutdown().await.expect("complete stream");
        } else {
            w.flush().await.expect("valid prefix");
        }
        w
    }
    match encoding {
        Encoding::Gzip => run(GzipDecoder::new(Vec::new()), data, finished).await.into_inner(),
        Encoding::Brotli => run(BrotliDecoder::new(Vec::new()), data, finished).await.into_inner(),
        Encoding::Zstd => run(ZstdDecoder::new(Vec::new()), data, finished).await.into_inner(),
    }
}

#[test]
fn negotiation() {
    assert_eq!(Encoding::negotiate(&HeaderMap::new()), None);
    assert_eq!(accept("gzip"), Some(Encoding::Gzip));
    assert_eq!(accept("gzip, deflate, br, zstd"), Some(Encoding::Brotli), "ties: br first");
    assert_eq!(accept("gzip, zstd"), Some(Encoding::Zstd), "ties: zstd before gzip");
    assert_eq!(accept("br;q=0.5, gzip;q=0.8, zstd;q=0.7"), Some(Encoding::Gzip));
    assert_eq!(accept("br;q=0, gzip"), Some(Encoding::Gzip));
    assert_eq!(accept("br;q=0, gzip;q=0"), None);
    assert_eq!(accept("*"), Some(Encoding::Brotli));
    assert_eq!(accept("*;q=0.5, gzip"), Some(Encoding::Gzip));
    assert_eq!(accept("*, br;q=0"), Some(Encoding::Zstd));
    assert_eq!(accept("identity"), None);
    assert_eq!(accept("identity;q=1, gzip;q=0.5"), None, "identity explicitly preferred");
    assert_eq!(accept("GZIP;Q=0.9"), Some(Encoding::Gzip));
    assert_eq!(accept("x-gzip"), Some(Encoding::Gzip));
    assert_eq!(accept("gzip;q=2, br;q=abc"), None, "malformed q-values are ignored");
    assert_eq!(accept("deflate, compress"), None);
    let two = {
        let mut h = headers(&[("accept-encoding", "gzip;q=0.4")]);
        h.append(ACCEPT_ENCODING, HeaderValue::from_static("zstd;q=0.6"));
        h
    };
    assert_eq!(Encoding::negotiate(&two), Some(Encoding::Zstd), "several headers");
}

#[test]
fn decisions() {
    let req = headers(&[("accept-encoding", "gzip, br")]);
    let get = &Method::GET;
    let ok = StatusCode::OK;
    let json = headers(&[("content-type", "application/json; charset=utf-8"), ("content-length", "5000")]);
    assert_eq!(should_compress(get, &req, ok, &json), Some(Encoding::Brotli));
    assert_eq!(should_compress(get, &HeaderMap::new(), ok, &json), None, "no accept-encoding");
    assert_eq!(should_compress(&Method::HEAD, &req, ok, &json), None);
    for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED, StatusCode::PARTIAL_CONTENT, StatusCode::CONTINUE]
    {
        assert_eq!(should_compress(get, &req, status, &json), None, "{status}");
    }
    assert_eq!(should_compress(get, &req, StatusCode::NOT_FOUND, &json), Some(Encoding::Brotli));
    let types = [
        ("text/html", true),
        ("text/plain;charset=utf-8", true),
        ("application/javascript", true),
        ("application/xml", true),
        ("application/problem+json", true),
        ("application/atom+xml", true),
        ("image/svg+xml", true),
        ("TEXT/CSS", true),
        ("text/event-stream", false),
        ("application/grpc", false),
        ("application/grpc+proto", false),
        ("application/grpc-web+json", false),
        ("image/png", false),
        ("video/mp4", false),
        ("application/zip", false),
        ("application/octet-stream", false),
        ("nonsense", false),
    ];
    for (ct, expected) in types {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        assert_eq!(should_compress(get, &req, ok, &h).is_some(), expected, "{ct}");
    }
    assert_eq!(should_compress(get, &req, ok, &HeaderMap::new()), None, "no content-type");
    let encoded = headers(&[("content-type", "text/html"), ("content-encoding", "gzip")]);
    assert_eq!(should_compress(get, &req, ok, &encoded), None, "already encoded");
    let identity = headers(&[("content-type", "text/html"), ("content-encoding", "identity")]);
    assert_eq!(should_compress(get, &req, ok, &identity), Some(Encoding::Brotli));
    let small = headers(&[("content-type", "text/html"), ("content-length", "1023")]);
    assert_eq!(should_compress(get, &req, ok, &small), None, "small");
    let exact = headers(&[("content-type", "text/html"), ("content-length", "1024")]);
    assert_eq!(should_compress(get, &req, ok, &exact), Some(Encoding::Brotli));
    let no_transform = headers(&[("content-type", "text/html"), ("cache-control", "public, no-transform")]);
    assert_eq!(should_compress(get, &req, ok, &no_transform), None);
}

#[test]
fn response_headers_are_fixed() {
    let mut response = Response::new(Full::new(Bytes::from_static(b"x")));
    let h = response.headers_mut();
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("1"));
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(ETAG, HeaderValue::from_static("\"abc\""));
    h.insert(VARY, HeaderValue::from_static("accept-language"));
    let compressed = compress_response(response, Encoding::Zstd);
    let h = compressed.headers();
    assert_eq!(h[CONTENT_ENCODING], "zstd");
    assert!(h.get(CONTENT_LENGTH).is_none());
    assert!(h.get(ACCEPT_RANGES).is_none());
    assert_eq!(h[ETAG], "W/\"abc\"");
    let vary: Vec<_> = h.get_all(VARY).iter().collect();
    assert_eq!(vary, ["accept-language", "accept-encoding"]);

    let mut response = Response::new(Full::new(Bytes::new()));
    response.headers_mut().insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    response.headers_mut().insert(ETAG, HeaderValue::from_static("W/\"weak\""));
    let compressed = compress_response(response, Encoding::Gzip);
    assert_eq!(compressed.headers().get_all(VARY).iter().count(), 1, "not added twice");
    assert_eq!(compressed.headers()[ETAG], "W/\"weak\"");
}

fn sample(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("{{\"id\":{i},\"name\":\"user-{}\",\"active\":{}}},", i * 7 % 1000, i.is_multiple_of(3)).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn round_trip_each_encoding() {
    let original = sample(200_000);
    for encoding in [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd] {
        let (tx, source) = ChannelBody::new();
        for chunk in original.chunks(7_000) {
            tx.send(Bytes::copy_from_slice(chunk)).expect("open");
        }
        drop(tx);
        let compressed = CompressedBody::new(source, encoding).collect().await.expect("compresses").to_bytes();
        assert!(compressed.len() < original.len() / 3, "{encoding:?}: {} bytes", compressed.len());
        assert_eq!(decode(encoding, &compressed, true).await, original, "{encoding:?}");
    }
}

#[tokio::test]
async fn empty_and_full_bodies() {
    for encoding in [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd] {
        let body = CompressedBody::new(Full::new(Bytes::new()), encoding);
        let compressed = body.collect().await.expect("compresses").to_bytes();
        assert_eq!(decode(encoding, &compressed, true).await, b"");
        let body = CompressedBody::new(Full::new(Bytes::from_static(b"hello hello hello")), encoding);
        assert!(!body.is_end_stream());
        let compressed = body.collect().await.expect("compresses").to_bytes();
        assert_eq!(decode(encoding, &compressed, true).await, b"hello hello hello");
    }
}

#[tokio::test]
async fn streams_before_the_source_ends() {
    for encoding in [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd] {
        let (tx, source) = ChannelBody::new();
        let mut body = CompressedBody::new(source, encoding);
        tx.send(Bytes::from_static(b"event one: the first chunk of a slow stream\n")).expect("open");
        // The source stays open: the first chunk must still come out, decodable on its own.
        let mut received = Vec::new();
        while decode(encoding, &received, false).await != b"event one: the first chunk of a slow stream\n" {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("{encoding:?}: first chunk held back"))
                .expect("a frame")
                .expect("ok");
            received.extend_from_slice(&frame.into_data().expect("data"));
        }
        tx.send(Bytes::from_static(b"event two\n")).expect("open");
        drop(tx);
        let rest = body.collect().await.expect("ok").to_bytes();
        received.extend_from_slice(&rest);
        assert_eq!(
            decode(encoding, &received, true).await,
            b"event one: the first chunk of a slow stream\nevent two\n",
            "{encoding:?}"
        );
    }
}

#[tokio::test]
async fn body_errors_pass_through() {
    struct Failing;
    impl Body for Failing {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(Err(std::io::Error::other("upstream reset"))))
        }
    }
    let err = CompressedBody::new(Failing, Encoding::Gzip).collect().await.expect_err("fails");
    assert_eq!(err.to_string(), "upstream reset");
}
