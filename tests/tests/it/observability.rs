//! Traces through the gateway: W3C trace context upstream, spans exported over OTLP/HTTP.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gateway_telemetry::trace::decode::export_body_to_json;
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
    // A collector that keeps every body POSTed to /v1/traces (protobuf read as the JSON mapping).
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
                        let content_type = req.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
                        assert_eq!(content_type.as_deref(), Some("application/x-protobuf"), "protobuf by default");
                        let body = req.into_body().collect().await?.to_bytes();
                        sink.lock().unwrap().push(export_body_to_json(content_type.as_deref(), &body));
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

/// After a known sequence of requests the counters are exact, and requests that match no
/// route share one `unmatched` label: raw paths never become label values.
#[tokio::test]
async fn metrics_count_a_known_sequence_exactly() {
    let backend = Backend::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "[services.echo]\nendpoints = [\"http://{}\"]\n[services.gone]\nendpoints = [\"http://{closed}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/status\"\nmethods = [\"GET\"]\nservice = \"echo\"\n\
         [[routes]]\nname = \"down\"\npath_prefix = \"/down\"\nservice = \"gone\"\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/status/200").await.status, 200);
    }
    assert_eq!(gw.get("/status/503").await.status, 503);
    for i in 0..5 {
        assert_eq!(gw.get(&format!("/nowhere-{i}")).await.status, 404);
    }
    assert_eq!(gw.get("/down/x").await.status, 502);
    let text = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    for line in [
        r#"gateway_requests_total{route="r",method="GET",status="200"} 3"#,
        r#"gateway_requests_total{route="r",method="GET",status="503"} 1"#,
        r#"gateway_requests_total{route="unmatched",method="GET",status="404"} 5"#,
        r#"gateway_requests_total{route="down",method="GET",status="502"} 1"#,
        r#"gateway_request_duration_seconds_count{route="r"} 4"#,
        r#"gateway_upstream_requests_total{service="echo",outcome="success"} 3"#,
        r#"gateway_upstream_requests_total{service="echo",outcome="5xx"} 1"#,
        r#"gateway_upstream_requests_total{service="gone",outcome="connect_failure"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
    assert!(!text.contains("nowhere"), "a raw path became a label value");
    assert!(!text.contains("/status"), "a raw path became a label value");
}

/// A collector that accepts connections and never answers: requests stay as fast as
/// without tracing, spans beyond the bounded queue are dropped and counted.
#[tokio::test]
async fn a_collector_that_hangs_never_slows_requests() {
    // Accepts and holds every connection without reading or answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            holder.lock().unwrap().push(stream);
        }
    });
    let backend = Backend::start().await;
    let config = format!(
        "[telemetry]\notlp_endpoint = \"http://{collector}\"\n[services.echo]\nendpoints = [\"http://{}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nservice = \"echo\"\n",
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let started = std::time::Instant::now();
    let addr = gw.addr;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8 {
        clients.spawn(async move {
            for i in 0..700 {
                let resp = gateway_tests::send(addr, gateway_tests::get_with(&format!("/t/{c}/{i}"), &[])).await;
                assert_eq!(resp.status, 200);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    // 5,600 requests, 11,200 spans: more than the export queue's 8,192 can hold. (The
    // bound is loose for a debug build on a busy machine; an exporter that blocked on the
    // collector would never let the requests finish.)
    assert!(elapsed < std::time::Duration::from_secs(45), "5,600 requests took {elapsed:?}");
    let text = String::from_utf8_lossy(&gw.admin_get("/metrics").await.body).into_owned();
    let dropped: u64 = text
        .lines()
        .filter(|l| l.starts_with("gateway_trace_spans_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "the queue is bounded: spans must be dropped, not held\n{text}");
    let queued = text.lines().find(|l| l.starts_with("gateway_trace_queue_spans ")).unwrap();
    let queued: u64 = queued.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(queued <= 8192, "queue {queued}");
}
