//! The data path: one client request, from its head to the upstream's answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use gateway_core::{Body, ErrorKind, GatewayError, RequestId, X_REQUEST_ID};
use gateway_proxy::grpc::{self, GrpcWeb, GRPC_TIMEOUT};
use gateway_proxy::{headers, ClientAddr, RequestBody};
use gateway_registry::EndpointState;
use gateway_router::RouteMiss;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, UPGRADE};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::cors;
use crate::runtime::{Action, RoutePolicy, Runtime, ServiceRuntime};
use crate::strict::Verdicts;
use crate::upstream;
use crate::Shared;
use gateway_telemetry::trace::{ActiveSpan, TraceContext};
use gateway_traffic::cache::{
    buffer_body, Buffered, CacheRequest, CacheStatus, CachedResponse, Fetched, Lookup, Served,
};
use gateway_traffic::compress::{compress_response, should_compress};
use gateway_traffic::headers::TransformContext;

/// Facts about the client connection every request on it shares.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: IpAddr,
    pub tls: bool,
    /// The peer as an `x-forwarded-for` entry, rendered once for the connection.
    pub forwarded_for: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: IpAddr, tls: bool) -> Self {
        ConnInfo { peer, tls, forwarded_for: headers::forwarded_for(peer) }
    }
}

/// Serve one request. Never fails: every error becomes the JSON (or gRPC) answer.
pub async fn handle(
    req: Request<Incoming>,
    conn: ConnInfo,
    verdicts: Option<Verdicts>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, hyper::Error> {
    let started = Instant::now();
    // One snapshot for the whole request: a reload never changes a request half way.
    let runtime = shared.runtime.load_full();
    let request_id = RequestId::from_client(req.headers().get(X_REQUEST_ID));
    let grpc = is_grpc(req.headers());
    let grpc_web = GrpcWeb::of(req.headers());
    let method = req.method().clone();
    let origin = req.headers().get(http::header::ORIGIN).cloned();
    // The URI's parts share the request's buffer: keeping it costs no copy.
    let uri_for_log = runtime.config.telemetry.access_log.then(|| req.uri().clone());

    let mut route_idx = None;
    let mut upstream = None;
    // The raw-head verdict of this request (HTTP/1 only), popped whatever happens next
    // so the queue stays in step with the requests.
    let verdict = verdicts.map(|v| v.pop());
    // The server span: an incoming traceparent keeps its trace id; otherwise one starts here.
    let mut span = runtime
        .tracer
        .server_span(TraceContext::from_headers(req.headers()))
        .method(req.method())
        .path(req.uri().path_and_query())
        .host(req.headers().get(HOST))
        .tls(conn.tls)
        .client_address(conn.peer)
        .version(req.version())
        .start();
    let result = match verdict.and_then(|v| v.problem) {
        Some(problem) => Err(bad_framing(problem.message())),
        None => proxy(req, &conn, &runtime, &request_id, &mut span, &mut route_idx, &mut upstream).await,
    };
    let error_code = result.as_ref().err().map(|e| e.kind.code());
    let mut response = match result {
        Ok(resp) => resp,
        Err(err) => {
            if err.blame != gateway_core::Blame::Client {
                tracing::warn!(request_id = request_id.as_str(), error = %err, "request failed");
            }
            let mut response = err.into_response(&request_id, grpc);
            if let Some(web) = grpc_web {
                response.headers_mut().insert(CONTENT_TYPE, web.error_content_type());
            }
            response
        }
    };
    response.headers_mut().insert(X_REQUEST_ID, request_id.header_value().clone());
    // CORS headers on every answer of a CORS route, errors included, so a browser can
    // read why it was refused.
    if let (Some(origin), Some(cors)) = (&origin, route_idx.and_then(|i| runtime.policies[i].cors.as_ref())) {
        cors.decorate(origin, response.headers_mut());
    }

    let elapsed = started.elapsed();
    let policy = route_idx.map(|i| &runtime.policies[i]);
    let route_metrics = policy.map(|p| &p.metrics).unwrap_or(&runtime.unmatched);
    route_metrics.record(&method, response.status().as_u16(), elapsed);
    span.set_status_code(response.status().as_u16());
    if let Some(code) = error_code {
        span.set_error_type(code);
    }
    let trace_id = span.context().trace_id;
    runtime.tracer.finish(span);
    if let Some(uri) = uri_for_log {
        let entry = AccessEntry {
            request_id: &request_id,
            policy,
            method: &method,
            path: uri.path(),
            upstream: upstream.as_deref().map(EndpointState::address),
            error: error_code,
            trace_id,
            elapsed,
        };
        access_log(&entry, &response);
    }
    Ok(response)
}

async fn proxy(
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    runtime: &Runtime,
    request_id: &RequestId,
    span: &mut ActiveSpan,
    route_idx: &mut Option<usize>,
    upstream_addr: &mut Option<Arc<EndpointState>>,
) -> Result<Response<Body>, GatewayError> {
    check_framing(&req)?;
    check_head_size(&req, runtime.max_header_bytes)?;
    let host = routing_host(&req)?;
    let host = host.as_ref().map(RoutingHost::as_str);
    // The URI is cheap to clone (shared bytes) and lets the normalised path borrow from it
    // while the request moves on.
    let uri = req.uri().clone();
    let path = gateway_router::normalize_path(uri.path())
        .map_err(|e| GatewayError::new(ErrorKind::BadRequest, format!("malformed path: {e}")))?;
    // A CORS preflight is matched as the request it announces, so a GET-only route with
    // CORS answers the browser's OPTIONS.
    let preflight = cors::is_preflight(req.method(), req.headers());
    // A WebSocket over HTTP/2 (extended CONNECT) is matched as the GET it is in HTTP/1.1.
    let h2_websocket = is_extended_connect(&req);
    let match_method = if h2_websocket { &Method::GET } else { preflight.as_ref().unwrap_or(req.method()) };
    let matched = runtime.routes.find(host, match_method, &path, req.headers()).map_err(|miss| match miss {
        RouteMiss::NotFound => GatewayError::new(ErrorKind::RouteNotFound, "no route matches this request"),
        RouteMiss::MethodNotAllowed { allow } => {
            GatewayError::new(ErrorKind::MethodNotAllowed, "method not allowed on this route").with_header(ALLOW, allow)
        }
    })?;
    *route_idx = Some(matched.route);
    let policy: &RoutePolicy = &runtime.policies[matched.route];
    span.set_route(&policy.trace_name);
    let in_flight = policy.metrics.start();
    let _in_flight = InFlight(policy);
    if policy.max_in_flight.is_some_and(|max| in_flight > max) {
        // Shed load at once rather than queue: the caller may retry elsewhere.
        return Err(GatewayError::new(ErrorKind::ServiceUnavailable, "route is at its concurrency limit")
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")));
    }

    let client = ClientAddr::resolve(conn.peer, req.headers(), &runtime.trusted_proxies);
    if !policy.allow_ips.is_empty() && !policy.allow_ips.iter().any(|n| n.contains(client.ip)) {
        return Err(GatewayError::new(ErrorKind::Forbidden, "client address is not allowed on this route"));
    }
    if policy.deny_ips.iter().any(|n| n.contains(client.ip)) {
        return Err(GatewayError::new(ErrorKind::Forbidden, "client address is denied on this route"));
    }
    if let Some(cors) = &policy.cors {
        if preflight.is_some() {
            if let Some(answer) = cors.preflight(req.headers()) {
                return Ok(answer);
            }
        }
    }

    // Identity headers are the gateway's to set: a client's copies never cross, on any route.
    runtime.identity_headers.strip(req.headers_mut());
    let mut identity = Vec::new();
    let principal = match &policy.auth {
        None => None,
        Some(auth) => {
            let principal = Box::pin(auth.check(req.headers(), req.uri().query())).await?;
            identity = auth.upstream_headers(&principal);
            for (name, value) in &identity {
                req.headers_mut().insert(name.clone(), value.clone());
            }
            if !policy.forward_authorization {
                req.headers_mut().remove(http::header::AUTHORIZATION);
            }
            Some(principal)
        }
    };

    let rate = match &policy.limits {
        None => None,
        Some(limits) => match Box::pin(limits.check(client.ip, req.headers(), principal.as_ref())).await {
            Ok(decision) => decision,
            Err(refused) => {
                policy.metrics.rate_limited();
                let mut err = GatewayError::new(ErrorKind::RateLimited, "rate limit exceeded");
                err.headers = refused.headers();
                return Err(err);
            }
        },
    };

    // Header edits run after authentication, so identity placeholders have a principal.
    if let Some(transform) = &policy.request_headers {
        let ctx = TransformContext {
            request_id: request_id.as_str(),
            client_ip: client.ip,
            principal: principal.as_ref(),
            route: &policy.name,
        };
        transform.apply(req.headers_mut(), &ctx);
    }

    let service = match &policy.action {
        Action::Proxy(service) => service,
        Action::Split { split, services } => {
            let name = split.pick(req.headers(), gateway_traffic::random_u64());
            services.get(name).ok_or_else(|| {
                GatewayError::new(ErrorKind::ServiceUnavailable, format!("split names an unknown service `{name}`"))
            })?
        }
        Action::Aggregate(action) => {
            let mut headers = http::HeaderMap::new();
            headers.insert(X_REQUEST_ID, request_id.header_value().clone());
            headers.extend(identity);
            if policy.forward_authorization {
                if let Some(v) = req.headers().get(http::header::AUTHORIZATION) {
                    headers.insert(http::header::AUTHORIZATION, v.clone());
                }
            }
            let params: Vec<(&str, &str)> = matched.params.iter().collect();
            let ctx = gateway_aggregate::AggregateContext {
                params: &params,
                query: uri.query(),
                principal: principal.as_ref(),
                headers,
                deadline: policy.timeout,
                part_timeout: policy.timeout,
                max_body: policy.max_body_bytes,
            };
            let fetcher = crate::aggregate::Fetcher {
                services: &action.services,
                client_ip: client.ip,
                trace: Some((&runtime.tracer, &*span)),
            };
            let answer = Box::pin(action.aggregate.run(ctx, &fetcher)).await?;
            let mut response = Response::new(gateway_core::full(answer.body.clone()));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(partial) = answer.partial_header() {
                response.headers_mut().insert("x-gateway-partial", partial);
            }
            if let Some(decision) = rate {
                decision.write_headers(response.headers_mut());
            }
            return Ok(response);
        }
        Action::Publish(action) => {
            let mut response =
                Box::pin(crate::publish::publish(action, req, &matched.params, policy, runtime, request_id)).await?;
            if let Some(decision) = rate {
                decision.write_headers(response.headers_mut());
            }
            return Ok(response);
        }
        Action::Unsupported(why) => return Err(GatewayError::new(ErrorKind::ServiceUnavailable, *why)),
    };

    if let Some(declared) = declared_length(&req) {
        if declared > policy.max_body_bytes {
            return Err(GatewayError::new(
                ErrorKind::PayloadTooLarge,
                format!("request body of {declared} bytes is over the {} bytes allowed", policy.max_body_bytes),
            )
            .closing());
        }
    }

    // A protocol upgrade (WebSocket) keeps its Upgrade headers, and the tunnel opens only
    // once the upstream answered 101.
    let upgrade = upgrade_protocol(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    // HTTP/2: the tunnel is one stream of a connection that must not look idle under it.
    let tunnel_in_flight = req.extensions_mut().remove::<crate::keepalive::InFlight>();

    let upstream_path = runtime.routes.upstream_path(&matched, &path);
    let (mut parts, body) = req.into_parts();
    if h2_websocket {
        // RFC 8441 to RFC 6455: the upstream gets the HTTP/1.1 handshake, with a key of
        // the gateway's own (an HTTP/2 client sends none).
        parts.method = Method::GET;
        parts.headers.insert(http::header::SEC_WEBSOCKET_KEY, websocket_key());
        parts.headers.entry(http::header::SEC_WEBSOCKET_VERSION).or_insert(HeaderValue::from_static("13"));
    }
    parts.uri = upstream_target(&uri, &upstream_path)?;
    if !parts.headers.contains_key(HOST) {
        if let Some(host) = host {
            if let Ok(v) = HeaderValue::from_str(host) {
                parts.headers.insert(HOST, v);
            }
        }
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = &upgrade {
        parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, protocol.clone());
    }
    let proto = if conn.tls { "https" } else { "http" };
    headers::set_forwarded(&mut parts.headers, &client, &conn.forwarded_for, proto);
    parts.headers.insert(X_REQUEST_ID, request_id.header_value().clone());
    // gRPC-Web from a browser becomes gRPC upstream, and its answer gRPC-Web again.
    let grpc_web = if policy.grpc_web { GrpcWeb::of(&parts.headers) } else { None };
    if let Some(web) = grpc_web {
        web.to_grpc_request(&mut parts.headers);
    }
    // A gRPC caller's deadline (`grpc-timeout`) shortens the route's, and goes upstream.
    let grpc_deadline =
        if is_grpc(&parts.headers) { parts.headers.get(&GRPC_TIMEOUT).and_then(grpc::parse_timeout) } else { None };
    let method = parts.method.clone();
    let accept_encoding =
        if policy.compress { parts.headers.get(http::header::ACCEPT_ENCODING).cloned() } else { None };
    let cacheable = upgrade.is_none() && (method == Method::GET || method == Method::HEAD);
    let body = match grpc_web {
        // gRPC-Web text comes whole from browsers (no client streaming): decode it.
        Some(web @ GrpcWeb::Text) => {
            let text =
                Box::pin(crate::publish::read_body(body, policy.max_body_bytes, runtime.body_read_timeout)).await?;
            let data = web.decode_body(text).map_err(|e| {
                GatewayError::new(ErrorKind::BadRequest, format!("gRPC-Web text body is not base64: {e}"))
            })?;
            RequestBody::Bytes { data: Some(data) }
        }
        _ => {
            let body = RequestBody::new(body, policy.max_body_bytes, runtime.body_read_timeout);
            match &policy.mirror {
                Some((mirror, shadow)) => mirror_request(mirror, shadow, &parts, body, client.ip),
                None => body,
            }
        }
    };
    // The cache looks at the headers after the call took them; otherwise they move.
    let headers =
        if cacheable && policy.cache.is_some() { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
    let call = upstream::Call {
        trace: Some((&runtime.tracer, &*span)),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers,
        body,
        timeout: grpc_deadline.map_or(policy.timeout, |deadline| deadline.min(policy.timeout)),
        grpc_deadline: grpc_deadline.is_some(),
        client_ip: client.ip,
    };
    let mut response = match policy.cache.as_ref().filter(|_| cacheable) {
        None => send(service, call, upstream_addr).await?,
        Some(cache) => {
            let principal_id =
                principal.as_ref().map(|p| format!("{}:{}", p.provider, p.subject.as_deref().unwrap_or("")));
            let lookup_request = CacheRequest {
                method: &method,
                host: host.unwrap_or(""),
                path: &path,
                query: uri.query(),
                headers: &parts.headers,
                credentialed: principal.is_some(),
                principal: principal_id.as_deref(),
            };
            let head = method == Method::HEAD;
            match Box::pin(cache.lookup(&lookup_request)).await {
                Lookup::Hit(entry) => {
                    let mut response = entry.to_response(head);
                    CacheStatus::Hit.set_header(response.headers_mut());
                    response
                }
                Lookup::Bypass(_) => {
                    let mut response = send(service, call, upstream_addr).await?;
                    CacheStatus::Miss.set_header(response.headers_mut());
                    response
                }
                Lookup::Miss(ticket) => {
                    let buffer = ticket.buffer_policy();
                    let fetch = async {
                        let response = send(service, call, upstream_addr).await?;
                        if !buffer.should_buffer(response.status(), response.headers()) {
                            return Ok(Fetched::Passthrough(response));
                        }
                        let (head_parts, body) = response.into_parts();
                        match buffer_body(body, buffer.max_body_bytes()).await {
                            Ok(Buffered::Complete(bytes)) => {
                                Ok(Fetched::Complete(CachedResponse::new(head_parts.status, head_parts.headers, bytes)))
                            }
                            Ok(Buffered::Partial(rest)) => {
                                Ok(Fetched::Passthrough(Response::from_parts(head_parts, Body::boxed(rest))))
                            }
                            Err(e) => {
                                Err(GatewayError::new(ErrorKind::BadGateway, format!("upstream body failed: {e}")))
                            }
                        }
                    };
                    let outcome = Box::pin(ticket.fetch(fetch)).await?;
                    let mut response = match outcome.served {
                        Served::Complete(entry) => entry.to_response(head),
                        Served::Passthrough(response) => response,
                    };
                    outcome.status.set_header(response.headers_mut());
                    response
                }
            }
        }
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upstream_protocol = response.headers().get(UPGRADE).cloned();
    headers::strip_hop_by_hop(response.headers_mut());
    match (client_upgrade, switching) {
        (Some(client_upgrade), true) => {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            if h2_websocket {
                // HTTP/2 accepts the tunnel with a 200 and no handshake headers.
                *response.status_mut() = StatusCode::OK;
                response.headers_mut().remove(http::header::SEC_WEBSOCKET_ACCEPT);
            } else {
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(protocol) = upstream_protocol {
                    response.headers_mut().insert(UPGRADE, protocol);
                }
            }
            let idle = runtime.idle_timeout;
            tokio::spawn(async move {
                tunnel(client_upgrade, upstream_upgrade, idle).await;
                drop(tunnel_in_flight);
            });
        }
        (Some(_), false) if h2_websocket => {}
        (Some(_), false) => {
            // The upgrade was refused: the rest of this connection is not inspected
            // (strict.rs stops at an Upgrade header), so it must not carry more requests.
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        (None, true) => {
            return Err(GatewayError::new(ErrorKind::BadGateway, "upstream switched protocols unasked"));
        }
        (None, false) => {}
    }
    if let Some(web) = grpc_web {
        response = web.to_grpc_web_response(response);
    }
    if let Some(decision) = rate {
        decision.write_headers(response.headers_mut());
    }
    if let Some(transform) = &policy.response_headers {
        let ctx = TransformContext {
            request_id: request_id.as_str(),
            client_ip: client.ip,
            principal: principal.as_ref(),
            route: &policy.name,
        };
        transform.apply(response.headers_mut(), &ctx);
    }
    if let Some(accept) = accept_encoding {
        let mut asked = http::HeaderMap::new();
        asked.insert(http::header::ACCEPT_ENCODING, accept);
        if let Some(encoding) = should_compress(&method, &asked, response.status(), response.headers()) {
            response = compress_response(response, encoding).map(Body::boxed);
        }
    }
    Ok(response)
}

/// The request target sent upstream: the client's own path and query when the route
/// leaves the path as it came (shared, not copied), else the route's path with the query.
fn upstream_target(uri: &http::Uri, upstream_path: &str) -> Result<http::Uri, GatewayError> {
    if let Some(target) = uri.path_and_query().filter(|target| target.path() == upstream_path) {
        return Ok(http::Uri::from(target.clone()));
    }
    let target = match uri.query() {
        Some(q) => format!("{upstream_path}?{q}"),
        None => upstream_path.to_owned(),
    };
    http::Uri::try_from(target)
        .map_err(|e| GatewayError::new(ErrorKind::BadRequest, format!("malformed request target: {e}")))
}

/// Send upstream through the service's balancer, breakers and retries, remembering
/// which endpoint answered (for the access log).
async fn send(
    service: &ServiceRuntime,
    call: upstream::Call<'_>,
    upstream_addr: &mut Option<Arc<EndpointState>>,
) -> Result<Response<Body>, GatewayError> {
    match upstream::call(service, call).await {
        Ok(answered) => {
            *upstream_addr = Some(answered.endpoint);
            Ok(answered.response)
        }
        Err((err, endpoint)) => {
            *upstream_addr = endpoint;
            Err(err)
        }
    }
}

/// Copy a request to the shadow service in the background: its answer is discarded, and
/// it never slows the client (bounded in-flight copies; a body is teed as the primary reads
/// it, and only when it declares a length within the mirror's body limit). Returns the body
/// to send to the primary.
fn mirror_request(
    mirror: &gateway_traffic::mirror::Mirror,
    shadow: &Arc<ServiceRuntime>,
    parts: &http::request::Parts,
    body: RequestBody,
    client_ip: std::net::IpAddr,
) -> RequestBody {
    use gateway_traffic::mirror::{tee, BodyPlan};
    use hyper::body::Body as _;
    if !mirror.should_mirror(gateway_traffic::random_u64()) {
        return body;
    }
    let plan = mirror.body_plan(&body.size_hint());
    if plan == BodyPlan::Skip {
        return body;
    }
    let Some(permit) = mirror.try_acquire() else { return body };
    let (body, copy) = match plan {
        BodyPlan::Copy => {
            let (teed, copy) = tee(body, mirror.body_limit());
            (RequestBody::boxed(teed), Some(copy))
        }
        _ => (body, None),
    };
    let shadow = shadow.clone();
    let (method, uri, headers) = (parts.method.clone(), parts.uri.clone(), parts.headers.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let body = match copy {
            None => RequestBody::Empty,
            // The primary read the whole body; a copy abandoned half way is not mirrored.
            Some(copy) => match copy.await {
                Some(data) => RequestBody::Bytes { data: Some(data) },
                None => return,
            },
        };
        let call = upstream::Call {
            trace: None,
            method,
            uri,
            headers,
            body,
            timeout: shadow.timeout,
            grpc_deadline: false,
            client_ip,
        };
        match upstream::call(&shadow, call).await {
            Ok(answered) => {
                // Read and drop the answer so the connection goes back to the pool.
                let _ = http_body_util::BodyExt::collect(answered.response.into_body()).await;
            }
            Err((err, _)) => tracing::debug!(service = %shadow.name, error = %err, "mirror request failed"),
        }
    });
    body
}

/// The protocol a request asks to switch to (`Connection: upgrade` with `Upgrade`), HTTP/1.1 only.
/// An HTTP/2 CONNECT with a `:protocol` (RFC 8441): a WebSocket over one HTTP/2 stream.
fn is_extended_connect(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT
        && req.version() == Version::HTTP_2
        && req.extensions().get::<hyper::ext::Protocol>().is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// A fresh `sec-websocket-key`: 16 random bytes in base64.
fn websocket_key() -> HeaderValue {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&gateway_core::random_u64().to_le_bytes());
    nonce[8..].copy_from_slice(&gateway_core::random_u64().to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::try_from(key).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if is_extended_connect(req) {
        return Some(HeaderValue::from_static("websocket"));
    }
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        req.headers().get(UPGRADE).cloned()
    } else {
        None
    }
}

/// Copy bytes both ways between the client's and the upstream's upgraded connections
/// until either side closes, or nothing moved either way for `idle`.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, idle: std::time::Duration) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let activity = crate::idle::Activity::new();
    let mut client = activity.watch(hyper_util::rt::TokioIo::new(client));
    let mut upstream = activity.watch(hyper_util::rt::TokioIo::new(upstream));
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = activity.idle_for(idle) => tracing::debug!("tunnel idle; closing"),
    }
}

struct InFlight<'a>(&'a RoutePolicy);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.finish();
    }
}

/// gRPC and gRPC-Web alike: both get gateway errors in the gRPC form.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

fn bad_framing(message: &'static str) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, message).closing()
}

/// What the raw-head inspector (`strict.rs`) cannot judge: the method. Framing itself
/// (content-length, transfer-encoding, line endings, `#`) is judged on the raw bytes.
fn check_framing(req: &Request<Incoming>) -> Result<(), GatewayError> {
    if req.method() == Method::CONNECT && !is_extended_connect(req) {
        return Err(GatewayError::new(ErrorKind::BadRequest, "CONNECT is not served by this gateway").closing());
    }
    Ok(())
}

/// `server.max_header_bytes` for the request target (414) and the whole head (431). The
/// parser's own buffer is larger, so that these answers carry the JSON body; heads past
/// that buffer get the parser's bare 431.
fn check_head_size(req: &Request<Incoming>, limit: u64) -> Result<(), GatewayError> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len()) as u64;
    if target > limit {
        return Err(GatewayError::new(ErrorKind::UriTooLong, "request target is too long").closing());
    }
    let head: u64 = req.headers().iter().map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64).sum::<u64>()
        + target
        + req.method().as_str().len() as u64
        + 12;
    if head > limit {
        return Err(GatewayError::new(ErrorKind::HeadersTooLarge, "request head is too large").closing());
    }
    Ok(())
}

/// The host a request is for: the authority of an absolute-form target (only when it
/// agrees with `Host`), else `Host`.
fn routing_host(req: &Request<Incoming>) -> Result<Option<RoutingHost>, GatewayError> {
    let header = match req.headers().get(HOST) {
        Some(h) if h.to_str().is_ok() => Some(h.clone()),
        Some(_) => return Err(GatewayError::new(ErrorKind::BadRequest, "malformed host header")),
        None => None,
    };
    if req.headers().get_all(HOST).iter().count() > 1 {
        return Err(GatewayError::new(ErrorKind::BadRequest, "several host headers").closing());
    }
    match req.uri().authority() {
        None => Ok(header.map(RoutingHost::Header)),
        Some(authority) => {
            if req.version() <= Version::HTTP_11 {
                let agrees = header.is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()));
                if !agrees {
                    return Err(GatewayError::new(
                        ErrorKind::BadRequest,
                        "absolute-form target whose authority is not the host header (forward proxying is refused)",
                    )
                    .closing());
                }
            }
            Ok(Some(RoutingHost::Authority(authority.clone())))
        }
    }
}

/// The host a request is routed by, sharing the request's bytes (no copy per request).
enum RoutingHost {
    /// The `Host` header, checked to be visible ASCII.
    Header(HeaderValue),
    /// The authority of the request target (HTTP/2, absolute-form).
    Authority(http::uri::Authority),
}

impl RoutingHost {
    fn as_str(&self) -> &str {
        match self {
            RoutingHost::Header(value) => value.to_str().unwrap_or_default(),
            RoutingHost::Authority(authority) => authority.as_str(),
        }
    }
}

/// What one access-log line says about a request.
struct AccessEntry<'a> {
    request_id: &'a RequestId,
    policy: Option<&'a RoutePolicy>,
    method: &'a Method,
    path: &'a str,
    upstream: Option<&'a str>,
    /// The error code when the gateway answered itself.
    error: Option<&'static str>,
    trace_id: [u8; 16],
    elapsed: std::time::Duration,
}

fn access_log(entry: &AccessEntry<'_>, response: &Response<Body>) {
    // The size known at the head: content-length, or a whole body (the gateway's own answers).
    let bytes = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| hyper::body::Body::size_hint(response.body()).exact());
    let ts = gateway_core::Rfc3339::now();
    let line = gateway_telemetry::access_log::AccessLine {
        ts: ts.as_str(),
        request_id: entry.request_id.as_str(),
        route: entry.policy.map(|p| p.name.as_str()),
        method: entry.method.as_str(),
        path: entry.path,
        status: response.status().as_u16(),
        upstream: entry.upstream,
        duration: entry.elapsed,
        bytes,
        error: entry.error,
        trace_id: Some(entry.trace_id),
    };
    crate::access_log::write(|out| line.write_json(out));
}
