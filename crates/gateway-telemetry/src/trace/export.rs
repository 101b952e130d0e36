//! The [`Tracer`]: span creation with the sampling decision, a bounded queue of finished
//! spans, and the background task that POSTs them to the collector over OTLP/HTTP.
//!
//! The queue ([`SpanQueue`]) is bounded in spans. Finishing a span never blocks and works
//! from any thread or runtime; when the queue is full the span is dropped and counted. The
//! exporter task does not wait on each span (that would wake it across threads per request);
//! it wakes on a timer (`flush_interval`) or when a full batch is waiting, takes what is
//! queued, and sends batches one POST at a time, so a slow or absent collector costs the
//! gateway nothing but the spans it drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Notify;

use super::context::TraceContext;
use super::id::new_trace_id;
use super::otlp::{rejected_spans, Encoder, Protocol};
use super::queue::{batches, Encoded, SpanQueue};
use super::sampler::Sampler;
use super::span::{ActiveSpan, SpanBuilder, SpanKind};

/// Finished spans waiting for export, at most.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;
/// Spans per export request, at most.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// How often whatever is queued is sent, when no full batch made it go earlier.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Connect plus request plus response, per export request.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// The collector's answer is read up to this size (it is a small JSON object).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Counters of the span pipeline, for `/metrics`. Cheap to clone (an `Arc`); keep one for
/// the process and hand it to every [`Tracer`] built on reload, so the counts survive.
#[derive(Clone, Default)]
pub struct TraceCounters {
    inner: Arc<CountersInner>,
}

#[derive(Default)]
struct CountersInner {
    /// Finished spans dropped because the queue was full.
    dropped: AtomicU64,
    /// Spans the collector accepted.
    exported: AtomicU64,
    /// Spans lost to failed export requests (or rejected by the collector).
    failed: AtomicU64,
    exports_ok: AtomicU64,
    exports_error: AtomicU64,
    /// The queue of the tracer built last, for the queue gauge (read at scrape time only).
    queue: Mutex<Weak<SpanQueue>>,
}

impl TraceCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Finished spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.inner.exported.load(Ordering::Relaxed)
    }

    /// Spans lost because their export request failed or the collector rejected them.
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// Export requests that succeeded and that failed.
    pub fn exports(&self) -> (u64, u64) {
        (self.inner.exports_ok.load(Ordering::Relaxed), self.inner.exports_error.load(Ordering::Relaxed))
    }

    /// Finished spans waiting (or being sent) in the queue of the tracer built last with these counters.
    pub fn queue_len(&self) -> usize {
        let queue = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.upgrade().map_or(0, |q| q.len())
    }

    /// Append the trace metrics in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let (ok, error) = self.exports();
        let queue_len = self.queue_len();
        let _ = write!(
            out,
            "# HELP gateway_trace_spans_exported_total Spans accepted by the OTLP collector.\n\
             # TYPE gateway_trace_spans_exported_total counter\n\
             gateway_trace_spans_exported_total {}\n\
             # HELP gateway_trace_spans_dropped_total Spans lost: queue full, or export failed.\n\
             # TYPE gateway_trace_spans_dropped_total counter\n\
             gateway_trace_spans_dropped_total{{reason=\"queue_full\"}} {}\n\
             gateway_trace_spans_dropped_total{{reason=\"export_failed\"}} {}\n\
             # HELP gateway_trace_exports_total OTLP export requests, by result.\n\
             # TYPE gateway_trace_exports_total counter\n\
             gateway_trace_exports_total{{result=\"ok\"}} {ok}\n\
             gateway_trace_exports_total{{result=\"error\"}} {error}\n\
             # HELP gateway_trace_queue_spans Finished spans waiting for export or being sent.\n\
             # TYPE gateway_trace_queue_spans gauge\n\
             gateway_trace_queue_spans {queue_len}\n",
            self.exported(),
            self.dropped(),
            self.failed(),
        );
    }
}

/// How a [`Tracer`] exports; see [`Tracer::builder`].
#[derive(Clone)]
pub struct TracerBuilder {
    endpoint: String,
    service_name: String,
    sample_ratio: f64,
    protocol: Protocol,
    queue_capacity: usize,
    batch_size: usize,
    flush_interval: Duration,
    export_timeout: Duration,
    counters: Option<TraceCounters>,
}

impl TracerBuilder {
    /// Share of the traces that start at the gateway to record (`0.0..=1.0`, default 1.0).
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = ratio;
        self
    }

    /// The encoding of the export requests (default protobuf).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Finished spans held for export at most (default [`DEFAULT_QUEUE_CAPACITY`]); their
    /// encoded bytes are held to 2 KiB per span of this (long spans fill it sooner).
    pub fn queue_capacity(mut self, spans: usize) -> Self {
        self.queue_capacity = spans;
        self
    }

    /// Spans per export request at most (default [`DEFAULT_BATCH_SIZE`]).
    pub fn batch_size(mut self, spans: usize) -> Self {
        self.batch_size = spans;
        self
    }

    /// Send what is queued at least this often (default [`DEFAULT_FLUSH_INTERVAL`]).
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every;
        self
    }

    /// Give up on an export request after this long (default [`DEFAULT_EXPORT_TIMEOUT`]).
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.export_timeout = timeout;
        self
    }

    /// Count into these counters (kept across reloads) instead of new ones.
    pub fn counters(mut self, counters: TraceCounters) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Validate, then spawn the exporter task on the current tokio runtime.
    pub fn build(self) -> Result<Tracer, String> {
        let sampler = Sampler::new(self.sample_ratio)?;
        let uri = traces_uri(&self.endpoint)?;
        if self.service_name.trim().is_empty() {
            return Err("the service name is empty".to_owned());
        }
        if self.queue_capacity == 0 || self.batch_size == 0 {
            return Err("the span queue and the batch size must hold at least one span".to_owned());
        }
        if self.flush_interval.is_zero() || self.export_timeout.is_zero() {
            return Err("the flush interval and the export timeout must be above zero".to_owned());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the trace exporter must be started inside a tokio runtime".to_owned())?;
        let client = HttpClient::new(&uri, self.export_timeout)?;
        let counters = self.counters.unwrap_or_default();
        let batch_size = self.batch_size.min(self.queue_capacity);
        let queue = Arc::new(SpanQueue::new(self.queue_capacity));
        *counters.inner.queue.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&queue);
        let wake = Arc::new(Notify::new());
        let encoder = Arc::new(Encoder::new(self.protocol, &self.service_name));
        let task = Task {
            client,
            uri,
            encoder: encoder.clone(),
            timeout: self.export_timeout,
            counters: counters.clone(),
            failing: false,
            failures_unlogged: 0,
            last_failure_log: None,
            drops_logged: 0,
            last_drop_log: None,
        };
        #[cfg_attr(not(test), allow(unused_variables))]
        let task = runtime.spawn(task.run(queue.clone(), wake.clone(), batch_size, self.flush_interval));
        Ok(Tracer {
            sampler,
            counters,
            endpoint: Some(self.endpoint),
            service_name: self.service_name,
            protocol: self.protocol,
            export: Some(Export {
                queue,
                encoder,
                batch_size,
                wake: WakeOnDrop(wake),
                #[cfg(test)]
                task: Some(task),
            }),
        })
    }
}

/// `{endpoint}/v1/traces`, the OTLP/HTTP traces path under the collector's base URL.
fn traces_uri(endpoint: &str) -> Result<Uri, String> {
    let uri: Uri = endpoint.parse().map_err(|e| format!("OTLP endpoint `{endpoint}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("OTLP endpoint `{endpoint}` must be an http:// or https:// URL")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("OTLP endpoint `{endpoint}` has no host"));
    };
    if uri.query().is_some() {
        return Err(format!("OTLP endpoint `{endpoint}` must not have a query"));
    }
    let base = uri.path().trim_end_matches('/');
    let path = if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") };
    Uri::builder()
        .scheme(uri.scheme_str().unwrap_or("http"))
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("OTLP endpoint `{endpoint}`: {e}"))
}

/// Creates spans with the sampling decision, and queues finished ones for export.
///
/// Build one per telemetry configuration ([`Tracer::new`], or [`Tracer::disabled`] when no
/// collector is set) and share it (`Arc<Tracer>`); rebuild it only when the telemetry
/// settings change. Dropping it stops the exporter task once what is queued has been sent
/// (or has failed).
pub struct Tracer {
    sampler: Sampler,
    counters: TraceCounters,
    endpoint: Option<String>,
    service_name: String,
    protocol: Protocol,
    export: Option<Export>,
}

/// The request path's half of the export pipeline. Dropping it closes the queue, then wakes
/// the task (field order), so the task sends what is left and stops.
struct Export {
    queue: Arc<SpanQueue>,
    /// Finished spans are encoded by the thread that finishes them.
    encoder: Arc<Encoder>,
    batch_size: usize,
    wake: WakeOnDrop,
    /// Tests check that the task stops; otherwise it is detached (it stops on its own once
    /// the queue is closed and drained).
    #[cfg(test)]
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Wakes the exporter task when the tracer goes, so it flushes and stops at once.
struct WakeOnDrop(Arc<Notify>);

impl Drop for Export {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("endpoint", &self.endpoint)
            .field("service_name", &self.service_name)
            .field("sample_ratio", &self.sampler.ratio())
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Export to the OTLP/HTTP collector at `endpoint` (`http://host:port`; spans are POSTed
    /// to `{endpoint}/v1/traces`) as `service_name`, recording `sample_ratio` of the traces
    /// that start here. Spawns the exporter task on the current tokio runtime.
    pub fn new(endpoint: &str, service_name: &str, sample_ratio: f64) -> Result<Tracer, String> {
        Tracer::builder(endpoint, service_name).sample_ratio(sample_ratio).build()
    }

    /// A tracer with the defaults, to adjust before [`TracerBuilder::build`].
    pub fn builder(endpoint: &str, service_name: &str) -> TracerBuilder {
        TracerBuilder {
            endpoint: endpoint.to_owned(),
            service_name: service_name.to_owned(),
            sample_ratio: 1.0,
            protocol: Protocol::default(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
            counters: None,
        }
    }

    /// A tracer that records nothing: no task, no queue. Its spans still carry ids, so
    /// `traceparent` can be propagated (a new span id per hop, the incoming sampled flag
    /// kept, new traces unsampled) without any allocation but the header itself.
    pub fn disabled() -> Tracer {
        Tracer {
            sampler: Sampler::NEVER,
            counters: TraceCounters::default(),
            endpoint: None,
            service_name: String::new(),
            protocol: Protocol::default(),
            export: None,
        }
    }

    /// Whether spans are exported. When not, no span records and nothing allocates.
    pub fn enabled(&self) -> bool {
        self.export.is_some()
    }

    /// Whether this tracer was built from these settings (so a reload can keep it).
    pub fn is_configured_as(
        &self,
        endpoint: Option<&str>,
        service_name: &str,
        sample_ratio: f64,
        protocol: Protocol,
    ) -> bool {
        match (self.endpoint.as_deref(), endpoint) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a == b
                    && self.service_name == service_name
                    && self.sampler.ratio() == sample_ratio
                    && self.protocol == protocol
            }
            _ => false,
        }
    }

    pub fn sample_ratio(&self) -> f64 {
        self.sampler.ratio()
    }

    pub fn counters(&self) -> &TraceCounters {
        &self.counters
    }

    /// Finished spans dropped because the queue was full (`counters().dropped()`).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped()
    }

    /// Finished spans waiting for export, or being sent, now.
    pub fn queue_len(&self) -> usize {
        self.export.as_ref().map_or(0, |e| e.queue.len())
    }

    /// The most spans that can wait for export.
    pub fn queue_capacity(&self) -> usize {
        self.export.as_ref().map_or(0, |e| e.queue.capacity())
    }

    /// Whether a trace that starts here with this id is recorded (the ratio rule; an
    /// incoming sampled flag takes precedence, see [`Tracer::server_span`]).
    pub fn should_sample(&self, trace_id: &[u8; 16]) -> bool {
        self.enabled() && self.sampler.sample(trace_id)
    }

    /// The server span of a request, continuing `incoming` (the request's valid
    /// `traceparent`, see [`TraceContext::from_headers`]) or starting a new trace.
    ///
    /// Sampling: with an incoming context, its sampled flag decides; without one, the
    /// trace id decides by ratio ([`Tracer::should_sample`]). A disabled tracer records
    /// nothing but keeps the incoming flag for the next hop.
    pub fn server_span(&self, incoming: Option<TraceContext>) -> SpanBuilder {
        match incoming {
            Some(parent) => {
                let sampled = parent.is_sampled();
                SpanBuilder::new(
                    SpanKind::Server,
                    parent.trace_id,
                    parent.span_id,
                    sampled,
                    sampled && self.enabled(),
                    true,
                )
            }
            None => {
                let trace_id = new_trace_id();
                let sampled = self.should_sample(&trace_id);
                SpanBuilder::new(SpanKind::Server, trace_id, [0; 8], sampled, sampled, false)
            }
        }
    }

    /// A client span for one upstream attempt (retries and aggregate parts each get their
    /// own), child of `parent` (the server span). Send its
    /// [`traceparent`](ActiveSpan::traceparent) upstream.
    pub fn client_span(&self, parent: &ActiveSpan) -> SpanBuilder {
        let ctx = parent.context();
        SpanBuilder::new(SpanKind::Client, ctx.trace_id, ctx.span_id, ctx.is_sampled(), parent.is_recording(), false)
    }

    /// End `span` now and queue it for export. Never blocks: when the queue is full the
    /// span is dropped and counted. Does nothing for a span that is not recording.
    pub fn finish(&self, span: ActiveSpan) {
        let Some(export) = &self.export else { return };
        let Some(record) = span.record() else { return };
        let Some(queued) = export.queue.reserve() else {
            // Full: the span is dropped before it is encoded.
            self.counters.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !export.queue.push(|out, memo| export.encoder.append_span(&record, out, memo)) {
            // Full of bytes (long spans): dropped as when full of spans.
            self.counters.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Wake the exporter once per full batch; the timer covers the rest.
        if queued % export.batch_size == 0 {
            export.wake.0.notify_one();
        }
    }

    /// The exporter task, for tests that check it stops.
    #[cfg(test)]
    pub(crate) fn take_task(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.export.as_mut().and_then(|e| e.task.take())
    }
}

type Body = Full<Bytes>;

/// An HTTP/1.1 client for the collector (TLS only for an https endpoint).
enum HttpClient {
    Plain(Client<HttpConnector, Body>),
    Tls(Client<HttpsConnector<HttpConnector>, Body>),
}

impl HttpClient {
    fn new(uri: &Uri, timeout: Duration) -> Result<HttpClient, String> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_timer(TokioTimer::new()).pool_idle_timeout(Duration::from_secs(30)).pool_max_idle_per_host(2);
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Ok(HttpClient::Plain(builder.build(connector)));
        }
        connector.enforce_http(false);
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup for the OTLP endpoint failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(connector);
        Ok(HttpClient::Tls(builder.build(https)))
    }

    fn request(&self, req: Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            HttpClient::Plain(c) => c.request(req),
            HttpClient::Tls(c) => c.request(req),
        }
    }
}

/// The exporter task's state.
struct Task {
    client: HttpClient,
    uri: Uri,
    encoder: Arc<Encoder>,
    timeout: Duration,
    counters: TraceCounters,
    /// The last export failed (a success after failures is logged once).
    failing: bool,
    failures_unlogged: u64,
    last_failure_log: Option<Instant>,
    drops_logged: u64,
    last_drop_log: Option<Instant>,
}

impl Task {
    async fn run(mut self, queue: Arc<SpanQueue>, wake: Arc<Notify>, batch_size: usize, flush_interval: Duration) {
        let mut tick = tokio::time::interval(flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut taken: Vec<Encoded> = Vec::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = wake.notified() => {}
            }
            // Read before taking: once closed, nothing more can be finished (`finish` needs
            // the tracer), so what is taken after this is everything.
            let closed = queue.is_closed();
            // Every buffer first, then batches across them: one request for a few spans from
            // each worker, not one per worker.
            taken.resize_with(queue.buffers(), Encoded::default);
            for (index, buffer) in taken.iter_mut().enumerate() {
                queue.swap_out(index, buffer);
            }
            for batch in batches(&taken, batch_size) {
                self.export(&batch.runs, batch.spans).await;
                queue.release(batch.spans, batch.bytes);
            }
            self.log_drops();
            if closed {
                tracing::debug!(endpoint = %self.uri, "trace exporter stopped");
                return;
            }
        }
    }

    /// POST `count` spans, encoded one after another in the `spans` runs.
    async fn export(&mut self, spans: &[&[u8]], count: usize) {
        let body = self.encoder.request(spans);
        let spans = count as u64;
        let request = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, self.encoder.protocol().content_type())
            .header(USER_AGENT, concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body));
        let request = match request {
            Ok(r) => r,
            Err(e) => return self.failed(spans, format!("cannot build the export request: {e}")),
        };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| error_chain(&e))?;
            let status = response.status();
            let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<(StatusCode, Option<String>, Bytes), String>((status, content_type, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => self.failed(spans, format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => self.failed(spans, e),
            Ok(Ok((status, _, body))) if !status.is_success() => {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                self.failed(spans, format!("collector answered {status}: {text}"));
            }
            Ok(Ok((_, content_type, body))) => {
                let rejected = rejected_spans(content_type.as_deref(), &body).min(spans);
                self.counters.inner.exports_ok.fetch_add(1, Ordering::Relaxed);
                self.counters.inner.exported.fetch_add(spans - rejected, Ordering::Relaxed);
                if rejected > 0 {
                    self.counters.inner.failed.fetch_add(rejected, Ordering::Relaxed);
                    self.log_failure(format!("collector rejected {rejected} of {spans} spans"));
                } else if self.failing {
                    self.failing = false;
                    tracing::info!(endpoint = %self.uri, "trace export recovered");
                }
            }
        }
    }

    fn failed(&mut self, spans: u64, error: String) {
        self.counters.inner.failed.fetch_add(spans, Ordering::Relaxed);
        self.counters.inner.exports_error.fetch_add(1, Ordering::Relaxed);
        self.failing = true;
        self.log_failure(error);
    }

    /// One warning per [`LOG_EVERY`] at most, with how many failures it stands for.
    fn log_failure(&mut self, error: String) {
        self.failures_unlogged += 1;
        let now = Instant::now();
        if self.last_failure_log.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            tracing::warn!(
                endpoint = %self.uri,
                error = %error,
                failures = self.failures_unlogged,
                spans_lost = self.counters.failed(),
                "trace export failed; spans dropped"
            );
            self.failures_unlogged = 0;
            self.last_failure_log = Some(now);
        }
    }

    fn log_drops(&mut self) {
        let dropped = self.counters.dropped();
        if dropped == self.drops_logged {
            return;
        }
        let now = Instant::now();
        if self.last_drop_log.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            tracing::warn!(
                endpoint = %self.uri,
                dropped = dropped - self.drops_logged,
                "trace queue full; finished spans dropped"
            );
            self.drops_logged = dropped;
            self.last_drop_log = Some(now);
        }
    }
}

/// An error with its causes, for a log line that says why a connection failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_to_v1_traces_under_the_endpoint() {
        let uri = |e: &str| traces_uri(e).map(|u| u.to_string());
        assert_eq!(uri("http://127.0.0.1:4318").as_deref(), Ok("http://127.0.0.1:4318/v1/traces"));
        assert_eq!(uri("http://127.0.0.1:4318/").as_deref(), Ok("http://127.0.0.1:4318/v1/traces"));
        assert_eq!(uri("https://otel.example.com/otlp").as_deref(), Ok("https://otel.example.com/otlp/v1/traces"));
        assert_eq!(uri("http://c:4318/v1/traces").as_deref(), Ok("http://c:4318/v1/traces"));
        assert!(uri("127.0.0.1:4318").is_err());
        assert!(uri("/v1/traces").is_err());
    }
}
