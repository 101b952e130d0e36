//! Clients: hyper for well-formed requests, raw TCP for the rest.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
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
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req)).await.unwrap().unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Answer { status: parts.status, headers: parts.headers, body }
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
