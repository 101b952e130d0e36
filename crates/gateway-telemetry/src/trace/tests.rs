//! The tracer end to end: sampling, propagation, and export to an OTLP/HTTP collector
//! served by the test on `127.0.0.1:0` (and to one that is down).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;

use super::*;

/// What the test collector received in one export request.
struct Received {
    path: String,
    content_type: Option<String>,
    doc: Value,
}

/// An OTLP/HTTP collector: reads every POSTed body (protobuf decoded into the JSON mapping)
/// and hands it to the test, which says which encoding it expects.
struct Collector {
    addr: SocketAddr,
    protocol: Protocol,
    received: mpsc::UnboundedReceiver<Received>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let content_type = req
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req.into_body().collect().await?.to_bytes();
                            let doc = decode::export_body_to_json(content_type.as_deref(), &body);
                            let _ = tx.send(Received { path, content_type, doc });
                            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { addr, protocol: Protocol::Protobuf, received }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans from the export requests received until `count` have arrived.
    async fn spans(&mut self, count: usize) -> Vec<Value> {
        let mut spans = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while spans.len() < count {
            let received = tokio::time::timeout_at(deadline, self.received.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {count} spans arrived", spans.len()))
                .expect("collector running");
            assert_eq!(received.path, "/v1/traces");
            assert_eq!(received.content_type.as_deref(), Some(self.protocol.content_type()));
            let resource = &received.doc["resourceSpans"][0];
            assert_eq!(attr(&resource["resource"], "service.name"), Some("gw-test".to_owned()));
            spans.extend(resource["scopeSpans"][0]["spans"].as_array().expect("spans").iter().cloned());
        }
        spans
    }
}

/// An attribute's value, as text whatever its type.
fn attr(span: &Value, key: &str) -> Option<String> {
    let value = &span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?["value"];
    value["stringValue"].as_str().or(value["intValue"].as_str()).map(str::to_owned)
}

fn find<'a>(spans: &'a [Value], span_id: &TraceContext) -> &'a Value {
    let id = span_id.span_id_hex();
    spans.iter().find(|s| s["spanId"] == id.as_str()).unwrap_or_else(|| panic!("span {id} not exported"))
}

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn incoming(value: &'static str) -> Option<TraceContext> {
    parse_traceparent(&HeaderValue::from_static(value))
}

#[tokio::test]
async fn collector_receives_the_server_span_and_its_client_spans() {
    let mut collector = Collector::start().await;
    let tracer = Tracer::builder(&collector.endpoint(), "gw-test")
        .flush_interval(Duration::from_millis(20))
        .build()
        .expect("tracer");
    let route: Arc<str> = Arc::from("users");
    let service: Arc<str> = Arc::from("users-svc");
    let upstream = Authority::from_static("127.0.0.1:9001");
    let parent = incoming(INCOMING).expect("valid");

    let mut server = tracer
        .server_span(Some(parent))
        .method(&Method::GET)
        .path(Some(&PathAndQuery::from_static("/api/users/7?token=secret")))
        .host(Some(&HeaderValue::from_static("api.example.com:8080")))
        .tls(false)
        .client_address(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        .version(Version::HTTP_11)
        .start();
    assert!(server.is_recording());
    assert!(server.has_remote_parent());
    assert_eq!(server.context().trace_id, parent.trace_id);
    assert_eq!(server.parent_span_id(), Some(parent.span_id));
    assert_ne!(server.context().span_id, parent.span_id);
    server.set_route(&route);

    // A first attempt that fails to connect, then a retry that succeeds.
    let mut attempts = Vec::new();
    for resend in 0..2 {
        let mut client = tracer
            .client_span(&server)
            .method(&Method::GET)
            .upstream(&Scheme::HTTP, &upstream)
            .path(Some(&PathAndQuery::from_static("/users/7")))
            .service(&service)
            .resend_count(resend)
            .start();
        // What goes upstream is the client span's own id, in the same trace, sampled.
        let sent = parse_traceparent(&client.traceparent()).expect("valid traceparent");
        assert_eq!(sent, client.context());
        assert_eq!(sent.trace_id, parent.trace_id);
        assert_ne!(sent.span_id, server.context().span_id);
        assert!(sent.is_sampled());
        assert_eq!(client.parent_span_id(), Some(server.context().span_id));
        if resend == 0 {
            client.set_error_type("connect_failure");
        } else {
            client.set_peer("127.0.0.1:9001".parse().expect("addr"));
            client.set_status_code(200);
        }
        attempts.push(client.context());
        tracer.finish(client);
    }
    server.set_status_code(200);
    let server_ctx = server.context();
    tracer.finish(server);

    let spans = collector.spans(3).await;
    let trace_hex = parent.trace_id_hex();
    assert!(spans.iter().all(|s| s["traceId"] == trace_hex.as_str()));

    let s = find(&spans, &server_ctx);
    assert_eq!(s["kind"], 2);
    assert_eq!(s["name"], "GET users");
    assert_eq!(s["parentSpanId"], parent.span_id_hex().as_str());
    assert!(s.get("status").is_none(), "a 200 leaves the status unset");
    let start: u64 = s["startTimeUnixNano"].as_str().and_then(|t| t.parse().ok()).expect("start");
    let end: u64 = s["endTimeUnixNano"].as_str().and_then(|t| t.parse().ok()).expect("end");
    assert!(start > 0 && end >= start);
    assert_eq!(attr(s, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(s, "url.path").as_deref(), Some("/api/users/7"));
    assert_eq!(attr(s, "url.scheme").as_deref(), Some("http"));
    assert_eq!(attr(s, "http.route").as_deref(), Some("users"));
    assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(s, "server.address").as_deref(), Some("api.example.com"));
    assert_eq!(attr(s, "server.port").as_deref(), Some("8080"));
    assert_eq!(attr(s, "client.address").as_deref(), Some("192.0.2.1"));
    assert_eq!(attr(s, "network.protocol.version").as_deref(), Some("1.1"));
    assert!(attr(s, "error.type").is_none());

    let failed = find(&spans, &attempts[0]);
    assert_eq!(failed["kind"], 3);
    assert_eq!(failed["name"], "GET");
    assert_eq!(failed["parentSpanId"], server_ctx.span_id_hex().as_str());
    assert_eq!(failed["status"]["code"], 2);
    assert_eq!(attr(failed, "error.type").as_deref(), Some("connect_failure"));
    assert!(attr(failed, "http.request.resend_count").is_none());

    let retry = find(&spans, &attempts[1]);
    assert_eq!(retry["parentSpanId"], server_ctx.span_id_hex().as_str());
    assert!(retry.get("status").is_none());
    assert_eq!(attr(retry, "http.request.resend_count").as_deref(), Some("1"));
    assert_eq!(attr(retry, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(retry, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(retry, "server.port").as_deref(), Some("9001"));
    assert_eq!(attr(retry, "network.peer.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(retry, "url.full").as_deref(), Some("http://127.0.0.1:9001/users/7"));
    assert_eq!(attr(retry, "peer.service").as_deref(), Some("users-svc"));

    let counters = tracer.counters().clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.exported() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(counters.exported(), 3);
    assert_eq!((counters.dropped(), counters.failed()), (0, 0));
}

#[tokio::test]
async fn a_trace_started_here_is_a_root_and_gateway_errors_are_errors() {
    // This one over the JSON encoding.
    let mut collector = Collector::start().await;
    collector.protocol = Protocol::Json;
    let tracer = Tracer::builder(&collector.endpoint(), "gw-test")
        .flush_interval(Duration::from_millis(20))
        .protocol(Protocol::Json)
        .build()
        .expect("tracer");
    let mut server = tracer.server_span(None).method(&Method::POST).start();
    assert!(!server.has_remote_parent());
    assert_eq!(server.parent_span_id(), None);
    assert!(server.context().is_sampled());
    server.set_route_str("checkout");
    server.set_error_type("gateway_timeout");
    server.set_status_code(504);
    let ctx = server.context();
    tracer.finish(server);

    let spans = collector.spans(1).await;
    let s = find(&spans, &ctx);
    assert!(s.get("parentSpanId").is_none());
    assert_eq!(s["traceId"], ctx.trace_id_hex().as_str());
    assert_eq!(s["name"], "POST checkout");
    assert_eq!(s["status"]["code"], 2);
    assert_eq!(attr(s, "error.type").as_deref(), Some("gateway_timeout"));
    assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("504"));
}

#[tokio::test]
async fn sampling_honours_the_incoming_flag_then_the_ratio() {
    // Nothing listens there; these tests never wait for an export.
    let endpoint = "http://127.0.0.1:9";
    let all = Tracer::new(endpoint, "gw", 1.0).expect("tracer");
    let none = Tracer::new(endpoint, "gw", 0.0).expect("tracer");

    // The caller decided not to record: neither do we, and the next hop is told so.
    let unsampled = incoming("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    let span = all.server_span(unsampled).method(&Method::GET).start();
    assert!(!span.is_recording());
    let client = all.client_span(&span).start();
    assert!(!client.is_recording());
    assert!(!client.context().is_sampled());
    assert_eq!(client.context().trace_id, span.context().trace_id);
    all.finish(client);
    all.finish(span);
    assert_eq!(all.queue_len(), 0);

    // The caller recorded: so do we, whatever our ratio.
    let span = none.server_span(incoming(INCOMING)).start();
    assert!(span.is_recording());
    none.finish(span);
    assert_eq!(none.queue_len(), 1);

    // A trace that starts here: the ratio decides.
    let span = none.server_span(None).start();
    assert!(!span.is_recording());
    assert!(!span.context().is_sampled());
    assert!(all.server_span(None).start().is_recording());

    // By trace id: two gateways at the same ratio agree on every trace.
    let a = Tracer::new(endpoint, "gw", 0.5).expect("tracer");
    let b = Tracer::new(endpoint, "gw-other", 0.5).expect("tracer");
    let mut kept = 0;
    for _ in 0..10_000 {
        let span = a.server_span(None).start();
        let id = span.context().trace_id;
        assert_eq!(span.is_recording(), b.should_sample(&id));
        assert_eq!(span.is_recording(), a.should_sample(&id));
        kept += usize::from(span.is_recording());
    }
    assert!((4_000..6_000).contains(&kept), "kept {kept} of 10000 at 0.5");
}

#[test]
fn a_disabled_tracer_records_nothing_but_still_propagates() {
    let tracer = Tracer::disabled();
    assert!(!tracer.enabled());
    let parent = incoming(INCOMING).expect("valid");
    let server = tracer.server_span(Some(parent)).method(&Method::GET).start();
    assert!(!server.is_recording());
    let client = tracer.client_span(&server).start();
    let sent = client.context();
    assert_eq!(sent.trace_id, parent.trace_id);
    assert_ne!(sent.span_id, parent.span_id);
    // Not ours to overrule: the caller's sampled flag goes on.
    assert!(sent.is_sampled());
    tracer.finish(client);
    tracer.finish(server);
    assert_eq!((tracer.queue_len(), tracer.dropped()), (0, 0));

    let fresh = tracer.server_span(None).start();
    assert!(!fresh.context().is_sampled());
    assert_ne!(fresh.context().trace_id, [0; 16]);
    assert!(tracer.is_configured_as(None, "gateway", 1.0, Protocol::Protobuf));
}

#[test]
fn settings_are_validated() {
    // No runtime here: the exporter cannot start.
    assert!(Tracer::new("http://127.0.0.1:4318", "gw", 1.0).is_err());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = rt.enter();
    assert!(Tracer::new("ftp://127.0.0.1:4318", "gw", 1.0).is_err());
    assert!(Tracer::new("not a url", "gw", 1.0).is_err());
    assert!(Tracer::new("http://127.0.0.1:4318?x=1", "gw", 1.0).is_err());
    assert!(Tracer::new("http://127.0.0.1:4318", "gw", 1.5).is_err());
    assert!(Tracer::new("http://127.0.0.1:4318", " ", 1.0).is_err());
    assert!(Tracer::builder("http://127.0.0.1:4318", "gw").queue_capacity(0).build().is_err());
    let tracer = Tracer::new("https://collector.example.com/otlp/", "gw", 0.25).expect("https endpoint");
    let endpoint = Some("https://collector.example.com/otlp/");
    assert!(tracer.is_configured_as(endpoint, "gw", 0.25, Protocol::Protobuf));
    assert!(!tracer.is_configured_as(endpoint, "gw", 0.25, Protocol::Json));
    assert!(!tracer.is_configured_as(endpoint, "gw", 0.5, Protocol::Protobuf));
    assert!(!tracer.is_configured_as(None, "gw", 0.25, Protocol::Protobuf));
}

/// The URL of a collector that is down: a loopback port nothing listens on any more.
fn down_collector() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", listener.local_addr().expect("addr"))
}

#[tokio::test]
async fn a_collector_that_is_down_costs_nothing_and_the_queue_stays_bounded() {
    let down = down_collector();
    let tracer = Tracer::builder(&down, "gw-test")
        .export_timeout(Duration::from_millis(500))
        .flush_interval(Duration::from_millis(20))
        .build()
        .expect("tracer");
    let route: Arc<str> = Arc::from("users");
    let path = PathAndQuery::from_static("/api/users/7");
    let host = HeaderValue::from_static("api.example.com");

    let started = Instant::now();
    for _ in 0..100_000 {
        let mut span = tracer.server_span(None).method(&Method::GET).path(Some(&path)).host(Some(&host)).start();
        span.set_route(&route);
        span.set_status_code(200);
        tracer.finish(span);
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(900), "100000 spans took {elapsed:?}");
    assert_eq!(tracer.queue_len(), tracer.queue_capacity());
    assert_eq!(tracer.counters().queue_len(), DEFAULT_QUEUE_CAPACITY);
    // This task has not yielded, so the exporter has not run: all past the queue dropped.
    assert_eq!(tracer.dropped(), 100_000 - DEFAULT_QUEUE_CAPACITY as u64);

    // Spans finished from other threads (the gateway's worker runtimes) count the same way.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..10_000 {
                    tracer.finish(tracer.server_span(None).start());
                }
            });
        }
    });
    assert_eq!(tracer.dropped(), 140_000 - DEFAULT_QUEUE_CAPACITY as u64);

    // Now the exporter runs: its requests fail, the queued spans are counted as lost.
    let counters = tracer.counters().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters.failed() < DEFAULT_QUEUE_CAPACITY as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counters.failed(), DEFAULT_QUEUE_CAPACITY as u64);
    assert_eq!(tracer.queue_len(), 0);
    assert_eq!(counters.exports().0, 0);
    assert!(counters.exports().1 >= (DEFAULT_QUEUE_CAPACITY / DEFAULT_BATCH_SIZE) as u64);

    let mut text = String::new();
    assert_eq!(counters.queue_len(), 0);
    counters.render_prometheus(&mut text);
    assert!(text.contains(r#"gateway_trace_spans_dropped_total{reason="queue_full"} 131808"#), "{text}");
    assert!(text.contains(r#"gateway_trace_spans_dropped_total{reason="export_failed"} 8192"#), "{text}");
    assert!(text.contains("gateway_trace_queue_spans 0"), "{text}");
}

/// Spans with long paths fill the queue's bytes before its count: a collector that is down
/// never makes the gateway hold more than about 2 KiB per span of capacity.
#[tokio::test]
async fn long_spans_are_bounded_by_bytes_too() {
    let down = down_collector();
    let tracer = Tracer::builder(&down, "gw-test")
        .queue_capacity(16)
        .export_timeout(Duration::from_millis(500))
        .flush_interval(Duration::from_millis(20))
        .build()
        .expect("tracer");
    let long: PathAndQuery = format!("/{}", "a".repeat(8 * 1024)).parse().expect("path");
    let finish_long = || tracer.finish(tracer.server_span(None).method(&Method::GET).path(Some(&long)).start());
    for _ in 0..16 {
        finish_long();
    }
    // 16 spans of 2 KiB each is 32 KiB: four spans of 8 KiB reach it, the rest are dropped.
    assert_eq!(tracer.queue_len(), 4);
    assert_eq!(tracer.dropped(), 12);
    // Short spans are refused too while the bytes are at their bound...
    tracer.finish(tracer.server_span(None).start());
    assert_eq!(tracer.dropped(), 13);

    // ...until the exporter has given them up (the collector is down): then they fit again.
    let counters = tracer.counters().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters.failed() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((counters.failed(), tracer.queue_len()), (4, 0));
    finish_long();
    assert_eq!((tracer.queue_len(), tracer.dropped()), (1, 13));
}

#[tokio::test]
async fn dropping_the_tracer_flushes_and_stops_the_exporter() {
    let mut collector = Collector::start().await;
    // A flush interval that never comes: only the drop can make it send.
    let mut tracer = Tracer::builder(&collector.endpoint(), "gw-test")
        .flush_interval(Duration::from_secs(3600))
        .build()
        .expect("tracer");
    let task = tracer.take_task().expect("exporter task");
    tokio::task::yield_now().await;
    let span = tracer.server_span(None).start();
    let ctx = span.context();
    tracer.finish(span);
    drop(tracer);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the exporter stops").expect("no panic");
    let spans = collector.spans(1).await;
    find(&spans, &ctx);
}

#[tokio::test]
async fn dropping_the_tracer_stops_the_exporter_when_the_collector_is_down() {
    let down = down_collector();
    let mut tracer = Tracer::new(&down, "gw", 1.0).expect("tracer");
    let task = tracer.take_task().expect("exporter task");
    for _ in 0..1000 {
        tracer.finish(tracer.server_span(None).start());
    }
    drop(tracer);
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the exporter stops").expect("no panic");
}

#[tokio::test]
async fn a_full_batch_is_sent_before_the_interval() {
    let mut collector = Collector::start().await;
    let tracer = Tracer::builder(&collector.endpoint(), "gw-test")
        .batch_size(100)
        .flush_interval(Duration::from_secs(3600))
        .build()
        .expect("tracer");
    // Let the exporter take its first (immediate) tick.
    tokio::task::yield_now().await;
    for _ in 0..100 {
        tracer.finish(tracer.server_span(None).start());
    }
    assert_eq!(collector.spans(100).await.len(), 100);
}
