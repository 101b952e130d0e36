//! Traces through the gateway: W3C trace context upstream, spans exported over OTLP/HTTP.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gateway_tests::{Backend, TestGateway};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn traced(path: &str, traceparent: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "a").header("traceparent", traceparent).body(Full::new(Bytes::new())).unwrap()
}

fn parts(traceparent: &str) -> Vec<String> {
    traceparent.split('-').map(str::to_owned).collect()
}

#[tokio::test]
async fn traceparent_keeps_the_trace_and_gets_a_new_span_per_hop() {
    let backend = Backend::start().await;
    let config = format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    gw.request(traced("/x", INCOMING)).await;
    let upstream = parts(backend.last().header("traceparent").unwrap());
    assert_eq!(upstream[1], "0af7651916cd43dd8448eb211c80319c", "same trace");
    assert_ne!(upstream[2], "b7ad6b7169203331", "a new span for this hop");
    assert_eq!(upstream[3], "01");

    gw.request(traced("/x", "garbage")).await;
    let replaced = parts(backend.last().header("traceparent").unwrap());
    assert_eq!(replaced.len(), 4, "a malformed traceparent is replaced by a valid one");
    assert_eq!(replaced[1].len(), 32);

    gw.get("/x").await;
    let fresh = parts(backend.last().header("traceparent").unwrap());
    assert_ne!(fresh[1], replaced[1], "each request without one starts a trace");
}

#[tokio::test]
async fn spans_are_exported_to_an_otlp_http_collector() {
    // A collector that keeps every JSON body POSTed to /v1/traces.
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        let body = req.into_body().collect().await?.to_bytes();
                        sink.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let backend = Backend::start().await;
    let config = format!(
        "[telemetry]\notlp_endpoint = \"http://{collector}\"\nservice_name = \"gw-test\"\n[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"traced\"\npath_prefix = \"/\"\nservice = \"echo\"\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    gw.request(traced("/x", INCOMING)).await;
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|batch| {
                batch["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().cloned().unwrap_or_default()
            })
            .collect();
        if spans.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(spans.len(), 2, "a server span and a client span");
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    let client = spans.iter().find(|s| s["kind"] == 3).unwrap();
    assert_eq!(server["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(server["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(client["traceId"], server["traceId"]);
    assert_eq!(client["parentSpanId"], server["spanId"]);
    let upstream = parts(backend.last().header("traceparent").unwrap());
    assert_eq!(client["spanId"], upstream[2].as_str(), "upstream sees the client span");
    assert!(server.to_string().contains("\"traced\""), "the route name is an attribute: {server}");
}

/// Each tokio runtime's alive tasks are in `/metrics`: open connections show up on the
/// worker that serves them, and go away when the connections close (a leak would not).
#[tokio::test]
async fn runtime_task_counts_follow_open_connections() {
    let backend = Backend::start().await;
    let config = format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let alive = |text: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with("gateway_runtime_alive_tasks{runtime=\"worker-0\"}"))
            .unwrap_or_else(|| panic!("no worker-0 task gauge in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let metrics = async || String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    let text = metrics().await;
    assert!(text.contains("gateway_runtime_workers{runtime=\"main\"}"), "{text}");
    let before = alive(&text);
    // Twenty idle keep-alive connections, each having served one request.
    let mut open = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        assert!(stream.read(&mut buf).await.unwrap() > 0);
        open.push(stream);
    }
    let during = alive(&metrics().await);
    assert!(during >= before + 20, "20 connections, {before} tasks before and {during} after");
    drop(open);
    assert!(gateway_tests::eventually(async || alive(&metrics().await) < before + 5).await, "tasks stayed alive");
}
