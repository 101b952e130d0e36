//! `gateway-admin`: the admin listener's axum router: health, readiness, metrics, the
//! admin API (`/admin/*`), the dashboard (`/`) and, from the registry issue on, the
//! registry API. What it shows comes from an [`AdminSource`] the binary implements, so
//! this crate knows nothing of the runtime's types.
//!
//! ```
//! # use std::sync::Arc;
//! # use gateway_admin::*;
//! struct Nothing;
//! impl AdminSource for Nothing {
//!     fn routes(&self) -> serde_json::Value { serde_json::json!([]) }
//!     fn services(&self) -> serde_json::Value { serde_json::json!([]) }
//!     fn config(&self) -> serde_json::Value { serde_json::json!({}) }
//!     fn reload(&self) -> futures_util::future::BoxFuture<'static, Result<u64, Vec<String>>> {
//!         Box::pin(async { Ok(1) })
//!     }
//!     fn set_circuit(&self, _: &str, _: &str, _: ForcedCircuit) -> Result<serde_json::Value, AdminError> {
//!         Err(AdminError::not_found("no such endpoint"))
//!     }
//!     fn purge_cache(&self, _: &str) -> futures_util::future::BoxFuture<'static, Result<serde_json::Value, AdminError>> {
//!         Box::pin(async { Err(AdminError::not_found("no such route")) })
//!     }
//! }
//! let state = AdminState::new(gateway_telemetry::Metrics::new(), Arc::new(Nothing), None);
//! let app: axum::Router = gateway_admin::router(state);
//! ```

mod redact;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use gateway_telemetry::Metrics;
use serde::{Deserialize, Serialize};

pub use redact::redact;

/// What `/admin/config/status` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    pub version: u64,
    /// RFC 3339 time of the last successful load.
    pub loaded_at: String,
    /// `FILE:LINE:COL: message` of the last failed reload, cleared by the next success.
    pub last_error: Option<String>,
}

/// A state forced on an endpoint's circuit by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForcedCircuit {
    Open,
    Closed,
    Auto,
}

/// An admin API failure, answered as the gateway's JSON error.
#[derive(Debug)]
pub struct AdminError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AdminError {
    pub fn not_found(message: impl Into<String>) -> Self {
        AdminError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        AdminError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into() }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "status": self.status.as_u16(), "code": self.code, "message": self.message }
        });
        (self.status, Json(body)).into_response()
    }
}

/// The running gateway, as the admin API sees it.
pub trait AdminSource: Send + Sync + 'static {
    /// `GET /admin/routes`.
    fn routes(&self) -> serde_json::Value;
    /// `GET /admin/services`: every endpoint with `healthy`, `circuit` and `in_flight`.
    fn services(&self) -> serde_json::Value;
    /// The running configuration, not yet redacted (the router redacts it).
    fn config(&self) -> serde_json::Value;
    /// Reload now: the new version, or every error.
    fn reload(&self) -> BoxFuture<'static, Result<u64, Vec<String>>>;
    /// Force an endpoint's circuit; the endpoint's new view.
    fn set_circuit(&self, service: &str, address: &str, state: ForcedCircuit) -> Result<serde_json::Value, AdminError>;
    /// Drop every cached answer of a route; how many entries were dropped.
    fn purge_cache(&self, route: &str) -> BoxFuture<'static, Result<serde_json::Value, AdminError>>;
    /// Details `/readyz` shows beside its verdict: the state of each dependency (the
    /// registry store, ...) as a JSON object. A degraded dependency does not make the
    /// gateway unready: it keeps serving what it last knew.
    fn readiness(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    /// Metrics the runtime knows (endpoint and circuit states), appended to `/metrics`.
    fn extra_metrics(&self) -> String {
        String::new()
    }
}

/// Shared state of the admin listener.
#[derive(Clone)]
pub struct AdminState {
    ready: Arc<AtomicBool>,
    metrics: Metrics,
    status: Arc<ArcSwap<ConfigStatus>>,
    source: Arc<dyn AdminSource>,
    /// Swapped on reload, so a changed `admin.token` applies at once.
    token: Arc<ArcSwap<Option<String>>>,
}

impl AdminState {
    /// `token`: when set, `/admin/*` and `/registry/*` need `Authorization: Bearer <token>`.
    pub fn new(metrics: Metrics, source: Arc<dyn AdminSource>, token: Option<String>) -> Self {
        AdminState {
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
            status: Arc::new(ArcSwap::from_pointee(ConfigStatus::default())),
            source,
            token: Arc::new(ArcSwap::from_pointee(token)),
        }
    }

    pub fn set_token(&self, token: Option<String>) {
        self.token.store(Arc::new(token));
    }

    /// Ready once configuration is loaded and listeners are up; not ready while draining.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_config_status(&self, status: ConfigStatus) {
        self.status.store(Arc::new(status));
    }

    pub fn config_status(&self) -> ConfigStatus {
        ConfigStatus::clone(&self.status.load())
    }
}

/// The whole admin listener. `protected` routes (`/admin/*`, and whatever the caller
/// nests under `/registry`) require the token when one is configured.
pub fn router(state: AdminState) -> Router {
    router_with(state, Router::new())
}

/// Like [`router`], with extra protected routes (the registry API) merged in.
pub fn router_with(state: AdminState, extra_protected: Router) -> Router {
    let protected = Router::new()
        .route("/admin/routes", get(|State(s): State<AdminState>| async move { Json(s.source.routes()) }))
        .route("/admin/services", get(|State(s): State<AdminState>| async move { Json(s.source.services()) }))
        .route("/admin/config", get(config))
        .route("/admin/config/status", get(config_status))
        .route("/admin/reload", post(reload))
        .route("/admin/services/{service}/endpoints/{address}/circuit", post(set_circuit))
        .route("/admin/routes/{route}/cache", delete(purge_cache))
        .with_state(state.clone())
        .merge(extra_protected)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(protected)
        .fallback(|| async { AdminError::not_found("no such admin endpoint") })
}

const DASHBOARD: &str = include_str!("dashboard.html");

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if let Some(token) = state.token.load().as_deref() {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            let mut response = AdminError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: "a valid admin bearer token is required".into(),
            }
            .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Equal lengths and bytes, in time that depends only on the presented length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `{"status": "ready" | "not_ready", "details": {...}}`: 200 when ready, else 503.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let (status, word) =
        if state.is_ready() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not_ready") };
    (status, Json(serde_json::json!({ "status": word, "details": state.source.readiness() })))
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str(&state.source.extra_metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

async fn config(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let status = state.config_status();
    let mut config = state.source.config();
    redact(&mut config);
    Json(serde_json::json!({ "version": status.version, "loaded_at": status.loaded_at, "config": config }))
}

async fn config_status(State(state): State<AdminState>) -> Json<ConfigStatus> {
    Json(state.config_status())
}

async fn reload(State(state): State<AdminState>) -> Response {
    match state.source.reload().await {
        Ok(version) => Json(serde_json::json!({ "version": version })).into_response(),
        Err(errors) => {
            let body = serde_json::json!({
                "error": {
                    "status": 400,
                    "code": "invalid_config",
                    "message": errors.first().cloned().unwrap_or_default(),
                    "errors": errors,
                }
            });
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
    }
}

#[derive(Deserialize)]
struct CircuitRequest {
    state: ForcedCircuit,
}

async fn purge_cache(
    State(state): State<AdminState>,
    Path(route): Path<String>,
) -> Result<Json<serde_json::Value>, AdminError> {
    state.source.purge_cache(&route).await.map(Json)
}

async fn set_circuit(
    State(state): State<AdminState>,
    Path((service, address)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, AdminError> {
    let request: CircuitRequest = serde_json::from_slice(&body)
        .map_err(|e| AdminError::bad_request(format!("expected {{\"state\": \"open\"|\"closed\"|\"auto\"}}: {e}")))?;
    state.source.set_circuit(&service, &address, request.state).map(Json)
}
