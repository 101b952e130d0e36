//! A backend that records and echoes what reached it, and [`TestServer`], the hyper server
//! under it, for backends with behaviour of their own.
//!
//! Paths the [`Backend`] understands:
//! - `/status/{code}`: answers that status;
//! - `/slow/{ms}`: waits, then answers 200;
//! - `/body`: answers the request body back byte for byte (streamed);
//! - `/hop`: answers with hop-by-hop headers that must not reach the client;
//! - `/trailers`: reads the whole request, answers `payload` then the trailers
//!   `grpc-status: 0`, `grpc-message: ok`, `x-custom-meta: meta-value`, plus each request
//!   trailer echoed as `echo-{name}` (trailers reach HTTP/1.1 clients only with `te: trailers`);
//! - anything else: 200 with a JSON echo of method, path, query and headers.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// What one request looked like when it reached the backend.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub headers: BTreeMap<String, Vec<String>>,
    /// The HTTP version it arrived in, as `http::Version` prints it (`HTTP/1.1`, `HTTP/2.0`).
    pub version: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

/// A recording echo backend (see the module docs for its paths).
pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: TestServer,
}

impl Backend {
    /// Serve HTTP/1.1 in clear.
    pub async fn start() -> Backend {
        Self::start_with(Protocol::Http1).await
    }

    /// Serve HTTP/2 in clear with prior knowledge (an `h2c://` endpoint).
    pub async fn start_h2c() -> Backend {
        Self::start_with(Protocol::H2c).await
    }

    /// Serve HTTPS with `tls`: HTTP/2 when ALPN chose `h2`, else HTTP/1.1.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Backend {
        Self::start_with(Protocol::Tls(tls)).await
    }

    /// Serve the echo paths over `protocol`.
    pub async fn start_with(protocol: Protocol) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorder = seen.clone();
        let server = TestServer::serve(listener, protocol, move |req| answer(req, recorder.clone(), addr));
        Backend { addr, seen, _server: server }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the backend saw a request")
    }
}

/// An HTTP/1.1 echo backend (the [`Backend`] paths) that a chaos test can kill, restart on
/// the same port, and slow down.
///
/// Dropping a [`Backend`] stops only its accept loop: the tasks of the connections already
/// accepted go on serving pooled keep-alive connections. [`kill`](Self::kill) closes the
/// listener *and* every open connection, as a crashed process would.
pub struct ChaosBackend {
    /// The port stays the same across [`kill`](Self::kill) and [`restart`](Self::restart).
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    delay_ms: Arc<AtomicU64>,
    running: Option<Running>,
}

/// The accept loop and the connection tasks of a live [`ChaosBackend`].
struct Running {
    accept: JoinHandle<()>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl ChaosBackend {
    /// Serve on a fresh `127.0.0.1` port.
    pub async fn start() -> ChaosBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut backend = ChaosBackend { addr, seen: Arc::default(), delay_ms: Arc::default(), running: None };
        backend.running = Some(backend.serve(listener));
        backend
    }

    fn serve(&self, listener: TcpListener) -> Running {
        let connections: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let tracked = connections.clone();
        let (seen, delay_ms, addr) = (self.seen.clone(), self.delay_ms.clone(), self.addr);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (seen, delay_ms) = (seen.clone(), delay_ms.clone());
                let handler = move |req| {
                    let (seen, delay) = (seen.clone(), Duration::from_millis(delay_ms.load(Ordering::Relaxed)));
                    async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        answer(req, seen, addr).await
                    }
                };
                let mut set = tracked.lock().unwrap();
                while set.try_join_next().is_some() {}
                set.spawn(serve_io(stream, false, handler));
            }
        });
        Running { accept, connections }
    }

    /// Close the listener and every open connection (requests in progress included), and
    /// wait until they are gone. Connecting to [`addr`](Self::addr) is refused from now on.
    pub async fn kill(&mut self) {
        let Some(running) = self.running.take() else { return };
        running.accept.abort();
        // Once the aborted task is joined, its future (and the listener) has been dropped,
        // and no connection can be added to the set any more.
        let _ = running.accept.await;
        let mut connections = std::mem::take(&mut *running.connections.lock().unwrap());
        connections.shutdown().await;
    }

    /// Serve again on the same port after [`kill`](Self::kill), retrying the bind for up
    /// to two seconds.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "restart() is for a killed backend");
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if Instant::now() >= deadline => panic!("cannot bind {} again: {e}", self.addr),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.running = Some(self.serve(listener));
    }

    /// Wait `delay` before answering each request that arrives from now on (zero: answer at once).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How many requests reached this backend, over all its lives.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for ChaosBackend {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.accept.abort();
            running.connections.lock().unwrap().abort_all();
        }
    }
}

/// How a [`TestServer`] speaks on the connections it accepts.
#[derive(Clone)]
pub enum Protocol {
    /// HTTP/1.1 in clear (with upgrades).
    Http1,
    /// HTTP/2 in clear, prior knowledge.
    H2c,
    /// TLS with this configuration, then HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
    Tls(Arc<rustls::ServerConfig>),
}

/// The body type every [`TestServer`] handler answers with.
pub type BoxedBody = BoxBody<Bytes, hyper::Error>;

/// A hyper server on a fresh `127.0.0.1` port, running `handler` for every request until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Bind a fresh port, then serve `handler` over `protocol` on every accepted connection.
    pub async fn start<F, Fut>(protocol: Protocol, handler: F) -> TestServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<BoxedBody>, hyper::Error>> + Send + 'static,
    {
        Self::serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), protocol, handler)
    }

    /// Serve `handler` over `protocol` on the connections `listener` accepts.
    pub fn serve<F, Fut>(listener: tokio::net::TcpListener, protocol: Protocol, handler: F) -> TestServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<BoxedBody>, hyper::Error>> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                let protocol = protocol.clone();
                tokio::spawn(async move {
                    match protocol {
                        Protocol::Http1 => serve_io(stream, false, handler).await,
                        Protocol::H2c => serve_io(stream, true, handler).await,
                        Protocol::Tls(config) => {
                            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else { return };
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve_io(tls, h2, handler).await;
                        }
                    }
                });
            }
        });
        TestServer { addr, task }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve one connection with `handler`, as HTTP/2 or HTTP/1.1.
async fn serve_io<I, F, Fut>(io: I, h2: bool, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<BoxedBody>, hyper::Error>> + Send + 'static,
{
    let svc = service_fn(handler);
    if h2 {
        let _ = http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), svc).await;
    } else {
        let _ = http1::Builder::new().serve_connection(TokioIo::new(io), svc).with_upgrades().await;
    }
}

type Out = BoxedBody;

/// A whole body for a [`TestServer`] answer.
pub fn full(b: impl Into<Bytes>) -> BoxedBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    addr: SocketAddr,
) -> Result<Response<Out>, hyper::Error> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers.entry(name.to_string()).or_default().push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let record = Seen {
        method: req.method().to_string(),
        target: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: headers.clone(),
        version: format!("{:?}", req.version()),
    };
    seen.lock().unwrap().push(record.clone());
    let path = req.uri().path().to_owned();
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::OK);
        return Ok(Response::builder().status(status).body(full("")).unwrap());
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return Ok(Response::new(full("slow")));
    }
    if path == "/body" {
        return Ok(Response::new(req.into_body().boxed()));
    }
    if path == "/trailers" {
        let collected = req.into_body().collect().await?;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        trailers.insert("x-custom-meta", "meta-value".parse().unwrap());
        for (name, value) in collected.trailers().into_iter().flatten() {
            trailers.insert(HeaderName::try_from(format!("echo-{name}")).unwrap(), value.clone());
        }
        let body = Full::new(Bytes::from_static(b"payload"))
            .map_err(|never| match never {})
            .with_trailers(async move { Some(Ok(trailers)) });
        return Ok(Response::builder().header("content-type", "application/grpc").body(body.boxed()).unwrap());
    }
    if path == "/hop" {
        return Ok(Response::builder()
            .header("connection", "x-backend-secret")
            .header("x-backend-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "1")
            .body(full("hop"))
            .unwrap());
    }
    let body = req.into_body().collect().await?.to_bytes();
    let json = serde_json::json!({
        "backend": addr.to_string(),
        "method": record.method,
        "target": record.target,
        "headers": headers,
        "body_len": body.len(),
    });
    Ok(Response::builder().header("content-type", "application/json").body(full(json.to_string())).unwrap())
}
