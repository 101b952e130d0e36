//! Active health checks: one background task per service probes every endpoint.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::USER_AGENT;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

pub use gateway_config::HealthCheckKind;

use crate::service::Shared;
use crate::state::EndpointState;
use crate::util::{jitter, random_unit};
use crate::Scheme;

/// `health_check = { ... }` of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckOptions {
    /// `http` (GET `path`, any 2xx passes) or `grpc` (see [`crate`] docs: a TCP connect check for now).
    pub kind: HealthCheckKind,
    /// The path (and query) to GET, starting with `/`.
    pub path: String,
    /// Time between rounds, varied by ±10 % so a fleet does not probe in lockstep.
    pub interval: Duration,
    /// A probe that takes longer fails.
    pub timeout: Duration,
    /// Passing probes in a row that bring an unhealthy endpoint back.
    pub healthy_threshold: u32,
    /// Failing probes in a row that take a healthy endpoint out.
    pub unhealthy_threshold: u32,
}

impl From<&gateway_config::HealthCheck> for HealthCheckOptions {
    fn from(h: &gateway_config::HealthCheck) -> Self {
        HealthCheckOptions {
            kind: h.kind,
            path: h.path.clone(),
            interval: h.interval.0,
            timeout: h.timeout.0,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        }
    }
}

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// The clients and settings of one service's probes.
#[derive(Clone)]
struct Prober {
    http1: ProbeClient,
    h2c: ProbeClient,
    options: Arc<HealthCheckOptions>,
}

impl Prober {
    fn new(options: HealthCheckOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.timeout));
        connector.set_nodelay(true);
        // No pooling: every probe proves that a new connection can be made.
        let http1 = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).http2_only(true).build(connector);
        Prober { http1, h2c, options: Arc::new(options) }
    }

    /// `Ok` when the endpoint passes.
    async fn probe(&self, endpoint: &EndpointState) -> Result<(), String> {
        let work = async {
            match (self.options.kind, endpoint.scheme()) {
                (HealthCheckKind::Http, Scheme::Http) => self.get(&self.http1, endpoint).await,
                (HealthCheckKind::Http, Scheme::H2c) => self.get(&self.h2c, endpoint).await,
                // https (TLS settings live in the proxy crate) and grpc: can we connect?
                _ => tokio::net::TcpStream::connect(endpoint.address())
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect: {e}")),
            }
        };
        tokio::time::timeout(self.options.timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.options.timeout)))
    }

    async fn get(&self, client: &ProbeClient, endpoint: &EndpointState) -> Result<(), String> {
        let uri: Uri =
            format!("http://{}{}", endpoint.address(), self.options.path).parse().map_err(|e| format!("{e}"))?;
        let request = Request::get(uri)
            .header(USER_AGENT, "gateway-health-check")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| format!("{e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("status {}", response.status().as_u16()))
        }
    }
}

/// Probe `shared`'s endpoints until it is dropped.
pub(crate) async fn run(shared: Weak<Shared>, options: HealthCheckOptions) {
    let interval = options.interval;
    let prober = Prober::new(options);
    // The first round at a random point of the first interval, to spread a fleet out.
    tokio::time::sleep(interval.mul_f64(random_unit())).await;
    loop {
        let Some(service) = shared.upgrade() else { return };
        let name = service.name.clone();
        let endpoints = service.snapshot();
        drop(service);
        let mut probes = JoinSet::new();
        for endpoint in endpoints.iter().cloned() {
            let prober = prober.clone();
            probes.spawn(async move {
                let result = prober.probe(&endpoint).await;
                (endpoint, result)
            });
        }
        while let Some(joined) = probes.join_next().await {
            let Ok((endpoint, result)) = joined else { continue };
            let (healthy, unhealthy) = (prober.options.healthy_threshold, prober.options.unhealthy_threshold);
            match endpoint.record_probe(result.is_ok(), healthy, unhealthy) {
                Some(true) => {
                    tracing::info!(service = %name, endpoint = %endpoint.endpoint(), "endpoint healthy again")
                }
                Some(false) => tracing::warn!(
                    service = %name,
                    endpoint = %endpoint.endpoint(),
                    reason = result.err().as_deref().unwrap_or(""),
                    "endpoint unhealthy"
                ),
                None => {}
            }
        }
        tokio::time::sleep(jitter(interval, 0.1)).await;
    }
}
