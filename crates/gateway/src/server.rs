//! Listeners and connections: one current-thread runtime per worker, each with its own
//! `SO_REUSEPORT` listener. In clear: HTTP/1.1, or h2c when the connection opens with the
//! HTTP/2 preface. Over TLS: HTTP/2 or HTTP/1.1 as ALPN chose.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::conn_limit::{Caps, Permit};
use crate::keepalive::{ConnClock, Expiry, Timers, Tracked};
use crate::service::{handle, ConnInfo};
use crate::strict::{StrictIo, Verdicts};
use crate::Shared;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bind `workers` sockets on one address (the first may pick the port).
pub fn bind_listeners(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Accept and serve until `shutdown` turns true, then drain the open connections for at
/// most `grace`. A listener arriving on `rebind` (a reload changed `server.listen`)
/// replaces the current one; connections already accepted go on. Runs on one worker's
/// current-thread runtime.
pub async fn serve(
    listener: std::net::TcpListener,
    mut rebind: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpListener>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register listener");
            return;
        }
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match admit(&shared, peer.ip()) {
                    Ok(permit) => {
                        connections.spawn(serve_connection(stream, peer, permit, shared.clone(), shutdown.clone()));
                    }
                    Err(reason) => {
                        shared.metrics.connection_refused(reason);
                        // A reset rather than a FIN: no TIME_WAIT left behind per refusal.
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        drop(stream);
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Some(next) = rebind.recv() => match TcpListener::from_std(next) {
                Ok(next) => listener = next,
                Err(e) => tracing::error!(error = %e, "cannot register the new listener; keeping the old one"),
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let grace = shared.runtime.load().config.server.shutdown_grace.get();
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(remaining = connections.len(), "shutdown grace ran out; closing open connections");
        connections.abort_all();
    }
}

/// Take a slot for a connection from `peer` under the caps of the running configuration.
fn admit(shared: &Shared, peer: IpAddr) -> Result<Permit, gateway_telemetry::RefusedConnection> {
    let runtime = shared.runtime.load();
    let server = &runtime.config.server;
    let trusted = runtime.trusted_proxies.iter().any(|net| net.contains(peer.to_canonical()));
    let caps =
        Caps { total: server.max_connections, per_client: (!trusted).then_some(server.max_connections_per_client) };
    shared.connections.acquire(peer, caps)
}

/// `_permit` holds the connection's slot under the caps until it closes.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    _permit: Permit,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    shared.metrics.connection_opened();
    let _guard = ConnGuard(shared.clone());
    let header_timeout = shared.runtime.load().config.server.header_read_timeout.get();

    match shared.tls.load_full() {
        None => {
            let is_h2 = match tokio::time::timeout(header_timeout, sniff_h2(&stream)).await {
                Ok(Ok(is_h2)) => is_h2,
                _ => return,
            };
            let conn = ConnInfo::new(peer.ip(), false);
            serve_http(stream, is_h2, conn, shared, shutdown).await;
        }
        Some(acceptor) => {
            let stream = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    shared.metrics.tls_handshake(false);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.tls_handshake(false);
                    return;
                }
            };
            shared.metrics.tls_handshake(true);
            let is_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let conn = ConnInfo::new(peer.ip(), true);
            serve_http(stream, is_h2, conn, shared, shutdown).await;
        }
    }
}

/// Serve HTTP/2 or HTTP/1.1 on an accepted (and, for TLS, handshaken) connection until
/// it closes, a timer of [`keepalive`](crate::keepalive) runs out, or shutdown asks it to
/// finish.
async fn serve_http<I>(io: I, is_h2: bool, conn: ConnInfo, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server_cfg = shared.runtime.load().config.server.clone();
    let (header, idle) = (server_cfg.header_read_timeout.get(), server_cfg.idle_timeout.get());
    let timers = Timers { header, idle, first_request: if is_h2 { idle } else { header } };
    let clock = ConnClock::new();
    // HTTP/1 only: the head inspector sees the raw bytes hyper parses, so ambiguities
    // hyper would smooth over (CL with TE, `#`, bare LF) still get their 400.
    let verdicts = (!is_h2).then(Verdicts::default);
    let svc = {
        let (clock, verdicts) = (clock.clone(), verdicts.clone());
        service_fn(move |mut req: Request<Incoming>| {
            let in_flight = clock.request();
            if req.method() == Method::CONNECT {
                // A tunnel outlives its response: the service keeps this until it closes.
                req.extensions_mut().insert(in_flight.clone());
            }
            // Boxed: the request future is large (every route action lives in it), and
            // hyper keeps the service future inline in each connection, idle ones included.
            let answer = Box::pin(handle(req, conn.clone(), verdicts.clone(), shared.clone()));
            async move { Ok::<_, hyper::Error>(answer.await?.map(|body| Tracked::new(body, in_flight))) }
        })
    };
    match verdicts {
        None => {
            let h2 = &server_cfg.http2;
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(h2.max_concurrent_streams)
                .max_header_list_size(h2.max_header_list_bytes)
                // Rapid reset (CVE-2023-44487): streams reset before they were accepted,
                // and streams the gateway reset for protocol errors, past these: GOAWAY.
                .max_pending_accept_reset_streams(Some(h2.max_pending_accept_reset_streams as usize))
                .max_local_error_reset_streams(Some(h2.max_local_error_reset_streams as usize))
                .initial_stream_window_size(h2.initial_stream_window_bytes)
                .initial_connection_window_size(h2.initial_connection_window_bytes)
                .adaptive_window(false)
                .max_frame_size(h2.max_frame_bytes)
                // WebSockets over HTTP/2 (RFC 8441 extended CONNECT).
                .enable_connect_protocol()
                .keep_alive_interval(Some(idle))
                .keep_alive_timeout(Duration::from_secs(20));
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            drive(conn, |c| c.graceful_shutdown(), &clock, timers, &mut shutdown).await;
        }
        Some(verdicts) => {
            let io = StrictIo::new(io, verdicts, clock.clone());
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // The clock does this, from a head's first byte rather than from the end
                // of the previous response (which is idle time).
                .header_read_timeout(None)
                .max_buf_size(parser_buffer(server_cfg.max_header_bytes.get()))
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
            tokio::pin!(conn);
            drive(conn, |c| c.graceful_shutdown(), &clock, timers, &mut shutdown).await;
        }
    }
}

/// Run `conn` to its end. A head that took too long drops it; idleness and shutdown ask
/// it to finish gracefully (HTTP/1.1: close once idle; HTTP/2: GOAWAY, then the open
/// streams finish).
async fn drive<C: Future>(
    mut conn: Pin<&mut C>,
    graceful: impl FnOnce(Pin<&mut C>),
    clock: &ConnClock,
    timers: Timers,
    shutdown: &mut watch::Receiver<bool>,
) {
    tokio::select! {
        _ = conn.as_mut() => return,
        expiry = clock.expired(timers) => {
            if expiry == Expiry::Head {
                tracing::debug!("request head not received within header_read_timeout; closing");
                if clock.head_in_progress() {
                    // HTTP/1.1: the reader answers 408 when the connection is next polled,
                    // then reports the end of the stream, which ends the connection.
                    clock.time_out_head();
                    let _ = tokio::time::timeout(REPLY_408_WITHIN, conn.as_mut()).await;
                }
                return;
            }
        }
        _ = shutdown.changed() => {}
    }
    graceful(conn.as_mut());
    let _ = conn.await;
}

/// How long a client that stalled its head gets to take the 408.
const REPLY_408_WITHIN: Duration = Duration::from_secs(1);

/// hyper's read buffer limit: well above `max_header_bytes`, so that heads a little over
/// the limit reach the service and get the documented JSON 414/431. The buffer only
/// grows when a head needs it.
fn parser_buffer(max_header_bytes: u64) -> usize {
    max_header_bytes.saturating_mul(4).clamp(64 * 1024, 1024 * 1024) as usize
}

struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
    }
}

/// Peek at the first bytes: true when they are the HTTP/2 connection preface.
async fn sniff_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A prefix of the preface so far: peeking again at once would spin.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
