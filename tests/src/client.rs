//! Clients: hyper for well-formed requests, raw TCP for the rest.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A whole answer, body collected.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `code` of a gateway error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Send one request on a fresh HTTP/1.1 connection to `addr`.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
    KeepAlive::open(addr).await.send(req).await.unwrap()
}

/// One HTTP/1.1 connection kept open for several requests.
pub struct KeepAlive {
    sender: SendRequest<Full<Bytes>>,
    /// The connection's task: it ends when either side closes.
    conn: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    pub async fn open(addr: SocketAddr) -> KeepAlive {
        Self::over(tokio::net::TcpStream::connect(addr).await.unwrap()).await
    }

    /// Speak HTTP/1.1 over an already connected `stream`.
    pub async fn over(stream: tokio::net::TcpStream) -> KeepAlive {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        KeepAlive {
            sender,
            conn: tokio::spawn(async move {
                let _ = conn.await;
            }),
        }
    }

    /// Send `req` on this connection; an error when the connection is gone.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        let resp = tokio::time::timeout(Duration::from_secs(30), self.sender.send_request(req)).await.unwrap()?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }

    /// A GET for `path` with `host: a`.
    pub async fn get(&mut self, path: &str) -> Result<Answer, hyper::Error> {
        self.send(get_with(path, &[])).await
    }

    /// Wait at most `wait` for the server to close the connection; whether it did.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, &mut self.conn).await.is_ok()
    }
}

/// Write `bytes` on a fresh connection and read until the server closes it or `wait`
/// passes; returns everything read, lossily as text.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A GET for `path` with `host: a` and the given extra headers.
pub fn get_with(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(path).header("host", "a");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

/// Poll `check` every 40 ms for at most 4 s: for states the gateway reaches in the
/// background (a reload, a circuit, a health check), whose only signal is its own answer.
pub async fn eventually(check: impl AsyncFnMut() -> bool) -> bool {
    eventually_within(Duration::from_secs(4), check).await
}

/// Like [`eventually`], for at most `limit`: for a bound the test asserts (served
/// "within a second"), or states another process decides on its own clock (lease expiry).
pub async fn eventually_within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}
