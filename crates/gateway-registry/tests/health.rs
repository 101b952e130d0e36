//! Active health checks against real backends on loopback.
//!
//! `cargo test -p gateway-registry --test health`

#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use gateway_registry::*;
use http::{Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{closed_port, eventually, serve};
use tokio::net::TcpListener;

/// An HTTP/1 backend whose `/health` answers `status`; counts what it served.
struct Backend {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    passed: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl Backend {
    async fn start() -> Self {
        let status = Arc::new(AtomicU16::new(200));
        let passed = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (s, p, f) = (status.clone(), passed.clone(), failed.clone());
        let app = axum::Router::new().route(
            "/health",
            get(move || {
                let code = s.load(Ordering::SeqCst);
                if code == 200 { &p } else { &f }.fetch_add(1, Ordering::SeqCst);
                async move { StatusCode::from_u16(code).unwrap() }
            }),
        );
        Backend { addr: serve(app).await, status, passed, failed }
    }

    fn url(&self, scheme: &str) -> Endpoint {
        Endpoint::parse(&format!("{scheme}://{}", self.addr)).unwrap()
    }

    fn passed(&self) -> usize {
        self.passed.load(Ordering::SeqCst)
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

fn checks(interval_ms: u64, healthy_threshold: u32, unhealthy_threshold: u32) -> ServiceOptions {
    ServiceOptions {
        health_check: Some(HealthCheckOptions {
            kind: HealthCheckKind::Http,
            grpc_service: String::new(),
            tls: None,
            path: "/health".into(),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_secs(1),
            healthy_threshold,
            unhealthy_threshold,
        }),
        ..ServiceOptions::default()
    }
}

fn yes(_: &EndpointState) -> bool {
    true
}

#[tokio::test]
async fn active_checks_take_an_endpoint_out_and_bring_it_back() {
    let flaky = Backend::start().await;
    let steady = Backend::start().await;
    let service = ServiceEndpoints::new(
        "users",
        checks(40, 2, 3),
        Source::Static(vec![flaky.url("http").into(), steady.url("http").into()]),
    )
    .unwrap();
    let state = service.endpoint(&flaky.addr.to_string()).unwrap();

    eventually("both are probed", || flaky.passed() >= 2 && steady.passed() >= 2).await;
    assert!(state.is_healthy());

    flaky.set(500);
    eventually("the failing endpoint is out", || !state.is_healthy()).await;
    assert!(flaky.failed() >= 3, "out after {} failed probes, not 3", flaky.failed());
    assert_eq!(service.counts(), EndpointCounts { healthy: 1, unhealthy: 1, ejected: 0 });
    for _ in 0..20 {
        let pick = service.pick(&PickContext::default(), &yes).picked().unwrap();
        assert_eq!(pick.address(), steady.addr.to_string());
    }

    let passed_before = flaky.passed();
    flaky.set(200);
    eventually("it is back", || state.is_healthy()).await;
    assert!(flaky.passed() - passed_before >= 2, "back after {} passes, not 2", flaky.passed() - passed_before);
    let picks: Vec<String> =
        (0..4).map(|_| service.pick(&PickContext::default(), &yes).picked().unwrap().address().to_owned()).collect();
    assert!(picks.contains(&flaky.addr.to_string()));

    // Dropping the service stops its checks.
    drop(service);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let probes = flaky.passed() + flaky.failed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(flaky.passed() + flaky.failed(), probes);
}

#[tokio::test]
async fn unreachable_endpoints_go_unhealthy_and_a_service_of_them_says_so() {
    let dead = closed_port().await;
    let service = ServiceEndpoints::new(
        "dead",
        checks(20, 1, 2),
        Source::Static(vec![Endpoint::parse(&format!("http://{dead}")).unwrap().into()]),
    )
    .unwrap();
    assert!(service.pick(&PickContext::default(), &yes).picked().is_some(), "endpoints start healthy");
    let state = service.endpoint(&dead.to_string()).unwrap();
    eventually("the dead endpoint is out", || !state.is_healthy()).await;
    assert!(matches!(service.pick(&PickContext::default(), &yes), Pick::AllUnhealthy));
}

/// A backend answering 200 to everything, over HTTP/2 with prior knowledge only
/// (`h2`) or HTTP/1.1 only.
async fn one_protocol_backend(h2: bool, hits: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let hits = hits.clone();
            let service = hyper::service::service_fn(move |_req| {
                hits.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
            });
            let io = TokioIo::new(stream);
            if h2 {
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service),
                );
            } else {
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
            }
        }
    });
    addr
}

#[tokio::test]
async fn h2c_endpoints_are_probed_over_http2() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = one_protocol_backend(true, hits.clone()).await;
    let http1_hits = Arc::new(AtomicUsize::new(0));
    let http1_only = one_protocol_backend(false, http1_hits.clone()).await;
    let service = ServiceEndpoints::new(
        "grpcish",
        checks(20, 1, 2),
        Source::Static(vec![
            Endpoint::parse(&format!("h2c://{h2}")).unwrap().into(),
            Endpoint::parse(&format!("h2c://{http1_only}")).unwrap().into(),
        ]),
    )
    .unwrap();
    let wrong = service.endpoint(&http1_only.to_string()).unwrap();
    eventually("the HTTP/1-only backend fails h2c probes", || !wrong.is_healthy()).await;
    eventually("the h2c backend was probed", || hits.load(Ordering::SeqCst) >= 3).await;
    assert!(service.endpoint(&h2.to_string()).unwrap().is_healthy());
    assert_eq!(http1_hits.load(Ordering::SeqCst), 0, "no HTTP/1 request was made");
}
