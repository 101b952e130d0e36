//! OTLP/HTTP JSON encoding of finished spans (`POST /v1/traces`,
//! `content-type: application/json`), per the OTLP specification's JSON mapping of
//! `ExportTraceServiceRequest`:
//! `resourceSpans` → `scopeSpans` → `spans`, ids as lowercase hex (not base64), 64-bit
//! integers (`startTimeUnixNano`, `intValue`) as decimal strings, `kind` and `status.code`
//! as integers, attributes as `{"key": ..., "value": {"stringValue"|"intValue": ...}}`.
//!
//! Written by hand into one buffer: this runs on the exporter task for every span, and a
//! tree of `serde_json::Value`s per span would cost far more than the text itself.

use std::borrow::Cow;
use std::io::Write as _;
use std::net::IpAddr;

use http::{Method, Version};

use super::context::hex_into;
use super::span::{Host, SpanKind, SpanRecord};

/// The instrumentation scope every span is reported under.
pub(crate) const SCOPE_NAME: &str = "gateway";

/// Encodes batches for one service: the resource and scope are rendered once.
pub(crate) struct Encoder {
    prefix: Vec<u8>,
}

const SUFFIX: &[u8] = b"]}]}]}";

impl Encoder {
    pub(crate) fn new(service_name: &str) -> Encoder {
        let mut prefix = Vec::with_capacity(256);
        prefix.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
        let mut attrs = Attrs::new(&mut prefix);
        attrs.str("service.name", service_name);
        attrs.str("telemetry.sdk.name", "gateway-telemetry");
        attrs.str("telemetry.sdk.language", "rust");
        attrs.str("telemetry.sdk.version", env!("CARGO_PKG_VERSION"));
        prefix.extend_from_slice(b"]},\"scopeSpans\":[{\"scope\":{\"name\":");
        json_str(&mut prefix, SCOPE_NAME);
        prefix.extend_from_slice(b",\"version\":");
        json_str(&mut prefix, env!("CARGO_PKG_VERSION"));
        prefix.extend_from_slice(b"},\"spans\":[");
        Encoder { prefix }
    }

    /// Append one `ExportTraceServiceRequest` holding `spans` to `out`.
    pub(crate) fn encode(&self, spans: &[SpanRecord], out: &mut Vec<u8>) {
        out.reserve(self.prefix.len() + SUFFIX.len() + spans.len() * 700);
        out.extend_from_slice(&self.prefix);
        for (i, span) in spans.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            encode_span(span, out);
        }
        out.extend_from_slice(SUFFIX);
    }
}

/// Methods the HTTP semantic conventions know; any other is reported as `_OTHER`.
fn known_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::CONNECT
            | Method::OPTIONS
            | Method::TRACE
            | Method::PATCH
    )
}

fn encode_span(span: &SpanRecord, out: &mut Vec<u8>) {
    let a = &span.attributes;
    let mut hex = [0u8; 32];
    out.extend_from_slice(b"{\"traceId\":\"");
    hex_into(&span.trace_id, &mut hex);
    out.extend_from_slice(&hex);
    out.extend_from_slice(b"\",\"spanId\":\"");
    hex_into(&span.span_id, &mut hex[..16]);
    out.extend_from_slice(&hex[..16]);
    out.push(b'"');
    if span.parent_id != [0; 8] {
        out.extend_from_slice(b",\"parentSpanId\":\"");
        hex_into(&span.parent_id, &mut hex[..16]);
        out.extend_from_slice(&hex[..16]);
        out.push(b'"');
    }

    // Span names per the conventions: `{method} {http.route}` (server), `{method}` (client).
    let method = a.method.as_ref().filter(|m| known_method(m)).map_or("HTTP", Method::as_str);
    out.extend_from_slice(b",\"name\":");
    match (&a.route, span.kind) {
        (Some(route), SpanKind::Server) => json_str_parts(out, &[method, " ", route]),
        _ => json_str(out, method),
    }
    out.extend_from_slice(b",\"kind\":");
    decimal(out, u64::from(span.kind.otlp()));
    out.extend_from_slice(b",\"startTimeUnixNano\":\"");
    decimal(out, span.start_unix_nanos);
    out.extend_from_slice(b"\",\"endTimeUnixNano\":\"");
    decimal(out, span.end_unix_nanos);
    out.extend_from_slice(b"\",\"attributes\":[");

    let mut attrs = Attrs::new(out);
    if let Some(m) = &a.method {
        if known_method(m) {
            attrs.str("http.request.method", m.as_str());
        } else {
            attrs.str("http.request.method", "_OTHER");
            attrs.str("http.request.method_original", m.as_str());
        }
    }
    match span.kind {
        SpanKind::Server => {
            if let Some(path) = &a.path {
                attrs.str("url.path", path.path());
            }
            if let Some(tls) = a.tls {
                attrs.str("url.scheme", if tls { "https" } else { "http" });
            }
            if let Some(route) = &a.route {
                attrs.str("http.route", route);
            }
            if let Some(host) = &a.host {
                let host = match host {
                    Host::Header(value) => String::from_utf8_lossy(value.as_bytes()),
                    Host::Authority(authority) => Cow::Borrowed(authority.as_str()),
                };
                let (address, port) = split_host_port(&host);
                attrs.str("server.address", address);
                match (port, a.tls) {
                    (Some(port), _) => attrs.int("server.port", u64::from(port)),
                    (None, Some(tls)) => attrs.int("server.port", if tls { 443 } else { 80 }),
                    (None, None) => {}
                }
            }
            if let Some(ip) = a.client_ip {
                attrs.display("client.address", ip);
            }
            if let Some(ua) = &a.user_agent {
                attrs.str("user_agent.original", &String::from_utf8_lossy(ua.as_bytes()));
            }
        }
        SpanKind::Client => {
            if let Some(authority) = &a.upstream {
                let (address, port) = split_host_port(authority.as_str());
                let port = port.unwrap_or(if a.upstream_https { 443 } else { 80 });
                attrs.str("server.address", address);
                attrs.int("server.port", u64::from(port));
                let scheme = if a.upstream_https { "https" } else { "http" };
                let path = a.path.as_ref().map_or("/", |p| p.path());
                attrs.str_parts("url.full", &[scheme, "://", authority.as_str(), path]);
                if a.peer.is_none() {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        attrs.display("network.peer.address", ip);
                        attrs.int("network.peer.port", u64::from(port));
                    }
                }
            }
            if let Some(peer) = a.peer {
                attrs.display("network.peer.address", peer.ip());
                attrs.int("network.peer.port", u64::from(peer.port()));
            }
            if let Some(service) = &a.service {
                attrs.str("peer.service", service);
            }
            if a.resend_count > 0 {
                attrs.int("http.request.resend_count", u64::from(a.resend_count));
            }
        }
    }
    if let Some(version) = a.version.and_then(protocol_version) {
        attrs.str("network.protocol.version", version);
    }
    if a.status != 0 {
        attrs.int("http.response.status_code", u64::from(a.status));
    }
    let error = match span.kind {
        SpanKind::Server => a.status >= 500 || (a.status == 0 && a.error_type.is_some()),
        SpanKind::Client => a.status >= 400 || a.error_type.is_some(),
    };
    match a.error_type {
        Some(error_type) => attrs.str("error.type", error_type),
        None if error => {
            attrs.key("error.type");
            attrs.out.extend_from_slice(b"\"stringValue\":\"");
            decimal(attrs.out, u64::from(a.status));
            attrs.out.extend_from_slice(b"\"}}");
        }
        None => {}
    }
    out.push(b']');
    if error {
        // STATUS_CODE_ERROR; an unset status is left out.
        out.extend_from_slice(b",\"status\":{\"code\":2}");
    }
    out.push(b'}');
}

fn protocol_version(version: Version) -> Option<&'static str> {
    match version {
        Version::HTTP_09 => Some("0.9"),
        Version::HTTP_10 => Some("1.0"),
        Version::HTTP_11 => Some("1.1"),
        Version::HTTP_2 => Some("2"),
        Version::HTTP_3 => Some("3"),
        _ => None,
    }
}

/// `host[:port]` or `[v6][:port]` into the bare host and the port, if any.
fn split_host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((address, tail)) => (address, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (s, None),
    }
}

/// Writes a JSON array of OTLP `KeyValue`s.
struct Attrs<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Attrs<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Attrs { out, first: true }
    }

    /// `key` is one of ours: plain ASCII that needs no escaping.
    fn key(&mut self, key: &'static str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(b"{\"key\":\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\",\"value\":{");
    }

    fn str(&mut self, key: &'static str, value: &str) {
        self.str_parts(key, &[value]);
    }

    /// A string value made of `parts`, without an intermediate `String`.
    fn str_parts(&mut self, key: &'static str, parts: &[&str]) {
        self.key(key);
        self.out.extend_from_slice(b"\"stringValue\":");
        json_str_parts(self.out, parts);
        self.out.extend_from_slice(b"}}");
    }

    /// A string value from `Display` (IP addresses, numbers: nothing to escape).
    fn display(&mut self, key: &'static str, value: impl std::fmt::Display) {
        self.key(key);
        let _ = write!(self.out, "\"stringValue\":\"{value}\"}}}}");
    }

    /// OTLP JSON carries 64-bit integers as decimal strings.
    fn int(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out.extend_from_slice(b"\"intValue\":\"");
        decimal(self.out, value);
        self.out.extend_from_slice(b"\"}}");
    }
}

/// `value` in decimal, without going through `fmt`.
fn decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    json_str_parts(out, &[s]);
}

/// The concatenation of `parts` as one JSON string literal.
fn json_str_parts(out: &mut Vec<u8>, parts: &[&str]) {
    out.push(b'"');
    for part in parts {
        escape_into(out, part);
    }
    out.push(b'"');
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::Attributes;
    use std::sync::Arc;

    fn record(kind: SpanKind, attributes: Attributes) -> SpanRecord {
        SpanRecord {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            parent_id: [0; 8],
            kind,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_000_500_000,
            attributes,
        }
    }

    fn encode(spans: &[SpanRecord]) -> serde_json::Value {
        let mut out = Vec::new();
        Encoder::new("gw \"quoted\"\n").encode(spans, &mut out);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    fn attr<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
        span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
    }

    #[test]
    fn encodes_valid_otlp_json() {
        let server = Attributes {
            method: Some(Method::GET),
            path: Some(http::uri::PathAndQuery::from_static("/api/users/7?token=secret")),
            host: Some(Host::Authority(http::uri::Authority::from_static("[::1]:8080"))),
            tls: Some(false),
            route: Some(Arc::from("us\"ers\u{1}")),
            status: 503,
            version: Some(Version::HTTP_11),
            ..Attributes::default()
        };
        let client = Attributes {
            method: Some(Method::from_bytes(b"PURGE").expect("method")),
            upstream: Some(http::uri::Authority::from_static("10.0.0.1:9001")),
            path: Some(http::uri::PathAndQuery::from_static("/users/7?token=secret")),
            error_type: Some("timeout"),
            resend_count: 1,
            ..Attributes::default()
        };
        let mut child = record(SpanKind::Client, client);
        child.parent_id = [0x02; 8];
        let doc = encode(&[record(SpanKind::Server, server), child]);
        let rs = &doc["resourceSpans"][0];
        assert_eq!(rs["resource"]["attributes"][0]["value"]["stringValue"], "gw \"quoted\"\n");
        let spans = rs["scopeSpans"][0]["spans"].as_array().expect("spans");
        assert_eq!(spans.len(), 2);
        let s = &spans[0];
        assert_eq!(s["traceId"], "abababababababababababababababab");
        assert_eq!(s["spanId"], "0101010101010101");
        assert!(s.get("parentSpanId").is_none());
        assert_eq!(s["kind"], 2);
        assert_eq!(s["name"], "GET us\"ers\u{1}");
        assert_eq!(s["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(attr(s, "url.path").expect("url.path")["stringValue"], "/api/users/7");
        assert_eq!(attr(s, "server.address").expect("address")["stringValue"], "::1");
        assert_eq!(attr(s, "server.port").expect("port")["intValue"], "8080");
        assert_eq!(attr(s, "http.response.status_code").expect("status")["intValue"], "503");
        assert_eq!(attr(s, "error.type").expect("error.type")["stringValue"], "503");
        assert_eq!(attr(s, "network.protocol.version").expect("version")["stringValue"], "1.1");
        let c = &spans[1];
        assert_eq!(c["kind"], 3);
        assert_eq!(c["parentSpanId"], "0202020202020202");
        assert_eq!(c["name"], "HTTP");
        assert_eq!(attr(c, "http.request.method").expect("method")["stringValue"], "_OTHER");
        assert_eq!(attr(c, "http.request.method_original").expect("original")["stringValue"], "PURGE");
        assert_eq!(attr(c, "url.full").expect("url.full")["stringValue"], "http://10.0.0.1:9001/users/7");
        assert_eq!(attr(c, "network.peer.address").expect("peer")["stringValue"], "10.0.0.1");
        assert_eq!(attr(c, "http.request.resend_count").expect("resend")["intValue"], "1");
        assert_eq!(attr(c, "error.type").expect("error.type")["stringValue"], "timeout");
        assert_eq!(c["status"]["code"], 2);
    }

    #[test]
    fn server_4xx_is_not_an_error_but_client_4xx_is() {
        let server = Attributes { status: 404, error_type: Some("route_not_found"), ..Attributes::default() };
        let client = Attributes { status: 404, ..Attributes::default() };
        let doc = encode(&[record(SpanKind::Server, server), record(SpanKind::Client, client)]);
        let spans = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert!(spans[0].get("status").is_none());
        assert_eq!(attr(&spans[0], "error.type").expect("error.type")["stringValue"], "route_not_found");
        assert_eq!(spans[1]["status"]["code"], 2);
        assert_eq!(attr(&spans[1], "error.type").expect("error.type")["stringValue"], "404");
    }

    #[test]
    fn splits_hosts_and_ports() {
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(split_host_port("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host_port("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }
}
