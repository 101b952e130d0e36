use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gateway_core::{Body, ErrorKind, GatewayError};
use gateway_registry::{Endpoint, Scheme};
use gateway_telemetry::{Outcome, ServiceMetrics};
use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response};
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::{BodyLimitError, RequestBody};

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Tell this thread which worker runtime it is, so it uses that worker's pools.
pub fn set_worker_index(index: usize) {
    WORKER.with(|w| w.set(index));
}

pub fn worker_index() -> usize {
    WORKER.with(Cell::get)
}

/// How to reach a service's endpoints.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// How long an unused pooled connection is kept.
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// TLS for `https` endpoints; `None` when the service has none.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            tls: None,
        }
    }
}

type TlsClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

struct WorkerPools {
    /// `http://` endpoints: the plain proxy's hot path.
    http1: Http1Pool,
    /// `h2c://` endpoints (gRPC, most often).
    h2c: Http2Pool,
    /// ALPN picks HTTP/2 or HTTP/1.1 per connection.
    https: Option<TlsClient>,
}

/// The keep-alive pools of one service: one set per worker runtime, so each pooled
/// connection is driven on the thread that uses it.
pub struct UpstreamClient {
    pools: Box<[WorkerPools]>,
}

impl UpstreamClient {
    pub fn new(settings: &UpstreamSettings, workers: usize) -> Self {
        let pools = (0..workers.max(1))
            .map(|_| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(settings.connect_timeout));
                connector.set_nodelay(true);
                connector.enforce_http(true);
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(settings.pool_idle_timeout)
                    .pool_max_idle_per_host(settings.pool_max_idle_per_host);
                let http1 = Http1Pool::new(settings);
                let h2c = Http2Pool::new(settings);
                let https = settings.tls.as_ref().map(|tls| {
                    let mut tcp = connector;
                    tcp.enforce_http(false);
                    let https = HttpsConnectorBuilder::new()
                        .with_tls_config(rustls::ClientConfig::clone(tls))
                        .https_only()
                        .enable_all_versions()
                        .wrap_connector(tcp);
                    builder.build(https)
                });
                WorkerPools { http1, h2c, https }
            })
            .collect();
        UpstreamClient { pools }
    }

    /// Send `req` (whose URI holds only path and query) to `endpoint`, waiting at most
    /// `timeout` for the response head. The response body streams back untouched.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        mut req: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<Body>, GatewayError> {
        let pools = &self.pools[worker_index() % self.pools.len()];
        let request = match (endpoint.scheme(), &pools.https) {
            (Scheme::Http, _) => {
                return match tokio::time::timeout(timeout, pools.http1.send(endpoint, req)).await {
                    Ok(result) => result.and_then(|resp| checked(resp, endpoint)),
                    Err(_) => Err(timed_out(endpoint, timeout)),
                };
            }
            (Scheme::H2c, _) => {
                // HTTP/2 sends the scheme and authority as pseudo-headers: an absolute URI.
                *req.uri_mut() = absolute(endpoint, req.uri())?;
                *req.version_mut() = http::Version::HTTP_2;
                return match tokio::time::timeout(timeout, pools.h2c.send(endpoint, req)).await {
                    Ok(result) => result.and_then(|resp| checked(resp, endpoint)),
                    Err(_) => Err(timed_out(endpoint, timeout)),
                };
            }
            // hyper-util's client takes absolute URIs.
            (Scheme::Https, Some(https)) => {
                *req.uri_mut() = absolute(endpoint, req.uri())?;
                https.request(req)
            }
            (Scheme::Https, None) => {
                return Err(GatewayError::new(ErrorKind::BadGateway, "no TLS settings for an https endpoint"));
            }
        };
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(resp)) => checked(resp, endpoint),
            Ok(Err(err)) if err.is_connect() => Err(connect_failed(endpoint)),
            Ok(Err(err)) => Err(classify(&err, endpoint)),
            Err(_) => Err(timed_out(endpoint, timeout)),
        }
    }

    /// [`send`](Self::send), recording the outcome in the service's metrics.
    pub async fn send_measured(
        &self,
        endpoint: &Endpoint,
        req: Request<RequestBody>,
        timeout: Duration,
        metrics: &ServiceMetrics,
    ) -> Result<Response<Body>, GatewayError> {
        let started = Instant::now();
        let result = self.send(endpoint, req, timeout).await;
        let outcome = match &result {
            Ok(resp) if resp.status().is_server_error() => Outcome::ServerError,
            Ok(resp) if resp.status().is_client_error() => Outcome::ClientError,
            Ok(_) => Outcome::Success,
            Err(e) if e.kind == ErrorKind::GatewayTimeout => Outcome::Timeout,
            Err(e) if e.retryable => Outcome::ConnectFailure,
            Err(_) => Outcome::Reset,
        };
        metrics.record(outcome, started.elapsed());
        result
    }
}

/// Both `content-length` and `transfer-encoding`, or several different lengths: the
/// upstream and the gateway may disagree on where the answer ends.
fn has_ambiguous_framing(headers: &http::HeaderMap) -> bool {
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else { return false };
    headers.contains_key(http::header::TRANSFER_ENCODING) || lengths.any(|other| other != first)
}

/// `uri`'s path and query at `endpoint`.
fn absolute(endpoint: &Endpoint, uri: &Uri) -> Result<Uri, GatewayError> {
    let path = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(endpoint.uri_scheme())
        .authority(endpoint.authority().clone())
        .path_and_query(path)
        .build()
        .map_err(|e| GatewayError::new(ErrorKind::BadRequest, format!("cannot build upstream uri: {e}")))
}

/// A response head as the caller may use it: one with ambiguous framing is refused (and
/// dropped unread, which keeps its connection from being used again).
fn checked(resp: Response<hyper::body::Incoming>, endpoint: &Endpoint) -> Result<Response<Body>, GatewayError> {
    if has_ambiguous_framing(resp.headers()) {
        return Err(GatewayError::new(
            ErrorKind::BadGateway,
            format!("upstream {} sent an answer with ambiguous framing", endpoint.address()),
        ));
    }
    Ok(resp.map(Body::from))
}

fn timed_out(endpoint: &Endpoint, timeout: Duration) -> GatewayError {
    GatewayError::new(
        ErrorKind::GatewayTimeout,
        format!("upstream {} did not answer within {timeout:?}", endpoint.address()),
    )
}

/// A connection that could not be made: retryable (nothing was sent).
fn connect_failed(endpoint: &Endpoint) -> GatewayError {
    GatewayError::new(ErrorKind::BadGateway, format!("cannot connect to upstream {}", endpoint.address())).retryable()
}

/// Turn an exchange error into what the caller sees: the client's own body faults are
/// 413/408/400, anything else a plain 502.
fn classify(err: &(dyn std::error::Error + 'static), endpoint: &Endpoint) -> GatewayError {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(limit) = e.downcast_ref::<BodyLimitError>() {
            let kind = match limit {
                BodyLimitError::TooLarge(_) => ErrorKind::PayloadTooLarge,
                BodyLimitError::Stalled(_) => ErrorKind::RequestTimeout,
                BodyLimitError::Aborted => ErrorKind::BadRequest,
            };
            return GatewayError::new(kind, limit.to_string()).closing();
        }
        source = e.source();
    }
    tracing::debug!(upstream = %endpoint, error = ?err, "upstream exchange failed");
    GatewayError::new(
        ErrorKind::BadGateway,
        format!("upstream {} reset the connection or sent an invalid response", endpoint.address()),
    )
}

/// Keep-alive HTTP/1.1 connections to `http://` endpoints, kept per endpoint (one pool per
/// worker runtime, so a connection is driven on the thread that uses it).
///
/// The plain proxy's hot path. hyper-util's pool, which `h2c` and `https` endpoints still
/// use, hashes its key byte by byte with SipHash twice per request and moves each request
/// through several future layers: about 8,000 instructions per request more than this
/// (load-tests/RESULTS.md). A connection goes back to its endpoint's list as soon as the
/// response head is in; a request takes one that is ready now (its last response read to
/// the end), skipping those still busy and dropping those closed or idle too long, or
/// opens one.
struct Http1Pool {
    connections: Mutex<HashMap<Box<str>, Vec<Pooled>, BuildHasherDefault<AddressHasher>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Connections kept per endpoint, busy or idle; past this the oldest goes.
    max_per_endpoint: usize,
}

struct Pooled {
    sender: SendRequest<RequestBody>,
    /// When its last response head came in.
    since: Instant,
}

impl Http1Pool {
    fn new(settings: &UpstreamSettings) -> Self {
        Http1Pool {
            connections: Mutex::default(),
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.pool_idle_timeout,
            max_per_endpoint: settings.pool_max_idle_per_host,
        }
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        mut req: Request<RequestBody>,
    ) -> Result<Response<hyper::body::Incoming>, GatewayError> {
        let authority = endpoint.authority();
        if !req.headers().contains_key(HOST) {
            // What hyper-util's client sends: the host, and the port unless it is 80.
            let host = match authority.port_u16() {
                Some(80) | None => authority.host(),
                Some(_) => authority.as_str(),
            };
            if let Ok(value) = HeaderValue::from_str(host) {
                req.headers_mut().insert(HOST, value);
            }
        }
        let key = authority.as_str();
        let (mut sender, reused) = match self.take_ready(key) {
            Some(sender) => (sender, true),
            None => (self.connect(endpoint).await?, false),
        };
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut failed) => match failed.take_message() {
                // A kept connection the upstream had closed, found out before anything was
                // sent: once more on a new connection (as hyper-util retries it).
                Some(req) if reused => {
                    sender = self.connect(endpoint).await?;
                    sender.send_request(req).await.map_err(|e| classify(&e, endpoint))?
                }
                _ => return Err(classify(failed.error(), endpoint)),
            },
        };
        // An upgraded connection belongs to the tunnel.
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            self.keep(key, sender);
        }
        Ok(response)
    }

    /// A kept connection to `key` that can take a request now.
    fn take_ready(&self, key: &str) -> Option<SendRequest<RequestBody>> {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let list = connections.get_mut(key)?;
        let mut cx = Context::from_waker(Waker::noop());
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            match list[i].sender.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) if list[i].since.elapsed() <= self.idle_timeout => {
                    return Some(list.swap_remove(i).sender);
                }
                // Closed, or idle for too long (the upstream may be about to close it).
                Poll::Ready(_) => drop(list.swap_remove(i)),
                // Still reading its last response.
                Poll::Pending => {}
            }
        }
        None
    }

    fn keep(&self, key: &str, sender: SendRequest<RequestBody>) {
        let pooled = Pooled { sender, since: Instant::now() };
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let list = match connections.get_mut(key) {
            Some(list) => list,
            None => connections.entry(key.into()).or_default(),
        };
        if list.len() >= self.max_per_endpoint {
            if self.max_per_endpoint == 0 {
                return;
            }
            list.remove(0);
        }
        list.push(pooled);
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<SendRequest<RequestBody>, GatewayError> {
        let tcp = connect_tcp(endpoint, self.connect_timeout).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|_| connect_failed(endpoint))?;
        let upstream = endpoint.address().to_owned();
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(upstream, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// One HTTP/2 connection per `h2c://` endpoint (one pool per worker runtime), shared by
/// every request to it, replaced when it closes; while it is being made, the other requests
/// to that endpoint wait for it rather than each opening their own. Like [`Http1Pool`], it
/// spares the hot path hyper-util's pool.
struct Http2Pool {
    connections: Mutex<HashMap<Box<str>, Arc<Http2Slot>, BuildHasherDefault<AddressHasher>>>,
    connect_timeout: Duration,
}

/// An endpoint's connection, if any; the lock is held while one is made.
type Http2Slot = tokio::sync::Mutex<Option<http2::SendRequest<RequestBody>>>;

impl Http2Pool {
    fn new(settings: &UpstreamSettings) -> Self {
        Http2Pool { connections: Mutex::default(), connect_timeout: settings.connect_timeout }
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        req: Request<RequestBody>,
    ) -> Result<Response<hyper::body::Incoming>, GatewayError> {
        let slot = {
            let key = endpoint.authority().as_str();
            let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            match connections.get(key) {
                Some(slot) => slot.clone(),
                None => connections.entry(key.into()).or_default().clone(),
            }
        };
        let (mut sender, reused) = self.sender(endpoint, &slot, None).await?;
        match sender.try_send_request(req).await {
            Ok(response) => Ok(response),
            Err(mut failed) => match failed.take_message() {
                // The kept connection closed (a GOAWAY, say) before the stream was sent: once
                // more on a new one.
                Some(req) if reused => {
                    let (mut sender, _) = self.sender(endpoint, &slot, Some(&sender)).await?;
                    sender.send_request(req).await.map_err(|e| classify(&e, endpoint))
                }
                _ => Err(classify(failed.error(), endpoint)),
            },
        }
    }

    /// The endpoint's open connection (and `true`), or a new one made now; `failed` is a
    /// connection just seen failing, which is replaced even if it does not know it yet.
    async fn sender(
        &self,
        endpoint: &Endpoint,
        slot: &Http2Slot,
        failed: Option<&http2::SendRequest<RequestBody>>,
    ) -> Result<(http2::SendRequest<RequestBody>, bool), GatewayError> {
        let mut kept = slot.lock().await;
        if let Some(sender) = kept.as_ref().filter(|s| !s.is_closed() && failed.is_none()) {
            return Ok((sender.clone(), true));
        }
        let tcp = connect_tcp(endpoint, self.connect_timeout).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| connect_failed(endpoint))?;
        let upstream = endpoint.address().to_owned();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream, error = %e, "upstream connection ended");
            }
        });
        *kept = Some(sender.clone());
        Ok((sender, false))
    }
}

/// A TCP connection to `endpoint` (its name resolved), within `timeout`, without Nagle.
async fn connect_tcp(endpoint: &Endpoint, timeout: Duration) -> Result<tokio::net::TcpStream, GatewayError> {
    let address = endpoint.authority().as_str();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => {
            tracing::debug!(upstream = %endpoint, error = %e, "connect failed");
            Err(connect_failed(endpoint))
        }
        Err(_) => Err(connect_failed(endpoint)),
    }
}

/// FxHash-style hashing of the endpoint addresses that key the pool: a few multiplies, not
/// SipHash (the keys come from the configuration and the registry, not from clients).
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        let tail = chunks.remainder().iter().fold(0u64, |word, &b| (word << 8) | u64::from(b));
        self.0 = (self.0.rotate_left(5) ^ tail).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
