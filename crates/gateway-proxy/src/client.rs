use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_core::{Body, ErrorKind, GatewayError};
use gateway_registry::{Endpoint, Scheme};
use gateway_telemetry::{Outcome, ServiceMetrics};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{BodyLimitError, RequestBody};
use crate::pool::{connect_failed, Http1Pool, Http2Pool};

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
                let http1 = Http1Pool::new(
                    settings.connect_timeout,
                    settings.pool_idle_timeout,
                    settings.pool_max_idle_per_host,
                );
                let h2c = Http2Pool::new(settings.connect_timeout, settings.pool_idle_timeout);
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
pub(crate) fn has_ambiguous_framing(headers: &http::HeaderMap) -> bool {
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

/// Turn an exchange error into what the caller sees: the client's own body faults are
/// 413/408/400, anything else a plain 502.
pub(crate) fn classify(err: &(dyn std::error::Error + 'static), endpoint: &Endpoint) -> GatewayError {
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
