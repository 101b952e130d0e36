//! gRPC specifics of the proxy: the `grpc-timeout` deadline, and gRPC-Web (binary and
//! text) translated to gRPC for the upstream and back.
//!
//! gRPC-Web differs from gRPC in three ways the gateway bridges: its content types
//! (`application/grpc-web[-text][+proto]`), its trailers (sent as a last length-prefixed
//! frame with the flag byte `0x80` in the body, since browsers cannot read HTTP trailers),
//! and, in the text form, base64 over the whole body.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use gateway_core::Body;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

/// The header a gRPC caller states its deadline in.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The deadline of a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`). Anything else is no deadline.
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (digits, unit) = bytes.split_at(bytes.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value: milliseconds while they fit in 8 digits, seconds after.
pub fn encode_timeout(left: Duration) -> HeaderValue {
    let millis = left.as_millis();
    let text = if millis < 100_000_000 { format!("{millis}m") } else { format!("{}S", left.as_secs().min(99_999_999)) };
    HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("0m"))
}

/// The gRPC-Web form of a request, read from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcWeb {
    /// `application/grpc-web[+proto]`: the gRPC framing as is.
    Binary,
    /// `application/grpc-web-text[+proto]`: the same, base64-encoded.
    Text,
}

impl GrpcWeb {
    /// The gRPC-Web form of a request with these headers, if it is one.
    pub fn of(headers: &HeaderMap) -> Option<GrpcWeb> {
        let ct = headers.get(CONTENT_TYPE)?.as_bytes();
        let rest = ct.strip_prefix(b"application/grpc-web")?;
        if rest.starts_with(b"-text") {
            Some(GrpcWeb::Text)
        } else if rest.is_empty() || rest.starts_with(b"+") || rest.starts_with(b";") {
            Some(GrpcWeb::Binary)
        } else {
            None
        }
    }

    /// Turn the request headers into gRPC's: content type, `te: trailers`, no length
    /// (the text form's body shrinks when decoded).
    pub fn to_grpc_request(self, headers: &mut HeaderMap) {
        let suffix = self.suffix(headers);
        let grpc = HeaderValue::try_from(format!("application/grpc{suffix}"))
            .unwrap_or(HeaderValue::from_static("application/grpc"));
        headers.insert(CONTENT_TYPE, grpc);
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        headers.remove(CONTENT_LENGTH);
    }

    /// The request body for the upstream: the text form decoded (browsers send whole,
    /// small bodies: gRPC-Web has no client streaming), the binary form as it came.
    pub fn decode_body(self, body: Bytes) -> Result<Bytes, base64::DecodeError> {
        match self {
            GrpcWeb::Binary => Ok(body),
            GrpcWeb::Text => decode_text(&body).map(Bytes::from),
        }
    }

    /// Turn an upstream gRPC answer into gRPC-Web: its content type, and a body whose
    /// trailers become the final `0x80` frame (base64 in the text form).
    pub fn to_grpc_web_response(self, response: http::Response<Body>) -> http::Response<Body> {
        let (mut parts, body) = response.into_parts();
        let suffix = self.suffix(&parts.headers);
        let ct = match self {
            GrpcWeb::Binary => format!("application/grpc-web{suffix}"),
            GrpcWeb::Text => format!("application/grpc-web-text{suffix}"),
        };
        if let Ok(ct) = HeaderValue::try_from(ct) {
            parts.headers.insert(CONTENT_TYPE, ct);
        }
        parts.headers.remove(CONTENT_LENGTH);
        http::Response::from_parts(parts, Body::boxed(GrpcWebBody { inner: body, form: self, done: false }))
    }

    /// The content type of a gateway-made gRPC error answer to this caller.
    pub fn error_content_type(self) -> HeaderValue {
        match self {
            GrpcWeb::Binary => HeaderValue::from_static("application/grpc-web+proto"),
            GrpcWeb::Text => HeaderValue::from_static("application/grpc-web-text+proto"),
        }
    }

    /// `+proto`, `+json`, ... as the content type names it (empty when it names none).
    fn suffix(self, headers: &HeaderMap) -> String {
        let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        ct.find('+').map(|i| ct[i..].split(';').next().unwrap_or("").trim().to_owned()).unwrap_or_default()
    }
}

/// Base64 as gRPC-Web text clients send it: padded chunks one after the other (each a
/// whole number of 4-character groups), so padding may appear mid-stream.
fn decode_text(text: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    let text: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut start = 0;
    for (group, chunk) in text.chunks(4).enumerate() {
        let end = group * 4 + chunk.len();
        if chunk.ends_with(b"=") || end == text.len() {
            STANDARD.decode_vec(&text[start..end], &mut out)?;
            start = end;
        }
    }
    Ok(out)
}

pin_project_lite::pin_project! {
    /// An upstream gRPC body as gRPC-Web: data as is (or base64), trailers as a last frame.
    struct GrpcWebBody {
        #[pin]
        inner: Body,
        form: GrpcWeb,
        done: bool,
    }
}

impl http_body::Body for GrpcWebBody {
    type Data = Bytes;
    type Error = gateway_core::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            None => {
                *this.done = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    *this.done = true;
                    trailer_frame(&trailers)
                }
                Err(_) => return Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
            },
        };
        let data = match this.form {
            GrpcWeb::Binary => data,
            GrpcWeb::Text => Bytes::from(STANDARD.encode(&data)),
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// gRPC-Web's trailer frame: flag `0x80`, a 4-byte length, then `name:value\r\n` lines.
fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = BytesMut::new();
    for (name, value) in trailers {
        block.put_slice(name.as_str().as_bytes());
        block.put_u8(b':');
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    frame.put_u32(block.len() as u32);
    frame.put_slice(&block);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn timeouts_parse_by_the_grpc_grammar() {
        let t = |s: &str| parse_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(t("300m"), Some(Duration::from_millis(300)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5M"), Some(Duration::from_secs(300)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10", "10x", "-1m", "1.5S", " 1m", "soon"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timeouts_encode_in_eight_digits() {
        assert_eq!(encode_timeout(Duration::from_millis(250)), "250m");
        assert_eq!(encode_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(parse_timeout(&encode_timeout(Duration::from_millis(1234))), Some(Duration::from_millis(1234)));
    }

    #[test]
    fn grpc_web_forms_are_told_by_content_type() {
        let of = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            GrpcWeb::of(&h)
        };
        assert_eq!(of("application/grpc-web"), Some(GrpcWeb::Binary));
        assert_eq!(of("application/grpc-web+proto"), Some(GrpcWeb::Binary));
        assert_eq!(of("application/grpc-web-text"), Some(GrpcWeb::Text));
        assert_eq!(of("application/grpc-web-text+proto"), Some(GrpcWeb::Text));
        assert_eq!(of("application/grpc"), None);
        assert_eq!(of("application/grpc-webby"), None);
        assert_eq!(of("text/plain"), None);
    }

    #[test]
    fn request_headers_become_grpc() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc-web-text+proto"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        GrpcWeb::Text.to_grpc_request(&mut h);
        assert_eq!(h[CONTENT_TYPE], "application/grpc+proto");
        assert_eq!(h[http::header::TE], "trailers");
        assert!(!h.contains_key(CONTENT_LENGTH));
    }

    #[test]
    fn text_bodies_decode_with_padding_mid_stream() {
        let mut text = STANDARD.encode(b"ab");
        text.push_str(&STANDARD.encode(b"cdef"));
        text.push_str("\r\n");
        assert_eq!(GrpcWeb::Text.decode_body(Bytes::from(text)).unwrap(), Bytes::from_static(b"abcdef"));
        assert!(GrpcWeb::Text.decode_body(Bytes::from_static(b"!!!!")).is_err());
        assert_eq!(GrpcWeb::Binary.decode_body(Bytes::from_static(b"raw")).unwrap(), Bytes::from_static(b"raw"));
    }

    #[tokio::test]
    async fn trailers_become_the_last_frame() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body = http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\x01x"))
            .map_err(|never| -> std::io::Error { match never {} })
            .with_trailers(async move { Some(Ok(trailers)) });
        let mut response = http::Response::new(Body::boxed(body));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));

        let web = GrpcWeb::Binary.to_grpc_web_response(response);
        assert_eq!(web.headers()[CONTENT_TYPE], "application/grpc-web+proto");
        let collected = web.into_body().collect().await.unwrap();
        assert!(collected.trailers().is_none(), "trailers travel in the body");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\x01x\x80\0\0\0\x0fgrpc-status:0\r\n"));
    }

    #[tokio::test]
    async fn the_text_form_is_base64_per_frame() {
        let body = http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\x01x"))
            .map_err(|never| -> std::io::Error { match never {} });
        let web = GrpcWeb::Text.to_grpc_web_response(http::Response::new(Body::boxed(body)));
        assert_eq!(web.headers()[CONTENT_TYPE], "application/grpc-web-text");
        let bytes = web.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(decode_text(&bytes).unwrap(), b"\0\0\0\0\x01x");
    }
}
