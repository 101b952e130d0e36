//! OTLP/HTTP encodings of finished spans (`POST /v1/traces`): binary protobuf
//! (`application/x-protobuf`, the OTLP default) and JSON (`application/json`), both of an
//! `ExportTraceServiceRequest`: `resourceSpans` → `scopeSpans` → `spans`.
//!
//! What a span says (its name, attributes per the HTTP semantic conventions, whether it is an
//! error) is decided once, in [`describe`]; each encoding only writes it down. Both are
//! written by hand, by the thread that finishes the span, straight into its export buffer:
//! this runs for every span, so what repeats is not written again. Attributes whose value is
//! one of a few (method, scheme, protocol version) are encoded once per encoder ([`FIXED`]);
//! runs that follow from an upstream endpoint, a `Host` or a client address are kept per
//! buffer ([`Memo`]) and copied. The protobuf encoding is the cheaper (no escaping, no hex,
//! no decimal).

mod json;
mod memo;
mod proto;

use std::borrow::Cow;
use std::net::IpAddr;

use http::{Method, Version};

pub(crate) use self::memo::Memo;
use super::span::{Attributes, Host, SpanKind, SpanRecord};

/// The instrumentation scope every span is reported under.
pub(crate) const SCOPE_NAME: &str = "gateway";

/// The wire encoding of the export requests (`telemetry.otlp_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `http/protobuf`: binary protobuf, what OpenTelemetry exporters send by default.
    #[default]
    Protobuf,
    /// `http/json`: the OTLP JSON mapping (hex ids, 64-bit integers as strings).
    Json,
}

impl Protocol {
    pub fn content_type(self) -> &'static str {
        match self {
            Protocol::Protobuf => "application/x-protobuf",
            Protocol::Json => "application/json",
        }
    }
}

/// Encodes batches for one service: the resource and scope are rendered once.
pub(crate) enum Encoder {
    Protobuf(proto::Encoder),
    Json(json::Encoder),
}

impl Encoder {
    pub(crate) fn new(protocol: Protocol, service_name: &str) -> Encoder {
        let resource = [
            ("service.name", service_name),
            ("telemetry.sdk.name", "gateway-telemetry"),
            ("telemetry.sdk.language", "rust"),
            ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ];
        match protocol {
            Protocol::Protobuf => Encoder::Protobuf(proto::Encoder::new(&resource)),
            Protocol::Json => Encoder::Json(json::Encoder::new(&resource)),
        }
    }

    /// Append `span` to `out`, framed so that spans appended one after another make the
    /// spans of one [`request`](Self::request).
    /// `memo` keeps attribute runs for the spans appended to `out` after this one (one
    /// memo per encoder and buffer: its runs are in this encoder's format).
    pub(crate) fn append_span(&self, span: &SpanRecord<'_>, out: &mut Vec<u8>, memo: &mut Memo) {
        match self {
            Encoder::Protobuf(e) => e.append_span(span, out, memo),
            Encoder::Json(e) => e.append_span(span, out, memo),
        }
    }

    /// One `ExportTraceServiceRequest` holding the spans appended to the `spans` runs, in order.
    pub(crate) fn request(&self, spans: &[&[u8]]) -> bytes::Bytes {
        match self {
            Encoder::Protobuf(e) => e.request(spans),
            Encoder::Json(e) => e.request(spans),
        }
    }

    /// One `ExportTraceServiceRequest` holding `spans`.
    #[cfg(test)]
    pub(crate) fn encode(&self, spans: &[SpanRecord<'_>]) -> bytes::Bytes {
        let (mut out, mut memo) = (Vec::new(), Memo::default());
        for span in spans {
            self.append_span(span, &mut out, &mut memo);
        }
        self.request(&[&out])
    }

    pub(crate) fn protocol(&self) -> Protocol {
        match self {
            Encoder::Protobuf(_) => Protocol::Protobuf,
            Encoder::Json(_) => Protocol::Json,
        }
    }
}

/// `partialSuccess.rejectedSpans` of an `ExportTraceServiceResponse` in either encoding
/// (told apart by the response's content type), else 0.
pub(crate) fn rejected_spans(content_type: Option<&str>, body: &[u8]) -> u64 {
    if body.is_empty() {
        return 0;
    }
    match content_type {
        Some(t) if t.starts_with("application/x-protobuf") || t.starts_with("application/protobuf") => {
            proto::rejected_spans(body)
        }
        _ => json::rejected_spans(body),
    }
}

/// Where an encoding writes one span. [`describe`] calls [`start`](SpanSink::start) once,
/// then an attribute method per attribute, then [`end`](SpanSink::end).
trait SpanSink {
    /// Ids, kind, times, and the name (the concatenation of `name`).
    fn start(&mut self, span: &SpanRecord<'_>, name: &[&str]);
    /// A string attribute whose value is the concatenation of `parts`. Keys are ours:
    /// plain ASCII that needs no escaping.
    fn str(&mut self, key: &'static str, parts: &[&str]);
    fn int(&mut self, key: &'static str, value: u64);
    /// The [`FIXED`] attribute at `index`.
    fn fixed(&mut self, index: usize);
    /// The attributes `write` writes, which depend only on `key`: copied from the memo when
    /// they were written for this key before.
    fn memo(&mut self, key: &[&[u8]], write: impl FnOnce(&mut Self))
    where
        Self: Sized;
    /// `status.code` ERROR when `error`; an unset status is left out.
    fn end(&mut self, error: bool);
}

/// Attributes whose value is one of a few: each encoder writes them once, when it is made,
/// and copies them into spans (a copy costs a fraction of writing one).
const FIXED: &[(&str, &str)] = &[
    // The methods the HTTP semantic conventions know (any other is `_OTHER`), at METHOD_AT.
    ("http.request.method", "GET"),
    ("http.request.method", "HEAD"),
    ("http.request.method", "POST"),
    ("http.request.method", "PUT"),
    ("http.request.method", "DELETE"),
    ("http.request.method", "CONNECT"),
    ("http.request.method", "OPTIONS"),
    ("http.request.method", "TRACE"),
    ("http.request.method", "PATCH"),
    ("http.request.method", "_OTHER"),
    // At SCHEME_AT.
    ("url.scheme", "http"),
    ("url.scheme", "https"),
    // At VERSION_AT.
    ("network.protocol.version", "0.9"),
    ("network.protocol.version", "1.0"),
    ("network.protocol.version", "1.1"),
    ("network.protocol.version", "2"),
    ("network.protocol.version", "3"),
];
const METHOD_AT: usize = 0;
const OTHER_METHOD: usize = 9;
const SCHEME_AT: usize = 10;
const VERSION_AT: usize = 12;

/// Every [`FIXED`] attribute as `encode` writes it, in order.
fn encode_fixed(mut encode: impl FnMut(&mut Vec<u8>, &'static str, &'static str)) -> Box<[Box<[u8]>]> {
    FIXED
        .iter()
        .map(|(key, value)| {
            let mut out = Vec::new();
            encode(&mut out, key, value);
            out.into_boxed_slice()
        })
        .collect()
}

/// The [`FIXED`] index of a method the HTTP semantic conventions know.
fn method_index(method: &Method) -> Option<usize> {
    let i = match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => return None,
    };
    Some(METHOD_AT + i)
}

/// The [`FIXED`] index of a `network.protocol.version`.
fn version_index(version: Version) -> Option<usize> {
    let i = match version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_11 => 2,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => return None,
    };
    Some(VERSION_AT + i)
}

/// Write `span` into `sink`: the span name and attributes of the HTTP semantic conventions.
fn describe<S: SpanSink>(span: &SpanRecord<'_>, sink: &mut S) {
    let a = span.attributes;
    // Span names per the conventions: `{method} {http.route}` (server), `{method}` (client).
    let known = a.method.as_ref().and_then(method_index);
    let method = match (known, &a.method) {
        (Some(_), Some(m)) => m.as_str(),
        _ => "HTTP",
    };
    match (&a.route, span.kind) {
        (Some(route), SpanKind::Server) => sink.start(span, &[method, " ", route]),
        _ => sink.start(span, &[method]),
    }

    if let Some(m) = &a.method {
        match known {
            Some(index) => sink.fixed(index),
            None => {
                sink.fixed(OTHER_METHOD);
                sink.str("http.request.method_original", &[m.as_str()]);
            }
        }
    }
    match span.kind {
        SpanKind::Server => server_attributes(a, sink),
        SpanKind::Client => client_attributes(a, sink),
    }
    if let Some(index) = a.version.and_then(version_index) {
        sink.fixed(index);
    }
    if a.status != 0 {
        sink.int("http.response.status_code", u64::from(a.status));
    }
    let error = match span.kind {
        SpanKind::Server => a.status >= 500 || (a.status == 0 && a.error_type.is_some()),
        SpanKind::Client => a.status >= 400 || a.error_type.is_some(),
    };
    match a.error_type {
        Some(error_type) => sink.str("error.type", &[error_type]),
        // Without an error code of our own, the conventions ask for the status code.
        None if error => sink.str("error.type", &[itoa::Buffer::new().format(a.status)]),
        None => {}
    }
    sink.end(error);
}

/// The attributes of a server span (besides those every span has).
fn server_attributes<S: SpanSink>(a: &Attributes, sink: &mut S) {
    if let Some(path) = &a.path {
        sink.str("url.path", &[path.path()]);
    }
    if let Some(tls) = a.tls {
        sink.fixed(SCHEME_AT + usize::from(tls));
    }
    if let Some(route) = &a.route {
        sink.str("http.route", &[route]);
    }
    if let Some(host) = &a.host {
        let host = match host {
            Host::Header(value) => value.as_bytes(),
            Host::Authority(authority) => authority.as_str().as_bytes(),
        };
        // What the run depends on besides the host, in one part: the span kind and scheme.
        let scheme: &[u8] = match a.tls {
            Some(true) => b"server https",
            Some(false) => b"server http",
            None => b"server",
        };
        sink.memo(&[scheme, host], |sink| {
            let host = text(host);
            let (address, port) = split_host_port(&host);
            sink.str("server.address", &[address]);
            match (port, a.tls) {
                (Some(port), _) => sink.int("server.port", u64::from(port)),
                (None, Some(tls)) => sink.int("server.port", if tls { 443 } else { 80 }),
                (None, None) => {}
            }
        });
    }
    if let Some(client) = a.client_ip {
        // A client sends many requests: its address is written once per memo slot.
        let octets = match client {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let kind: &[u8] = if client.is_ipv4() { b"client v4" } else { b"client v6" };
        sink.memo(&[kind, &octets], |sink| sink.str("client.address", &[IpText::default().format(client)]));
    }
    if let Some(ua) = &a.user_agent {
        sink.str("user_agent.original", &[&text(ua.as_bytes())]);
    }
}

/// The attributes of a client span (besides those every span has).
fn client_attributes<S: SpanSink>(a: &Attributes, sink: &mut S) {
    if let Some(authority) = &a.upstream {
        let (scheme, default_port) = if a.upstream_https { ("https", 443) } else { ("http", 80) };
        let kind: &[u8] = if a.upstream_https { b"client https" } else { b"client http" };
        // What follows from the endpoint alone (and the service's name).
        let endpoint = |sink: &mut S| {
            let (address, port) = split_host_port(authority.as_str());
            let port = port.unwrap_or(default_port);
            sink.str("server.address", &[address]);
            sink.int("server.port", u64::from(port));
            // Memoized, so the parse runs once per endpoint.
            if a.peer.is_none() && address.parse::<IpAddr>().is_ok() {
                sink.str("network.peer.address", &[address]);
                sink.int("network.peer.port", u64::from(port));
            }
            if let Some(service) = &a.service {
                sink.str("peer.service", &[service]);
            }
        };
        match (&a.peer, &a.service) {
            (None, Some(service)) => {
                sink.memo(&[kind, authority.as_str().as_bytes(), service.as_bytes()], endpoint);
            }
            (None, None) => sink.memo(&[kind, authority.as_str().as_bytes()], endpoint),
            (Some(_), _) => endpoint(sink),
        }
        let path = a.path.as_ref().map_or("/", |p| p.path());
        sink.str("url.full", &[scheme, "://", authority.as_str(), path]);
    } else if let Some(service) = &a.service {
        sink.str("peer.service", &[service]);
    }
    if let Some(peer) = a.peer {
        sink.str("network.peer.address", &[IpText::default().format(peer.ip())]);
        sink.int("network.peer.port", u64::from(peer.port()));
    }
    if a.resend_count > 0 {
        sink.int("http.request.resend_count", u64::from(a.resend_count));
    }
}

/// `host[:port]` or `[v6][:port]` into the bare host and the port, if any.
fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((address, tail)) => (address, tail.strip_prefix(':').and_then(parse_port)),
            None => (s, None),
        };
    }
    match s.as_bytes().iter().rposition(|&b| b == b':') {
        // An IPv6 address without brackets has no port.
        Some(i) if !s.as_bytes()[..i].contains(&b':') => (&s[..i], parse_port(&s[i + 1..])),
        _ => (s, None),
    }
}

/// A port: 1 to 5 decimal digits, at most 65535.
fn parse_port(digits: &str) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mut port = 0u32;
    for &b in digits.as_bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        port = port * 10 + u32::from(b - b'0');
    }
    u16::try_from(port).ok()
}

/// Header bytes as text: as they are when UTF-8 (nearly always), else with replacements.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// An IP address as text, formatted on the stack (IPv4 without `fmt`).
struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        IpText { buf: [0; 46], len: 0 }
    }
}

impl IpText {
    fn format(&mut self, ip: IpAddr) -> &str {
        use std::io::Write as _;
        self.len = 0;
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b".");
                    }
                    self.push(itoa::Buffer::new().format(octet).as_bytes());
                }
            }
            IpAddr::V6(v6) => {
                let mut cursor = std::io::Cursor::new(&mut self.buf[..]);
                // 39 bytes hold the longest form (eight full groups).
                let _ = write!(cursor, "{v6}");
                self.len = usize::try_from(cursor.position()).unwrap_or(0);
            }
        }
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_hosts_and_ports() {
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(split_host_port("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host_port("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("example.com:99999"), ("example.com", None));
        assert_eq!(split_host_port("example.com:+80"), ("example.com", None));
        assert_eq!(split_host_port("example.com:"), ("example.com", None));
        assert_eq!(split_host_port("a:65535"), ("a", Some(65535)));
        assert_eq!(split_host_port("a:0"), ("a", Some(0)));
    }

    #[test]
    fn fixed_attributes_are_found_where_they_are_looked_up() {
        for m in ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] {
            let index = method_index(&Method::from_bytes(m.as_bytes()).expect("method")).expect("known");
            assert_eq!(FIXED[index], ("http.request.method", m));
        }
        assert_eq!(method_index(&Method::from_bytes(b"PURGE").expect("method")), None);
        assert_eq!(FIXED[OTHER_METHOD], ("http.request.method", "_OTHER"));
        assert_eq!((FIXED[SCHEME_AT], FIXED[SCHEME_AT + 1]), (("url.scheme", "http"), ("url.scheme", "https")));
        let versions = [
            (Version::HTTP_09, "0.9"),
            (Version::HTTP_10, "1.0"),
            (Version::HTTP_11, "1.1"),
            (Version::HTTP_2, "2"),
            (Version::HTTP_3, "3"),
        ];
        for (version, text) in versions {
            assert_eq!(FIXED[version_index(version).expect("known")], ("network.protocol.version", text));
        }
    }

    #[test]
    fn formats_ip_addresses() {
        let mut text = IpText::default();
        for ip in ["0.0.0.0", "10.0.0.1", "255.255.255.255", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"] {
            let parsed: IpAddr = ip.parse().expect("ip");
            assert_eq!(text.format(parsed), parsed.to_string());
        }
    }

    /// The protobuf body, decoded by prost's derived messages, says exactly what the JSON one does.
    #[test]
    fn both_encodings_carry_the_same_spans() {
        use crate::trace::span::Attributes;
        use http::uri::{Authority, PathAndQuery};
        use std::sync::Arc;
        let server = Attributes {
            method: Some(Method::POST),
            path: Some(PathAndQuery::from_static("/api/%C3%BC/x?q=1")),
            host: Some(Host::Header(http::HeaderValue::from_static("api.example.com"))),
            tls: Some(true),
            client_ip: Some("2001:db8::7".parse().expect("ip")),
            user_agent: Some(http::HeaderValue::from_static("curl/8")),
            version: Some(Version::HTTP_2),
            route: Some(Arc::from("ör\"d\u{1}ers")),
            status: 502,
            error_type: Some("bad_gateway"),
            ..Attributes::default()
        };
        let client = Attributes {
            method: Some(Method::POST),
            path: Some(PathAndQuery::from_static("/orders")),
            upstream: Some(Authority::from_static("orders.internal:8443")),
            upstream_https: true,
            service: Some(Arc::from("orders")),
            peer: Some("10.1.2.3:8443".parse().expect("addr")),
            resend_count: 2,
            status: 200,
            version: Some(Version::HTTP_11),
            ..Attributes::default()
        };
        fn record(kind: SpanKind, parent_id: [u8; 8], attributes: &Attributes) -> SpanRecord<'_> {
            SpanRecord {
                trace_id: [7; 16],
                span_id: [9; 8],
                parent_id,
                kind,
                start_unix_nanos: u64::MAX - 5,
                end_unix_nanos: u64::MAX,
                attributes,
            }
        }
        let spans = [record(SpanKind::Server, [0; 8], &server), record(SpanKind::Client, [9; 8], &client)];
        let json = Encoder::new(Protocol::Json, "gw").encode(&spans);
        let json: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        let proto = Encoder::new(Protocol::Protobuf, "gw").encode(&spans);
        let decoded = crate::trace::decode::protobuf_to_json(&proto).expect("protobuf");
        assert_eq!(decoded, json);
        let span = &decoded["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["name"], "POST ör\"d\u{1}ers");
        assert_eq!(span["status"]["code"], 2);
        assert!(proto.len() * 2 < json.to_string().len(), "protobuf is the smaller: {} bytes", proto.len());
    }

    /// A span written from memoized runs is byte for byte the span written in full, in
    /// both encodings, whether the run comes first among the attributes or not.
    #[test]
    fn memoized_runs_write_the_same_spans() {
        use crate::trace::span::Attributes;
        use http::uri::Authority;
        use std::sync::Arc;
        let server = |host: &'static str| Attributes {
            method: Some(Method::GET),
            host: Some(Host::Header(http::HeaderValue::from_static(host))),
            tls: Some(false),
            client_ip: Some(if host.starts_with('[') { "::ffff:10.0.0.7" } else { "10.0.0.7" }.parse().expect("ip")),
            ..Attributes::default()
        };
        let client = |method: Option<Method>, service: Option<&str>| Attributes {
            method,
            upstream: Some(Authority::from_static("10.0.0.1:9001")),
            service: service.map(Arc::from),
            status: 200,
            ..Attributes::default()
        };
        let attributes = [
            server("api.example.com"),
            server("[::1]:8080"),
            server("api.example.com"),
            client(Some(Method::GET), Some("users")),
            client(None, Some("users")),
            client(None, None),
            client(Some(Method::POST), None),
        ];
        let spans: Vec<SpanRecord<'_>> = attributes
            .iter()
            .enumerate()
            .map(|(i, attributes)| SpanRecord {
                trace_id: [1; 16],
                span_id: [2; 8],
                parent_id: [0; 8],
                kind: if i < 3 { SpanKind::Server } else { SpanKind::Client },
                start_unix_nanos: 1,
                end_unix_nanos: 2,
                attributes,
            })
            .collect();
        for protocol in [Protocol::Protobuf, Protocol::Json] {
            let encoder = Encoder::new(protocol, "gw");
            let mut memo = Memo::default();
            let mut pass = || {
                let mut out = Vec::new();
                for span in &spans {
                    encoder.append_span(span, &mut out, &mut memo);
                }
                out
            };
            let (misses, hits) = (pass(), pass());
            assert_eq!(String::from_utf8_lossy(&hits), String::from_utf8_lossy(&misses), "{protocol:?}");
            let mut fresh = Vec::new();
            for span in &spans {
                encoder.append_span(span, &mut fresh, &mut Memo::default());
            }
            assert_eq!(fresh, misses, "{protocol:?}");
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&Encoder::new(Protocol::Json, "gw").encode(&spans)).expect("JSON");
        let spans = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(spans[4]["attributes"][0]["key"], "server.address");
        let client_address = |span: &serde_json::Value| {
            let attributes = span["attributes"].as_array().expect("attributes").clone();
            attributes.into_iter().find(|a| a["key"] == "client.address").expect("client.address")["value"].clone()
        };
        // The same 16 bytes as an IPv6 address, but not the same address.
        assert_eq!(client_address(&spans[0])["stringValue"], "10.0.0.7");
        assert_eq!(client_address(&spans[1])["stringValue"], "::ffff:10.0.0.7");
    }

    #[test]
    fn protobuf_is_the_default() {
        assert_eq!(Protocol::default().content_type(), "application/x-protobuf");
    }
}
