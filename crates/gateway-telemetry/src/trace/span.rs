//! Spans: the server span of a request and a client span per upstream attempt.
//!
//! A span is plain data until it is finished: ids, start time and the few facts the
//! exporter turns into HTTP semantic-convention attributes. Setters clone only cheap,
//! shared handles (`Arc<str>` route names, `Bytes`-backed `PathAndQuery`/`HeaderValue`/
//! `Authority`), and do nothing at all on a span that is not recording, so a request that
//! is not sampled (or a gateway without tracing) allocates nothing here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Version};

use super::context::TraceContext;
use super::id::new_span_id;

/// What side of an exchange a span describes (OTLP `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The gateway serving a client's request (OTLP 2).
    Server,
    /// The gateway calling an upstream (OTLP 3).
    Client,
}

impl SpanKind {
    pub(crate) fn otlp(self) -> u8 {
        match self {
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        }
    }
}

/// The facts a span records; each becomes attributes at export time.
#[derive(Debug, Default, Clone)]
pub(crate) struct Attributes {
    /// `http.request.method`
    pub(crate) method: Option<Method>,
    /// `url.path` (server) or the path of `url.full` (client); the query is never exported.
    pub(crate) path: Option<PathAndQuery>,
    /// `server.address`/`server.port` of a server span: the request's `Host`.
    pub(crate) host: Option<Host>,
    /// `url.scheme` of a server span: whether the client connection is TLS.
    pub(crate) tls: Option<bool>,
    /// `client.address` of a server span.
    pub(crate) client_ip: Option<IpAddr>,
    /// `user_agent.original` of a server span.
    pub(crate) user_agent: Option<HeaderValue>,
    /// `network.protocol.version`
    pub(crate) version: Option<Version>,
    /// `http.route` (the route's name) and part of the server span's name.
    pub(crate) route: Option<Arc<str>>,
    /// Whether the upstream is reached over https (`url.full`, default port).
    pub(crate) upstream_https: bool,
    /// `server.address`/`server.port` of a client span: the upstream endpoint.
    pub(crate) upstream: Option<Authority>,
    /// `peer.service`: the upstream service's name.
    pub(crate) service: Option<Arc<str>>,
    /// `network.peer.address`/`network.peer.port`: the address actually connected to.
    pub(crate) peer: Option<SocketAddr>,
    /// `http.request.resend_count` of a client span (0 on the first attempt: not exported).
    pub(crate) resend_count: u32,
    /// `http.response.status_code` (0: no response).
    pub(crate) status: u16,
    /// `error.type`: the gateway's error code when it answered itself, or the transport
    /// failure of an upstream attempt.
    pub(crate) error_type: Option<&'static str>,
}

/// Where a server span's `server.address` comes from: the `Host` header, or the request
/// target's authority (HTTP/2 `:authority`, absolute-form targets).
#[derive(Debug, Clone)]
pub(crate) enum Host {
    Header(HeaderValue),
    Authority(Authority),
}

/// A finished span as the encoders read it: written into the export queue's buffer by the
/// thread that finishes it, so nothing is copied or moved between threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanRecord<'a> {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    /// All zero: a root span.
    pub(crate) parent_id: [u8; 8],
    pub(crate) kind: SpanKind,
    pub(crate) start_unix_nanos: u64,
    pub(crate) end_unix_nanos: u64,
    pub(crate) attributes: &'a Attributes,
}

pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A span that has its identity (ids, sampling decision) but has not started yet: set the
/// facts known before the exchange, then [`start`](SpanBuilder::start) it.
///
/// Made by [`Tracer::server_span`](super::Tracer::server_span) and
/// [`Tracer::client_span`](super::Tracer::client_span).
#[derive(Debug)]
#[must_use = "a span builder does nothing until it is started"]
pub struct SpanBuilder {
    pub(crate) span: ActiveSpan,
}

impl SpanBuilder {
    pub(crate) fn new(
        kind: SpanKind,
        trace_id: [u8; 16],
        parent_id: [u8; 8],
        sampled: bool,
        recording: bool,
        remote_parent: bool,
    ) -> SpanBuilder {
        let flags = if sampled { TraceContext::SAMPLED } else { 0 };
        SpanBuilder {
            span: ActiveSpan {
                context: TraceContext { trace_id, span_id: new_span_id(), flags },
                parent_id,
                kind,
                recording,
                remote_parent,
                start_unix_nanos: 0,
                attributes: recording.then(Box::default),
            },
        }
    }

    /// The context this span will have (see [`ActiveSpan::context`]).
    #[inline]
    pub fn context(&self) -> TraceContext {
        self.span.context
    }

    /// Whether the span will be exported; when not, every setter is a no-op.
    #[inline]
    pub fn is_recording(&self) -> bool {
        self.span.recording
    }

    /// `http.request.method`.
    #[inline]
    pub fn method(mut self, method: &Method) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            attributes.method = Some(method.clone());
        }
        self
    }

    /// `url.path` of a server span (the path as the client sent it), or the upstream path
    /// in a client span's `url.full`. The query is never exported: it may carry secrets.
    #[inline]
    pub fn path(mut self, path: Option<&PathAndQuery>) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            attributes.path = path.cloned();
        }
        self
    }

    /// Server span: the request's `Host` header, for `server.address` and `server.port`.
    #[inline]
    pub fn host(mut self, host: Option<&HeaderValue>) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            if let Some(host) = host {
                attributes.host = Some(Host::Header(host.clone()));
            }
        }
        self
    }

    /// Server span: the request target's authority (HTTP/2 `:authority`, absolute-form
    /// targets), for `server.address` and `server.port`; takes the place of [`host`](Self::host).
    #[inline]
    pub fn authority(mut self, authority: Option<&Authority>) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            if let Some(authority) = authority {
                attributes.host = Some(Host::Authority(authority.clone()));
            }
        }
        self
    }

    /// Server span: whether the client connection is TLS (`url.scheme`).
    #[inline]
    pub fn tls(mut self, tls: bool) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            attributes.tls = Some(tls);
        }
        self
    }

    /// Server span: the client address as resolved through trusted proxies (`client.address`).
    #[inline]
    pub fn client_address(mut self, ip: IpAddr) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            attributes.client_ip = Some(ip);
        }
        self
    }

    /// Server span: `user_agent.original`.
    #[inline]
    pub fn user_agent(mut self, user_agent: Option<&HeaderValue>) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            attributes.user_agent = user_agent.cloned();
        }
        self
    }

    /// `network.protocol.version` (`1.1`, `2`...).
    #[inline]
    pub fn version(mut self, version: Version) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            attributes.version = Some(version);
        }
        self
    }

    /// Client span: the upstream endpoint (`server.address`, `server.port`, `url.full`; and
    /// `network.peer.address` when the host is an IP address).
    #[inline]
    pub fn upstream(mut self, scheme: &Scheme, authority: &Authority) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            attributes.upstream_https = *scheme == Scheme::HTTPS;
            attributes.upstream = Some(authority.clone());
        }
        self
    }

    /// Client span: the upstream service's name (`peer.service`).
    #[inline]
    pub fn service(mut self, name: &Arc<str>) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            attributes.service = Some(name.clone());
        }
        self
    }

    /// Client span: how many attempts came before this one (`http.request.resend_count`;
    /// retries are sibling client spans under the same server span).
    #[inline]
    pub fn resend_count(mut self, count: u32) -> Self {
        if let Some(attributes) = self.span.attributes.as_deref_mut() {
            attributes.resend_count = count;
        }
        self
    }

    /// Start the span now.
    #[inline]
    pub fn start(mut self) -> ActiveSpan {
        if self.span.recording {
            self.span.start_unix_nanos = unix_nanos();
        }
        self.span
    }
}

/// A started span. Set what is learnt during the exchange, then hand it to
/// [`Tracer::finish`](super::Tracer::finish); a span dropped unfinished is not exported.
#[derive(Debug)]
#[must_use = "a span is exported only when it is given to Tracer::finish"]
pub struct ActiveSpan {
    pub(crate) context: TraceContext,
    pub(crate) parent_id: [u8; 8],
    pub(crate) kind: SpanKind,
    pub(crate) recording: bool,
    pub(crate) remote_parent: bool,
    pub(crate) start_unix_nanos: u64,
    /// Present exactly when the span records: a span that does not (tracing off, or not
    /// sampled) stays a few words, cheap to move through the request's futures.
    pub(crate) attributes: Option<Box<Attributes>>,
}

impl ActiveSpan {
    /// This span's own context: its trace id, its span id, and the sampled flag the next hop
    /// should see. For a client span this is what goes upstream in `traceparent`.
    #[inline]
    pub fn context(&self) -> TraceContext {
        self.context
    }

    /// `self.context().to_header()`: the `traceparent` to send to the upstream this (client)
    /// span calls.
    #[inline]
    pub fn traceparent(&self) -> HeaderValue {
        self.context.to_header()
    }

    /// The parent's span id: the incoming `traceparent`'s for a server span that continues a
    /// trace, the server span's for a client span; `None` for a trace started here.
    pub fn parent_span_id(&self) -> Option<[u8; 8]> {
        (self.parent_id != [0; 8]).then_some(self.parent_id)
    }

    /// Whether this server span continues a trace from a valid incoming `traceparent`. When
    /// it does not, an incoming `tracestate` belongs to no trace we continue: drop it.
    #[inline]
    pub fn has_remote_parent(&self) -> bool {
        self.remote_parent
    }

    /// Whether the span will be exported; when not, every setter is a no-op.
    #[inline]
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    pub fn kind(&self) -> SpanKind {
        self.kind
    }

    /// Server span: the matched route's name (`http.route`, and the span name
    /// `"{method} {route}"`).
    #[inline]
    pub fn set_route(&mut self, route: &Arc<str>) {
        if let Some(attributes) = self.attributes.as_deref_mut() {
            attributes.route = Some(route.clone());
        }
    }

    /// `http.response.status_code`: the status sent to the client (server span) or received
    /// from the upstream (client span). Server spans are errors from 500, client spans from
    /// 400 (HTTP semantic conventions).
    #[inline]
    pub fn set_status_code(&mut self, status: u16) {
        if let Some(attributes) = self.attributes.as_deref_mut() {
            attributes.status = status;
        }
    }

    /// `error.type`: on the server span, the error code when the gateway answered itself
    /// (`route_not_found`, `gateway_timeout`...); on a client span, why the attempt got no
    /// response (`timeout`, `connect_failure`, `reset`): such a span is an error. Without
    /// it, an error status exports its code as `error.type`, as the conventions ask.
    #[inline]
    pub fn set_error_type(&mut self, error_type: &'static str) {
        if let Some(attributes) = self.attributes.as_deref_mut() {
            attributes.error_type = Some(error_type);
        }
    }

    /// Client span: the socket address actually connected to (`network.peer.address`,
    /// `network.peer.port`), e.g. from hyper-util's `HttpInfo::remote_addr`.
    #[inline]
    pub fn set_peer(&mut self, peer: SocketAddr) {
        if let Some(attributes) = self.attributes.as_deref_mut() {
            attributes.peer = Some(peer);
        }
    }

    /// Server span: the route's name (same as [`set_route`](Self::set_route)) when the
    /// route is only known as a `&str`. Allocates; prefer `set_route` with a shared name.
    pub fn set_route_str(&mut self, route: &str) {
        if let Some(attributes) = self.attributes.as_deref_mut() {
            attributes.route = Some(Arc::from(route));
        }
    }

    /// The span as finished now; `None` when it does not record.
    pub(crate) fn record(&self) -> Option<SpanRecord<'_>> {
        let attributes = self.attributes.as_deref()?;
        Some(SpanRecord {
            trace_id: self.context.trace_id,
            span_id: self.context.span_id,
            parent_id: self.parent_id,
            kind: self.kind,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: unix_nanos().max(self.start_unix_nanos),
            attributes,
        })
    }
}
