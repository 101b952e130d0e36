//! The OTLP JSON mapping of `ExportTraceServiceRequest`: ids as lowercase hex (not base64),
//! 64-bit integers (`startTimeUnixNano`, `intValue`) as decimal strings, `kind` and
//! `status.code` as integers, attributes as `{"key": ..., "value": {"stringValue"|"intValue": ...}}`.

use bytes::Bytes;

use super::{describe, encode_fixed, Memo, SpanSink, SCOPE_NAME};
use crate::json;
use crate::trace::context::hex_into;
use crate::trace::span::SpanRecord;

/// Bytes a span takes, about: room reserved before each span is written.
const SPAN_BYTES: usize = 1024;
const SUFFIX: &[u8] = b"]}]}]}";

pub(crate) struct Encoder {
    /// Everything before the first span: the resource and the scope.
    prefix: Vec<u8>,
    /// The `FIXED` attributes, as attribute objects.
    fixed: Box<[Box<[u8]>]>,
}

impl Encoder {
    pub(crate) fn new(resource: &[(&str, &str)]) -> Encoder {
        let mut prefix = Vec::with_capacity(256);
        prefix.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
        let mut sink = Json { out: &mut prefix, first: true, fixed: &[], memo: None };
        for (key, value) in resource {
            sink.key(key);
            sink.string_value(&[value]);
        }
        prefix.extend_from_slice(b"]},\"scopeSpans\":[{\"scope\":{\"name\":");
        json::string(&mut prefix, &[SCOPE_NAME]);
        prefix.extend_from_slice(b",\"version\":");
        json::string(&mut prefix, &[env!("CARGO_PKG_VERSION")]);
        prefix.extend_from_slice(b"},\"spans\":[");
        let fixed =
            encode_fixed(|out, key, value| Json { out, first: true, fixed: &[], memo: None }.str(key, &[value]));
        Encoder { prefix, fixed }
    }

    /// Append `span` as one element of the `spans` array (after a comma), ready for
    /// [`request`](Self::request).
    pub(crate) fn append_span(&self, span: &SpanRecord<'_>, out: &mut Vec<u8>, memo: &mut Memo) {
        out.reserve(SPAN_BYTES);
        out.push(b',');
        describe(span, &mut Json { out, first: true, fixed: &self.fixed, memo: Some(memo) });
    }

    /// One `ExportTraceServiceRequest` holding the spans [`append_span`](Self::append_span)
    /// wrote one after another into the `spans` runs.
    pub(crate) fn request(&self, spans: &[&[u8]]) -> Bytes {
        let len = spans.iter().map(|run| run.len()).sum::<usize>();
        let mut out = Vec::with_capacity(self.prefix.len() + len + SUFFIX.len());
        out.extend_from_slice(&self.prefix);
        // Every span comes after a comma: the first one's goes.
        let mut first = true;
        for run in spans.iter().filter(|run| !run.is_empty()) {
            let run = if first { run.strip_prefix(b",").unwrap_or(run) } else { run };
            first = false;
            out.extend_from_slice(run);
        }
        out.extend_from_slice(SUFFIX);
        Bytes::from(out)
    }
}

/// Writes one span object; `first` tracks the attribute list's commas.
struct Json<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    fixed: &'a [Box<[u8]>],
    memo: Option<&'a mut Memo>,
}

impl Json<'_> {
    fn comma(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    fn key(&mut self, key: &str) {
        self.comma();
        self.out.extend_from_slice(b"{\"key\":");
        json::string(self.out, &[key]);
        self.out.extend_from_slice(b",\"value\":{");
    }

    fn string_value(&mut self, parts: &[&str]) {
        self.out.extend_from_slice(b"\"stringValue\":");
        json::string(self.out, parts);
        self.out.extend_from_slice(b"}}");
    }
}

impl SpanSink for Json<'_> {
    fn start(&mut self, span: &SpanRecord<'_>, name: &[&str]) {
        let out = &mut *self.out;
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
        out.extend_from_slice(b",\"name\":");
        json::string(out, name);
        out.extend_from_slice(b",\"kind\":");
        json::unsigned(out, u64::from(span.kind.otlp()));
        out.extend_from_slice(b",\"startTimeUnixNano\":\"");
        json::unsigned(out, span.start_unix_nanos);
        out.extend_from_slice(b"\",\"endTimeUnixNano\":\"");
        json::unsigned(out, span.end_unix_nanos);
        out.extend_from_slice(b"\",\"attributes\":[");
    }

    fn str(&mut self, key: &'static str, parts: &[&str]) {
        self.key(key);
        self.string_value(parts);
    }

    fn int(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out.extend_from_slice(b"\"intValue\":\"");
        json::unsigned(self.out, value);
        self.out.extend_from_slice(b"\"}}");
    }

    fn fixed(&mut self, index: usize) {
        self.comma();
        self.out.extend_from_slice(&self.fixed[index]);
    }

    /// Runs are kept with a comma before each attribute, the first one's included.
    fn memo(&mut self, key: &[&[u8]], write: impl FnOnce(&mut Self)) {
        if let Some(run) = self.memo.as_deref_mut().and_then(|m| m.get(key)) {
            let run = if self.first { run.strip_prefix(b",").unwrap_or(run) } else { run };
            self.first &= run.is_empty();
            self.out.extend_from_slice(run);
            return;
        }
        let (start, was_first) = (self.out.len(), self.first);
        write(self);
        if let Some(memo) = self.memo.as_deref_mut() {
            let run = &self.out[start..];
            match (was_first, run.is_empty()) {
                (true, false) => {
                    let mut with_comma = Vec::with_capacity(run.len() + 1);
                    with_comma.push(b',');
                    with_comma.extend_from_slice(run);
                    memo.store(key, &with_comma);
                }
                _ => memo.store(key, run),
            }
        }
    }

    fn end(&mut self, error: bool) {
        self.out.push(b']');
        if error {
            // STATUS_CODE_ERROR.
            self.out.extend_from_slice(b",\"status\":{\"code\":2}");
        }
        self.out.push(b'}');
    }
}

/// `partialSuccess.rejectedSpans` (a string or a number), else 0.
pub(super) fn rejected_spans(body: &[u8]) -> u64 {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else { return 0 };
    match &doc["partialSuccess"]["rejectedSpans"] {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{Method, Version};

    use super::*;
    use crate::trace::span::{Attributes, Host, SpanKind};

    pub(crate) fn record(kind: SpanKind, attributes: &Attributes) -> SpanRecord<'_> {
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

    fn encode(spans: &[SpanRecord<'_>]) -> serde_json::Value {
        let encoder = Encoder::new(&[("service.name", "gw \"quoted\"\n")]);
        let mut appended = Vec::new();
        for span in spans {
            encoder.append_span(span, &mut appended, &mut Memo::default());
        }
        let out = encoder.request(&[&appended]);
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
        let mut child = record(SpanKind::Client, &client);
        child.parent_id = [0x02; 8];
        let doc = encode(&[record(SpanKind::Server, &server), child]);
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
        let doc = encode(&[record(SpanKind::Server, &server), record(SpanKind::Client, &client)]);
        let spans = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert!(spans[0].get("status").is_none());
        assert_eq!(attr(&spans[0], "error.type").expect("error.type")["stringValue"], "route_not_found");
        assert_eq!(spans[1]["status"]["code"], 2);
        assert_eq!(attr(&spans[1], "error.type").expect("error.type")["stringValue"], "404");
    }

    #[test]
    fn reads_partial_success() {
        assert_eq!(rejected_spans(b"{}"), 0);
        assert_eq!(rejected_spans(br#"{"partialSuccess":{"rejectedSpans":"3","errorMessage":"x"}}"#), 3);
        assert_eq!(rejected_spans(br#"{"partialSuccess":{"rejectedSpans":4}}"#), 4);
    }
}
