//! `gateway-admin`: the admin listener's axum router: `/healthz`, `/readyz`, `/metrics`
//! and `/admin/config/status`.
//!
//! ```
//! let state = gateway_admin::AdminState::new(gateway_telemetry::Metrics::new());
//! let app: axum::Router = gateway_admin::router(state);
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use gateway_telemetry::Metrics;
use serde::Serialize;

/// What `/admin/config/status` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    pub version: u64,
    /// RFC 3339 time of the last successful load.
    pub loaded_at: String,
    /// `FILE:LINE:COL: message` of the last failed reload, cleared by the next success.
    pub last_error: Option<String>,
}

/// Shared state of the admin listener.
#[derive(Clone)]
pub struct AdminState {
    ready: Arc<AtomicBool>,
    metrics: Metrics,
    status: Arc<ArcSwap<ConfigStatus>>,
}

impl AdminState {
    pub fn new(metrics: Metrics) -> Self {
        AdminState {
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
            status: Arc::new(ArcSwap::from_pointee(ConfigStatus::default())),
        }
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

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/config/status", get(config_status))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

async fn config_status(State(state): State<AdminState>) -> Json<ConfigStatus> {
    Json(state.config_status())
}
