//! Keep-alive connections to `http://` and `h2c://` endpoints, kept per endpoint, one pool
//! per worker runtime (so a connection is driven on the thread that uses it).
//!
//! The plain proxy's hot path. hyper-util's legacy pool, which `https://` endpoints still
//! use, hashes its key byte by byte with SipHash on checkout and again on return, and moves
//! each request through several future layers: about 8,000 instructions per request more
//! than these (load-tests/RESULTS.md).
//!
//! - [`Http1Pool`]: a list of HTTP/1.1 connections per endpoint. A connection goes back to
//!   its list as soon as the response head is in; a request takes one that is ready now
//!   (hyper says so only once the last exchange is over, its response read to the end),
//!   skipping those still busy and dropping those closed or idle too long, or opens one.
//! - [`Http2Pool`]: one HTTP/2 connection per endpoint, shared by every request to it. While
//!   it is being made the other requests to that endpoint wait for it; when making it has
//!   just failed they fail at once (retryably) instead of each trying in turn.
//! - A kept connection found closed before anything was sent (hyper hands the request back
//!   only then) is replaced once.
//! - A reaper task per pool drops closed and idle connections every few seconds, and the
//!   entries of endpoints that no longer have any.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gateway_core::{ErrorKind, GatewayError};
use gateway_registry::Endpoint;
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::RequestBody;
use crate::client::{classify, has_ambiguous_framing};

/// Endpoint address → what is kept for it, hashed cheaply (the keys come from the
/// configuration and the registry, not from clients).
type ByEndpoint<T> = HashMap<Box<str>, T, BuildHasherDefault<AddressHasher>>;

/// A connection that could not be made: retryable (nothing was sent).
pub(crate) fn connect_failed(endpoint: &Endpoint) -> GatewayError {
    GatewayError::new(ErrorKind::BadGateway, format!("cannot connect to upstream {}", endpoint.address())).retryable()
}

pub(crate) struct Http1Pool {
    shared: Arc<Http1Shared>,
    reaper: Once,
}

struct Http1Shared {
    connections: Mutex<ByEndpoint<Vec<Kept>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Connections kept per endpoint, busy or idle; past this a finished one is let go.
    max_per_endpoint: usize,
}

struct Kept {
    sender: http1::SendRequest<RequestBody>,
    /// When its last response head came in.
    since: Instant,
}

impl Http1Pool {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration, max_per_endpoint: usize) -> Self {
        let shared = Http1Shared { connections: Mutex::default(), connect_timeout, idle_timeout, max_per_endpoint };
        Http1Pool { shared: Arc::new(shared), reaper: Once::new() }
    }

    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, GatewayError> {
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
        let shared = &self.shared;
        let key = authority.as_str();
        // Connecting is boxed: its futures (name resolution, timeouts) would otherwise make
        // every request's future larger, and it is moved several times per request.
        let (mut sender, reused) = match shared.take_ready(key) {
            Some(sender) => (sender, true),
            None => (Box::pin(shared.connect(endpoint)).await?, false),
        };
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut failed) => match failed.take_message() {
                Some(req) if reused => {
                    sender = Box::pin(shared.connect(endpoint)).await?;
                    sender.send_request(req).await.map_err(|e| classify(&e, endpoint))?
                }
                _ => return Err(classify(failed.error(), endpoint)),
            },
        };
        // An upgraded connection belongs to the tunnel; one whose answer's framing is in
        // doubt is not used again.
        if response.status() != StatusCode::SWITCHING_PROTOCOLS && !has_ambiguous_framing(response.headers()) {
            shared.keep(key, sender);
            self.reaper
                .call_once(|| spawn_reaper(Arc::downgrade(&self.shared), shared.idle_timeout, Http1Shared::sweep));
        }
        Ok(response)
    }
}

impl Http1Shared {
    /// A kept connection to `key` that can take a request now.
    fn take_ready(&self, key: &str) -> Option<http1::SendRequest<RequestBody>> {
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
                // Still busy with its last exchange.
                Poll::Pending => {}
            }
        }
        None
    }

    fn keep(&self, key: &str, sender: http1::SendRequest<RequestBody>) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let list = match connections.get_mut(key) {
            Some(list) => list,
            None => connections.entry(key.into()).or_default(),
        };
        // Full: this one closes once its response is over (the others may be idle and ready).
        if list.len() < self.max_per_endpoint {
            list.push(Kept { sender, since: Instant::now() });
        }
    }

    /// Drop closed and idle connections, and the endpoints left with none.
    fn sweep(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|_, list| {
            list.retain_mut(|kept| match kept.sender.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => kept.since.elapsed() <= self.idle_timeout,
                Poll::Ready(Err(_)) => false,
                Poll::Pending => true,
            });
            !list.is_empty()
        });
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<http1::SendRequest<RequestBody>, GatewayError> {
        let tcp = connect_tcp(endpoint, self.connect_timeout).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await.map_err(|_| connect_failed(endpoint))?;
        drive(endpoint, connection.with_upgrades());
        Ok(sender)
    }
}

pub(crate) struct Http2Pool {
    shared: Arc<Http2Shared>,
    reaper: Once,
}

struct Http2Shared {
    slots: Mutex<ByEndpoint<Arc<tokio::sync::Mutex<Slot>>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// An endpoint's connection; its lock is held while one is made.
#[derive(Default)]
struct Slot {
    /// The connection, and which one it is (to replace only the one that failed).
    connection: Option<(u64, http2::SendRequest<RequestBody>)>,
    made: u64,
    /// When a request last used it.
    used: Option<Instant>,
    /// When making one last failed: the requests waiting meanwhile fail at once.
    failed_at: Option<Instant>,
}

impl Http2Pool {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        let shared = Http2Shared { slots: Mutex::default(), connect_timeout, idle_timeout };
        Http2Pool { shared: Arc::new(shared), reaper: Once::new() }
    }

    /// `req` must have an absolute URI (HTTP/2 sends its scheme and authority).
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, GatewayError> {
        self.reaper
            .call_once(|| spawn_reaper(Arc::downgrade(&self.shared), self.shared.idle_timeout, Http2Shared::sweep));
        let slot = {
            let key = endpoint.authority().as_str();
            let mut slots = self.shared.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slots.get(key) {
                Some(slot) => slot.clone(),
                None => slots.entry(key.into()).or_default().clone(),
            }
        };
        let (id, mut sender, reused) = self.shared.connection(endpoint, &slot, None).await?;
        match sender.try_send_request(req).await {
            Ok(response) => Ok(response),
            Err(mut failed) => match failed.take_message() {
                // The kept connection closed (a GOAWAY, say) before the stream was sent.
                Some(req) if reused => {
                    let (_, mut sender, _) = Box::pin(self.shared.connection(endpoint, &slot, Some(id))).await?;
                    sender.send_request(req).await.map_err(|e| classify(&e, endpoint))
                }
                _ => Err(classify(failed.error(), endpoint)),
            },
        }
    }
}

impl Http2Shared {
    /// The endpoint's open connection (with its id, and `true`), or one made now. `failed`
    /// is the id of a connection just seen failing: replaced, unless another request already
    /// did.
    async fn connection(
        &self,
        endpoint: &Endpoint,
        slot: &tokio::sync::Mutex<Slot>,
        failed: Option<u64>,
    ) -> Result<(u64, http2::SendRequest<RequestBody>, bool), GatewayError> {
        let mut slot = slot.lock().await;
        let now = Instant::now();
        if let Some((id, sender)) = &slot.connection {
            if !sender.is_closed() && failed != Some(*id) {
                let kept = (*id, sender.clone(), true);
                slot.used = Some(now);
                return Ok(kept);
            }
        }
        if slot.failed_at.is_some_and(|at| now.duration_since(at) < self.connect_timeout) {
            return Err(connect_failed(endpoint));
        }
        slot.connection = None;
        // Boxed, as in `Http1Pool::send`.
        match Box::pin(self.connect(endpoint)).await {
            Ok(sender) => {
                slot.made += 1;
                slot.connection = Some((slot.made, sender.clone()));
                slot.used = Some(now);
                slot.failed_at = None;
                Ok((slot.made, sender, false))
            }
            Err(e) => {
                slot.failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<http2::SendRequest<RequestBody>, GatewayError> {
        let tcp = connect_tcp(endpoint, self.connect_timeout).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Pings while streams are open: a connection the network dropped is found out.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| connect_failed(endpoint))?;
        drive(endpoint, connection);
        Ok(sender)
    }

    /// Let go of closed and idle connections (streams still open on one keep it alive until
    /// they end), and the endpoints left with nothing.
    fn sweep(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, slot| {
            // Being made or used right now: kept.
            let Ok(mut slot) = slot.try_lock() else { return true };
            let live = slot.connection.as_ref().is_some_and(|(_, sender)| !sender.is_closed())
                && slot.used.is_some_and(|used| used.elapsed() <= self.idle_timeout);
            if !live {
                slot.connection = None;
            }
            live || slot.failed_at.is_some_and(|at| at.elapsed() < self.connect_timeout)
        });
    }
}

/// Run a new connection's task on this worker until the connection ends.
fn drive(endpoint: &Endpoint, connection: impl std::future::Future<Output = hyper::Result<()>> + Send + 'static) {
    let upstream = endpoint.address().to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(upstream, error = %e, "upstream connection ended");
        }
    });
}

/// Sweep `pool` every so often (a quarter of the idle timeout, 1 s to 30 s) until it is gone.
fn spawn_reaper<T: Send + Sync + 'static>(pool: Weak<T>, idle_timeout: Duration, sweep: fn(&T)) {
    let every = (idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match pool.upgrade() {
                Some(pool) => sweep(&pool),
                None => return,
            }
        }
    });
}

/// A TCP connection to `endpoint` without Nagle. A name is resolved first; each address then
/// gets an equal share of `timeout` (as hyper-util's connector does), so one unreachable
/// address does not use up the time the next one needed.
async fn connect_tcp(endpoint: &Endpoint, timeout: Duration) -> Result<tokio::net::TcpStream, GatewayError> {
    let address = endpoint.authority().as_str();
    let addresses: Vec<SocketAddr> = match address.parse::<SocketAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::time::timeout(timeout, tokio::net::lookup_host(address)).await {
            Ok(Ok(found)) => found.collect(),
            Ok(Err(e)) => {
                tracing::debug!(upstream = %endpoint, error = %e, "cannot resolve");
                return Err(connect_failed(endpoint));
            }
            Err(_) => return Err(connect_failed(endpoint)),
        },
    };
    let share = timeout / u32::try_from(addresses.len().max(1)).unwrap_or(u32::MAX);
    for ip in &addresses {
        match tokio::time::timeout(share, tokio::net::TcpStream::connect(ip)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(e)) => tracing::debug!(upstream = %endpoint, address = %ip, error = %e, "connect failed"),
            Err(_) => tracing::debug!(upstream = %endpoint, address = %ip, "connect timed out"),
        }
    }
    Err(connect_failed(endpoint))
}

/// FxHash-style: a few multiplies over 8-byte words, where SipHash is a few hundred
/// instructions for an address.
#[derive(Default)]
pub(crate) struct AddressHasher(u64);

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
