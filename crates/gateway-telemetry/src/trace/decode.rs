//! For tests: an OTLP protobuf export request decoded with prost's derived messages (field
//! numbers from opentelemetry-proto, the subset the gateway writes) and turned into the OTLP
//! JSON mapping, so the same assertions read what either encoding sent.

use prost::Message;
use serde_json::{json, Value};

#[derive(Clone, PartialEq, Message)]
struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
struct Resource {
    #[prost(message, repeated, tag = "1")]
    attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Span>,
}

#[derive(Clone, PartialEq, Message)]
struct InstrumentationScope {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, Message)]
struct Span {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(int32, tag = "6")]
    kind: i32,
    #[prost(fixed64, tag = "7")]
    start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    status: Option<Status>,
}

#[derive(Clone, PartialEq, Message)]
struct Status {
    #[prost(string, tag = "2")]
    message: String,
    #[prost(int32, tag = "3")]
    code: i32,
}

#[derive(Clone, PartialEq, Message)]
struct KeyValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct AnyValue {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4")]
    value: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
}

/// The body of a protobuf export request as the OTLP JSON mapping would have it.
pub fn protobuf_to_json(body: &[u8]) -> Result<Value, String> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| format!("not an OTLP export request: {e}"))?;
    let resource_spans: Vec<Value> = request
        .resource_spans
        .iter()
        .map(|rs| {
            json!({
                "resource": { "attributes": attributes(rs.resource.as_ref().map_or(&[][..], |r| &r.attributes)) },
                "scopeSpans": rs.scope_spans.iter().map(|ss| json!({
                    "scope": ss.scope.as_ref().map(|s| json!({ "name": s.name, "version": s.version })),
                    "spans": ss.spans.iter().map(span).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "resourceSpans": resource_spans }))
}

fn span(s: &Span) -> Value {
    let mut v = json!({
        "traceId": hex(&s.trace_id),
        "spanId": hex(&s.span_id),
        "name": s.name,
        "kind": s.kind,
        "startTimeUnixNano": s.start_time_unix_nano.to_string(),
        "endTimeUnixNano": s.end_time_unix_nano.to_string(),
        "attributes": attributes(&s.attributes),
    });
    if !s.parent_span_id.is_empty() {
        v["parentSpanId"] = json!(hex(&s.parent_span_id));
    }
    if !s.trace_state.is_empty() {
        v["traceState"] = json!(s.trace_state);
    }
    if let Some(status) = &s.status {
        v["status"] = json!({ "code": status.code });
    }
    v
}

fn attributes(list: &[KeyValue]) -> Vec<Value> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Kind::String(s)) => json!({ "stringValue": s }),
                Some(Kind::Bool(b)) => json!({ "boolValue": b }),
                Some(Kind::Int(i)) => json!({ "intValue": i.to_string() }),
                Some(Kind::Double(d)) => json!({ "doubleValue": d }),
                None => json!({}),
            };
            json!({ "key": kv.key, "value": value })
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A collector's view of one export request body: JSON as it is, protobuf decoded into the
/// same shape. Panics on a body that is neither, or on an unknown content type.
pub fn export_body_to_json(content_type: Option<&str>, body: &[u8]) -> Value {
    match content_type {
        Some("application/x-protobuf") => protobuf_to_json(body).unwrap_or_else(|e| panic!("{e}")),
        Some("application/json") => serde_json::from_slice(body).expect("the export body is JSON"),
        other => panic!("unexpected export content type {other:?}"),
    }
}
