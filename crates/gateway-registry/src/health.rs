//! Active health checks: one background task per service probes every endpoint.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
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
    /// `http` (GET `path`, any 2xx passes) or `grpc` (`grpc.health.v1.Health/Check`
    /// over HTTP/2; `SERVING` passes).
    pub kind: HealthCheckKind,
    /// How to reach `https` endpoints (the service's TLS settings, so probes trust what
    /// requests trust); without it they are checked by a TCP connect.
    pub tls: Option<ProbeTls>,
    /// The service name a `grpc` check asks about (`""`: the server as a whole).
    pub grpc_service: String,
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

/// TLS client settings for probing `https` endpoints. Equal when they are the same
/// settings (the same `Arc`), as a service definition that did not change keeps them.
#[derive(Debug, Clone)]
pub struct ProbeTls(pub Arc<rustls::ClientConfig>);

impl PartialEq for ProbeTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ProbeTls {}

impl From<&gateway_config::HealthCheck> for HealthCheckOptions {
    /// Without TLS settings (see [`HealthCheckOptions::tls`]).
    fn from(h: &gateway_config::HealthCheck) -> Self {
        HealthCheckOptions {
            kind: h.kind,
            tls: None,
            grpc_service: h.service.clone().unwrap_or_default(),
            path: h.path.clone(),
            interval: h.interval.0,
            timeout: h.timeout.0,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        }
    }
}

type ProbeClient<C = HttpConnector> = Client<C, Empty<Bytes>>;
type GrpcClient<C = HttpConnector> = Client<C, Full<Bytes>>;
type Https = HttpsConnector<HttpConnector>;

/// The path of the standard gRPC health check.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;
/// The largest health check answer read.
const MAX_GRPC_ANSWER: usize = 16 * 1024;

/// The clients and settings of one service's probes.
#[derive(Clone)]
struct Prober {
    http1: ProbeClient,
    h2c: ProbeClient,
    grpc: GrpcClient,
    /// `https` endpoints: HTTP/1.1 or HTTP/2 by ALPN for `http` checks, HTTP/2 for `grpc`.
    https: Option<(ProbeClient<Https>, GrpcClient<Https>)>,
    /// The framed `HealthCheckRequest` every gRPC probe sends.
    grpc_request: Bytes,
    options: Arc<HealthCheckOptions>,
}

impl Prober {
    fn new(options: HealthCheckOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.timeout));
        connector.set_nodelay(true);
        // No pooling: every probe proves that a new connection can be made.
        let http1 = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector.clone());
        let h2c =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).http2_only(true).build(connector.clone());
        let grpc =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).http2_only(true).build(connector.clone());
        let https = options.tls.as_ref().map(|ProbeTls(tls)| {
            let mut connector = connector.clone();
            connector.enforce_http(false); // the TLS layer takes https:// URIs
            let tls = || HttpsConnectorBuilder::new().with_tls_config(rustls::ClientConfig::clone(tls)).https_only();
            let any = tls().enable_all_versions().wrap_connector(connector.clone());
            let h2 = tls().enable_http2().wrap_connector(connector.clone());
            let grpc = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).http2_only(true).build(h2);
            (Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(any), grpc)
        });
        let grpc_request = grpc_health_request(&options.grpc_service);
        Prober { http1, h2c, grpc, https, grpc_request, options: Arc::new(options) }
    }

    /// `Ok` when the endpoint passes.
    async fn probe(&self, endpoint: &EndpointState) -> Result<(), String> {
        let work = async {
            match (self.options.kind, endpoint.scheme(), &self.https) {
                (HealthCheckKind::Http, Scheme::Http, _) => self.get(&self.http1, "http", endpoint).await,
                (HealthCheckKind::Http, Scheme::H2c, _) => self.get(&self.h2c, "http", endpoint).await,
                (HealthCheckKind::Http, Scheme::Https, Some((any, _))) => self.get(any, "https", endpoint).await,
                (HealthCheckKind::Grpc, Scheme::H2c | Scheme::Http, _) => {
                    self.grpc_check(&self.grpc, "http", endpoint).await
                }
                (HealthCheckKind::Grpc, Scheme::Https, Some((_, grpc))) => {
                    self.grpc_check(grpc, "https", endpoint).await
                }
                // https without TLS settings: can we connect?
                (_, Scheme::Https, None) => tokio::net::TcpStream::connect(endpoint.address())
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect: {e}")),
            }
        };
        tokio::time::timeout(self.options.timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.options.timeout)))
    }

    async fn get<C>(&self, client: &ProbeClient<C>, scheme: &str, endpoint: &EndpointState) -> Result<(), String>
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        let uri: Uri =
            format!("{scheme}://{}{}", endpoint.address(), self.options.path).parse().map_err(|e| format!("{e}"))?;
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

impl Prober {
    /// `grpc.health.v1.Health/Check` over HTTP/2: with prior knowledge (h2c) or TLS.
    async fn grpc_check<C>(&self, client: &GrpcClient<C>, scheme: &str, endpoint: &EndpointState) -> Result<(), String>
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        let uri: Uri =
            format!("{scheme}://{}{GRPC_HEALTH_CHECK}", endpoint.address()).parse().map_err(|e| format!("{e}"))?;
        let request = Request::post(uri)
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .header(USER_AGENT, "gateway-health-check")
            .body(Full::new(self.grpc_request.clone()))
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| format!("{e}"))?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status().as_u16()));
        }
        let (head, body) = response.into_parts();
        // A trailers-only answer carries grpc-status in the head.
        grpc_status_ok(&head.headers)?;
        let collected = Limited::new(body, MAX_GRPC_ANSWER).collect().await.map_err(|e| format!("body: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        grpc_status_ok(&trailers)?;
        if !head.headers.contains_key("grpc-status") && !trailers.contains_key("grpc-status") {
            return Err("no grpc-status".into());
        }
        match grpc_serving_status(collected.to_bytes())? {
            SERVING => Ok(()),
            status => Err(format!("serving status {status} ({})", serving_status_name(status))),
        }
    }
}

/// `Err` when `headers` carry a `grpc-status` other than 0 (OK).
fn grpc_status_ok(headers: &HeaderMap) -> Result<(), String> {
    match headers.get("grpc-status").map(|v| v.as_bytes()) {
        None | Some(b"0") => Ok(()),
        Some(code) => {
            let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
            Err(format!("grpc-status {} {message}", String::from_utf8_lossy(code)))
        }
    }
}

/// A length-prefixed gRPC message holding `HealthCheckRequest { service = 1 }`.
pub(crate) fn grpc_health_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0); // not compressed
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(buf: &mut Bytes) -> Result<u64, String> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err("truncated varint".into());
        }
        let b = buf.get_u8();
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("varint too long".into())
}

/// The `status` (field 1) of the one `HealthCheckResponse` in a gRPC body; 0
/// (UNKNOWN) when the field is absent, as protobuf says.
pub(crate) fn grpc_serving_status(mut body: Bytes) -> Result<u64, String> {
    if body.len() < 5 {
        return Err("no health check answer".into());
    }
    if body.get_u8() != 0 {
        return Err("compressed answer".into());
    }
    let len = body.get_u32() as usize;
    if body.len() < len {
        return Err("truncated answer".into());
    }
    let mut message = body.split_to(len);
    let mut status = 0;
    while message.has_remaining() {
        let key = get_varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(&mut message)?,
            (_, 0) => drop(get_varint(&mut message)?),
            (_, 1) if message.remaining() >= 8 => message.advance(8),
            (_, 5) if message.remaining() >= 4 => message.advance(4),
            (_, 2) => {
                let n = get_varint(&mut message)? as usize;
                if message.remaining() < n {
                    return Err("truncated field".into());
                }
                message.advance(n);
            }
            _ => return Err("malformed answer".into()),
        }
    }
    Ok(status)
}

fn serving_status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "unrecognised",
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
                    tracing::info!(event = "health", service = %name, endpoint = %endpoint.endpoint(), healthy = true, "endpoint healthy again")
                }
                Some(false) => tracing::warn!(
                    event = "health",
                    service = %name,
                    endpoint = %endpoint.endpoint(),
                    healthy = false,
                    reason = result.err().as_deref().unwrap_or(""),
                    "endpoint unhealthy"
                ),
                None => {}
            }
        }
        tokio::time::sleep(jitter(interval, 0.1)).await;
    }
}
