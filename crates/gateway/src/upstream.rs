//! One call to a service, as every route action makes it: pick an endpoint (load
//! balancer over healthy endpoints whose circuit admits the call), send with the
//! per-try timeout, record the outcome for the circuit breaker and passive health, and
//! retry on another endpoint while the policy and the retry budget allow.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use gateway_core::{Body, ErrorKind, GatewayError};
use gateway_proxy::grpc::GRPC_TIMEOUT;
use gateway_proxy::RequestBody;
use gateway_registry::{EndpointState, Pick, PickContext};
use gateway_resilience::{CircuitBreaker, FailureKind, Outcome, Permit};
use http::header::{HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, Uri, Version};

use crate::runtime::ServiceRuntime;
use gateway_telemetry::trace::{ActiveSpan, Tracer, TRACEPARENT, TRACESTATE};

/// The circuit breakers of one service, one per endpoint address, made on first use.
#[derive(Default)]
pub struct Breakers {
    settings: Option<gateway_config::CircuitBreaker>,
    by_address: ArcSwap<HashMap<String, CircuitBreaker>>,
}

impl Breakers {
    pub fn new(settings: Option<gateway_config::CircuitBreaker>) -> Self {
        Breakers { settings, by_address: ArcSwap::default() }
    }

    /// The breaker of `address`; `None` when the service has no `circuit_breaker` (and
    /// none was forced by hand).
    pub fn get(&self, address: &str) -> Option<CircuitBreaker> {
        if let Some(breaker) = self.by_address.load().get(address) {
            return Some(breaker.clone());
        }
        let settings = self.settings.as_ref()?;
        // First call to this endpoint: add its breaker (rare; copy-on-write).
        let fresh = CircuitBreaker::new(settings);
        let mut made = fresh.clone();
        self.by_address.rcu(|map| {
            let mut map = HashMap::clone(map);
            made = map.entry(address.to_owned()).or_insert_with(|| fresh.clone()).clone();
            map
        });
        Some(made)
    }

    /// The breaker of `address` for a manual override: services without
    /// `circuit_breaker` get one with default settings, so an endpoint can always be
    /// taken out by hand.
    pub fn get_or_manual(&self, address: &str) -> CircuitBreaker {
        if let Some(breaker) = self.get(address) {
            return breaker;
        }
        let fresh = CircuitBreaker::new(&gateway_config::CircuitBreaker::default());
        let mut made = fresh.clone();
        self.by_address.rcu(|map| {
            let mut map = HashMap::clone(map);
            made = map.entry(address.to_owned()).or_insert_with(|| fresh.clone()).clone();
            map
        });
        made
    }

    /// Existing breakers, for the admin API and metrics.
    pub fn existing(&self, address: &str) -> Option<CircuitBreaker> {
        self.by_address.load().get(address).cloned()
    }
}

/// What to send: the parts of the upstream request, rebuilt for each try.
pub struct Call<'a> {
    /// The request's server span: each try is a client span under it, and its id is the
    /// `traceparent` the upstream sees.
    pub trace: Option<(&'a Tracer, &'a ActiveSpan)>,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The body of the first try; retries happen only for bodiless requests.
    pub body: RequestBody,
    pub timeout: Duration,
    /// The caller stated a gRPC deadline: each try tells the upstream what is left of it.
    pub grpc_deadline: bool,
    pub client_ip: IpAddr,
}

/// The answer and the endpoint that gave it.
pub struct Answered {
    pub response: Response<Body>,
    pub endpoint: Arc<EndpointState>,
}

/// Call `service`, with its balancer, breakers, passive health and retries.
pub async fn call(
    service: &ServiceRuntime,
    call: Call<'_>,
) -> Result<Answered, (GatewayError, Option<Arc<EndpointState>>)> {
    let started = Instant::now();
    let deadline = started + call.timeout;
    let retryable_request =
        matches!(call.body, RequestBody::Empty) && gateway_resilience::is_idempotent(call.method.as_str());
    let max_tries = match (&service.retry, retryable_request) {
        (Some(policy), true) => policy.max_tries(),
        _ => 1,
    };
    if let Some(budget) = &service.budget {
        budget.deposit(started);
    }
    let mut first_body = Some(call.body);
    let mut headers = Some(call.headers);
    let mut tried: Vec<String> = Vec::new();
    let mut tries = 0;
    loop {
        tries += 1;
        let now = Instant::now();
        let hash_headers: &HeaderMap = headers.as_ref().unwrap_or(&EMPTY_HEADERS);
        let (picked, permit) = pick(service, hash_headers, call.client_ip, &tried, now).map_err(|e| (e, None))?;
        let endpoint_state = picked.state().clone();
        let address = endpoint_state.address();
        let left = deadline.saturating_duration_since(now);
        let per_try = service.retry.as_ref().and_then(|r| r.per_try_timeout()).map_or(left, |t| t.min(left));

        let body = first_body.take().unwrap_or(RequestBody::Empty);
        let mut request = Request::new(body);
        *request.method_mut() = call.method.clone();
        *request.uri_mut() = call.uri.clone();
        *request.version_mut() = Version::HTTP_11;
        // The last possible try takes the headers; earlier ones send a copy.
        *request.headers_mut() =
            if tries >= max_tries { headers.take().unwrap_or_default() } else { headers.clone().unwrap_or_default() };
        if call.grpc_deadline {
            request.headers_mut().insert(GRPC_TIMEOUT.clone(), gateway_proxy::grpc::encode_timeout(per_try));
        }
        let mut span = call.trace.map(|(tracer, server)| {
            let endpoint = picked.endpoint();
            let span = tracer
                .client_span(server)
                .method(&call.method)
                .path(call.uri.path_and_query())
                .upstream(&endpoint.uri_scheme(), endpoint.authority())
                .service(&service.trace_name)
                .resend_count(tries - 1)
                .start();
            request.headers_mut().insert(TRACEPARENT, span.traceparent());
            if !server.has_remote_parent() {
                request.headers_mut().remove(TRACESTATE);
            }
            (tracer, span)
        });
        let result = service.client.send_measured(picked.endpoint(), request, per_try, &service.metrics).await;
        if let Some((tracer, mut span)) = span.take() {
            match &result {
                Ok(resp) => span.set_status_code(resp.status().as_u16()),
                Err(err) => span.set_error_type(err.kind.code()),
            }
            tracer.finish(span);
        }

        let failure = match &result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                service
                    .endpoints
                    .report(picked.state(), gateway_registry::Outcome::Response { latency: picked.elapsed() });
                let failed = permit.as_ref().is_some_and(|(breaker, _)| breaker.is_failure_status(status));
                record(service, address, permit, !failed);
                // Whether a status is worth a retry is the retry policy's call (`retry_on`).
                (status >= 400).then_some(FailureKind::Status(status))
            }
            Err(err) => {
                let kind = failure_kind(err);
                let passive = match kind {
                    FailureKind::ConnectFailure => gateway_registry::Outcome::ConnectFailure,
                    _ => gateway_registry::Outcome::Failure,
                };
                service.endpoints.report(picked.state(), passive);
                record(service, address, permit, false);
                Some(kind)
            }
        };

        let may_retry = tries < max_tries
            && failure.is_some_and(|kind| {
                service.retry.as_ref().is_some_and(|policy| policy.should_retry_after(tries, kind))
                    && deadline > Instant::now()
                    && service.budget.as_ref().is_none_or(|budget| budget.try_withdraw(Instant::now()))
            });
        if !may_retry {
            return match result {
                Ok(response) => {
                    // The in-flight count lasts until the body ends.
                    let response = response.map(|body| body.guarded(Box::new(picked)));
                    Ok(Answered { response, endpoint: endpoint_state })
                }
                Err(err) => Err((err, Some(endpoint_state))),
            };
        }
        service.metrics_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tried.push(address.to_owned());
        drop(picked);
        if let Some(policy) = &service.retry {
            let pause = policy.backoff(tries, gateway_core::random_u64());
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
        }
    }
}

static EMPTY_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

type Admitted = Option<(CircuitBreaker, Permit)>;

/// Pick an endpoint whose breaker admits the call, reserving the breaker's permit.
fn pick(
    service: &ServiceRuntime,
    headers: &HeaderMap,
    client_ip: IpAddr,
    tried: &[String],
    now: Instant,
) -> Result<(gateway_registry::Picked, Admitted), GatewayError> {
    let permit: RefCell<Admitted> = RefCell::new(None);
    let soonest: Cell<Option<Duration>> = Cell::new(None);
    let admit = |endpoint: &EndpointState| -> bool {
        let Some(breaker) = service.breakers.get(endpoint.address()) else { return true };
        match breaker.try_acquire(now) {
            Ok(p) => {
                if let Some(transition) = p.transition() {
                    tracing::info!(event = "circuit", service = %service.name, endpoint = endpoint.address(), %transition, "circuit");
                }
                *permit.borrow_mut() = Some((breaker, p));
                true
            }
            Err(rejected) => {
                let wait = soonest.get().map_or(rejected.retry_after, |s| s.min(rejected.retry_after));
                soonest.set(Some(wait));
                false
            }
        }
    };
    let excluded: Vec<&str> = tried.iter().map(String::as_str).collect();
    let ctx = PickContext::new(client_ip, headers);
    match service.endpoints.pick_excluding(&ctx, &admit, &excluded) {
        Pick::Picked(picked) => Ok((picked, permit.into_inner())),
        Pick::NoEndpoints => Err(unavailable(format!("service `{}` has no endpoint", service.name))),
        Pick::AllUnhealthy => Err(unavailable(format!("every endpoint of service `{}` is unhealthy", service.name))),
        Pick::AllRejected => {
            let wait = soonest.get().unwrap_or(Duration::from_secs(1));
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Err(unavailable(format!("every circuit of service `{}` is open", service.name))
                .with_header(RETRY_AFTER, HeaderValue::from(secs.max(1))))
        }
    }
}

fn record(service: &ServiceRuntime, address: &str, permit: Admitted, success: bool) {
    if let Some((breaker, permit)) = permit {
        let outcome = if success { Outcome::Success } else { Outcome::Failure };
        if let Some(transition) = breaker.record(permit, outcome, Instant::now()) {
            tracing::warn!(event = "circuit", service = %service.name, endpoint = address, %transition, "circuit");
        }
    }
}

fn unavailable(message: String) -> GatewayError {
    GatewayError::new(ErrorKind::ServiceUnavailable, message)
}

fn failure_kind(err: &GatewayError) -> FailureKind {
    match err.kind {
        ErrorKind::GatewayTimeout => FailureKind::Timeout,
        _ if err.retryable => FailureKind::ConnectFailure,
        _ => FailureKind::Reset,
    }
}
