//! Distributed tracing: W3C `traceparent` propagation, a server span per request and a
//! client span per upstream attempt, exported in batches to an OTLP/HTTP collector.
//!
//! Export uses OTLP/HTTP (`POST {endpoint}/v1/traces`) with the protobuf encoding
//! (`application/x-protobuf`, the OpenTelemetry default) or, by choice, the JSON one; both
//! are written by hand rather than with the `opentelemetry` SDK and `opentelemetry-otlp`
//! crates, whose generated message types would more than double the build and allocate per
//! attribute. Spans are `resourceSpans` → `scopeSpans` → `spans`, `kind` 2 (server) or 3
//! (client), with HTTP semantic-convention attributes and `status.code` 2 on errors.
//!
//! The request path:
//!
//! ```
//! use gateway_telemetry::trace::{TraceContext, Tracer, TRACEPARENT};
//! use http::{HeaderMap, HeaderValue, Method};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Built when the configuration is, kept while the telemetry settings do not change.
//! let tracer = Tracer::new("http://127.0.0.1:4318", "gateway", 1.0).expect("valid settings");
//! let route: Arc<str> = Arc::from("users");
//!
//! let mut incoming = HeaderMap::new();
//! incoming.insert(TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
//!
//! // The server span continues the caller's trace...
//! let mut server = tracer.server_span(TraceContext::from_headers(&incoming)).method(&Method::GET).start();
//! server.set_route(&route);
//! // ...and each upstream attempt is a client span under it, whose id goes upstream.
//! let mut client = tracer.client_span(&server).method(&Method::GET).start();
//! let upstream_traceparent = client.traceparent();
//! assert_eq!(client.context().trace_id, server.context().trace_id);
//! assert_ne!(upstream_traceparent, incoming[TRACEPARENT]);
//! client.set_status_code(200);
//! tracer.finish(client);
//! server.set_status_code(200);
//! tracer.finish(server);
//! # }
//! ```
//!
//! Costs on the request path: parsing `traceparent` and making ids touch no lock and no
//! heap; the `traceparent` sent upstream is one small allocation; a span that is not
//! sampled (or comes from [`Tracer::disabled`]) records nothing; a sampled one is a few
//! cheap clones (shared buffers, not copies), then, when finished, is encoded into one of a
//! few export buffers (one per thread, so its lock is uncontended). Nothing is sent from the
//! request path: the exporter task takes the buffers and POSTs them.

mod context;
/// For tests: OTLP protobuf export bodies read back as the JSON mapping.
#[cfg(any(test, feature = "otlp-decode"))]
pub mod decode;
mod export;
mod id;
mod otlp;
mod queue;
mod sampler;
mod span;
#[cfg(test)]
mod tests;

pub use context::{hex_into, parse_traceparent, TraceContext, TRACEPARENT, TRACEPARENT_LEN, TRACESTATE};
pub use export::{
    TraceCounters, Tracer, TracerBuilder, DEFAULT_BATCH_SIZE, DEFAULT_EXPORT_TIMEOUT, DEFAULT_FLUSH_INTERVAL,
    DEFAULT_QUEUE_CAPACITY,
};
pub use id::{new_span_id, new_trace_id};
pub use otlp::Protocol;
pub use span::{ActiveSpan, SpanBuilder, SpanKind};
