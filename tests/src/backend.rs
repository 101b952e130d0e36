//! A backend that records and echoes what reached it.
//!
//! Paths it understands:
//! - `/status/{code}`: answers that status;
//! - `/slow/{ms}`: waits, then answers 200;
//! - `/body`: answers the request body back byte for byte (streamed);
//! - `/hop`: answers with hop-by-hop headers that must not reach the client;
//! - anything else: 200 with a JSON echo of method, path, query and headers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// What one request looked like when it reached the backend.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorder = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, recorder.clone(), addr));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Backend { addr, seen, task }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the backend saw a request")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Out = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Out {
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
