use std::borrow::Cow;
use std::fmt;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::{full, Body, RequestId, X_REQUEST_ID};

/// What went wrong, as the client will see it. Each kind has one status and one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    RequestTimeout,
    Unauthorized,
    Forbidden,
    RouteNotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UriTooLong,
    HeadersTooLarge,
    RateLimited,
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::RouteNotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable machine-readable code of SPEC.md.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RouteNotFound => "route_not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::ServiceUnavailable => "service_unavailable",
            ErrorKind::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The gRPC status a gRPC caller gets instead of the HTTP status.
    pub fn grpc_status(self) -> u16 {
        match self {
            ErrorKind::RouteNotFound => 5,                              // NOT_FOUND
            ErrorKind::Unauthorized => 16,                              // UNAUTHENTICATED
            ErrorKind::Forbidden => 7,                                  // PERMISSION_DENIED
            ErrorKind::RateLimited | ErrorKind::PayloadTooLarge => 8,   // RESOURCE_EXHAUSTED
            ErrorKind::GatewayTimeout | ErrorKind::RequestTimeout => 4, // DEADLINE_EXCEEDED
            ErrorKind::BadRequest
            | ErrorKind::UriTooLong
            | ErrorKind::HeadersTooLarge
            | ErrorKind::MethodNotAllowed => 3, // INVALID_ARGUMENT / UNIMPLEMENTED-ish
            ErrorKind::BadGateway | ErrorKind::ServiceUnavailable => 14, // UNAVAILABLE
        }
    }
}

/// Who caused a failure: decides logging level and whether a retry may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    Gateway,
}

/// Every failure on the data path. One function, [`GatewayError::into_response`], turns it
/// into what the client sees.
#[derive(Debug)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub blame: Blame,
    /// Whether sending the request again (to another endpoint) is safe and may help.
    pub retryable: bool,
    pub message: Cow<'static, str>,
    /// Extra response headers (`allow`, `retry-after`, `www-authenticate`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Close the client connection after answering (ambiguous framing).
    pub close: bool,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        let blame = match kind {
            ErrorKind::BadGateway | ErrorKind::GatewayTimeout => Blame::Upstream,
            ErrorKind::ServiceUnavailable => Blame::Gateway,
            _ => Blame::Client,
        };
        GatewayError { kind, blame, retryable: false, message: message.into(), headers: Vec::new(), close: false }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The one mapping from an error to a response: SPEC.md's JSON body, or for gRPC
    /// callers HTTP 200 with `grpc-status` and `grpc-message`.
    pub fn into_response(mut self, request_id: &RequestId, grpc: bool) -> Response<Body> {
        let mut builder = Response::builder();
        let headers = builder.headers_mut().expect("fresh builder has headers");
        headers.insert(X_REQUEST_ID, request_id.header_value().clone());
        if self.close {
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        for (name, value) in std::mem::take(&mut self.headers) {
            headers.append(name, value);
        }
        if grpc {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(self.kind.grpc_status()));
            let message = percent_encode_grpc(&self.message);
            if let Ok(value) = HeaderValue::from_str(&message) {
                headers.insert("grpc-message", value);
            }
            return builder.status(StatusCode::OK).body(Body::empty()).expect("valid response parts");
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = self.json_body(request_id);
        builder.status(self.kind.status()).body(full(body)).expect("valid response parts")
    }

    /// SPEC.md's JSON error body: `{"error": {"status", "code", "message", "request_id"}}`.
    pub fn json_body(&self, request_id: &RequestId) -> String {
        serde_json::json!({
            "error": {
                "status": self.kind.status().as_u16(),
                "code": self.kind.code(),
                "message": self.message,
                "request_id": request_id.as_str(),
            }
        })
        .to_string()
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for GatewayError {}

/// gRPC's `grpc-message` is percent-encoded (the gRPC HTTP/2 spec).
fn percent_encode_grpc(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn json_error_has_spec_shape() {
        let id = RequestId::generate();
        let resp = GatewayError::new(ErrorKind::MethodNotAllowed, "nope")
            .with_header(http::header::ALLOW, HeaderValue::from_static("GET"))
            .into_response(&id, false);
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["allow"], "GET");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["status"], 405);
        assert_eq!(v["error"]["code"], "method_not_allowed");
        assert_eq!(v["error"]["request_id"], id.as_str());
    }

    #[test]
    fn grpc_error_is_status_200_with_grpc_status() {
        let id = RequestId::generate();
        let resp = GatewayError::new(ErrorKind::ServiceUnavailable, "down 100%").into_response(&id, true);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "down 100%25");
    }
}
